package projections

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"

	"github.com/tallyledger/tally/domain/state"
)

// A replay writes the state database whole (SaveState): a new file beside the old one, private
// to the replay while it is written, so that it needs neither a journal nor an fsync per
// transaction; the layers go in in key order, packed into pages (statedb_pages.go), in one
// transaction; then the file is synced once and renamed over the old one. A crash at any point
// leaves the old state database or the new one, whole.

// bulkStateDSN opens a state database file that only this process sees yet.
func bulkStateDSN(path string) string {
	q := url.Values{}
	// The page size before the journal mode: the layer pages fit in a b-tree cell
	// (statedb_pages.go). The driver runs the _pragma list sorted by name, then _journal_mode.
	q.Add("_pragma", "page_size(16384)")
	q.Add("_journal_mode", "OFF")
	q.Add("_pragma", "synchronous(OFF)")
	q.Add("_pragma", "locking_mode(EXCLUSIVE)")
	q.Add("_pragma", "cache_size(-65536)") // 64 MiB: the b-trees' pages being filled stay in memory
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

// SaveState replaces the state database at path with st, whole (tally replay): written to a
// new file beside it and renamed over it once synced.
func SaveState(ctx context.Context, path string, st *state.State) error {
	return replaceStateDB(ctx, path, func(ctx context.Context, db *sql.DB) error {
		return writeState(ctx, db, st)
	})
}

// replaceStateDB writes a new state database with write and puts it in place of the one at
// path: the new file (beside it, owner-only, in bulk mode on one connection: nobody else sees
// it yet) is synced, the old one's write-ahead log folded in, and the new one renamed over it,
// so that a crash at any point leaves the old file or the new one, whole.
func replaceStateDB(ctx context.Context, path string, write func(context.Context, *sql.DB) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("state database directory: %w", err)
	}
	tmp := path + ".new"
	if err := removeStateDB(tmp); err != nil { // what a replay that crashed left
		return err
	}
	if err := writeStateFile(ctx, tmp, write); err != nil {
		return errors.Join(err, removeStateDB(tmp))
	}
	if err := syncFile(tmp); err != nil {
		return errors.Join(err, removeStateDB(tmp))
	}
	if err := retireStateDB(ctx, path); err != nil {
		return errors.Join(err, removeStateDB(tmp))
	}
	if err := os.Rename(tmp, path); err != nil {
		return errors.Join(fmt.Errorf("replace state database: %w", err), removeStateDB(tmp))
	}
	return syncFile(filepath.Dir(path))
}

// writeStateFile creates the new file at path and writes it with write.
func writeStateFile(ctx context.Context, path string, write func(context.Context, *sql.DB) error) error {
	// Created owner-only first: SQLite keeps the mode of the file it opens.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write state database: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write state database: %w", err)
	}
	db, err := sql.Open("sqlite", bulkStateDSN(path))
	if err != nil {
		return fmt.Errorf("write state database: %w", err)
	}
	// One connection: a replay's writer and its fold's rare lookups take turns on it.
	db.SetMaxOpenConns(1)
	db.SetConnMaxIdleTime(0)
	db.SetConnMaxLifetime(0)
	err = write(ctx, db)
	if cerr := db.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("write state database: %w", cerr)
	}
	return err
}

func writeState(ctx context.Context, db *sql.DB, st *state.State) error {
	if _, err := db.ExecContext(ctx, stateSchema); err != nil {
		return fmt.Errorf("write state database: schema: %w", err)
	}
	c, err := st.Changes(true)
	if err != nil {
		return err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("write state database: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := writeChanges(ctx, tx, c); err != nil {
		return fmt.Errorf("write state database: %w", err)
	}
	if err := writeLayers(ctx, tx, st); err != nil {
		return fmt.Errorf("write state database: layers: %w", err)
	}
	if err := writeMeta(ctx, tx, st); err != nil {
		return fmt.Errorf("write state database: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("write state database: %w", err)
	}
	return nil
}

// writeLayers writes every layer of st into the pages of a fresh file, in key order.
func writeLayers(ctx context.Context, tx *sql.Tx, st *state.State) error {
	w, err := newLayerWriter(ctx, tx)
	if err != nil {
		return err
	}
	err = st.AllLayers(func(l state.LayerRecord) error {
		if raw, ok := state.ParseHash(l.ID); ok {
			return w.addRaw(l.Owner, bytes.Clone(raw[:]), appendRecord(nil, l.Info))
		}
		return w.addText(ctx, l.Owner, l.ID, l.Info)
	})
	return errors.Join(err, w.close())
}

// layerWriter writes the layers of a fresh file in key order (owners in order, each owner's
// raw identities in order): the layer pages as they come, and each owner's depth pages once
// its layers are all in (so it holds one owner's depth keys, 40 bytes a layer). The inserts
// run on a goroutine of their own (rowInserter).
type layerWriter struct {
	x        *sql.Tx
	ins      *rowInserter
	pages    *pageWriter
	depths   *pageWriter
	owner    string
	depthsOf []depthOfLayer // the owner's layers' depths
	idsAsc   bool           // depthsOf is in identity order (as addRaw's callers hand them)
	byDepth  []depthOfLayer // flushDepths' counting sort's output
	counts   []int          // and its counts by depth
	keys     []byte         // their depth keys, depthKeyLen bytes each, once sorted
}

// depthOfLayer is a layer's depth and identity, for its depth key.
type depthOfLayer struct {
	depth int64
	id    []byte
}

func newLayerWriter(ctx context.Context, tx *sql.Tx) (*layerWriter, error) {
	ins := newRowInserter(ctx)
	pages, err := newPageWriter(ctx, tx, layerPages, ins)
	if err != nil {
		return nil, errors.Join(err, ins.close())
	}
	depths, err := newPageWriter(ctx, tx, depthPages, ins)
	if err != nil {
		return nil, errors.Join(err, ins.close(), pages.stmt.Close())
	}
	return &layerWriter{x: tx, ins: ins, pages: pages, depths: depths}, nil
}

// addRaw adds a layer by its raw identity and record, kept unchanged until the writer is done.
func (w *layerWriter) addRaw(owner string, id, record []byte) error {
	if owner != w.owner {
		w.flushDepths()
		w.owner = owner
		w.idsAsc = true
	}
	depth, err := recordDepth(record)
	if err != nil {
		return err
	}
	if n := len(w.depthsOf); n > 0 && bytes.Compare(w.depthsOf[n-1].id, id) >= 0 {
		w.idsAsc = false
	}
	w.depthsOf = append(w.depthsOf, depthOfLayer{depth: depth, id: id})
	w.pages.add(owner, pageEntry{key: id, val: record})
	return nil
}

func (w *layerWriter) addText(ctx context.Context, owner, id string, info state.LayerInfo) error {
	_, err := w.x.ExecContext(ctx, `INSERT OR REPLACE INTO text_layers (owner, layer, depth, record) VALUES (?, ?, ?, ?)`,
		owner, id, info.Depth, appendRecord(nil, info))
	if err != nil {
		return fmt.Errorf("state database: layers: %w", err)
	}
	return nil
}

// flushDepths writes the owner's depth pages (each page copies its keys, so w.keys is free
// again afterwards).
func (w *layerWriter) flushDepths() {
	if len(w.depthsOf) == 0 {
		return
	}
	// By depth, then identity: depthKey's order (the depth's sign bit flipped, big-endian).
	if !w.sortByDepthCounting() {
		slices.SortFunc(w.depthsOf, func(a, b depthOfLayer) int {
			if a.depth != b.depth {
				return cmp.Compare(a.depth, b.depth)
			}
			return bytes.Compare(a.id, b.id)
		})
	}
	w.keys = slices.Grow(w.keys[:0], len(w.depthsOf)*depthKeyLen)
	for _, d := range w.depthsOf {
		w.keys = binary.BigEndian.AppendUint64(w.keys, uint64(d.depth)^(1<<63))
		w.keys = append(w.keys, d.id...)
	}
	for i := range w.depthsOf {
		w.depths.add(w.owner, pageEntry{key: w.keys[i*depthKeyLen : (i+1)*depthKeyLen]})
	}
	w.depths.flush()
	clear(w.depthsOf)
	w.depthsOf = w.depthsOf[:0]
}

// sortByDepthCounting sorts depthsOf by depth, then identity, in linear time when it can: the
// layers came in identity order and their depths lie in a range not much wider than their
// number (a chain of uploads numbers its layers 1, 2, 3...), so a stable counting sort by
// depth keeps each depth's identities in order. It reports whether it sorted; a replay spent
// half a second of its merge in the comparison sort this replaces.
func (w *layerWriter) sortByDepthCounting() bool {
	if !w.idsAsc {
		return false
	}
	lo, hi := w.depthsOf[0].depth, w.depthsOf[0].depth
	for _, d := range w.depthsOf {
		lo, hi = min(lo, d.depth), max(hi, d.depth)
	}
	span := uint64(hi) - uint64(lo) // no overflow: the difference of two int64s fits a uint64
	if span >= uint64(2*len(w.depthsOf)+1024) {
		return false
	}
	w.counts = slices.Grow(w.counts[:0], int(span)+2)[:int(span)+2]
	clear(w.counts)
	for _, d := range w.depthsOf {
		w.counts[uint64(d.depth)-uint64(lo)+1]++
	}
	for i := 1; i < len(w.counts); i++ {
		w.counts[i] += w.counts[i-1]
	}
	w.byDepth = slices.Grow(w.byDepth[:0], len(w.depthsOf))[:len(w.depthsOf)]
	for _, d := range w.depthsOf {
		k := uint64(d.depth) - uint64(lo)
		w.byDepth[w.counts[k]] = d
		w.counts[k]++
	}
	w.depthsOf, w.byDepth = w.byDepth, w.depthsOf
	clear(w.byDepth)
	return true
}

// close writes what is left and waits for the inserts.
func (w *layerWriter) close() error {
	w.flushDepths()
	w.pages.flush()
	return errors.Join(w.ins.close(), w.pages.stmt.Close(), w.depths.stmt.Close())
}

// retireStateDB makes the state database at path ready to be replaced by a rename: its
// write-ahead log, which SQLite would otherwise apply to the new file, is folded into it and
// removed. A file that SQLite cannot open that way is of no use any more; its log goes too.
func retireStateDB(ctx context.Context, path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return removeStateDB(path)
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?"+q.Encode())
	if err == nil {
		var mode string
		err = db.QueryRowContext(ctx, `PRAGMA journal_mode=DELETE`).Scan(&mode)
		err = errors.Join(err, db.Close())
	}
	if err != nil {
		for _, suffix := range []string{"-wal", "-shm"} {
			if rerr := os.Remove(path + suffix); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				return fmt.Errorf("replace state database: %w", rerr)
			}
		}
	}
	if err := os.Remove(path + "-shm"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replace state database: %w", err)
	}
	return nil
}

// syncFile flushes a file (or directory) to the disk.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}
