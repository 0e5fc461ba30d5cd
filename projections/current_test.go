package projections_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/eventstore/storetest"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
)

func appendEvent(t *testing.T, s eventstore.Store, stream, typ string, data any) eventstore.AppendResult {
	t.Helper()
	b, err := json.Marshal(data)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Append(context.Background(), stream, eventstore.Any(), eventstore.EventData{ID: uuid.New(), Type: typ, Data: b})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// runCurrent starts a projection and returns a function that stops it and waits for it.
func runCurrent(t testing.TB, store eventstore.Store, snapshot string) (*projections.Current, func()) {
	t.Helper()
	c, err := projections.NewCurrent(context.Background(), store, projections.CurrentOptions{StatePath: statePathNextTo(snapshot), SnapshotPath: snapshot, SnapshotEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return c, func() { cancel(); <-done }
}

func TestCurrentResumesFromItsCheckpoint(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	snapshot := filepath.Join(dir, "projection.json")
	store, err := embedded.Open(ctx, filepath.Join(dir, "events"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	owner := domain.Owner{Type: domain.OwnerUser}
	appendEvent(t, store, domain.DataObjectStream(1), domain.EventDataObjectAdded, domain.DataObjectAdded{ObjectID: 1, Owner: owner, Name: "seats"})
	var last eventstore.AppendResult
	for i := 0; i < 50; i++ {
		last = appendEvent(t, store, domain.DataObjectStream(1), domain.EventIncrementApplied, domain.ValueChanged{ObjectID: 1, Amount: 2})
	}

	c, stop := runCurrent(t, store, snapshot)
	if err := c.WaitFor(ctx, last.Position); err != nil {
		t.Fatal(err)
	}
	stop() // persists the checkpoint on the way out

	more := appendEvent(t, store, domain.DataObjectStream(1), domain.EventDecrementApplied, domain.ValueChanged{ObjectID: 1, Amount: 1})
	c2, stop2 := runCurrent(t, store, snapshot)
	defer stop2()
	if c2.LoadedAt() != last.Position {
		t.Fatalf("restarted from %d, want the checkpoint %d", c2.LoadedAt(), last.Position)
	}
	if err := c2.WaitFor(ctx, more.Position); err != nil {
		t.Fatal(err)
	}
	var got int32
	c2.Read(func(s *state.State) { got = s.Objects[1].IntValue })
	if got != 99 {
		t.Fatalf("value = %d, want 99", got)
	}
	rebuilt, err := projections.Rebuild(ctx, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	c2.Read(func(s *state.State) {
		if d := state.Diff(rebuilt, s); len(d) != 0 {
			t.Fatalf("resumed projection differs from a rebuild: %v", d)
		}
	})
}

func TestCurrentReplaysWhenItsCheckpointIsNotInTheStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	snapshot := filepath.Join(dir, "projection.json")
	store, err := embedded.Open(ctx, filepath.Join(dir, "events"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	res := appendEvent(t, store, domain.ProductStream(1), domain.EventProductCreated, domain.ProductCreated{ProductID: 1, Name: "real"})

	// A snapshot from other data, ahead of this store.
	foreign := state.NewState()
	foreign.Position = 1000
	foreign.Products[5] = domain.Product{ID: 5, Name: "foreign"}
	b, err := state.MarshalState(foreign)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(snapshot, b, 0o600); err != nil {
		t.Fatal(err)
	}
	c, stop := runCurrent(t, store, snapshot)
	defer stop()
	if err := c.WaitFor(ctx, res.Position); err != nil {
		t.Fatal(err)
	}
	c.Read(func(s *state.State) {
		if _, ok := s.Products[5]; ok || s.Products[1].Name != "real" || s.Position != res.Position {
			t.Fatalf("state = %+v at %d; want only the store's product", s.Products, s.Position)
		}
	})
}

// TestCurrentReportsWhyItStopped breaks the subscription for good: the projection stops, and
// says why, so that readiness can report it.
func TestCurrentReportsWhyItStopped(t *testing.T) {
	inner, err := embedded.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	store := storetest.NewFaulty(inner)
	defer store.Close()
	c, stop := runCurrent(t, store, "")
	defer stop()
	res := appendEvent(t, store, domain.ProductStream(1), domain.EventProductCreated, domain.ProductCreated{ProductID: 1, Name: "p"})
	if err := c.WaitFor(context.Background(), res.Position); err != nil {
		t.Fatal(err)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("Err while following: %v", err)
	}
	broken := errors.New("injected: the store cannot be read")
	store.BreakSubscriptions(broken)
	res = appendEvent(t, store, domain.ProductStream(2), domain.EventProductCreated, domain.ProductCreated{ProductID: 2, Name: "q"})
	if err := c.WaitFor(context.Background(), res.Position); !errors.Is(err, broken) {
		t.Fatalf("WaitFor on a broken subscription: %v", err)
	}
	if err := c.Err(); !errors.Is(err, broken) {
		t.Fatalf("Err after the subscription broke: %v", err)
	}
}

// TestWaitForWakesByPosition: a waiter returns once its position is applied and not before; a
// cancelled waiter returns its context's error; a stopped projection releases the rest.
func TestWaitForWakesByPosition(t *testing.T) {
	store, err := embedded.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	c, stop := runCurrent(t, store, "")
	owner := domain.Owner{Type: domain.OwnerUser}
	first := appendEvent(t, store, domain.DataObjectStream(1), domain.EventDataObjectAdded, domain.DataObjectAdded{ObjectID: 1, Owner: owner, Name: "n"})

	far := make(chan error, 1)
	go func() { far <- c.WaitFor(context.Background(), first.Position+2) }()
	cancelled, cancel := context.WithCancel(context.Background())
	gone := make(chan error, 1)
	go func() { gone <- c.WaitFor(cancelled, first.Position+1000) }()

	second := appendEvent(t, store, domain.DataObjectStream(1), domain.EventIncrementApplied, domain.ValueChanged{ObjectID: 1, Amount: 1})
	if err := c.WaitFor(context.Background(), second.Position); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-far:
		t.Fatalf("a waiter for position %d returned (%v) at position %d", first.Position+2, err, c.Position())
	default:
	}
	cancel()
	if err := <-gone; err != context.Canceled {
		t.Fatalf("cancelled waiter: %v", err)
	}
	appendEvent(t, store, domain.DataObjectStream(1), domain.EventIncrementApplied, domain.ValueChanged{ObjectID: 1, Amount: 1})
	if err := <-far; err != nil {
		t.Fatalf("waiter for a reached position: %v", err)
	}
	var value int32
	c.Read(func(s *state.State) { o, _ := s.Object(1); value = o.IntValue })
	if value != 2 {
		t.Fatalf("value %d after the wait, want 2", value)
	}

	stuck := make(chan error, 1)
	go func() { stuck <- c.WaitFor(context.Background(), c.Position()+1000) }()
	stop()
	if err := <-stuck; err == nil {
		t.Fatal("a waiter for a position never reached returned nil after the projection stopped")
	}
	if err := c.WaitFor(context.Background(), c.Position()+1); err == nil {
		t.Fatal("WaitFor on a stopped projection returned nil")
	}
}

// statePathNextTo is the state database in the data directory of a legacy snapshot path ("":
// none, a projection that persists nothing).
func statePathNextTo(snapshot string) string {
	if snapshot == "" {
		return ""
	}
	return filepath.Join(filepath.Dir(snapshot), projections.StateFile)
}
