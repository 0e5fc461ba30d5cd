package embedded_test

import (
	"bytes"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
)

// readOnlyDB opens the store's database beside the open store, to look at what it stored.
func readOnlyDB(t *testing.T, dir string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, embedded.DatabaseFile)+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func count(t *testing.T, db *sql.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// TestSharedMetadataReadsAsEachEventsOwn appends as an upload does (one append of many events
// with the same metadata) next to events with metadata of their own, empty metadata, and
// concurrent appends carrying the same metadata, and checks that the database holds one
// metadata row per distinct body of a transaction, while every read (ReadAll, ReadStream, a
// live subscription served by the in-memory tail, one reading the database, a reopened store)
// gives each event exactly the metadata it was appended with. The callers' buffers are
// overwritten after each Append returns: what was stored must not change with them.
func TestSharedMetadataReadsAsEachEventsOwn(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	store := openStore(t, dir)
	live, err := store.SubscribeAll(ctx, eventstore.Start)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()

	want := map[uuid.UUID][]byte{} // metadata as appended; nil for none
	upload := []byte(`{"requestId":"5f1b3a52-8d1e-4b8a-9f6e-0d6f2f0c9a11","tokenId":"tok-1","clientAddr":"203.0.113.7"}`)
	buf := bytes.Clone(upload)
	events := make([]eventstore.EventData, 100)
	for i := range events {
		events[i] = eventstore.EventData{ID: uuid.New(), Type: "IncrementApplied", Data: fmt.Appendf(nil, "[%d]", i), Metadata: buf}
		want[events[i].ID] = upload
	}
	own := []byte(`{"requestId":"own"}`)
	events[10].Metadata, want[events[10].ID] = own, own
	events[20].Metadata, want[events[20].ID] = nil, nil
	first, err := store.Append(ctx, "dataobject-1", eventstore.NoStream(), events...)
	if err != nil {
		t.Fatal(err)
	}
	copy(buf, bytes.Repeat([]byte("X"), len(buf))) // the caller reuses its buffer
	db := readOnlyDB(t, dir)
	lo, hi := first.Position-99, first.Position
	if n := count(t, db, `SELECT count(DISTINCT metadata) FROM events WHERE position BETWEEN ? AND ?`, lo, hi); n != 2 {
		t.Fatalf("one append with two distinct metadata bodies references %d metadata rows, want 2", n)
	}
	if n := count(t, db, `SELECT count(*) FROM events WHERE position BETWEEN ? AND ? AND metadata IS NULL`, lo, hi); n != 1 {
		t.Fatalf("%d events of the append have no metadata row, want 1 (the empty one)", n)
	}

	// Concurrent appends, some of which share a group commit, all with the same body.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 20 {
				ev := eventstore.EventData{ID: uuid.New(), Type: "DecrementApplied", Data: []byte("[1]"), Metadata: bytes.Clone(upload)}
				if _, err := store.Append(ctx, fmt.Sprintf("dataobject-%d", 2+(g+i)%3), eventstore.Any(), ev); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	total := 100 + 8*20
	all, err := store.ReadAll(ctx, eventstore.Start, total+1)
	if err != nil || len(all) != total {
		t.Fatalf("read all: %d events (%v), want %d", len(all), err, total)
	}
	for _, ev := range all[100:] {
		want[ev.ID] = upload
	}
	if rows, withMetadata := count(t, db, `SELECT count(*) FROM metadata`), count(t, db, `SELECT count(*) FROM events WHERE metadata IS NOT NULL`); rows >= withMetadata-80 {
		t.Fatalf("%d metadata rows for %d events with metadata: not shared", rows, withMetadata)
	}
	if n := count(t, db, `SELECT count(*) FROM events e LEFT JOIN metadata m ON m.id = e.metadata WHERE e.metadata IS NOT NULL AND m.id IS NULL`); n != 0 {
		t.Fatalf("%d events refer to a metadata row that does not exist", n)
	}

	check := func(what string, events []eventstore.RecordedEvent) {
		t.Helper()
		if len(events) != total {
			t.Fatalf("%s: %d events, want %d", what, len(events), total)
		}
		for _, ev := range events {
			w, ok := want[ev.ID]
			if !ok {
				t.Fatalf("%s: unknown event %v", what, ev.ID)
			}
			if !bytes.Equal(ev.Metadata, w) || (w == nil) != (ev.Metadata == nil) {
				t.Fatalf("%s: event at %d has metadata %q, want %q", what, ev.Position, ev.Metadata, w)
			}
		}
	}
	check("ReadAll", all)
	check("live subscription", collect(ctx, t, live, total))
	var byStream []eventstore.RecordedEvent
	for s := 1; s <= 4; s++ {
		events, err := store.ReadStream(ctx, fmt.Sprintf("dataobject-%d", s), eventstore.Forwards, 0, total)
		if err != nil {
			t.Fatal(err)
		}
		byStream = append(byStream, events...)
	}
	check("ReadStream", byStream)
	behind, err := store.SubscribeAll(ctx, eventstore.Start)
	if err != nil {
		t.Fatal(err)
	}
	defer behind.Close()
	check("subscription from the start", collect(ctx, t, behind, total))
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	reopened := openStore(t, dir)
	again, err := reopened.ReadAll(ctx, eventstore.Start, total+1)
	if err != nil {
		t.Fatal(err)
	}
	check("ReadAll after a reopen", again)
}

// TestRolledBackNamesGetNoIds makes a group commit that introduces a new stream and a new event
// type fail (a trigger refuses the event's insert) and checks that the names' ids went with
// it: the next new stream and type take those ids, and every read, before and after a reopen,
// names them correctly; the database holds no row for the rolled-back names.
func TestRolledBackNamesGetNoIds(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	store := openStore(t, dir)
	if _, err := store.Append(ctx, "before", eventstore.NoStream(), eventstore.EventData{Type: "Before", Data: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	poisonStore(ctx, t, dir)
	for range 3 {
		_, err := store.Append(ctx, "rolled-back-stream", eventstore.NoStream(), eventstore.EventData{Type: poisonType, Data: []byte("2")})
		if err == nil || errors.Is(err, eventstore.ErrWrongExpectedVersion) {
			t.Fatalf("poisoned append: %v, want a commit error", err)
		}
	}
	ev := eventstore.EventData{Type: "After", Data: []byte("3"), Metadata: []byte("m")}
	if _, err := store.Append(ctx, "after", eventstore.NoStream(), ev); err != nil {
		t.Fatal(err)
	}
	if _, err := store.ReadStream(ctx, "rolled-back-stream", eventstore.Forwards, 0, 1); !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Fatalf("read the rolled-back stream: %v, want not found", err)
	}
	db := readOnlyDB(t, dir)
	if n := count(t, db, `SELECT count(*) FROM streams WHERE name = 'rolled-back-stream'`) + count(t, db, `SELECT count(*) FROM event_types WHERE name = ?`, poisonType); n != 0 {
		t.Fatalf("%d rows for the rolled-back names", n)
	}
	if n := count(t, db, `SELECT count(*) FROM streams`); n != 2 {
		t.Fatalf("%d streams, want 2", n)
	}
	checkNames := func(store *embedded.Store) {
		t.Helper()
		all, err := store.ReadAll(ctx, eventstore.Start, 10)
		if err != nil || len(all) != 2 || all[0].Stream != "before" || all[0].Type != "Before" || all[1].Stream != "after" || all[1].Type != "After" {
			t.Fatalf("read all: %+v, %v", all, err)
		}
		replay, err := store.ReadRangeForReplay(ctx, eventstore.Start, all[1].Position, nil)
		if err != nil || len(replay) != 2 || replay[1].Stream != "after" || replay[1].Type != "After" {
			t.Fatalf("replay read: %+v, %v", replay, err)
		}
		after, err := store.ReadStream(ctx, "after", eventstore.Forwards, 0, 10)
		if err != nil || len(after) != 1 || after[0].Type != "After" || string(after[0].Metadata) != "m" {
			t.Fatalf("read stream: %+v, %v", after, err)
		}
	}
	checkNames(store)
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	checkNames(openStore(t, dir))
}
