package state

import (
	"encoding/json"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// Decoded is an event with the body of its type decoded as Apply needs it. Decode reads no
// State, so a replay decodes on the goroutines that read the store and the one that folds
// only applies (ApplyDecoded); Apply itself decodes with Decode, so both mean the same.
type Decoded struct {
	Event eventstore.RecordedEvent
	kind  decodedKind
	err   error // the body's decoding error, reported when applied
	// The body, in the field kind names.
	change   domain.ValueChanged
	set      domain.IntValueSet
	prepared *preparedUpload
	decided  uuid.UUID // of an UploadCommitted or UploadAborted
	reason   string    // of an UploadAborted
}

type decodedKind uint8

const (
	decodedNone     decodedKind = iota // a type Apply decodes itself
	decodedChange                      // IncrementApplied, DecrementApplied
	decodedSet                         // IntValueSet
	decodedPrepared                    // UploadPrepared
	decodedDecision                    // UploadCommitted, UploadAborted
)

// preparedUpload is a decoded UploadPrepared with its raw hashes (nil for a JSON body).
type preparedUpload struct {
	prepared domain.UploadPrepared
	hashes   *domain.PreparedHashes
}

// Decode decodes the body of ev for ApplyDecoded, on any goroutine. Event types folded
// rarely are left to ApplyDecoded.
func Decode(ev eventstore.RecordedEvent) Decoded {
	d := Decoded{Event: ev}
	d.decode()
	return d
}

// DecodeInto is Decode for many events, appended to out (a replay reuses its slices). The
// upload sources of the entries in the compact form are allocated in batches, fresh ones
// (never reused: ValueChanged hands out pointers to them), not one by one.
func DecodeInto(out []Decoded, evs []eventstore.RecordedEvent) []Decoded {
	var uploads []domain.UploadSource
	for _, ev := range evs {
		out = append(out, Decoded{Event: ev})
		d := &out[len(out)-1]
		if d.Event.Type != domain.EventIncrementApplied && d.Event.Type != domain.EventDecrementApplied {
			d.decode()
			continue
		}
		if len(uploads) == cap(uploads) {
			uploads = make([]domain.UploadSource, 0, uploadBatch)
		}
		next := &uploads[:len(uploads)+1][len(uploads)]
		d.kind = decodedChange
		d.err = domain.DecodeValueChangedInto(d.Event.Data, &d.change, next)
		if d.change.Upload == next {
			uploads = uploads[:len(uploads)+1]
		}
	}
	return out
}

// uploadBatch is how many upload sources DecodeInto allocates at once.
const uploadBatch = 256

func (d *Decoded) decode() {
	ev := &d.Event
	switch ev.Type {
	case domain.EventIncrementApplied, domain.EventDecrementApplied:
		d.kind = decodedChange
		d.change, d.err = domain.DecodeValueChanged(ev.Data)
	case domain.EventIntValueSet:
		d.kind = decodedSet
		d.err = json.Unmarshal(ev.Data, &d.set)
	case domain.EventUploadPrepared:
		d.kind = decodedPrepared
		p := &preparedUpload{}
		p.prepared, p.hashes, d.err = domain.DecodeUploadPreparedHashes(ev.Data)
		d.prepared = p
	case domain.EventUploadCommitted, domain.EventUploadAborted:
		d.kind = decodedDecision
		d.decided, d.reason, d.err = domain.DecodeUploadDecision(ev.Type, ev.Data)
	}
}

// ValueChanged returns the body of an IncrementApplied or DecrementApplied event; ok is false
// for other types.
func (d *Decoded) ValueChanged() (v domain.ValueChanged, ok bool, err error) {
	return d.change, d.kind == decodedChange, d.err
}

// IntValueSet returns the body of an IntValueSet event; ok is false for other types.
func (d *Decoded) IntValueSet() (v domain.IntValueSet, ok bool, err error) {
	return d.set, d.kind == decodedSet, d.err
}

// UploadDecision returns the upload an UploadCommitted or UploadAborted event decides; ok is
// false for other types.
func (d *Decoded) UploadDecision() (uploadID uuid.UUID, ok bool, err error) {
	return d.decided, d.kind == decodedDecision, d.err
}
