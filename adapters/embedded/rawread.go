package embedded

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync"

	"github.com/google/uuid"
	"modernc.org/libc"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/tallyledger/tally/domain/eventstore"
)

// rawConn is a read-only connection to the event database opened through SQLite's C API
// (modernc.org/sqlite/lib, the library under the database/sql driver), for the range reads of
// a replay only. The driver opens every connection SQLITE_OPEN_FULLMUTEX, boxes every integer
// column in an interface and copies every blob into its own allocation; for the millions of
// small rows of a replay that cost more than SQLite's own reading (docs/encoding.md,
// "Replay"). This connection is opened SQLITE_OPEN_NOMUTEX (it is used by one goroutine at a
// time: a pool hands it out), reads columns as integers, and copies the bodies of a range into
// a few shared buffers.
type rawConn struct {
	tls *libc.TLS
	db  uintptr
	// Prepared once: replayQuery, foldQuery and eventIDQuery.
	replay, fold, eventID uintptr
}

// openRawConn opens the database at path read-only for replay reads.
func openRawConn(path string) (_ *rawConn, err error) {
	c := &rawConn{tls: libc.NewTLS()}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	name, err := libc.CString(path)
	if err != nil {
		return nil, err
	}
	defer libc.Xfree(c.tls, name)
	pdb := libc.Xmalloc(c.tls, pointerSize)
	if pdb == 0 {
		return nil, errors.New("out of memory")
	}
	defer libc.Xfree(c.tls, pdb)
	rc := sqlite3.Xsqlite3_open_v2(c.tls, name, pdb, sqlite3.SQLITE_OPEN_READONLY|sqlite3.SQLITE_OPEN_NOMUTEX, 0)
	c.db = readPointer(pdb)
	if rc != sqlite3.SQLITE_OK {
		return nil, c.error("open", rc)
	}
	if rc := sqlite3.Xsqlite3_busy_timeout(c.tls, c.db, 10000); rc != sqlite3.SQLITE_OK {
		return nil, c.error("busy timeout", rc)
	}
	// The page cache of the store's other connections. No mmap_size: reading the file through
	// a mapping cost more CPU than pread here and added the mapped file to the resident set
	// (docs/encoding.md, "Replay").
	if err := c.exec("PRAGMA cache_size=-16384"); err != nil {
		return nil, err
	}
	for _, st := range []struct {
		sql  string
		stmt *uintptr
	}{{replayQuery, &c.replay}, {foldQuery, &c.fold}, {eventIDQuery, &c.eventID}} {
		if *st.stmt, err = c.prepare(st.sql); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// pointerSize is the size of a C pointer (a uintptr is as wide as a uint on every platform Go
// runs on).
const pointerSize = bits.UintSize / 8

// readPointer reads the pointer SQLite wrote at p (an out parameter).
func readPointer(p uintptr) uintptr {
	b := libc.GoBytes(p, pointerSize)
	if pointerSize == 4 {
		return uintptr(binary.NativeEndian.Uint32(b))
	}
	return uintptr(binary.NativeEndian.Uint64(b))
}

func (c *rawConn) prepare(sql string) (uintptr, error) {
	q, err := libc.CString(sql)
	if err != nil {
		return 0, err
	}
	defer libc.Xfree(c.tls, q)
	pstmt := libc.Xmalloc(c.tls, pointerSize)
	if pstmt == 0 {
		return 0, errors.New("out of memory")
	}
	defer libc.Xfree(c.tls, pstmt)
	if rc := sqlite3.Xsqlite3_prepare_v2(c.tls, c.db, q, -1, pstmt, 0); rc != sqlite3.SQLITE_OK {
		return 0, c.error("prepare", rc)
	}
	return readPointer(pstmt), nil
}

func (c *rawConn) exec(sql string) error {
	q, err := libc.CString(sql)
	if err != nil {
		return err
	}
	defer libc.Xfree(c.tls, q)
	if rc := sqlite3.Xsqlite3_exec(c.tls, c.db, q, 0, 0, 0); rc != sqlite3.SQLITE_OK {
		return c.error(sql, rc)
	}
	return nil
}

// error describes a failed call by SQLite's message.
func (c *rawConn) error(what string, rc int32) error {
	msg := libc.GoString(sqlite3.Xsqlite3_errstr(c.tls, rc))
	if c.db != 0 {
		msg = libc.GoString(sqlite3.Xsqlite3_errmsg(c.tls, c.db))
	}
	return fmt.Errorf("%s: %s (%d)", what, msg, rc)
}

func (c *rawConn) close() error {
	var err error
	for _, stmt := range []*uintptr{&c.replay, &c.fold, &c.eventID} {
		if *stmt != 0 {
			sqlite3.Xsqlite3_finalize(c.tls, *stmt)
			*stmt = 0
		}
	}
	if c.db != 0 {
		if rc := sqlite3.Xsqlite3_close_v2(c.tls, c.db); rc != sqlite3.SQLITE_OK {
			err = fmt.Errorf("close: %s (%d)", libc.GoString(sqlite3.Xsqlite3_errstr(c.tls, rc)), rc)
		}
		c.db = 0
	}
	c.tls.Close()
	return err
}

// bodyArena is where the bodies of a range are copied: a few large buffers instead of one
// allocation per row. A replay keeps no reference into a body once it is folded
// (foldAhead), so the buffers go with the range.
const bodyArena = 256 << 10

// readRange appends the events of (after, upTo] to events, naming streams and types from s's
// caches. With withIDs false it reads foldQuery, which leaves out the id column, and reads the
// id of the range's last event only (eventIDQuery). The checks of the column types are those
// of the driver read it replaces.
func (c *rawConn) readRange(ctx context.Context, s *Store, after, upTo eventstore.Position, events []eventstore.RecordedEvent, withIDs bool) (_ []eventstore.RecordedEvent, err error) {
	stmt := c.fold
	if withIDs {
		stmt = c.replay
	}
	first := len(events)
	if events, err = c.readRows(ctx, s, stmt, after, upTo, events, withIDs); err != nil || withIDs || len(events) == first {
		return events, err
	}
	last := &events[len(events)-1]
	if last.ID, err = c.readEventID(last.Position); err != nil {
		return nil, err
	}
	return events, nil
}

// Columns of replayQuery and foldQuery (which stops before the id).
const (
	colPosition = iota
	colStream
	colRevision
	colType
	colData
	colID
)

// columnTypes are the SQLite types of replayQuery's columns; the data column may also be NULL
// (an empty body, as the driver reads it).
var columnTypes = [...]int32{
	colPosition: sqlite3.SQLITE_INTEGER, colStream: sqlite3.SQLITE_INTEGER, colRevision: sqlite3.SQLITE_INTEGER,
	colType: sqlite3.SQLITE_INTEGER, colData: sqlite3.SQLITE_BLOB, colID: sqlite3.SQLITE_BLOB,
}

func (c *rawConn) readRows(ctx context.Context, s *Store, stmt uintptr, after, upTo eventstore.Position, events []eventstore.RecordedEvent, withIDs bool) (_ []eventstore.RecordedEvent, err error) {
	tls := c.tls
	if rc := sqlite3.Xsqlite3_bind_int64(tls, stmt, 1, clampInt64(uint64(after))); rc != sqlite3.SQLITE_OK {
		return nil, c.error("bind", rc)
	}
	if rc := sqlite3.Xsqlite3_bind_int64(tls, stmt, 2, clampInt64(uint64(upTo))); rc != sqlite3.SQLITE_OK {
		return nil, c.error("bind", rc)
	}
	defer func() {
		// reset ends the statement's read transaction; it repeats the step's error, if any.
		if rc := sqlite3.Xsqlite3_reset(tls, stmt); rc != sqlite3.SQLITE_OK && err == nil {
			err = c.error("reset", rc)
		}
	}()
	if events == nil {
		events = make([]eventstore.RecordedEvent, 0, min(upTo-after, 1<<16))
	}
	columns := columnTypes[:colID]
	if withIDs {
		columns = columnTypes[:]
	}
	streams, types := s.streams.load(), s.types.load()
	var arena []byte
	for row := 0; ; row++ {
		if row&1023 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		switch rc := sqlite3.Xsqlite3_step(tls, stmt); rc {
		case sqlite3.SQLITE_ROW:
		case sqlite3.SQLITE_DONE:
			return events, nil
		default:
			return nil, c.error("step", rc)
		}
		for col, want := range columns {
			if got := sqlite3.Xsqlite3_column_type(tls, stmt, int32(col)); got != want && !(col == colData && got == sqlite3.SQLITE_NULL) {
				return nil, fmt.Errorf("event row after position %d has column %d of SQLite type %d, want %d", after, col, got, want)
			}
		}
		position := sqlite3.Xsqlite3_column_int64(tls, stmt, colPosition)
		var stream, typ string
		if stream, streams, err = s.streams.name(streams, sqlite3.Xsqlite3_column_int64(tls, stmt, colStream)); err != nil {
			return nil, fmt.Errorf("event at position %d: %w", position, err)
		}
		if typ, types, err = s.types.name(types, sqlite3.Xsqlite3_column_int64(tls, stmt, colType)); err != nil {
			return nil, fmt.Errorf("event at position %d: %w", position, err)
		}
		ev := eventstore.RecordedEvent{
			Position: eventstore.Position(position), Stream: stream,
			Revision: uint64(sqlite3.Xsqlite3_column_int64(tls, stmt, colRevision)), Type: typ,
		}
		if withIDs {
			if ev.ID, err = uuid.FromBytes(c.blob(stmt, colID)); err != nil {
				return nil, fmt.Errorf("event at position %d: %w", position, err)
			}
		}
		if body := c.blob(stmt, colData); len(body) > 0 { // nil for an empty body, as the driver gives it
			if cap(arena)-len(arena) < len(body) {
				arena = make([]byte, 0, max(bodyArena, len(body)))
			}
			n := len(arena)
			arena = append(arena, body...)
			ev.Data = arena[n:len(arena):len(arena)]
		}
		events = append(events, ev)
	}
}

// readEventID reads the id of the event at a position.
func (c *rawConn) readEventID(position eventstore.Position) (_ uuid.UUID, err error) {
	tls, stmt := c.tls, c.eventID
	if rc := sqlite3.Xsqlite3_bind_int64(tls, stmt, 1, clampInt64(uint64(position))); rc != sqlite3.SQLITE_OK {
		return uuid.UUID{}, c.error("bind", rc)
	}
	defer func() {
		if rc := sqlite3.Xsqlite3_reset(tls, stmt); rc != sqlite3.SQLITE_OK && err == nil {
			err = c.error("reset", rc)
		}
	}()
	switch rc := sqlite3.Xsqlite3_step(tls, stmt); rc {
	case sqlite3.SQLITE_ROW:
	case sqlite3.SQLITE_DONE:
		return uuid.UUID{}, fmt.Errorf("no event at position %d", position)
	default:
		return uuid.UUID{}, c.error("step", rc)
	}
	if got := sqlite3.Xsqlite3_column_type(tls, stmt, 0); got != sqlite3.SQLITE_BLOB {
		return uuid.UUID{}, fmt.Errorf("event at position %d has an id of SQLite type %d", position, got)
	}
	id, err := uuid.FromBytes(c.blob(stmt, 0))
	if err != nil {
		return uuid.UUID{}, fmt.Errorf("event at position %d: %w", position, err)
	}
	return id, nil
}

// blob returns a view of a blob column of stmt's current row, valid until the next step.
func (c *rawConn) blob(stmt uintptr, col int32) []byte {
	p := sqlite3.Xsqlite3_column_blob(c.tls, stmt, col)
	n := sqlite3.Xsqlite3_column_bytes(c.tls, stmt, col)
	if p == 0 || n <= 0 {
		return nil
	}
	return libc.GoBytes(p, int(n))
}

// rawConns is the pool of a store's replay connections, opened on first use and closed with
// the store. At most maxIdleRawConns wait idle, their page caches emptied: a replay reads each
// page once, and a server that replayed once at start should not keep those pages.
type rawConns struct {
	path   string
	mu     sync.Mutex
	idle   []*rawConn
	closed bool
	inUse  sync.WaitGroup // connections handed out: Close waits for their reads
}

const maxIdleRawConns = 4

func (p *rawConns) get() (*rawConn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, eventstore.ErrClosed
	}
	p.inUse.Add(1)
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()
	c, err := openRawConn(p.path)
	if err != nil {
		p.inUse.Done()
		return nil, err
	}
	return c, nil
}

// put hands a connection back, closing it when the store closed meanwhile or enough wait.
func (p *rawConns) put(c *rawConn) {
	defer p.inUse.Done()
	sqlite3.Xsqlite3_db_release_memory(c.tls, c.db)
	p.mu.Lock()
	if !p.closed && len(p.idle) < maxIdleRawConns {
		p.idle = append(p.idle, c)
		c = nil
	}
	p.mu.Unlock()
	if c != nil {
		_ = c.close()
	}
}

// close waits for the reads in flight (a range: milliseconds) and closes every connection.
func (p *rawConns) close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.inUse.Wait()
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	var errs []error
	for _, c := range idle {
		errs = append(errs, c.close())
	}
	return errors.Join(errs...)
}
