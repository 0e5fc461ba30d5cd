package state

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// Refusal is an owner's refused log version as projected: the UploadRefused record and how
// many times the same version was refused again since.
type Refusal struct {
	domain.UploadRefused
	// Repeats counts the refusals after the first one (of the same version or of newer ones,
	// for the same reason) that events recorded (UploadRefusalRepeated); the ledger records
	// them at most once per interval, so this is a lower bound. NewestLayer, NewEntries and
	// Offending follow the newest version recorded.
	Repeats int64     `json:"repeats"`
	LastAt  time.Time `json:"lastAt"`
}

// applyRefusalEvent folds the refusal and resolution events of an upload stream. It reports
// whether ev was one of them.
func (s *State) applyRefusalEvent(ev *eventstore.RecordedEvent) (bool, error) {
	switch ev.Type {
	case domain.EventUploadRefused:
		var e domain.UploadRefused
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			return true, err
		}
		u := s.uploadAt(ev)
		if u == nil {
			return true, nil
		}
		u.Refusal = &Refusal{UploadRefused: e, LastAt: e.At}
	case domain.EventUploadRefusalRepeated:
		var e domain.UploadRefusalRepeated
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			return true, err
		}
		u := s.uploadAt(ev)
		if u == nil {
			return true, nil
		}
		if u.Refusal != nil && u.Refusal.RefusalID == e.RefusalID {
			u.Refusal.Repeats += e.Repeats
			u.Refusal.LastAt = e.At
			if n := e.Newest; n != nil {
				// The record follows the newest refused version (its id and time stay).
				u.Refusal.NewestLayer, u.Refusal.NewEntries, u.Refusal.Offending = n.NewestLayer, n.NewEntries, n.Offending
				u.Refusal.Message = n.Message
			}
		}
	case domain.EventUploadResolutionDecided:
		var e domain.UploadResolutionDecided
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			return true, err
		}
		u := s.uploadAt(ev)
		if u == nil {
			return true, nil
		}
		u.Resolution = &e
	default:
		return false, nil
	}
	return true, nil
}

// uploadAt returns the upload-stream record of an event of that stream, creating it, and
// moves its revision.
func (s *State) uploadAt(ev *eventstore.RecordedEvent) *Upload {
	owner, ok := s.streamOwner(ev.Stream)
	if !ok {
		return nil
	}
	return s.uploadStream(owner, ev.Revision)
}

// clearResolved forgets the refusal and the resolution whose refused version is now known: an
// upload made its newest layer known, so that version flows again.
func (s *State) clearResolved(u *Upload) {
	if r := u.Refusal; r != nil {
		if _, known := s.layerInfo(u.Owner, r.NewestLayer); known || r.NewestLayer == "" {
			u.Refusal = nil
		}
	}
	if r := u.Resolution; r != nil {
		if _, known := s.layerInfo(u.Owner, r.NewestLayer); known {
			u.Resolution = nil
		}
	}
}

// OpenRefusal returns an owner's refused log version that is not yet cleared, if any.
func (s *State) OpenRefusal(o domain.Owner) (Refusal, bool) {
	u, ok := s.Uploads[o.String()]
	if !ok || u.Refusal == nil {
		return Refusal{}, false
	}
	return *u.Refusal, true
}

// OpenResolution returns an operator's decision on a refused log of the owner that is not yet
// carried out in full, if any.
func (s *State) OpenResolution(o domain.Owner) (domain.UploadResolutionDecided, bool) {
	u, ok := s.Uploads[o.String()]
	if !ok || u.Resolution == nil {
		return domain.UploadResolutionDecided{}, false
	}
	return *u.Resolution, true
}

// OpenRefusals returns every owner's open refusal, by owner.
func (s *State) OpenRefusals() []Refusal {
	var out []Refusal
	for _, u := range s.Uploads {
		if u.Refusal != nil {
			out = append(out, *u.Refusal)
		}
	}
	return out
}

func diffRefusals(key string, u, v *Upload) []string {
	var out []string
	id := func(r *Refusal) (uuid.UUID, int64) {
		if r == nil {
			return uuid.Nil, 0
		}
		return r.RefusalID, r.Repeats
	}
	ua, ur := id(u.Refusal)
	va, vr := id(v.Refusal)
	if ua != va || ur != vr {
		out = append(out, fmt.Sprintf("uploads of owner %s: refusal %s (%d repeats) vs %s (%d repeats)", key, ua, ur, va, vr))
	}
	res := func(r *domain.UploadResolutionDecided) uuid.UUID {
		if r == nil {
			return uuid.Nil
		}
		return r.ResolutionID
	}
	if res(u.Resolution) != res(v.Resolution) {
		out = append(out, fmt.Sprintf("uploads of owner %s: resolution %s vs %s", key, res(u.Resolution), res(v.Resolution)))
	}
	return out
}
