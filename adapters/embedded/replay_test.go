package embedded_test

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain/eventstore"
)

// TestReadRangeForReplayEqualsReadAll reads a store of bodies of every size (empty, small, and
// larger than the buffer a range shares its bodies in) in ranges, from two goroutines at once
// as a replay does, and in ranges that start and end anywhere, and finds exactly the events
// ReadAll returns without their metadata and recorded time; every body read stays intact
// after later ranges are read (no range reuses another's buffer), and an empty body reads
// nil, as the driver read gave it.
func TestReadRangeForReplayEqualsReadAll(t *testing.T) {
	ctx := t.Context()
	store := openStore(t, t.TempDir())
	sizes := []int{0, 1, 17, 300, 70_000, 300_000, 5}
	for i := range 60 {
		body := bytes.Repeat([]byte{byte('a' + i%26)}, sizes[i%len(sizes)])
		ev := eventstore.EventData{ID: uuid.New(), Type: fmt.Sprintf("Type%d", i%3), Data: body, Metadata: []byte(`{"m":1}`)}
		if _, err := store.Append(ctx, fmt.Sprintf("stream-%d", i%7), eventstore.Any(), ev); err != nil {
			t.Fatal(err)
		}
	}
	all, err := store.ReadAll(ctx, eventstore.Start, 1000)
	if err != nil || len(all) != 60 {
		t.Fatalf("read all: %d events, %v", len(all), err)
	}
	want := make([]eventstore.RecordedEvent, len(all))
	for i, ev := range all {
		ev.Metadata, ev.Recorded = nil, time.Time{}
		if len(ev.Data) == 0 {
			ev.Data = nil
		}
		want[i] = ev
	}
	head := all[len(all)-1].Position
	for _, width := range []eventstore.Position{1, 4, 7, 60, 100} {
		var mu sync.Mutex
		got := map[eventstore.Position][]eventstore.RecordedEvent{}
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		for reader := range eventstore.Position(2) {
			wg.Go(func() {
				for lo := reader * width; lo < head; lo += 2 * width {
					evs, err := store.ReadRangeForReplay(ctx, lo, min(lo+width, head), nil)
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					got[lo] = evs
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("width %d: %v", width, err)
		}
		var read []eventstore.RecordedEvent
		for lo := eventstore.Position(0); lo < head; lo += width {
			read = append(read, got[lo]...)
		}
		sameEvents(t, fmt.Sprintf("ranges of %d", width), read, want)
	}
	// A buffer handed back is reused for the events, and what it held before is replaced.
	first, err := store.ReadRangeForReplay(ctx, 0, 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	again, err := store.ReadRangeForReplay(ctx, 50, 55, first)
	if err != nil {
		t.Fatal(err)
	}
	sameEvents(t, "(50, 55] into a used buffer", again, want[50:55])
	if none, err := store.ReadRangeForReplay(ctx, 55, 55, nil); err != nil || len(none) != 0 {
		t.Fatalf("empty range: %v, %v", none, err)
	}
	if beyond, err := store.ReadRangeForReplay(ctx, head, head+10, nil); err != nil || len(beyond) != 0 {
		t.Fatalf("range after the head: %v, %v", beyond, err)
	}
}

// TestReadRangeForReplayAfterClose: a closed store's range read fails with ErrClosed, and
// Close closes the replay's connections (a store opened again on the directory reads them).
func TestReadRangeForReplayAfterClose(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	store := openStore(t, dir)
	if _, err := store.Append(ctx, "s", eventstore.Any(), benchEvent(1), benchEvent(2)); err != nil {
		t.Fatal(err)
	}
	if evs, err := store.ReadRangeForReplay(ctx, 0, 2, nil); err != nil || len(evs) != 2 {
		t.Fatalf("read: %d events, %v", len(evs), err)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := store.ReadRangeForReplay(ctx, 0, 2, nil); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("read after Close: %v, want ErrClosed", err)
	}
	reopened := openStore(t, dir)
	if evs, err := reopened.ReadRangeForReplay(ctx, 0, 2, nil); err != nil || len(evs) != 2 || string(evs[1].Data) != string(benchEvent(2).Data) {
		t.Fatalf("read after reopening: %+v, %v", evs, err)
	}
}

// TestReadRangeForFoldReadsTheLastID: ReadRangeForFold gives exactly what ReadRangeForReplay
// gives, but with the id of the range's last event only (the others zero): for ranges that
// end inside the store, at its head and beyond it, and for a range of one event.
func TestReadRangeForFoldReadsTheLastID(t *testing.T) {
	ctx := t.Context()
	store := openStore(t, t.TempDir())
	for i := range 30 {
		ev := benchEvent(i)
		if i%5 == 0 {
			ev.Data = nil
		}
		if _, err := store.Append(ctx, fmt.Sprintf("stream-%d", i%4), eventstore.Any(), ev); err != nil {
			t.Fatal(err)
		}
	}
	head := eventstore.Position(30)
	var buf []eventstore.RecordedEvent
	for _, r := range [][2]eventstore.Position{{0, 30}, {0, 7}, {7, 8}, {8, 29}, {20, 40}, {29, 30}, {30, 31}} {
		full, err := store.ReadRangeForReplay(ctx, r[0], r[1], nil)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]eventstore.RecordedEvent, len(full))
		copy(want, full)
		for i := range len(want) - 1 {
			want[i].ID = uuid.UUID{}
		}
		got, err := store.ReadRangeForFold(ctx, r[0], r[1], buf)
		if err != nil {
			t.Fatal(err)
		}
		if n := int(min(r[1], head) - min(r[0], head)); len(got) != n {
			t.Fatalf("(%d, %d]: %d events, want %d", r[0], r[1], len(got), n)
		}
		sameEvents(t, fmt.Sprintf("(%d, %d]", r[0], r[1]), got, want)
		if len(got) > 0 && got[len(got)-1].ID == (uuid.UUID{}) {
			t.Fatalf("(%d, %d]: the last event has no id", r[0], r[1])
		}
		buf = got
	}
}
