package embedded

import (
	"context"
	"fmt"

	"github.com/tallyledger/tally/domain/eventstore"
)

const replayQuery = `SELECT position, stream, revision, id, type, data FROM events WHERE position > ? AND position <= ? ORDER BY position`

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
	events, err := conn.readRange(ctx, s, after, upTo, buf[:0])
	s.replayConns.put(conn)
	if err != nil {
		return nil, fmt.Errorf("read range (%d, %d]: %w", after, upTo, s.closedError(err))
	}
	return events, nil
}
