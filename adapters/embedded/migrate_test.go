package embedded_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
)

// schemaV1 is the schema Tally wrote before version 2 (store.go at bbbaa66): every row holds
// its stream and type names and its own metadata.
const schemaV1 = `
CREATE TABLE IF NOT EXISTS events (
	position INTEGER PRIMARY KEY,
	stream   TEXT    NOT NULL,
	revision INTEGER NOT NULL,
	id       BLOB    NOT NULL,
	type     TEXT    NOT NULL,
	data     BLOB    NOT NULL,
	metadata BLOB    NOT NULL,
	recorded INTEGER NOT NULL,
	UNIQUE (stream, revision)
);
PRAGMA user_version = 1;`

// v1Commit is one group commit of the version-1 writer: its events share a recorded time.
type v1Commit struct {
	recorded int64
	events   []v1Event
}

type v1Event struct {
	stream, typ    string
	id             uuid.UUID
	data, metadata []byte
}

// v1Workload is a ledger-like history with every case the row format changes: many streams
// interleaved, several types, appends whose events share metadata, a commit holding two
// appends with the same metadata and one with other metadata, metadata repeated across
// commits, empty data and empty metadata, names beyond ASCII.
func v1Workload(rng *rand.Rand, commits int) []v1Commit {
	types := []string{"IncrementApplied", "DecrementApplied", "UploadPrepared", "ÜberType"}
	metas := [][]byte{nil, []byte(`{"requestId":"r-1","tokenId":"t-1"}`), []byte(`{"requestId":"r-2"}`), {0, 1, 2, 0xff}}
	recorded := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	var out []v1Commit
	for c := range commits {
		recorded += int64(1 + rng.IntN(1e9))
		commit := v1Commit{recorded: recorded}
		for range 1 + rng.IntN(3) { // appends in this commit
			stream := fmt.Sprintf("dataobject-%d", rng.IntN(40))
			if rng.IntN(10) == 0 {
				stream = "köln-" + strconv.Itoa(rng.IntN(3))
			}
			meta := metas[rng.IntN(len(metas))]
			for i := range 1 + rng.IntN(12) {
				ev := v1Event{stream: stream, typ: types[rng.IntN(len(types))], id: uuid.New(), metadata: meta}
				if rng.IntN(8) != 0 {
					ev.data = fmt.Appendf(nil, `[%d,%d,%d]`, c, i, rng.IntN(1000))
				}
				if rng.IntN(20) == 0 { // an event of the append with metadata of its own
					ev.metadata = fmt.Appendf(nil, `{"own":%d}`, i)
				}
				commit.events = append(commit.events, ev)
			}
		}
		out = append(out, commit)
	}
	return out
}

// writeV1Store writes commits into dir/events.db as the version-1 writer did (positions dense
// from 1, revisions from 0 per stream, empty payloads as empty blobs). With inWAL the files are
// copied while the writing connection is still open and nothing has been checkpointed: dir
// then holds what a killed version-1 process left, the events in the WAL.
func writeV1Store(t *testing.T, dir string, commits []v1Commit, inWAL bool) {
	t.Helper()
	src := t.TempDir()
	path := filepath.Join(src, embedded.DatabaseFile)
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=wal_autocheckpoint(0)&_pragma=synchronous(OFF)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(schemaV1); err != nil {
		t.Fatal(err)
	}
	revisions := map[string]int64{}
	position := int64(0)
	for _, c := range commits {
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range c.events {
			position++
			revision, ok := revisions[ev.stream]
			if !ok {
				revision = -1
			}
			revisions[ev.stream] = revision + 1
			if _, err := tx.Exec(`INSERT INTO events (position, stream, revision, id, type, data, metadata, recorded) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
				position, ev.stream, revision+1, ev.id[:], ev.typ, nonNilBytes(ev.data), nonNilBytes(ev.metadata), c.recorded); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	if !inWAL {
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	copyFiles(t, src, dir, embedded.DatabaseFile, embedded.DatabaseFile+"-wal")
}

func nonNilBytes(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// copyFiles copies the named files of src that exist into dst.
func copyFiles(t *testing.T, src, dst string, names ...string) {
	t.Helper()
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(src, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// readV1 reads every event of a version-1 database the way the version-1 store's ReadAll did
// (read.go at bbbaa66): the oracle of what a migrated store must return. It reads a copy, so
// that the database itself stays as it is (closing the last connection checkpoints its WAL).
func readV1(t *testing.T, dir string) []eventstore.RecordedEvent {
	t.Helper()
	scratch := t.TempDir()
	copyFiles(t, dir, scratch, embedded.DatabaseFile, embedded.DatabaseFile+"-wal")
	db, err := sql.Open("sqlite", "file:"+filepath.Join(scratch, embedded.DatabaseFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var version int
	if err := db.QueryRow("PRAGMA user_version").Scan(&version); err != nil || version != 1 {
		t.Fatalf("oracle: schema version %d (%v), want 1", version, err)
	}
	rows, err := db.Query(`SELECT position, stream, revision, id, type, data, metadata, recorded FROM events ORDER BY position`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var events []eventstore.RecordedEvent
	for rows.Next() {
		var (
			ev                 eventstore.RecordedEvent
			position, revision int64
			recorded           int64
			id                 []byte
		)
		if err := rows.Scan(&position, &ev.Stream, &revision, &id, &ev.Type, &ev.Data, &ev.Metadata, &recorded); err != nil {
			t.Fatal(err)
		}
		if ev.ID, err = uuid.FromBytes(id); err != nil {
			t.Fatal(err)
		}
		ev.Position = eventstore.Position(position)
		ev.Revision = uint64(revision)
		ev.Recorded = time.Unix(0, recorded).UTC()
		events = append(events, ev)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return events
}

// checkReads checks that every read of the store returns exactly want (all its events, in
// order): ReadAll in pages, ReadStream both ways in pages, ReadRangeForReplay (without
// metadata and recorded time, as it documents) and a subscription from the start.
func checkReads(t *testing.T, store *embedded.Store, want []eventstore.RecordedEvent) {
	t.Helper()
	ctx := t.Context()
	var all []eventstore.RecordedEvent
	for from := eventstore.Start; ; {
		page, err := store.ReadAll(ctx, from, 97)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if len(page) < 97 {
			break
		}
		from = page[len(page)-1].Position
	}
	sameEvents(t, "ReadAll", all, want)

	byStream := map[string][]eventstore.RecordedEvent{}
	for _, ev := range want {
		byStream[ev.Stream] = append(byStream[ev.Stream], ev)
	}
	for stream, events := range byStream {
		var forwards []eventstore.RecordedEvent
		for from := uint64(0); ; {
			page, err := store.ReadStream(ctx, stream, eventstore.Forwards, from, 41)
			if err != nil {
				t.Fatal(err)
			}
			forwards = append(forwards, page...)
			if len(page) < 41 {
				break
			}
			from = page[len(page)-1].Revision + 1
		}
		sameEvents(t, "ReadStream forwards "+stream, forwards, events)
		backwards, err := store.ReadStream(ctx, stream, eventstore.Backwards, eventstore.End, len(events)+1)
		if err != nil {
			t.Fatal(err)
		}
		for i, j := 0, len(backwards)-1; i < j; i, j = i+1, j-1 {
			backwards[i], backwards[j] = backwards[j], backwards[i]
		}
		sameEvents(t, "ReadStream backwards "+stream, backwards, events)
	}
	if _, err := store.ReadStream(ctx, "no-such-stream", eventstore.Forwards, 0, 1); !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Fatalf("read a stream that does not exist: %v", err)
	}

	head, err := store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(want) > 0 && head != want[len(want)-1].Position {
		t.Fatalf("head %d, want %d", head, want[len(want)-1].Position)
	}
	replay, err := store.ReadRangeForReplay(ctx, eventstore.Start, head, nil)
	if err != nil {
		t.Fatal(err)
	}
	bare := make([]eventstore.RecordedEvent, len(want))
	for i, ev := range want {
		ev.Metadata, ev.Recorded = nil, time.Time{}
		bare[i] = ev
	}
	sameEvents(t, "ReadRangeForReplay", replay, bare)

	sub, err := store.SubscribeAll(ctx, eventstore.Start)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	sameEvents(t, "subscription", collect(ctx, t, sub, len(want)), want)
}

// sameEvents fails unless got and want are equal field by field (reflect.DeepEqual: nil and
// empty payloads differ).
func sameEvents(t *testing.T, what string, got, want []eventstore.RecordedEvent) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d events, want %d", what, len(got), len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Fatalf("%s: event %d:\ngot  %#v\nwant %#v", what, i, got[i], want[i])
		}
	}
}

// schemaVersion reads the database's user_version without opening the store. It opens the
// database for writing, as any opener does: a kill while SQLite rewrote the first page (leaving
// WAL mode) leaves a hot rollback journal, which only a writer may roll back.
func schemaVersion(t *testing.T, dir string) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, embedded.DatabaseFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var version int
	if err := db.QueryRow("PRAGMA user_version").Scan(&version); err != nil {
		t.Fatal(err)
	}
	return version
}

// TestMigrationFromSchema1GivesIdenticalReads migrates version-1 stores (one written here with
// the version-1 schema and its events still in the WAL, as a killed process leaves it; and the
// fixture a version-1 Tally wrote, adapters/httpapi/testdata/legacy-992cfab) and checks that
// every read returns exactly what the version-1 store returned, metadata and recorded times
// included; that the migrated store takes appends (expected revisions, retries of migrated
// appends); and that it reads the same after a reopen, which migrates nothing.
func TestMigrationFromSchema1GivesIdenticalReads(t *testing.T) {
	workload := v1Workload(rand.New(rand.NewPCG(13, 2)), 300)
	for _, tc := range []struct {
		name  string
		write func(t *testing.T, dir string)
	}{
		{"written with the v1 schema, events in the WAL", func(t *testing.T, dir string) { writeV1Store(t, dir, workload, true) }},
		{"legacy-992cfab fixture", func(t *testing.T, dir string) {
			copyFiles(t, filepath.Join("..", "httpapi", "testdata", "legacy-992cfab", "store"), dir, embedded.DatabaseFile, embedded.DatabaseFile+"-wal")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			dir := filepath.Join(t.TempDir(), "events")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			tc.write(t, dir)
			want := readV1(t, dir)
			if len(want) == 0 {
				t.Fatal("the v1 store is empty")
			}
			var logged bytes.Buffer
			store, err := embedded.Open(ctx, dir, embedded.WithLogger(slog.New(slog.NewTextHandler(&logged, nil))))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(logged.String(), "migrated the database to schema 2") {
				t.Errorf("the migration logged %q", logged.String())
			}
			checkReads(t, store, want)

			// The migrated store goes on: an exact append to a migrated stream, a retry of the
			// last migrated append of that stream (same IDs: the original result, nothing
			// written), and a new stream.
			last := want[len(want)-1]
			retry := eventstore.EventData{ID: last.ID, Type: last.Type, Data: last.Data, Metadata: last.Metadata}
			expected := eventstore.NoStream()
			if last.Revision > 0 {
				expected = eventstore.Exact(last.Revision - 1)
			}
			res, err := store.Append(ctx, last.Stream, expected, retry)
			if err != nil || res.NextExpectedRevision != last.Revision || res.Position != last.Position {
				t.Fatalf("retry of the last migrated append: %+v, %v; want revision %d at %d", res, err, last.Revision, last.Position)
			}
			more := []eventstore.EventData{
				{ID: uuid.New(), Type: last.Type, Data: []byte("after"), Metadata: []byte(`{"requestId":"r-1","tokenId":"t-1"}`)},
				{ID: uuid.New(), Type: "NewType", Data: []byte("after 2"), Metadata: []byte(`{"requestId":"r-1","tokenId":"t-1"}`)},
			}
			if _, err := store.Append(ctx, last.Stream, eventstore.Exact(last.Revision), more...); err != nil {
				t.Fatal(err)
			}
			if _, err := store.Append(ctx, "after-migration", eventstore.NoStream(), more[0]); err != nil {
				t.Fatal(err)
			}
			after, err := store.ReadAll(ctx, last.Position, 10)
			if err != nil || len(after) != 3 {
				t.Fatalf("read the appends after the migration: %d events, %v", len(after), err)
			}
			want = append(want, after...)
			for i, ev := range more {
				got := after[i]
				if got.Stream != last.Stream || got.Revision != last.Revision+1+uint64(i) || got.Type != ev.Type || !bytes.Equal(got.Metadata, ev.Metadata) {
					t.Fatalf("append after the migration reads %#v", got)
				}
			}
			if err := store.Close(); err != nil {
				t.Fatal(err)
			}
			if v := schemaVersion(t, dir); v != 2 {
				t.Fatalf("schema version %d after the migration, want 2", v)
			}
			logged.Reset()
			store = openStore(t, dir, embedded.WithLogger(slog.New(slog.NewTextHandler(&logged, nil))))
			if logged.Len() != 0 {
				t.Errorf("a reopen of a version-2 store logged %q", logged.String())
			}
			checkReads(t, store, want)
		})
	}
}

// TestSchemaFromANewerBuildIsRefused: a database whose schema version is above this build's is
// left alone.
func TestSchemaFromANewerBuildIsRefused(t *testing.T) {
	dir := t.TempDir()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, embedded.DatabaseFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE events (position INTEGER PRIMARY KEY); PRAGMA user_version = 3;`); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	store, err := embedded.Open(t.Context(), dir)
	if err == nil {
		_ = store.Close()
		t.Fatal("a version-3 database was opened")
	}
	if !strings.Contains(err.Error(), "newer") {
		t.Fatalf("open a version-3 database: %v", err)
	}
	if v := schemaVersion(t, dir); v != 3 {
		t.Fatalf("schema version %d after the refusal, want 3", v)
	}
}

// The interrupted-migration test re-executes the test binary as a child that opens (and so
// migrates) a version-1 store, logging its progress to stdout.
const migrateChildEnv = "TALLY_MIGRATE_CHILD" // data dir: run as the migrating child

// migrateProgressEvery is how many events the child copies between two progress lines.
const migrateProgressEvery = 75

func runMigrateChild(dir string) error {
	logger := slog.New(slog.NewTextHandler(os.Stdout, nil))
	store, err := embedded.Open(context.Background(), dir, embedded.WithLogger(logger), embedded.WithMigrationProgress(migrateProgressEvery))
	if err != nil {
		return err
	}
	fmt.Println("opened")
	return store.Close()
}

// TestInterruptedMigrationLeavesAUsableStore kills a process migrating a version-1 store
// (SIGKILL) at random moments: at one of its progress lines, while it builds the index, after
// a random delay (leaving WAL mode, renaming), or not at all. After each kill the database is
// either still version 1 or wholly version 2, and the store opens (finishing the migration when
// it had not) and reads exactly what the version-1 store held (ReadAll after every kill, every
// kind of read after the first).
func TestInterruptedMigrationLeavesAUsableStore(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	kills := 10
	if os.Getenv("TALLY_LONG") != "" {
		kills = 60
	}
	seed := crashSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	v1 := filepath.Join(t.TempDir(), "v1")
	writeV1Store(t, v1, v1Workload(rand.New(rand.NewPCG(13, 3)), 200), false) // about 2,600 events
	want := readV1(t, v1)
	outcomes := map[int]int{}
	for round := range kills {
		dir := filepath.Join(t.TempDir(), "events")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		copyFiles(t, v1, dir, embedded.DatabaseFile)
		version := killMigration(t, dir, round, rng)
		outcomes[version]++
		store, err := embedded.Open(t.Context(), dir, embedded.WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatalf("round %d: open after the kill (schema version %d): %v", round, version, err)
		}
		all, err := store.ReadAll(t.Context(), eventstore.Start, len(want)+1)
		if err != nil {
			t.Fatal(err)
		}
		sameEvents(t, "ReadAll", all, want)
		if round == 0 {
			checkReads(t, store, want) // every read, once
		}
		if err := store.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, embedded.DatabaseFile+".migrating")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("round %d: the unfinished migration's file is still there (%v)", round, err)
		}
	}
	t.Logf("schema version found after the kills: %v", outcomes)
}

// killMigration starts a migrating child on dir, kills it at the moment the dice chose, and
// returns the schema version the database has afterwards (1 or 2, nothing else).
func killMigration(t *testing.T, dir string, round int, rng *rand.Rand) int {
	t.Helper()
	child := startChild(t, "migrating child", migrateChildEnv+"="+dir)
	// The child logs: the start, a line per migrateProgressEvery events (about 35), the index,
	// the end, "opened".
	killAtLine := -1
	switch rng.IntN(4) {
	case 0, 1:
		killAtLine = 1 + rng.IntN(38)
	case 2:
		time.AfterFunc(time.Duration(rng.IntN(400))*time.Millisecond, child.kill)
	case 3: // let it finish
	}
	for lines := 1; ; lines++ {
		_, err := child.lines.ReadBytes('\n')
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("read migrating child: %v", err)
			}
			break
		}
		if lines == killAtLine {
			child.kill()
		}
	}
	if killed, err := child.wait(); err != nil && !killed {
		t.Fatalf("round %d: migrating child failed (%v): %s", round, err, child.stderr.String())
	}
	version := schemaVersion(t, dir)
	if version != 1 && version != 2 {
		t.Fatalf("round %d: schema version %d after the kill", round, version)
	}
	return version
}
