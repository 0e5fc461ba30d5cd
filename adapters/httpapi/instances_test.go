package httpapi_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// laggingStore delays every event that its second and later subscriptions deliver, as a
// second instance's subscription to a remote KurrentDB lags behind the first instance's
// appends. The first subscription (the first instance's projection) is not delayed.
type laggingStore struct {
	eventstore.Store
	lag  time.Duration
	subs atomic.Int32
}

func (s *laggingStore) SubscribeAll(ctx context.Context, from eventstore.Position) (eventstore.Subscription, error) {
	sub, err := s.Store.SubscribeAll(ctx, from)
	if err != nil || s.subs.Add(1) == 1 {
		return sub, err
	}
	return laggingSubscription{Subscription: sub, lag: s.lag}, nil
}

type laggingSubscription struct {
	eventstore.Subscription
	lag time.Duration
}

func (s laggingSubscription) Next(ctx context.Context) (eventstore.RecordedEvent, error) {
	ev, err := s.Subscription.Next(ctx)
	if err != nil {
		return ev, err
	}
	select {
	case <-time.After(s.lag): // simulated network latency, not synchronisation
		return ev, nil
	case <-ctx.Done():
		return eventstore.RecordedEvent{}, ctx.Err()
	}
}

// TestSecondInstanceAnswersWithTheStoresState checks that an instance whose projection lags
// behind the store still answers reads and refusals as of the store: a client that changed a
// value through one instance and then asks another must not be told the old value, nor be
// refused on the strength of it. Before the fix, the lagging instance listed the old value and
// refused an increment for a bound that only the old value passed.
func TestSecondInstanceAnswersWithTheStoresState(t *testing.T) {
	env := apitest.StartWith(t, apitest.Options{Open: func(t testing.TB) eventstore.Store {
		return &laggingStore{Store: apitest.OpenEmbedded(t), lag: 20 * time.Millisecond}
	}})
	lagging := env.AnotherInstance()
	p := env.Product("P")
	k := env.Key(p.ID)
	secret := env.AllMethodsToken()
	owner := vals("token", secret, "ProductId", strconv.FormatInt(p.ID, 10), "Key", k.Key)
	id := ok(t, env.Call("AddDataObjectToKey", with(owner, "Name", "seats", "IntValue", "10"))).ID
	byID := with(owner, "Id", strconv.FormatInt(id, 10))
	if err := lagging.Projection.WaitFor(context.Background(), env.Projection.Position()); err != nil {
		t.Fatal(err)
	}

	for round := range 3 {
		ok(t, env.Call("SetIntValueToKey", with(byID, "IntValue", "0")))
		list := ok(t, lagging.Call("ListDataObjectsToKey", owner))
		if len(list.DataObjects) != 1 || list.DataObjects[0].IntValue != 0 {
			t.Fatalf("round %d: the lagging instance lists %+v after the value was set to 0", round, list.DataObjects)
		}
		// 0 + 1 stays within the bound 5; the old value 10 would not.
		ok(t, lagging.Call("IncrementIntValueToKey", with(byID, "IntValue", "1", "EnableBound", "true", "Bound", "5")))

		ok(t, env.Call("SetIntValueToKey", with(byID, "IntValue", "10")))
		refused(t, lagging.Call("IncrementIntValueToKey", with(byID, "IntValue", "1", "EnableBound", "true", "Bound", "5")),
			422, domain.ErrBoundReached.Message)
		// 10 - 3 stays above the lower bound 5; the old value 1 would not.
		ok(t, lagging.Call("DecrementIntValueToKey", with(byID, "IntValue", "3", "EnableBound", "true", "Bound", "5")))
		if o, _ := lagging.Object(id); o.IntValue != 7 {
			t.Fatalf("round %d: value %d after the decrement, want 7", round, o.IntValue)
		}
	}
}
