package projections

import (
	"bytes"
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
	var st *state.State
	err := replaceStateDB(ctx, path, func(ctx context.Context, db *sql.DB) error {
		runs, err := createRunFile(runsPath)
		if err != nil {
			return err
		}
		st, err = replayFold(ctx, store, db, runs, opts)
		return errors.Join(err, runs.remove())
	})
	if err != nil {
		return nil, err
	}
	return st, nil
}

func replayFold(ctx context.Context, store eventstore.Store, db *sql.DB, runs *runFile, opts ReplayOptions) (*state.State, error) {
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
	batches := make(chan []state.RawLayer, 1)
	// The buffers of the batches written, for the next hand-overs: a batch is tens of
	// megabytes, which a fresh one faulted in and zeroed each time. A batch is free once
	// written: the fold's lookups (on the fold's goroutine, as are the hand-overs) no longer
	// see it, and the writer is done with it.
	free := make(chan []state.RawLayer, 1)
	written := make(chan error, 1)
	go func() {
		var err error
		for batch := range batches {
			if err != nil {
				continue
			}
			if err = layers.write(ctx, batch); err != nil {
				cancel()
				continue // still pending: never reused
			}
			select {
			case free <- batch[:0]:
			default:
			}
		}
		written <- err
	}()
	st := state.NewStateOn(layers)
	handOver := func() error {
		// Raw, not Changes' LayerRecords: no hex strings made here to be parsed back by the
		// writer. The other records are written at the end (Changes(true)).
		var buf []state.RawLayer
		select {
		case buf = <-free:
		default:
		}
		fresh := st.AppendFreshLayersRaw(buf)
		if len(fresh) == 0 {
			return nil
		}
		layers.pend(fresh)
		select {
		case batches <- fresh:
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
	if err := mergeRuns(ctx, runs, tx); err != nil {
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
	runs    *runFile
	mu      sync.Mutex
	pending [][]state.RawLayer
}

func (w *writtenLayers) pend(batch []state.RawLayer) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending = append(w.pending, batch)
}

// write writes a batch as the next run (its text identities into the new file), and then no
// longer holds it in memory.
func (w *writtenLayers) write(ctx context.Context, batch []state.RawLayer) error {
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
func (w *writtenLayers) writeRun(ctx context.Context, batch []state.RawLayer) error {
	var text []state.LayerRecord
	run := w.runs.newRun()
	for i := range batch {
		l := &batch[i]
		if l.IsText {
			text = append(text, state.LayerRecord{Owner: l.Owner, ID: l.TextID, Info: l.Info()})
			continue
		}
		run.add(l)
	}
	if len(text) > 0 {
		if err := w.writeText(ctx, text); err != nil {
			return err
		}
	}
	return w.runs.write(run)
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

// snapshot returns the pending batches and the runs written, at one moment: a batch leaves
// the pending ones only once its run is written, so what a lookup does not find in the one it
// finds in the other.
func (w *writtenLayers) snapshot() ([][]state.RawLayer, [][]runPageRef) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.pending), w.runs.written()
}

// Layer implements state.LayerStore.
func (w *writtenLayers) Layer(owner, id string) (state.LayerInfo, bool, error) {
	pending, runs := w.snapshot()
	raw, ok := state.ParseHash(id)
	for i := len(pending) - 1; i >= 0; i-- {
		batch := pending[i]
		j := sort.Search(len(batch), func(j int) bool {
			return batch[j].Owner > owner || (batch[j].Owner == owner && state.CompareRawID(&batch[j], !ok, &raw, id) >= 0)
		})
		if j < len(batch) && batch[j].Owner == owner && state.CompareRawID(&batch[j], !ok, &raw, id) == 0 {
			return batch[j].Info(), true, nil
		}
	}
	if !ok {
		return textLayer(context.Background(), w.db, owner, id)
	}
	for r := len(runs) - 1; r >= 0; r-- {
		v, ok, err := w.runs.lookup(runs[r], owner, raw)
		if err != nil {
			return state.LayerInfo{}, false, err
		}
		if ok {
			info, err := decodeRecord(v)
			return info, err == nil, err
		}
	}
	return state.LayerInfo{}, false, nil
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
	pending, runs := w.snapshot()
	all := map[string]state.LayerInfo{}
	var order []string
	put := func(id string, info state.LayerInfo) {
		if _, ok := all[id]; !ok {
			order = append(order, id)
		}
		all[id] = info
	}
	for _, run := range runs {
		i, j := ownerRange(run, owner)
		for _, ref := range run[i:j] {
			p, err := w.runs.read(ref)
			if err != nil {
				return err
			}
			for k := range p.n {
				info, err := decodeRecord(p.val(k))
				if err != nil {
					return err
				}
				put(hex.EncodeToString(p.key(k)), info)
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
			put(batch[i].IDString(), batch[i].Info())
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

// runFile holds a replay's sorted runs: each run's pages (as layer_pages holds them) appended
// to a scratch file beside the new state database, and indexed in memory by one entry per
// page (its owner, first identity and place in the file: about 2 bytes per layer). It is
// deleted once the runs are merged.
type runFile struct {
	path string
	f    *os.File
	mu   sync.Mutex
	size int64
	runs [][]runPageRef
	// spare is the buffer of the last run written, for the next one.
	spare []byte
}

// runPageRef is where one page of a run is.
type runPageRef struct {
	owner string
	first [32]byte
	off   int64
	n     int
}

func createRunFile(path string) (*runFile, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) { // a crashed replay's
		return nil, fmt.Errorf("replay runs: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("replay runs: %w", err)
	}
	return &runFile{path: path, f: f}, nil
}

func (r *runFile) remove() error {
	err := r.f.Close()
	if rerr := os.Remove(r.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	if err != nil {
		return fmt.Errorf("replay runs: %w", err)
	}
	return nil
}

// written returns the runs written so far (each run's index never changes once written).
func (r *runFile) written() [][]runPageRef {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.runs[:len(r.runs):len(r.runs)]
}

// runBuilder packs one run's layers (handed over sorted) into pages in memory.
type runBuilder struct {
	buf     []byte
	refs    []runPageRef
	owner   string
	entries []pageEntry
	arena   []byte // the entries' identities and records, reused for each page
}

// newRun starts a run in the buffer of the last one written (the runs are written one at a
// time): a replay's run is ten megabytes, which a fresh buffer grew to by copying and faulted
// in anew each time.
func (r *runFile) newRun() *runBuilder {
	r.mu.Lock()
	buf := r.spare
	r.spare = nil
	r.mu.Unlock()
	return &runBuilder{entries: make([]pageEntry, 0, layerPages.target), buf: buf[:0]}
}

// add adds a layer of a raw identity.
func (b *runBuilder) add(l *state.RawLayer) {
	if l.Owner != b.owner || len(b.entries) == layerPages.target {
		b.flush()
		b.owner = l.Owner
	}
	start := len(b.arena)
	b.arena = append(b.arena, l.ID[:]...)
	b.arena = appendRawRecord(b.arena, l)
	// Slices of the arena stay valid when it grows: they keep the array they were taken from.
	b.entries = append(b.entries, pageEntry{key: b.arena[start : start+32], val: b.arena[start+32:]})
}

func (b *runBuilder) flush() {
	if len(b.entries) == 0 {
		return
	}
	off := len(b.buf)
	b.buf = layerPages.appendPage(b.buf, b.entries)
	b.refs = append(b.refs, runPageRef{owner: b.owner, first: [32]byte(b.entries[0].key), off: int64(off), n: len(b.buf) - off})
	clear(b.entries)
	b.entries, b.arena = b.entries[:0], b.arena[:0]
}

// write appends a built run to the file and publishes its index.
func (r *runFile) write(b *runBuilder) error {
	b.flush()
	r.mu.Lock()
	start := r.size
	r.mu.Unlock()
	if _, err := r.f.WriteAt(b.buf, start); err != nil {
		return fmt.Errorf("replay runs: %w", err)
	}
	for i := range b.refs {
		b.refs[i].off += start
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.size += int64(len(b.buf))
	r.runs = append(r.runs, b.refs)
	r.spare = b.buf
	return nil
}

func (r *runFile) read(ref runPageRef) (page, error) {
	b := make([]byte, ref.n)
	if _, err := r.f.ReadAt(b, ref.off); err != nil {
		return page{}, fmt.Errorf("replay runs: %w", err)
	}
	return layerPages.parse(b)
}

// ownerRange is the range of a run's pages that hold owner's layers.
func ownerRange(run []runPageRef, owner string) (int, int) {
	i := sort.Search(len(run), func(i int) bool { return run[i].owner >= owner })
	j := sort.Search(len(run), func(j int) bool { return run[j].owner > owner })
	return i, j
}

// lookup finds a layer's record in one run: the last page of the owner whose first is at most
// the identity.
func (r *runFile) lookup(run []runPageRef, owner string, id [32]byte) ([]byte, bool, error) {
	i, j := ownerRange(run, owner)
	k := sort.Search(j-i, func(k int) bool { return bytes.Compare(run[i+k].first[:], id[:]) > 0 })
	if k == 0 {
		return nil, false, nil
	}
	p, err := r.read(run[i+k-1])
	if err != nil {
		return nil, false, err
	}
	n, ok := p.search(id[:])
	if !ok {
		return nil, false, nil
	}
	return p.val(n), true, nil
}

// mergeRuns merges the sorted runs (k-way, a later run's record of a layer replacing an
// earlier one's) into the new file's pages, in key order, through tx. Each run is read
// sequentially, a block of pages at a time.
func mergeRuns(ctx context.Context, runs *runFile, tx *sql.Tx) error {
	w, err := newLayerWriter(ctx, tx)
	if err != nil {
		return err
	}
	written := runs.written()
	h := make(runHeap, 0, len(written))
	for i, refs := range written {
		c := &runCursor{run: i, refs: refs, file: runs.f}
		ok, err := c.next()
		if err != nil {
			return errors.Join(err, w.close())
		}
		if ok {
			h = append(h, c)
		}
	}
	h.init()
	for len(h) > 0 {
		c := h[0]
		owner, key, val := c.owner, c.key, c.val
		for {
			ok, err := c.next()
			if err != nil {
				return errors.Join(err, w.close())
			}
			if ok {
				h.down(0)
			} else {
				h.pop()
			}
			if len(h) == 0 || h[0].owner != owner || !bytes.Equal(h[0].key, key) {
				break
			}
			// The same layer in a later run: its record replaces this one.
			c = h[0]
			val = c.val
		}
		if err := w.addRaw(owner, key, val); err != nil {
			return errors.Join(err, w.close())
		}
	}
	return w.close()
}

// runCursor reads one run in key order.
type runCursor struct {
	run  int
	refs []runPageRef
	file *os.File

	block     []byte // the pages read ahead, from refs[0]
	blockOff  int64
	page      page
	pageIndex int // refs[pageIndex] is page
	entry     int
	started   bool

	owner    string // the current entry
	key, val []byte
}

// runBlock is how much of a run a cursor reads at once.
const runBlock = 256 << 10

// next moves to the next entry (the first, on the first call); false when the run is read.
func (c *runCursor) next() (bool, error) {
	if c.started {
		c.entry++
	} else {
		c.started, c.pageIndex = true, -1
	}
	for !c.started || c.pageIndex < 0 || c.entry >= c.page.n {
		c.pageIndex++
		if c.pageIndex >= len(c.refs) {
			return false, nil
		}
		ref := c.refs[c.pageIndex]
		if ref.off < c.blockOff || ref.off+int64(ref.n) > c.blockOff+int64(len(c.block)) {
			end := ref.off + int64(ref.n)
			last := c.refs[len(c.refs)-1]
			end = max(end, min(ref.off+runBlock, last.off+int64(last.n)))
			c.block = make([]byte, end-ref.off)
			if _, err := c.file.ReadAt(c.block, ref.off); err != nil {
				return false, fmt.Errorf("replay runs: %w", err)
			}
			c.blockOff = ref.off
		}
		p, err := layerPages.parse(c.block[ref.off-c.blockOff : ref.off-c.blockOff+int64(ref.n)])
		if err != nil {
			return false, err
		}
		c.page, c.entry = p, 0
	}
	c.owner, c.key, c.val = c.refs[c.pageIndex].owner, c.page.key(c.entry), c.page.val(c.entry)
	return true, nil
}

// runHeap orders the cursors by their current entry's owner and key, an earlier run first: a
// binary heap written out rather than container/heap's, whose calls through an interface took
// a third of the merge's time.
type runHeap []*runCursor

func (h runHeap) less(i, j int) bool {
	a, b := h[i], h[j]
	if a.owner != b.owner {
		return a.owner < b.owner
	}
	if c := bytes.Compare(a.key, b.key); c != 0 {
		return c < 0
	}
	return a.run < b.run
}

func (h runHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

// down moves the cursor at i down to its place.
func (h runHeap) down(i int) {
	for {
		c := 2*i + 1
		if c >= len(h) {
			return
		}
		if r := c + 1; r < len(h) && h.less(r, c) {
			c = r
		}
		if !h.less(c, i) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}

// pop removes the first cursor.
func (h *runHeap) pop() {
	old := *h
	n := len(old) - 1
	old[0] = old[n]
	old[n] = nil
	*h = old[:n]
	h.down(0)
}
