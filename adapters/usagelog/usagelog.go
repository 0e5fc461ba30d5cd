package usagelog

import (
	"bytes"
	"crypto/aes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"math"

	"github.com/vmihailenco/msgpack/v5"
)

// LayerID identifies one layer of a usage log: the SHA-256 of its EncryptedKey. The wrapped
// key is a fresh random AES key under fresh PKCS#1 v1.5 padding, so it is unique per layer, and
// it is the one part of a layer nobody can change without the server's private key and still
// have the layer decrypt: a layer whose IV or ciphertext was modified keeps its identity
// (docs/uploads.md, "Tampering"). Hashing it costs O(1) per layer however long the nested
// history is.
type LayerID [32]byte

// String returns the identity as lower-case hex.
func (id LayerID) String() string { return hex.EncodeToString(id[:]) }

// LayerDigest is the SHA-256 of the bytes a layer's entry is decrypted from: its IV, its
// EncryptedKey and the first headDigestBytes of its EncryptedObject (or all of it when
// shorter). CBC decrypts plaintext block i from ciphertext blocks i-1 and i (the IV for
// block 0), and the inner header (Data, Timestamp, the length of PreviousObjectEncrypted) is
// at most 30 bytes, so a layer whose digest is unchanged decrypts to the same entry.
type LayerDigest [32]byte

// String returns the digest as lower-case hex.
func (d LayerDigest) String() string { return hex.EncodeToString(d[:]) }

// headDigestBytes covers the inner header (at most 30 bytes: two array tags, an int32 in 5
// bytes, two int64s in 9, a bin32 header in 5) in whole AES blocks.
const headDigestBytes = 32

// LayerRef is what the walk knows of a layer before decrypting it.
type LayerRef struct {
	// ID is the layer's identity, SHA-256(EncryptedKey).
	ID LayerID
	// Legacy is the identity Tally used before version 2 of the identity, SHA-256(IV ‖
	// EncryptedKey): the events written before hold it, so a layer is known under either.
	Legacy LayerID
	// Digest covers every byte the layer's entry is decrypted from.
	Digest LayerDigest
	// Length is the EncryptedObject's length in bytes, from its bin header (read anyway): a
	// layer truncated or extended keeps its digest but not its length.
	Length int
}

func layerIDOf(encryptedKey []byte) LayerID { return sha256.Sum256(encryptedKey) }

func legacyLayerIDOf(iv, encryptedKey []byte) LayerID {
	h := sha256.New()
	h.Write(iv)
	h.Write(encryptedKey)
	var id LayerID
	h.Sum(id[:0])
	return id
}

func layerDigestOf(iv, encryptedKey, objectHead []byte) LayerDigest {
	h := sha256.New()
	h.Write(iv)
	h.Write(encryptedKey)
	h.Write(objectHead)
	var d LayerDigest
	h.Sum(d[:0])
	return d
}

// Entry is one decoded layer in this project's terms (usage-log.md, "Target and amount").
type Entry struct {
	Layer LayerID
	// Legacy is the layer's identity before version 2 (LayerRef.Legacy).
	Legacy LayerID
	// Digest covers the bytes the entry was decrypted from (LayerDigest); Length is the
	// layer's EncryptedObject length (LayerRef.Length).
	Digest    LayerDigest
	Length    int
	ObjectID  int64 // |DataObjectId|, > 0
	Decrement bool  // Increment < 0 || DataObjectId < 0
	Amount    int64 // |Increment|, > 0; int64 because |MinInt32| does not fit an int32
	Timestamp int64 // Unix seconds, when the layer was written
}

// Order is the order in which Decode returns entries.
type Order int

const (
	// NewestFirst is the order of the walk: outermost layer first.
	NewestFirst Order = iota
	// OldestFirst is the order in which entries should be applied.
	OldestFirst
)

// The kinds of failure of Decode. Returned errors wrap one of them (errors.Is) with details.
var (
	// ErrEmpty: the data is the empty string.
	ErrEmpty = errors.New("usage log is empty")
	// ErrCorrupted: the data is not a well-formed log this server can decrypt.
	ErrCorrupted = errors.New("usage log is corrupted")
	// ErrTooManyEntries: the log holds more new (unknown) layers than the decoder accepts.
	ErrTooManyEntries = errors.New("usage log has too many new entries")
	// ErrTooLarge: the data exceeds the decoder's input limit. Errors of this kind also match
	// ErrCorrupted, so that a caller mapping only the three main kinds still refuses them.
	ErrTooLarge = errors.New("usage log is too large")
)

// ivOrigin is what recognising a layer under another IV needs: a layer whose IV was modified
// (and nothing else in the bytes its entry decrypts from) keeps its wrapped key and first
// ciphertext block, so the IV it had is the one that makes that block decrypt to the entry it
// was applied with (Originals).
type ivOrigin struct {
	encryptedKey []byte
	length       int                 // the EncryptedObject's length
	head         []byte              // the first headDigestBytes of the EncryptedObject
	block0       [aes.BlockSize]byte // AES decryption of the first ciphertext block: IV ⊕ plaintext
	afterEntry   []byte              // the plaintext from the PreviousObjectEncrypted header on
}

// Originals returns the identities and digest the layer had if its plaintext began with the
// entry given (amount and id as recorded) under the IV it had then, one per way a writer
// that uses the smallest integer encodings (MessagePack-CSharp, Wrap) writes that entry: an
// increment as (+amount, +id), a decrement as (−amount, +id), (+amount, −id) or (−amount,
// −id). If the layer was applied with one of these legacy identities, it is that layer.
func (l *Log) Originals(objectID int64, decrement bool, amount, timestamp int64) []LayerRef {
	o := l.innermost
	if o == nil || objectID <= 0 || amount <= 0 || amount > math.MaxInt32+1 {
		return nil
	}
	type raw struct{ inc, id int64 }
	ways := []raw{{amount, objectID}}
	if decrement {
		ways = []raw{{-amount, objectID}, {amount, -objectID}, {-amount, -objectID}}
	}
	var out []LayerRef
	for _, w := range ways {
		if w.inc < math.MinInt32 || w.inc > math.MaxInt32 {
			continue
		}
		var plain bytes.Buffer
		enc := msgpack.NewEncoder(&plain)
		if errors.Join(enc.EncodeArrayLen(3), enc.EncodeArrayLen(2), enc.EncodeInt(w.inc),
			enc.EncodeInt(w.id), enc.EncodeInt(timestamp)) != nil {
			continue
		}
		plain.Write(o.afterEntry)
		var block [aes.BlockSize]byte // zero padding where the plaintext is shorter
		copy(block[:], plain.Bytes())
		var iv [aes.BlockSize]byte
		subtle.XORBytes(iv[:], o.block0[:], block[:])
		out = append(out, LayerRef{
			ID:     layerIDOf(o.encryptedKey),
			Legacy: legacyLayerIDOf(iv[:], o.encryptedKey),
			Digest: layerDigestOf(iv[:], o.encryptedKey, o.head),
			Length: o.length,
		})
	}
	return out
}
