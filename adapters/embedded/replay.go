package embedded

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain/eventstore"
)

const replayQuery = `SELECT position, stream, revision, id, type, data FROM events WHERE position > ? AND position <= ? ORDER BY position`

// ReadRangeForReplay returns the events with positions in (after, upTo], in global order,
// without their metadata and recorded time, which a replay of the state never reads, appended
// to buf[:0] (a caller that folds range after range hands back the slice of an earlier range:
// a replay allocates its event structs once, not per range). It is
// what projections.Rebuild and Verify read: positions are dense rowids here, so a replay reads
// several ranges at once on the read pool's connections. Rows are read through the SQLite
// driver's own interface, not database/sql's Scan: the driver already hands out fresh values,
// and the conversions and locking of Scan cost more than the SQLite read of a small event
// (docs/encoding.md, "Replay"). Streams and types are read as their integer ids and named from
// the store's cache: every event of a stream shares one string, and no name is read or
// allocated per row.
func (s *Store) ReadRangeForReplay(ctx context.Context, after, upTo eventstore.Position, buf []eventstore.RecordedEvent) ([]eventstore.RecordedEvent, error) {
	if s.isClosing() {
		return nil, fmt.Errorf("read range: %w", eventstore.ErrClosed)
	}
	if upTo <= after {
		return nil, nil
	}
	conn, err := s.readDB.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("read range (%d, %d]: %w", after, upTo, s.closedError(err))
	}
	defer conn.Close()
	var events []eventstore.RecordedEvent
	err = conn.Raw(func(dc any) error {
		q, ok := dc.(driver.QueryerContext)
		if !ok {
			return fmt.Errorf("the SQLite driver's connection (%T) does not query", dc)
		}
		events, err = s.readReplayRows(ctx, q, after, upTo, buf[:0])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read range (%d, %d]: %w", after, upTo, s.closedError(err))
	}
	return events, nil
}

func (s *Store) readReplayRows(ctx context.Context, q driver.QueryerContext, after, upTo eventstore.Position, events []eventstore.RecordedEvent) ([]eventstore.RecordedEvent, error) {
	rows, err := q.QueryContext(ctx, replayQuery, []driver.NamedValue{
		{Ordinal: 1, Value: clampInt64(uint64(after))}, {Ordinal: 2, Value: clampInt64(uint64(upTo))},
	})
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	if events == nil {
		events = make([]eventstore.RecordedEvent, 0, min(upTo-after, 1<<16))
	}
	row := make([]driver.Value, 6)
	streams, types := s.streams.load(), s.types.load()
	for {
		if err := rows.Next(row); errors.Is(err, io.EOF) {
			return events, nil
		} else if err != nil {
			return nil, err
		}
		position, ok1 := row[0].(int64)
		streamID, ok2 := row[1].(int64)
		revision, ok3 := row[2].(int64)
		id, ok4 := row[3].([]byte)
		typeID, ok5 := row[4].(int64)
		data, ok6 := row[5].([]byte) // nil for an empty body
		if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || (!ok6 && row[5] != nil) {
			return nil, fmt.Errorf("event row after position %d has unexpected column types %T %T %T %T %T %T", after, row[0], row[1], row[2], row[3], row[4], row[5])
		}
		// The names are the cache's strings, shared by every event of a stream or type.
		var stream, typ string
		if stream, streams, err = s.streams.name(streams, streamID); err != nil {
			return nil, fmt.Errorf("event at position %d: %w", position, err)
		}
		if typ, types, err = s.types.name(types, typeID); err != nil {
			return nil, fmt.Errorf("event at position %d: %w", position, err)
		}
		ev := eventstore.RecordedEvent{Position: eventstore.Position(position), Stream: stream, Revision: uint64(revision), Type: typ, Data: data}
		if ev.ID, err = uuid.FromBytes(id); err != nil {
			return nil, fmt.Errorf("event at position %d: %w", position, err)
		}
		events = append(events, ev)
	}
}
