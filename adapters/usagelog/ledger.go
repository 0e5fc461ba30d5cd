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
func (d *LedgerDecoder) Decode(ctx context.Context, data string, known func(ledger.LayerRef) bool) (*ledger.DecodedLog, error) {
	l, err := d.Decoder.DecodeLog(ctx, data, OldestFirst, func(r LayerRef) bool { return known(ledgerRef(r)) })
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
	out := &ledger.DecodedLog{Entries: make([]ledger.LogEntry, len(l.Entries)), StopDepth: l.StopDepth, FileDigest: l.FileDigest}
	for i, e := range l.Entries {
		out.Entries[i] = ledger.LogEntry{
			Layer: e.Layer, Legacy: e.Legacy, Digest: e.Digest, Length: e.Length,
			ObjectID: e.ObjectID, Decrement: e.Decrement, Amount: e.Amount, Timestamp: e.Timestamp,
		}
	}
	if len(l.Entries) > 0 {
		out.Originals = func(r ledger.RecordedEntry) []ledger.LayerRef {
			refs := l.Originals(r.ObjectID, r.Decrement, r.Amount, r.Timestamp)
			out := make([]ledger.LayerRef, len(refs))
			for i, ref := range refs {
				out[i] = ledgerRef(ref)
			}
			return out
		}
	}
	if l.Stop != nil {
		stop := ledgerRef(*l.Stop)
		out.Stop = &stop
	}
	return out, nil
}

func ledgerRef(r LayerRef) ledger.LayerRef {
	return ledger.LayerRef{ID: r.ID, Legacy: r.Legacy, Digest: r.Digest, Length: r.Length}
}
