package projections

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// ValueAsOf is a data object's value as the ledger held it at a moment.
type ValueAsOf struct {
	ObjectID int64     `json:"objectId"`
	At       time.Time `json:"at"`
	// Exists is false when the object was not yet added at At.
	Exists      bool   `json:"exists"`
	Removed     bool   `json:"removed"`
	IntValue    int32  `json:"intValue"`
	StringValue string `json:"stringValue"`
	// Revision is the last revision of the object's stream recorded at or before At.
	Revision uint64 `json:"revision"`
	// AsOf is the store position the answer reflects, when it comes from a read model that
	// follows the store (absent from a replay of the store, which reflects all of it).
	AsOf eventstore.Position `json:"asOf,omitempty"`
}

// ValueAt returns a data object's value as of at: the fold of the object's events recorded at
// or before at, where a change of an upload counts from the moment its UploadCommitted was
// recorded (at or before at), never if the upload was aborted. This is the value the current
// state projection held at that moment, folding the store's events with Recorded <= at.
func ValueAt(ctx context.Context, r StreamReader, objectID int64, at time.Time) (*ValueAsOf, error) {
	evs, added, decisions, err := readObjectAndDecisions(ctx, r, objectID)
	if err != nil {
		return nil, err
	}
	v := &ValueAsOf{ObjectID: objectID, At: at}
	for _, ev := range evs {
		if ev.Recorded.After(at) {
			continue // not yet recorded at that moment
		}
		v.Revision = ev.Revision
		decodeErr := func(err error) error {
			return fmt.Errorf("decode %s %d of data object %d: %w", ev.Type, ev.Revision, objectID, err)
		}
		switch ev.Type {
		case domain.EventDataObjectAdded:
			v.Exists, v.IntValue, v.StringValue = true, added.IntValue, added.StringValue
		case domain.EventIntValueSet:
			var d domain.IntValueSet
			if err := json.Unmarshal(ev.Data, &d); err != nil {
				return nil, decodeErr(err)
			}
			v.IntValue = d.After
		case domain.EventStringValueSet:
			var d domain.StringValueSet
			if err := json.Unmarshal(ev.Data, &d); err != nil {
				return nil, decodeErr(err)
			}
			v.StringValue = d.After
		case domain.EventIncrementApplied, domain.EventDecrementApplied:
			d, err := domain.DecodeValueChanged(ev.Data)
			if err != nil {
				return nil, decodeErr(err)
			}
			if d.Upload != nil {
				dec, ok := decisions[d.Upload.UploadID]
				if !ok || dec.status != UploadStatusCommitted || dec.recorded.After(at) {
					continue
				}
			}
			// The projection wraps the same way; the ledger never lets a value leave int32.
			v.IntValue = int32(int64(v.IntValue) + int64(domain.DirectionOf(ev.Type))*d.Amount)
		case domain.EventDataObjectRemoved:
			v.Removed = true
		}
	}
	return v, nil
}
