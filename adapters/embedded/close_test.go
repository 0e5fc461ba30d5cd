package embedded_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
)

// TestCloseUnderLoad closes the store while appends pour in: each append either succeeds and is
// then on disk, or fails with ErrClosed and left nothing behind.
func TestCloseUnderLoad(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	store, err := embedded.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	const writers = 16
	acked := make(chan uuid.UUID, 100_000)
	finalErrs := make([]error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			stream := fmt.Sprintf("close-%d", w)
			for {
				ev := eventstore.EventData{ID: uuid.New(), Type: "CloseTest", Data: []byte(`{}`)}
				if _, err := store.Append(ctx, stream, eventstore.Any(), ev); err != nil {
					finalErrs[w] = err
					return
				}
				acked <- ev.ID
			}
		})
	}
	var ackedIDs []uuid.UUID
	for range 200 {
		ackedIDs = append(ackedIDs, <-acked)
	}
	if err := store.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	wg.Wait()
	close(acked)
	for w, err := range finalErrs {
		if !errors.Is(err, eventstore.ErrClosed) {
			t.Fatalf("writer %d ended with %v, want ErrClosed", w, err)
		}
	}

	store = openStore(t, dir)
	stored := map[uuid.UUID]bool{}
	events, err := store.ReadAll(ctx, eventstore.Start, 1_000_000)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range events {
		stored[ev.ID] = true
	}
	for id := range acked {
		ackedIDs = append(ackedIDs, id)
	}
	ackedCount := len(ackedIDs)
	for _, id := range ackedIDs {
		if !stored[id] {
			t.Fatalf("acknowledged event %s is missing after Close", id)
		}
	}
	// Close lets the writer finish what was queued and answers it, so nothing is stored that
	// was not acknowledged.
	if ackedCount < 200 || len(stored) != ackedCount {
		t.Fatalf("%d events stored, %d acknowledged", len(stored), ackedCount)
	}
}

// TestStats checks the write-path counters against what the test did.
func TestStats(t *testing.T) {
	store := openStore(t, t.TempDir())
	ctx := t.Context()
	events := []eventstore.EventData{
		{ID: uuid.New(), Type: "A", Data: []byte(`{}`)},
		{ID: uuid.New(), Type: "B", Data: []byte(`{}`)},
	}
	if _, err := store.Append(ctx, "stats", eventstore.NoStream(), events...); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, "stats", eventstore.NoStream(), events...); err != nil {
		t.Fatalf("idempotent re-append: %v", err)
	}
	if _, err := store.Append(ctx, "stats", eventstore.NoStream(), eventstore.EventData{ID: uuid.New(), Type: "C"}); !errors.Is(err, eventstore.ErrWrongExpectedVersion) {
		t.Fatalf("stale append: %v", err)
	}
	got := store.Stats()
	want := embedded.Stats{Appends: 2, Events: 2, Refused: 1, Batches: 1, MaxBatchSize: 1}
	if got != want {
		t.Fatalf("stats %+v, want %+v", got, want)
	}
}

// TestExpectedRevisionAtTheTop checks that an exact expected revision near 2^64 is refused, not
// wrapped round to revision 0 and taken for an idempotent retry.
func TestExpectedRevisionAtTheTop(t *testing.T) {
	store := openStore(t, t.TempDir())
	ctx := t.Context()
	events := []eventstore.EventData{{ID: uuid.New(), Type: "A", Data: []byte(`{}`)}}
	if _, err := store.Append(ctx, "top", eventstore.NoStream(), events...); err != nil {
		t.Fatal(err)
	}
	for _, revision := range []uint64{eventstore.End, eventstore.End - 1, 1 << 63} {
		if _, err := store.Append(ctx, "top", eventstore.Exact(revision), events...); !errors.Is(err, eventstore.ErrWrongExpectedVersion) {
			t.Fatalf("exact %d: got %v, want ErrWrongExpectedVersion", revision, err)
		}
	}
}
