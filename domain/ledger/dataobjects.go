package ledger

import (
	"context"
	"errors"
	"strings"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// Scope is the owner a Cryptolens call addresses: a license key in the key-specific (…ToKey)
// form, a referencer in the general form.
type Scope struct {
	KeySpecific bool
	ProductID   int64
	Key         string
	Referencer  domain.Owner
}

// ObjectRef names a data object by id (when ID is not 0) or by name.
type ObjectRef struct {
	ID   int64
	Name string
}

// resolveOwner applies the token's locks to the scope and returns the owner it addresses.
func resolveOwner(st *state.State, tok domain.Token, sc Scope) (domain.Owner, error) {
	if sc.KeySpecific {
		if err := tok.CheckKeySpecific(); err != nil {
			return domain.Owner{}, err
		}
		if _, ok := st.Product(sc.ProductID); !ok {
			return domain.Owner{}, domain.ErrProductNotFound
		}
		if err := tok.CheckProduct(sc.ProductID); err != nil {
			return domain.Owner{}, err
		}
		k, ok := st.KeyByString(sc.ProductID, sc.Key)
		if !ok || sc.Key == "" {
			return domain.Owner{}, domain.ErrKeyNotFound
		}
		return domain.Owner{Type: domain.OwnerKey, ID: k.ID}, nil
	}
	owner := sc.Referencer
	switch owner.Type {
	case domain.OwnerUser:
		owner.ID = 0 // one Tally serves one vendor account, whatever id its SDK sends
	case domain.OwnerProduct:
		if _, ok := st.Product(owner.ID); !ok {
			return domain.Owner{}, domain.ErrProductNotFound
		}
	case domain.OwnerKey:
		if _, ok := st.Key(owner.ID); !ok {
			return domain.Owner{}, domain.ErrKeyNotFound
		}
	default:
		return domain.Owner{}, domain.ErrReferencerType
	}
	if err := tok.CheckGeneral(owner, st.ProductOfKey); err != nil {
		return domain.Owner{}, err
	}
	return owner, nil
}

// CheckScope applies the token's locks to a scope without changing anything. Inbound adapters
// use it to keep the API's order of checks (token, permission, owner, then the other
// parameters) when a later parameter is already known to be malformed.
func (s *Service) CheckScope(c Caller, sc Scope) error {
	var err error
	s.view.Read(func(st *state.State) { _, err = resolveOwner(st, c.Token, sc) })
	return err
}

// resolveObject finds a live object of the owner.
func resolveObject(st *state.State, owner domain.Owner, ref ObjectRef) (state.Object, error) {
	var o *state.Object
	var ok bool
	switch {
	case ref.ID != 0:
		o, ok = st.Object(ref.ID)
		ok = ok && !o.Removed && o.Owner == owner
	case ref.Name != "":
		o, ok = st.ObjectByName(owner, ref.Name)
	default:
		return state.Object{}, domain.ErrInvalidInput
	}
	if !ok {
		return state.Object{}, domain.ErrDataObjectNotFound
	}
	cp := *o
	cp.Pending = append([]state.PendingChange(nil), o.Pending...)
	return cp, nil
}

// AddDataObject is the AddDataObject(ToKey) command.
type AddDataObject struct {
	Scope
	Name               string
	StringValue        string
	IntValue           int32
	CheckForDuplicates bool
}

// AddDataObject creates a data object and returns its id. Ids are claimed by appending the
// object's first event with "no stream" expected, so two instances never take the same one.
func (s *Service) AddDataObject(ctx context.Context, c Caller, cmd AddDataObject) (int64, error) {
	defer s.decodes.directCall()()
	if !c.Token.Allows(domain.MethodAddDataObject) {
		return 0, domain.ErrAccessDenied
	}
	if cmd.CheckForDuplicates {
		var owner domain.Owner
		var err error
		s.view.Read(func(st *state.State) { owner, err = resolveOwner(st, c.Token, cmd.Scope) })
		if err == nil {
			unlock, err := s.ownerLocks.lock(ctx, int64(owner.Type)+4*owner.ID)
			if err != nil {
				return 0, err
			}
			defer unlock()
		}
	}
	return s.claimID(ctx, c, domain.CategoryDataObject, domain.DataObjectStream, func(st *state.State) (func(int64) (string, any), error) {
		owner, err := resolveOwner(st, c.Token, cmd.Scope)
		if err != nil {
			return nil, err
		}
		// The owner is checked before the values, as the API's order of checks says.
		if err := domain.ValidateName(cmd.Name); err != nil {
			return nil, err
		}
		if err := domain.ValidateStringValue(cmd.StringValue); err != nil {
			return nil, err
		}
		if cmd.CheckForDuplicates {
			if _, dup := st.ObjectByName(owner, cmd.Name); dup {
				return nil, domain.ErrDuplicateName
			}
		}
		return func(id int64) (string, any) {
			return domain.EventDataObjectAdded, domain.DataObjectAdded{
				ObjectID: id, Owner: owner, Name: cmd.Name, StringValue: cmd.StringValue,
				IntValue: cmd.IntValue, At: s.clock().UTC(),
			}
		}, nil
	})
}

// ListDataObjects is the ListDataObjects(ToKey) query.
type ListDataObjects struct {
	Scope
	Contains string
	// ShowAll lists every object the token may see, across owners (general form only).
	ShowAll bool
}

// ListDataObjects returns the live objects of the scope (or, with ShowAll, every object the
// token may see), by id, filtered by a case-insensitive name substring.
func (s *Service) ListDataObjects(ctx context.Context, c Caller, q ListDataObjects) ([]domain.DataObject, error) {
	defer s.decodes.directCall()()
	if !c.Token.Allows(domain.MethodListDataObjects) {
		return nil, domain.ErrAccessDenied
	}
	if err := s.syncView(ctx); err != nil {
		return nil, err
	}
	var out []domain.DataObject
	var err error
	needle := strings.ToLower(q.Contains)
	s.view.Read(func(st *state.State) {
		var objs []*state.Object
		if q.ShowAll && !q.KeySpecific {
			objs = visibleObjects(st, c.Token)
		} else {
			var owner domain.Owner
			owner, err = resolveOwner(st, c.Token, q.Scope)
			if err != nil {
				return
			}
			objs = st.ObjectsOf(owner)
		}
		for _, o := range objs {
			if needle == "" || strings.Contains(strings.ToLower(o.Name), needle) {
				out = append(out, o.DataObject)
			}
		}
	})
	return out, err
}

// visibleObjects is every live object within the token's locks.
func visibleObjects(st *state.State, tok domain.Token) []*state.Object {
	var out []*state.Object
	for _, o := range st.AllObjects() {
		if tok.CheckGeneral(o.Owner, st.ProductOfKey) == nil {
			out = append(out, o)
		}
	}
	return out
}

// SetIntValue is the SetIntValue(ToKey) command.
type SetIntValue struct {
	Scope
	Object   ObjectRef
	IntValue int32
}

// SetIntValue replaces an object's int value.
func (s *Service) SetIntValue(ctx context.Context, c Caller, cmd SetIntValue) error {
	return s.change(ctx, c, domain.MethodSetIntValue, cmd.Scope, cmd.Object, func(o state.Object) (string, any, error) {
		return domain.EventIntValueSet, domain.IntValueSet{ObjectID: o.ID, Before: o.IntValue, After: cmd.IntValue, At: s.clock().UTC()}, nil
	})
}

// SetStringValue is the SetStringValue(ToKey) command.
type SetStringValue struct {
	Scope
	Object      ObjectRef
	StringValue string
}

// SetStringValue replaces an object's string value.
func (s *Service) SetStringValue(ctx context.Context, c Caller, cmd SetStringValue) error {
	return s.change(ctx, c, domain.MethodSetStringValue, cmd.Scope, cmd.Object, func(o state.Object) (string, any, error) {
		// Checked here, after the permission, the owner and the object, as the API's order of
		// checks says.
		if err := domain.ValidateStringValue(cmd.StringValue); err != nil {
			return "", nil, err
		}
		return domain.EventStringValueSet, domain.StringValueSet{ObjectID: o.ID, Before: o.StringValue, After: cmd.StringValue, At: s.clock().UTC()}, nil
	})
}

// ChangeIntValue is the IncrementIntValue(ToKey) and DecrementIntValue(ToKey) command.
type ChangeIntValue struct {
	Scope
	Object ObjectRef
	// Amount is the constant to add or subtract; its sign is ignored, as Cryptolens does.
	Amount      int64
	EnableBound bool
	// Bound is inclusive: an upper bound for increments, a lower bound for decrements.
	Bound int64
}

// IncrementIntValue adds to an object's int value.
func (s *Service) IncrementIntValue(ctx context.Context, c Caller, cmd ChangeIntValue) error {
	return s.changeIntValue(ctx, c, domain.Increment, cmd)
}

// DecrementIntValue subtracts from an object's int value.
func (s *Service) DecrementIntValue(ctx context.Context, c Caller, cmd ChangeIntValue) error {
	return s.changeIntValue(ctx, c, domain.Decrement, cmd)
}

func (s *Service) changeIntValue(ctx context.Context, c Caller, dir domain.Direction, cmd ChangeIntValue) error {
	amount := cmd.Amount
	if amount < 0 {
		amount = -amount
	}
	return s.change(ctx, c, dir.Method(), cmd.Scope, cmd.Object, func(o state.Object) (string, any, error) {
		// The feature lock is checked after the permission and the owner, as the API's order of
		// checks says.
		if err := c.Token.CheckAmount(amount); err != nil {
			return "", nil, err
		}
		after, err := domain.ApplyChange(o.IntValue, dir, amount, cmd.EnableBound, cmd.Bound)
		if err != nil {
			return "", nil, err
		}
		return dir.EventType(), domain.ValueChanged{ObjectID: o.ID, Amount: amount, Before: o.IntValue, After: after, At: s.clock().UTC()}, nil
	})
}

// RemoveDataObject is the RemoveDataObject(ToKey) command.
type RemoveDataObject struct {
	Scope
	Object ObjectRef
}

// RemoveDataObject removes an object. Its history stays; its id is never reused.
func (s *Service) RemoveDataObject(ctx context.Context, c Caller, cmd RemoveDataObject) error {
	return s.change(ctx, c, domain.MethodRemoveDataObject, cmd.Scope, cmd.Object, func(o state.Object) (string, any, error) {
		return domain.EventDataObjectRemoved, domain.DataObjectRemoved{ObjectID: o.ID, At: s.clock().UTC()}, nil
	})
}

// change runs one command on one data object: decide on the projected object, append with its
// revision as the expected revision, and start over on fresh state when another writer won.
// While an upload touching the object is undecided, it waits for the decision. A refusal is
// decided once more after the projection has caught up with the store, since the projection
// may not yet hold a change another instance acknowledged.
func (s *Service) change(ctx context.Context, c Caller, method domain.Method, sc Scope, ref ObjectRef, decide func(state.Object) (string, any, error)) error {
	defer s.decodes.directCall()()
	if !c.Token.Allows(method) {
		return domain.ErrAccessDenied
	}
	var unlock func()
	defer func() {
		if unlock != nil {
			unlock()
		}
	}()
	synced := false
	// refuse returns a refusal once it was decided on a projection caught up with the store,
	// else catches up and asks for another decision.
	refuse := func(refusal error) (retry bool, err error) {
		if synced {
			return false, refusal
		}
		synced = true
		if err := s.syncView(ctx); err != nil {
			return false, err
		}
		return true, nil
	}
	for attempt := 0; attempt < s.maxAttempts; {
		var obj state.Object
		var err error
		s.view.Read(func(st *state.State) {
			var owner domain.Owner
			owner, err = resolveOwner(st, c.Token, sc)
			if err == nil {
				obj, err = resolveObject(st, owner, ref)
			}
		})
		if err != nil {
			if retry, err := refuse(err); !retry {
				return err
			}
			continue
		}
		if unlock == nil {
			// Queue behind this process's other commands on the object, then decide on the
			// state as it is once it is our turn.
			if unlock, err = s.objectLocks.lock(ctx, obj.ID); err != nil {
				return err
			}
			continue
		}
		if len(obj.Pending) > 0 {
			if err := s.awaitUploadDecision(ctx, obj.Owner); err != nil {
				return err
			}
			attempt++
			continue
		}
		typ, data, err := decide(obj)
		if err != nil {
			if retry, err := refuse(err); !retry {
				return err
			}
			continue
		}
		ev, err := newEvent(uuid.New(), typ, data, c.metadata())
		if err != nil {
			return err
		}
		_, err = s.appendAndWait(ctx, domain.DataObjectStream(obj.ID), eventstore.Exact(obj.Revision), ev)
		if errors.Is(err, eventstore.ErrWrongExpectedVersion) {
			attempt++
			s.metrics.Retry()
			continue
		}
		return err
	}
	return domain.ErrConcurrentChange
}
