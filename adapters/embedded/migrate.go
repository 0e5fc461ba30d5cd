package embedded

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The schema, version 2. Positions are rowids given out by the single writer in commit order;
// events are never deleted, so a position is never reused and always increases.
//
// An event row holds its stream and type as small integer ids (streams, event_types: dense
// from 1, cached in memory, names.go) and its metadata as a reference to a metadata row: the
// events of one write transaction that carry the same metadata body (the events of one append,
// an upload's entries) share one row, whose id is the position of the first of them. Empty
// metadata is NULL. The `(stream, revision)` uniqueness is an explicit named index, so that a
// load can drop it and build it once at the end.
const schemaV2Tables = `
CREATE TABLE streams (
	id   INTEGER PRIMARY KEY,
	name TEXT    NOT NULL UNIQUE
);
CREATE TABLE event_types (
	id   INTEGER PRIMARY KEY,
	name TEXT    NOT NULL UNIQUE
);
CREATE TABLE metadata (
	id   INTEGER PRIMARY KEY,
	body BLOB    NOT NULL
);
CREATE TABLE events (
	position INTEGER PRIMARY KEY,
	stream   INTEGER NOT NULL,
	revision INTEGER NOT NULL,
	id       BLOB    NOT NULL,
	type     INTEGER NOT NULL,
	data     BLOB    NOT NULL,
	metadata INTEGER,
	recorded INTEGER NOT NULL
);`

// streamIndex is the `(stream, revision)` uniqueness and the index of ReadStream.
const streamIndex = `CREATE UNIQUE INDEX events_stream_revision ON events (stream, revision)`

// migratingSuffix names the file a migration builds next to the database before it renames it
// over the database. A file left by a migration that did not finish is deleted at Open.
const migratingSuffix = ".migrating"

// prepareSchema makes the database at path a version-2 database: it creates the schema in a new
// (empty) file, migrates a version-1 database, and refuses one from a newer build. It runs
// before the store's own connections open, on a connection of its own.
func (s *Store) prepareSchema(ctx context.Context, path string) error {
	if err := os.Remove(path + migratingSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove an unfinished migration: %w", err)
	}
	version, hasEvents, err := schemaOf(ctx, path)
	if err != nil {
		return err
	}
	switch {
	case version > schemaVersion:
		return fmt.Errorf("schema version %d is newer than this build's %d", version, schemaVersion)
	case version == schemaVersion:
		return nil
	case version == 0 && !hasEvents:
		return createSchema(ctx, path)
	case version == 1 || version == 0:
		// Version 1 created its table before it set user_version: a version 0 database with
		// an events table is a version 1 one.
		return migrateV1(ctx, path, s.opts.logger, s.opts.migrationProgress)
	default:
		return fmt.Errorf("unknown schema version %d", version)
	}
}

// schemaOf reads the database's schema version and whether it has an events table.
func schemaOf(ctx context.Context, path string) (version int, hasEvents bool, err error) {
	db, err := sql.Open("sqlite", dsn(path, false, false))
	if err != nil {
		return 0, false, fmt.Errorf("open: %w", err)
	}
	defer db.Close()
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return 0, false, fmt.Errorf("read schema version: %w", err)
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'events'`).Scan(&n); err != nil {
		return 0, false, fmt.Errorf("read schema: %w", err)
	}
	return version, n > 0, nil
}

// createSchema creates the version-2 schema in an empty database, in one transaction.
func createSchema(ctx context.Context, path string) error {
	db, err := sql.Open("sqlite", dsn(path, false, false))
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	schema := "BEGIN IMMEDIATE;" + schemaV2Tables + "\n" + streamIndex + ";\n" + fmt.Sprintf("PRAGMA user_version = %d;\n", schemaVersion) + "COMMIT;"
	if _, err := db.ExecContext(ctx, schema); err != nil {
		_, _ = db.ExecContext(ctx, "ROLLBACK")
		return fmt.Errorf("create schema: %w", err)
	}
	return nil
}

// migrateV1 turns a version-1 database (stream, type and metadata in every row) into a
// version-2 one without ever leaving a half-migrated database behind: it builds the new
// database in a file of its own next to the old one, syncs it, and renames it over the old one,
// then syncs the directory. A kill at any moment leaves either the old database (and perhaps
// the unfinished new file, which the next Open deletes and builds again) or the new one.
//
// First the old database leaves WAL mode (SQLite checkpoints the WAL into it and deletes it):
// a WAL left next to the renamed file would otherwise be read as the new database's. Then its
// events are copied in position order: names get ids in the order they first appear, and the
// events of one v1 commit (one recorded time) that carry the same metadata share one metadata
// row, as the v2 writer stores them. The index is built once at the end.
func migrateV1(ctx context.Context, path string, logger *slog.Logger, progressEvery int) error {
	start := time.Now()
	if err := leaveWAL(ctx, path); err != nil {
		return fmt.Errorf("migrate schema 1 to 2: %w", err)
	}
	target := path + migratingSuffix
	if err := createPrivateFile(target); err != nil {
		return fmt.Errorf("migrate schema 1 to 2: %w", err)
	}
	copied, err := copyV1(ctx, path, target, logger, progressEvery, start)
	if err == nil {
		err = syncFile(target)
	}
	if err == nil {
		err = os.Rename(target, path)
	}
	if err == nil {
		err = syncFile(filepath.Dir(path))
	}
	if err != nil {
		_ = os.Remove(target)
		return fmt.Errorf("migrate schema 1 to 2: %w", err)
	}
	logger.Info("event store: migrated the database to schema 2", "path", path, "events", copied, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// leaveWAL puts the database in rollback-journal mode, which checkpoints and removes its WAL.
func leaveWAL(ctx context.Context, path string) error {
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer db.Close()
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode=DELETE").Scan(&mode); err != nil {
		return fmt.Errorf("leave WAL mode: %w", err)
	}
	if !strings.EqualFold(mode, "delete") {
		return fmt.Errorf("leave WAL mode: the database stayed in journal mode %q", mode)
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("leave WAL mode: %w", err)
	}
	if fi, err := os.Stat(path + "-wal"); err == nil && fi.Size() > 0 {
		return fmt.Errorf("leave WAL mode: %s-wal still holds %d bytes", path, fi.Size())
	}
	return nil
}

// copyV1 builds the version-2 database target from the version-1 database at path and returns
// how many events it copied. target is a scratch file until it is renamed: it is written
// without a journal and without syncs (the caller syncs it once).
func copyV1(ctx context.Context, path, target string, logger *slog.Logger, progressEvery int, start time.Time) (int64, error) {
	oldDB, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		return 0, fmt.Errorf("open the old database: %w", err)
	}
	defer oldDB.Close()
	q := url.Values{}
	// The index is built by a sort that spills to temporary files past the page cache (the
	// default temp_store), so that the memory a migration takes does not grow with the store.
	for _, pragma := range []string{"journal_mode(OFF)", "synchronous(OFF)", "cache_size(-65536)"} {
		q.Add("_pragma", pragma)
	}
	newDB, err := sql.Open("sqlite", "file:"+(&url.URL{Path: target}).EscapedPath()+"?"+q.Encode())
	if err != nil {
		return 0, fmt.Errorf("open the new database: %w", err)
	}
	defer newDB.Close()
	oldConn, err := oldDB.Conn(ctx)
	if err != nil {
		return 0, fmt.Errorf("open the old database: %w", err)
	}
	defer oldConn.Close()
	newConn, err := newDB.Conn(ctx)
	if err != nil {
		return 0, fmt.Errorf("open the new database: %w", err)
	}
	defer newConn.Close()

	var last sql.NullInt64
	if err := oldConn.QueryRowContext(ctx, `SELECT max(position) FROM events`).Scan(&last); err != nil {
		return 0, fmt.Errorf("read the old database: %w", err)
	}
	logger.Info("event store: migrating the database from schema 1 to 2", "path", path, "last_position", last.Int64)
	if _, err := newConn.ExecContext(ctx, schemaV2Tables+"\nBEGIN;"); err != nil {
		return 0, fmt.Errorf("create the new schema: %w", err)
	}
	c := &v1Copier{
		streams: make(map[string]int64), types: make(map[string]int64), metadata: make(map[string]int64),
		events:   newBatchInsert(newConn, "events", "position, stream, revision, id, type, data, metadata, recorded"),
		metaRows: newBatchInsert(newConn, "metadata", "id, body"),
	}
	defer c.events.close()
	defer c.metaRows.close()
	err = oldConn.Raw(func(dc any) error {
		q, ok := dc.(driver.QueryerContext)
		if !ok {
			return fmt.Errorf("the SQLite driver's connection (%T) does not query", dc)
		}
		rows, err := q.QueryContext(ctx, `SELECT position, stream, revision, id, type, data, metadata, recorded FROM events ORDER BY position`, nil)
		if err != nil {
			return err
		}
		defer rows.Close()
		row := make([]driver.Value, 8)
		for {
			if err := rows.Next(row); errors.Is(err, io.EOF) {
				return nil
			} else if err != nil {
				return err
			}
			if err := c.add(ctx, row); err != nil {
				return err
			}
			if progressEvery > 0 && c.copied%int64(progressEvery) == 0 {
				logger.Info("event store: migrating", "events", c.copied, "last_position", last.Int64, "elapsed", time.Since(start).Round(time.Millisecond))
			}
		}
	})
	if err != nil {
		return 0, fmt.Errorf("copy the events: %w", err)
	}
	if err := errors.Join(c.events.flush(ctx), c.metaRows.flush(ctx)); err != nil {
		return 0, fmt.Errorf("copy the events: %w", err)
	}
	for table, ids := range map[string]map[string]int64{"streams": c.streams, "event_types": c.types} {
		names := newBatchInsert(newConn, table, "id, name")
		var err error
		for name, id := range ids {
			if names.add(id, name) && err == nil {
				err = names.flush(ctx)
			}
		}
		err = errors.Join(err, names.flush(ctx))
		names.close()
		if err != nil {
			return 0, fmt.Errorf("copy the %s: %w", table, err)
		}
	}
	logger.Info("event store: migrating: building the stream index", "events", c.copied, "elapsed", time.Since(start).Round(time.Millisecond))
	if _, err := newConn.ExecContext(ctx, streamIndex+";\n"+fmt.Sprintf("PRAGMA user_version = %d;\n", schemaVersion)+"COMMIT;"); err != nil {
		return 0, fmt.Errorf("build the stream index: %w", err)
	}
	c.events.close() // its statements go before their connection
	c.metaRows.close()
	if err := errors.Join(newConn.Close(), newDB.Close()); err != nil {
		return 0, fmt.Errorf("close the new database: %w", err)
	}
	return c.copied, nil
}

// v1Copier turns version-1 rows into version-2 rows.
type v1Copier struct {
	streams, types map[string]int64
	// metadata maps the bodies of the current v1 commit (recorded) to their metadata row.
	metadata         map[string]int64
	recorded         int64
	events, metaRows *batchInsert
	copied           int64
}

// add copies one v1 row: position, stream, revision, id, type, data, metadata, recorded.
func (c *v1Copier) add(ctx context.Context, row []driver.Value) error {
	position, ok1 := row[0].(int64)
	stream, ok2 := row[1].(string)
	revision, ok3 := row[2].(int64)
	id, ok4 := row[3].([]byte)
	typ, ok5 := row[4].(string)
	data, ok6 := blobValue(row[5])
	metadata, ok7 := blobValue(row[6])
	recorded, ok8 := row[7].(int64)
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 || !ok7 || !ok8 {
		return fmt.Errorf("event row after %d events has unexpected column types %T %T %T %T %T %T %T %T", c.copied, row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7])
	}
	var meta any // NULL for empty metadata
	if len(metadata) > 0 {
		if recorded != c.recorded {
			clear(c.metadata)
			c.recorded = recorded
		}
		ref, ok := c.metadata[string(metadata)]
		if !ok {
			ref = position
			c.metadata[string(metadata)] = ref
			if c.metaRows.add(ref, metadata) {
				if err := c.metaRows.flush(ctx); err != nil {
					return err
				}
			}
		}
		meta = ref
	}
	if c.events.add(position, nameID(c.streams, stream), revision, id, nameID(c.types, typ), nonNil(data), meta, recorded) {
		if err := c.events.flush(ctx); err != nil {
			return err
		}
	}
	c.copied++
	return nil
}

// nameID returns name's id in ids, giving it the next one if it has none.
func nameID(ids map[string]int64, name string) int64 {
	id, ok := ids[name]
	if !ok {
		id = int64(len(ids) + 1)
		ids[name] = id
	}
	return id
}

// blobValue reads a BLOB column as the driver returns it: nil for an empty blob.
func blobValue(v driver.Value) ([]byte, bool) {
	switch b := v.(type) {
	case nil:
		return nil, true
	case []byte:
		return b, true
	case string: // never written so, but read as []byte by database/sql all the same
		return []byte(b), true
	}
	return nil, false
}
