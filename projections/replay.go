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
	// ReadRangeForReplay appends the events of (after, upTo] to buf[:0].
	ReadRangeForReplay(ctx context.Context, after, upTo eventstore.Position, buf []eventstore.RecordedEvent) ([]eventstore.RecordedEvent, error)
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
// rows costs more than folding them, and it spreads over the cores this way.
func foldAhead(ctx context.Context, r replayReader, st *state.State, n *int, progress func(events int), apply func(eventstore.RecordedEvent)) error {
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
		events []eventstore.RecordedEvent
		err    error
	}
	ranges := make(chan chan result, replayWindow) // in position order
	// Slices of folded ranges go back to the readers: the event structs of a replay are
	// allocated once (a fold takes each event by value and keeps no pointer into the slice).
	free := make(chan []eventstore.RecordedEvent, replayWindow+replayReaders+1)
	go func() {
		defer close(ranges)
		readers := make(chan struct{}, replayReaders)
		for lo := st.Position; lo < head; lo += min(replayRange, head-lo) {
			hi := lo + min(replayRange, head-lo)
			out := make(chan result, 1) // never blocks the reader
			select {
			case ranges <- out:
			case <-ctx.Done():
				return
			}
			select {
			case readers <- struct{}{}:
			case <-ctx.Done():
				return
			}
			var buf []eventstore.RecordedEvent
			select {
			case buf = <-free:
			default:
			}
			go func() {
				evs, err := r.ReadRangeForReplay(ctx, lo, hi, buf)
				<-readers
				out <- result{evs, err}
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
		for _, ev := range res.events {
			apply(ev)
		}
		select {
		case free <- res.events:
		default:
		}
		if len(res.events) > 0 {
			*n += len(res.events)
			if progress != nil {
				progress(*n)
			}
		}
	}
	return ctx.Err()
}
