package projections

import (
	"bytes"
	"container/heap"
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
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
// of each chunk of events, sorted, to a goroutine that writes them as a sorted run (pages of a
// scratch file beside the new one) while it folds the next chunk, and looks older layers up
// there; at the end the runs are merged into the new file's pages, in key order. Chunks are
// ranges of positions, which only the embedded store numbers densely (a replayReader); another
// store (KurrentDB: positions are offsets in its log) is folded whole, then written as
// SaveState does.
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
	runsPath := path + ".runs"
	if err := removeStateDB(runsPath); err != nil { // what a replay that crashed left
		return nil, err
	}
	var st *state.State
	err := replaceStateDB(ctx, path, func(ctx context.Context, db *sql.DB) error {
		runs, err := openRuns(ctx, runsPath)
		if err != nil {
			return err
		}
		st, err = replayFold(ctx, store, db, runs, opts)
		return errors.Join(err, runs.Close(), removeStateDB(runsPath))
	})
	if err != nil {
		return nil, err
	}
	return st, nil
}

// openRuns creates the scratch file of a replay's sorted runs: one table of pages, keyed by
// run, owner and first identity; nobody else sees it and it is deleted once merged.
func openRuns(ctx context.Context, path string) (*sql.DB, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		err = f.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("replay runs: %w", err)
	}
	db, err := sql.Open("sqlite", bulkStateDSN(path))
	if err != nil {
		return nil, fmt.Errorf("replay runs: %w", err)
	}
	db.SetMaxOpenConns(1)
	db.SetConnMaxIdleTime(0)
	db.SetConnMaxLifetime(0)
	if _, err := db.ExecContext(ctx, `CREATE TABLE runs (run INTEGER NOT NULL, owner TEXT NOT NULL, first BLOB NOT NULL, entries BLOB NOT NULL, PRIMARY KEY (run, owner, first)) WITHOUT ROWID`); err != nil {
		return nil, errors.Join(fmt.Errorf("replay runs: %w", err), db.Close())
	}
	return db, nil
}

func replayFold(ctx context.Context, store eventstore.Store, db, runs *sql.DB, opts ReplayOptions) (*state.State, error) {
	if _, err := db.ExecContext(ctx, stateSchema); err != nil {
		return nil, fmt.Errorf("write state database: schema: %w", err)
	}
	head, err := eventstore.Head(ctx, store, eventstore.Start)
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	layers := &writtenLayers{db: db, runs: runs}
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
	// The other records, the layers' pages and the checkpoint, in the transaction that makes
	// the file whole.
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
	if err := mergeRuns(ctx, runs, layers.runCount(), tx); err != nil {
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
// not yet written (pending, each batch in key order), then the sorted runs, newest first (a
// layer put again later replaces the earlier record, as INSERT OR REPLACE did); layers of
// text identities go into the new file's text_layers directly.
type writtenLayers struct {
	db      *sql.DB
	runs    *sql.DB
	mu      sync.Mutex
	pending [][]state.LayerRecord
	nruns   int
}

func (w *writtenLayers) pend(batch []state.LayerRecord) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending = append(w.pending, batch)
}

func (w *writtenLayers) runCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.nruns
}

// write writes a batch as the next run (its text identities into the new file), and then no
// longer holds it in memory.
func (w *writtenLayers) write(ctx context.Context, batch []state.LayerRecord) error {
	if err := w.writeRun(ctx, batch); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending = w.pending[1:]
	return nil
}

// writeRun writes a batch as the next run; it stays pending until write drops it, so that
// a lookup meanwhile finds it in one or the other.
func (w *writtenLayers) writeRun(ctx context.Context, batch []state.LayerRecord) error {
	run := w.runCount()
	tx, err := w.runs.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("replay runs: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO runs (run, owner, first, entries) VALUES (?, ?, ?, ?)`)
	if err != nil {
		return fmt.Errorf("replay runs: %w", err)
	}
	defer stmt.Close()
	var text []state.LayerRecord
	var buf []byte
	entries := make([]pageEntry, 0, pageTarget)
	owner := ""
	flush := func() error {
		if len(entries) == 0 {
			return nil
		}
		buf = layerPages.encode(buf, entries)
		if _, err := stmt.ExecContext(ctx, run, owner, entries[0].key, buf); err != nil {
			return fmt.Errorf("replay runs: %w", err)
		}
		entries = entries[:0]
		return nil
	}
	for _, l := range batch {
		raw, ok := state.ParseHash(l.ID)
		if !ok {
			text = append(text, l)
			continue
		}
		if l.Owner != owner || len(entries) == pageTarget {
			if err := flush(); err != nil {
				return err
			}
			owner = l.Owner
		}
		entries = append(entries, pageEntry{key: raw[:], val: appendRecord(nil, l.Info)})
	}
	if err := flush(); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("replay runs: %w", err)
	}
	if len(text) > 0 {
		if err := w.writeText(ctx, text); err != nil {
			return err
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.nruns++
	return nil
}

func (w *writtenLayers) writeText(ctx context.Context, text []state.LayerRecord) error {
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("write state database: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := putLayers(ctx, tx, text); err != nil {
		return fmt.Errorf("write state database: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("write state database: %w", err)
	}
	return nil
}

// snapshot returns the pending batches and the number of runs written, at one moment: a batch
// leaves the pending ones only once its run is written, so what a lookup does not find in the
// one it finds in the other.
func (w *writtenLayers) snapshot() ([][]state.LayerRecord, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.pending), w.nruns
}

// Layer implements state.LayerStore.
func (w *writtenLayers) Layer(owner, id string) (state.LayerInfo, bool, error) {
	pending, nruns := w.snapshot()
	for i := len(pending) - 1; i >= 0; i-- {
		batch := pending[i]
		j := sort.Search(len(batch), func(j int) bool {
			return batch[j].Owner > owner || (batch[j].Owner == owner && batch[j].ID >= id)
		})
		if j < len(batch) && batch[j].Owner == owner && batch[j].ID == id {
			return batch[j].Info, true, nil
		}
	}
	raw, ok := state.ParseHash(id)
	if !ok {
		return textLayer(context.Background(), w.db, owner, id)
	}
	for run := nruns - 1; run >= 0; run-- {
		v, ok, err := w.runLookup(run, owner, raw[:])
		if err != nil || ok {
			if err != nil {
				return state.LayerInfo{}, false, err
			}
			info, err := decodeRecord(v)
			return info, err == nil, err
		}
	}
	return state.LayerInfo{}, false, nil
}

func (w *writtenLayers) runLookup(run int, owner string, key []byte) ([]byte, bool, error) {
	var b []byte
	err := w.runs.QueryRow(`SELECT entries FROM runs WHERE run = ? AND owner = ? AND first <= ? ORDER BY first DESC LIMIT 1`, run, owner, key).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("replay runs: %w", err)
	}
	p, err := layerPages.parse(b)
	if err != nil {
		return nil, false, err
	}
	i, ok := p.search(key)
	if !ok {
		return nil, false, nil
	}
	return p.val(i), true, nil
}

// HasDepth implements state.LayerStore.
func (w *writtenLayers) HasDepth(owner string, depth int64) (bool, error) {
	found := false
	err := w.each(owner, depth, func(string, state.LayerInfo) bool { found = true; return false })
	return found, err
}

// EachLayer implements state.LayerStore.
func (w *writtenLayers) EachLayer(owner string, fn func(id string, info state.LayerInfo) bool) error {
	return w.each(owner, -1, fn)
}

// EachLayerAt implements state.LayerStore.
func (w *writtenLayers) EachLayerAt(owner string, depth int64, fn func(id string, info state.LayerInfo) bool) error {
	return w.each(owner, depth, fn)
}

// each gathers the owner's layers from the runs, oldest first, then the pending batches, a
// later record replacing an earlier one, and then calls fn with those at depth (every depth
// when depth is -1). The fold asks this rarely (never on a replay's hot path): it reads all of
// the owner's pages.
func (w *writtenLayers) each(owner string, depth int64, fn func(id string, info state.LayerInfo) bool) error {
	pending, nruns := w.snapshot()
	all := map[string]state.LayerInfo{}
	var order []string
	put := func(id string, info state.LayerInfo) {
		if _, ok := all[id]; !ok {
			order = append(order, id)
		}
		all[id] = info
	}
	for run := range nruns {
		rows, err := w.runs.Query(`SELECT entries FROM runs WHERE run = ? AND owner = ? ORDER BY first`, run, owner)
		if err != nil {
			return fmt.Errorf("replay runs: %w", err)
		}
		var pages [][]byte
		for rows.Next() {
			var b []byte
			if err := rows.Scan(&b); err != nil {
				_ = rows.Close()
				return fmt.Errorf("replay runs: %w", err)
			}
			pages = append(pages, b)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return fmt.Errorf("replay runs: %w", err)
		}
		for _, b := range pages {
			p, err := layerPages.parse(b)
			if err != nil {
				return err
			}
			for i := range p.n {
				info, err := decodeRecord(p.val(i))
				if err != nil {
					return err
				}
				put(hex.EncodeToString(p.key(i)), info)
			}
		}
	}
	var text []state.LayerRecord
	if err := eachTextLayer(context.Background(), w.db, owner, nil, func(id string, info state.LayerInfo) bool {
		text = append(text, state.LayerRecord{ID: id, Info: info})
		return true
	}); err != nil {
		return err
	}
	for _, l := range text {
		put(l.ID, l.Info)
	}
	for _, batch := range pending {
		i := sort.Search(len(batch), func(i int) bool { return batch[i].Owner >= owner })
		for ; i < len(batch) && batch[i].Owner == owner; i++ {
			put(batch[i].ID, batch[i].Info)
		}
	}
	for _, id := range order {
		if info := all[id]; depth < 0 || info.Depth == depth {
			if !fn(id, info) {
				return nil
			}
		}
	}
	return nil
}

// mergeRuns merges the sorted runs (k-way, a later run's record of a layer replacing an
// earlier one's) into the new file's pages, in key order, through tx. Each run is read a few
// pages at a time.
func mergeRuns(ctx context.Context, runs *sql.DB, nruns int, tx *sql.Tx) error {
	w, err := newLayerWriter(ctx, tx)
	if err != nil {
		return err
	}
	h := make(runHeap, 0, nruns)
	for run := range nruns {
		c := &runCursor{run: run}
		ok, err := c.next(ctx, runs)
		if err != nil {
			return errors.Join(err, w.close(ctx))
		}
		if ok {
			h = append(h, c)
		}
	}
	heap.Init(&h)
	for len(h) > 0 {
		c := h[0]
		owner, key, val := c.owner(), c.key(), c.val()
		for {
			ok, err := c.next(ctx, runs)
			if err != nil {
				return errors.Join(err, w.close(ctx))
			}
			if ok {
				heap.Fix(&h, 0)
			} else {
				heap.Pop(&h)
			}
			if len(h) == 0 || h[0].owner() != owner || !bytes.Equal(h[0].key(), key) {
				break
			}
			// The same layer in a later run: its record replaces this one.
			c = h[0]
			val = c.val()
		}
		if err := w.addRaw(ctx, owner, key, val); err != nil {
			return errors.Join(err, w.close(ctx))
		}
	}
	return w.close(ctx)
}

// runCursor reads one run in key order, runFetch pages at a time.
type runCursor struct {
	run     int
	pages   []runPage // fetched, pages[0] being read
	entry   int       // the current entry of pages[0]
	last    runPage   // the last page fetched
	started bool
	done    bool // every page fetched
}

type runPage struct {
	owner string
	first []byte
	page  page
}

const runFetch = 16

func (c *runCursor) owner() string { return c.pages[0].owner }
func (c *runCursor) key() []byte   { return c.pages[0].page.key(c.entry) }
func (c *runCursor) val() []byte   { return c.pages[0].page.val(c.entry) }

// next moves to the next entry (the first, on the first call); false when the run is read.
func (c *runCursor) next(ctx context.Context, runs *sql.DB) (bool, error) {
	if len(c.pages) > 0 {
		if c.entry++; c.entry < c.pages[0].page.n {
			return true, nil
		}
		c.pages, c.entry = c.pages[1:], 0
	}
	for {
		for len(c.pages) > 0 && c.pages[0].page.n == 0 {
			c.pages = c.pages[1:]
		}
		if len(c.pages) > 0 {
			return true, nil
		}
		if c.done {
			return false, nil
		}
		if err := c.fetch(ctx, runs); err != nil {
			return false, err
		}
	}
}

// fetch reads the run's next pages (keyset pagination: one connection serves every cursor).
func (c *runCursor) fetch(ctx context.Context, runs *sql.DB) error {
	var rows *sql.Rows
	var err error
	if !c.started {
		rows, err = runs.QueryContext(ctx, `SELECT owner, first, entries FROM runs WHERE run = ? ORDER BY owner, first LIMIT ?`, c.run, runFetch)
	} else {
		rows, err = runs.QueryContext(ctx, `SELECT owner, first, entries FROM runs WHERE run = ?1 AND (owner, first) > (?2, ?3) ORDER BY owner, first LIMIT ?4`, c.run, c.last.owner, c.last.first, runFetch)
	}
	if err != nil {
		return fmt.Errorf("replay runs: %w", err)
	}
	defer rows.Close()
	c.started = true
	n := 0
	for rows.Next() {
		var rp runPage
		var b []byte
		if err := rows.Scan(&rp.owner, &rp.first, &b); err != nil {
			return fmt.Errorf("replay runs: %w", err)
		}
		if rp.page, err = layerPages.parse(b); err != nil {
			return err
		}
		c.pages = append(c.pages, rp)
		c.last = rp
		n++
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("replay runs: %w", err)
	}
	c.done = n < runFetch
	return nil
}

// runHeap orders the cursors by their current entry's owner and key, an earlier run first.
type runHeap []*runCursor

func (h runHeap) Len() int { return len(h) }
func (h runHeap) Less(i, j int) bool {
	if a, b := h[i].owner(), h[j].owner(); a != b {
		return a < b
	}
	if c := bytes.Compare(h[i].key(), h[j].key()); c != 0 {
		return c < 0
	}
	return h[i].run < h[j].run
}
func (h runHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *runHeap) Push(x any)   { *h = append(*h, x.(*runCursor)) }
func (h *runHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	*h = old[:len(old)-1]
	return c
}
