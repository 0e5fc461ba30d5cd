// Package historygen writes a realistic ledger history straight into an embedded store, for
// benchmarks of the read side (tally bench --workload history): products, keys, a token and
// data objects, then a year of usage as the ledger records it — uploads of usage logs with
// backdated log timestamps (UploadPrepared, one event per layer on the objects' streams,
// UploadCommitted or now and then UploadAborted), direct increments and decrements,
// operators' corrections, SetIntValue calls and, last, a few removals — with one hot data object
// holding a tenth of all events. Every event is what the ledger would append (same types,
// bodies, revisions, value before and after), so the projections fold it and tally verify
// passes; it goes through the store's append API, bypassing HTTP and the ledger's per-call work,
// on a store opened in its bulk-load mode (embedded.WithBulkLoad: no fsync per commit, one sync
// when the store closes). A few generators, kept in step, queue their appends without waiting
// for the commits (AppendNoWait), so that generating runs on one core while the store writes on
// the other; once every stream exists the store builds its indexes at the end instead of event
// by event (DeferIndexes).
package historygen

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// Config is what to generate.
type Config struct {
	// Dir is the data directory: the store goes to Dir/events, the admin token to
	// Dir/admin.token (kept if it exists). Dir must not hold a store yet.
	Dir string
	// Events is about how many events to write (the history stops at the first batch at or
	// past it).
	Events int
	// Seed makes the history reproducible (apart from event and upload ids).
	Seed uint64
	// Keys and Objects default to 1,000 and 10,000 from a million events on, and scale down
	// below (at least 2 keys and 10 objects per key).
	Keys, Objects int
	// End is the end of the year of history (default: now, to the second).
	End time.Time
	// Workers generate and queue appends concurrently (default 8), each on its own keys. They
	// do not wait for their commits (the store takes thousands of queued appends in each), so
	// a few keep the store busy; more only wake each other more often to keep pace.
	Workers  int
	Progress func(format string, args ...any)
}

// Result says what was written.
type Result struct {
	Events    int64
	Took      time.Duration
	Keys      int
	Objects   int
	HotObject int64
	// HotEvents is how many events the hot object's stream holds.
	HotEvents int64
	Uploads   int64
	Aborted   int64
	Removed   int
	// Commits is how many transactions the store took for the events.
	Commits uint64
	// AdminToken is the admin credential, also in Dir/admin.token.
	AdminToken string
}

// EventsPerSecond is the generation rate.
func (r Result) EventsPerSecond() float64 { return float64(r.Events) / r.Took.Seconds() }

// AdminTokenFile is where tally serve reads its admin credential, relative to the data directory.
const AdminTokenFile = "admin.token"

type object struct {
	id       int64
	owner    domain.Owner
	value    int32
	revision uint64
	removed  bool
}

type key struct {
	id        int64
	objects   []*object
	uploadRev uint64 // the upload stream's last revision
	uploads   bool   // the upload stream exists
	depth     int64  // layers applied so far
}

type generator struct {
	cfg     Config
	store   *embedded.Store
	start   time.Time
	span    time.Duration
	events  atomic.Int64
	uploads atomic.Int64
	// uploadStreams counts the keys whose upload stream exists; once every key has one, every
	// stream of the history exists and the store builds its stream index at the end instead
	// of event by event (deferIndexes).
	uploadStreams atomic.Int64
	// deferred gets the result of deferIndexes, which runs on a goroutine of its own (it waits
	// for the store's writer to catch up, and the generator that started it must not fall
	// behind meanwhile); workCtx and cancelWork are the generators' context.
	deferred   chan error
	workCtx    context.Context
	cancelWork context.CancelFunc

	// The workers keep pace (see pace): work counts the events they have sent, of workTotal
	// (their budgets); paceCond is broadcast each time work crosses a multiple of paceStep.
	work      atomic.Int64
	workTotal int64
	paceStep  int64
	paceMu    sync.Mutex
	paceCond  *sync.Cond
	// woken is work at the last broadcast (guarded by paceMu).
	woken   int64
	aborted atomic.Int64
	token   uuid.UUID
}

// Generate writes the history and closes the store.
func Generate(ctx context.Context, cfg Config) (Result, error) {
	if cfg.Events <= 0 {
		return Result{}, errors.New("historygen: want a positive number of events")
	}
	if cfg.Keys <= 0 {
		cfg.Keys = min(1000, max(2, cfg.Events/1000))
	}
	if cfg.Objects <= 0 {
		cfg.Objects = 10 * cfg.Keys
	}
	if cfg.Objects < cfg.Keys {
		return Result{}, errors.New("historygen: at least one object per key")
	}
	if cfg.End.IsZero() {
		cfg.End = time.Now().UTC().Truncate(time.Second)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 8
	}
	if cfg.Progress == nil {
		cfg.Progress = func(string, ...any) {}
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return Result{}, fmt.Errorf("data directory: %w", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, "events", embedded.DatabaseFile)); err == nil {
		return Result{}, fmt.Errorf("%s already holds an event store: generate into an empty directory", cfg.Dir)
	}
	token, err := adminToken(cfg.Dir)
	if err != nil {
		return Result{}, err
	}
	store, err := embedded.Open(ctx, filepath.Join(cfg.Dir, "events"), embedded.WithBulkLoad(), embedded.WithMaxBatch(1<<16), embedded.WithSubscriptionTail(0, 0))
	if err != nil {
		return Result{}, err
	}
	g := &generator{cfg: cfg, store: store, start: cfg.End.AddDate(-1, 0, 0), span: cfg.End.Sub(cfg.End.AddDate(-1, 0, 0)), token: uuid.New()}
	began := time.Now()
	res, err := g.run(ctx)
	res.Commits = store.Stats().Batches
	// Close syncs the bulk load to disk: that is part of writing the ledger.
	if cerr := store.Close(); err == nil {
		err = cerr
	}
	res.Took = time.Since(began)
	res.AdminToken = token
	return res, err
}

// adminToken reads Dir/admin.token or creates it as tally serve would.
func adminToken(dir string) (string, error) {
	path := filepath.Join(dir, AdminTokenFile)
	if b, err := os.ReadFile(path); err == nil {
		if tok := strings.TrimSpace(string(b)); tok != "" {
			return tok, nil
		}
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	tok := base64.RawURLEncoding.EncodeToString(raw)
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	return tok, nil
}

// idSource makes event and upload ids from a seeded generator: random version-4 UUIDs without
// a system call each.
type idSource struct{ rng *mrand.ChaCha8 }

func (s idSource) next() uuid.UUID {
	var u uuid.UUID
	_, _ = s.rng.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}

type worker struct {
	g    *generator
	rng  *mrand.Rand
	ids  idSource
	meta []byte
	// entryMeta is meta in the compact form the ledger gives an upload entry's event.
	entryMeta []byte
	keys      []*key
	// budget is how many events this worker writes; done how many it has.
	budget, done int64
	// pending are the worker's appends whose results it has not checked yet, oldest first.
	pending []*embedded.PendingAppend
	// paced is set for the workers that spend the history's budget (see pace); opened counts
	// the keys whose first upload the worker has made.
	paced  bool
	opened int
}

func (g *generator) newWorker(n int, budget int64, keys []*key) *worker {
	seed := g.cfg.Seed*1000 + uint64(n)
	var cs [32]byte
	binary.LittleEndian.PutUint64(cs[:], seed)
	md := domain.Metadata{TokenID: g.token, RequestID: fmt.Sprintf("history-%d", n)}
	meta, _ := json.Marshal(md)
	entryMeta, _ := domain.CompactMetadata(md)
	return &worker{g: g, rng: mrand.New(mrand.NewPCG(seed, seed^0x5eed)), ids: idSource{mrand.NewChaCha8(cs)}, meta: meta, entryMeta: entryMeta, keys: keys, budget: budget}
}

func (w *worker) event(typ string, body any, meta []byte) (eventstore.EventData, error) {
	b, err := domain.EncodeEvent(typ, body)
	if err != nil {
		return eventstore.EventData{}, err
	}
	return eventstore.EventData{ID: w.ids.next(), Type: typ, Data: b, Metadata: meta}, nil
}

// deferIndexes has the store build its indexes when it closes instead of inserting into them
// event by event, once the append that creates the last stream of the history (the last
// key's upload stream) is in: the store's writer then knows every stream's head and reads
// none from the index.
func (g *generator) deferIndexes(ctx context.Context, last *embedded.PendingAppend) error {
	if _, err := last.Wait(ctx); err != nil {
		return err
	}
	if err := g.store.DeferIndexes(ctx); err != nil {
		return err
	}
	g.cfg.Progress("every stream exists at %d events: the store builds its indexes at the end", g.events.Load())
	return nil
}

// send queues an append without waiting for its commit (the store is in bulk-load mode):
// the worker knows every revision in advance, since it alone writes its keys' streams, so it
// goes on generating while the store commits. Its appends reach the store in the order it sends
// them; their results are checked as they come in (reap) and all of them at the end.
func (w *worker) send(ctx context.Context, stream string, expected eventstore.ExpectedRevision, evs ...eventstore.EventData) error {
	_, err := w.sendPending(ctx, stream, expected, evs...)
	return err
}

// sendPending is send that also returns the queued append (its result may already have been
// checked and dropped from pending).
func (w *worker) sendPending(ctx context.Context, stream string, expected eventstore.ExpectedRevision, evs ...eventstore.EventData) (*embedded.PendingAppend, error) {
	p, err := w.g.store.AppendNoWait(ctx, stream, expected, evs...)
	if err != nil {
		return nil, fmt.Errorf("append to %s: %w", stream, err)
	}
	w.pending = append(w.pending, p)
	n := int64(len(evs))
	w.done += n
	w.g.events.Add(n)
	if w.paced {
		if work := w.g.work.Add(n); work/w.g.paceStep != (work-n)/w.g.paceStep {
			w.g.paceMu.Lock()
			w.g.wake()
			w.g.paceMu.Unlock()
		}
	}
	return p, w.reap(ctx, false)
}

// paceSlack is how far (a fraction of its budget) a worker may run ahead of the workers as a
// whole before it waits for them.
const paceSlack = 0.0025

// pace waits while the worker is ahead of the others. The store takes appends in the order
// they are queued, and a worker that queues faster than the others would otherwise spend its
// budget (its keys' year) in the first positions of the log and a slow one in the last: kept in
// step, every worker's clock is about the same at the same position, as the log of a real
// ledger is about in time order. Some worker is always at or behind the average (the average
// is theirs, weighted by budget), so some worker always runs.
func (w *worker) pace(ctx context.Context) error {
	g := w.g
	ahead := func() bool {
		return float64(w.done)/float64(w.budget) > float64(g.work.Load())/float64(g.workTotal)+paceSlack
	}
	if !ahead() {
		return nil
	}
	g.paceMu.Lock()
	defer g.paceMu.Unlock()
	for ahead() {
		if err := ctx.Err(); err != nil {
			return err
		}
		// The work done since the last broadcast may be what another waiter waits for: wake
		// them before sleeping. Then when all are asleep, each has looked at the same work and
		// found itself ahead of it, which the average forbids: they never all sleep.
		if g.work.Load() != g.woken {
			g.wake()
		}
		g.paceCond.Wait()
	}
	return nil
}

// wake wakes the generators waiting in pace; paceMu is held.
func (g *generator) wake() {
	g.woken = g.work.Load()
	g.paceCond.Broadcast()
}

// reap checks the results of the worker's appends that are in, oldest first, or of all of them
// (waiting for each) when all is set.
func (w *worker) reap(ctx context.Context, all bool) error {
	i := 0
	for ; i < len(w.pending); i++ {
		p := w.pending[i]
		if !all && !p.Done() {
			break
		}
		if _, err := p.Wait(ctx); err != nil {
			return err
		}
	}
	clear(w.pending[:i])
	w.pending = w.pending[i:]
	return nil
}

// now is the worker's simulated clock: it crosses the year as the worker's budget is spent.
func (w *worker) now() time.Time {
	f := float64(w.done) / float64(max(w.budget, 1))
	return w.g.start.Add(time.Duration(f * float64(w.g.span))).Truncate(time.Second)
}

func (g *generator) run(ctx context.Context) (Result, error) {
	cfg := g.cfg
	res := Result{Keys: cfg.Keys, Objects: cfg.Objects}
	admin, _ := json.Marshal(domain.Metadata{Admin: true, RequestID: "history-setup"})
	setup := g.newWorker(-1, 1, nil)
	at := g.start.Add(-time.Hour)
	products := max(1, cfg.Keys/100)
	var keys []*key
	var objects []*object
	// The catalogue: products, keys, a token, the objects (ten per key, the rest on the last
	// key), written by many goroutines at once so that the store commits them together.
	type first struct {
		stream string
		ev     eventstore.EventData
	}
	var firsts []first
	add := func(stream, typ string, body any) error {
		ev, err := setup.event(typ, body, admin)
		if err != nil {
			return err
		}
		firsts = append(firsts, first{stream, ev})
		return nil
	}
	for p := 1; p <= products; p++ {
		if err := add(domain.ProductStream(int64(p)), domain.EventProductCreated, domain.ProductCreated{ProductID: int64(p), Name: fmt.Sprintf("Product %d", p), At: at}); err != nil {
			return res, err
		}
	}
	for k := 1; k <= cfg.Keys; k++ {
		keys = append(keys, &key{id: int64(k)})
		if err := add(domain.KeyStream(int64(k)), domain.EventKeyCreated, domain.KeyCreated{KeyID: int64(k), ProductID: int64(1 + (k-1)%products), Key: setup.keyString(), At: at}); err != nil {
			return res, err
		}
	}
	secret := sha256.Sum256([]byte(g.token.String()))
	if err := add(domain.TokenStream(g.token), domain.EventTokenCreated, domain.TokenCreated{
		TokenID: g.token, Name: "license servers", SecretHash: hex.EncodeToString(secret[:]), Methods: domain.AllMethods, At: at,
	}); err != nil {
		return res, err
	}
	for i := 0; i < cfg.Objects; i++ {
		k := keys[min(i/10, len(keys)-1)]
		o := &object{id: int64(i + 1), owner: domain.Owner{Type: domain.OwnerKey, ID: k.id}}
		k.objects = append(k.objects, o)
		objects = append(objects, o)
		if err := add(domain.DataObjectStream(o.id), domain.EventDataObjectAdded, domain.DataObjectAdded{
			ObjectID: o.id, Owner: o.owner, Name: fmt.Sprintf("usage-%d", i%10), At: at,
		}); err != nil {
			return res, err
		}
	}
	for _, f := range firsts {
		if err := setup.send(ctx, f.stream, eventstore.NoStream(), f.ev); err != nil {
			return res, fmt.Errorf("catalogue: %w", err)
		}
	}
	if err := setup.reap(ctx, true); err != nil {
		return res, fmt.Errorf("catalogue: %w", err)
	}
	cfg.Progress("catalogue: %d products, %d keys, %d data objects", products, len(keys), len(objects))

	// The hot object is the first of the first key; one worker owns that key and spends a
	// tenth of the events on it. The other keys are dealt round-robin to the other workers.
	hot := keys[0].objects[0]
	res.HotObject = hot.id
	remaining := int64(cfg.Events) - g.events.Load()
	hotBudget := int64(cfg.Events) / 10
	workers := []*worker{g.newWorker(0, hotBudget, keys[:1])}
	rest := keys[1:]
	n := min(cfg.Workers-1, len(rest))
	for i := 0; i < n; i++ {
		var mine []*key
		for j := i; j < len(rest); j += n {
			mine = append(mine, rest[j])
		}
		workers = append(workers, g.newWorker(i+1, (remaining-hotBudget)/int64(n), mine))
	}
	for _, w := range workers {
		w.paced = true
		g.workTotal += w.budget
	}
	g.paceStep = max(1, g.workTotal/4096)
	g.paceCond = sync.NewCond(&g.paceMu)
	workCtx, cancelWork := context.WithCancel(ctx)
	defer cancelWork()
	g.workCtx, g.cancelWork, g.deferred = workCtx, cancelWork, make(chan error, 1)
	// A worker waiting for the others wakes when the work stops.
	defer context.AfterFunc(workCtx, func() {
		g.paceMu.Lock()
		g.paceCond.Broadcast()
		g.paceMu.Unlock()
	})()
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				cfg.Progress("%d events", g.events.Load())
			}
		}
	}()
	err := parallel(workCtx, len(workers), len(workers), func(ctx context.Context, i int) error {
		var err error
		if i == 0 {
			err = workers[0].runHot(ctx, hot)
		} else {
			err = workers[i].run(ctx)
		}
		if err = errors.Join(err, workers[i].reap(ctx, true)); err != nil {
			cancelWork() // wakes the workers waiting in pace
		}
		// Its last events may be what the others wait for.
		g.paceMu.Lock()
		g.wake()
		g.paceMu.Unlock()
		return err
	})
	close(stop)
	if g.uploadStreams.Load() >= int64(cfg.Keys) {
		err = errors.Join(err, <-g.deferred)
	}
	if err != nil {
		return res, err
	}
	// Last, a few removals (one object in a thousand, never the hot one).
	for i := 1; i < len(objects); i += 1000 {
		o := objects[i]
		ev, err := setup.event(domain.EventDataObjectRemoved, domain.DataObjectRemoved{ObjectID: o.id, At: g.cfg.End}, admin)
		if err != nil {
			return res, err
		}
		if _, err := g.store.Append(ctx, domain.DataObjectStream(o.id), eventstore.Exact(o.revision), ev); err != nil {
			return res, fmt.Errorf("remove: %w", err)
		}
		o.removed = true
		g.events.Add(1)
		res.Removed++
	}
	res.Events, res.Uploads, res.Aborted = g.events.Load(), g.uploads.Load(), g.aborted.Load()
	res.HotEvents = int64(hot.revision) + 1
	return res, nil
}

func (w *worker) keyString() string {
	const letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	var b strings.Builder
	for i := 0; i < 20; i++ {
		if i > 0 && i%5 == 0 {
			b.WriteByte('-')
		}
		b.WriteByte(letters[w.rng.IntN(len(letters))])
	}
	return b.String()
}

// run spends the worker's budget on its keys: uploads (about 70 % of events), runs of direct
// increments and decrements, and now and then a correction or a set.
func (w *worker) run(ctx context.Context) error {
	for w.done < w.budget {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := w.pace(ctx); err != nil {
			return err
		}
		k := w.keys[w.rng.IntN(len(w.keys))]
		r := w.rng.IntN(100)
		if w.opened < len(w.keys) {
			// Each key's first operation is an upload of its license server's log: every
			// upload stream exists from the start of the year.
			k, r = w.keys[w.opened], 0
			w.opened++
		}
		var err error
		switch {
		case r < 22:
			// A key's log counts a few of its objects (features, seats).
			first := w.rng.IntN(len(k.objects))
			objs := k.objects[first:min(len(k.objects), first+1+w.rng.IntN(3))]
			err = w.upload(ctx, k, objs, 1+w.rng.IntN(60))
		case r < 97:
			o := k.objects[w.rng.IntN(len(k.objects))]
			err = w.direct(ctx, o, 1+w.rng.IntN(24))
		case r < 99:
			err = w.correct(ctx, k.objects[w.rng.IntN(len(k.objects))])
		default:
			err = w.set(ctx, k.objects[w.rng.IntN(len(k.objects))])
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// runHot spends the budget on the hot object: long runs of direct calls and uploads of
// hundreds of layers.
func (w *worker) runHot(ctx context.Context, hot *object) error {
	k := w.keys[0]
	// In a small history a run of hundreds of events would be a large part of the budget, and
	// the positions it takes at once would push the other generators' events later in the log
	// than their time in the year: runs take at most 1/50 of the budget (from 50,000 events on,
	// the cap is above every run).
	maxRun := max(1, w.budget/50)
	for w.done < w.budget {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := w.pace(ctx); err != nil {
			return err
		}
		var err error
		if w.rng.IntN(2) == 0 || !k.uploads {
			err = w.upload(ctx, k, []*object{hot}, int(min(w.budget-w.done, maxRun, int64(50+w.rng.IntN(400)))))
		} else {
			err = w.direct(ctx, hot, int(min(w.budget-w.done, maxRun, int64(100+w.rng.IntN(900)))))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// direct appends n direct increments or decrements of o in one append, as n calls at
// successive instants would leave them.
func (w *worker) direct(ctx context.Context, o *object, n int) error {
	evs := make([]eventstore.EventData, 0, n)
	at := w.now()
	v := o.value
	for i := 0; i < n; i++ {
		amount := int32(1 + w.rng.IntN(5))
		typ := domain.EventIncrementApplied
		after := v + amount
		if w.rng.IntN(5) == 0 && v >= amount {
			typ, after = domain.EventDecrementApplied, v-amount
		}
		at = at.Add(time.Duration(w.rng.IntN(60)) * time.Second)
		ev, err := w.event(typ, domain.ValueChanged{ObjectID: o.id, Amount: int64(amount), Before: v, After: after, At: at}, w.meta)
		if err != nil {
			return err
		}
		evs = append(evs, ev)
		v = after
	}
	return w.appendTo(ctx, o, v, evs...)
}

// appendTo appends events to o's stream after the revision the worker knows, which leave o
// at value after.
func (w *worker) appendTo(ctx context.Context, o *object, after int32, evs ...eventstore.EventData) error {
	if err := w.send(ctx, domain.DataObjectStream(o.id), eventstore.Exact(o.revision), evs...); err != nil {
		return err
	}
	o.value, o.revision = after, o.revision+uint64(len(evs))
	return nil
}

func (w *worker) correct(ctx context.Context, o *object) error {
	amount := int32(1 + w.rng.IntN(50))
	typ, after := domain.EventIncrementApplied, o.value+amount
	if w.rng.IntN(2) == 0 && o.value >= amount {
		typ, after = domain.EventDecrementApplied, o.value-amount
	}
	meta, _ := json.Marshal(domain.Metadata{Admin: true, RequestID: "history-correction"})
	ev, err := w.event(typ, domain.ValueChanged{ObjectID: o.id, Amount: int64(amount), Before: o.value, After: after, At: w.now(), Correction: "usage log replayed twice"}, meta)
	if err != nil {
		return err
	}
	return w.appendTo(ctx, o, after, ev)
}

func (w *worker) set(ctx context.Context, o *object) error {
	after := int32(w.rng.IntN(1000))
	ev, err := w.event(domain.EventIntValueSet, domain.IntValueSet{ObjectID: o.id, Before: o.value, After: after, At: w.now()}, w.meta)
	if err != nil {
		return err
	}
	return w.appendTo(ctx, o, after, ev)
}

// upload appends what the ledger appends for an uploaded usage log of n new layers, one entry
// each, on objs: UploadPrepared, each object's events, then UploadCommitted (or, for one upload
// in fifty, UploadAborted). The layers' log timestamps are days to weeks before the worker's
// clock, in order.
func (w *worker) upload(ctx context.Context, k *key, objs []*object, n int) error {
	owner := domain.Owner{Type: domain.OwnerKey, ID: k.id}
	id := w.ids.next()
	abort := w.rng.IntN(50) == 0
	prep := domain.UploadPrepared{UploadID: id, Owner: owner, BaseDepth: k.depth, Instance: w.g.token, At: w.now()}
	ts := w.now().Add(-time.Duration(1+w.rng.IntN(45*24)) * time.Hour)
	if ts.Before(w.g.start) {
		ts = w.g.start
	}
	values := map[int64]int32{}
	byObject := map[int64][]eventstore.EventData{}
	var order []*object
	for i := 0; i < n; i++ {
		o := objs[w.rng.IntN(len(objs))]
		before, seen := values[o.id]
		if !seen {
			before = o.value
			order = append(order, o)
		}
		amount := int32(1 + w.rng.IntN(20))
		typ, after := domain.EventIncrementApplied, before+amount
		if w.rng.IntN(6) == 0 && before >= amount {
			typ, after = domain.EventDecrementApplied, before-amount
		}
		values[o.id] = after
		var layer [32]byte
		_, _ = w.ids.rng.Read(layer[:])
		lh := hex.EncodeToString(layer[:])
		ts = ts.Add(time.Duration(w.rng.IntN(3600)) * time.Second).Truncate(time.Second) // log timestamps are whole seconds
		prep.Layers = append(prep.Layers, lh)
		prep.Timestamps = append(prep.Timestamps, ts.Unix())
		ev, err := w.event(typ, domain.ValueChanged{
			ObjectID: o.id, Amount: int64(amount), Before: before, After: after, At: ts,
			Upload: &domain.UploadSource{UploadID: id, Layer: lh, LogTimestamp: ts, Entry: i + 1},
		}, w.entryMeta)
		if err != nil {
			return err
		}
		byObject[o.id] = append(byObject[o.id], ev)
	}
	for _, o := range order {
		prep.Changes = append(prep.Changes, domain.PlannedStep{ObjectID: o.id, FromRevision: o.revision, Events: len(byObject[o.id])})
	}
	pev, err := w.event(domain.EventUploadPrepared, prep, w.meta)
	if err != nil {
		return err
	}
	expected := eventstore.NoStream()
	if k.uploads {
		expected = eventstore.Exact(k.uploadRev)
	}
	prepared, err := w.sendPending(ctx, domain.UploadStream(owner), expected, pev)
	if err != nil {
		return err
	}
	if k.uploads {
		k.uploadRev++
	} else if w.g.uploadStreams.Add(1) == int64(w.g.cfg.Keys) {
		go func() {
			err := w.g.deferIndexes(w.g.workCtx, prepared)
			if err != nil {
				w.g.cancelWork()
			}
			w.g.deferred <- err
		}()
	}
	k.uploads = true
	for _, o := range order {
		evs := byObject[o.id]
		if err := w.send(ctx, domain.DataObjectStream(o.id), eventstore.Exact(o.revision), evs...); err != nil {
			return err
		}
		o.revision += uint64(len(evs))
	}
	var dev eventstore.EventData
	if abort {
		dev, err = w.event(domain.EventUploadAborted, domain.UploadAborted{UploadID: id, Reason: "the client went away", At: w.now()}, w.meta)
	} else {
		dev, err = w.event(domain.EventUploadCommitted, domain.UploadCommitted{UploadID: id, At: w.now()}, w.meta)
	}
	if err != nil {
		return err
	}
	if err := w.send(ctx, domain.UploadStream(owner), eventstore.Exact(k.uploadRev), dev); err != nil {
		return err
	}
	k.uploadRev++
	w.g.uploads.Add(1)
	if abort {
		w.g.aborted.Add(1)
		return nil
	}
	k.depth += int64(n)
	for _, o := range order {
		o.value = values[o.id]
	}
	return nil
}

// parallel runs fn(i) for i in [0, n) on up to limit goroutines, stopping at the first error.
func parallel(ctx context.Context, limit, n int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for g := 0; g < min(limit, n); g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}
