package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// ReplayOptions configure ReplayState.
type ReplayOptions struct {
	// Progress, if not nil, is called after each chunk with the number of events folded so far.
	Progress func(events int)
	// Chunk is how many positions are folded between two hand-overs of the layers applied
	// meanwhile to the writer (default 1<<18): a replay holds in memory about as many layers
	// as three chunks commit.
	Chunk eventstore.Position
}

// ReplayState folds every event of store into a fresh state, as Rebuild does, and writes it as
// the state database at path, as SaveState does (a new file renamed over the old one once
// whole and synced), without holding every applied layer in memory: the fold hands the layers
// of each chunk of events to a goroutine that inserts them into the new file while it folds
// the next chunk, and looks older layers up there. Chunks are ranges of positions, which only
// the embedded store numbers densely (a replayReader); another store (KurrentDB: positions
// are offsets in its log) is folded whole, then written as SaveState does.
func ReplayState(ctx context.Context, store eventstore.Store, path string, opts ReplayOptions) (*state.State, error) {
	if opts.Chunk <= 0 {
		opts.Chunk = 1 << 18
	}
	if _, dense := store.(replayReader); !dense {
		st, err := Rebuild(ctx, store, opts.Progress)
		if err != nil {
			return nil, err
		}
		return st, SaveState(ctx, path, st)
	}
	var st *state.State
	err := replaceStateDB(ctx, path, func(ctx context.Context, db *sql.DB) error {
		var err error
		st, err = replayFold(ctx, store, db, opts)
		return err
	})
	if err != nil {
		return nil, err
	}
	return st, nil
}

func replayFold(ctx context.Context, store eventstore.Store, db *sql.DB, opts ReplayOptions) (*state.State, error) {
	if _, err := db.ExecContext(ctx, stateSchema); err != nil {
		return nil, fmt.Errorf("write state database: schema: %w", err)
	}
	head, err := eventstore.Head(ctx, store, eventstore.Start)
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	layers := &writtenLayers{db: db}
	batches := make(chan []state.LayerRecord, 1)
	written := make(chan error, 1)
	go func() {
		var err error
		for batch := range batches {
			if err == nil {
				if err = layers.write(ctx, batch); err != nil {
					cancel()
				}
			}
		}
		written <- err
	}()
	st := state.NewStateOn(layers)
	handOver := func() error {
		c, err := st.Changes(false)
		if err != nil || len(c.Layers) == 0 {
			return err
		}
		layers.pend(c.Layers)
		select {
		case batches <- c.Layers:
		case <-ctx.Done():
			return ctx.Err()
		}
		st.Checkpointed(layers)
		return nil
	}
	var foldErr error
	for to := st.Position; to < head && foldErr == nil; {
		to = min(to+opts.Chunk, head)
		if foldErr = CatchUp(ctx, UpTo(store, to), st); foldErr == nil {
			foldErr = handOver()
		}
		if opts.Progress != nil {
			opts.Progress(int(st.Events))
		}
	}
	close(batches)
	if err := errors.Join(foldErr, <-written, st.LayerError()); err != nil {
		return nil, err
	}
	// The other records and the checkpoint, in the transaction that makes the file whole.
	c, err := st.Changes(true)
	if err != nil {
		return nil, err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("write state database: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := writeChanges(ctx, tx, c); err != nil {
		return nil, fmt.Errorf("write state database: %w", err)
	}
	if err := writeMeta(ctx, tx, st); err != nil {
		return nil, fmt.Errorf("write state database: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("write state database: %w", err)
	}
	return st, nil
}

// writtenLayers is the layer store of a replay's state: the layers handed to the writer and
// not yet committed (pending, each batch in key order), then the new file.
type writtenLayers struct {
	db      *sql.DB
	mu      sync.Mutex
	pending [][]state.LayerRecord
}

func (w *writtenLayers) pend(batch []state.LayerRecord) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending = append(w.pending, batch)
}

// write inserts a batch in one transaction, and then no longer holds it in memory.
func (w *writtenLayers) write(ctx context.Context, batch []state.LayerRecord) error {
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("write state database: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	args := make([]any, 0, layersPerInsert*layerColumns)
	var full *sql.Stmt
	for i, l := range batch {
		args = append(args, l.Owner, packID(l.ID), l.Info.Depth, l.Info.Timestamp, l.Info.Skipped, packID(l.Info.Digest), packID(l.Info.FileDigest), l.Info.Length)
		if len(args) < cap(args) && i < len(batch)-1 {
			continue
		}
		if len(args) == layersPerInsert*layerColumns {
			if full == nil {
				if full, err = tx.PrepareContext(ctx, insertLayers(layersPerInsert)); err != nil {
					return fmt.Errorf("write state database: %w", err)
				}
				defer full.Close()
			}
			_, err = full.ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, insertLayers(len(args)/layerColumns), args...)
		}
		if err != nil {
			return fmt.Errorf("write state database: layers: %w", err)
		}
		clear(args)
		args = args[:0]
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("write state database: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending = w.pending[1:]
	return nil
}

// pendingOf returns the pending layers of owner (at depth, unless depth is -1). A batch leaves
// the pending ones only after its transaction committed, so that what a lookup does not find
// there it finds in the file.
func (w *writtenLayers) pendingOf(owner string, depth int64) []state.LayerRecord {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []state.LayerRecord
	for _, batch := range w.pending {
		i := sort.Search(len(batch), func(i int) bool { return batch[i].Owner >= owner })
		for ; i < len(batch) && batch[i].Owner == owner; i++ {
			if depth < 0 || batch[i].Info.Depth == depth {
				out = append(out, batch[i])
			}
		}
	}
	return out
}

// Layer implements state.LayerStore.
func (w *writtenLayers) Layer(owner, id string) (state.LayerInfo, bool, error) {
	for _, l := range w.pendingOf(owner, -1) {
		if l.ID == id {
			return l.Info, true, nil
		}
	}
	return layerQueries{w.db}.Layer(owner, id)
}

// HasDepth implements state.LayerStore.
func (w *writtenLayers) HasDepth(owner string, depth int64) (bool, error) {
	if len(w.pendingOf(owner, depth)) > 0 {
		return true, nil
	}
	return layerQueries{w.db}.HasDepth(owner, depth)
}

// EachLayer implements state.LayerStore.
func (w *writtenLayers) EachLayer(owner string, fn func(id string, info state.LayerInfo) bool) error {
	return w.each(owner, -1, fn)
}

// EachLayerAt implements state.LayerStore.
func (w *writtenLayers) EachLayerAt(owner string, depth int64, fn func(id string, info state.LayerInfo) bool) error {
	return w.each(owner, depth, fn)
}

// each lists the pending layers, then those of the file that were not pending (a batch may
// commit meanwhile).
func (w *writtenLayers) each(owner string, depth int64, fn func(id string, info state.LayerInfo) bool) error {
	pending := map[string]bool{}
	for _, l := range w.pendingOf(owner, depth) {
		pending[l.ID] = true
		if !fn(l.ID, l.Info) {
			return nil
		}
	}
	notPending := func(id string, info state.LayerInfo) bool { return pending[id] || fn(id, info) }
	if depth < 0 {
		return layerQueries{w.db}.EachLayer(owner, notPending)
	}
	return layerQueries{w.db}.EachLayerAt(owner, depth, notPending)
}
