package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
)

// TestLocks checks what each lock of a token lets through.
func TestLocks(t *testing.T) { forEachBackend(t, testLocks) }

func testLocks(t *testing.T, open func(testing.TB) eventstore.Store) {
	f := newFixtureOn(t, open)
	env := f.env
	p2 := env.Product("Product B")
	k2 := env.Key(p2.ID)
	pid := strconv.FormatInt(f.product.ID, 10)
	mine := f.add(t, f.toKey(f.token), "AddDataObjectToKey", "mine", 0)
	theirs := f.add(t, vals("token", f.token, "ProductId", pid, "Key", f.other.Key), "AddDataObjectToKey", "theirs", 0)
	otherProduct := f.add(t, vals("token", f.token, "ProductId", strconv.FormatInt(p2.ID, 10), "Key", k2.Key), "AddDataObjectToKey", "p2", 0)
	productObj := f.add(t, general(f.token, domain.OwnerProduct, f.product.ID), "AddDataObject", "product", 0)

	incBy := func(token, product, key string, id int64, amount string) url.Values {
		return vals("token", token, "ProductId", product, "Key", key, "Id", strconv.FormatInt(id, 10), "IntValue", amount)
	}
	incGeneral := func(token string, typ domain.OwnerType, owner, id int64) url.Values {
		return with(general(token, typ, owner), "Id", strconv.FormatInt(id, 10), "IntValue", "1")
	}

	t.Run("negative key lock", func(t *testing.T) {
		tok := env.Token(ledger.TokenSpec{Methods: domain.AllMethods, KeyLock: -1})
		// Its own key's objects, by the key-specific form: allowed.
		ok(t, env.Call("IncrementIntValueToKey", incBy(tok, pid, f.key.Key, mine, "1")))
		// Another key's object through this key: not that key's object.
		refused(t, env.Call("IncrementIntValueToKey", incBy(tok, pid, f.key.Key, theirs, "1")), 404, domain.ErrDataObjectNotFound.Message)
		// Any general method is refused, whoever the owner.
		for _, c := range []url.Values{
			incGeneral(tok, domain.OwnerKey, f.other.ID, theirs),
			incGeneral(tok, domain.OwnerKey, f.key.ID, mine),
			incGeneral(tok, domain.OwnerProduct, f.product.ID, productObj),
			incGeneral(tok, domain.OwnerUser, 0, productObj),
		} {
			refused(t, env.Call("IncrementIntValue", c), 403, "Access denied.")
		}
		refused(t, env.Call("ListDataObjects", general(tok, domain.OwnerKey, f.other.ID)), 403, "Access denied.")
		refused(t, env.Call("AddDataObject", with(general(tok, domain.OwnerKey, f.other.ID), "Name", "x")), 403, "Access denied.")
		if v := f.value(t, theirs); v != 0 {
			t.Fatalf("another key's object changed to %d", v)
		}
	})

	t.Run("positive key lock", func(t *testing.T) {
		tok := env.Token(ledger.TokenSpec{Methods: domain.AllMethods, KeyLock: f.key.ID})
		// Refused by every key-specific method, even for its own key.
		refused(t, env.Call("IncrementIntValueToKey", incBy(tok, pid, f.key.Key, mine, "1")), 404, "Not enough permission and/or key not found.")
		refused(t, env.Call("ListDataObjectsToKey", vals("token", tok, "ProductId", pid, "Key", f.key.Key)), 404, "Not enough permission and/or key not found.")
		// The general form reaches its key, and only its key.
		ok(t, env.Call("IncrementIntValue", incGeneral(tok, domain.OwnerKey, f.key.ID, mine)))
		refused(t, env.Call("IncrementIntValue", incGeneral(tok, domain.OwnerKey, f.other.ID, theirs)), 404, "Not enough permission and/or key not found.")
		refused(t, env.Call("IncrementIntValue", incGeneral(tok, domain.OwnerProduct, f.product.ID, productObj)), 403, "Access denied.")
	})

	t.Run("product lock", func(t *testing.T) {
		tok := env.Token(ledger.TokenSpec{Methods: domain.AllMethods, ProductLock: f.product.ID})
		ok(t, env.Call("IncrementIntValueToKey", incBy(tok, pid, f.key.Key, mine, "1")))
		ok(t, env.Call("IncrementIntValue", incGeneral(tok, domain.OwnerProduct, f.product.ID, productObj)))
		ok(t, env.Call("IncrementIntValue", incGeneral(tok, domain.OwnerKey, f.other.ID, theirs)))
		refused(t, env.Call("IncrementIntValueToKey", incBy(tok, strconv.FormatInt(p2.ID, 10), k2.Key, otherProduct, "1")), 404, "Not enough permission and/or product not found.")
		refused(t, env.Call("IncrementIntValue", incGeneral(tok, domain.OwnerProduct, p2.ID, otherProduct)), 404, "Not enough permission and/or product not found.")
		refused(t, env.Call("IncrementIntValue", incGeneral(tok, domain.OwnerKey, k2.ID, otherProduct)), 404, "Not enough permission and/or product not found.")
		refused(t, env.Call("AddDataObject", with(general(tok, domain.OwnerUser, 0), "Name", "x")), 403, "Access denied.")
		if v := f.value(t, otherProduct); v != 0 {
			t.Fatalf("the other product's object changed to %d", v)
		}
	})

	t.Run("feature lock", func(t *testing.T) {
		tok := env.Token(ledger.TokenSpec{Methods: domain.AllMethods, FeatureLock: 3})
		before := f.value(t, mine)
		for _, amount := range []string{"1", "3", "-3"} {
			ok(t, env.Call("IncrementIntValueToKey", incBy(tok, pid, f.key.Key, mine, amount)))
		}
		ok(t, env.Call("DecrementIntValueToKey", incBy(tok, pid, f.key.Key, mine, "3")))
		if v := f.value(t, mine); v != before+1+3+3-3 {
			t.Fatalf("value %d, want %d", v, before+1+3+3-3)
		}
		for _, amount := range []string{"4", "-4", "2147483647"} {
			refused(t, env.Call("IncrementIntValueToKey", incBy(tok, pid, f.key.Key, mine, amount)), 403, "The increment/decrement value not allowed by security settings.")
			refused(t, env.Call("DecrementIntValueToKey", incBy(tok, pid, f.key.Key, mine, amount)), 403, "The increment/decrement value not allowed by security settings.")
		}
		// SetIntValue is not a step and is not bounded by the feature lock.
		ok(t, env.Call("SetIntValueToKey", incBy(tok, pid, f.key.Key, mine, "1000")))
		if v := f.value(t, mine); v != 1000 {
			t.Fatalf("value %d", v)
		}
	})
}

// TestConcurrentChanges sends many increments and decrements to one object at once through
// HTTP. Every accepted change counts exactly once, the value never leaves int32, and the events
// chain: each change starts from the value the previous one left.
func TestConcurrentChanges(t *testing.T) { forEachBackend(t, testConcurrentChanges) }

func testConcurrentChanges(t *testing.T, open func(testing.TB) eventstore.Store) {
	const workers = 64
	opsPerWorker := 5
	if testing.Short() {
		opsPerWorker = 2
	}
	f := newFixtureOn(t, open)
	owner := f.toKey(f.token)
	// run sends the workers' requests, each worker to one of envs, and counts the answers.
	run := func(t *testing.T, envs []*apitest.Env, id int64, op func(worker int) (method, amount string)) (accepted, limited, retried int64) {
		var wg sync.WaitGroup
		var acc, lim, ret atomic.Int64
		errs := make(chan string, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range opsPerWorker {
					method, amount := op(w)
					params := with(owner, "Id", strconv.FormatInt(id, 10), "IntValue", amount)
					for {
						r := envs[w%len(envs)].Call(method, params)
						var res struct {
							Result  int     `json:"result"`
							Message *string `json:"message"`
						}
						_ = json.Unmarshal(r.Body, &res)
						switch {
						case r.Status == http.StatusOK && res.Result == 0:
							acc.Add(1)
						case r.Status == http.StatusConflict:
							// The ledger gave up after its own retries; a client tries again.
							ret.Add(1)
							continue
						case r.Status == http.StatusUnprocessableEntity && res.Message != nil && *res.Message == domain.ErrInt32Limit.Message:
							lim.Add(1)
						default:
							errs <- string(r.Body)
						}
						break
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Errorf("unexpected answer %s", e)
		}
		return acc.Load(), lim.Load(), ret.Load()
	}

	incDec := func(w int) (string, string) {
		if w%2 == 0 {
			return "IncrementIntValueToKey", "3"
		}
		return "DecrementIntValueToKey", "2"
	}
	// Half the workers increment by 3, half decrement by 2.
	wantSum := int32(workers / 2 * opsPerWorker * (3 - 2))

	t.Run("exact sum", func(t *testing.T) {
		id := f.add(t, owner, "AddDataObjectToKey", "sum", 0)
		before := f.env.Ledger.Conflicts()
		accepted, limited, retried := run(t, []*apitest.Env{f.env}, id, incDec)
		if accepted != int64(workers*opsPerWorker) || limited != 0 {
			t.Fatalf("%d accepted, %d refused for the limit", accepted, limited)
		}
		if v := f.value(t, id); v != wantSum {
			t.Fatalf("value %d, want %d", v, wantSum)
		}
		checkChain(t, f, id, 0, wantSum, int(accepted))
		// One instance queues its own commands on an object: nothing to retry.
		if c := f.env.Ledger.Conflicts() - before; c != 0 || retried != 0 {
			t.Fatalf("%d conflicts, %d answers 409 within one instance", c, retried)
		}
	})

	t.Run("exact sum across two instances", func(t *testing.T) {
		second := f.env.AnotherInstance()
		id := f.add(t, owner, "AddDataObjectToKey", "sum2", 0)
		// The second instance learns of the object through its own subscription; a client
		// switching instances right after the add would be told the object does not exist yet.
		if err := second.Projection.WaitFor(context.Background(), f.env.Projection.Position()); err != nil {
			t.Fatal(err)
		}
		before := f.env.Ledger.Conflicts() + second.Ledger.Conflicts()
		accepted, limited, retried := run(t, []*apitest.Env{f.env, second}, id, incDec)
		if accepted != int64(workers*opsPerWorker) || limited != 0 {
			t.Fatalf("%d accepted, %d refused for the limit", accepted, limited)
		}
		// Each instance has seen its own changes; wait until both have seen all of them.
		head := max(f.env.Projection.Position(), second.Projection.Position())
		for _, e := range []*apitest.Env{f.env, second} {
			if err := e.Projection.WaitFor(context.Background(), head); err != nil {
				t.Fatal(err)
			}
		}
		for _, e := range []*apitest.Env{f.env, second} {
			if o, _ := e.Object(id); o.IntValue != wantSum {
				t.Fatalf("value %d, want %d", o.IntValue, wantSum)
			}
		}
		checkChain(t, f, id, 0, wantSum, int(accepted))
		t.Logf("%d changes through two instances: %d conflicts retried inside the ledgers, %d answered 409 and retried by the client",
			accepted, f.env.Ledger.Conflicts()+second.Ledger.Conflicts()-before, retried)
	})

	t.Run("at the int32 limit", func(t *testing.T) {
		start := int32(math.MaxInt32 - 10)
		id := f.add(t, owner, "AddDataObjectToKey", "limit", start)
		before := f.env.Ledger.Conflicts()
		accepted, limited, retried := run(t, []*apitest.Env{f.env}, id, func(int) (string, string) { return "IncrementIntValueToKey", "1" })
		if accepted != 10 || limited != int64(workers*opsPerWorker-10) {
			t.Fatalf("%d accepted, %d refused for the limit; want 10 and %d", accepted, limited, workers*opsPerWorker-10)
		}
		if v := f.value(t, id); v != math.MaxInt32 {
			t.Fatalf("value %d, want MaxInt32", v)
		}
		checkChain(t, f, id, start, math.MaxInt32, 10)
		t.Logf("%d changes, %d refused at the limit, %d conflicts retried inside the ledger, %d answered 409",
			accepted, limited, f.env.Ledger.Conflicts()-before, retried)
	})
}

// checkChain reads an object's events and checks that they chain from start to end in n
// changes, each within int32.
func checkChain(t *testing.T, f *fixture, id int64, start, end int32, n int) {
	t.Helper()
	evs, err := f.env.Store.ReadStream(context.Background(), domain.DataObjectStream(id), eventstore.Forwards, 0, 10*n+10)
	if err != nil && !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Fatal(err)
	}
	value := start
	changes := 0
	for _, ev := range evs {
		if ev.Type != domain.EventIncrementApplied && ev.Type != domain.EventDecrementApplied {
			continue
		}
		var vc domain.ValueChanged
		if err := json.Unmarshal(ev.Data, &vc); err != nil {
			t.Fatal(err)
		}
		if vc.Before != value {
			t.Fatalf("event %d starts from %d, the previous left %d", ev.Revision, vc.Before, value)
		}
		step := vc.Amount
		if ev.Type == domain.EventDecrementApplied {
			step = -step
		}
		if int64(vc.Before)+step != int64(vc.After) {
			t.Fatalf("event %d: %d %+d != %d", ev.Revision, vc.Before, step, vc.After)
		}
		value = vc.After
		changes++
	}
	if value != end || changes != n {
		t.Fatalf("events end at %d after %d changes; want %d after %d", value, changes, end, n)
	}
}

// TestConcurrentAdds creates objects from many clients at once, on two instances: every add
// succeeds, and no two share an id.
func TestConcurrentAdds(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open func(testing.TB) eventstore.Store) {
		f := newFixtureOn(t, open)
		envs := []*apitest.Env{f.env, f.env.AnotherInstance()}
		owner := f.toKey(f.token)
		const clients, each = 32, 4
		ids := make(chan int64, clients*each)
		var wg sync.WaitGroup
		for c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					r := envs[c%2].Call("AddDataObjectToKey", with(owner, "Name", fmt.Sprintf("o-%d-%d", c, i)))
					res := r.Result(t)
					if r.Status != http.StatusOK || res.Result != 0 {
						t.Errorf("add: %d %s", r.Status, r.Body)
						return
					}
					ids <- res.ID
				}
			}()
		}
		wg.Wait()
		close(ids)
		seen := map[int64]bool{}
		for id := range ids {
			if seen[id] {
				t.Fatalf("id %d handed out twice", id)
			}
			seen[id] = true
		}
		if len(seen) != clients*each {
			t.Fatalf("%d objects created, want %d", len(seen), clients*each)
		}
	})
}

// TestConcurrentAddsWithTheSameNameCheckingForDuplicates: of many adds of one name at once,
// each checking for duplicates, exactly one succeeds on one instance.
func TestConcurrentAddsWithTheSameNameCheckingForDuplicates(t *testing.T) {
	f := newFixture(t)
	owner := f.toKey(f.token)
	const clients = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	outcomes := map[string]int{}
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := f.env.Call("AddDataObjectToKey", with(owner, "Name", "seats", "CheckForDuplicates", "True"))
			mu.Lock()
			defer mu.Unlock()
			outcomes[r.Result(t).Msg()]++
		}()
	}
	wg.Wait()
	if outcomes[""] != 1 || outcomes["A data object with this name already exists."] != clients-1 {
		t.Fatalf("outcomes %v: want one add and %d duplicate refusals", outcomes, clients-1)
	}
}
