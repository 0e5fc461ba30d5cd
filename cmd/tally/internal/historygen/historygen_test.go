package historygen_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/cmd/tally/internal/historygen"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/readmodel"
)

// TestAGeneratedHistoryIsALedgerHistory generates a small history and checks that it is one
// the ledger could have written (every recorded value-after equals the replay's fold), that
// it has what it promises (a hot object with a tenth of the events, uploads, aborts, removals,
// backdated log timestamps), and that on its many objects the usage read model answers as the
// replay in every test zone.
func TestAGeneratedHistoryIsALedgerHistory(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	end := time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC)
	res, err := historygen.Generate(ctx, historygen.Config{Dir: dir, Events: 8000, Seed: 3, End: end, Workers: 8})
	if err != nil {
		t.Fatal(err)
	}
	if res.Events < 8000 || res.Keys != 8 || res.Objects != 80 || res.Uploads == 0 || res.Aborted == 0 || res.Removed == 0 {
		t.Fatalf("result %+v", res)
	}
	if res.HotEvents < res.Events/10-500 || res.HotEvents > res.Events/10+500 {
		t.Errorf("hot object holds %d of %d events", res.HotEvents, res.Events)
	}
	if _, err := historygen.Generate(ctx, historygen.Config{Dir: dir, Events: 10}); err == nil {
		t.Error("generating over an existing store succeeded")
	}
	store, err := embedded.Open(ctx, filepath.Join(dir, "events"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	st, problems, err := projections.RebuildVerified(ctx, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("%d problems, first: %s", len(problems), problems[0])
	}
	if int64(st.Events) != res.Events || len(st.Objects) != res.Objects {
		t.Fatalf("replay: %d events, %d objects; generated %d, %d", st.Events, len(st.Objects), res.Events, res.Objects)
	}
	// Upload entries are backdated: some log timestamps are weeks before their upload.
	evs, err := store.ReadStream(ctx, domain.DataObjectStream(res.HotObject), 0, 0, 5000)
	if err != nil {
		t.Fatal(err)
	}
	backdated := 0
	for _, ev := range evs {
		var d domain.ValueChanged
		if ev.Type == domain.EventIncrementApplied && json.Unmarshal(ev.Data, &d) == nil && d.Upload != nil && d.At.Before(end.AddDate(0, 0, -10)) {
			backdated++
		}
	}
	if backdated == 0 {
		t.Error("no backdated upload entries")
	}

	mctx, cancel := context.WithCancel(ctx)
	m, err := readmodel.Open(mctx, store, filepath.Join(dir, readmodel.File), readmodel.Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(mctx) }()
	defer func() {
		cancel()
		<-done
		_ = m.Close()
	}()
	if _, err := m.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	// The replay oracle reads the events from memory: the same events in the same order,
	// without reading SQLite again for each report.
	all, err := store.ReadAll(ctx, eventstore.Start, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	events := memoryReader(all)
	// The generators keep pace: a direct call's time (its generator's clock when it queued it)
	// is about as far into the year as its position is into the log, for every object but the
	// hot one. In a history this small one operation is a few per cent of a generator's budget
	// (its clock jumps by that much), hence the bound of 15 % of the year; a generator that ran
	// ahead or behind the others would put most of its events further off.
	start, span := end.AddDate(-1, 0, 0), end.Sub(end.AddDate(-1, 0, 0))
	var direct, off int
	var worst time.Duration
	for _, ev := range all {
		var d domain.ValueChanged
		if ev.Type != domain.EventIncrementApplied && ev.Type != domain.EventDecrementApplied {
			continue
		}
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			t.Fatal(err)
		}
		if d.Upload != nil || d.Correction != "" || d.ObjectID == res.HotObject {
			continue
		}
		direct++
		expected := start.Add(time.Duration(float64(span) * float64(ev.Position) / float64(len(all))))
		dev := d.At.Sub(expected).Abs()
		worst = max(worst, dev)
		if dev > span*15/100 {
			off++
		}
	}
	if direct < 1000 || off > direct/100 {
		t.Errorf("%d of %d direct calls more than 15 %% of the year from their position's time (worst %s)", off, direct, worst)
	}
	t.Logf("direct calls against their positions: %d, worst %s off", direct, worst)
	rows := 0
	for _, zone := range []string{"UTC", "Europe/Stockholm", "America/St_Johns", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe", "Pacific/Chatham"} {
		loc, _ := time.LoadLocation(zone)
		for _, q := range []projections.UsageQuery{
			{From: time.Date(2025, 6, 1, 0, 0, 0, 0, loc), To: time.Date(2026, 7, 1, 0, 0, 0, 0, loc), By: projections.ByMonth},
			{From: time.Date(2026, 3, 1, 0, 0, 0, 0, loc), To: time.Date(2026, 4, 15, 0, 0, 0, 0, loc), By: projections.ByDay},
			{From: time.Date(2025, 9, 20, 0, 0, 0, 0, loc), To: time.Date(2025, 10, 10, 0, 0, 0, 0, loc), By: projections.ByDay,
				Include: func(o projections.UsageObject) bool { return o.KeyID <= 2 }},
			{From: time.Date(2025, 1, 1, 0, 0, 0, 0, loc), To: time.Date(2027, 1, 1, 0, 0, 0, 0, loc), By: projections.ByMonth, Axis: projections.AxisRecorded},
		} {
			q.Location = loc
			want, err := projections.Usage(ctx, events, q)
			if err != nil {
				t.Fatal(err)
			}
			got, err := m.Usage(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Rows) != len(want.Rows) || got.Position != want.Position {
				t.Fatalf("%s %s..%s by %s: %d rows at %d, replay %d at %d", zone, q.From, q.To, q.By, len(got.Rows), got.Position, len(want.Rows), want.Position)
			}
			for i := range want.Rows {
				a, _ := json.Marshal(want.Rows[i])
				b, _ := json.Marshal(got.Rows[i])
				if string(a) != string(b) {
					t.Fatalf("%s by %s row %d:\n got %s\nwant %s", zone, q.By, i, b, a)
				}
			}
			rows += len(want.Rows)
		}
	}
	if rows < 2000 {
		t.Errorf("only %d rows compared", rows)
	}
	for _, at := range []time.Time{end.AddDate(0, -6, 0), time.Now(), time.Now().Add(-time.Hour)} {
		want, err := projections.ValueAt(ctx, store, res.HotObject, at)
		if err != nil {
			t.Fatal(err)
		}
		got, err := m.ValueAt(ctx, res.HotObject, at)
		if err != nil {
			t.Fatal(err)
		}
		got.AsOf = 0
		if *got != *want {
			t.Errorf("hot object at %s: %+v, replay %+v", at, got, want)
		}
	}
	t.Logf("%d events, %d rows compared", res.Events, rows)
}

type memoryReader []eventstore.RecordedEvent

func (r memoryReader) ReadAll(_ context.Context, from eventstore.Position, max int) ([]eventstore.RecordedEvent, error) {
	i := sort.Search(len(r), func(i int) bool { return r[i].Position > from })
	return r[i:min(len(r), i+max)], nil
}
