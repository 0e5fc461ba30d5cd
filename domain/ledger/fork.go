package ledger

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// A usage log is linear: each layer wraps exactly the previous file, so one log never holds
// two different layers directly on the same layer. When the oldest new layer of an upload sits
// on a known layer (or, for the log's first layer, on the empty file) at a depth where the
// owner already applied layers, it is one of them presented with other bytes, or a fork
// (docs/uploads.md, "Tampering"). examineFork tells which.

// forkFinding is what examineFork found about an upload's oldest new layer.
type forkFinding struct {
	depth int64 // the new layer's depth
	// Set when the new layer was recognised as a known layer applied before identity
	// version 2: from the anomaly on, it is known by its identity too.
	alias      *domain.LayerAlias
	recognised string
	applied    string // the known layer's digest: reconstructed (RecognisedByIV) or none
	// Set for a fork: the known layer the new one competes with, and its digest if any.
	successor string
	differs   string
}

// anomaly is the integrity anomaly the finding records, nil when the new layer became known
// meanwhile without it (a concurrent upload recorded the same finding).
func (f *forkFinding) anomaly(st *state.State, owner domain.Owner, decoded *DecodedLog, now time.Time) *domain.UploadIntegrityAnomaly {
	first := decoded.Entries[0]
	a := domain.UploadIntegrityAnomaly{
		Owner: owner, Layer: hex.EncodeToString(first.Layer[:]), Depth: f.depth,
		AppliedDigest: f.applied, SeenDigest: hex.EncodeToString(first.Digest[:]),
		NewEntries: len(decoded.Entries), At: now.UTC(),
		Alias: f.alias, Recognised: f.recognised, Successor: f.successor,
	}
	if f.alias != nil {
		a.Differs = []string{domain.DiffersEntryBytes}
		a.NewEntries-- // the recognised layer is not new
		if _, _, known := st.KnownLayer(owner, first.Layer, first.Legacy); known {
			if rec, seen := st.SameAnomaly(owner, a); seen {
				return finishAnomaly(st, owner, rec.UploadIntegrityAnomaly) // recorded: the policy applies again
			}
			return nil
		}
	} else {
		a.Differs = []string{f.differs}
		if _, _, known := st.KnownLayer(owner, first.Layer, first.Legacy); known {
			return nil // a concurrent upload of the same log applied it meanwhile
		}
	}
	return finishAnomaly(st, owner, a)
}

// examineFork looks at the upload's oldest new layer when the owner already applied layers at
// its depth directly on the layer the walk stopped at:
//
//   - if one of them was applied before identity version 2 (known by SHA-256(IV ‖ wrapped
//     key) only) and the new layer is it with a modified IV, the new layer is that layer:
//     proved when its legacy identity, recomputed with the IV that makes its first block
//     decrypt to the entry that layer was applied with, is that layer's (RecognisedByIV); or,
//     when that layer is the only one on the stop layer, when the new layer decrypts to its
//     entry and timestamp (RecognisedByEntry, a re-encryption with another IV);
//   - otherwise, when the stop layer is the only known layer at its depth (so every layer
//     above it is its child), the new layer is a fork (DiffersFork);
//   - otherwise (the owner uploads several logs, so the layers above may belong to another),
//     the new layer is new; if the stop layer and a layer above are known by their legacy
//     identity only, it is flagged DiffersSuspectedReplay as before.
//
// It reads the events of the legacy layers it compares with (the layer's upload on the
// owner's upload stream, then its entry on its object's stream): only when a new layer meets
// a legacy one at its depth.
func (s *Service) examineFork(ctx context.Context, owner domain.Owner, decoded *DecodedLog) (*forkFinding, error) {
	if len(decoded.Entries) == 0 {
		return nil, nil
	}
	first := decoded.Entries[0]
	var (
		f            = &forkFinding{}
		above        []state.LayerAtDepth
		uniqueParent bool
		stopLegacy   bool
	)
	s.view.Read(func(st *state.State) {
		if _, _, known := st.KnownLayer(owner, first.Layer, first.Legacy); known {
			return // a concurrent upload of the same log applied it meanwhile
		}
		if stop := decoded.Stop; stop != nil {
			info, byID, ok := st.KnownLayer(owner, stop.ID, stop.Legacy)
			if !ok {
				return
			}
			f.depth, stopLegacy = info.Depth, !byID
			ids := []string{hex.EncodeToString(stop.ID[:]), hex.EncodeToString(stop.Legacy[:])}
			uniqueParent = true
			for _, l := range st.LayersAt(owner, info.Depth) {
				uniqueParent = uniqueParent && slices.Contains(ids, l.ID)
			}
		}
		f.depth++
		above = st.LayersAt(owner, f.depth)
	})
	if len(above) == 0 {
		return nil, nil
	}
	var legacy []state.LayerAtDepth
	for _, l := range above {
		// Every layer recorded since identity version 2 has a digest or a length.
		if l.Digest == "" && l.Length == 0 {
			legacy = append(legacy, l)
		}
	}
	seen := RecordedEntry{ObjectID: first.ObjectID, Decrement: first.Decrement, Amount: first.Amount, Timestamp: first.Timestamp}
	for _, l := range legacy {
		rec, ok, err := s.recordedEntry(ctx, owner, l.ID, l.Timestamp)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		if decoded.Originals != nil {
			for _, ref := range decoded.Originals(rec) {
				if hex.EncodeToString(ref.Legacy[:]) == l.ID && ref.ID == first.Layer {
					f.recognised, f.applied = domain.RecognisedByIV, hex.EncodeToString(ref.Digest[:])
					f.alias = &domain.LayerAlias{Legacy: l.ID, Layer: hex.EncodeToString(first.Layer[:]), Digest: f.applied, Length: int64(ref.Length)}
					return f, nil
				}
			}
		}
		if uniqueParent && len(above) == 1 && rec == seen {
			f.recognised = domain.RecognisedByEntry
			// No digest: the original's cannot be recovered, and the one seen is not the
			// applied layer's (compareStop). The length, the same for the same entry, marks
			// the identity as recorded since version 2.
			f.alias = &domain.LayerAlias{Legacy: l.ID, Layer: hex.EncodeToString(first.Layer[:]), Length: int64(first.Length)}
			return f, nil
		}
	}
	switch {
	case uniqueParent:
		f.differs, f.successor = domain.DiffersFork, above[0].ID
		for _, l := range above {
			if l.Digest != "" || l.Length != 0 { // name the layer by its identity version 2 when it has one
				f.successor, f.applied = l.ID, l.Digest
			}
		}
	case stopLegacy && len(legacy) > 0:
		f.differs = domain.DiffersSuspectedReplay
	default:
		return nil, nil
	}
	return f, nil
}

// recordedEntry finds the entry an applied layer was applied with: the committed upload that
// lists the layer on the owner's upload stream, then the layer's event among that upload's
// events on its objects' streams. ok is false when the events do not hold it.
func (s *Service) recordedEntry(ctx context.Context, owner domain.Owner, layer string, timestamp int64) (RecordedEntry, bool, error) {
	stream := domain.UploadStream(owner)
	prepared := map[uuid.UUID]domain.UploadPrepared{}
	var found *domain.UploadPrepared
	const page = 256
	for from := uint64(0); found == nil; {
		batch, err := s.store.ReadStream(ctx, stream, eventstore.Forwards, from, page)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			return RecordedEntry{}, false, nil
		}
		if err != nil {
			return RecordedEntry{}, false, unavailable(fmt.Errorf("read %s: %w", stream, err))
		}
		for _, ev := range batch {
			switch ev.Type {
			case domain.EventUploadPrepared:
				p, err := domain.DecodeUploadPrepared(ev.Data)
				if err != nil {
					return RecordedEntry{}, false, fmt.Errorf("decode %s@%d: %w", stream, ev.Revision, err)
				}
				if slices.Contains(p.Layers, layer) {
					prepared[p.UploadID] = p
				}
			case domain.EventUploadCommitted:
				c, err := domain.DecodeUploadCommitted(ev.Data)
				if err != nil {
					return RecordedEntry{}, false, fmt.Errorf("decode %s@%d: %w", stream, ev.Revision, err)
				}
				if p, ok := prepared[c.UploadID]; ok {
					found = &p
				}
			}
			if found != nil {
				break // the events after it need not be read (nor decoded)
			}
		}
		if found != nil || len(batch) < page {
			break
		}
		from = batch[len(batch)-1].Revision + 1
	}
	if found == nil {
		return RecordedEntry{}, false, nil
	}
	for _, step := range found.Changes {
		evs, err := s.store.ReadStream(ctx, domain.DataObjectStream(step.ObjectID), eventstore.Forwards, step.FromRevision+1, step.Events)
		if err != nil {
			return RecordedEntry{}, false, unavailable(fmt.Errorf("read the events of upload %s: %w", found.UploadID, err))
		}
		for _, ev := range evs {
			if ev.Type != domain.EventIncrementApplied && ev.Type != domain.EventDecrementApplied {
				continue
			}
			vc, err := domain.DecodeValueChanged(ev.Data)
			if err != nil {
				return RecordedEntry{}, false, fmt.Errorf("decode %s@%d: %w", ev.Stream, ev.Revision, err)
			}
			if vc.Upload != nil && found.EntryLayer(vc.Upload) == layer && vc.Upload.UploadID == found.UploadID {
				return RecordedEntry{ObjectID: vc.ObjectID, Decrement: ev.Type == domain.EventDecrementApplied,
					Amount: vc.Amount, Timestamp: timestamp}, true, nil
			}
		}
	}
	return RecordedEntry{}, false, nil
}
