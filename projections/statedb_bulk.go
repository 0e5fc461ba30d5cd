package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/tallyledger/tally/domain/state"
)

// A replay writes the state database whole (SaveState): a new file beside the old one, private
// to the replay while it is written, so that it needs neither a journal nor an fsync per
// transaction; the layers go in in key order, many per INSERT, in one transaction, while
// another goroutine lists and packs the next ones; then the file is synced once and renamed
// over the old one. A crash at any point leaves the old state database or the new one, whole.
// (Building the depth index after the rows costs as much CPU and leaves the other core idle
// meanwhile: docs/performance.md.)

// bulkStateDSN opens a state database file that only this process sees yet.
func bulkStateDSN(path string) string {
	q := url.Values{}
	q.Add("_pragma", "journal_mode(OFF)")
	q.Add("_pragma", "synchronous(OFF)")
	q.Add("_pragma", "locking_mode(EXCLUSIVE)")
	q.Add("_pragma", "cache_size(-65536)") // 64 MiB: the b-trees' pages being filled stay in memory
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

// layersPerInsert is how many layers one INSERT writes: a statement's own cost, and the
// driver's per call, spread over many rows.
const layersPerInsert = 128

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
	if err := writeLayers(ctx, tx, st, layersPerInsert); err != nil {
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

// writeLayers inserts every layer of st in key order, rows layers per INSERT. Listing and
// sorting the layers and packing their values runs on a goroutine of its own, ahead of the
// inserts, so that it takes another core than SQLite's.
func writeLayers(ctx context.Context, tx *sql.Tx, st *state.State, rows int) error {
	rows = max(rows, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	const ahead = 64 // batches packed and not yet inserted
	batches := make(chan []any, ahead)
	free := make(chan []any, ahead+2)
	listed := make(chan error, 1)
	go func() {
		defer close(batches)
		batch := make([]any, 0, rows*layerColumns)
		send := func() error {
			select {
			case batches <- batch:
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case batch = <-free:
				batch = batch[:0]
			default:
				batch = make([]any, 0, rows*layerColumns)
			}
			return nil
		}
		err := st.AllLayers(func(l state.LayerRecord) error {
			batch = append(batch, l.Owner, packID(l.ID), l.Info.Depth, l.Info.Timestamp, l.Info.Skipped, packID(l.Info.Digest), packID(l.Info.FileDigest), l.Info.Length)
			if len(batch) < cap(batch) {
				return nil
			}
			return send()
		})
		if err == nil && len(batch) > 0 {
			err = send()
		}
		listed <- err
	}()
	var full *sql.Stmt
	defer func() {
		if full != nil {
			_ = full.Close()
		}
	}()
	for batch := range batches {
		var err error
		if len(batch) == rows*layerColumns {
			if full == nil {
				if full, err = tx.PrepareContext(ctx, insertLayers(rows)); err != nil {
					return err
				}
			}
			_, err = full.ExecContext(ctx, batch...)
		} else {
			_, err = tx.ExecContext(ctx, insertLayers(len(batch)/layerColumns), batch...)
		}
		if err != nil {
			return err
		}
		clear(batch)
		select {
		case free <- batch:
		default:
		}
	}
	return <-listed
}

const layerColumns = 8

// insertLayers is an INSERT of n layers.
func insertLayers(n int) string {
	var b strings.Builder
	b.WriteString(`INSERT INTO layers (owner, layer, depth, timestamp, skipped, digest, file_digest, length) VALUES `)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`(?,?,?,?,?,?,?,?)`)
	}
	return b.String()
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
