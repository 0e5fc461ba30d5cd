package usagelog

import (
	"context"
	"crypto/aes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"slices"
)

const (
	// DefaultMaxInputBytes is the default limit on the base64 text of a log: 16 MiB, about
	// 12 MiB of log, some 40,000 layers of about 310 bytes.
	DefaultMaxInputBytes = 16 << 20
	// DefaultMaxNewLayers is the default limit on new layers in one upload (usage-log.md).
	DefaultMaxNewLayers = 1000
	// maxEncryptedKeyBytes bounds the EncryptedKey bin: an RSA-8192 ciphertext.
	maxEncryptedKeyBytes = 1024
	// maxPadding: the writer pads with zeros up to the next 16-byte boundary only.
	maxPadding = 15
)

// Decoder decodes usage logs for a key ring. The zero values of the limits mean their
// defaults. A Decoder may be used concurrently.
type Decoder struct {
	// Keys are the server's private keys. Required.
	Keys *KeyRing
	// MaxInputBytes bounds the base64 text (and, for DecodeRaw, the equivalent raw size); 0 means
	// DefaultMaxInputBytes.
	MaxInputBytes int
	// MaxNewLayers bounds the unknown layers decoded in one call; 0 means DefaultMaxNewLayers.
	MaxNewLayers int

	// open makes each layer's plaintext; nil means the fast path (openLazy). Tests and
	// benchmarks set openFull to compare with the straightforward decoder.
	open opener
}

func (d *Decoder) maxInput() int {
	if d.MaxInputBytes > 0 {
		return d.MaxInputBytes
	}
	return DefaultMaxInputBytes
}

func (d *Decoder) maxLayers() int {
	if d.MaxNewLayers > 0 {
		return d.MaxNewLayers
	}
	return DefaultMaxNewLayers
}

// Decode decodes data, the base64 text (standard alphabet, padded) of a usage log. It walks from
// the outermost layer inward and stops at the first layer for which known returns true (known
// may be nil: nothing is known), without any RSA operation for that layer or those it nests.
// known is asked about each layer's identity and then, if false, about its legacy identity
// (LayerRef), so a set of either kind works.
// It returns the new entries in the given order: all of them, or an error wrapping ErrEmpty,
// ErrCorrupted, ErrTooLarge (which also matches ErrCorrupted) or ErrTooManyEntries, or the
// context's error. A log that is the single byte 0x00 holds no entries.
//
// At most MaxNewLayers unknown layers are decoded; meeting one more is ErrTooManyEntries, found
// before its RSA operation, so a call performs at most MaxNewLayers × (keys in the ring) RSA
// operations.
func (d *Decoder) Decode(ctx context.Context, data string, order Order, known func(LayerID) bool) ([]Entry, error) {
	raw, err := d.base64(data)
	if err != nil {
		return nil, err
	}
	return d.DecodeRaw(ctx, raw, order, known)
}

// DecodeRaw is Decode for the log's bytes (the .skm file) instead of their base64 text. The
// limit on its size is the raw size that MaxInputBytes of base64 would decode to.
func (d *Decoder) DecodeRaw(ctx context.Context, raw []byte, order Order, known func(LayerID) bool) ([]Entry, error) {
	var byRef func(LayerRef) bool
	if known != nil {
		byRef = func(r LayerRef) bool { return known(r.ID) || known(r.Legacy) }
	}
	l, err := d.walk(ctx, raw, order, byRef)
	if err != nil {
		return nil, err
	}
	return l.Entries, nil
}

// Log is what DecodeLog finds in a log: the new entries and, when the walk stopped at a known
// layer, that layer as the log presents it, so that the caller can compare it with what it
// applied (docs/uploads.md, "Tampering").
type Log struct {
	// Entries are the new entries, in the order asked for.
	Entries []Entry
	// Stop is the known layer the walk stopped at, nil when every layer was new.
	Stop *LayerRef
	// StopDepth is how many layers lie outside Stop plus one: 1 when the outermost layer is
	// known (the log is a version already seen, or a modified one).
	StopDepth int
	// FileDigest is the SHA-256 of the whole log: the whole bytes of its outermost layer.
	FileDigest [32]byte

	// innermost is what recognising the oldest new layer under another IV needs (Originals).
	innermost *ivOrigin
}

// DecodeLog is Decode with the layer as the walk sees it given to known, and the stop layer
// and the log's digest returned beside the entries.
func (d *Decoder) DecodeLog(ctx context.Context, data string, order Order, known func(LayerRef) bool) (*Log, error) {
	raw, err := d.base64(data)
	if err != nil {
		return nil, err
	}
	l, err := d.walk(ctx, raw, order, known)
	if err != nil {
		return nil, err
	}
	l.FileDigest = sha256.Sum256(raw)
	return l, nil
}

// base64 checks the text's size and decodes it.
func (d *Decoder) base64(data string) ([]byte, error) {
	if data == "" {
		return nil, ErrEmpty
	}
	if len(data) > d.maxInput() {
		return nil, fmt.Errorf("%w: %w: %d bytes of base64, the limit is %d", ErrCorrupted, ErrTooLarge, len(data), d.maxInput())
	}
	raw, err := base64.StdEncoding.DecodeString(data)
	if err != nil {
		return nil, fmt.Errorf("%w: base64: %w", ErrCorrupted, err)
	}
	return raw, nil
}

// walk decodes raw from the outermost layer inward until a layer known reports (see Decode).
func (d *Decoder) walk(ctx context.Context, raw []byte, order Order, known func(LayerRef) bool) (*Log, error) {
	if d.Keys == nil {
		return nil, errors.New("usage-log decoder: no key ring")
	}
	if order != NewestFirst && order != OldestFirst {
		return nil, fmt.Errorf("usage-log decoder: unknown order %d", order)
	}
	if len(raw) == 0 {
		return nil, ErrEmpty
	}
	if limit := base64.StdEncoding.DecodedLen(d.maxInput()); len(raw) > limit {
		return nil, fmt.Errorf("%w: %w: %d bytes, the limit is %d", ErrCorrupted, ErrTooLarge, len(raw), limit)
	}
	if len(raw) == 1 && raw[0] == 0x00 {
		return &Log{Entries: []Entry{}}, nil
	}
	open := d.open
	if open == nil {
		open = openLazy
	}

	var src source = plainSource(raw)
	hdr, err := readOuter(&window{src: src}, 0, len(raw))
	if err != nil {
		return nil, fmt.Errorf("layer 1: %w", err)
	}
	out := &Log{Entries: []Entry{}}
	var innermost ivOrigin // of the last new layer decoded: a copy per layer, kept once
	for depth := 1; ; depth++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("decoding usage log: %w", err)
		}
		id := hdr.ref.ID
		if known != nil && known(hdr.ref) {
			stop := hdr.ref
			out.Stop, out.StopDepth = &stop, depth
			break
		}
		if len(out.Entries) == d.maxLayers() {
			return nil, fmt.Errorf("%w: more than %d new layers", ErrTooManyEntries, d.maxLayers())
		}
		candidates := d.Keys.unwrap(hdr.encryptedKey)
		if len(candidates) == 0 {
			return nil, fmt.Errorf("%w: layer %d (%s): an EncryptedKey of %d bytes fits none of the server's keys",
				ErrCorrupted, depth, id, len(hdr.encryptedKey))
		}
		var (
			entry   Entry
			next    *outerLayer
			origin  ivOrigin
			lastErr error
			found   bool
		)
		for _, key := range candidates {
			entry, next, origin, lastErr = openLayer(open, src, hdr, key)
			if lastErr == nil {
				found = true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("%w: layer %d (%s) does not decrypt to a valid layer with the server's keys: %w",
				ErrCorrupted, depth, id, lastErr)
		}
		entry.Layer, entry.Legacy, entry.Digest, entry.Length = id, hdr.ref.Legacy, hdr.ref.Digest, hdr.ref.Length
		out.Entries = append(out.Entries, entry)
		innermost = origin
		if next == nil {
			break
		}
		src, hdr = next.src, next.hdr
	}
	if len(out.Entries) > 0 {
		out.innermost = &innermost
	}
	if order == OldestFirst {
		slices.Reverse(out.Entries)
	}
	return out, nil
}

// outerHeader is what an outer layer holds before its EncryptedObject, and where that lies.
type outerHeader struct {
	iv           []byte
	encryptedKey []byte
	objOff       int // offset of the EncryptedObject payload in the layer's source
	objLen       int
	head         []byte // the first headDigestBytes of the EncryptedObject
	ref          LayerRef
}

// outerLayer is an outer layer found inside the plaintext of the layer around it.
type outerLayer struct {
	src source
	hdr outerHeader
}

// readOuter parses the outer layer that occupies exactly [start, start+length) of w's source.
func readOuter(w *window, start, length int) (outerHeader, error) {
	c := cursor{w: w, pos: start, end: start + length}
	if err := c.expectArray(3, "outer layer"); err != nil {
		return outerHeader{}, err
	}
	ivLen, err := c.binLen("IV")
	if err != nil {
		return outerHeader{}, err
	}
	if ivLen != 16 {
		return outerHeader{}, fmt.Errorf("%w: IV of %d bytes, not 16", ErrCorrupted, ivLen)
	}
	iv, err := c.take(ivLen, "IV")
	if err != nil {
		return outerHeader{}, err
	}
	keyLen, err := c.binLen("EncryptedKey")
	if err != nil {
		return outerHeader{}, err
	}
	if keyLen == 0 || keyLen > maxEncryptedKeyBytes {
		return outerHeader{}, fmt.Errorf("%w: EncryptedKey of %d bytes", ErrCorrupted, keyLen)
	}
	encryptedKey, err := c.take(keyLen, "EncryptedKey")
	if err != nil {
		return outerHeader{}, err
	}
	objLen, err := c.binLen("EncryptedObject")
	if err != nil {
		return outerHeader{}, err
	}
	if objLen == 0 || objLen%16 != 0 {
		return outerHeader{}, fmt.Errorf("%w: EncryptedObject of %d bytes, not a positive multiple of 16", ErrCorrupted, objLen)
	}
	if trailing := c.end - c.pos - objLen; trailing != 0 {
		return outerHeader{}, fmt.Errorf("%w: %d bytes after the outer layer", ErrCorrupted, trailing)
	}
	objOff := c.pos
	// The first bytes of the EncryptedObject come with the header's read-ahead (window).
	head, err := c.take(min(objLen, headDigestBytes), "EncryptedObject")
	if err != nil {
		return outerHeader{}, err
	}
	ref := LayerRef{ID: layerIDOf(encryptedKey), Legacy: legacyLayerIDOf(iv, encryptedKey), Digest: layerDigestOf(iv, encryptedKey, head), Length: objLen}
	return outerHeader{iv: iv, encryptedKey: encryptedKey, objOff: objOff, objLen: objLen, head: head, ref: ref}, nil
}

// openLayer decrypts the layer described by hdr (in src) with key, checks it whole, and returns
// its entry, the layer it nests (nil when it nests the empty file 0x00), and what recognising
// the layer under another IV needs.
func openLayer(open opener, src source, hdr outerHeader, key []byte) (Entry, *outerLayer, ivOrigin, error) {
	plain, err := open(src, hdr.objOff, hdr.objLen, hdr.iv, key)
	if err != nil {
		return Entry{}, nil, ivOrigin{}, err
	}
	w := &window{src: plain}
	c := cursor{w: w, pos: 0, end: hdr.objLen}
	if err := c.expectArray(3, "inner layer"); err != nil {
		return Entry{}, nil, ivOrigin{}, err
	}
	if err := c.expectArray(2, "Data"); err != nil {
		return Entry{}, nil, ivOrigin{}, err
	}
	increment, err := c.int64("Increment")
	if err != nil {
		return Entry{}, nil, ivOrigin{}, err
	}
	objectID, err := c.int64("DataObjectId")
	if err != nil {
		return Entry{}, nil, ivOrigin{}, err
	}
	timestamp, err := c.int64("Timestamp")
	if err != nil {
		return Entry{}, nil, ivOrigin{}, err
	}
	// What recognising this layer under another IV needs: its first block without the IV,
	// and the plaintext from the end of the entry on (ivOrigin). Read now, from the window's
	// read-ahead, before the walk moves on.
	first, err := w.get(0, min(hdr.objLen, c.pos+aes.BlockSize))
	if err != nil {
		return Entry{}, nil, ivOrigin{}, err
	}
	origin := ivOrigin{encryptedKey: hdr.encryptedKey, length: hdr.objLen, head: hdr.head, afterEntry: first[c.pos:]}
	subtle.XORBytes(origin.block0[:], first[:aes.BlockSize], hdr.iv)
	prevLen, err := c.binLen("PreviousObjectEncrypted")
	if err != nil {
		return Entry{}, nil, ivOrigin{}, err
	}
	prevOff := c.pos
	padding := hdr.objLen - prevOff - prevLen
	switch {
	case increment < math.MinInt32 || increment > math.MaxInt32:
		return Entry{}, nil, ivOrigin{}, fmt.Errorf("%w: Increment %d does not fit an int32", ErrCorrupted, increment)
	case increment == 0:
		return Entry{}, nil, ivOrigin{}, fmt.Errorf("%w: Increment is 0", ErrCorrupted)
	case objectID == 0 || objectID == math.MinInt64:
		return Entry{}, nil, ivOrigin{}, fmt.Errorf("%w: DataObjectId %d", ErrCorrupted, objectID)
	case padding > maxPadding:
		return Entry{}, nil, ivOrigin{}, fmt.Errorf("%w: %d bytes after the inner layer, more than padding", ErrCorrupted, padding)
	}
	entry := Entry{
		ObjectID:  abs(objectID),
		Decrement: increment < 0 || objectID < 0,
		Amount:    abs(increment),
		Timestamp: timestamp,
	}

	var next *outerLayer
	if prevLen == 1 {
		b, err := c.take(1, "PreviousObjectEncrypted")
		if err != nil {
			return Entry{}, nil, ivOrigin{}, err
		}
		if b[0] != 0x00 {
			return Entry{}, nil, ivOrigin{}, fmt.Errorf("%w: PreviousObjectEncrypted is the byte 0x%02x, not 0x00", ErrCorrupted, b[0])
		}
	} else {
		prev, err := readOuter(w, prevOff, prevLen)
		if err != nil {
			return Entry{}, nil, ivOrigin{}, fmt.Errorf("previous layer: %w", err)
		}
		next = &outerLayer{src: plain, hdr: prev}
	}

	c.pos = prevOff + prevLen
	tail, err := c.take(padding, "padding")
	if err != nil {
		return Entry{}, nil, ivOrigin{}, err
	}
	for _, b := range tail {
		if b != 0 {
			return Entry{}, nil, ivOrigin{}, fmt.Errorf("%w: non-zero byte after the inner layer", ErrCorrupted)
		}
	}
	return entry, next, origin, nil
}

func abs(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}
