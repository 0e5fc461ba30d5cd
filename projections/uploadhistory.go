package projections

import (
	"context"
	"encoding/json"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// UploadHistoryEntry is one event of an owner's upload stream as the audit history shows it:
// uploads prepared, committed and aborted, logs refused and their repeats, and operators'
// decisions on refused logs, each with who made it.
type UploadHistoryEntry struct {
	Revision uint64              `json:"revision"`
	Position eventstore.Position `json:"position"`
	EventID  uuid.UUID           `json:"eventId"`
	Type     string              `json:"type"`
	Recorded time.Time           `json:"recorded"`
	// Event is the event's body as JSON (domain.UploadPrepared, domain.UploadRefused, …): as
	// recorded, or the JSON form of a body recorded in the compact encoding.
	Event      json.RawMessage `json:"event"`
	TokenID    *uuid.UUID      `json:"tokenId,omitempty"`
	Admin      bool            `json:"admin,omitempty"`
	RequestID  string          `json:"requestId,omitempty"`
	ClientAddr string          `json:"clientAddr,omitempty"`
}

// UploadHistory is every event of one owner's upload stream, in stream order.
type UploadHistory struct {
	Owner   domain.Owner         `json:"owner"`
	Entries []UploadHistoryEntry `json:"entries"`
}

// UploadStreamHistory reads an owner's upload stream whole (an owner that never uploaded has
// an empty history).
func UploadStreamHistory(ctx context.Context, r StreamReader, owner domain.Owner) (*UploadHistory, error) {
	evs, err := readStream(ctx, r, domain.UploadStream(owner))
	if err != nil {
		return nil, err
	}
	h := &UploadHistory{Owner: owner, Entries: []UploadHistoryEntry{}}
	for _, ev := range evs {
		e := UploadHistoryEntry{Revision: ev.Revision, Position: ev.Position, EventID: ev.ID, Type: ev.Type, Recorded: ev.Recorded}
		e.Event, _ = domain.EventJSON(ev.Type, ev.Data) // one that does not decode shows as null
		var meta domain.Metadata
		if json.Unmarshal(ev.Metadata, &meta) == nil {
			if meta.TokenID != uuid.Nil {
				id := meta.TokenID
				e.TokenID = &id
			}
			e.Admin, e.RequestID, e.ClientAddr = meta.Admin, meta.RequestID, meta.ClientAddr
		}
		if !json.Valid(e.Event) {
			e.Event = json.RawMessage("null")
		}
		h.Entries = append(h.Entries, e)
	}
	return h, nil
}
