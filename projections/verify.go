package projections

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// recordedAfter is the value an event recorded as its result, to be checked when it counts,
// with what names the event in a problem.
type recordedAfter struct {
	objectID int64
	delta    int64
	after    int32
	typ      string
	revision uint64
	position eventstore.Position
}

func (r recordedAfter) mismatch(folded int32) string {
	return fmt.Sprintf("data object %d: %s at revision %d (position %d) recorded after=%d, replay gives %d",
		r.objectID, r.typ, r.revision, r.position, r.after, folded)
}

// objectValue is a data object's value while a commit's changes are walked.
type objectValue struct {
	objectID int64
	value    int32
}

// objectValues are the values of the objects a commit touches: a list searched in order while
// short, indexed by a map past maxListed.
type objectValues struct {
	list  []objectValue
	index map[int64]int // position in list
}

const maxListed = 32

func (o *objectValues) find(objectID int64) *int32 {
	if o.index != nil {
		if i, ok := o.index[objectID]; ok {
			return &o.list[i].value
		}
		return nil
	}
	for i := range o.list {
		if o.list[i].objectID == objectID {
			return &o.list[i].value
		}
	}
	return nil
}

func (o *objectValues) add(objectID int64, value int32) {
	o.list = append(o.list, objectValue{objectID, value})
	if o.index == nil && len(o.list) > maxListed {
		o.index = make(map[int64]int, 2*len(o.list))
		for i, v := range o.list {
			o.index[v.objectID] = i
		}
	} else if o.index != nil {
		o.index[objectID] = len(o.list) - 1
	}
}

// RebuildVerified folds every event of the store into a fresh state, as Rebuild does, and
// checks each counted IncrementApplied, DecrementApplied and IntValueSet against the value the
// fold gives right after it: a direct change when it is folded, an upload's changes (in their
// order, per object) when its UploadCommitted is. It returns the state and one line per event
// whose recorded After differs. progress, if not nil, is called after each batch with the
// number of events folded so far.
func RebuildVerified(ctx context.Context, r AllReader, progress func(events int)) (*state.State, []string, error) {
	st := state.NewState()
	var problems []string
	pending := map[uuid.UUID][]recordedAfter{}
	err := fold(ctx, r, st, progress, func(d *state.Decoded) {
		problems = verifyApply(st, d, pending, problems)
	})
	if err != nil {
		return nil, nil, err
	}
	return st, problems, nil
}

// verifyApply folds d into st, checking the values it records, and appends what differs to
// problems. It reads the body Decode decoded for the fold, and allocates nothing for an event
// that needs no check.
func verifyApply(st *state.State, d *state.Decoded, pending map[uuid.UUID][]recordedAfter, problems []string) []string {
	ev := &d.Event
	var committed []recordedAfter
	var check recordedAfter
	checking := false
	if set, ok, err := d.IntValueSet(); ok && err == nil {
		if objectID, isObject := domain.ParseDataObjectStream(ev.Stream); isObject {
			check, checking = recordedAfter{objectID: objectID, after: set.After, typ: ev.Type, revision: ev.Revision, position: ev.Position}, true
		}
	} else if c, ok, err := d.ValueChanged(); ok && err == nil {
		if objectID, isObject := domain.ParseDataObjectStream(ev.Stream); isObject {
			delta := int64(domain.DirectionOf(ev.Type)) * c.Amount
			r := recordedAfter{objectID: objectID, delta: delta, after: c.After, typ: ev.Type, revision: ev.Revision, position: ev.Position}
			switch {
			case c.Upload == nil:
				check, checking = r, true
			case !st.Aborted[c.Upload.UploadID]:
				pending[c.Upload.UploadID] = append(pending[c.Upload.UploadID], r)
			}
		}
	} else if uploadID, ok, err := d.UploadDecision(); ok && err == nil {
		if ev.Type == domain.EventUploadCommitted {
			committed = pending[uploadID]
		}
		delete(pending, uploadID)
	}
	// The values before a commit of the objects its changes touch (a commit touches a few
	// objects: a slice beats a map; a map past a few dozen). Made for a commit only: an array
	// on the stack escaped (objectValues' methods keep its slice), one allocation per event.
	var running objectValues
	if len(committed) > 0 {
		running.list = make([]objectValue, 0, min(len(committed), maxListed))
	}
	for _, c := range committed {
		if o, ok := st.Objects[c.objectID]; ok && running.find(c.objectID) == nil {
			running.add(c.objectID, o.IntValue)
		}
	}
	if err := st.ApplyDecoded(d); err != nil {
		return append(problems, fmt.Sprintf("event at position %d cannot be folded: %v", ev.Position, err))
	}
	if checking {
		if o, ok := st.Objects[check.objectID]; ok && o.IntValue != check.after {
			problems = append(problems, check.mismatch(o.IntValue))
		}
	}
	// The commit counted the upload's changes; walk them in order from the values before it.
	for _, c := range committed {
		value := running.find(c.objectID)
		if value == nil {
			continue
		}
		v := int32(int64(*value) + c.delta)
		*value = v
		if v != c.after {
			problems = append(problems, c.mismatch(v))
		}
	}
	return problems
}

// CatchUp folds into st every event of the store after st's position.
func CatchUp(ctx context.Context, r AllReader, st *state.State) error {
	return fold(ctx, r, st, nil, st.ApplyDecodedOrSkip)
}

// fold hands every event after st's position to apply, which must fold it into st, calling
// progress (if not nil) after each batch with the number of events folded so far. A store
// that reads ranges for a replay (replayReader) is read ahead by several goroutines up to its
// head at the start, and its events come without metadata (docs/encoding.md); then, and for
// other stores, fold reads pages until the store has no more.
func fold(ctx context.Context, r AllReader, st *state.State, progress func(events int), apply func(*state.Decoded)) error {
	n := 0
	if rr, ok := r.(replayReader); ok {
		if err := foldAhead(ctx, rr, st, &n, progress, apply); err != nil {
			return err
		}
	}
	for {
		evs, err := r.ReadAll(ctx, st.Position, 4096)
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		if len(evs) == 0 {
			return nil
		}
		for _, ev := range evs {
			d := state.Decode(ev)
			apply(&d)
		}
		n += len(evs)
		if progress != nil {
			progress(n)
		}
	}
}

// LoadSnapshot reads the persisted state (the state database Current writes) into a state
// that holds everything in memory, its applied layers included. A missing file is an error
// matching os.ErrNotExist.
func LoadSnapshot(path string) (*state.State, error) {
	return LoadState(context.Background(), path)
}

// SaveSnapshot replaces the state database at path with st, whole, where Current looks for it.
func SaveSnapshot(path string, st *state.State) error {
	return SaveState(context.Background(), path, st)
}

// CheckpointInStore reports whether the store holds the event a state says it reflects last,
// at the same position. A snapshot that fails this belongs to other data (or the store was
// replaced), and only a replay is right. It asks for the event by stream and revision, a read
// every backend answers (a KurrentDB server may refuse a global position no event has).
func CheckpointInStore(ctx context.Context, r StreamReader, st *state.State) (bool, error) {
	if st.Position == eventstore.Start {
		return true, nil
	}
	last := st.LastEvent
	if last.Stream == "" {
		return false, nil
	}
	evs, err := r.ReadStream(ctx, last.Stream, eventstore.Forwards, last.Revision, 1)
	if errors.Is(err, eventstore.ErrStreamNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("check projection checkpoint: %w", err)
	}
	return len(evs) == 1 && evs[0].ID == last.ID && evs[0].Position == st.Position, nil
}
