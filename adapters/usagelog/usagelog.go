package usagelog

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
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
	// Digest covers the bytes the entry was decrypted from (LayerDigest).
	Digest    LayerDigest
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
