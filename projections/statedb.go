package projections

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"github.com/google/uuid"
	_ "modernc.org/sqlite" // the database/sql driver "sqlite"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/state"
)

// StateFile is the current-state projection's database, relative to the data directory.
const StateFile = "readmodels/state.db"

// stateFormat changes when the tables or their records change; a file of another format is
// dropped and the state replayed from the events.
const stateFormat = 3 // 2: layers.length (docs/uploads.md, "Tamper evidence"); 3: layer pages

// The state database: one row per record of the State (a JSON document, the State's own
// encoding), a meta row with the checkpoint, and the applied layers packed in pages
// (statedb_pages.go) that are never loaded whole. A checkpoint writes the changed rows, the new layers and the
// meta row in one transaction.
const stateSchema = `
CREATE TABLE IF NOT EXISTS meta (
	id            INTEGER PRIMARY KEY CHECK (id = 1),
	format        INTEGER NOT NULL,
	position      INTEGER NOT NULL,
	last_stream   TEXT    NOT NULL,
	last_revision INTEGER NOT NULL,
	last_id       BLOB    NOT NULL,
	events        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS products  (id INTEGER PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys      (id INTEGER PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objects   (id INTEGER PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens    (id BLOB PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads   (owner TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS anomalies (owner TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aborted   (id BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS layer_pages (
	owner   TEXT NOT NULL,
	first   BLOB NOT NULL, -- the page's least raw identity
	entries BLOB NOT NULL, -- the page (statedb_pages.go)
	PRIMARY KEY (owner, first)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS layer_depth_pages (
	owner   TEXT NOT NULL,
	first   BLOB NOT NULL, -- the page's least (depth, identity) key
	entries BLOB NOT NULL,
	PRIMARY KEY (owner, first)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS text_layers ( -- layers whose identity is not 64 lowercase hex digits
	owner  TEXT    NOT NULL,
	layer  TEXT    NOT NULL,
	depth  INTEGER NOT NULL,
	record BLOB    NOT NULL, -- as a page's record
	PRIMARY KEY (owner, layer)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS text_layers_depth ON text_layers (owner, depth);
`

// StateDB is the persisted current state (StateFile): Current's checkpoints, and the layer
// store (state.LayerStore) of the State it loads. Lookups run on a pool of read-only
// connections while a checkpoint writes on its own connection (WAL).
type StateDB struct {
	path    string
	writeDB *sql.DB
	readDB  *sql.DB
	closed  bool
}

func stateDSN(path string, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	// A new file's page size (statedb_pages.go; an existing file keeps its own), set before
	// WAL mode fixes it: the driver runs the _pragma list sorted by name, then _journal_mode.
	q.Add("_pragma", "page_size(16384)")
	q.Add("_journal_mode", "WAL")
	// NORMAL: a crash may lose the last checkpoints, never half of one; the layers go back
	// with the checkpoint they were written with, and the projection catches up from it.
	q.Add("_pragma", "synchronous(NORMAL)")
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	}
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

// OpenStateDB opens (or creates, owner-only) the state database at path. A file of another
// format is replaced by an empty one.
func OpenStateDB(ctx context.Context, path string) (*StateDB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("state database directory: %w", err)
	}
	for attempt := 0; ; attempt++ {
		db, ok, err := openStateDB(ctx, path)
		if err != nil || ok {
			return db, err
		}
		if attempt > 0 {
			return nil, fmt.Errorf("state database %s: a fresh file has another format", path)
		}
		if err := removeStateDB(path); err != nil {
			return nil, err
		}
	}
}

// removeStateDB deletes a state database's files.
func removeStateDB(path string) error {
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(path + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove state database: %w", err)
		}
	}
	return nil
}

// openStateDB opens the file; false means it holds another format (and is closed).
func openStateDB(ctx context.Context, path string) (*StateDB, bool, error) {
	// Owner-only, like the rest of the data directory; SQLite gives its -wal and -shm files
	// the database file's mode.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("open state database %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, false, fmt.Errorf("open state database %s: %w", path, err)
	}
	d := &StateDB{path: path}
	if d.writeDB, err = sql.Open("sqlite", stateDSN(path, false)); err != nil {
		return nil, false, fmt.Errorf("open state database %s: %w", path, err)
	}
	d.writeDB.SetMaxOpenConns(1)
	d.writeDB.SetConnMaxIdleTime(0)
	d.writeDB.SetConnMaxLifetime(0)
	if _, err := d.writeDB.ExecContext(ctx, stateSchema); err != nil {
		_ = d.Close()
		return nil, false, fmt.Errorf("state database %s schema: %w", path, err)
	}
	var format int
	switch err := d.writeDB.QueryRowContext(ctx, `SELECT format FROM meta WHERE id = 1`).Scan(&format); {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		_ = d.Close()
		return nil, false, fmt.Errorf("state database %s: %w", path, err)
	case format != stateFormat:
		_ = d.Close()
		return nil, false, nil
	}
	if d.readDB, err = sql.Open("sqlite", stateDSN(path, true)); err != nil {
		_ = d.Close()
		return nil, false, fmt.Errorf("open state database %s: %w", path, err)
	}
	d.readDB.SetMaxOpenConns(4)
	d.readDB.SetMaxIdleConns(4)
	d.readDB.SetConnMaxIdleTime(0)
	d.readDB.SetConnMaxLifetime(0)
	return d, true, nil
}

// Close closes the database. Lookups after Close fail with an error (never a panic): a State
// may still hold d as its layer store.
func (d *StateDB) Close() error {
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	for _, db := range []*sql.DB{d.readDB, d.writeDB} {
		if db != nil {
			errs = append(errs, db.Close())
		}
	}
	return errors.Join(errs...)
}

func unpackID(v any) string {
	switch v := v.(type) {
	case []byte:
		return hex.EncodeToString(v)
	case string:
		return v
	}
	return ""
}

// Layer implements state.LayerStore.
func (d *StateDB) Layer(owner, id string) (state.LayerInfo, bool, error) {
	return layerQueries{d.readDB}.Layer(owner, id)
}

// HasDepth implements state.LayerStore.
func (d *StateDB) HasDepth(owner string, depth int64) (bool, error) {
	return layerQueries{d.readDB}.HasDepth(owner, depth)
}

// EachLayer implements state.LayerStore.
func (d *StateDB) EachLayer(owner string, fn func(id string, info state.LayerInfo) bool) error {
	return layerQueries{d.readDB}.EachLayer(owner, fn)
}

// EachLayerAt implements state.LayerStore.
func (d *StateDB) EachLayerAt(owner string, depth int64, fn func(id string, info state.LayerInfo) bool) error {
	return layerQueries{d.readDB}.EachLayerAt(owner, depth, fn)
}

// Load returns the persisted state, its layers left in the database (false: no checkpoint
// yet). The state tracks its changes for the next Checkpoint.
func (d *StateDB) Load(ctx context.Context) (*state.State, bool, error) {
	st := state.NewStateOn(d)
	var lastID []byte
	err := d.writeDB.QueryRowContext(ctx, `SELECT position, last_stream, last_revision, last_id, events FROM meta WHERE id = 1`).
		Scan(&st.Position, &st.LastEvent.Stream, &st.LastEvent.Revision, &lastID, &st.Events)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("state database %s: %w", d.path, err)
	}
	if st.LastEvent.ID, err = uuid.FromBytes(lastID); err != nil {
		return nil, false, fmt.Errorf("state database %s: last event id: %w", d.path, err)
	}
	load := func(query string, each func(key any, record []byte) error) error {
		rows, err := d.writeDB.QueryContext(ctx, query)
		if err != nil {
			return fmt.Errorf("state database %s: %w", d.path, err)
		}
		defer rows.Close()
		for rows.Next() {
			var key any
			var record []byte
			if err := rows.Scan(&key, &record); err != nil {
				return fmt.Errorf("state database %s: %w", d.path, err)
			}
			if err := each(key, record); err != nil {
				return fmt.Errorf("state database %s: %w", d.path, err)
			}
		}
		return rows.Err()
	}
	steps := []error{
		load(`SELECT id, record FROM products`, func(_ any, b []byte) error {
			var p domain.Product
			err := json.Unmarshal(b, &p)
			st.Products[p.ID] = p
			return err
		}),
		load(`SELECT id, record FROM keys`, func(_ any, b []byte) error {
			var k domain.LicenseKey
			err := json.Unmarshal(b, &k)
			st.Keys[k.ID] = k
			return err
		}),
		load(`SELECT id, record FROM tokens`, func(_ any, b []byte) error {
			var t domain.Token
			err := json.Unmarshal(b, &t)
			st.Tokens[t.ID] = t
			return err
		}),
		load(`SELECT id, record FROM objects`, func(_ any, b []byte) error {
			o := &state.Object{}
			err := json.Unmarshal(b, o)
			st.Objects[o.ID] = o
			return err
		}),
		load(`SELECT owner, record FROM uploads`, func(k any, b []byte) error {
			u := &state.Upload{}
			err := json.Unmarshal(b, u)
			st.Uploads[unpackID(k)] = u
			return err
		}),
		load(`SELECT owner, record FROM anomalies`, func(k any, b []byte) error {
			var list []*state.IntegrityAnomaly
			err := json.Unmarshal(b, &list)
			if st.Anomalies == nil {
				st.Anomalies = map[string][]*state.IntegrityAnomaly{}
			}
			st.Anomalies[unpackID(k)] = list
			return err
		}),
		load(`SELECT id, id FROM aborted`, func(_ any, b []byte) error {
			id, err := uuid.FromBytes(b)
			st.Aborted[id] = true
			return err
		}),
	}
	if err := errors.Join(steps...); err != nil {
		return nil, false, err
	}
	st.Reindex()
	st.TrackChanges()
	return st, true, nil
}

// Checkpoint writes c (what st changed since its last checkpoint, or all of it) and st's
// checkpoint in one transaction. The caller keeps Apply away meanwhile, and calls
// st.Checkpointed(d) once it returns nil.
func (d *StateDB) Checkpoint(ctx context.Context, st *state.State, c state.Changes) error {
	tx, err := d.writeDB.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("state checkpoint: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := writeChanges(ctx, tx, c); err != nil {
		return fmt.Errorf("state checkpoint: %w", err)
	}
	if c.All {
		if err := writeAllLayers(ctx, tx, st); err != nil {
			return fmt.Errorf("state checkpoint: %w", err)
		}
	}
	if err := writeMeta(ctx, tx, st); err != nil {
		return fmt.Errorf("state checkpoint: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("state checkpoint: %w", err)
	}
	return nil
}

// upsert runs one INSERT OR REPLACE per row through a statement prepared for the transaction.
func upsert(ctx context.Context, tx *sql.Tx, query string, n int, args func(i int) ([]any, error)) error {
	if n == 0 {
		return nil
	}
	stmt, err := tx.PrepareContext(ctx, query)
	if err != nil {
		return err
	}
	defer stmt.Close()
	for i := range n {
		a, err := args(i)
		if err != nil {
			return err
		}
		if _, err := stmt.ExecContext(ctx, a...); err != nil {
			return err
		}
	}
	return nil
}

func record(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

// writeAllLayers writes every layer of st, one owner at a time (a migration).
func writeAllLayers(ctx context.Context, tx *sql.Tx, st *state.State) error {
	var owner []state.LayerRecord
	err := st.AllLayers(func(l state.LayerRecord) error {
		if len(owner) > 0 && owner[0].Owner != l.Owner {
			if err := putLayers(ctx, tx, owner); err != nil {
				return err
			}
			owner = owner[:0]
		}
		owner = append(owner, l)
		return nil
	})
	if err != nil {
		return err
	}
	return putLayers(ctx, tx, owner)
}

func writeChanges(ctx context.Context, tx *sql.Tx, c state.Changes) error {
	owners := make([]string, 0, len(c.Anomalies))
	for owner := range c.Anomalies {
		owners = append(owners, owner)
	}
	steps := []struct {
		query string
		n     int
		args  func(i int) ([]any, error)
	}{
		{`INSERT OR REPLACE INTO products (id, record) VALUES (?, ?)`, len(c.Products), func(i int) ([]any, error) {
			r, err := record(c.Products[i])
			return []any{c.Products[i].ID, r}, err
		}},
		{`INSERT OR REPLACE INTO keys (id, record) VALUES (?, ?)`, len(c.Keys), func(i int) ([]any, error) {
			r, err := record(c.Keys[i])
			return []any{c.Keys[i].ID, r}, err
		}},
		{`INSERT OR REPLACE INTO tokens (id, record) VALUES (?, ?)`, len(c.Tokens), func(i int) ([]any, error) {
			r, err := record(c.Tokens[i])
			return []any{c.Tokens[i].ID[:], r}, err
		}},
		{`INSERT OR REPLACE INTO objects (id, record) VALUES (?, ?)`, len(c.Objects), func(i int) ([]any, error) {
			r, err := record(c.Objects[i])
			return []any{c.Objects[i].ID, r}, err
		}},
		{`INSERT OR REPLACE INTO uploads (owner, record) VALUES (?, ?)`, len(c.Uploads), func(i int) ([]any, error) {
			r, err := record(c.Uploads[i])
			return []any{c.Uploads[i].Owner.String(), r}, err
		}},
		{`INSERT OR REPLACE INTO anomalies (owner, record) VALUES (?, ?)`, len(owners), func(i int) ([]any, error) {
			r, err := record(c.Anomalies[owners[i]])
			return []any{owners[i], r}, err
		}},
		{`INSERT OR IGNORE INTO aborted (id) VALUES (?)`, len(c.Aborted), func(i int) ([]any, error) {
			return []any{c.Aborted[i][:]}, nil
		}},
	}
	for _, s := range steps {
		if err := upsert(ctx, tx, s.query, s.n, s.args); err != nil {
			return err
		}
	}
	return putLayers(ctx, tx, c.Layers)
}

// writeMeta records in tx the position and event count the state database holds the state at.
func writeMeta(ctx context.Context, tx *sql.Tx, st *state.State) error {
	_, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO meta (id, format, position, last_stream, last_revision, last_id, events) VALUES (1, ?, ?, ?, ?, ?, ?)`,
		stateFormat, int64(st.Position), st.LastEvent.Stream, int64(st.LastEvent.Revision), st.LastEvent.ID[:], int64(st.Events))
	return err
}

// LoadState reads the state database at path into a state that holds everything in memory,
// its layers included, and closes the file (tally verify). A missing file is an error matching
// os.ErrNotExist.
func LoadState(ctx context.Context, path string) (*state.State, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("read projection state: %w", err)
	}
	d, err := OpenStateDB(ctx, path)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	onDisk, ok, err := d.Load(ctx)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("read projection state %s: no checkpoint: %w", path, os.ErrNotExist)
	}
	if err := onDisk.DetachLayers(); err != nil {
		return nil, fmt.Errorf("read projection state %s: %w", path, err)
	}
	return onDisk, nil
}

// CopyState writes a consistent copy of the state database at from to the new file to (SQLite
// VACUUM INTO, one read transaction, while checkpoints go on), owner-only. It reports false
// when there is no state database.
func CopyState(ctx context.Context, from, to string) (bool, error) {
	if _, err := os.Stat(from); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	// Created owner-only and empty first: VACUUM INTO writes into an empty file.
	f, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return false, fmt.Errorf("copy state database: %w", err)
	}
	if err := f.Close(); err != nil {
		return false, fmt.Errorf("copy state database: %w", err)
	}
	db, err := sql.Open("sqlite", stateDSN(from, false))
	if err != nil {
		return false, fmt.Errorf("copy state database: %w", err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `VACUUM INTO ?`, to); err != nil {
		return false, fmt.Errorf("copy state database: %w", err)
	}
	return true, nil
}

// LayerSnapshot is the state database's layers as they were when it was taken (one read
// transaction): what an online verification compares while checkpoints go on.
type LayerSnapshot struct {
	layerQueries // on tx
	tx           *sql.Tx
}

// SnapshotLayers begins a read transaction and pins its snapshot at once (SQLite takes it at
// the first read). Release it with Close.
func (d *StateDB) SnapshotLayers(ctx context.Context) (*LayerSnapshot, error) {
	tx, err := d.readDB.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("state database: snapshot: %w", err)
	}
	var one int
	if err := tx.QueryRowContext(ctx, `SELECT 1 FROM layer_pages LIMIT 1`).Scan(&one); err != nil && !errors.Is(err, sql.ErrNoRows) {
		_ = tx.Rollback()
		return nil, fmt.Errorf("state database: snapshot: %w", err)
	}
	return &LayerSnapshot{layerQueries: layerQueries{tx}, tx: tx}, nil
}

// Close ends the snapshot's read transaction.
func (s *LayerSnapshot) Close() error { return s.tx.Rollback() }
