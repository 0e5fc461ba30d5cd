package embedded

import (
	"context"
	"fmt"

	"github.com/tallyledger/tally/domain/eventstore"
)

// The range reads of a replay: every column but the metadata and recorded time, and the same
// without the id; and the id of one event.
const (
	replayQuery  = `SELECT position, stream, revision, type, data, id FROM events WHERE position > ?1 AND position <= ?2 ORDER BY position`
	foldQuery    = `SELECT position, stream, revision, type, data FROM events WHERE position > ?1 AND position <= ?2 ORDER BY position`
	eventIDQuery = `SELECT id FROM events WHERE position = ?1`
)

// ReadRangeForReplay returns the events with positions in (after, upTo], in global order,
// without their metadata and recorded time, which a replay of the state never reads, appended
// to buf[:0] (a caller that folds range after range hands back the slice of an earlier range:
// a replay allocates its event structs once, not per range). It is
// what projections.Rebuild and Verify read: positions are dense rowids here, so a replay reads
// several ranges at once, each on a connection of its own. Rows are read through SQLite's C
// API on connections of the replay's own (rawConn, rawread.go), not through database/sql or
// its driver, whose locking, boxing and copies cost more than the SQLite read of a small event
// (docs/encoding.md, "Replay"). Streams and types are read as their integer ids and named from
// the store's cache: every event of a stream shares one string, and no name is read or
// allocated per row.
func (s *Store) ReadRangeForReplay(ctx context.Context, after, upTo eventstore.Position, buf []eventstore.RecordedEvent) ([]eventstore.RecordedEvent, error) {
	return s.readRange(ctx, after, upTo, buf, true)
}

// ReadRangeForFold is ReadRangeForReplay without the events' ids but the last one's (the
// range's last event, when it has any): a fold of the state reads an event's id only for its
// checkpoint, the last event it folded (state.State.LastEvent), and reads ranges in order to
// their end, so every id it keeps is read. Leaving the column out of the range's query saves
// SQLite's decoding and the copy of sixteen bytes per event (docs/encoding.md, "Replay").
func (s *Store) ReadRangeForFold(ctx context.Context, after, upTo eventstore.Position, buf []eventstore.RecordedEvent) ([]eventstore.RecordedEvent, error) {
	return s.readRange(ctx, after, upTo, buf, false)
}

func (s *Store) readRange(ctx context.Context, after, upTo eventstore.Position, buf []eventstore.RecordedEvent, withIDs bool) ([]eventstore.RecordedEvent, error) {
	if s.isClosing() {
		return nil, fmt.Errorf("read range: %w", eventstore.ErrClosed)
	}
	if upTo <= after {
		return nil, nil
	}
	conn, err := s.replayConns.get()
	if err != nil {
		return nil, fmt.Errorf("read range (%d, %d]: %w", after, upTo, s.closedError(err))
	}
	events, err := conn.readRange(ctx, s, after, upTo, buf[:0], withIDs)
	s.replayConns.put(conn)
	if err != nil {
		return nil, fmt.Errorf("read range (%d, %d]: %w", after, upTo, s.closedError(err))
	}
	return events, nil
}
