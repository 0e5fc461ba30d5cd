// Package readmodel holds Tally's persisted, incremental read models for billing and audit, in
// one SQLite file of the data directory (readmodels/usage.db): per-data-object usage buckets of
// 15 minutes with UTC hour, day and month rollups on both time axes of the usage report, and a
// value-as-of index holding each object's value after every change. A Model follows the store
// by a catch-up subscription and folds each event once: its checkpoint (the store position) is
// written in the same transaction as the rows the events changed, so a crash never counts an
// event twice or drops one. It answers the same numbers as the replays of package projections
// (Usage, ValueAt), which stay as the test oracle.
package readmodel

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	_ "modernc.org/sqlite" // the database/sql driver "sqlite"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/projections"
)

// File is the read models' database, relative to the data directory.
const File = "readmodels/usage.db"

// schemaVersion changes when the tables or what the fold puts in them change; a file of another
// version is rebuilt from the events.
const schemaVersion = 2

const schema = `
CREATE TABLE IF NOT EXISTS meta (
	id            INTEGER PRIMARY KEY CHECK (id = 1),
	schema        INTEGER NOT NULL,
	position      INTEGER NOT NULL,
	last_stream   TEXT    NOT NULL,
	last_revision INTEGER NOT NULL,
	last_id       BLOB    NOT NULL,
	events        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
	key_id     INTEGER PRIMARY KEY,
	product_id INTEGER NOT NULL,
	key        TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
	object_id    INTEGER PRIMARY KEY,
	name         TEXT    NOT NULL,
	owner_type   INTEGER NOT NULL,
	owner_id     INTEGER NOT NULL,
	product_id   INTEGER NOT NULL,
	key_id       INTEGER NOT NULL,
	key          TEXT    NOT NULL,
	value        INTEGER NOT NULL,
	string_value TEXT    NOT NULL,
	removed      INTEGER NOT NULL,
	revision     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pending (
	upload_id BLOB    NOT NULL,
	seq       INTEGER NOT NULL,
	object_id INTEGER NOT NULL,
	delta     INTEGER NOT NULL,
	log_time  INTEGER NOT NULL,
	PRIMARY KEY (upload_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aborted (upload_id BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS value_at (
	object_id    INTEGER NOT NULL,
	recorded     INTEGER NOT NULL,
	position     INTEGER NOT NULL,
	int_value    INTEGER NOT NULL,
	string_value TEXT    NOT NULL,
	removed      INTEGER NOT NULL,
	revision     INTEGER NOT NULL,
	PRIMARY KEY (object_id, recorded, position)
) WITHOUT ROWID;
`

// bucketSchema is one level's table: the sums of one object's changes in one bucket on one axis.
// n counts the changes (any kind, a zero initial value included): a report has a row for a
// period exactly when n > 0 in it.
const bucketSchema = `
CREATE TABLE IF NOT EXISTS %[1]s (
	axis      INTEGER NOT NULL,
	object_id INTEGER NOT NULL,
	t         INTEGER NOT NULL,
	inc       INTEGER NOT NULL,
	dec       INTEGER NOT NULL,
	corr      INTEGER NOT NULL,
	entries   INTEGER NOT NULL,
	sets      INTEGER NOT NULL,
	adj       INTEGER NOT NULL,
	n         INTEGER NOT NULL,
	PRIMARY KEY (axis, object_id, t)
) WITHOUT ROWID;
`

// timeIndexSchema lets the coarse levels be read by time over every object (the billing run)
// without scanning every object's buckets; it covers every column, so such a read never goes
// back to the table (the day and month tables are small: one row per object and day or month).
const timeIndexSchema = `CREATE INDEX IF NOT EXISTS %[1]s_by_time ON %[1]s (axis, t, object_id, inc, dec, corr, entries, sets, adj, n);`

// axis numbers in the bucket tables.
const (
	axisUsage    = 0
	axisRecorded = 1
)

// Options configure a Model.
type Options struct {
	Logger *slog.Logger
	// BatchEvents bounds the events folded in one transaction while catching up (default
	// 65536; the catch-up holds up to three batches at once, one folding, one queued, one
	// being written).
	BatchEvents int
	// BeforeCommit, if set, is called before each transaction commits, with the position it
	// would reach; an error rolls the transaction back and stops Run with it. Tests use it to
	// crash between transactions.
	BeforeCommit func(pos eventstore.Position) error
}

// Model is the persisted usage and value-as-of read model.
type Model struct {
	store   eventstore.Store
	path    string
	writeDB *sql.DB
	readDB  *sql.DB
	logger  *slog.Logger
	opts    Options

	fold *fold // owned by Run's goroutine (or the opener before Run)

	// infos is what reports show of each object (which never changes once added), for
	// selecting a report's objects without reading them all from the file. An object enters
	// it before the transaction that adds it commits, so every object a reader's snapshot
	// holds is in it.
	infoMu sync.RWMutex
	infos  map[int64]projections.UsageObject

	mu       sync.Mutex
	position eventstore.Position // the committed checkpoint
	changed  chan struct{}       // closed and replaced at each commit
	err      error               // why Run stopped
	loadedAt eventstore.Position
}

// Open opens (or creates) the read models' database at path, checks that the store holds its
// checkpoint (else, or if its schema is older, it starts again from an empty file), and loads
// what the fold needs to continue.
func Open(ctx context.Context, store eventstore.Store, path string, opts Options) (*Model, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.BatchEvents <= 0 {
		opts.BatchEvents = 65536
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("read model directory: %w", err)
	}
	m := &Model{store: store, path: path, logger: opts.Logger, opts: opts, changed: make(chan struct{})}
	for attempt := 0; ; attempt++ {
		ok, err := m.open(ctx)
		if err != nil {
			return nil, err
		}
		if ok {
			break
		}
		if attempt > 0 {
			return nil, errors.New("read model: a fresh database does not match the store")
		}
		// The events are the truth: a file that does not fit the store only costs a rebuild.
		_ = m.closeDBs()
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if err := os.Remove(path + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("remove stale read model: %w", err)
			}
		}
	}
	m.loadedAt = m.position
	return m, nil
}

// cacheKiB is the page cache of each connection.
const cacheKiB = 32 << 10

func dsn(path string, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	// NORMAL: a crash may lose the last transactions, never half of one; the checkpoint goes
	// back with the rows, and the fold resumes from it.
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", fmt.Sprintf("cache_size(%d)", -cacheKiB))
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	} else {
		// The multi-row upserts keep a statement journal: in memory it costs no system calls.
		q.Add("_pragma", "temp_store(MEMORY)")
	}
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

// open opens the databases and loads the fold; false means the file does not fit the store.
func (m *Model) open(ctx context.Context) (bool, error) {
	// Owner-only, like the rest of the data directory; SQLite gives its -wal and -shm files
	// the database file's mode.
	file, err := os.OpenFile(m.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return false, fmt.Errorf("open read model %s: %w", m.path, err)
	}
	if err := file.Close(); err != nil {
		return false, fmt.Errorf("open read model %s: %w", m.path, err)
	}
	if m.writeDB, err = sql.Open("sqlite", dsn(m.path, false)); err != nil {
		return false, fmt.Errorf("open read model %s: %w", m.path, err)
	}
	m.writeDB.SetMaxOpenConns(1)
	m.writeDB.SetConnMaxIdleTime(0)
	m.writeDB.SetConnMaxLifetime(0)
	stmts := []string{schema}
	for _, t := range levelTables {
		stmts = append(stmts, fmt.Sprintf(bucketSchema, t))
	}
	for _, t := range levelTables[levelDay:] {
		stmts = append(stmts, fmt.Sprintf(timeIndexSchema, t))
	}
	for _, s := range stmts {
		if _, err := m.writeDB.ExecContext(ctx, s); err != nil {
			_ = m.closeDBs()
			return false, fmt.Errorf("read model %s schema: %w", m.path, err)
		}
	}
	if m.readDB, err = sql.Open("sqlite", dsn(m.path, true)); err != nil {
		_ = m.closeDBs()
		return false, fmt.Errorf("open read model %s: %w", m.path, err)
	}
	m.readDB.SetMaxOpenConns(4)
	m.readDB.SetMaxIdleConns(4)
	m.readDB.SetConnMaxIdleTime(0)
	m.readDB.SetConnMaxLifetime(0)
	f, ok, err := loadFold(ctx, m.writeDB, m.store)
	if err != nil {
		_ = m.closeDBs()
		return false, err
	}
	if !ok {
		return false, nil
	}
	m.fold = f
	m.position = f.position
	m.infos = make(map[int64]projections.UsageObject, len(f.objects))
	for id, o := range f.objects {
		m.infos[id] = o.info
	}
	return true, nil
}

func (m *Model) closeDBs() error {
	var errs []error
	if m.readDB != nil {
		errs = append(errs, m.readDB.Close())
		m.readDB = nil
	}
	if m.writeDB != nil {
		errs = append(errs, m.writeDB.Close())
		m.writeDB = nil
	}
	return errors.Join(errs...)
}

// Close releases the database; call it after Run returned.
func (m *Model) Close() error { return m.closeDBs() }

// LoadedAt is the checkpoint the model started from.
func (m *Model) LoadedAt() eventstore.Position { return m.loadedAt }

// Position is the checkpoint: the last event the committed read model reflects.
func (m *Model) Position() eventstore.Position {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.position
}

// Err is why Run stopped, or nil while it runs.
func (m *Model) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// WaitFor blocks until the committed read model reflects every event up to pos, ctx ends, or
// Run stops.
func (m *Model) WaitFor(ctx context.Context, pos eventstore.Position) error {
	for {
		m.mu.Lock()
		reached, ch, stopped := m.position >= pos, m.changed, m.err
		m.mu.Unlock()
		if reached {
			return nil
		}
		if stopped != nil {
			return fmt.Errorf("read model stopped at %d: %w", m.Position(), stopped)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

func (m *Model) publish(pos eventstore.Position) {
	m.mu.Lock()
	m.position = pos
	ch := m.changed
	m.changed = make(chan struct{})
	m.mu.Unlock()
	close(ch)
}

// Run catches up with the store by reading it in large batches, then follows it live by a
// subscription, until ctx ends or a transaction fails.
func (m *Model) Run(ctx context.Context) error {
	err := m.run(ctx)
	if err == nil || errors.Is(err, context.Canceled) {
		err = errors.Join(errors.New("read model stopped"), err)
	}
	m.mu.Lock()
	m.err = err
	ch := m.changed
	m.changed = make(chan struct{})
	m.mu.Unlock()
	close(ch)
	return err
}

func (m *Model) run(ctx context.Context) error {
	// Catch up: one transaction per BatchEvents events, reading, folding and writing at once.
	if err := m.catchUp(ctx); err != nil {
		return err
	}
	position := func() eventstore.Position { return m.fold.position }
	err := projections.Follow(ctx, m.store, position, m.drain, m.logger.With("component", "readmodel"))
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("read model: %w", err)
	}
	return err
}

// drain folds live events: the events the subscription already holds go in one transaction.
func (m *Model) drain(ctx context.Context, sub eventstore.Subscription) error {
	buffered, _ := sub.(interface{ Buffered() int })
	for {
		ev, err := sub.Next(ctx)
		if err != nil {
			return err
		}
		b := m.fold.begin()
		for n := 0; ; n++ {
			m.apply(b, ev)
			if buffered == nil || n+1 >= m.opts.BatchEvents || buffered.Buffered() == 0 {
				break
			}
			if ev, err = sub.Next(ctx); err != nil {
				break
			}
		}
		if cerr := m.commit(ctx, b); cerr != nil {
			return cerr
		}
		if err != nil {
			return err
		}
	}
}

func (m *Model) apply(b *batch, ev eventstore.RecordedEvent) {
	if ev.Position <= m.fold.position {
		return // never fold an event twice, whatever the backend redelivers
	}
	if err := m.fold.apply(b, ev); err != nil {
		// As the current-state projection does: one unreadable event must not stop the model.
		m.logger.Error("read model skipped an event it cannot read", "type", ev.Type, "stream", ev.Stream, "revision", ev.Revision, "err", err)
	}
}

// commit writes a batch and its checkpoint in one transaction. On failure the fold in memory
// is ahead of the file, so it is reloaded from the file before Run returns the error.
func (m *Model) commit(ctx context.Context, b *batch) error {
	b.seal(m.fold)
	if err := m.commitSealed(ctx, b); err != nil {
		m.reload(ctx)
		return err
	}
	return nil
}

// reload puts the fold back to what the file holds, after a transaction failed.
func (m *Model) reload(ctx context.Context) {
	f, ok, lerr := loadFold(context.WithoutCancel(ctx), m.writeDB, m.store)
	if lerr == nil && ok {
		m.fold = f
	}
}

// commitSealed writes a sealed batch and its checkpoint in one transaction and publishes the
// checkpoint. It reads nothing of the fold, which may already be folding the next batch.
func (m *Model) commitSealed(ctx context.Context, b *batch) error {
	if len(b.newInfos) > 0 {
		m.infoMu.Lock()
		for _, info := range b.newInfos {
			m.infos[info.ObjectID] = info
		}
		m.infoMu.Unlock()
	}
	if err := m.write(ctx, b); err != nil {
		return fmt.Errorf("read model: commit at %d: %w", b.position, err)
	}
	m.publish(b.checkpoint.position)
	return nil
}

func (m *Model) write(ctx context.Context, b *batch) error {
	tx, err := m.writeDB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if err := b.write(ctx, tx); err != nil {
		return err
	}
	if m.opts.BeforeCommit != nil {
		if err := m.opts.BeforeCommit(b.checkpoint.position); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// objectState is what the fold keeps of a data object.
type objectState struct {
	info projections.UsageObject
	// value is the object's value as the usage fold counts it: every counted change, set and
	// initial value, in store order (so a set's adjustment is After minus it).
	value       int64
	stringValue string
	removed     bool
	revision    uint64
}

type pendingChange struct {
	objectID int64
	delta    int64
	logTime  int64 // Unix seconds
}

type pendingUpload struct {
	changes   []pendingChange
	persisted int // how many of changes are in the pending table
}

// fold is the in-memory part of the model's state, equal to what the file holds once a batch
// commits.
type fold struct {
	position eventstore.Position
	last     eventstore.RecordedEvent // stream, revision, id of the event at position
	events   int64
	keys     map[int64]domain.LicenseKey
	objects  map[int64]*objectState
	pending  map[uuid.UUID]*pendingUpload
	aborted  map[uuid.UUID]bool
}

func loadFold(ctx context.Context, db *sql.DB, store eventstore.Store) (*fold, bool, error) {
	f := &fold{keys: map[int64]domain.LicenseKey{}, objects: map[int64]*objectState{}, pending: map[uuid.UUID]*pendingUpload{}, aborted: map[uuid.UUID]bool{}}
	var version int64
	var lastID []byte
	err := db.QueryRowContext(ctx, `SELECT schema, position, last_stream, last_revision, last_id, events FROM meta WHERE id = 1`).
		Scan(&version, &f.position, &f.last.Stream, &f.last.Revision, &lastID, &f.events)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		_, err = db.ExecContext(ctx, `INSERT INTO meta (id, schema, position, last_stream, last_revision, last_id, events) VALUES (1, ?, 0, '', 0, x'', 0)`, schemaVersion)
		if err != nil {
			return nil, false, fmt.Errorf("read model: %w", err)
		}
		return f, true, nil
	case err != nil:
		return nil, false, fmt.Errorf("read model checkpoint: %w", err)
	}
	if version != schemaVersion {
		return nil, false, nil
	}
	if f.position != eventstore.Start {
		copy(f.last.ID[:], lastID)
		evs, err := store.ReadStream(ctx, f.last.Stream, eventstore.Forwards, f.last.Revision, 1)
		if err != nil && !errors.Is(err, eventstore.ErrStreamNotFound) {
			return nil, false, fmt.Errorf("check read model checkpoint: %w", err)
		}
		if len(evs) != 1 || evs[0].ID != f.last.ID || evs[0].Position != f.position {
			return nil, false, nil
		}
	}
	rows, err := db.QueryContext(ctx, `SELECT key_id, product_id, key FROM keys`)
	if err != nil {
		return nil, false, fmt.Errorf("read model keys: %w", err)
	}
	for rows.Next() {
		var k domain.LicenseKey
		if err := rows.Scan(&k.ID, &k.ProductID, &k.Key); err != nil {
			rows.Close()
			return nil, false, err
		}
		f.keys[k.ID] = k
	}
	rows.Close()
	rows, err = db.QueryContext(ctx, `SELECT object_id, name, owner_type, owner_id, product_id, key_id, key, value, string_value, removed, revision FROM objects`)
	if err != nil {
		return nil, false, fmt.Errorf("read model objects: %w", err)
	}
	for rows.Next() {
		o := &objectState{}
		if err := rows.Scan(&o.info.ObjectID, &o.info.Name, &o.info.Owner.Type, &o.info.Owner.ID, &o.info.ProductID, &o.info.KeyID, &o.info.Key,
			&o.value, &o.stringValue, &o.removed, &o.revision); err != nil {
			rows.Close()
			return nil, false, err
		}
		f.objects[o.info.ObjectID] = o
	}
	rows.Close()
	rows, err = db.QueryContext(ctx, `SELECT upload_id, object_id, delta, log_time FROM pending ORDER BY upload_id, seq`)
	if err != nil {
		return nil, false, fmt.Errorf("read model pending uploads: %w", err)
	}
	for rows.Next() {
		var id []byte
		var c pendingChange
		if err := rows.Scan(&id, &c.objectID, &c.delta, &c.logTime); err != nil {
			rows.Close()
			return nil, false, err
		}
		u, err := uuid.FromBytes(id)
		if err != nil {
			rows.Close()
			return nil, false, err
		}
		p := f.pending[u]
		if p == nil {
			p = &pendingUpload{}
			f.pending[u] = p
		}
		p.changes = append(p.changes, c)
		p.persisted++
	}
	rows.Close()
	rows, err = db.QueryContext(ctx, `SELECT upload_id FROM aborted`)
	if err != nil {
		return nil, false, fmt.Errorf("read model aborted uploads: %w", err)
	}
	for rows.Next() {
		var id []byte
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, false, err
		}
		u, err := uuid.FromBytes(id)
		if err != nil {
			rows.Close()
			return nil, false, err
		}
		f.aborted[u] = true
	}
	rows.Close()
	return f, true, rows.Err()
}

// sums are one bucket's measures.
type sums struct {
	inc, dec, corr, entries, sets, adj, n int64
}

func (s *sums) add(o sums) {
	s.inc += o.inc
	s.dec += o.dec
	s.corr += o.corr
	s.entries += o.entries
	s.sets += o.sets
	s.adj += o.adj
	s.n += o.n
}

type bucketKey struct {
	level  level
	axis   uint8
	object int64
	t      int64
}

type valueRow struct {
	objectID    int64
	recorded    int64
	position    eventstore.Position
	intValue    int32
	stringValue string
	removed     bool
	revision    uint64
}

// batch is what a transaction writes: the buckets' increments, the objects and keys that
// changed, the value index rows, and the uploads whose pending changes moved.
type batch struct {
	position eventstore.Position
	buckets  map[bucketKey]*sums
	newKeys  []domain.LicenseKey
	newObjs  map[int64]bool
	dirty    map[int64]bool
	values   []valueRow
	uploads  map[uuid.UUID]bool // uploads with pending changes added in this batch
	decided  []uuid.UUID        // uploads decided in this batch with changes in the file
	aborted  []uuid.UUID

	// Set by seal from the fold, so that the batch can be written while the fold goes on.
	newInfos   []projections.UsageObject
	objects    []objectRow
	pendings   []pendingRow
	checkpoint checkpoint
}

// objectRow is an object's row as of the end of a batch.
type objectRow struct {
	id          int64
	info        projections.UsageObject
	value       int64
	stringValue string
	removed     bool
	revision    uint64
}

// pendingRow is a change of an undecided upload that the file does not hold yet.
type pendingRow struct {
	upload uuid.UUID
	seq    int
	change pendingChange
}

// checkpoint is the meta row: the last event folded.
type checkpoint struct {
	position eventstore.Position
	last     eventstore.RecordedEvent
	events   int64
}

// seal copies from the fold what the batch's transaction writes besides the batch's own
// increments: the changed objects' rows, the new pending changes of undecided uploads (which
// the fold then counts as persisted: if the transaction fails the fold is reloaded from the
// file) and the checkpoint.
func (b *batch) seal(f *fold) {
	for id := range b.newObjs {
		b.newInfos = append(b.newInfos, f.objects[id].info)
	}
	b.objects = make([]objectRow, 0, len(b.dirty))
	for id := range b.dirty {
		o := f.objects[id]
		b.objects = append(b.objects, objectRow{id: id, info: o.info, value: o.value, stringValue: o.stringValue, removed: o.removed, revision: o.revision})
	}
	sort.Slice(b.objects, func(i, j int) bool { return b.objects[i].id < b.objects[j].id })
	for id := range b.uploads {
		p := f.pending[id]
		if p == nil {
			continue // decided in this batch
		}
		for i := p.persisted; i < len(p.changes); i++ {
			b.pendings = append(b.pendings, pendingRow{upload: id, seq: i, change: p.changes[i]})
		}
		p.persisted = len(p.changes)
	}
	b.checkpoint = checkpoint{position: f.position, last: f.last, events: f.events}
}

func (f *fold) begin() *batch {
	return &batch{buckets: map[bucketKey]*sums{}, newObjs: map[int64]bool{}, dirty: map[int64]bool{}, uploads: map[uuid.UUID]bool{}}
}

// change kinds, as in projections.Usage.
type changeKind uint8

const (
	changeIncrement changeKind = iota
	changeDecrement
	changeCorrection
	changeSet
	changeInitial
)

// count adds a change of o to its buckets on both axes and to its value.
func (f *fold) count(b *batch, o *objectState, kind changeKind, delta int64, usage, recorded time.Time) {
	o.value += delta
	b.dirty[o.info.ObjectID] = true
	s := sums{n: 1}
	switch kind {
	case changeIncrement:
		s.inc, s.entries = delta, 1
	case changeDecrement:
		s.dec, s.entries = -delta, 1
	case changeCorrection:
		s.corr, s.entries = delta, 1
	case changeSet:
		s.sets, s.adj = 1, delta
	case changeInitial:
		s.adj = delta
	}
	for axis, t := range [2]time.Time{usage, recorded} {
		sec := t.Unix()
		for l := levelQuarter; l < levels; l++ {
			k := bucketKey{level: l, axis: uint8(axis), object: o.info.ObjectID, t: l.index(sec)}
			acc := b.buckets[k]
			if acc == nil {
				acc = &sums{}
				b.buckets[k] = acc
			}
			acc.add(s)
		}
	}
}

// snapshot records o's value after event ev in the value-as-of index.
func (f *fold) snapshot(b *batch, o *objectState, ev eventstore.RecordedEvent) {
	b.dirty[o.info.ObjectID] = true
	b.values = append(b.values, valueRow{
		objectID: o.info.ObjectID, recorded: ev.Recorded.UnixNano(), position: ev.Position,
		intValue: int32(o.value), stringValue: o.stringValue, removed: o.removed, revision: o.revision,
	})
}

// object returns the object of an event of its stream (nil for any other stream).
func (f *fold) object(ev eventstore.RecordedEvent) *objectState {
	id, ok := domain.ParseDataObjectStream(ev.Stream)
	if !ok {
		return nil
	}
	return f.objects[id]
}

// apply folds one event, as projections.Usage and the current state do.
func (f *fold) apply(b *batch, ev eventstore.RecordedEvent) error {
	f.position, f.last, b.position = ev.Position, eventstore.RecordedEvent{Stream: ev.Stream, Revision: ev.Revision, ID: ev.ID}, ev.Position
	f.events++
	switch ev.Type {
	case domain.EventKeyCreated:
		var d domain.KeyCreated
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return err
		}
		k := domain.LicenseKey{ID: d.KeyID, ProductID: d.ProductID, Key: d.Key}
		f.keys[d.KeyID] = k
		b.newKeys = append(b.newKeys, k)
	case domain.EventDataObjectAdded:
		var d domain.DataObjectAdded
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return err
		}
		info := projections.UsageObject{ObjectID: d.ObjectID, Name: d.Name, Owner: d.Owner}
		switch d.Owner.Type {
		case domain.OwnerProduct:
			info.ProductID = d.Owner.ID
		case domain.OwnerKey:
			k := f.keys[d.Owner.ID]
			info.ProductID, info.KeyID, info.Key = k.ProductID, k.ID, k.Key
		}
		o := &objectState{info: info, stringValue: d.StringValue, revision: ev.Revision}
		f.objects[d.ObjectID] = o
		b.newObjs[d.ObjectID] = true
		f.count(b, o, changeInitial, int64(d.IntValue), d.At, ev.Recorded)
		f.snapshot(b, o, ev)
	case domain.EventIntValueSet:
		var d domain.IntValueSet
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return err
		}
		if o := f.objects[d.ObjectID]; o != nil {
			f.count(b, o, changeSet, int64(d.After)-o.value, d.At, ev.Recorded)
		}
		if o := f.object(ev); o != nil {
			o.revision = ev.Revision
			f.snapshot(b, o, ev)
		}
	case domain.EventStringValueSet:
		var d domain.StringValueSet
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return err
		}
		if o := f.object(ev); o != nil {
			o.stringValue, o.revision = d.After, ev.Revision
			f.snapshot(b, o, ev)
		}
	case domain.EventIncrementApplied, domain.EventDecrementApplied:
		d, err := domain.DecodeValueChanged(ev.Data)
		if err != nil {
			return err
		}
		delta := int64(domain.DirectionOf(ev.Type)) * d.Amount
		if d.Upload != nil {
			if !f.aborted[d.Upload.UploadID] {
				p := f.pending[d.Upload.UploadID]
				if p == nil {
					p = &pendingUpload{}
					f.pending[d.Upload.UploadID] = p
				}
				p.changes = append(p.changes, pendingChange{objectID: d.ObjectID, delta: delta, logTime: d.Upload.LogTimestamp.Unix()})
				b.uploads[d.Upload.UploadID] = true
			}
		} else if o := f.objects[d.ObjectID]; o != nil {
			kind := changeIncrement
			switch {
			case d.Correction != "":
				kind = changeCorrection
			case delta < 0:
				kind = changeDecrement
			}
			f.count(b, o, kind, delta, d.At, ev.Recorded)
		}
		if o := f.object(ev); o != nil {
			o.revision = ev.Revision
			f.snapshot(b, o, ev)
		}
	case domain.EventDataObjectRemoved:
		if o := f.object(ev); o != nil {
			o.removed, o.revision = true, ev.Revision
			f.snapshot(b, o, ev)
		}
	case domain.EventUploadCommitted, domain.EventUploadAborted:
		var d struct{ UploadID uuid.UUID }
		var err error
		if d.UploadID, _, err = domain.DecodeUploadDecision(ev.Type, ev.Data); err != nil {
			return err
		}
		p := f.pending[d.UploadID]
		delete(f.pending, d.UploadID)
		if p != nil {
			b.uploads[d.UploadID] = true
			if p.persisted > 0 {
				b.decided = append(b.decided, d.UploadID)
			}
		}
		if ev.Type == domain.EventUploadAborted {
			if !f.aborted[d.UploadID] {
				f.aborted[d.UploadID] = true
				b.aborted = append(b.aborted, d.UploadID)
			}
			return nil
		}
		if p == nil {
			return nil
		}
		var touched []*objectState
		seen := map[int64]bool{}
		logTime := func(sec int64) time.Time { return time.Unix(sec, 0) }
		for _, c := range p.changes {
			o := f.objects[c.objectID]
			if o == nil {
				continue
			}
			kind := changeIncrement
			if c.delta < 0 {
				kind = changeDecrement
			}
			f.count(b, o, kind, c.delta, logTime(c.logTime), ev.Recorded)
			if !seen[c.objectID] {
				seen[c.objectID] = true
				touched = append(touched, o)
			}
		}
		// The values change when the commit is recorded: that is when they count.
		for _, o := range touched {
			f.snapshot(b, o, ev)
		}
	}
	return nil
}

// rowsPerStatement is how many rows one INSERT carries: one statement per row costs most of
// the time of a batch in the driver's per-call work.
const rowsPerStatement = 64

// execRows inserts rows of cols values each (rows holds them one row after the other) with
// statements of up to rowsPerStatement rows: head is "INSERT INTO t (columns)", tail what
// follows the VALUES (an ON CONFLICT clause).
func execRows(ctx context.Context, tx *sql.Tx, head, tail string, cols int, rows []any) error {
	one := "(" + strings.Repeat("?, ", cols-1) + "?)"
	query := func(n int) string {
		return head + " VALUES " + strings.Repeat(one+", ", n-1) + one + " " + tail
	}
	var full *sql.Stmt
	defer func() {
		if full != nil {
			full.Close()
		}
	}()
	for len(rows) > 0 {
		n := min(len(rows)/cols, rowsPerStatement)
		args := rows[:n*cols]
		var err error
		if n == rowsPerStatement {
			if full == nil {
				if full, err = tx.PrepareContext(ctx, query(n)); err != nil {
					return err
				}
			}
			_, err = full.ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, query(n), args...)
		}
		if err != nil {
			return err
		}
		rows = rows[n*cols:]
	}
	return nil
}

// write puts a sealed batch and the checkpoint in tx.
func (b *batch) write(ctx context.Context, tx *sql.Tx) error {
	// A context that cannot be cancelled: the driver then skips its per-statement interrupt
	// watcher. Cancelling mid-batch would only roll back the transaction anyway.
	ctx = context.WithoutCancel(ctx)
	exec := func(query string, args ...any) error {
		_, err := tx.ExecContext(ctx, query, args...)
		return err
	}
	for _, k := range b.newKeys {
		if err := exec(`INSERT OR REPLACE INTO keys (key_id, product_id, key) VALUES (?, ?, ?)`, k.ID, k.ProductID, k.Key); err != nil {
			return fmt.Errorf("keys: %w", err)
		}
	}
	if len(b.objects) > 0 {
		st, err := tx.PrepareContext(ctx, `INSERT INTO objects (object_id, name, owner_type, owner_id, product_id, key_id, key, value, string_value, removed, revision)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (object_id) DO UPDATE SET value = excluded.value, string_value = excluded.string_value, removed = excluded.removed, revision = excluded.revision,
			name = excluded.name, owner_type = excluded.owner_type, owner_id = excluded.owner_id, product_id = excluded.product_id, key_id = excluded.key_id, key = excluded.key`)
		if err != nil {
			return err
		}
		for _, o := range b.objects {
			if _, err := st.ExecContext(ctx, o.id, o.info.Name, int64(o.info.Owner.Type), o.info.Owner.ID, o.info.ProductID, o.info.KeyID, o.info.Key,
				o.value, o.stringValue, o.removed, int64(o.revision)); err != nil {
				st.Close()
				return fmt.Errorf("objects: %w", err)
			}
		}
		st.Close()
	}
	// In key order: neighbouring rows share B-tree pages, which a random order would touch
	// again and again.
	keys := make([]bucketKey, 0, len(b.buckets))
	for k := range b.buckets {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, c := keys[i], keys[j]
		if a.level != c.level {
			return a.level < c.level
		}
		if a.axis != c.axis {
			return a.axis < c.axis
		}
		if a.object != c.object {
			return a.object < c.object
		}
		return a.t < c.t
	})
	for l := levelQuarter; l < levels; l++ {
		var rows []any
		for _, k := range keys {
			if k.level == l {
				s := b.buckets[k]
				rows = append(rows, int64(k.axis), k.object, k.t, s.inc, s.dec, s.corr, s.entries, s.sets, s.adj, s.n)
			}
		}
		err := execRows(ctx, tx, `INSERT INTO `+levelTables[l]+` (axis, object_id, t, inc, dec, corr, entries, sets, adj, n)`,
			`ON CONFLICT (axis, object_id, t) DO UPDATE SET inc = inc + excluded.inc, dec = dec + excluded.dec, corr = corr + excluded.corr,
			entries = entries + excluded.entries, sets = sets + excluded.sets, adj = adj + excluded.adj, n = n + excluded.n`, 10, rows)
		if err != nil {
			return fmt.Errorf("%s: %w", levelTables[l], err)
		}
	}
	if len(b.values) > 0 {
		sort.Slice(b.values, func(i, j int) bool {
			a, c := b.values[i], b.values[j]
			if a.objectID != c.objectID {
				return a.objectID < c.objectID
			}
			if a.recorded != c.recorded {
				return a.recorded < c.recorded
			}
			return a.position < c.position
		})
		rows := make([]any, 0, 7*len(b.values))
		for _, v := range b.values {
			rows = append(rows, v.objectID, v.recorded, int64(v.position), int64(v.intValue), v.stringValue, v.removed, int64(v.revision))
		}
		if err := execRows(ctx, tx, `INSERT OR REPLACE INTO value_at (object_id, recorded, position, int_value, string_value, removed, revision)`, "", 7, rows); err != nil {
			return fmt.Errorf("value_at: %w", err)
		}
	}
	for _, id := range b.decided {
		if err := exec(`DELETE FROM pending WHERE upload_id = ?`, id[:]); err != nil {
			return fmt.Errorf("pending: %w", err)
		}
	}
	if len(b.pendings) > 0 {
		rows := make([]any, 0, 5*len(b.pendings))
		for _, r := range b.pendings {
			rows = append(rows, r.upload[:], r.seq, r.change.objectID, r.change.delta, r.change.logTime)
		}
		if err := execRows(ctx, tx, `INSERT INTO pending (upload_id, seq, object_id, delta, log_time)`, "", 5, rows); err != nil {
			return fmt.Errorf("pending: %w", err)
		}
	}
	for _, id := range b.aborted {
		if err := exec(`INSERT OR IGNORE INTO aborted (upload_id) VALUES (?)`, id[:]); err != nil {
			return fmt.Errorf("aborted: %w", err)
		}
	}
	c := b.checkpoint
	if err := exec(`UPDATE meta SET position = ?, last_stream = ?, last_revision = ?, last_id = ?, events = ? WHERE id = 1`,
		int64(c.position), c.last.Stream, int64(c.last.Revision), c.last.ID[:], c.events); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}
