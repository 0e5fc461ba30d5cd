package usagelog

import (
	"context"
	"errors"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
)

// LedgerDecoder adapts a Decoder to the ledger's LogDecoder port: entries oldest first, and the
// failure kinds as the Cryptolens refusals the ledger returns.
type LedgerDecoder struct {
	Decoder *Decoder
}

// NewLedgerDecoder returns a LedgerDecoder for the key ring with the default limits.
func NewLedgerDecoder(keys *KeyRing) *LedgerDecoder {
	return &LedgerDecoder{Decoder: &Decoder{Keys: keys}}
}

// Decode implements ledger.LogDecoder.
func (d *LedgerDecoder) Decode(ctx context.Context, data string, known func(layer [32]byte) bool) ([]ledger.LogEntry, error) {
	entries, err := d.Decoder.Decode(ctx, data, OldestFirst, func(id LayerID) bool { return known(id) })
	switch {
	case err == nil:
	case errors.Is(err, ErrEmpty):
		return nil, domain.ErrDataEmpty
	case errors.Is(err, ErrTooManyEntries):
		return nil, domain.ErrTooManyEntries
	case errors.Is(err, ErrCorrupted):
		return nil, domain.ErrDataCorrupted
	default:
		return nil, err
	}
	out := make([]ledger.LogEntry, len(entries))
	for i, e := range entries {
		out[i] = ledger.LogEntry{Layer: e.Layer, ObjectID: e.ObjectID, Decrement: e.Decrement, Amount: e.Amount, Timestamp: e.Timestamp}
	}
	return out, nil
}
