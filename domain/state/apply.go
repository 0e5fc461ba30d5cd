package state

import (
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// Apply folds one event into the state. Events of streams Tally does not own, and event types
// it does not know, move the position and change nothing else. An event it cannot decode is
// reported after moving the position, so one bad event cannot stop the projection.
func (s *State) Apply(ev eventstore.RecordedEvent) error {
	d := Decode(ev)
	return s.ApplyDecoded(&d)
}

// ApplyOrSkip folds ev into s. An event Apply cannot read only moves the position, as in the
// live projection.
func (s *State) ApplyOrSkip(ev eventstore.RecordedEvent) { _ = s.Apply(ev) }

// ApplyDecoded is Apply for an event Decode decoded.
func (s *State) ApplyDecoded(d *Decoded) error {
	ev := &d.Event // not a copy: a replay applies millions
	if ev.Position > s.Position {
		s.Position = ev.Position
		s.LastEvent = EventRef{Stream: ev.Stream, Revision: ev.Revision, ID: ev.ID}
	}
	s.Events++
	if err := s.apply(d); err != nil {
		return fmt.Errorf("project %s %d@%s: %w", ev.Type, ev.Revision, ev.Stream, err)
	}
	return nil
}

// ApplyDecodedOrSkip is ApplyOrSkip for an event Decode decoded.
func (s *State) ApplyDecodedOrSkip(d *Decoded) { _ = s.ApplyDecoded(d) }

func (s *State) apply(d *Decoded) error {
	ev := &d.Event
	if ok, err := s.applyRefusalEvent(ev); ok {
		return err
	}
	if handled, err := s.applyIntegrity(ev); handled {
		return err
	}
	switch ev.Type {
	case domain.EventProductCreated:
		var e domain.ProductCreated
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			return err
		}
		s.Products[e.ProductID] = domain.Product{ID: e.ProductID, Name: e.Name, Created: e.At}
		s.markProduct(e.ProductID)
		s.seenID(domain.CategoryProduct, e.ProductID)
	case domain.EventKeyCreated:
		var e domain.KeyCreated
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			return err
		}
		s.Keys[e.KeyID] = domain.LicenseKey{ID: e.KeyID, ProductID: e.ProductID, Key: e.Key, Created: e.At}
		s.keyByString[domain.NormalizeKeyString(e.Key)] = e.KeyID
		s.markKey(e.KeyID)
		s.seenID(domain.CategoryKey, e.KeyID)
	case domain.EventTokenCreated:
		var e domain.TokenCreated
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			return err
		}
		var h [32]byte
		if n, err := hex.Decode(h[:], []byte(e.SecretHash)); err != nil || n != len(h) {
			return fmt.Errorf("bad secret hash")
		}
		s.Tokens[e.TokenID] = domain.Token{
			ID: e.TokenID, Name: e.Name, SecretHash: h, Methods: e.Methods,
			ProductLock: e.ProductLock, KeyLock: e.KeyLock, FeatureLock: e.FeatureLock, Created: e.At,
		}
		s.tokenByHash[h] = e.TokenID
		s.markToken(e.TokenID)
	case domain.EventTokenRevoked:
		var e domain.TokenRevoked
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			return err
		}
		if t, ok := s.Tokens[e.TokenID]; ok {
			t.Revoked = true
			s.Tokens[e.TokenID] = t
			s.markToken(e.TokenID)
		}
	case domain.EventDataObjectAdded:
		var e domain.DataObjectAdded
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			return err
		}
		s.Objects[e.ObjectID] = &Object{DataObject: domain.DataObject{
			ID: e.ObjectID, Owner: e.Owner, Name: e.Name, StringValue: e.StringValue,
			IntValue: e.IntValue, Revision: ev.Revision,
		}}
		s.own(e.Owner, e.ObjectID)
		s.markObject(e.ObjectID)
		s.seenID(domain.CategoryDataObject, e.ObjectID)
	case domain.EventIntValueSet:
		e, err := d.set, d.err
		if err != nil {
			return err
		}
		if o := s.object(ev); o != nil {
			o.IntValue = e.After
		}
	case domain.EventStringValueSet:
		var e domain.StringValueSet
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			return err
		}
		if o := s.object(ev); o != nil {
			o.StringValue = e.After
		}
	case domain.EventIncrementApplied, domain.EventDecrementApplied:
		e, err := d.change, d.err
		if err != nil {
			return err
		}
		o := s.object(ev)
		if o == nil {
			return nil
		}
		dir := domain.DirectionOf(ev.Type)
		switch {
		case e.Upload == nil:
			o.IntValue = int32(int64(o.IntValue) + int64(dir)*e.Amount)
		case s.Aborted[e.Upload.UploadID]:
			// A late event of an upload that was already aborted: it never counts.
		default:
			o.Pending = append(o.Pending, PendingChange{UploadID: e.Upload.UploadID, Dir: dir, Amount: e.Amount})
		}
	case domain.EventDataObjectRemoved:
		if o := s.object(ev); o != nil {
			o.Removed = true
			s.disown(o.Owner, o.ID)
		}
	case domain.EventUploadPrepared:
		if d.err != nil {
			return d.err
		}
		u := s.uploadStream(d.prepared.prepared.Owner, ev.Revision)
		u.setPrepared(d.prepared)
	case domain.EventUploadCommitted:
		uploadID, err := d.decided, d.err
		if err != nil {
			return err
		}
		u := s.uploadOf(ev)
		if u == nil {
			return nil
		}
		u.Revision, u.Exists = ev.Revision, true
		if u.Prepared == nil || u.Prepared.UploadID != uploadID {
			return fmt.Errorf("commit of upload %s that is not prepared", uploadID)
		}
		s.commit(u)
	case domain.EventUploadAborted:
		uploadID, err := d.decided, d.err
		if err != nil {
			return err
		}
		u := s.uploadOf(ev)
		if u == nil {
			return nil
		}
		u.Revision, u.Exists = ev.Revision, true
		s.Aborted[uploadID] = true
		s.markAborted(uploadID)
		if u.Prepared != nil && u.Prepared.UploadID == uploadID {
			s.dropPending(u.Prepared)
			u.setPrepared(nil)
		}
	default:
		return nil
	}
	return nil
}

func (s *State) seenID(category string, id int64) {
	if id > s.maxIDs[category] {
		s.maxIDs[category] = id
	}
}

// object returns the data object a data-object event belongs to and moves its revision.
func (s *State) object(ev *eventstore.RecordedEvent) *Object {
	id, ok := domain.ParseDataObjectStream(ev.Stream)
	if !ok {
		return nil
	}
	o, ok := s.Objects[id]
	if !ok {
		return nil
	}
	o.Revision = ev.Revision
	s.markObject(id)
	return o
}

func (s *State) uploadStream(owner domain.Owner, revision uint64) *Upload {
	key := s.ownerKey(owner)
	u, ok := s.Uploads[key]
	if !ok {
		u = &Upload{Owner: owner}
		s.Uploads[key] = u
	}
	s.markUpload(key)
	u.Revision, u.Exists = revision, true
	return u
}

// uploadOf finds the upload stream record of an upload event by its stream name.
func (s *State) uploadOf(ev *eventstore.RecordedEvent) *Upload {
	owner, ok := s.streamOwner(ev.Stream)
	if !ok {
		return nil
	}
	key := s.ownerKey(owner)
	s.markUpload(key)
	return s.Uploads[key]
}

// commit makes a prepared upload's pending changes count and remembers its layers.
func (s *State) commit(u *Upload) {
	p := u.Prepared
	s.takePending(p, func(o *Object, c PendingChange) {
		o.IntValue = int32(int64(o.IntValue) + int64(c.Dir)*c.Amount)
	})
	s.rememberLayers(u, p)
	s.clearResolved(u)
	u.setPrepared(nil)
}

// dropPending forgets an aborted upload's pending changes.
func (s *State) dropPending(p *domain.UploadPrepared) {
	s.takePending(p, func(*Object, PendingChange) {})
}

// takePending removes an upload's pending changes from its objects, handing each to use.
func (s *State) takePending(p *domain.UploadPrepared, use func(*Object, PendingChange)) {
	for _, step := range p.Changes {
		o, ok := s.Objects[step.ObjectID]
		if !ok {
			continue
		}
		s.markObject(o.ID)
		kept := o.Pending[:0]
		for _, c := range o.Pending {
			if c.UploadID == p.UploadID {
				use(o, c)
				continue
			}
			kept = append(kept, c)
		}
		o.Pending = nilIfEmpty(kept)
	}
}

func nilIfEmpty(p []PendingChange) []PendingChange {
	if len(p) == 0 {
		return nil
	}
	return p
}
