package readmodel_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/audittest"
	"github.com/tallyledger/tally/projections/readmodel"
)

// Zones has every kind of offset: whole hours with DST, half hours with and without DST,
// +05:45, Lord Howe's 30-minute DST, Chatham's +12:45/+13:45.
var Zones = []string{"UTC", "Europe/Stockholm", "America/St_Johns", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe", "Pacific/Chatham"}

// start opens a model on store and runs it until the test ends.
func start(t *testing.T, store eventstore.Store, path string, opts readmodel.Options) (*readmodel.Model, chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m, err := readmodel.Open(ctx, store, path, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = m.Close()
	})
	return m, done
}

func seeded(t *testing.T, seed uint64, n int, live string) (eventstore.Store, *audittest.Env, *audittest.Workload, *readmodel.Model) {
	t.Helper()
	store, err := embedded.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	var m *readmodel.Model
	if live != "" {
		// Following the store while it is written: the live path, batch by batch.
		m, _ = start(t, store, live, readmodel.Options{})
	}
	env := audittest.Start(t, store, "")
	w := audittest.Seed(t, env, rand.New(rand.NewPCG(seed, seed+1)), n)
	return store, env, w, m
}

// queries is the test set: every zone, by day and month, on both axes, over the year, a
// range with both DST changes of the northern and southern hemisphere, single days of DST
// changes, aligned instants, a product and a key filter.
func queries(t *testing.T, w *audittest.Workload) []projections.UsageQuery {
	t.Helper()
	now := time.Now().UTC().Truncate(15 * time.Minute)
	var out []projections.UsageQuery
	for _, zone := range Zones {
		loc, err := time.LoadLocation(zone)
		if err != nil {
			t.Fatal(err)
		}
		d := func(y int, m time.Month, day int) time.Time { return time.Date(y, m, day, 0, 0, 0, 0, loc) }
		ranges := [][2]time.Time{
			{d(2025, 1, 1), d(2026, 1, 1)},
			{d(2024, 12, 30), d(2026, 1, 2)},
			{d(2025, 3, 1), d(2025, 5, 1)},   // Europe's spring change, Lord Howe's and Chatham's autumn
			{d(2025, 9, 20), d(2025, 11, 3)}, // Europe's autumn, southern spring
			{d(2025, 3, 30), d(2025, 3, 31)},
			{d(2025, 10, 26), d(2025, 10, 27)},
			{d(2025, 4, 6), d(2025, 4, 7)},
			{d(2025, 9, 28), d(2025, 9, 29)},
			{d(2025, 10, 5), d(2025, 10, 6)},
			{time.Date(2025, 3, 30, 0, 45, 0, 0, time.UTC), time.Date(2025, 10, 26, 1, 15, 0, 0, time.UTC)},
			{time.Date(2025, 6, 30, 22, 15, 0, 0, time.UTC), time.Date(2025, 6, 30, 23, 15, 0, 0, time.UTC)}, // one hour
		}
		for _, axis := range []projections.TimeAxis{projections.AxisUsage, projections.AxisRecorded} {
			rs := ranges
			if axis == projections.AxisRecorded {
				// The store recorded everything within the last minutes: ranges around now.
				rs = [][2]time.Time{{d(2025, 1, 1), d(2027, 1, 1)}, {now.AddDate(0, 0, -2), now.AddDate(0, 0, 2)}, {now.Add(-time.Hour), now.Add(time.Hour)},
					{now, now.Add(15 * time.Minute)}, {now.Add(-15 * time.Minute), now}}
			}
			for _, r := range rs {
				for _, by := range []projections.Granularity{projections.ByDay, projections.ByMonth} {
					out = append(out, projections.UsageQuery{From: r[0], To: r[1], Location: loc, By: by, Axis: axis})
				}
			}
		}
	}
	year := [2]time.Time{time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	product, key := w.Objects[0].ProductID, w.Objects[2].KeyID
	out = append(out,
		projections.UsageQuery{From: year[0], To: year[1], By: projections.ByDay, Include: func(o projections.UsageObject) bool { return o.ProductID == product }},
		projections.UsageQuery{From: year[0], To: year[1], By: projections.ByMonth, Include: func(o projections.UsageObject) bool { return o.KeyID == key }},
	)
	return out
}

func describe(q projections.UsageQuery) string {
	return fmt.Sprintf("%s..%s in %s by %s on %s axis", q.From.Format(time.RFC3339), q.To.Format(time.RFC3339), q.Location, q.By, q.Axis)
}

// sameReport compares the read model's report with the replay's, row for row.
func sameReport(t *testing.T, want, got *projections.UsageReport, what string) {
	t.Helper()
	if got.Source != readmodel.SourceReadModel {
		t.Errorf("%s: source %q", what, got.Source)
	}
	if got.Position != want.Position {
		t.Errorf("%s: position %d, the replay's %d", what, got.Position, want.Position)
	}
	if len(got.Rows) != len(want.Rows) {
		t.Errorf("%s: %d rows, the replay has %d", what, len(got.Rows), len(want.Rows))
	}
	for i := range min(len(got.Rows), len(want.Rows)) {
		a, _ := json.Marshal(want.Rows[i])
		b, _ := json.Marshal(got.Rows[i])
		if string(a) != string(b) {
			t.Errorf("%s: row %d\n got %s\nwant %s", what, i, b, a)
			return
		}
	}
}

// memoryReader serves the store's events from memory to the replay oracle: the same events
// in the same order, without reading SQLite again for each of hundreds of reports.
type memoryReader []eventstore.RecordedEvent

func (r memoryReader) ReadAll(_ context.Context, from eventstore.Position, max int) ([]eventstore.RecordedEvent, error) {
	i := sort.Search(len(r), func(i int) bool { return r[i].Position > from })
	return r[i:min(len(r), i+max)], nil
}

func inMemory(t *testing.T, store eventstore.Store) memoryReader {
	t.Helper()
	evs, err := store.ReadAll(context.Background(), eventstore.Start, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	return memoryReader(evs)
}

func compareAll(t *testing.T, store eventstore.Store, m *readmodel.Model, qs []projections.UsageQuery) int {
	t.Helper()
	ctx := context.Background()
	if _, err := m.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	events := inMemory(t, store)
	rows := 0
	for _, q := range qs {
		want, err := projections.Usage(ctx, events, q)
		if err != nil {
			t.Fatalf("%s: replay: %v", describe(q), err)
		}
		got, err := m.Usage(ctx, q)
		if err != nil {
			t.Fatalf("%s: read model: %v", describe(q), err)
		}
		sameReport(t, want, got, describe(q))
		rows += len(want.Rows)
	}
	return rows
}

func TestUsageEqualsTheReplayInEveryZone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "usage.db")
	store, _, w, live := seeded(t, 13, 300, path)
	qs := queries(t, w)
	if underRace {
		var quarter []projections.UsageQuery
		for i := 0; i < len(qs); i += 4 {
			quarter = append(quarter, qs[i])
		}
		qs = quarter
	}
	rows := compareAll(t, store, live, qs)
	if least := map[bool]int{false: 5000, true: 1000}[underRace]; rows < least {
		t.Fatalf("only %d rows compared: the test set says little", rows)
	}
	// A second instance builds its own by catching up, in one transaction per 37 events
	// (every third query of the set: the fold is the same code, only the batching differs).
	caught, _ := start(t, store, filepath.Join(t.TempDir(), "usage.db"), readmodel.Options{BatchEvents: 37})
	var some []projections.UsageQuery
	for i := 0; i < len(qs); i += 3 {
		some = append(some, qs[i])
	}
	compareAll(t, store, caught, some)
	t.Logf("%d queries, %d rows each time", len(qs), rows)
}

func TestUnalignedBoundsAreLeftToTheReplay(t *testing.T) {
	store, _, _, m := seeded(t, 5, 20, filepath.Join(t.TempDir(), "usage.db"))
	ctx := context.Background()
	if _, err := m.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	q := projections.UsageQuery{From: time.Date(2025, 1, 1, 10, 7, 0, 0, time.UTC), To: time.Date(2025, 2, 1, 0, 0, 0, 0, time.UTC)}
	if _, err := m.Usage(ctx, q); !errors.Is(err, readmodel.ErrNotAligned) {
		t.Fatalf("from 10:07: %v, want ErrNotAligned", err)
	}
	// Stockholm kept local mean time (+01:12:12) until 1900: its days then are not on the grid.
	loc, _ := time.LoadLocation("Europe/Stockholm")
	q = projections.UsageQuery{From: time.Date(1879, 1, 1, 0, 0, 0, 0, time.UTC), To: time.Date(1879, 1, 3, 0, 0, 0, 0, time.UTC), Location: loc}
	if _, err := m.Usage(ctx, q); !errors.Is(err, readmodel.ErrNotAligned) {
		t.Fatalf("1879 in Stockholm: %v, want ErrNotAligned", err)
	}
	if _, err := projections.Usage(ctx, store, q); err != nil {
		t.Fatal(err)
	}
}

func TestTooManyPeriodsAreRefused(t *testing.T) {
	_, _, _, m := seeded(t, 5, 5, filepath.Join(t.TempDir(), "usage.db"))
	from := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	q := projections.UsageQuery{From: from, To: from.AddDate(0, 0, projections.MaxPeriods+1)}
	if _, err := m.Usage(context.Background(), q); !errors.Is(err, projections.ErrTooManyPeriods) {
		t.Fatalf("%d days: %v", projections.MaxPeriods+1, err)
	}
	q.To = from.AddDate(0, 0, projections.MaxPeriods)
	if _, err := m.Usage(context.Background(), q); err != nil {
		t.Fatalf("%d days: %v", projections.MaxPeriods, err)
	}
}

func TestValueAtEqualsTheFoldOfTheStream(t *testing.T) {
	store, _, w, m := seeded(t, 21, 300, filepath.Join(t.TempDir(), "usage.db"))
	ctx := context.Background()
	if _, err := m.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	compared := 0
	for _, o := range w.Objects {
		h, err := projections.History(ctx, store, o.ID)
		if err != nil {
			t.Fatal(err)
		}
		times := []time.Time{time.Unix(0, 0), time.Now().Add(time.Hour)}
		for i, e := range h.Entries {
			if underRace && i%3 != 0 {
				continue
			}
			times = append(times, e.Recorded)
			if i%4 == 0 {
				times = append(times, e.Recorded.Add(-time.Nanosecond), e.Recorded.Add(time.Nanosecond))
			}
		}
		for _, at := range times {
			want, err := projections.ValueAt(ctx, store, o.ID, at)
			if err != nil {
				t.Fatal(err)
			}
			got, err := m.ValueAt(ctx, o.ID, at)
			if err != nil {
				t.Fatal(err)
			}
			if got.AsOf != m.Position() {
				t.Fatalf("asOf %d, model at %d", got.AsOf, m.Position())
			}
			got.AsOf = 0
			if *got != *want {
				t.Fatalf("object %d at %s:\n got %+v\nwant %+v", o.ID, at.Format(time.RFC3339Nano), got, want)
			}
			compared++
		}
	}
	if _, err := m.ValueAt(ctx, 999999, time.Now()); !errors.Is(err, projections.ErrNoSuchObject) {
		t.Fatalf("unknown object: %v", err)
	}
	t.Logf("%d values compared", compared)
}

var errCrash = errors.New("crash before commit")

// TestACrashBetweenTransactionsNeitherDropsNorRepeatsAnEvent stops the model's process before
// the k-th commit (the transaction never lands), reopens the file as a restart would, and
// checks that the model then equals the replay and folded each event exactly once.
func TestACrashBetweenTransactionsNeitherDropsNorRepeatsAnEvent(t *testing.T) {
	store, _, w, _ := seeded(t, 8, 200, "")
	ctx := context.Background()
	head, err := eventstore.Head(ctx, store, 0)
	if err != nil {
		t.Fatal(err)
	}
	all, err := store.ReadAll(ctx, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	qs := queries(t, w)[:40]
	for _, k := range []int{1, 2, 5, 9} {
		path := filepath.Join(t.TempDir(), "usage.db")
		commits := 0
		crashCtx, cancel := context.WithCancel(ctx)
		m, err := readmodel.Open(crashCtx, store, path, readmodel.Options{BatchEvents: 23, BeforeCommit: func(eventstore.Position) error {
			commits++
			if commits == k {
				return errCrash
			}
			return nil
		}})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Run(crashCtx); !errors.Is(err, errCrash) {
			t.Fatalf("k=%d: run: %v", k, err)
		}
		crashedAt := m.Position()
		cancel()
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		if crashedAt >= head {
			t.Fatalf("k=%d: the crash came after the last event", k)
		}
		re, _ := start(t, store, path, readmodel.Options{BatchEvents: 23})
		if re.LoadedAt() != crashedAt {
			t.Fatalf("k=%d: reopened at %d, the last commit was at %d", k, re.LoadedAt(), crashedAt)
		}
		compareAll(t, store, re, qs)
		n, err := re.Events(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n != int64(len(all)) {
			t.Fatalf("k=%d: folded %d events, the store holds %d", k, n, len(all))
		}
	}
}

func TestAFileThatDoesNotFitTheStoreIsRebuilt(t *testing.T) {
	ctx := context.Background()
	store, _, _, _ := seeded(t, 3, 50, "")
	path := filepath.Join(t.TempDir(), "usage.db")
	m, err := readmodel.Open(ctx, store, path, readmodel.Options{})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(runCtx) }()
	if _, err := m.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("read model file mode: %v %v, want owner only", fi.Mode(), err)
	}
	// A file of another schema version starts again too.
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE meta SET schema = schema - 1`); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	old, err := readmodel.Open(ctx, store, path, readmodel.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if old.LoadedAt() != 0 {
		t.Fatalf("a file of another schema was kept at %d", old.LoadedAt())
	}
	_ = old.Close()
	// Another store, which does not hold the file's checkpoint: the file starts again.
	other, _, w, _ := seeded(t, 4, 30, "")
	re, _ := start(t, other, path, readmodel.Options{})
	if re.LoadedAt() != 0 {
		t.Fatalf("a checkpoint of another store was kept: %d", re.LoadedAt())
	}
	compareAll(t, other, re, queries(t, w)[:20])
}
