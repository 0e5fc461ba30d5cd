package projections_test

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/audittest"
)

// seeded opens a real embedded store, runs the ledger over it and seeds the workload.
func seeded(t *testing.T, seed uint64, n int) (*audittest.Env, *audittest.Workload) {
	t.Helper()
	store, err := embedded.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	env := audittest.Start(t, store, "")
	return env, audittest.Seed(t, env, rand.New(rand.NewPCG(seed, seed+1)), n)
}

type usageKey struct {
	object int64
	period string
}

// expectedUsage computes a usage report from the workload list alone, on the usage-time axis.
func expectedUsage(t *testing.T, w *audittest.Workload, from, to time.Time, loc *time.Location, by projections.Granularity, include func(audittest.Object) bool) map[usageKey]projections.UsageRow {
	t.Helper()
	layout := "2006-01-02"
	period := func(t time.Time) string { return t.In(loc).Format(layout) }
	switch by {
	case projections.ByMonth:
		layout = "2006-01"
	case projections.ByHour:
		// Stockholm's and UTC's offsets are whole hours: local hours start at UTC's.
		layout = "2006-01-02T15:04Z07:00"
		period = func(t time.Time) string { return t.Truncate(time.Hour).In(loc).Format(layout) }
	}
	objects := map[int64]audittest.Object{}
	for _, o := range w.Objects {
		objects[o.ID] = o
	}
	out := map[usageKey]projections.UsageRow{}
	for _, op := range w.Ops {
		if !op.Counted || !include(objects[op.ObjectID]) || op.Time.Before(from) || !op.Time.Before(to) {
			continue
		}
		k := usageKey{op.ObjectID, period(op.Time)}
		r := out[k]
		r.ObjectID, r.Period = op.ObjectID, k.period
		switch {
		case op.Kind == audittest.OpCorrection:
			r.Corrections += op.Delta
			r.Entries++
		case op.Kind == audittest.OpSet:
			r.Sets++
			r.Adjustments += op.Delta
		case op.Kind == audittest.OpAdd:
			r.Adjustments += op.Delta
		case op.Delta > 0:
			r.Increments += op.Delta
			r.Entries++
		default:
			r.Decrements -= op.Delta
			r.Entries++
		}
		out[k] = r
	}
	for k, r := range out {
		start, err := time.ParseInLocation(layout, k.period, loc) // an hour's name carries its offset
		if err != nil {
			t.Fatal(err)
		}
		if start.Before(from) {
			start = from
		}
		var opening, inPeriod int64
		for _, op := range w.Ops {
			if !op.Counted || op.ObjectID != k.object {
				continue
			}
			if op.Time.Before(start) {
				opening += op.Delta
			} else if op.Time.Before(to) && period(op.Time) == k.period {
				inPeriod += op.Delta
			}
		}
		r.Net = r.Increments - r.Decrements + r.Corrections
		r.Opening, r.Closing = opening, opening+inPeriod
		out[k] = r
	}
	return out
}

func TestUsageReportEqualsAnIndependentSumOfTheWorkload(t *testing.T) {
	env, w := seeded(t, 1, 400)
	ctx := context.Background()
	stockholm, err := time.LoadLocation("Europe/Stockholm")
	if err != nil {
		t.Fatal(err)
	}
	everything := func(audittest.Object) bool { return true }
	productOne := w.Objects[0].ProductID
	cases := []struct {
		name     string
		from, to time.Time
		loc      *time.Location
		by       projections.Granularity
		include  func(audittest.Object) bool
	}{
		{"year by day in Stockholm", time.Date(2025, 1, 1, 0, 0, 0, 0, stockholm), time.Date(2026, 1, 2, 0, 0, 0, 0, stockholm), stockholm, projections.ByDay, everything},
		{"year by month in Stockholm", time.Date(2025, 1, 1, 0, 0, 0, 0, stockholm), time.Date(2026, 2, 1, 0, 0, 0, 0, stockholm), stockholm, projections.ByMonth, everything},
		{"year by day in UTC", time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.UTC, projections.ByDay, everything},
		{"year by month in UTC", time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.UTC, projections.ByMonth, everything},
		{"summer time, clipped months, in Stockholm", time.Date(2025, 3, 30, 0, 0, 0, 0, stockholm), time.Date(2025, 10, 27, 0, 0, 0, 0, stockholm), stockholm, projections.ByMonth, everything},
		{"autumn change by hour in Stockholm", time.Date(2025, 10, 25, 0, 0, 0, 0, stockholm), time.Date(2025, 10, 28, 0, 0, 0, 0, stockholm), stockholm, projections.ByHour, everything},
		{"spring change by hour in Stockholm", time.Date(2025, 3, 29, 0, 0, 0, 0, stockholm), time.Date(2025, 4, 1, 0, 0, 0, 0, stockholm), stockholm, projections.ByHour, everything},
		{"DST days in Stockholm, one product", time.Date(2025, 3, 29, 0, 0, 0, 0, stockholm), time.Date(2025, 10, 28, 0, 0, 0, 0, stockholm), stockholm, projections.ByDay,
			func(o audittest.Object) bool { return o.ProductID == productOne }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := expectedUsage(t, w, c.from, c.to, c.loc, c.by, c.include)
			rep, err := projections.Usage(ctx, env.Store, projections.UsageQuery{
				From: c.from, To: c.to, Location: c.loc, By: c.by,
				Include: func(o projections.UsageObject) bool {
					return c.include(audittest.Object{ID: o.ObjectID, Owner: o.Owner, ProductID: o.ProductID, KeyID: o.KeyID})
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Rows) != len(want) {
				t.Errorf("%d rows, want %d", len(rep.Rows), len(want))
			}
			for _, got := range rep.Rows {
				k := usageKey{got.ObjectID, got.Period}
				exp, ok := want[k]
				if !ok {
					t.Errorf("unexpected row %+v", got)
					continue
				}
				if got.Increments != exp.Increments || got.Decrements != exp.Decrements || got.Corrections != exp.Corrections ||
					got.Net != exp.Net || got.Entries != exp.Entries || got.Sets != exp.Sets || got.Adjustments != exp.Adjustments ||
					got.Opening != exp.Opening || got.Closing != exp.Closing {
					t.Errorf("object %d period %s:\n got %+v\nwant %+v", k.object, k.period, got, exp)
				}
				if got.Start.Location().String() != c.loc.String() || !got.Start.Before(got.End) {
					t.Errorf("object %d period %s: bounds %v..%v", k.object, k.period, got.Start, got.End)
				}
			}
		})
	}
	// A sanity check that the workload exercises what the report must handle.
	kinds := map[audittest.OpKind]int{}
	statuses := map[string]int{}
	for _, op := range w.Ops {
		kinds[op.Kind]++
		statuses[op.Status]++
	}
	for _, k := range []audittest.OpKind{audittest.OpIncrement, audittest.OpDecrement, audittest.OpSet, audittest.OpCorrection, audittest.OpUpload} {
		if kinds[k] == 0 {
			t.Errorf("the workload has no %s", k)
		}
	}
	if statuses["aborted"] == 0 || statuses["committed"] == 0 || statuses["pending"] == 0 {
		t.Errorf("upload statuses in the workload: %v", statuses)
	}
}

func TestDSTDaysHaveTheirLocalLength(t *testing.T) {
	env, _ := seeded(t, 2, 60)
	stockholm, err := time.LoadLocation("Europe/Stockholm")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := projections.Usage(context.Background(), env.Store, projections.UsageQuery{
		From: time.Date(2025, 1, 1, 0, 0, 0, 0, stockholm), To: time.Date(2026, 1, 2, 0, 0, 0, 0, stockholm), Location: stockholm,
	})
	if err != nil {
		t.Fatal(err)
	}
	// The seeded edges put entries on both change days.
	lengths := map[string]time.Duration{}
	for _, r := range rep.Rows {
		lengths[r.Period] = r.End.Sub(r.Start)
	}
	for period, want := range map[string]time.Duration{"2025-03-30": 23 * time.Hour, "2025-10-26": 25 * time.Hour} {
		if got, ok := lengths[period]; !ok || got != want {
			t.Errorf("day %s: length %v (present %v), want %v", period, got, ok, want)
		}
	}
}

func TestUsageOnTheRecordedAxisEndsAtTheCurrentValue(t *testing.T) {
	env, w := seeded(t, 3, 150)
	ctx := context.Background()
	now := time.Now()
	rep, err := projections.Usage(ctx, env.Store, projections.UsageQuery{From: now.Add(-time.Hour), To: now.Add(time.Hour), Axis: projections.AxisRecorded})
	if err != nil {
		t.Fatal(err)
	}
	type sums struct{ inc, dec, corr, adj, opening, closing int64 }
	got := map[int64]*sums{}
	for _, r := range rep.Rows {
		s := got[r.ObjectID]
		if s == nil {
			s = &sums{opening: r.Opening}
			got[r.ObjectID] = s
		}
		s.inc += r.Increments
		s.dec += r.Decrements
		s.corr += r.Corrections
		s.adj += r.Adjustments
		s.closing = r.Closing
	}
	for _, o := range w.Objects {
		var want sums
		for _, op := range w.Ops {
			if op.ObjectID != o.ID || !op.Counted {
				continue
			}
			switch {
			case op.Kind == audittest.OpCorrection:
				want.corr += op.Delta
			case op.Kind == audittest.OpSet || op.Kind == audittest.OpAdd:
				want.adj += op.Delta
			case op.Delta > 0:
				want.inc += op.Delta
			default:
				want.dec -= op.Delta
			}
		}
		want.closing = w.Final[o.ID]
		s := got[o.ID]
		if s == nil || *s != want {
			t.Errorf("object %d: %+v, want %+v", o.ID, s, want)
		}
	}
}

func TestValueAtEqualsTheReplayOfEventsRecordedUpToT(t *testing.T) {
	env, w := seeded(t, 4, 200)
	ctx := context.Background()
	var all []eventstore.RecordedEvent
	for pos := eventstore.Start; ; {
		evs, err := env.Store.ReadAll(ctx, pos, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			break
		}
		all = append(all, evs...)
		pos = evs[len(evs)-1].Position
	}
	rng := rand.New(rand.NewPCG(9, 9))
	times := []time.Time{all[0].Recorded.Add(-time.Second), all[len(all)-1].Recorded.Add(time.Second)}
	for range 60 {
		r := all[rng.IntN(len(all))].Recorded
		times = append(times, r, r.Add(-time.Nanosecond), r.Add(time.Nanosecond))
	}
	for _, at := range times {
		st := state.NewState()
		for _, ev := range all {
			if !ev.Recorded.After(at) {
				if err := st.Apply(ev); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, o := range w.Objects {
			got, err := projections.ValueAt(ctx, env.Store, o.ID, at)
			if err != nil {
				t.Fatal(err)
			}
			want, exists := st.Object(o.ID)
			if got.Exists != exists || (exists && (got.IntValue != want.IntValue || got.Removed != want.Removed || got.StringValue != want.StringValue)) {
				t.Fatalf("object %d at %v: got %+v, replay gives %+v (exists %v)", o.ID, at, got, want, exists)
			}
		}
	}
	// After everything, the value as of now is the workload's final value.
	for _, o := range w.Objects {
		got, err := projections.ValueAt(ctx, env.Store, o.ID, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if int64(got.IntValue) != w.Final[o.ID] {
			t.Errorf("object %d now: %d, want %d", o.ID, got.IntValue, w.Final[o.ID])
		}
	}
	if _, err := projections.ValueAt(ctx, env.Store, 9999, time.Now()); err == nil {
		t.Error("value of an unknown object: no error")
	}
}

func TestHistoryShowsEveryEventWithItsUploadStatus(t *testing.T) {
	env, w := seeded(t, 5, 200)
	ctx := context.Background()
	for _, o := range w.Objects {
		h, err := projections.History(ctx, env.Store, o.ID)
		if err != nil {
			t.Fatal(err)
		}
		if h.Owner != o.Owner || h.ObjectID != o.ID {
			t.Errorf("object %d: history of %d owned by %v", o.ID, h.ObjectID, h.Owner)
		}
		var ops []audittest.Op
		for _, op := range w.Ops {
			if op.ObjectID == o.ID {
				ops = append(ops, op)
			}
		}
		var changes []projections.HistoryEntry
		for i, e := range h.Entries {
			if e.Revision != uint64(i) {
				t.Fatalf("object %d: entry %d has revision %d", o.ID, i, e.Revision)
			}
			if e.Type != domain.EventDataObjectRemoved && e.Type != domain.EventStringValueSet {
				changes = append(changes, e)
			}
		}
		if len(changes) != len(ops) {
			t.Fatalf("object %d: %d value events, %d operations", o.ID, len(changes), len(ops))
		}
		for i, op := range ops {
			e := changes[i]
			delta := e.Amount
			if e.Type == domain.EventIntValueSet || e.Type == domain.EventDataObjectAdded {
				before := int32(0)
				if e.Before != nil {
					before = *e.Before
				}
				delta = int64(*e.After - before)
			}
			wantStatus := projections.UploadStatus(op.Status)
			if delta != op.Delta || e.RequestID != op.RequestID || e.Correction != op.Reason || e.Anomaly != op.Anomaly ||
				e.UploadStatus != wantStatus || e.Counted != op.Counted {
				t.Errorf("object %d entry %d: %+v, want %+v", o.ID, i, e, op)
			}
			if op.Kind == audittest.OpUpload && (e.LogTimestamp == nil || !e.LogTimestamp.Equal(op.Time) || e.Layer == "" || e.UploadID == nil) {
				t.Errorf("object %d entry %d: upload source %v %q %v, want log time %v", o.ID, i, e.LogTimestamp, e.Layer, e.UploadID, op.Time)
			}
			if op.Kind != audittest.OpUpload && !e.At.Equal(op.Time) {
				t.Errorf("object %d entry %d: at %v, want %v", o.ID, i, e.At, op.Time)
			}
			if e.Recorded.IsZero() {
				t.Errorf("object %d entry %d: no recorded time", o.ID, i)
			}
		}
	}
}

func TestRebuildVerifiedChecksEveryRecordedAfter(t *testing.T) {
	env, w := seeded(t, 6, 150)
	ctx := context.Background()
	st, problems, err := projections.RebuildVerified(ctx, env.Store, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != 0 {
		t.Fatalf("healthy store: %v", problems)
	}
	var live *state.State
	env.Proj.Read(func(s *state.State) {
		b, _ := state.MarshalState(s)
		live, _ = state.UnmarshalState(b)
	})
	if d := state.Diff(live, st); len(d) != 0 {
		t.Fatalf("rebuild differs from the live projection: %v", d)
	}
	// An event whose recorded After disagrees with the fold.
	target := w.Objects[0].ID
	var cur state.Object
	env.Proj.Read(func(s *state.State) { o, _ := s.Object(target); cur = *o })
	body, _ := json.Marshal(domain.ValueChanged{ObjectID: target, Amount: 2, Before: cur.IntValue, After: cur.IntValue + 5, At: time.Now()})
	if _, err := env.Store.Append(ctx, domain.DataObjectStream(target), eventstore.Exact(cur.Revision),
		eventstore.EventData{ID: uuid.New(), Type: domain.EventIncrementApplied, Data: body}); err != nil {
		t.Fatal(err)
	}
	_, problems, err = projections.RebuildVerified(ctx, env.Store, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != 1 || !strings.Contains(problems[0], "data object "+itoa(target)+":") {
		t.Fatalf("problems %v, want one naming object %d", problems, target)
	}
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
