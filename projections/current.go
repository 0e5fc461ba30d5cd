package projections

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// Current keeps a State up to date by following every event of the store, and persists it
// with its checkpoint (the position it reflects) so that a restart catches up from there
// instead of replaying from zero.
type Current struct {
	store        eventstore.Store
	snapshotPath string // "" keeps no snapshot
	logger       *slog.Logger
	every        time.Duration

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
	// SnapshotPath is the file holding the persisted state and checkpoint; empty keeps none.
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
		store: store, snapshotPath: opts.SnapshotPath, logger: opts.Logger, every: opts.SnapshotEvery,
		state: state.NewState(), changed: make(chan struct{}),
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	if c.every <= 0 {
		c.every = 2 * time.Second
	}
	if c.snapshotPath != "" {
		b, err := os.ReadFile(c.snapshotPath)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("read projection snapshot: %w", err)
		default:
			st, err := state.UnmarshalState(b)
			if err != nil {
				// A damaged snapshot only costs a replay: the events are the truth.
				c.logger.Warn("projection snapshot unreadable; replaying from the start", "err", err)
			} else {
				c.state = st
			}
		}
	}
	if err := c.checkCheckpoint(ctx); err != nil {
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
// between batches, and once more on the way out.
func (c *Current) Run(ctx context.Context) error {
	err := c.follow(ctx)
	if serr := c.Save(); serr != nil {
		c.logger.Error("persist projection", "err", serr)
	}
	c.stop(err)
	return err
}

// checkCheckpoint replaces a snapshot that the store does not hold with an empty state.
func (c *Current) checkCheckpoint(ctx context.Context) error {
	ok, err := CheckpointInStore(ctx, c.store, c.state)
	if err != nil {
		return err
	}
	if !ok {
		c.logger.Warn("projection snapshot does not match the store; replaying from the start", "checkpoint", c.state.Position)
		c.state = state.NewState()
	}
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
		if time.Since(c.lastSave) >= c.every {
			c.lastSave = time.Now()
			if serr := c.saveFromDrain(); serr != nil {
				c.logger.Error("persist projection", "err", serr)
			}
		}
	}
}

// saveFromDrain persists the state from the goroutine that applies events. That goroutine is
// the state's only writer, so it can encode the state without the lock, and readers never wait
// for a snapshot however large the state grows.
func (c *Current) saveFromDrain() error {
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	return c.saveLocked(c.state)
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
// projection that stopped no longer moves: readiness checks report it.
func (c *Current) Err() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
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

// Save persists the state and its checkpoint if it moved since the last save. The file is
// replaced atomically, so a crash leaves the old checkpoint or the new one. Run saves on its
// own; Save is for callers that hold the projection stopped or want a checkpoint now.
func (c *Current) Save() error {
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.saveLocked(c.state)
}

// saveLocked writes st, which no one changes meanwhile; the caller holds saveMu.
func (c *Current) saveLocked(st *state.State) error {
	if c.snapshotPath == "" || st.Position == c.savedAt {
		return nil
	}
	b, err := state.MarshalState(st)
	if err != nil {
		return fmt.Errorf("encode projection: %w", err)
	}
	if err := writeFileAtomic(c.snapshotPath, b); err != nil {
		return err
	}
	c.savedAt = st.Position
	return nil
}

// writeFileAtomic writes b to path through a synced temporary file and a rename.
func writeFileAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	tmp := f.Name()
	_, werr := f.Write(b)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write snapshot %s: %w", path, werr)
	}
	return nil
}

// Rebuild folds every event of the store into a fresh state, calling progress (if not nil)
// after each batch with the number of events folded so far.
func Rebuild(ctx context.Context, store AllReader, progress func(events int)) (*state.State, error) {
	st := state.NewState()
	if err := fold(ctx, store, st, progress, st.ApplyOrSkip); err != nil {
		return nil, err
	}
	return st, nil
}
