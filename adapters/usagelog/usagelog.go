package usagelog

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
)

// LayerID identifies one layer of a usage log: the SHA-256 of its IV followed by its
// EncryptedKey. Both are fresh random values per layer, so the pair is unique, and hashing them
// costs O(1) per layer however long the nested history is.
type LayerID [32]byte

// String returns the identity as lower-case hex.
func (id LayerID) String() string { return hex.EncodeToString(id[:]) }

func layerIDOf(iv, encryptedKey []byte) LayerID {
	h := sha256.New()
	h.Write(iv)
	h.Write(encryptedKey)
	var id LayerID
	h.Sum(id[:0])
	return id
}

// Entry is one decoded layer in this project's terms (usage-log.md, "Target and amount").
type Entry struct {
	Layer     LayerID
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
