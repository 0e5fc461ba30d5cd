package usagelog

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/vmihailenco/msgpack/v5"
)

// RawEntry is one layer's content as the writer records it, before this project's
// interpretation (see Entry).
type RawEntry struct {
	Increment    int32
	DataObjectID int64
	Timestamp    int64
}

// Wrap returns a new log: previous (the current file; nil or empty means the empty file, the
// single byte 0x00) wrapped in one new layer recording e, encrypted for pub. The bytes are the
// ones the License Server (MessagePack-CSharp) writes: arrays in key order, smallest integer
// encodings, bin8/16/32, a fresh 16-byte IV and AES-128 key from rand, the key wrapped with RSA
// PKCS#1 v1.5, the inner layer AES-128-CBC encrypted with zero padding (none when aligned).
// Since Go 1.26 the RSA padding draws from the system's secure source whatever rand is.
func Wrap(previous []byte, pub *rsa.PublicKey, e RawEntry, rand io.Reader) ([]byte, error) {
	if pub == nil {
		return nil, errors.New("wrap: no public key")
	}
	if len(previous) == 0 {
		previous = []byte{0x00}
	}
	var secrets [32]byte // AES key, then IV
	if _, err := io.ReadFull(rand, secrets[:]); err != nil {
		return nil, fmt.Errorf("wrap: random key and IV: %w", err)
	}
	key, iv := secrets[:16], secrets[16:]
	//lint:ignore SA1019 the usage-log format mandates PKCS#1 v1.5 encryption
	encryptedKey, err := rsa.EncryptPKCS1v15(rand, pub, key)
	if err != nil {
		return nil, fmt.Errorf("wrap: encrypting the AES key: %w", err)
	}

	// Inner layer: [[Increment, DataObjectId], Timestamp, bin(previous)], zero padded.
	var innerHead bytes.Buffer
	enc := msgpack.NewEncoder(&innerHead)
	if err := errors.Join(
		enc.EncodeArrayLen(3),
		enc.EncodeArrayLen(2),
		enc.EncodeInt(int64(e.Increment)),
		enc.EncodeInt(e.DataObjectID),
		enc.EncodeInt(e.Timestamp),
		enc.EncodeBytesLen(len(previous)),
	); err != nil {
		return nil, fmt.Errorf("wrap: encoding the inner layer: %w", err)
	}
	innerLen := innerHead.Len() + len(previous)
	objLen := (innerLen + aes.BlockSize - 1) / aes.BlockSize * aes.BlockSize

	// Outer layer: [bin(IV), bin(EncryptedKey), bin(EncryptedObject)]. The inner layer is built
	// in place inside the outer buffer and encrypted there, so wrapping copies previous once.
	var outerHead bytes.Buffer
	enc = msgpack.NewEncoder(&outerHead)
	if err := errors.Join(
		enc.EncodeArrayLen(3),
		enc.EncodeBytes(iv),
		enc.EncodeBytes(encryptedKey),
		enc.EncodeBytesLen(objLen),
	); err != nil {
		return nil, fmt.Errorf("wrap: encoding the outer layer: %w", err)
	}
	out := make([]byte, outerHead.Len()+objLen)
	n := copy(out, outerHead.Bytes())
	obj := out[n:]
	copy(obj[copy(obj, innerHead.Bytes()):], previous) // the rest of obj stays zero: the padding
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("wrap: %w", err)
	}
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(obj, obj)
	return out, nil
}

// Record wraps previous in a layer recording amount (negative: a decrement) on objectID at
// time ts, with fresh randomness from crypto/rand.
//
// Without quirks it writes this project's clean shape: Increment = amount, DataObjectId =
// objectID. With quirks it writes what the reference writer writes (usage-log.md, "Quirks"):
// the id as the amount, +id/+id for an increment and -id/-id for a decrement; only the sign of
// amount counts then, and objectID must fit an int32.
func Record(previous []byte, pub *rsa.PublicKey, objectID int64, amount int64, ts int64, quirks bool) ([]byte, error) {
	if objectID <= 0 {
		return nil, fmt.Errorf("record: object id %d is not positive", objectID)
	}
	if amount == 0 {
		return nil, errors.New("record: amount is 0")
	}
	var e RawEntry
	e.Timestamp = ts
	if quirks {
		if objectID > math.MaxInt32 {
			return nil, fmt.Errorf("record: object id %d does not fit the int32 Increment the reference writer puts it in", objectID)
		}
		e.Increment, e.DataObjectID = int32(objectID), objectID
		if amount < 0 {
			e.Increment, e.DataObjectID = -e.Increment, -e.DataObjectID
		}
	} else {
		if amount < math.MinInt32 || amount > math.MaxInt32 {
			return nil, fmt.Errorf("record: amount %d does not fit an int32", amount)
		}
		e.Increment, e.DataObjectID = int32(amount), objectID
	}
	return Wrap(previous, pub, e, rand.Reader)
}

// LayerIDOf returns the identity of the outermost layer of a log's bytes, checking only its
// outer shape (no decryption).
func LayerIDOf(raw []byte) (LayerID, error) {
	hdr, err := readOuter(&window{src: plainSource(raw)}, 0, len(raw))
	if err != nil {
		return LayerID{}, err
	}
	return hdr.ref.ID, nil
}

// LayerRefOf gives the identities and digest of the outermost layer of a log, without
// decrypting it.
func LayerRefOf(raw []byte) (LayerRef, error) {
	hdr, err := readOuter(&window{src: plainSource(raw)}, 0, len(raw))
	if err != nil {
		return LayerRef{}, err
	}
	return hdr.ref, nil
}
