package usagelog

import (
	"encoding/binary"
	"fmt"
	"math"
)

// The decoder parses the few fixed MessagePack shapes of a log by hand rather than with
// msgpack.Decoder, because it needs what the library does not give: the byte offset of
// PreviousObjectEncrypted inside the plaintext (the fast path reads the next layer in place,
// without copying or decrypting it), bin payloads that are never copied or allocated from a
// length header before the length is checked against the bytes that remain, and integers that
// are only integers (the library's DecodeInt64 also accepts floats). Every read below is
// bounds-checked against the end of the value being parsed.

// cursor reads MessagePack values from [pos, end) of a window.
type cursor struct {
	w   *window
	pos int
	end int
}

func (c *cursor) take(n int, what string) ([]byte, error) {
	if n < 0 || n > c.end-c.pos {
		return nil, fmt.Errorf("%w: %s: need %d bytes, %d remain", ErrCorrupted, what, n, c.end-c.pos)
	}
	b, err := c.w.get(c.pos, n)
	if err != nil {
		return nil, err
	}
	c.pos += n
	return b, nil
}

// arrayLen reads an array header (fixarray, array16, array32).
func (c *cursor) arrayLen(what string) (int, error) {
	b, err := c.take(1, what)
	if err != nil {
		return 0, err
	}
	switch tag := b[0]; {
	case tag >= 0x90 && tag <= 0x9f:
		return int(tag & 0x0f), nil
	case tag == 0xdc:
		b, err := c.take(2, what)
		if err != nil {
			return 0, err
		}
		return int(binary.BigEndian.Uint16(b)), nil
	case tag == 0xdd:
		b, err := c.take(4, what)
		if err != nil {
			return 0, err
		}
		return int(binary.BigEndian.Uint32(b)), nil
	default:
		return 0, fmt.Errorf("%w: %s: expected an array, found tag 0x%02x", ErrCorrupted, what, tag)
	}
}

// expectArray reads an array header and requires n elements.
func (c *cursor) expectArray(n int, what string) error {
	got, err := c.arrayLen(what)
	if err != nil {
		return err
	}
	if got != n {
		return fmt.Errorf("%w: %s: expected an array of %d, found %d", ErrCorrupted, what, n, got)
	}
	return nil
}

// int64 reads an integer in any MessagePack integer encoding; uint64 values above MaxInt64 do
// not fit and are refused.
func (c *cursor) int64(what string) (int64, error) {
	b, err := c.take(1, what)
	if err != nil {
		return 0, err
	}
	tag := b[0]
	switch {
	case tag <= 0x7f:
		return int64(tag), nil
	case tag >= 0xe0:
		return int64(int8(tag)), nil
	}
	var size int
	switch tag {
	case 0xcc, 0xd0:
		size = 1
	case 0xcd, 0xd1:
		size = 2
	case 0xce, 0xd2:
		size = 4
	case 0xcf, 0xd3:
		size = 8
	default:
		return 0, fmt.Errorf("%w: %s: expected an integer, found tag 0x%02x", ErrCorrupted, what, tag)
	}
	b, err = c.take(size, what)
	if err != nil {
		return 0, err
	}
	switch tag {
	case 0xcc:
		return int64(b[0]), nil
	case 0xcd:
		return int64(binary.BigEndian.Uint16(b)), nil
	case 0xce:
		return int64(binary.BigEndian.Uint32(b)), nil
	case 0xcf:
		u := binary.BigEndian.Uint64(b)
		if u > math.MaxInt64 {
			return 0, fmt.Errorf("%w: %s: %d does not fit an int64", ErrCorrupted, what, u)
		}
		return int64(u), nil
	case 0xd0:
		return int64(int8(b[0])), nil
	case 0xd1:
		return int64(int16(binary.BigEndian.Uint16(b))), nil
	case 0xd2:
		return int64(int32(binary.BigEndian.Uint32(b))), nil
	default: // 0xd3
		return int64(binary.BigEndian.Uint64(b)), nil
	}
}

// binLen reads a bin8/16/32 header and checks that the payload fits in what remains.
func (c *cursor) binLen(what string) (int, error) {
	b, err := c.take(1, what)
	if err != nil {
		return 0, err
	}
	var n int
	switch tag := b[0]; tag {
	case 0xc4:
		b, err := c.take(1, what)
		if err != nil {
			return 0, err
		}
		n = int(b[0])
	case 0xc5:
		b, err := c.take(2, what)
		if err != nil {
			return 0, err
		}
		n = int(binary.BigEndian.Uint16(b))
	case 0xc6:
		b, err := c.take(4, what)
		if err != nil {
			return 0, err
		}
		n = int(binary.BigEndian.Uint32(b))
	default:
		return 0, fmt.Errorf("%w: %s: expected bin, found tag 0x%02x", ErrCorrupted, what, tag)
	}
	if n > c.end-c.pos {
		return 0, fmt.Errorf("%w: %s: bin of %d bytes, %d remain", ErrCorrupted, what, n, c.end-c.pos)
	}
	return n, nil
}
