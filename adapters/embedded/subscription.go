package embedded

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/tallyledger/tally/domain/eventstore"
)

// subscription is a catch-up subscription. It holds at most one page of events. Whenever its
// buffer runs dry and the committed head is past its position, it takes the events after its
// position from the store's in-memory tail of recent commits or, when it is behind the tail,
// reads the next page from the database; otherwise it waits for the writer's next commit.
// Because the single writer gives out positions in commit order, and both the tail and the
// database hold committed events only, "the events after my last position" never skips or
// repeats an event whichever source serves it, and a slow subscriber costs the writer nothing.
type subscription struct {
	store    *Store
	position eventstore.Position // last delivered
	buffer   []eventstore.RecordedEvent
	// shared is set while buffer is a slice of the tail, which other subscribers read too: it
	// must not be written to.
	shared    bool
	closed    chan struct{}
	closeOnce sync.Once
}

// SubscribeAll starts a catch-up subscription after position from (exclusive).
func (s *Store) SubscribeAll(ctx context.Context, from eventstore.Position) (eventstore.Subscription, error) {
	if s.isClosing() {
		return nil, fmt.Errorf("subscribe to all: %w", eventstore.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("subscribe to all: %w", err)
	}
	return &subscription{store: s, position: from, closed: make(chan struct{})}, nil
}

// Next returns the next event in global order. It is not for concurrent use by several
// goroutines (Close is).
func (sub *subscription) Next(ctx context.Context) (eventstore.RecordedEvent, error) {
	for {
		select {
		case <-sub.closed:
			return eventstore.RecordedEvent{}, fmt.Errorf("subscription: %w", eventstore.ErrClosed)
		case <-sub.store.closing:
			return eventstore.RecordedEvent{}, fmt.Errorf("subscription: %w", eventstore.ErrClosed)
		default:
		}
		if len(sub.buffer) > 0 {
			ev := sub.buffer[0]
			if !sub.shared {
				sub.buffer[0] = eventstore.RecordedEvent{} // let the page's payloads go
			}
			sub.buffer = sub.buffer[1:]
			sub.position = ev.Position
			return ev, nil
		}
		events, inTail, head, wake := sub.store.committedAfter(sub.position, sub.store.opts.pageSize)
		if len(events) > 0 {
			sub.buffer, sub.shared = events, true
			sub.store.stats.tailPages.Add(1)
			continue
		}
		if head > sub.position && !inTail {
			events, err := sub.store.ReadAll(ctx, sub.position, sub.store.opts.pageSize)
			switch {
			case err == nil:
			case errors.Is(err, eventstore.ErrClosed) || ctx.Err() != nil:
				return eventstore.RecordedEvent{}, fmt.Errorf("subscription: %w", err)
			default:
				// A failed read (a busy or briefly failing disk) ends this subscription only;
				// the subscriber resubscribes from its position, as after a KurrentDB drop.
				return eventstore.RecordedEvent{}, fmt.Errorf("subscription: %w: %w", eventstore.ErrSubscriptionDropped, err)
			}
			sub.store.stats.databasePages.Add(1)
			if len(events) > 0 {
				sub.buffer, sub.shared = events, false
				continue
			}
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return eventstore.RecordedEvent{}, fmt.Errorf("subscription: %w", ctx.Err())
		case <-sub.closed:
		case <-sub.store.closing:
		}
	}
}

// Buffered is how many events Next will return without reading or waiting, so
// that a consumer can apply them as one batch.
func (sub *subscription) Buffered() int { return len(sub.buffer) }

// Close ends the subscription; Next then fails with ErrClosed.
func (sub *subscription) Close() error {
	sub.closeOnce.Do(func() { close(sub.closed) })
	return nil
}
