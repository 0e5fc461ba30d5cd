package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain/eventstore"
)

// eventColumns are an event's columns with its metadata body, joined from the metadata row it
// shares (NULL, read as nil, for empty metadata); streamID is a stream name's id, NULL for a
// name the database does not hold.
const (
	eventColumns = `e.position, e.stream, e.revision, e.id, e.type, e.data, m.body, e.recorded FROM events e LEFT JOIN metadata m ON m.id = e.metadata`
	streamID     = `(SELECT id FROM streams WHERE name = ?)`
)

// readStatements are prepared once on the read pool.
type readStatements struct {
	forwards, backwards, all, exists *sql.Stmt
}

func (r *readStatements) prepare(ctx context.Context, db *sql.DB) error {
	var err error
	prepare := func(query string) *sql.Stmt {
		if err != nil {
			return nil
		}
		var stmt *sql.Stmt
		stmt, err = db.PrepareContext(ctx, query)
		return stmt
	}
	r.forwards = prepare(`SELECT ` + eventColumns + ` WHERE e.stream = ` + streamID + ` AND e.revision >= ? ORDER BY e.revision LIMIT ?`)
	r.backwards = prepare(`SELECT ` + eventColumns + ` WHERE e.stream = ` + streamID + ` AND e.revision <= ? ORDER BY e.revision DESC LIMIT ?`)
	r.all = prepare(`SELECT ` + eventColumns + ` WHERE e.position > ? ORDER BY e.position LIMIT ?`)
	r.exists = prepare(`SELECT 1 FROM events WHERE stream = ` + streamID + ` LIMIT 1`)
	if err != nil {
		return fmt.Errorf("prepare reads: %w", err)
	}
	return nil
}

func (r *readStatements) close() {
	for _, stmt := range []*sql.Stmt{r.forwards, r.backwards, r.all, r.exists} {
		if stmt != nil {
			_ = stmt.Close()
		}
	}
}

// ReadStream returns up to max (> 0) events of stream from revision from (inclusive) in dir.
func (s *Store) ReadStream(ctx context.Context, stream string, dir eventstore.Direction, from uint64, max int) ([]eventstore.RecordedEvent, error) {
	if s.isClosing() {
		return nil, fmt.Errorf("read stream %q: %w", stream, eventstore.ErrClosed)
	}
	if max <= 0 {
		return nil, fmt.Errorf("read stream %q: max %d is not positive", stream, max)
	}
	stmt := s.reads.forwards
	if dir == eventstore.Backwards {
		stmt = s.reads.backwards
	}
	// Streams are usually short: don't size the result for max.
	events, err := s.query(ctx, stmt, min(max, 64), stream, clampInt64(from), max)
	if err != nil {
		return nil, fmt.Errorf("read stream %q: %w", stream, err)
	}
	if len(events) > 0 {
		return events, nil
	}
	var one int
	switch err := s.reads.exists.QueryRowContext(ctx, stream).Scan(&one); {
	case errors.Is(err, sql.ErrNoRows):
		return nil, fmt.Errorf("read stream %q: %w", stream, eventstore.ErrStreamNotFound)
	case err != nil:
		return nil, fmt.Errorf("read stream %q: %w", stream, s.closedError(err))
	}
	return events, nil
}

// ReadAll returns up to max (> 0) events of all streams after position from, in global order.
func (s *Store) ReadAll(ctx context.Context, from eventstore.Position, max int) ([]eventstore.RecordedEvent, error) {
	if s.isClosing() {
		return nil, fmt.Errorf("read all: %w", eventstore.ErrClosed)
	}
	if max <= 0 {
		return nil, fmt.Errorf("read all: max %d is not positive", max)
	}
	// Size the result once instead of growing it: a full page, or only as many events as follow
	// up to the committed head (a subscriber near the head, a catch-up's last read), so that a
	// short read does not allocate and clear a whole page. A commit after this look only makes
	// the slice grow.
	capacity := min(max, 4096)
	switch head, _ := s.committedHead(); {
	case head <= from:
		capacity = 0
	case head-from < eventstore.Position(capacity):
		capacity = int(head - from)
	}
	events, err := s.query(ctx, s.reads.all, capacity, clampInt64(uint64(from)), max)
	if err != nil {
		return nil, fmt.Errorf("read all after %d: %w", from, err)
	}
	return events, nil
}

func (s *Store) query(ctx context.Context, stmt *sql.Stmt, capacity int, args ...any) ([]eventstore.RecordedEvent, error) {
	rows, err := stmt.QueryContext(ctx, args...)
	if err != nil {
		return nil, s.closedError(err)
	}
	defer rows.Close()
	events := make([]eventstore.RecordedEvent, 0, capacity)
	streams, types := s.streams.load(), s.types.load()
	for rows.Next() {
		var (
			ev                 eventstore.RecordedEvent
			position, revision int64
			stream, typ        int64
			recorded           int64
			id                 []byte
		)
		if err := rows.Scan(&position, &stream, &revision, &id, &typ, &ev.Data, &ev.Metadata, &recorded); err != nil {
			return nil, s.closedError(err)
		}
		if ev.Stream, streams, err = s.streams.name(streams, stream); err != nil {
			return nil, fmt.Errorf("event at position %d: %w", position, err)
		}
		if ev.Type, types, err = s.types.name(types, typ); err != nil {
			return nil, fmt.Errorf("event at position %d: %w", position, err)
		}
		if ev.ID, err = uuid.FromBytes(id); err != nil {
			return nil, fmt.Errorf("event at position %d: %w", position, err)
		}
		ev.Position = eventstore.Position(position)
		ev.Revision = uint64(revision)
		ev.Recorded = time.Unix(0, recorded).UTC()
		events = append(events, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, s.closedError(err)
	}
	return events, nil
}

// clampInt64 maps revisions and positions beyond SQLite's integer range (End) to its top.
func clampInt64(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}
