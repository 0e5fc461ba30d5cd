package projections_test

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
)

// writeIncrements has one writer per object append increments with their right value-after
// until stop is closed, and returns how many each appended and the last position written.
func writeIncrements(t *testing.T, store eventstore.Store, objects []int64, stop <-chan struct{}) func() (int, eventstore.Position) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	var last eventstore.Position
	for _, id := range objects {
		wg.Add(1)
		go func() {
			defer wg.Done()
			after := int32(0)
			for {
				select {
				case <-stop:
					return
				default:
				}
				after += 3
				res := appendEvent(t, store, domain.DataObjectStream(id), domain.EventIncrementApplied, domain.ValueChanged{ObjectID: id, Amount: 3, After: after})
				mu.Lock()
				total++
				last = max(last, res.Position)
				mu.Unlock()
			}
		}()
	}
	return func() (int, eventstore.Position) { wg.Wait(); return total, last }
}

func addObjects(t *testing.T, store eventstore.Store, ids ...int64) {
	t.Helper()
	owner := domain.Owner{Type: domain.OwnerUser}
	for _, id := range ids {
		appendEvent(t, store, domain.DataObjectStream(id), domain.EventDataObjectAdded, domain.DataObjectAdded{ObjectID: id, Owner: owner, Name: "o"})
	}
}

// TestVerifyOnlineWhileWritersAppend verifies a running projection while four writers append:
// no difference, the comparison is at or past the head read at the start, the replay counted
// every event up to it, and a read model's checkpoint is checked against the replay. Writers
// go on appending during the verification (they are never blocked by it).
func TestVerifyOnlineWhileWritersAppend(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store, err := embedded.Open(ctx, filepath.Join(dir, "events"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ids := []int64{1, 2, 3, 4}
	addObjects(t, store, ids...)
	c, stopProjection := runCurrent(t, store, filepath.Join(dir, "projection.json"))
	defer stopProjection()

	stop := make(chan struct{})
	wait := writeIncrements(t, store, ids, stop)
	// Let the writers get going: verify once some increments are in.
	for {
		h, err := eventstore.Head(ctx, store, eventstore.Start)
		if err != nil {
			t.Fatal(err)
		}
		if h > 200 {
			break
		}
		if err := c.WaitFor(ctx, h+1); err != nil {
			t.Fatal(err)
		}
	}
	// A read model that folded the first 4 events (the objects' additions) says so.
	fourth, err := store.ReadAll(ctx, eventstore.Start, 4)
	if err != nil {
		t.Fatal(err)
	}
	models := []projections.ModelCheckpoint{{Name: "usage", Position: fourth[3].Position, Events: 4}}
	// An append completes while the replay reads and while the projection is held still for
	// the comparison: neither blocks writers.
	var progressed int
	var duringReplay, duringCompare eventstore.AppendResult
	live := heldProjection{c, func() {
		duringCompare = appendEvent(t, store, domain.ProductStream(2), domain.EventProductCreated, domain.ProductCreated{ProductID: 2, Name: "during the comparison"})
	}}
	v, err := projections.VerifyOnline(ctx, store, live, projections.OnlineOptions{Models: models, Progress: func(n int, _ eventstore.Position) {
		if progressed == 0 {
			duringReplay = appendEvent(t, store, domain.ProductStream(1), domain.EventProductCreated, domain.ProductCreated{ProductID: 1, Name: "during the replay"})
		}
		progressed = n
	}})
	if err != nil {
		t.Fatal(err)
	}
	headAfter, err := eventstore.Head(ctx, store, eventstore.Start)
	if err != nil {
		t.Fatal(err)
	}
	close(stop)
	written, last := wait()
	if len(v.Problems) != 0 {
		t.Fatalf("problems on a sound store: %v", v.Problems)
	}
	if v.Position < v.Head || v.Head <= 200 {
		t.Fatalf("compared at %d, head %d", v.Position, v.Head)
	}
	all, err := store.ReadAll(ctx, eventstore.Start, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var upTo, upToHead uint64
	for _, ev := range all {
		if ev.Position <= v.Position {
			upTo++
		}
		if ev.Position <= v.Head {
			upToHead++
		}
	}
	if v.ReplayEvents != upToHead || v.PausedEvents > v.Events-v.ReplayEvents {
		t.Fatalf("replayed %d events up to the head %d (the store holds %d there), %d while paused", v.ReplayEvents, v.Head, upToHead, v.PausedEvents)
	}
	if v.Events != upTo || v.Objects != len(ids) || progressed == 0 {
		t.Fatalf("verification counted %d events, %d objects (progress %d); the store holds %d up to %d", v.Events, v.Objects, progressed, upTo, v.Position)
	}
	if duringReplay.Position <= v.Head || duringCompare.Position <= v.Position || written == 0 || last == 0 {
		t.Fatalf("appends during the verification: %d (replay to %d), %d (compared at %d); %d increments", duringReplay.Position, v.Head, duringCompare.Position, v.Position, written)
	}

	// A read model whose count disagrees with the store, or whose checkpoint the store lacks.
	bad := []projections.ModelCheckpoint{
		{Name: "usage", Position: fourth[3].Position, Events: 5},
		{Name: "other", Position: headAfter + 1000, Events: 1},
	}
	v, err = projections.VerifyOnline(ctx, store, c, projections.OnlineOptions{Models: bad})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(v.Problems, "\n")
	if len(v.Problems) != 2 || !strings.Contains(got, "read model usage: 5 events folded up to position") ||
		!strings.Contains(got, "read model other: checkpoint") {
		t.Fatalf("problems = %q", got)
	}
}

// heldProjection runs during (an append) while the projection is held still for fn.
type heldProjection struct {
	*projections.Current
	during func()
}

func (h heldProjection) ReadFrozen(ctx context.Context, fn func(*state.State)) (*projections.FrozenLayers, func(), error) {
	return h.Current.ReadFrozen(ctx, func(s *state.State) { h.during(); fn(s) })
}

// missingEvent hides one event of the store from subscribers: a projection following it misses
// that event, as a projection with a lost update would, while reads of the store still hold it.
type missingEvent struct {
	eventstore.Store
	skip eventstore.Position
}

func (m missingEvent) SubscribeAll(ctx context.Context, from eventstore.Position) (eventstore.Subscription, error) {
	sub, err := m.Store.SubscribeAll(ctx, from)
	if err != nil {
		return nil, err
	}
	return skippingSubscription{sub, m.skip}, nil
}

type skippingSubscription struct {
	eventstore.Subscription
	skip eventstore.Position
}

func (s skippingSubscription) Next(ctx context.Context) (eventstore.RecordedEvent, error) {
	for {
		ev, err := s.Subscription.Next(ctx)
		if err != nil || ev.Position != s.skip {
			return ev, err
		}
	}
}

// TestVerifyOnlineFindsALiveProjectionThatDiffers: a projection that missed one increment
// differs from the replay at the object's value and revision, and verify says so.
func TestVerifyOnlineFindsALiveProjectionThatDiffers(t *testing.T) {
	ctx := context.Background()
	store, err := embedded.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	addObjects(t, store, 7)
	appendEvent(t, store, domain.DataObjectStream(7), domain.EventIncrementApplied, domain.ValueChanged{ObjectID: 7, Amount: 5, After: 5})
	lost := appendEvent(t, store, domain.DataObjectStream(7), domain.EventIncrementApplied, domain.ValueChanged{ObjectID: 7, Amount: 2, After: 7})
	last := appendEvent(t, store, domain.DataObjectStream(8), domain.EventDataObjectAdded, domain.DataObjectAdded{ObjectID: 8, Owner: domain.Owner{Type: domain.OwnerUser}, Name: "p"})
	c, stop := runCurrent(t, missingEvent{store, lost.Position}, "")
	defer stop()
	if err := c.WaitFor(ctx, last.Position); err != nil {
		t.Fatal(err)
	}
	v, err := projections.VerifyOnline(ctx, store, c, projections.OnlineOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(v.Problems, "\n")
	for _, want := range []string{"projection vs replay: data object 7: intValue 5 vs 7", "projection vs replay: data object 7: revision 1 vs 2"} {
		if !strings.Contains(got, want) {
			t.Errorf("problems lack %q:\n%s", want, got)
		}
	}
	if v.Position != last.Position {
		t.Fatalf("compared at %d, want %d", v.Position, last.Position)
	}
}
