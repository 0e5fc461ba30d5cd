package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// Upload record states, as `tally uploads list --state` names them.
const (
	UploadStateCommitted = "committed"
	UploadStateAborted   = "aborted"
	UploadStatePending   = "pending"
	UploadStateRefused   = "refused"
	// UploadStateAnomaly is an integrity anomaly: an upload presented a known layer whose
	// bytes differ from the ones applied (docs/uploads.md, "Tampering").
	UploadStateAnomaly = "anomaly"
)

// UploadFilter selects upload records.
type UploadFilter struct {
	State string        // "" for every state
	Owner *domain.Owner // nil for every owner
}

// UploadRecord is one upload or one refused log version of an owner, as its upload stream
// records it.
type UploadRecord struct {
	Owner    domain.Owner `json:"owner"`
	State    string       `json:"state"`
	ID       uuid.UUID    `json:"id"` // the upload's id, or the refusal's
	At       time.Time    `json:"at"`
	Recorded time.Time    `json:"recorded"` // when the store committed the first event
	// Of uploads:
	Entries     int                   `json:"entries,omitempty"` // layers the upload made known
	Skipped     []domain.SkippedEntry `json:"skipped,omitempty"`
	Resolution  *uuid.UUID            `json:"resolution,omitempty"` // the decision it carried out
	AbortReason string                `json:"abortReason,omitempty"`
	// Of refusals:
	Reason      string               `json:"reason,omitempty"`
	Message     string               `json:"message,omitempty"`
	NewestLayer string               `json:"newestLayer,omitempty"`
	NewEntries  int                  `json:"newEntries,omitempty"`
	Offending   *domain.RefusedEntry `json:"offending,omitempty"`
	// Repeats counts the later refusals of the same version that were recorded (a lower
	// bound: they are recorded at most once per interval).
	Repeats int64     `json:"repeats,omitempty"`
	LastAt  time.Time `json:"lastAt,omitzero"`
	// Open is true while the refused version's newest layer is not known: the log is stuck.
	Open bool `json:"open,omitempty"`
	// Resolutions are the operators' decisions on this refusal, oldest first.
	Resolutions []domain.UploadResolutionDecided `json:"resolutions,omitempty"`
	// Of integrity anomalies: what differed, both versions' digests and whether an operator
	// has acknowledged it (Reason then holds the acknowledgement's reason).
	Anomaly      *domain.UploadIntegrityAnomaly `json:"anomaly,omitempty"`
	Acknowledged bool                           `json:"acknowledged,omitempty"`
	// Who sent the upload (or the first refused one).
	TokenID    *uuid.UUID `json:"tokenId,omitempty"`
	ClientAddr string     `json:"clientAddr,omitempty"`
	RequestID  string     `json:"requestId,omitempty"`
}

// ListUploads reads the upload streams of the selected owners (every owner with one, when
// the filter names none) and returns their records, oldest first per owner. It reads the
// streams whole: an operator's tool, not a hot path.
func (s *Service) ListUploads(ctx context.Context, f UploadFilter) ([]UploadRecord, error) {
	switch f.State {
	case "", UploadStateCommitted, UploadStateAborted, UploadStatePending, UploadStateRefused, UploadStateAnomaly:
	default:
		return nil, fmt.Errorf("%w: state %q is not one of committed, aborted, pending, refused, anomaly", ErrInvalid, f.State)
	}
	if err := s.syncView(ctx); err != nil {
		return nil, err
	}
	var owners []domain.Owner
	s.view.Read(func(st *state.State) {
		if f.Owner != nil {
			owners = append(owners, *f.Owner)
			return
		}
		for _, u := range st.Uploads {
			owners = append(owners, u.Owner)
		}
	})
	sort.Slice(owners, func(i, j int) bool {
		if owners[i].Type != owners[j].Type {
			return owners[i].Type < owners[j].Type
		}
		return owners[i].ID < owners[j].ID
	})
	out := []UploadRecord{}
	for _, o := range owners {
		recs, err := s.uploadRecords(ctx, o)
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			if f.State == "" || r.State == f.State {
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// uploadRecords folds one owner's upload stream into records.
func (s *Service) uploadRecords(ctx context.Context, owner domain.Owner) ([]UploadRecord, error) {
	stream := domain.UploadStream(owner)
	var evs []eventstore.RecordedEvent
	const page = 1024
	for from := uint64(0); ; {
		batch, err := s.store.ReadStream(ctx, stream, eventstore.Forwards, from, page)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			break
		}
		if err != nil {
			return nil, unavailable(fmt.Errorf("read %s: %w", stream, err))
		}
		evs = append(evs, batch...)
		if len(batch) < page {
			break
		}
		from = batch[len(batch)-1].Revision + 1
	}
	var out []UploadRecord
	byID := map[uuid.UUID]int{}
	for _, ev := range evs {
		var meta domain.Metadata
		_ = json.Unmarshal(ev.Metadata, &meta) // who: best effort, the record stands without it
		switch ev.Type {
		case domain.EventUploadPrepared:
			e, err := domain.DecodeUploadPrepared(ev.Data)
			if err != nil {
				return nil, fmt.Errorf("%s %d@%s: %w", ev.Type, ev.Revision, ev.Stream, err)
			}
			r := UploadRecord{Owner: owner, State: UploadStatePending, ID: e.UploadID, At: e.At, Recorded: ev.Recorded,
				Entries: len(e.Layers), Skipped: e.Skipped, Resolution: e.Resolution, ClientAddr: meta.ClientAddr, RequestID: meta.RequestID}
			if meta.TokenID != uuid.Nil {
				id := meta.TokenID
				r.TokenID = &id
			}
			byID[e.UploadID] = len(out)
			out = append(out, r)
		case domain.EventUploadCommitted, domain.EventUploadAborted:
			var e domain.UploadAborted // UploadCommitted's fields are a subset
			var err error
			if e.UploadID, e.Reason, err = domain.DecodeUploadDecision(ev.Type, ev.Data); err != nil {
				return nil, fmt.Errorf("%s %d@%s: %w", ev.Type, ev.Revision, ev.Stream, err)
			}
			if i, ok := byID[e.UploadID]; ok && out[i].State == UploadStatePending {
				out[i].State = UploadStateCommitted
				if ev.Type == domain.EventUploadAborted {
					out[i].State, out[i].AbortReason = UploadStateAborted, e.Reason
				}
			}
		case domain.EventUploadRefused:
			var e domain.UploadRefused
			if err := json.Unmarshal(ev.Data, &e); err != nil {
				return nil, fmt.Errorf("%s %d@%s: %w", ev.Type, ev.Revision, ev.Stream, err)
			}
			r := UploadRecord{Owner: owner, State: UploadStateRefused, ID: e.RefusalID, At: e.At, Recorded: ev.Recorded,
				Reason: e.Reason, Message: e.Message, NewestLayer: e.NewestLayer, NewEntries: e.NewEntries, Offending: e.Offending,
				LastAt: e.At, ClientAddr: meta.ClientAddr, RequestID: meta.RequestID}
			if meta.TokenID != uuid.Nil {
				id := meta.TokenID
				r.TokenID = &id
			}
			byID[e.RefusalID] = len(out)
			out = append(out, r)
		case domain.EventUploadRefusalRepeated:
			var e domain.UploadRefusalRepeated
			if err := json.Unmarshal(ev.Data, &e); err != nil {
				return nil, fmt.Errorf("%s %d@%s: %w", ev.Type, ev.Revision, ev.Stream, err)
			}
			if i, ok := byID[e.RefusalID]; ok {
				out[i].Repeats += e.Repeats
				out[i].LastAt = e.At
				if n := e.Newest; n != nil {
					out[i].NewestLayer, out[i].NewEntries, out[i].Offending, out[i].Message = n.NewestLayer, n.NewEntries, n.Offending, n.Message
				}
			}
		case domain.EventUploadIntegrityAnomaly:
			var e domain.UploadIntegrityAnomaly
			if err := json.Unmarshal(ev.Data, &e); err != nil {
				return nil, fmt.Errorf("%s %d@%s: %w", ev.Type, ev.Revision, ev.Stream, err)
			}
			r := UploadRecord{Owner: owner, State: UploadStateAnomaly, ID: e.AnomalyID, At: e.At, Recorded: ev.Recorded,
				NewEntries: e.NewEntries, Anomaly: &e, ClientAddr: meta.ClientAddr, RequestID: meta.RequestID}
			if meta.TokenID != uuid.Nil {
				id := meta.TokenID
				r.TokenID = &id
			}
			byID[e.AnomalyID] = len(out)
			out = append(out, r)
		case domain.EventUploadIntegrityAcknowledged:
			var e domain.UploadIntegrityAcknowledged
			if err := json.Unmarshal(ev.Data, &e); err != nil {
				return nil, fmt.Errorf("%s %d@%s: %w", ev.Type, ev.Revision, ev.Stream, err)
			}
			if i, ok := byID[e.AnomalyID]; ok && out[i].State == UploadStateAnomaly {
				out[i].Acknowledged, out[i].Reason = true, e.Reason
			}
		case domain.EventUploadResolutionDecided:
			var e domain.UploadResolutionDecided
			if err := json.Unmarshal(ev.Data, &e); err != nil {
				return nil, fmt.Errorf("%s %d@%s: %w", ev.Type, ev.Revision, ev.Stream, err)
			}
			if i, ok := byID[e.RefusalID]; ok {
				out[i].Resolutions = append(out[i].Resolutions, e)
			}
		}
	}
	// A refusal is open while the projection knows no layer of its version's newest.
	s.view.Read(func(st *state.State) {
		open, ok := st.OpenRefusal(owner)
		for i := range out {
			if out[i].State == UploadStateRefused && ok && out[i].ID == open.RefusalID {
				out[i].Open = true
			}
		}
	})
	return out, nil
}
