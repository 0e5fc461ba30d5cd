package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/tallyledger/tally/domain/eventstore"
)

// ErrInjected is the failure a Faulty store returns where a test asked for one.
var ErrInjected = errors.New("injected store failure")

// AppendRule decides whether an append fails: a non-nil error fails it, writing nothing.
type AppendRule func(stream string, events []eventstore.EventData) error

// FailNth fails the nth append it is asked about (1 for the next one), and only that one.
func FailNth(n int) AppendRule {
	var mu sync.Mutex
	seen := 0
	return func(string, []eventstore.EventData) error {
		mu.Lock()
		defer mu.Unlock()
		seen++
		if seen == n {
			return fmt.Errorf("append %d: %w", n, ErrInjected)
		}
		return nil
	}
}

// FailStreams fails every append to a stream whose name starts with prefix (a category such as
// "upload-").
func FailStreams(prefix string) AppendRule {
	return func(stream string, _ []eventstore.EventData) error {
		if strings.HasPrefix(stream, prefix) {
			return fmt.Errorf("append to %s: %w", stream, ErrInjected)
		}
		return nil
	}
}

// Faulty wraps a store and injects the failures a test asks for at the commit boundary, where
// a disk error, a lost connection, a slow fsync or a dying process would strike: appends that
// fail before they reach the store, appends that are slow, and subscriptions that drop.
type Faulty struct {
	eventstore.Store
	mu        sync.Mutex
	rule      AppendRule
	delay     time.Duration
	dropAfter int   // 0: subscriptions never drop
	subErr    error // subscriptions fail with it, if not nil
	drops     int
	failed    int
	pending   int        // delayed appends still running
	settled   *sync.Cond // signalled (with mu) when pending drops to 0
}

// NewFaulty wraps s; it injects nothing until told to.
func NewFaulty(s eventstore.Store) *Faulty {
	f := &Faulty{Store: s}
	f.settled = sync.NewCond(&f.mu)
	return f
}

// FailAppends makes every later append for which rule returns an error fail with that error,
// writing nothing. A nil rule lets every append through again.
func (f *Faulty) FailAppends(rule AppendRule) {
	f.mu.Lock()
	f.rule = rule
	f.mu.Unlock()
}

// DelayAppends makes every later append reach the store only after d, as a slow fsync or a
// slow network would (0: no delay). As with a real store, an append whose caller gives up
// meanwhile still happens: the caller gets its context's error and does not know.
func (f *Faulty) DelayAppends(d time.Duration) {
	f.mu.Lock()
	f.delay = d
	f.mu.Unlock()
}

// DropSubscriptionsAfter makes every subscription started from now on end with
// eventstore.ErrSubscriptionDropped after delivering n events (0: never).
func (f *Faulty) DropSubscriptionsAfter(n int) {
	f.mu.Lock()
	f.dropAfter = n
	f.mu.Unlock()
}

// Drops is how many subscriptions were dropped on purpose.
func (f *Faulty) Drops() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.drops
}

// Failed is how many appends were failed on purpose.
func (f *Faulty) Failed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed
}

// Append applies the rule and the delay, then appends.
func (f *Faulty) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	f.mu.Lock()
	rule, delay := f.rule, f.delay
	f.mu.Unlock()
	if rule != nil {
		if err := rule(stream, events); err != nil {
			f.mu.Lock()
			f.failed++
			f.mu.Unlock()
			return eventstore.AppendResult{}, err
		}
	}
	if delay <= 0 {
		return f.Store.Append(ctx, stream, expected, events...)
	}
	type reply struct {
		res eventstore.AppendResult
		err error
	}
	done := make(chan reply, 1)
	f.mu.Lock()
	f.pending++
	f.mu.Unlock()
	go func() {
		defer func() {
			f.mu.Lock()
			if f.pending--; f.pending == 0 {
				f.settled.Broadcast()
			}
			f.mu.Unlock()
		}()
		t := time.NewTimer(delay)
		<-t.C
		res, err := f.Store.Append(context.WithoutCancel(ctx), stream, expected, events...)
		done <- reply{res, err}
	}()
	select {
	case r := <-done:
		return r.res, r.err
	case <-ctx.Done():
		return eventstore.AppendResult{}, fmt.Errorf("append to %q: %w", stream, ctx.Err())
	}
}

// Settle waits until every delayed append has reached the store.
func (f *Faulty) Settle() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.pending > 0 {
		f.settled.Wait()
	}
}

// Close waits for the delayed appends, then closes the store.
func (f *Faulty) Close() error {
	f.Settle()
	return f.Store.Close()
}

// BreakSubscriptions makes every subscription, live or future, fail with err instead of
// delivering its next event, as a store that can no longer read would (nil: deliver again).
// An error that does not match eventstore.ErrSubscriptionDropped ends the subscriber for good.
func (f *Faulty) BreakSubscriptions(err error) {
	f.mu.Lock()
	f.subErr = err
	f.mu.Unlock()
}

// SubscribeAll subscribes, wrapping the subscription so that it drops or breaks when told to.
func (f *Faulty) SubscribeAll(ctx context.Context, from eventstore.Position) (eventstore.Subscription, error) {
	sub, err := f.Store.SubscribeAll(ctx, from)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	n := f.dropAfter
	f.mu.Unlock()
	return &faultySubscription{Subscription: sub, left: n, faulty: f}, nil
}

// faultySubscription delivers left events, then reports a drop (left 0: never), and fails
// while its store's subscriptions are broken.
type faultySubscription struct {
	eventstore.Subscription
	left   int
	faulty *Faulty
}

func (s *faultySubscription) Next(ctx context.Context) (eventstore.RecordedEvent, error) {
	if s.left < 0 {
		s.faulty.mu.Lock()
		s.faulty.drops++
		s.faulty.mu.Unlock()
		return eventstore.RecordedEvent{}, fmt.Errorf("injected: %w", eventstore.ErrSubscriptionDropped)
	}
	ev, err := s.Subscription.Next(ctx)
	if err != nil {
		return ev, err
	}
	s.faulty.mu.Lock()
	broken := s.faulty.subErr
	s.faulty.mu.Unlock()
	if broken != nil {
		return eventstore.RecordedEvent{}, broken
	}
	if s.left > 0 {
		if s.left--; s.left == 0 {
			s.left = -1 // delivered its share: the next call drops
		}
	}
	return ev, nil
}
