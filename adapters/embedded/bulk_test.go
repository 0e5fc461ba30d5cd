package embedded_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/eventstore/storetest"
)

// The bulk-load mode keeps the whole contract: expected revisions, idempotent re-appends,
// positions in commit order, reads and subscriptions.
func TestContractBulkLoad(t *testing.T) {
	storetest.Run(t, func(t *testing.T) eventstore.Store {
		return openStore(t, t.TempDir(), embedded.WithBulkLoad(), embedded.WithSubscriptionTail(0, 0))
	})
}

// Multi-row inserts cross statement boundaries (64 rows) within one append and across the
// appends of one group commit.
func TestContractBulkLoadWithTailAndLargeBatches(t *testing.T) {
	storetest.Run(t, func(t *testing.T) eventstore.Store {
		return openStore(t, t.TempDir(), embedded.WithBulkLoad(), embedded.WithMaxBatch(4096))
	})
}

// TestBulkLoadIsDurableAfterClose loads events from many goroutines in bulk mode, closes the
// store, and checks that the WAL is empty (everything is in the synced database file) and
// that a store opened in the default mode reads every event back: positions dense from 1 in
// commit order, each stream's revisions dense from 0 in its append order, nothing refused that
// was expected by construction.
func TestBulkLoadIsDurableAfterClose(t *testing.T) {
	dir := t.TempDir()
	store, err := embedded.Open(t.Context(), dir, embedded.WithBulkLoad(), embedded.WithMaxBatch(4096))
	if err != nil {
		t.Fatal(err)
	}
	const streams, appends, perAppend = 40, 25, 7 // 7 events an append: statements end mid-append
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	want := make([][]uuid.UUID, streams)
	for s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			expected := eventstore.NoStream()
			for a := range appends {
				evs := make([]eventstore.EventData, perAppend)
				for i := range evs {
					evs[i] = eventstore.EventData{ID: uuid.New(), Type: "Loaded", Data: fmt.Appendf(nil, `{"s":%d,"a":%d,"i":%d}`, s, a, i), Metadata: []byte(`{}`)}
					want[s] = append(want[s], evs[i].ID)
				}
				res, err := store.Append(t.Context(), fmt.Sprintf("bulk-%d", s), expected, evs...)
				if err != nil {
					errs <- err
					return
				}
				if res.NextExpectedRevision != uint64((a+1)*perAppend-1) {
					errs <- fmt.Errorf("stream %d append %d: next revision %d", s, a, res.NextExpectedRevision)
					return
				}
				expected = eventstore.Exact(res.NextExpectedRevision)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// A wrong expected revision is still refused, and writes nothing.
	if _, err := store.Append(t.Context(), "bulk-0", eventstore.Exact(3), eventstore.EventData{ID: uuid.New(), Type: "Loaded"}); !errors.Is(err, eventstore.ErrWrongExpectedVersion) {
		t.Fatalf("append at a stale revision: %v, want a refusal", err)
	}
	if err := store.Close(); err != nil {
		t.Fatalf("close the bulk load: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, embedded.DatabaseFile+"-wal")); err == nil && fi.Size() != 0 {
		t.Errorf("the WAL holds %d bytes after Close: not everything is in the database file", fi.Size())
	}
	reopened := openStore(t, dir)
	all, err := reopened.ReadAll(t.Context(), eventstore.Start, streams*appends*perAppend+1)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != streams*appends*perAppend {
		t.Fatalf("read %d events back, want %d", len(all), streams*appends*perAppend)
	}
	next := map[string]uint64{}
	for i, ev := range all {
		if ev.Position != eventstore.Position(i+1) {
			t.Fatalf("event %d at position %d: positions are not dense", i, ev.Position)
		}
		if ev.Revision != next[ev.Stream] {
			t.Fatalf("%s: revision %d after %d", ev.Stream, ev.Revision, next[ev.Stream])
		}
		next[ev.Stream]++
	}
	for s := range streams {
		got, err := reopened.ReadStream(t.Context(), fmt.Sprintf("bulk-%d", s), eventstore.Forwards, 0, appends*perAppend+1)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want[s]) {
			t.Fatalf("stream %d: %d events, want %d", s, len(got), len(want[s]))
		}
		for i, ev := range got {
			if ev.ID != want[s][i] {
				t.Fatalf("stream %d revision %d: id %s, want %s", s, i, ev.ID, want[s][i])
			}
		}
	}
}

// TestBulkLoadOntoAnExistingStore bulk-loads onto a store the default mode wrote (its database
// in WAL mode), and the default mode then reads both parts and appends after them.
func TestBulkLoadOntoAnExistingStore(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	ev := func() eventstore.EventData {
		return eventstore.EventData{ID: uuid.New(), Type: "Loaded", Data: []byte(`{}`)}
	}
	open := func(opts ...embedded.Option) *embedded.Store {
		s, err := embedded.Open(ctx, dir, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	appendTo := func(s *embedded.Store, expected eventstore.ExpectedRevision, n int) eventstore.AppendResult {
		evs := make([]eventstore.EventData, n)
		for i := range evs {
			evs[i] = ev()
		}
		res, err := s.Append(ctx, "existing", expected, evs...)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	s := open()
	res := appendTo(s, eventstore.NoStream(), 3)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(embedded.WithBulkLoad())
	if _, err := s.Append(ctx, "existing", eventstore.NoStream(), ev()); !errors.Is(err, eventstore.ErrWrongExpectedVersion) {
		t.Fatalf("bulk append as a new stream onto an existing one: %v", err)
	}
	res = appendTo(s, eventstore.Exact(res.NextExpectedRevision), 200)
	if res.Position != 203 || res.NextExpectedRevision != 202 {
		t.Fatalf("bulk append: %+v", res)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir)
	res = appendTo(s, eventstore.Exact(res.NextExpectedRevision), 1)
	all, err := s.ReadAll(ctx, eventstore.Start, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 204 || res.Position != 204 {
		t.Fatalf("after the bulk load: %d events, last append at %d", len(all), res.Position)
	}
}

// TestAppendNoWaitQueuesInOrder queues many appends per stream from several goroutines
// without waiting for their commits, then checks each result against the one Append gives
// (each stream's revisions dense in queue order, positions in commit order), that an append
// at a wrong expected revision among them is refused without writing anything or disturbing
// the appends queued after it, and that a default-mode store reads every event back.
func TestAppendNoWaitQueuesInOrder(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	store, err := embedded.Open(ctx, dir, embedded.WithBulkLoad(), embedded.WithMaxBatch(1<<16), embedded.WithSubscriptionTail(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	const streams, appends, perAppend = 8, 300, 3
	type queued struct {
		pending  *embedded.PendingAppend
		wantNext uint64
	}
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	want := make([][]uuid.UUID, streams)
	var refused [streams]*embedded.PendingAppend
	for s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stream := fmt.Sprintf("nowait-%d", s)
			var all []queued
			expected := eventstore.NoStream()
			for a := range appends {
				if a == appends/2 { // a stale expected revision in the middle of the stream's appends
					p, err := store.AppendNoWait(ctx, stream, eventstore.Exact(0), eventstore.EventData{ID: uuid.New(), Type: "Stale"})
					if err != nil {
						errs <- err
						return
					}
					refused[s] = p
				}
				evs := make([]eventstore.EventData, perAppend)
				for i := range evs {
					evs[i] = eventstore.EventData{ID: uuid.New(), Type: "Loaded", Data: fmt.Appendf(nil, `{"a":%d}`, a)}
					want[s] = append(want[s], evs[i].ID)
				}
				p, err := store.AppendNoWait(ctx, stream, expected, evs...)
				if err != nil {
					errs <- err
					return
				}
				next := uint64((a+1)*perAppend - 1)
				all = append(all, queued{p, next})
				expected = eventstore.Exact(next)
			}
			var last eventstore.Position
			for a, q := range all {
				res, err := q.pending.Wait(ctx)
				if err != nil {
					errs <- fmt.Errorf("%s append %d: %w", stream, a, err)
					return
				}
				if res.NextExpectedRevision != q.wantNext || res.Position <= last {
					errs <- fmt.Errorf("%s append %d: %+v after position %d, want next revision %d", stream, a, res, last, q.wantNext)
					return
				}
				if !q.pending.Done() {
					errs <- fmt.Errorf("%s append %d: not done after Wait", stream, a)
					return
				}
				last = res.Position
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Several goroutines may wait for one pending append: each gets its result.
	var waiters sync.WaitGroup
	refusals := make(chan error, 2*streams)
	for range 2 {
		for _, p := range refused {
			waiters.Add(1)
			go func() {
				defer waiters.Done()
				_, err := p.Wait(ctx)
				refusals <- err
			}()
		}
	}
	waiters.Wait()
	close(refusals)
	for err := range refusals {
		if !errors.Is(err, eventstore.ErrWrongExpectedVersion) {
			t.Fatalf("a stale append gave %v, want a refusal", err)
		}
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := store.AppendNoWait(ctx, "nowait-0", eventstore.Any()); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("append without waiting after Close: %v", err)
	}
	reopened := openStore(t, dir)
	if _, err := reopened.AppendNoWait(ctx, "nowait-0", eventstore.Any(), eventstore.EventData{ID: uuid.New(), Type: "Loaded"}); err == nil {
		t.Fatal("a default-mode store took an append without waiting")
	}
	for s := range streams {
		got, err := reopened.ReadStream(ctx, fmt.Sprintf("nowait-%d", s), eventstore.Forwards, 0, appends*perAppend+10)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want[s]) {
			t.Fatalf("stream %d: %d events, want %d", s, len(got), len(want[s]))
		}
		for i, ev := range got {
			if ev.ID != want[s][i] || ev.Revision != uint64(i) {
				t.Fatalf("stream %d event %d: id %s revision %d, want %s", s, i, ev.ID, ev.Revision, want[s][i])
			}
		}
	}
}

// rawDatabase opens the store's database file directly, beside the store, as the tests of the
// schema do.
func rawDatabase(t *testing.T, dir string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, embedded.DatabaseFile)+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// eventIndexes lists the events table's named indexes: name and SQL, one string each.
func eventIndexes(ctx context.Context, t *testing.T, db *sql.DB) []string {
	t.Helper()
	rows, err := db.QueryContext(ctx, `SELECT name || ': ' || sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND sql IS NOT NULL ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// storeWithExtraIndex makes a store in dir and gives its events table one more named index
// (on its integer primary key, whatever the schema calls it), so that DeferIndexes has an
// index to defer whatever the schema's own indexes are. It returns the indexes then.
func storeWithExtraIndex(ctx context.Context, t *testing.T, dir string) []string {
	t.Helper()
	s, err := embedded.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db := rawDatabase(t, dir)
	var pk string
	if err := db.QueryRowContext(ctx, `SELECT name FROM pragma_table_info('events') WHERE pk = 1`).Scan(&pk); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE UNIQUE INDEX bulk_test_extra ON events ("`+pk+`" DESC)`); err != nil {
		t.Fatal(err)
	}
	indexes := eventIndexes(ctx, t, db)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return indexes
}

// The contract holds on a bulk load whose indexes are deferred from the start: every read and
// the expected-revision checks stay right without them (by scanning the table).
func TestContractBulkLoadWithDeferredIndexes(t *testing.T) {
	storetest.Run(t, func(t *testing.T) eventstore.Store {
		dir := t.TempDir()
		storeWithExtraIndex(t.Context(), t, dir)
		s := openStore(t, dir, embedded.WithBulkLoad(), embedded.WithSubscriptionTail(0, 0))
		if err := s.DeferIndexes(t.Context()); err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestDeferIndexesBuildsThemAtClose defers the events table's named indexes in the middle of
// a bulk load and checks that they are gone while the load runs, that the database is refused
// by Open until Close has built them again (a copy taken half-way), and that after Close they
// are back with the same SQL, the database opens in the default mode and reads every event.
func TestDeferIndexesBuildsThemAtClose(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	before := storeWithExtraIndex(ctx, t, dir)
	store, err := embedded.Open(ctx, dir, embedded.WithBulkLoad(), embedded.WithMaxBatch(1<<16), embedded.WithSubscriptionTail(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	const streams, appends, perAppend = 20, 50, 4
	next := make([]uint64, streams)
	load := func(from, to int) {
		var pending []*embedded.PendingAppend
		for a := from; a < to; a++ {
			for s := range streams {
				expected := eventstore.NoStream()
				if a > 0 {
					expected = eventstore.Exact(next[s] - 1)
				}
				evs := make([]eventstore.EventData, perAppend)
				for i := range evs {
					evs[i] = eventstore.EventData{ID: uuid.New(), Type: "Loaded", Data: []byte(`{}`)}
				}
				p, err := store.AppendNoWait(ctx, fmt.Sprintf("deferred-%d", s), expected, evs...)
				if err != nil {
					t.Fatal(err)
				}
				pending = append(pending, p)
				next[s] += perAppend
			}
		}
		for _, p := range pending {
			if _, err := p.Wait(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	load(0, appends/2)
	if err := store.DeferIndexes(ctx); err != nil {
		t.Fatal(err)
	}
	if err := store.DeferIndexes(ctx); err == nil {
		t.Fatal("indexes deferred twice")
	}
	load(appends/2, appends)
	if got := eventIndexes(ctx, t, rawDatabase(t, dir)); len(got) != 0 {
		t.Fatalf("indexes during the load: %q, want none", got)
	}
	// A load that stops here is never served: a copy of the database as it is now is refused.
	half := t.TempDir()
	b, err := os.ReadFile(filepath.Join(dir, embedded.DatabaseFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(half, embedded.DatabaseFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := embedded.Open(ctx, half); err == nil {
		_ = s.Close()
		t.Fatal("a database whose bulk load stopped with its indexes deferred was opened")
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	db := rawDatabase(t, dir)
	if got := eventIndexes(ctx, t, db); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Fatalf("indexes after Close: %q, want %q", got, before)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	reopened := openStore(t, dir)
	for s := range streams {
		got, err := reopened.ReadStream(ctx, fmt.Sprintf("deferred-%d", s), eventstore.Forwards, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if uint64(len(got)) != next[s] {
			t.Fatalf("stream %d: %d events, want %d", s, len(got), next[s])
		}
	}
	res, err := reopened.Append(ctx, "deferred-0", eventstore.Exact(next[0]-1), eventstore.EventData{ID: uuid.New(), Type: "Loaded"})
	if err != nil || res.Position != eventstore.Position(streams*appends*perAppend+1) {
		t.Fatalf("append after the bulk load: %+v, %v", res, err)
	}
}

// TestDeferredIndexThatCannotBeBuiltFailsClose: when Close cannot build a deferred index
// again (here its SQL is made invalid behind the store's back; a UNIQUE index over duplicate
// keys fails the same way), Close fails and the database stays refused by Open.
func TestDeferredIndexThatCannotBeBuiltFailsClose(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	storeWithExtraIndex(ctx, t, dir)
	store, err := embedded.Open(ctx, dir, embedded.WithBulkLoad())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, "s", eventstore.NoStream(), eventstore.EventData{ID: uuid.New(), Type: "Loaded"}); err != nil {
		t.Fatal(err)
	}
	if err := store.DeferIndexes(ctx); err != nil {
		t.Fatal(err)
	}
	db := rawDatabase(t, dir)
	if _, err := db.ExecContext(ctx, `UPDATE bulk_deferred_indexes SET sql = 'CREATE INDEX broken ON no_such_table (x)' WHERE name = 'bulk_test_extra'`); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := store.Close(); err == nil {
		t.Fatal("Close built an index from invalid SQL")
	}
	if s, err := embedded.Open(ctx, dir); err == nil {
		_ = s.Close()
		t.Fatal("a database whose deferred indexes were not built was opened")
	}
}
