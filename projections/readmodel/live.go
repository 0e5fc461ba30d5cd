package readmodel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/projections"
)

// ErrRebuildRunning is returned by Live.Rebuild while another rebuild runs.
var ErrRebuildRunning = errors.New("a rebuild of the read models is already running")

// errUnavailable is what a Live answers after a swap failed to open the rebuilt file.
var errUnavailable = errors.New("read model unavailable: the rebuilt file could not be opened (restart the server to rebuild it)")

// rebuildSuffix names the file a rebuild builds beside the live one.
const rebuildSuffix = ".rebuild"

// Live is the usage read model of a running server: it runs a Model (following the store) and
// can rebuild it while it serves. A rebuild folds every event from zero into a fresh file
// beside the live one (path + ".rebuild") while the live model goes on answering and following;
// once the fresh model has caught up with the store's head as the rebuild started, it takes the
// live one's place: both stop, the fresh file is renamed over the old (one atomic rename: a
// crash leaves the old file or the new one, each with its own checkpoint), and the model is
// opened again on it and follows the store from its checkpoint. Queries wait during that swap
// (a few milliseconds plus loading the objects), never see a closed database, and are never
// refused because of it.
type Live struct {
	store  eventstore.Store
	path   string
	opts   Options
	logger *slog.Logger

	mu     sync.RWMutex // read-held by every query; write-held by the swap
	model  *Model       // nil only after a swap failed to open the rebuilt file
	cancel context.CancelFunc
	done   chan error
	closed bool

	rebuilding sync.Mutex // one rebuild at a time
}

// OpenLive opens the read model at path (as Open does, removing what an interrupted rebuild
// left beside it) and starts following the store.
func OpenLive(ctx context.Context, store eventstore.Store, path string, opts Options) (*Live, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := removeDB(path + rebuildSuffix); err != nil {
		return nil, err
	}
	m, err := Open(ctx, store, path, opts)
	if err != nil {
		return nil, err
	}
	l := &Live{store: store, path: path, opts: opts, logger: opts.Logger}
	l.start(m)
	return l, nil
}

// start runs m until stop; the caller holds mu for writing (or is the opener).
func (l *Live) start(m *Model) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		err := m.Run(ctx)
		if ctx.Err() != nil {
			// Stopped on purpose: whatever the last transaction did (committed or rolled back,
			// SQLite may say "interrupted"), the file holds whole transactions.
			err = nil
		} else {
			l.logger.Error("read model stopped", "err", err)
		}
		done <- err
	}()
	l.model, l.cancel, l.done = m, cancel, done
}

// stop ends the running model and closes its database; the caller holds mu for writing.
func (l *Live) stop() error {
	if l.model == nil {
		return nil
	}
	l.cancel()
	err := errors.Join(<-l.done, l.model.Close())
	l.model = nil
	return err
}

// Close stops following the store and closes the database. A rebuild still running fails.
func (l *Live) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	return l.stop()
}

// current returns the model; the caller holds mu for reading.
func (l *Live) current() (*Model, error) {
	if l.model == nil {
		return nil, errUnavailable
	}
	return l.model, nil
}

// Position is the live model's checkpoint.
func (l *Live) Position() eventstore.Position {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.model == nil {
		return eventstore.Start
	}
	return l.model.Position()
}

// Err is why the live model stopped following the store, or nil while it follows it.
func (l *Live) Err() error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	m, err := l.current()
	if err != nil {
		return err
	}
	return m.Err()
}

// Head is the store's last position.
func (l *Live) Head(ctx context.Context) (eventstore.Position, error) {
	return eventstore.Head(ctx, l.store, l.Position())
}

// WaitFor blocks until the live model reflects every event up to pos. A model replaced by a
// rebuild meanwhile stops; the wait goes on on the one that replaced it.
func (l *Live) WaitFor(ctx context.Context, pos eventstore.Position) error {
	for {
		l.mu.RLock()
		m, err := l.current()
		l.mu.RUnlock()
		if err != nil {
			return err
		}
		err = m.WaitFor(ctx, pos)
		if err == nil || ctx.Err() != nil {
			return err
		}
		l.mu.RLock()
		swapped := l.model != m
		l.mu.RUnlock()
		if !swapped {
			return err
		}
	}
}

// Usage answers a report from the live model (see Model.Usage).
func (l *Live) Usage(ctx context.Context, q projections.UsageQuery) (*projections.UsageReport, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	m, err := l.current()
	if err != nil {
		return nil, err
	}
	return m.Usage(ctx, q)
}

// ValueAt answers a value as of a time from the live model (see Model.ValueAt).
func (l *Live) ValueAt(ctx context.Context, objectID int64, at time.Time) (*projections.ValueAsOf, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	m, err := l.current()
	if err != nil {
		return nil, err
	}
	return m.ValueAt(ctx, objectID, at)
}

// Checkpoint is the live model's committed checkpoint: the position of the last event it
// folded and how many events it folded, read together.
func (l *Live) Checkpoint(ctx context.Context) (eventstore.Position, int64, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	m, err := l.current()
	if err != nil {
		return 0, 0, err
	}
	return m.Checkpoint(ctx)
}

// Checkpoint is the committed checkpoint: the position of the last event folded and how many
// events were folded, from one read of the file.
func (m *Model) Checkpoint(ctx context.Context) (eventstore.Position, int64, error) {
	var pos eventstore.Position
	var n int64
	if err := m.readDB.QueryRowContext(ctx, `SELECT position, events FROM meta WHERE id = 1`).Scan(&pos, &n); err != nil {
		return 0, 0, fmt.Errorf("read model checkpoint: %w", err)
	}
	return pos, n, nil
}

// RebuildProgress is where a rebuild is: the fresh model's checkpoint and the head it catches
// up to before it takes the live one's place.
type RebuildProgress struct {
	Position eventstore.Position `json:"position"`
	Head     eventstore.Position `json:"head"`
}

// RebuildResult says what a rebuild did.
type RebuildResult struct {
	// Head is the store's head when the rebuild started; the fresh model folded every event up
	// to it (and those that came while it caught up) before the swap.
	Head eventstore.Position `json:"head"`
	// Position and Events are the new live model's checkpoint right after the swap.
	Position eventstore.Position `json:"position"`
	Events   int64               `json:"events"`
	// Took is the whole rebuild; Swap how long queries waited while the models changed places.
	Took time.Duration `json:"-"`
	Swap time.Duration `json:"-"`
}

// Rebuild builds the read model again from every event, beside the live one, and swaps it in
// (see Live). progress, if set, is called about twice a second while the fresh model catches
// up. The live model answers and follows the store throughout; if the rebuild fails or ctx
// ends before the swap, the fresh file is removed and the live model stays as it was.
func (l *Live) Rebuild(ctx context.Context, progress func(RebuildProgress)) (RebuildResult, error) {
	if !l.rebuilding.TryLock() {
		return RebuildResult{}, ErrRebuildRunning
	}
	defer l.rebuilding.Unlock()
	started := time.Now()
	fresh := l.path + rebuildSuffix
	if err := removeDB(fresh); err != nil {
		return RebuildResult{}, err
	}
	head, err := eventstore.Head(ctx, l.store, eventstore.Start)
	if err != nil {
		return RebuildResult{}, fmt.Errorf("rebuild: %w", err)
	}
	opts := l.opts
	opts.Logger = l.logger.With("rebuild", fresh)
	m, err := Open(ctx, l.store, fresh, opts)
	if err != nil {
		return RebuildResult{}, fmt.Errorf("rebuild: %w", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// An error shows in waitCatchUp (WaitFor returns Run's error); once cancelled, the
		// file holds whole transactions whatever Run returns.
		_ = m.Run(runCtx)
	}()
	stopFresh := func() error {
		cancel()
		<-done
		return m.Close()
	}
	err = l.waitCatchUp(ctx, m, head, progress)
	if err == nil {
		// Then to where the live model has got meanwhile, so that the swap steps back by as
		// few events as possible (the swapped-in model follows the store on from its own
		// checkpoint; queries wait for the position they need, as always).
		err = l.waitCatchUp(ctx, m, l.Position(), progress)
	}
	if err != nil {
		return RebuildResult{}, fmt.Errorf("rebuild: %w", errors.Join(err, stopFresh(), removeDB(fresh)))
	}
	// Stop the fresh model between two of its transactions and close it: its file then holds
	// every event up to its checkpoint, and SQLite folds its write-ahead log into it on close.
	if err := stopFresh(); err != nil {
		return RebuildResult{}, fmt.Errorf("rebuild: %w", errors.Join(err, removeDB(fresh)))
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	swapStarted := time.Now()
	if l.closed {
		return RebuildResult{}, errors.Join(errors.New("rebuild: the read model was closed"), removeDB(fresh))
	}
	if err := l.stop(); err != nil {
		l.logger.Error("stop the replaced read model", "err", err)
	}
	if err := replaceDB(fresh, l.path); err != nil {
		// The old file is still in place (or the new one): opening it again serves either.
		l.logger.Error("swap in the rebuilt read model", "err", err)
	}
	nm, err := Open(context.WithoutCancel(ctx), l.store, l.path, l.opts)
	if err != nil {
		return RebuildResult{}, fmt.Errorf("rebuild: open the rebuilt read model: %w", err)
	}
	l.start(nm)
	res := RebuildResult{Head: head, Took: time.Since(started), Swap: time.Since(swapStarted)}
	res.Position, res.Events, err = nm.Checkpoint(context.WithoutCancel(ctx))
	if err != nil {
		return res, err
	}
	return res, nil
}

// waitCatchUp waits until m reflects head, reporting progress.
func (l *Live) waitCatchUp(ctx context.Context, m *Model, head eventstore.Position, progress func(RebuildProgress)) error {
	if progress == nil {
		return m.WaitFor(ctx, head)
	}
	for {
		tick, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		err := m.WaitFor(tick, head)
		cancel()
		progress(RebuildProgress{Position: m.Position(), Head: head})
		if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
	}
}

// replaceDB puts the closed database at from in place of the closed one at to: the old
// write-ahead files go first (they belong to the old file), then one rename replaces it.
func replaceDB(from, to string) error {
	for _, suffix := range []string{"-wal", "-shm"} {
		if err := os.Remove(to + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("replace read model: %w", err)
		}
	}
	if err := os.Remove(from + "-shm"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replace read model: %w", err)
	}
	if err := os.Rename(from, to); err != nil {
		return fmt.Errorf("replace read model: %w", err)
	}
	if _, err := os.Stat(from + "-wal"); err == nil {
		// Not folded in on close (it should have been): it goes with its file.
		if err := os.Rename(from+"-wal", to+"-wal"); err != nil {
			return fmt.Errorf("replace read model: %w", err)
		}
	}
	return nil
}

// removeDB removes a database file and its write-ahead files, if there.
func removeDB(path string) error {
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(path + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove read model %s: %w", path+suffix, err)
		}
	}
	return nil
}
