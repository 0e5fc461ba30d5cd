package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/tallyledger/tally/domain/eventstore"
)

// WithBulkLoad opens the store for loading many events at once into a data directory that
// nothing else uses (tally bench --workload history). The writer commits straight into the
// database file (a rollback journal kept in memory instead of the WAL, so each page is written
// once rather than to the WAL and again at a checkpoint) with synchronous=OFF (a commit waits
// for no fsync). Every guarantee of Append holds but one: an acknowledged append is durable only
// once Close has returned nil. Close makes it so: it puts the database back in WAL mode with
// synchronous=FULL and syncs the file and the directory. A load that stops before Close returns
// (a crash, a power cut) may leave a damaged database: delete the directory, never serve it.
// Reads, subscriptions (readers wait for a commit in progress instead of reading beside it),
// positions in commit order and expected revisions are as in the default mode (the contract
// suite runs on it: TestContractBulkLoad).
func WithBulkLoad() Option {
	return func(o *options) {
		o.bulk = true
	}
}

// bulkPragmas are the connection settings of a bulk load (see WithBulkLoad).
func bulkPragmas(readOnly bool) []string {
	if readOnly {
		return nil // the readers take the journal mode the writer set
	}
	return []string{
		"journal_mode(MEMORY)",
		"synchronous(OFF)",
		// The default mode's 16 MiB: a larger page cache made every commit slower (SQLite
		// walks the cache when a transaction ends), 64 MiB by a fifth, 256 MiB by half.
		"cache_size(-16384)",
		// A multi-row INSERT keeps a statement journal: in memory it costs no system calls.
		"temp_store(MEMORY)",
	}
}

// syncBulkLoad makes a bulk load durable and the database an ordinary store again: called by
// Close once the writer has stopped. Indexes that DeferIndexes dropped are built first.
func (s *Store) syncBulkLoad() error {
	ctx := context.Background()
	conn, err := s.writeDB.Conn(ctx)
	if err != nil {
		return fmt.Errorf("bulk load: sync: %w", err)
	}
	defer conn.Close()
	if err := buildDeferredIndexes(ctx, conn); err != nil {
		return err
	}
	if _, err := conn.ExecContext(ctx, "PRAGMA synchronous=FULL"); err != nil {
		return fmt.Errorf("bulk load: sync: %w", err)
	}
	var mode string
	if err := conn.QueryRowContext(ctx, "PRAGMA journal_mode=WAL").Scan(&mode); err != nil {
		return fmt.Errorf("bulk load: back to WAL mode: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("bulk load: the database stayed in journal mode %q", mode)
	}
	// Every page was written with synchronous=OFF: sync the file, then its directory entry
	// (the database file may be new).
	if err := syncFile(filepath.Join(s.dir, DatabaseFile)); err != nil {
		return fmt.Errorf("bulk load: sync the database file: %w", err)
	}
	if err := syncFile(s.dir); err != nil {
		return fmt.Errorf("bulk load: sync the directory: %w", err)
	}
	return nil
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return errors.Join(f.Sync(), f.Close())
}

// PendingAppend is an append queued by AppendNoWait: its result comes with the commit that
// takes it. It is safe for concurrent use.
type PendingAppend struct {
	req   *appendRequest
	once  sync.Once
	got   chan struct{} // closed once reply holds the writer's answer
	reply appendReply
}

// take keeps the writer's answer, received by whichever caller got it from the request.
func (p *PendingAppend) take(r appendReply) {
	p.once.Do(func() {
		p.reply = r
		close(p.got)
	})
}

// AppendNoWait queues an append for the writer as Append does, but returns as soon as it is
// queued (it blocks only while the queue is full) instead of waiting for its commit: a bulk
// loader that knows each stream's revisions in advance can then prepare its next appends while
// the writer commits these, and keep the queue full, so that each commit takes many appends.
// Appends queued by one goroutine are applied in the order it queued them; Wait gives each
// one's result, exactly as Append would have returned it (a wrong expected revision is refused
// and writes nothing). Only a store opened WithBulkLoad takes them: a caller that does not wait
// for its commit has no use for the default mode's durability per commit.
func (s *Store) AppendNoWait(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (*PendingAppend, error) {
	if !s.opts.bulk {
		return nil, errors.New("append without waiting: the store is not in bulk-load mode")
	}
	if stream == "" {
		return nil, errors.New("append: empty stream name")
	}
	req := &appendRequest{ctx: ctx, stream: stream, expected: expected, events: events, done: make(chan appendReply, 1)}
	s.sendMu.RLock()
	defer s.sendMu.RUnlock()
	if s.closed {
		return nil, fmt.Errorf("append to %q: %w", stream, eventstore.ErrClosed)
	}
	select {
	case s.queue <- req:
		return &PendingAppend{req: req, got: make(chan struct{})}, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("append to %q: %w", stream, ctx.Err())
	}
}

// Done reports whether the append's result is in (Wait then returns at once).
func (p *PendingAppend) Done() bool {
	select {
	case <-p.got:
		return true
	case r := <-p.req.done:
		p.take(r)
		return true
	default:
		return false
	}
}

// Wait returns the append's result once its commit is over, or ctx's error if ctx ends first
// (the append may then still be committed). It may be called again, and from several
// goroutines at once: each gets the same result.
func (p *PendingAppend) Wait(ctx context.Context) (eventstore.AppendResult, error) {
	select {
	case <-p.got:
	case r := <-p.req.done:
		p.take(r)
	case <-ctx.Done():
		return eventstore.AppendResult{}, fmt.Errorf("append to %q: %w", p.req.stream, ctx.Err())
	}
	return p.reply.result, p.reply.err
}

// deferredIndexesTable records, while a bulk load runs without them, the indexes DeferIndexes
// dropped: their names and the SQL that creates them again.
const deferredIndexesTable = "bulk_deferred_indexes"

// unfinishedBulkLoad is added to the schema version (PRAGMA user_version) while indexes are
// deferred, in the same transaction that drops them: a database whose bulk load stopped before
// Close built them again then has a schema version no build knows, and Open refuses it rather
// than serve a store without its stream index.
const unfinishedBulkLoad = 1 << 24

// DeferIndexes drops the events table's indexes (those the schema names; a constraint's
// automatic index cannot be dropped and stays) for the rest of a bulk load, and Close builds
// them again, from the SQL that created them, before it syncs: one sort of every key at the
// end instead of a B-tree insert per event at a random leaf. Uniqueness is then checked once,
// when Close builds a UNIQUE index (the writer's expected-revision check stays as it is on
// every append), and a failure fails Close and leaves the database refused by Open.
//
// Every append and read stays correct without the indexes, but a read by stream (a stream's
// head, when the writer has not cached it, or ReadStream) then scans the whole table: call it
// once every stream the rest of the load appends to has been appended to (the writer keeps
// the heads it has seen), and read nothing by stream until Close. It waits for the commit in
// progress. Until Close has returned nil the database is marked unfinished (its schema
// version), so that a load that stops half-way is refused by Open, never served.
func (s *Store) DeferIndexes(ctx context.Context) error {
	if !s.opts.bulk {
		return errors.New("defer indexes: the store is not in bulk-load mode")
	}
	// The writer owns the write connection and keeps it, and starts its next transaction as
	// soon as one ends: a second connection would rarely get the write lock. So no append is
	// queued meanwhile (sendMu), and the writer is first left idle (waitForIdleWriter).
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if s.closed {
		return fmt.Errorf("defer indexes: %w", eventstore.ErrClosed)
	}
	if err := s.waitForIdleWriter(ctx); err != nil {
		return fmt.Errorf("defer indexes: %w", err)
	}
	db, err := sql.Open("sqlite", dsn(filepath.Join(s.dir, DatabaseFile), false, true))
	if err != nil {
		return fmt.Errorf("defer indexes: %w", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("defer indexes: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("defer indexes: %w", err)
	}
	if err := deferIndexes(ctx, conn); err != nil {
		_, _ = conn.ExecContext(ctx, "ROLLBACK")
		return fmt.Errorf("defer indexes: %w", err)
	}
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		_, _ = conn.ExecContext(ctx, "ROLLBACK")
		return fmt.Errorf("defer indexes: %w", err)
	}
	return nil
}

// waitForIdleWriter returns once the writer has finished every append queued so far, with
// sendMu held by the caller so that none is queued after them: the writer then waits for the
// queue with no transaction open. It queues an empty append to the stream "", which Append
// refuses as a name (so no such stream exists): the writer answers it, writing nothing, after
// the transaction of the appends queued before it has ended.
func (s *Store) waitForIdleWriter(ctx context.Context) error {
	req := &appendRequest{ctx: ctx, expected: eventstore.Any(), done: make(chan appendReply, 1)}
	select {
	case s.queue <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	// The writer answers every request it takes, also when ctx has ended meanwhile.
	return (<-req.done).err
}

// deferIndexes drops the events table's named indexes inside the caller's transaction,
// recording them in deferredIndexesTable, and marks the schema version unfinished.
func deferIndexes(ctx context.Context, conn *sql.Conn) error {
	var version int
	if err := conn.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return err
	}
	if version >= unfinishedBulkLoad {
		return errors.New("indexes are already deferred")
	}
	type index struct{ name, sql string }
	var indexes []index
	rows, err := conn.QueryContext(ctx, `SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND sql IS NOT NULL ORDER BY name`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var ix index
		if err := rows.Scan(&ix.name, &ix.sql); err != nil {
			_ = rows.Close()
			return err
		}
		indexes = append(indexes, ix)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return err
	}
	if _, err := conn.ExecContext(ctx, "CREATE TABLE "+deferredIndexesTable+" (name TEXT PRIMARY KEY, sql TEXT NOT NULL)"); err != nil {
		return err
	}
	for _, ix := range indexes {
		if _, err := conn.ExecContext(ctx, "INSERT INTO "+deferredIndexesTable+" (name, sql) VALUES (?, ?)", ix.name, ix.sql); err != nil {
			return err
		}
		if _, err := conn.ExecContext(ctx, "DROP INDEX "+quoteIdentifier(ix.name)); err != nil {
			return fmt.Errorf("drop index %s: %w", ix.name, err)
		}
	}
	_, err = conn.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", version+unfinishedBulkLoad))
	return err
}

// buildDeferredIndexes creates again the indexes DeferIndexes dropped, drops its record and
// takes the unfinished mark off the schema version, all in one transaction.
func buildDeferredIndexes(ctx context.Context, conn *sql.Conn) error {
	var tables int
	if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", deferredIndexesTable).Scan(&tables); err != nil {
		return fmt.Errorf("bulk load: look for deferred indexes: %w", err)
	}
	if tables == 0 {
		return nil
	}
	// The page cache stays at the bulk load's 16 MiB: 256 MiB made the build a third slower
	// (every page of the table read once is a new cache page to allocate) and sorts no faster.
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("bulk load: build the deferred indexes: %w", err)
	}
	err := func() error {
		rows, err := conn.QueryContext(ctx, "SELECT name, sql FROM "+deferredIndexesTable+" ORDER BY name")
		if err != nil {
			return err
		}
		var names, statements []string
		for rows.Next() {
			var name, stmt string
			if err := rows.Scan(&name, &stmt); err != nil {
				_ = rows.Close()
				return err
			}
			names, statements = append(names, name), append(statements, stmt)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return err
		}
		for i, stmt := range statements {
			if _, err := conn.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("index %s: %w", names[i], err)
			}
		}
		if _, err := conn.ExecContext(ctx, "DROP TABLE "+deferredIndexesTable); err != nil {
			return err
		}
		var version int
		if err := conn.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
			return err
		}
		if version < unfinishedBulkLoad {
			return fmt.Errorf("schema version %d is not marked as an unfinished bulk load", version)
		}
		_, err = conn.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", version-unfinishedBulkLoad))
		return err
	}()
	if err == nil {
		_, err = conn.ExecContext(ctx, "COMMIT")
	}
	if err != nil {
		_, _ = conn.ExecContext(ctx, "ROLLBACK")
		return fmt.Errorf("bulk load: build the deferred indexes (the database stays marked unfinished): %w", err)
	}
	return nil
}

// quoteIdentifier quotes an SQL identifier (a name read from sqlite_master).
func quoteIdentifier(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}
