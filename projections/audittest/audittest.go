// Package audittest seeds an event store with a known workload for the tests of Tally's audit
// read models (history, value as of a time, usage reports) and the programs built on them. The
// workload is a plain list of operations, so that tests can compute what reports must say from
// the list itself, independently of the code under test.
package audittest

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
)

// OpKind is what one operation of the workload did.
type OpKind string

// The kinds of operations.
const (
	OpAdd        OpKind = "add"        // the object was added with an initial value
	OpIncrement  OpKind = "increment"  // a direct IncrementIntValue
	OpDecrement  OpKind = "decrement"  // a direct DecrementIntValue
	OpSet        OpKind = "set"        // SetIntValue
	OpCorrection OpKind = "correction" // an operator's correction
	OpUpload     OpKind = "upload"     // one entry of an uploaded usage log
)

// Op is one change of the workload, in the order it was made.
type Op struct {
	Kind     OpKind
	ObjectID int64
	// Delta is what the change did to the value (for a set: the new value minus the old).
	Delta int64
	// Time is when the usage happened: the ledger's clock for direct calls, the log timestamp
	// for upload entries.
	Time time.Time
	// Counted is false for entries of uploads that were aborted or never decided.
	Counted bool
	// Status is the upload's fate for upload entries ("committed", "aborted", "pending").
	Status    string
	RequestID string
	Reason    string // of a correction
	Anomaly   string // of an upload entry
}

// Workload is what Seed did.
type Workload struct {
	Ops []Op
	// Objects lists the data objects by id, with their owner and the product and key they
	// belong to (0 when none).
	Objects []Object
	// Final is each object's value once everything was done.
	Final map[int64]int64
	// Removed is the object that was removed at the end.
	Removed int64
	// Pending is the object holding the events of an upload left undecided.
	Pending int64
}

// Object is one data object of the workload.
type Object struct {
	ID        int64
	Owner     domain.Owner
	ProductID int64
	KeyID     int64
}

// Env is a running ledger over the store.
type Env struct {
	Store  eventstore.Store
	Proj   *projections.Current
	Ledger *ledger.Service
	clock  *clock
	stop   func()
}

// Stop ends the projection (which persists its snapshot, if it keeps one) before the test
// does; the store stays open.
func (e *Env) Stop() { e.stop() }

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func (c *clock) get() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Start runs a current-state projection over the store and a ledger with an injected clock;
// both stop when the test ends.
func Start(t testing.TB, store eventstore.Store, statePath string) *Env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	proj, err := projections.NewCurrent(ctx, store, projections.CurrentOptions{StatePath: statePath})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = proj.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	clk := &clock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	svc, err := ledger.New(ledger.Config{Store: store, View: proj, Clock: clk.get})
	if err != nil {
		t.Fatal(err)
	}
	return &Env{Store: store, Proj: proj, Ledger: svc, clock: clk, stop: stop}
}

// Interesting instants: month ends and Europe/Stockholm's daylight-saving changes
// (2025-03-30 01:00 UTC, 2025-10-26 01:00 UTC), and times that fall on different days or months
// in UTC and in Stockholm.
var edges = []time.Time{
	time.Date(2025, 1, 31, 23, 30, 0, 0, time.UTC),   // 1 Feb 00:30 in Stockholm
	time.Date(2025, 3, 30, 0, 59, 59, 0, time.UTC),   // just before the spring change
	time.Date(2025, 3, 30, 1, 0, 0, 0, time.UTC),     // the spring change
	time.Date(2025, 3, 30, 21, 59, 59, 0, time.UTC),  // last second of 30 Mar in Stockholm (a 23-hour day)
	time.Date(2025, 3, 30, 22, 0, 0, 0, time.UTC),    // 31 Mar 00:00 in Stockholm
	time.Date(2025, 3, 31, 22, 30, 0, 0, time.UTC),   // 1 Apr 00:30 in Stockholm
	time.Date(2025, 6, 30, 22, 30, 0, 0, time.UTC),   // 1 Jul in Stockholm
	time.Date(2025, 10, 25, 22, 30, 0, 0, time.UTC),  // 26 Oct 00:30 in Stockholm (a 25-hour day)
	time.Date(2025, 10, 26, 0, 30, 0, 0, time.UTC),   // 02:30 CEST, before the autumn change
	time.Date(2025, 10, 26, 1, 30, 0, 0, time.UTC),   // 02:30 CET, after it
	time.Date(2025, 10, 26, 22, 59, 59, 0, time.UTC), // last second of 26 Oct in Stockholm
	time.Date(2025, 10, 26, 23, 0, 0, 0, time.UTC),   // 27 Oct 00:00 in Stockholm
	time.Date(2025, 10, 31, 23, 15, 0, 0, time.UTC),  // 1 Nov in Stockholm
	time.Date(2025, 12, 31, 23, 30, 0, 0, time.UTC),  // 1 Jan 2026 in Stockholm
}

// randomTime is an instant in 2025, at whole seconds (log timestamps have no finer grain), and
// one of the edges a third of the time.
func randomTime(rng *rand.Rand) time.Time {
	if rng.IntN(3) == 0 {
		return edges[rng.IntN(len(edges))]
	}
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	return time.Unix(start+rng.Int64N(365*24*3600), 0).UTC()
}

// Seed fills the store through the ledger (direct calls with the clock set to each call's
// time, corrections, sets) and through the store port the way the ledger uploads (prepare, the
// objects' events, commit or abort), n operations in all.
func Seed(t testing.TB, env *Env, rng *rand.Rand, n int) *Workload {
	t.Helper()
	ctx := context.Background()
	admin := ledger.Caller{Admin: true, RequestID: "seed"}
	p1, err := env.Ledger.CreateProduct(ctx, admin, "Product One")
	if err != nil {
		t.Fatal(err)
	}
	p2, err := env.Ledger.CreateProduct(ctx, admin, "Product Two")
	if err != nil {
		t.Fatal(err)
	}
	k1, err := env.Ledger.CreateKey(ctx, admin, p1.ID)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := env.Ledger.CreateKey(ctx, admin, p1.ID)
	if err != nil {
		t.Fatal(err)
	}
	w := &Workload{Final: map[int64]int64{}}
	owners := []Object{
		{Owner: domain.Owner{Type: domain.OwnerKey, ID: k1.ID}, ProductID: p1.ID, KeyID: k1.ID},
		{Owner: domain.Owner{Type: domain.OwnerKey, ID: k2.ID}, ProductID: p1.ID, KeyID: k2.ID},
		{Owner: domain.Owner{Type: domain.OwnerProduct, ID: p2.ID}, ProductID: p2.ID},
		{Owner: domain.Owner{Type: domain.OwnerUser}},
	}
	// Two objects on the first key (so that uploads span objects), one per other owner, and
	// one more on the account to be removed.
	for i, o := range []Object{owners[0], owners[0], owners[1], owners[2], owners[3], owners[3]} {
		initial := int32(rng.IntN(50))
		at := randomTime(rng)
		env.clock.set(at)
		id, err := env.Ledger.AddDataObject(ctx, tokenCaller("add"), ledger.AddDataObject{
			Scope: ledger.Scope{Referencer: o.Owner}, Name: fmt.Sprintf("counter-%d", i), IntValue: initial,
		})
		if err != nil {
			t.Fatal(err)
		}
		o.ID = id
		w.Objects = append(w.Objects, o)
		w.Final[id] = int64(initial)
		w.Ops = append(w.Ops, Op{Kind: OpAdd, ObjectID: id, Delta: int64(initial), Time: at, Counted: true, RequestID: "add"})
	}
	w.Removed = w.Objects[5].ID
	uploads := 0
	for i := 0; i < n; i++ {
		obj := w.Objects[rng.IntN(5)]
		at := randomTime(rng)
		env.clock.set(at)
		req := fmt.Sprintf("op-%d", i)
		c := tokenCaller(req)
		amount := int64(1 + rng.IntN(20))
		ref := ledger.ObjectRef{ID: obj.ID}
		sc := ledger.Scope{Referencer: obj.Owner}
		switch r := rng.IntN(100); {
		case r < 35:
			err = env.Ledger.IncrementIntValue(ctx, c, ledger.ChangeIntValue{Scope: sc, Object: ref, Amount: amount})
			w.add(Op{Kind: OpIncrement, ObjectID: obj.ID, Delta: amount, Time: at, Counted: true, RequestID: req})
		case r < 55:
			err = env.Ledger.DecrementIntValue(ctx, c, ledger.ChangeIntValue{Scope: sc, Object: ref, Amount: amount})
			w.add(Op{Kind: OpDecrement, ObjectID: obj.ID, Delta: -amount, Time: at, Counted: true, RequestID: req})
		case r < 62:
			v := int32(rng.IntN(200))
			err = env.Ledger.SetIntValue(ctx, c, ledger.SetIntValue{Scope: sc, Object: ref, IntValue: v})
			w.add(Op{Kind: OpSet, ObjectID: obj.ID, Delta: int64(v) - w.Final[obj.ID], Time: at, Counted: true, RequestID: req})
		case r < 70:
			if rng.IntN(2) == 0 {
				amount = -amount
			}
			reason := fmt.Sprintf("correction %d", i)
			err = env.Ledger.Correct(ctx, ledger.Caller{Admin: true, RequestID: req}, obj.ID, amount, reason)
			w.add(Op{Kind: OpCorrection, ObjectID: obj.ID, Delta: amount, Time: at, Counted: true, RequestID: req, Reason: reason})
		default:
			uploads++
			// Every fifth upload is aborted after its events were written.
			err = w.upload(ctx, env, rng, obj.Owner, req, uploads%5 == 0)
		}
		if err != nil {
			t.Fatalf("operation %d: %v", i, err)
		}
	}
	env.clock.set(randomTime(rng))
	if err := env.Ledger.RemoveDataObject(ctx, tokenCaller("remove"), ledger.RemoveDataObject{
		Scope: ledger.Scope{Referencer: owners[3].Owner}, Object: ledger.ObjectRef{ID: w.Removed},
	}); err != nil {
		t.Fatal(err)
	}
	// Last, an upload on the second key left undecided: its events never count.
	if err := w.uploadUndecided(ctx, env, rng, owners[1].Owner); err != nil {
		t.Fatal(err)
	}
	w.Pending = w.Objects[2].ID
	return w
}

func tokenCaller(req string) ledger.Caller {
	return ledger.Caller{Token: domain.Token{ID: uuid.NewSHA1(uuid.NameSpaceOID, []byte("seed-token")), Methods: domain.AllMethods}, RequestID: req}
}

func (w *Workload) add(op Op) {
	if op.Counted {
		w.Final[op.ObjectID] += op.Delta
	}
	w.Ops = append(w.Ops, op)
}

type entry struct {
	objectID int64
	delta    int64
	at       time.Time
	anomaly  string
}

// upload writes an upload of 1 to 6 entries on the objects of one owner the way the ledger
// does, then commits or aborts it.
func (w *Workload) upload(ctx context.Context, env *Env, rng *rand.Rand, owner domain.Owner, req string, abort bool) error {
	var objs []int64
	for _, o := range w.Objects[:5] {
		if o.Owner == owner {
			objs = append(objs, o.ID)
		}
	}
	entries := make([]entry, 1+rng.IntN(6))
	for i := range entries {
		entries[i] = entry{objectID: objs[rng.IntN(len(objs))], delta: int64(1 + rng.IntN(30)), at: randomTime(rng)}
		if rng.IntN(4) == 0 {
			entries[i].delta = -entries[i].delta
		}
		if i > 0 && entries[i].at.Before(entries[i-1].at) {
			entries[i].anomaly = fmt.Sprintf("timestamp %d is earlier than the previous layer's %d", entries[i].at.Unix(), entries[i-1].at.Unix())
		}
	}
	decision := domain.EventUploadCommitted
	status := "committed"
	if abort {
		decision, status = domain.EventUploadAborted, "aborted"
	}
	if err := writeUpload(ctx, env, owner, req, entries, decision); err != nil {
		return err
	}
	for _, e := range entries {
		w.add(Op{Kind: OpUpload, ObjectID: e.objectID, Delta: e.delta, Time: e.at, Counted: !abort, Status: status, RequestID: req, Anomaly: e.anomaly})
	}
	return nil
}

func (w *Workload) uploadUndecided(ctx context.Context, env *Env, rng *rand.Rand, owner domain.Owner) error {
	entries := []entry{{objectID: w.Objects[2].ID, delta: 7, at: randomTime(rng)}, {objectID: w.Objects[2].ID, delta: 3, at: randomTime(rng)}}
	if err := writeUpload(ctx, env, owner, "undecided", entries, ""); err != nil {
		return err
	}
	for _, e := range entries {
		w.add(Op{Kind: OpUpload, ObjectID: e.objectID, Delta: e.delta, Time: e.at, Status: "pending", RequestID: "undecided"})
	}
	return nil
}

// writeUpload appends UploadPrepared, the objects' events and the decision (none when
// decision is empty), each at the projected revision, and waits for the projection.
func writeUpload(ctx context.Context, env *Env, owner domain.Owner, req string, entries []entry, decision string) error {
	var up state.Upload
	values := map[int64]int32{}
	revisions := map[int64]uint64{}
	env.Proj.Read(func(st *state.State) {
		up = *st.Upload(owner)
		for _, e := range entries {
			o, _ := st.Object(e.objectID)
			values[e.objectID], revisions[e.objectID] = o.IntValue, o.Revision
		}
	})
	uploadID := uuid.New()
	meta := domain.Metadata{TokenID: tokenCaller(req).Token.ID, RequestID: req}
	prep := domain.UploadPrepared{UploadID: uploadID, Owner: owner, Instance: uuid.New(), At: time.Now().UTC()}
	byObject := map[int64][]eventstore.EventData{}
	var order []int64
	for i, e := range entries {
		layer := make([]byte, 32)
		copy(layer, uuid.New().NodeID())
		copy(layer[16:], uuid.New().NodeID())
		lh := hex.EncodeToString(layer)
		prep.Layers = append(prep.Layers, lh)
		prep.Timestamps = append(prep.Timestamps, e.at.Unix())
		before := values[e.objectID]
		after := int32(int64(before) + e.delta)
		values[e.objectID] = after
		typ, amount := domain.EventIncrementApplied, e.delta
		if e.delta < 0 {
			typ, amount = domain.EventDecrementApplied, -e.delta
		}
		ev, err := event(typ, domain.ValueChanged{
			ObjectID: e.objectID, Amount: amount, Before: before, After: after, At: e.at,
			Upload: &domain.UploadSource{UploadID: uploadID, Layer: lh, LogTimestamp: e.at, Anomaly: e.anomaly, Entry: i + 1},
		}, meta)
		if err != nil {
			return err
		}
		if ev.Metadata, err = domain.CompactMetadata(meta); err != nil { // as the ledger writes an entry's
			return err
		}
		if _, seen := byObject[e.objectID]; !seen {
			order = append(order, e.objectID)
		}
		byObject[e.objectID] = append(byObject[e.objectID], ev)
	}
	for _, id := range order {
		prep.Changes = append(prep.Changes, domain.PlannedStep{ObjectID: id, FromRevision: revisions[id], Events: len(byObject[id])})
	}
	expected := eventstore.NoStream()
	if up.Exists {
		expected = eventstore.Exact(up.Revision)
	}
	pev, err := event(domain.EventUploadPrepared, prep, meta)
	if err != nil {
		return err
	}
	res, err := env.Store.Append(ctx, domain.UploadStream(owner), expected, pev)
	if err != nil {
		return fmt.Errorf("prepare upload: %w", err)
	}
	prepRevision := res.NextExpectedRevision
	for _, id := range order {
		if res, err = env.Store.Append(ctx, domain.DataObjectStream(id), eventstore.Exact(revisions[id]), byObject[id]...); err != nil {
			return fmt.Errorf("upload events: %w", err)
		}
	}
	if decision != "" {
		var body any = domain.UploadCommitted{UploadID: uploadID, At: time.Now().UTC()}
		if decision == domain.EventUploadAborted {
			body = domain.UploadAborted{UploadID: uploadID, Reason: "test abort", At: time.Now().UTC()}
		}
		dev, err := event(decision, body, meta)
		if err != nil {
			return err
		}
		if res, err = env.Store.Append(ctx, domain.UploadStream(owner), eventstore.Exact(prepRevision), dev); err != nil {
			return fmt.Errorf("decide upload: %w", err)
		}
	}
	return env.Proj.WaitFor(ctx, res.Position)
}

func event(typ string, data any, meta domain.Metadata) (eventstore.EventData, error) {
	b, err := domain.EncodeEvent(typ, data)
	if err != nil {
		return eventstore.EventData{}, err
	}
	m, err := json.Marshal(meta)
	if err != nil {
		return eventstore.EventData{}, err
	}
	return eventstore.EventData{ID: uuid.New(), Type: typ, Data: b, Metadata: m}, nil
}
