package projections

import (
	"context"
	"fmt"

	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// replayReader is a store that can read the events of a range of positions for a replay,
// without their metadata: the embedded store, whose positions are dense, so that ranges of a
// fixed width hold a page each and can be read at once on several connections.
type replayReader interface {
	Head(ctx context.Context) (eventstore.Position, error)
	// ReadRangeForFold appends the events of (after, upTo] to buf[:0], with the id of the
	// last one only: a fold reads an event's id only for its checkpoint (State.LastEvent), and
	// foldAhead folds every range to its end.
	ReadRangeForFold(ctx context.Context, after, upTo eventstore.Position, buf []eventstore.RecordedEvent) ([]eventstore.RecordedEvent, error)
}

// Read-ahead of a replay: ranges of replayRange positions, replayReaders read at once, at most
// replayWindow ranges read and not yet folded (about a megabyte each).
const (
	replayRange   = 4096
	replayReaders = 2
	replayWindow  = 6
)

// foldAhead folds the events after st's position up to the store's head at the start, reading
// ranges ahead in parallel while the calling goroutine folds them in order: decoding SQLite
// rows and the events' bodies (state.Decode) costs more than folding them, and it spreads over
// the cores this way.
func foldAhead(ctx context.Context, r replayReader, st *state.State, n *int, progress func(events int), apply func(*state.Decoded)) error {
	head, err := r.Head(ctx)
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	if head <= st.Position {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // an error stops the readers still running
	type result struct {
		events []state.Decoded
		err    error
	}
	// buffers are a reader's slices, reused: the events of a replay are allocated once (a fold
	// keeps no pointer into them).
	type buffers struct {
		read    []eventstore.RecordedEvent
		decoded []state.Decoded
	}
	ranges := make(chan chan result, replayWindow) // in position order
	// Slices of folded ranges go back to the readers.
	free := make(chan []state.Decoded, replayWindow+replayReaders+1)
	go func() {
		defer close(ranges)
		readers := make(chan *buffers, replayReaders) // a token per reader, with its read buffer
		for range replayReaders {
			readers <- &buffers{}
		}
		for lo := st.Position; lo < head; lo += min(replayRange, head-lo) {
			hi := lo + min(replayRange, head-lo)
			out := make(chan result, 1) // never blocks the reader
			select {
			case ranges <- out:
			case <-ctx.Done():
				return
			}
			var buf *buffers
			select {
			case buf = <-readers:
			case <-ctx.Done():
				return
			}
			buf.decoded = nil
			select {
			case buf.decoded = <-free:
			default:
			}
			go func() {
				var res result
				buf.read, res.err = r.ReadRangeForFold(ctx, lo, hi, buf.read)
				if res.err == nil {
					res.events = state.DecodeInto(buf.decoded[:0], buf.read)
				}
				clear(buf.read) // the bodies are the decoded events' now
				readers <- buf
				out <- res
			}()
		}
	}()
	for out := range ranges {
		var res result
		select {
		case res = <-out:
		case <-ctx.Done():
			return ctx.Err()
		}
		if res.err != nil {
			return fmt.Errorf("replay: %w", res.err)
		}
		for i := range res.events {
			apply(&res.events[i])
		}
		if len(res.events) > 0 {
			*n += len(res.events)
			if progress != nil {
				progress(*n)
			}
		}
		clear(res.events) // drop the bodies before the slice waits for reuse
		select {
		case free <- res.events:
		default:
		}
	}
	return ctx.Err()
}
