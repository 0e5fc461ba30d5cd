package ledger

import (
	"context"
	"fmt"
	"math"
	"strings"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/state"
)

// Correct appends a compensating change to a data object: a positive amount as an
// IncrementApplied, a negative one as a DecrementApplied, both carrying the reason. Nothing is
// edited or deleted; history and usage reports show the correction as such. Only the admin
// credential may correct. Like every command it waits while an upload touching the object is
// undecided, and refuses a result outside int32.
func (s *Service) Correct(ctx context.Context, c Caller, objectID int64, amount int64, reason string) error {
	if !c.Admin {
		return domain.ErrAccessDenied
	}
	reason = strings.TrimSpace(reason)
	if reason == "" {
		return fmt.Errorf("%w: a correction needs a reason", ErrInvalid)
	}
	if amount == 0 {
		return fmt.Errorf("%w: a correction changes the value by a non-zero amount", ErrInvalid)
	}
	if amount > math.MaxInt32 || amount < -math.MaxInt32 {
		return domain.ErrInt32Limit
	}
	dir, magnitude := domain.Increment, amount
	if amount < 0 {
		dir, magnitude = domain.Decrement, -amount
	}
	method := dir.Method()
	var owner domain.Owner
	var live bool
	s.view.Read(func(st *state.State) {
		if o, ok := st.Object(objectID); ok && !o.Removed {
			owner, live = o.Owner, true
		}
	})
	if !live {
		return domain.ErrDataObjectNotFound
	}
	// The admin reaches every object. A lock-free token allowing just this method stands for it
	// so that the shared command loop (wait for pending uploads, append at the projected
	// revision, retry on conflicts) applies unchanged; the metadata still records the admin.
	admin := Caller{
		Token: domain.Token{Methods: []domain.Method{method}},
		Admin: true, RequestID: c.RequestID, ClientAddr: c.ClientAddr,
	}
	return s.change(ctx, admin, method, Scope{Referencer: owner}, ObjectRef{ID: objectID}, func(o state.Object) (string, any, error) {
		after, err := domain.ApplyChange(o.IntValue, dir, magnitude, false, 0)
		if err != nil {
			return "", nil, err
		}
		return dir.EventType(), domain.ValueChanged{
			ObjectID: o.ID, Amount: magnitude, Before: o.IntValue, After: after,
			At: s.clock().UTC(), Correction: reason,
		}, nil
	})
}

// CanList reports whether a token may see a data object through the audit endpoints: it must
// allow ListDataObjects, not be revoked, and its locks must reach the object's owner through
// the general form, as ListDataObjects with ShowAll decides. Removed objects stay visible: their
// history is part of the record.
func (s *Service) CanList(tok domain.Token, objectID int64) bool {
	if tok.Revoked || !tok.Allows(domain.MethodListDataObjects) {
		return false
	}
	var ok bool
	s.view.Read(func(st *state.State) {
		o, found := st.Object(objectID)
		if !found {
			return
		}
		ok = tok.CheckGeneral(o.Owner, st.ProductOfKey) == nil
	})
	return ok
}
