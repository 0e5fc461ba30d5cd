package kurrentdb

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/tallyledger/tally/domain/eventstore"
)

// subscribeTimeout bounds the wait for KurrentDB to confirm a subscription.
const subscribeTimeout = 5 * time.Second

// subscriptionBuffer is how many received events wait for Next.
const subscriptionBuffer = 256

// firstResubscribeDelay is the backoff after the second failed resubscribe attempt; it doubles up
// to Config.ResubscribeMaxDelay. The first attempt is immediate.
const firstResubscribeDelay = 10 * time.Millisecond

// subscription is a catch-up subscription to $all that survives drops. One goroutine (run) owns
// the client's subscription: it receives, filters and buffers events, and when KurrentDB drops the
// subscription it subscribes again from the last event it received, so nothing is skipped, and
// discards anything at or before that event, so nothing is repeated.
type subscription struct {
	store  *Store
	events chan eventstore.RecordedEvent // closed by run when it stops, after err is set
	err    error                         // why run stopped
	cancel context.CancelFunc
	done   chan struct{} // closed when run has returned
	closed atomic.Bool
	once   sync.Once
}

// SubscribeAll starts a catch-up subscription to the configured streams after position from.
// ctx bounds only the subscribing itself; the subscription lives until Close.
func (s *Store) SubscribeAll(ctx context.Context, from eventstore.Position) (eventstore.Subscription, error) {
	lifetime, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	inner, err := s.subscribe(lifetime, from)
	stop()
	if err != nil {
		cancel()
		if errors.Is(err, context.Canceled) && ctx.Err() != nil {
			err = fmt.Errorf("kurrentdb: subscribe to $all: %w", ctx.Err())
		}
		return nil, err
	}
	sub := &subscription{
		store:  s,
		events: make(chan eventstore.RecordedEvent, subscriptionBuffer),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		_ = inner.Close()
		return nil, fmt.Errorf("kurrentdb: subscribe to $all: %w", eventstore.ErrClosed)
	}
	s.subscriptions[sub] = struct{}{}
	s.mu.Unlock()
	go sub.run(lifetime, inner, from)
	return sub, nil
}

// subscribe asks KurrentDB for a subscription to $all after position after (exclusive), filtered
// by the configured prefixes on the server.
// The running subscription does not use the client's connection loop, so it needs no call
// registered on the connection once it is confirmed.
func (s *Store) subscribe(ctx context.Context, after eventstore.Position) (*esdb.Subscription, error) {
	// From must be set: left nil it means the live end only.
	options := esdb.SubscribeToAllOptions{From: toAllPosition(after)}
	if len(s.prefixes) > 0 {
		options.Filter = &esdb.SubscriptionFilter{Type: esdb.StreamFilterType, Prefixes: s.prefixes}
	}
	// The subscription lives in ctx; waiting for its confirmation is bounded separately.
	wait, cancel := context.WithTimeout(ctx, subscribeTimeout)
	defer cancel()
	var inner *esdb.Subscription
	c, err := s.call(wait, func(client *esdb.Client) (err error) {
		inner, err = client.SubscribeToAll(ctx, options)
		return err
	})
	if err != nil {
		if c != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			// No confirmation in time: the client may be wedged (see Store.call), so the next
			// attempt gets a fresh one.
			s.renew(c)
		}
		return nil, s.fail(ctx, c, "subscribe to $all", err)
	}
	return inner, nil
}

// run receives from inner until ctx ends or resubscribing fails for good.
func (sub *subscription) run(ctx context.Context, inner *esdb.Subscription, last eventstore.Position) {
	defer close(sub.done)
	defer close(sub.events)
	defer func() { _ = inner.Close() }()
	for {
		event := inner.Recv()
		switch {
		case event.EventAppeared != nil:
			if event.EventAppeared.Event == nil {
				continue
			}
			rec := recorded(event.EventAppeared.Event)
			if rec.Position <= last {
				continue // already received before a resubscribe
			}
			last = rec.Position
			if !sub.store.wanted(rec) {
				continue
			}
			select {
			case sub.events <- rec:
			case <-ctx.Done():
				sub.err = eventstore.ErrClosed
				return
			}
		case event.SubscriptionDropped != nil:
			_ = inner.Close()
			if ctx.Err() != nil {
				sub.err = eventstore.ErrClosed
				return
			}
			sub.store.logger.Warn("kurrentdb: subscription dropped; resubscribing",
				"after", uint64(last), "error", event.SubscriptionDropped.Error)
			next, err := sub.resubscribe(ctx, last)
			if err != nil {
				sub.err = err
				return
			}
			inner = next
		}
		// Checkpoints are not used as resume points: resuming from the last received event is
		// enough and does not depend on what exactly a checkpoint position denotes.
	}
}

// resubscribe subscribes again after last, retrying with doubling, capped delays.
func (sub *subscription) resubscribe(ctx context.Context, last eventstore.Position) (*esdb.Subscription, error) {
	delay := time.Duration(0)
	var lastErr error
	for attempt := 1; attempt <= sub.store.resubscribeAttempts; attempt++ {
		if delay > 0 {
			timer := time.NewTimer(delay)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				return nil, eventstore.ErrClosed
			}
		}
		delay = min(max(2*delay, firstResubscribeDelay), sub.store.resubscribeMaxDelay)
		inner, err := sub.store.subscribe(ctx, last)
		if err == nil {
			return inner, nil
		}
		if ctx.Err() != nil || errors.Is(err, eventstore.ErrClosed) {
			return nil, eventstore.ErrClosed
		}
		lastErr = err
		sub.store.logger.Warn("kurrentdb: resubscribe failed", "attempt", attempt, "error", lastErr)
	}
	return nil, fmt.Errorf("kurrentdb: %w: %d resubscribe attempts failed, last: %w",
		eventstore.ErrSubscriptionDropped, sub.store.resubscribeAttempts, lastErr)
}

// Next returns the next event, waiting for it until ctx ends or the subscription ends.
func (sub *subscription) Next(ctx context.Context) (eventstore.RecordedEvent, error) {
	if sub.closed.Load() {
		return eventstore.RecordedEvent{}, eventstore.ErrClosed
	}
	select {
	case rec, ok := <-sub.events:
		if !ok {
			return eventstore.RecordedEvent{}, sub.err
		}
		return rec, nil
	case <-ctx.Done():
		return eventstore.RecordedEvent{}, ctx.Err()
	}
}

// Close ends the subscription and waits for its goroutine.
func (sub *subscription) Close() error {
	sub.once.Do(func() {
		sub.closed.Store(true)
		sub.cancel()
		<-sub.done
		sub.store.mu.Lock()
		delete(sub.store.subscriptions, sub)
		sub.store.mu.Unlock()
	})
	return nil
}
