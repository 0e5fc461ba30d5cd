package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// StreamReader reads single streams; eventstore.Store is one.
type StreamReader interface {
	ReadStream(ctx context.Context, stream string, dir eventstore.Direction, from uint64, max int) ([]eventstore.RecordedEvent, error)
}

// ErrNoSuchObject is returned for a data object whose stream has no events.
var ErrNoSuchObject = errors.New("no such data object")

// UploadStatus is where an upload's changes stand, as its owner's upload stream says.
type UploadStatus string

const (
	// UploadStatusCommitted: UploadCommitted was appended; the changes count.
	UploadStatusCommitted UploadStatus = "committed"
	// UploadStatusAborted: UploadAborted was appended; the changes never count.
	UploadStatusAborted UploadStatus = "aborted"
	// UploadStatusPending: neither yet; the changes do not count (yet).
	UploadStatusPending UploadStatus = "pending"
)

// uploadDecision is what an owner's upload stream decided about one upload and when the store
// recorded the decision (status "" while undecided), and, for the uploads History asks about,
// the layers their UploadPrepared lists: an entry in the compact encoding names its layer by
// index in them (docs/encoding.md).
type uploadDecision struct {
	status   UploadStatus
	recorded time.Time
	prepared *domain.UploadPrepared // Layers only
}

// HistoryEntry is one event of a data object's stream, as the audit history shows it.
type HistoryEntry struct {
	Revision uint64              `json:"revision"`
	Position eventstore.Position `json:"position"`
	EventID  uuid.UUID           `json:"eventId"`
	Type     string              `json:"type"`
	// Amount is the signed change of an increment or decrement (negative for decrements).
	Amount int64 `json:"amount,omitempty"`
	// Before and After are the int values the event recorded (set for value changes and sets;
	// for DataObjectAdded only After, the initial value).
	Before *int32 `json:"before,omitempty"`
	After  *int32 `json:"after,omitempty"`
	// StringValue is the string value after a DataObjectAdded or StringValueSet.
	StringValue *string `json:"stringValue,omitempty"`
	// At is the time the ledger gave the event (its clock; for upload entries, the log
	// timestamp).
	At time.Time `json:"at"`
	// Recorded is when the store committed the event.
	Recorded time.Time `json:"recorded"`
	// Upload fields are set for changes that came from an uploaded usage log.
	UploadID     *uuid.UUID   `json:"uploadId,omitempty"`
	Layer        string       `json:"layer,omitempty"`
	LogTimestamp *time.Time   `json:"logTimestamp,omitempty"`
	Anomaly      string       `json:"anomaly,omitempty"`
	UploadStatus UploadStatus `json:"uploadStatus,omitempty"`
	// IntegrityAnomalies are the ids of the integrity anomalies recorded for the entry's layer
	// (ObjectHistory.IntegrityAnomalies).
	IntegrityAnomalies []uuid.UUID `json:"integrityAnomalies,omitempty"`
	// Correction is the reason of an operator's compensating change.
	Correction string `json:"correction,omitempty"`
	// Counted says whether the change counts in the object's value: false only for changes of
	// aborted or still pending uploads.
	Counted bool `json:"counted"`
	// Who made the change.
	TokenID    *uuid.UUID `json:"tokenId,omitempty"`
	Admin      bool       `json:"admin,omitempty"`
	RequestID  string     `json:"requestId,omitempty"`
	ClientAddr string     `json:"clientAddr,omitempty"`
}

// ObjectHistory is every event of one data object, in stream order.
type ObjectHistory struct {
	ObjectID int64          `json:"objectId"`
	Owner    domain.Owner   `json:"owner"`
	Name     string         `json:"name"`
	Entries  []HistoryEntry `json:"entries"`
	// IntegrityAnomalies are the anomalies recorded for the layers of the entries (integrity.go).
	IntegrityAnomalies []HistoryAnomaly `json:"integrityAnomalies,omitempty"`
}

// History reads a data object's stream and its owner's upload stream and returns the object's
// events with the status of the uploads they came from.
func History(ctx context.Context, r StreamReader, objectID int64) (*ObjectHistory, error) {
	evs, added, err := readObject(ctx, r, objectID)
	if err != nil {
		return nil, err
	}
	decisions, err := readUploadDecisions(ctx, r, added.Owner, uploadsOf(evs))
	if err != nil {
		return nil, err
	}
	h := &ObjectHistory{ObjectID: objectID, Owner: added.Owner, Name: added.Name, Entries: make([]HistoryEntry, 0, len(evs))}
	for _, ev := range evs {
		e, err := historyEntry(ev, decisions)
		if err != nil {
			return nil, err
		}
		h.Entries = append(h.Entries, e)
	}
	if err := attachIntegrity(ctx, r, h); err != nil {
		return nil, err
	}
	return h, nil
}

func historyEntry(ev eventstore.RecordedEvent, decisions map[uuid.UUID]uploadDecision) (HistoryEntry, error) {
	e := HistoryEntry{Revision: ev.Revision, Position: ev.Position, EventID: ev.ID, Type: ev.Type, Recorded: ev.Recorded, Counted: true}
	if len(ev.Metadata) > 0 {
		var m domain.Metadata
		if err := json.Unmarshal(ev.Metadata, &m); err != nil {
			return e, fmt.Errorf("decode metadata of %s %d: %w", ev.Type, ev.Revision, err)
		}
		if m.TokenID != uuid.Nil {
			id := m.TokenID
			e.TokenID = &id
		}
		e.Admin, e.RequestID, e.ClientAddr = m.Admin, m.RequestID, m.ClientAddr
	}
	decodeErr := func(err error) error { return fmt.Errorf("decode %s %d: %w", ev.Type, ev.Revision, err) }
	switch ev.Type {
	case domain.EventDataObjectAdded:
		var d domain.DataObjectAdded
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return e, decodeErr(err)
		}
		e.At, e.After, e.StringValue = d.At, &d.IntValue, &d.StringValue
	case domain.EventIntValueSet:
		var d domain.IntValueSet
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return e, decodeErr(err)
		}
		e.At, e.Before, e.After = d.At, &d.Before, &d.After
	case domain.EventStringValueSet:
		var d domain.StringValueSet
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return e, decodeErr(err)
		}
		e.At, e.StringValue = d.At, &d.After
	case domain.EventIncrementApplied, domain.EventDecrementApplied:
		d, err := domain.DecodeValueChanged(ev.Data)
		if err != nil {
			return e, decodeErr(err)
		}
		e.At, e.Before, e.After, e.Correction = d.At, &d.Before, &d.After, d.Correction
		e.Amount = int64(domain.DirectionOf(ev.Type)) * d.Amount
		if d.Upload != nil {
			id, ts := d.Upload.UploadID, d.Upload.LogTimestamp
			e.UploadID, e.Layer, e.LogTimestamp, e.Anomaly = &id, d.Upload.Layer, &ts, d.Upload.Anomaly
			e.UploadStatus = UploadStatusPending
			dec := decisions[id]
			if dec.status != "" {
				e.UploadStatus = dec.status
			}
			if dec.prepared != nil {
				e.Layer = dec.prepared.EntryLayer(d.Upload)
			}
			e.Counted = e.UploadStatus == UploadStatusCommitted
		}
	case domain.EventDataObjectRemoved:
		var d domain.DataObjectRemoved
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return e, decodeErr(err)
		}
		e.At = d.At
	}
	return e, nil
}

// readStream reads a whole stream forwards; a stream with no events gives none.
func readStream(ctx context.Context, r StreamReader, stream string) ([]eventstore.RecordedEvent, error) {
	const page = 1024
	var out []eventstore.RecordedEvent
	var from uint64
	for {
		evs, err := r.ReadStream(ctx, stream, eventstore.Forwards, from, page)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", stream, err)
		}
		out = append(out, evs...)
		if len(evs) < page {
			return out, nil
		}
		from = evs[len(evs)-1].Revision + 1
	}
}

// readObjectAndDecisions reads a data object's stream, decodes its first event, and reads its
// owner's upload decisions: what History and ValueAt both start from.
func readObjectAndDecisions(ctx context.Context, r StreamReader, objectID int64) ([]eventstore.RecordedEvent, domain.DataObjectAdded, map[uuid.UUID]uploadDecision, error) {
	evs, added, err := readObject(ctx, r, objectID)
	if err != nil {
		return nil, added, nil, err
	}
	decisions, err := readUploadDecisions(ctx, r, added.Owner, nil)
	return evs, added, decisions, err
}

// readObject reads a data object's stream and decodes its first event.
func readObject(ctx context.Context, r StreamReader, objectID int64) ([]eventstore.RecordedEvent, domain.DataObjectAdded, error) {
	var added domain.DataObjectAdded
	evs, err := readStream(ctx, r, domain.DataObjectStream(objectID))
	if err != nil {
		return nil, added, err
	}
	if len(evs) == 0 || evs[0].Type != domain.EventDataObjectAdded {
		return nil, added, fmt.Errorf("data object %d: %w", objectID, ErrNoSuchObject)
	}
	if err := json.Unmarshal(evs[0].Data, &added); err != nil {
		return nil, added, fmt.Errorf("decode %s of data object %d: %w", evs[0].Type, objectID, err)
	}
	return evs, added, nil
}

// uploadsOf lists the uploads whose entries among evs name their layer by index: their
// UploadPrepared gives it.
func uploadsOf(evs []eventstore.RecordedEvent) map[uuid.UUID]bool {
	out := map[uuid.UUID]bool{}
	for _, ev := range evs {
		if ev.Type != domain.EventIncrementApplied && ev.Type != domain.EventDecrementApplied {
			continue
		}
		if d, err := domain.DecodeValueChanged(ev.Data); err == nil && d.Upload != nil && d.Upload.Layer == "" {
			out[d.Upload.UploadID] = true
		}
	}
	return out
}

// readUploadDecisions reads an owner's upload stream: which uploads were committed or aborted,
// and when. Exactly one decision follows each UploadPrepared; the first one wins. The
// UploadPrepared of the uploads in prepared (none when nil) is kept too.
func readUploadDecisions(ctx context.Context, r StreamReader, owner domain.Owner, prepared map[uuid.UUID]bool) (map[uuid.UUID]uploadDecision, error) {
	evs, err := readStream(ctx, r, domain.UploadStream(owner))
	if err != nil {
		return nil, err
	}
	out := map[uuid.UUID]uploadDecision{}
	for _, ev := range evs {
		var status UploadStatus
		switch ev.Type {
		case domain.EventUploadPrepared:
			if len(prepared) == 0 {
				continue
			}
			id, err := domain.PreparedUploadID(ev.Data)
			if err != nil {
				return nil, fmt.Errorf("decode %s %d@%s: %w", ev.Type, ev.Revision, ev.Stream, err)
			}
			if dec := out[id]; prepared[id] && dec.prepared == nil {
				p, err := domain.DecodeUploadPrepared(ev.Data)
				if err != nil {
					return nil, fmt.Errorf("decode %s %d@%s: %w", ev.Type, ev.Revision, ev.Stream, err)
				}
				dec.prepared = &domain.UploadPrepared{Layers: p.Layers}
				out[id] = dec
			}
			continue
		case domain.EventUploadCommitted:
			status = UploadStatusCommitted
		case domain.EventUploadAborted:
			status = UploadStatusAborted
		default:
			continue
		}
		var d struct{ UploadID uuid.UUID }
		var err error
		if d.UploadID, _, err = domain.DecodeUploadDecision(ev.Type, ev.Data); err != nil {
			return nil, fmt.Errorf("decode %s %d@%s: %w", ev.Type, ev.Revision, ev.Stream, err)
		}
		if dec := out[d.UploadID]; dec.status == "" {
			dec.status, dec.recorded = status, ev.Recorded
			out[d.UploadID] = dec
		}
	}
	return out, nil
}
