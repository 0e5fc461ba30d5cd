package projections

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// Current keeps a State up to date by following every event of the store, and persists it
// with its checkpoint (the position it reflects) in the state database (StateDB), so that a
// restart catches up from there instead of replaying from zero. A checkpoint writes only what
// changed since the previous one; the applied layers stay in the database, not in memory.
type Current struct {
	store  eventstore.Store
	db     *StateDB // nil keeps no checkpoint
	logger *slog.Logger
	every  time.Duration

	mu      sync.RWMutex
	state   *state.State
	changed chan struct{} // closed and replaced whenever state moves (once per applied batch)
	err     error         // the reason the projection stopped, if it did

	// WaitFor's waiters, ordered by the position they wait for, so that applying events wakes
	// only those whose position was reached rather than every waiter on every event.
	waitMu   sync.Mutex
	waiters  positionWaiters
	applied  eventstore.Position // the state's position, as last published to waiters
	waitStop bool                // the projection stopped: waiters no longer queue

	saveMu    sync.Mutex // one snapshot write at a time
	lastSave  time.Time  // when drain last persisted the state; only drain uses it
	savedAt   eventstore.Position
	loadedAt  eventstore.Position
	applyErrs int
}

// CurrentOptions configure a Current projection.
type CurrentOptions struct {
	// StatePath is the state database (StateFile in a data directory); empty keeps no
	// checkpoint, and every layer in memory.
	StatePath string
	// SnapshotPath is a projection.json an earlier build wrote: when the state database holds
	// no checkpoint yet, the projection starts from it, writes it to the database whole, and
	// removes it. Optional.
	SnapshotPath string
	// SnapshotEvery is the least time between two snapshots while events arrive (default 2 s);
	// the state is persisted after a batch of events once that much time has passed, and on exit.
	SnapshotEvery time.Duration
	Logger        *slog.Logger
}

// NewCurrent loads the snapshot, if any, checks that the store holds its checkpoint, and
// returns a projection ready to Run.
func NewCurrent(ctx context.Context, store eventstore.Store, opts CurrentOptions) (*Current, error) {
	if store == nil {
		return nil, errors.New("projections: nil event store")
	}
	c := &Current{
		store: store, logger: opts.Logger, every: opts.SnapshotEvery,
		state: state.NewState(), changed: make(chan struct{}),
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	if c.every <= 0 {
		c.every = 2 * time.Second
	}
	if opts.StatePath != "" {
		if err := c.openState(ctx, opts.StatePath, opts.SnapshotPath); err != nil {
			return nil, err
		}
	} else if err := c.checkCheckpoint(ctx); err != nil {
		return nil, err
	}
	c.loadedAt = c.state.Position
	c.applied = c.state.Position
	c.savedAt = c.state.Position
	return c, nil
}

// LoadedAt is the checkpoint the projection started from.
func (c *Current) LoadedAt() eventstore.Position { return c.loadedAt }

// Run follows the store until ctx ends, resubscribing from its last position when a
// subscription drops. While events flow it persists the state at most every SnapshotEvery,
// between batches, and once more on the way out; when ctx ended, it then closes the state
// database (later layer lookups fail, and answer "known": read the state before Run returns).
func (c *Current) Run(ctx context.Context) error {
	err := c.follow(ctx)
	if serr := c.Save(); serr != nil {
		c.logger.Error("persist projection", "err", serr)
	}
	c.stop(err)
	// Closed only when asked to stop: a projection that stopped on an error keeps answering
	// layer lookups until its process exits (tally serve stops its listeners first, then exits).
	if c.db != nil && ctx.Err() != nil {
		if cerr := c.db.Close(); cerr != nil {
			c.logger.Error("close projection state", "err", cerr)
		}
	}
	return err
}

// checkCheckpoint replaces a state that the store does not hold with an empty state.
func (c *Current) checkCheckpoint(ctx context.Context) error {
	_, err := c.replaceForeign(ctx)
	return err
}

// replaceForeign is checkCheckpoint; true means the state was replaced.
func (c *Current) replaceForeign(ctx context.Context) (bool, error) {
	ok, err := CheckpointInStore(ctx, c.store, c.state)
	if err != nil {
		return false, err
	}
	if !ok {
		c.logger.Warn("projection checkpoint does not match the store; replaying from the start", "checkpoint", c.state.Position)
		c.state = state.NewState()
	}
	return !ok, nil
}

// openState loads the state database at path (or, when it holds no checkpoint, an earlier
// build's projection.json at legacy) and checks that the store holds its checkpoint. A
// checkpoint of other data is dropped with its layers: layers may run ahead of the store's
// events only for the same store.
func (c *Current) openState(ctx context.Context, path, legacy string) (err error) {
	if c.db, err = OpenStateDB(ctx, path); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = c.db.Close()
			c.db = nil
		}
	}()
	st, found, err := c.db.Load(ctx)
	if err != nil {
		// A damaged file only costs a replay: the events are the truth.
		c.logger.Warn("projection state unreadable; replaying from the start", "err", err)
		return c.resetState(ctx, path)
	}
	migrate := false
	if found {
		c.state = st
	} else if legacy != "" {
		b, rerr := os.ReadFile(legacy)
		switch {
		case errors.Is(rerr, os.ErrNotExist):
		case rerr != nil:
			return fmt.Errorf("read projection snapshot: %w", rerr)
		default:
			if old, uerr := state.UnmarshalState(b); uerr != nil {
				c.logger.Warn("projection snapshot unreadable; replaying from the start", "err", uerr)
			} else {
				c.state, migrate = old, true
			}
		}
	}
	foreign, err := c.replaceForeign(ctx)
	if err != nil {
		return err
	}
	switch {
	case foreign && found:
		return c.resetState(ctx, path)
	case foreign, !found && !migrate:
		c.state = state.NewStateOn(c.db)
		c.state.TrackChanges()
	}
	if migrate && !foreign {
		// Write the old snapshot whole, once; from then on checkpoints are incremental.
		all, err := c.state.Changes(true)
		if err != nil {
			return err
		}
		if err := c.db.Checkpoint(ctx, c.state, all); err != nil {
			return err
		}
		c.state.Checkpointed(c.db)
		c.state.TrackChanges()
		c.logger.Info("projection.json migrated to the state database", "position", c.state.Position, "path", path)
	}
	if legacy != "" && (migrate || foreign) {
		if err := os.Remove(legacy); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove migrated projection snapshot: %w", err)
		}
	}
	return nil
}

// resetState replaces the state database with an empty one and starts from an empty state.
func (c *Current) resetState(ctx context.Context, path string) error {
	if err := c.db.Close(); err != nil {
		return err
	}
	if err := removeStateDB(path); err != nil {
		return err
	}
	db, err := OpenStateDB(ctx, path)
	if err != nil {
		return err
	}
	c.db = db
	c.state = state.NewStateOn(db)
	c.state.TrackChanges()
	return nil
}

func (c *Current) follow(ctx context.Context) error {
	return Follow(ctx, c.store, c.Position, c.drain, c.logger)
}

// Follow subscribes to every event of store after position() and hands the subscription to
// drain, which folds what it delivers. A subscription that drops is opened again from where the
// fold got to; one that drops again at once (a failing disk, a node going away) is retried with
// a growing pause, so that resubscribing does not spin, and progress resets the pause. Any
// other error of drain, or the context's end, is returned.
func Follow(ctx context.Context, store eventstore.Store, position func() eventstore.Position, drain func(context.Context, eventstore.Subscription) error, logger *slog.Logger) error {
	const firstPause, maxPause = 10 * time.Millisecond, 2 * time.Second
	pause := firstPause
	for {
		from := position()
		sub, err := store.SubscribeAll(ctx, from)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("subscribe: %w", err)
		}
		err = drain(ctx, sub)
		_ = sub.Close()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, eventstore.ErrSubscriptionDropped):
			logger.Warn("subscription dropped; resubscribing", "from", position(), "err", err)
			if position() > from {
				pause = firstPause
				continue
			}
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
			pause = min(2*pause, maxPause)
		default:
			return err
		}
	}
}

// bufferedSubscription is implemented by subscriptions that can say how many events they hold
// already read, which Next returns without waiting.
type bufferedSubscription interface {
	Buffered() int
}

// maxBatch bounds how many events drain applies under one lock, so that readers wait at most
// that long.
const maxBatch = 512

// drain applies events as they come. Events the subscription already holds are applied in one
// batch under one lock, with one wake-up for the batch.
func (c *Current) drain(ctx context.Context, sub eventstore.Subscription) error {
	buffered, _ := sub.(bufferedSubscription)
	for {
		ev, err := sub.Next(ctx)
		if err != nil {
			return err
		}
		var aerrs []error
		c.mu.Lock()
		for n := 0; ; n++ {
			if ev.Position > c.state.Position { // never apply an event twice, whatever the backend redelivers
				if aerr := c.state.Apply(ev); aerr != nil {
					c.applyErrs++
					aerrs = append(aerrs, aerr)
				}
			}
			if buffered == nil || n+1 >= maxBatch || buffered.Buffered() == 0 {
				break
			}
			if ev, err = sub.Next(ctx); err != nil {
				break
			}
		}
		pos := c.state.Position
		lerr := c.state.LayerError()
		ch := c.changed
		c.changed = make(chan struct{})
		c.mu.Unlock()
		close(ch)
		c.wakeUpTo(pos)
		for _, aerr := range aerrs {
			c.logger.Error("projection skipped an event it cannot read", "err", aerr)
		}
		if err != nil {
			return err
		}
		if lerr != nil {
			return fmt.Errorf("applied-layer index: %w", lerr)
		}
		if time.Since(c.lastSave) >= c.every {
			c.lastSave = time.Now()
			if serr := c.saveFromDrain(); serr != nil {
				c.logger.Error("persist projection", "err", serr)
			}
		}
	}
}

// saveFromDrain persists the state from the goroutine that applies events. That goroutine is
// the state's only writer, so it can write the checkpoint without the lock; readers wait only
// while the state swaps its fresh layers for the database's, after the commit.
func (c *Current) saveFromDrain() error {
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	return c.saveLocked(c.state, func(swap func()) {
		c.mu.Lock()
		defer c.mu.Unlock()
		swap()
	})
}

// wakeUpTo publishes pos to WaitFor and wakes the waiters it satisfies.
func (c *Current) wakeUpTo(pos eventstore.Position) {
	c.waitMu.Lock()
	defer c.waitMu.Unlock()
	if pos > c.applied {
		c.applied = pos
	}
	for len(c.waiters) > 0 && c.waiters[0].pos <= pos {
		close(heap.Pop(&c.waiters).(*positionWaiter).ch)
	}
}

func (c *Current) stop(err error) {
	if err == nil || errors.Is(err, context.Canceled) {
		err = errors.New("projection stopped")
	}
	c.mu.Lock()
	c.err = err
	ch := c.changed
	c.changed = make(chan struct{})
	c.mu.Unlock()
	close(ch)
	c.waitMu.Lock()
	c.waitStop = true
	for len(c.waiters) > 0 {
		close(heap.Pop(&c.waiters).(*positionWaiter).ch)
	}
	c.waitMu.Unlock()
}

// Err is why the projection stopped following the store, or nil while it follows it. A
// projection that stopped no longer moves: readiness checks report it. A failed lookup in the
// applied-layer index counts as a stop from the moment it happened (drain stops on it).
func (c *Current) Err() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.err == nil {
		if lerr := c.state.LayerError(); lerr != nil {
			return fmt.Errorf("applied-layer index: %w", lerr)
		}
	}
	return c.err
}

// Position is the position of the last event the state reflects.
func (c *Current) Position() eventstore.Position {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.state.Position
}

// Read runs fn with the state under a read lock. fn must not keep references to what it reads
// beyond its return.
func (c *Current) Read(fn func(*state.State)) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	fn(c.state)
}

// ReadFrozen runs fn with the state under a read lock, like Read, and returns the state's
// applied layers as they were then (in memory: those since the last checkpoint; on disk: a read
// transaction begun under the lock), readable after the lock is gone until release is called.
// Comparing millions of layers then holds nothing still.
func (c *Current) ReadFrozen(ctx context.Context, fn func(*state.State)) (layers *FrozenLayers, release func(), err error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.db == nil {
		fn(c.state)
		return &FrozenLayers{mem: c.state.FreezeLayers(nil)}, func() {}, nil
	}
	snap, err := c.db.SnapshotLayers(ctx)
	if err != nil {
		return nil, nil, err
	}
	fn(c.state)
	frozen, err := freezeLayers(c.state, snap)
	if err != nil {
		_ = snap.Close()
		return nil, nil, err
	}
	return frozen, func() { _ = snap.Close() }, nil
}

// WaitUntil blocks until cond holds for the state, ctx ends, or the projection stops.
func (c *Current) WaitUntil(ctx context.Context, cond func(*state.State) bool) error {
	for {
		c.mu.RLock()
		ok, ch, stopped := cond(c.state), c.changed, c.err
		c.mu.RUnlock()
		if ok {
			return nil
		}
		if stopped != nil {
			return stopped
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// WaitFor blocks until the state reflects every event up to pos, ctx ends, or the projection
// stops.
func (c *Current) WaitFor(ctx context.Context, pos eventstore.Position) error {
	c.waitMu.Lock()
	if c.applied >= pos {
		c.waitMu.Unlock()
		return nil
	}
	if c.waitStop {
		c.waitMu.Unlock()
		return c.Err()
	}
	w := &positionWaiter{pos: pos, ch: make(chan struct{})}
	heap.Push(&c.waiters, w)
	c.waitMu.Unlock()
	select {
	case <-w.ch:
		c.waitMu.Lock()
		reached := c.applied >= pos
		c.waitMu.Unlock()
		if reached {
			return nil
		}
		return c.Err()
	case <-ctx.Done():
		c.waitMu.Lock()
		if w.index >= 0 {
			heap.Remove(&c.waiters, w.index)
		}
		c.waitMu.Unlock()
		return ctx.Err()
	}
}

// positionWaiter is one WaitFor call; index is its place in the heap (-1 once out of it).
type positionWaiter struct {
	pos   eventstore.Position
	ch    chan struct{}
	index int
}

// positionWaiters is a min-heap of waiters by position (container/heap).
type positionWaiters []*positionWaiter

func (h positionWaiters) Len() int           { return len(h) }
func (h positionWaiters) Less(i, j int) bool { return h[i].pos < h[j].pos }
func (h positionWaiters) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *positionWaiters) Push(x any) {
	w := x.(*positionWaiter)
	w.index = len(*h)
	*h = append(*h, w)
}
func (h *positionWaiters) Pop() any {
	old := *h
	w := old[len(old)-1]
	old[len(old)-1] = nil
	w.index = -1
	*h = old[:len(old)-1]
	return w
}

// Save persists what changed in the state since the last checkpoint, with the checkpoint, if
// it moved since the last save: one transaction, so a crash leaves the old checkpoint or the
// new one, and the layers applied up to it. Run saves on its own; Save is for callers that
// hold the projection stopped or want a checkpoint now.
func (c *Current) Save() error {
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.saveLocked(c.state, func(swap func()) { swap() })
}

// saveLocked writes what st changed, which no one changes meanwhile; the caller holds saveMu.
// exclusive runs its argument with st held exclusively (no reader).
func (c *Current) saveLocked(st *state.State, exclusive func(func())) error {
	if c.db == nil || st.Position == c.savedAt {
		return nil
	}
	if err := st.LayerError(); err != nil {
		// A lookup that failed answered "known": nothing decided since may be persisted.
		return fmt.Errorf("projection not persisted: applied-layer index: %w", err)
	}
	changes, err := st.Changes(false)
	if err != nil {
		return err
	}
	// Not the caller's context: the last checkpoint is written on the way out, after it ended.
	if err := c.db.Checkpoint(context.Background(), st, changes); err != nil {
		return err
	}
	exclusive(func() { st.Checkpointed(c.db) })
	c.savedAt = st.Position
	return nil
}

// Rebuild folds every event of the store into a fresh state, calling progress (if not nil)
// after each batch with the number of events folded so far.
func Rebuild(ctx context.Context, store AllReader, progress func(events int)) (*state.State, error) {
	st := state.NewState()
	if err := fold(ctx, store, st, progress, st.ApplyDecodedOrSkip); err != nil {
		return nil, err
	}
	return st, nil
}
