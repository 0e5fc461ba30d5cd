package httpapi_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/eventstore/storetest"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
)

const unavailableMsg = "The service is temporarily unavailable. Please try again."

// faultEnv is a service on a Faulty embedded store, with one key owning objects a, b and c,
// each starting at 10.
type faultEnv struct {
	*uploadEnv
	store *storetest.Faulty
	owner url.Values
	objs  []int64
}

// newFaultEnv starts the service with opts (its Open is replaced); setup, if not nil,
// configures the faulty store before the projection subscribes to it.
func newFaultEnv(t *testing.T, opts apitest.Options, setup func(*storetest.Faulty)) *faultEnv {
	t.Helper()
	var faulty *storetest.Faulty
	opts.Open = func(t testing.TB) eventstore.Store {
		faulty = storetest.NewFaulty(apitest.OpenEmbedded(t))
		if setup != nil {
			setup(faulty)
		}
		return faulty
	}
	u := newUploadEnvWith(t, opts)
	fe := &faultEnv{uploadEnv: u, store: faulty, owner: u.toKey(u.token)}
	for _, name := range []string{"a", "b", "c"} {
		fe.objs = append(fe.objs, u.add(t, fe.owner, "AddDataObjectToKey", name, 10))
	}
	return fe
}

// values is every object of the key by name, as the projection holds them.
func (fe *faultEnv) values() map[string]int64 {
	out := map[string]int64{}
	owner := domain.Owner{Type: domain.OwnerKey, ID: fe.key.ID}
	fe.env.Projection.Read(func(st *state.State) {
		for _, o := range st.ObjectsOf(owner) {
			out[o.Name] = int64(o.IntValue)
		}
	})
	return out
}

func (fe *faultEnv) pendingUploads() int {
	var n int
	fe.env.Projection.Read(func(st *state.State) { n = len(st.PendingUploads()) })
	return n
}

// assertConsistent waits until the projection holds every stored event and compares it with
// a replay of the store from zero: the live state must have missed and repeated nothing.
func assertConsistent(t *testing.T, env *apitest.Env) {
	t.Helper()
	if err := env.Projection.WaitFor(context.Background(), lastPosition(t, env.Store)); err != nil {
		t.Fatal(err)
	}
	rebuilt, err := projections.Rebuild(context.Background(), env.Store, nil)
	if err != nil {
		t.Fatal(err)
	}
	env.Projection.Read(func(st *state.State) {
		if d := state.Diff(rebuilt, st); len(d) != 0 {
			t.Fatalf("the live projection differs from a replay: %v", d)
		}
	})
}

func assertValues(t *testing.T, got, want map[string]int64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("objects %v, want %v", got, want)
	}
	for name, v := range want {
		if got[name] != v {
			t.Fatalf("objects %v, want %v", got, want)
		}
	}
}

// faultOp is a data-object call and the values it must leave once applied.
type faultOp struct {
	name  string
	call  func(fe *faultEnv) apitest.Response
	apply func(before map[string]int64) map[string]int64
}

func faultOps(t *testing.T, fe *faultEnv, tag string) []faultOp {
	id := func(i int) string { return strconv.FormatInt(fe.objs[i], 10) }
	changed := func(before map[string]int64, delta map[string]int64) map[string]int64 {
		out := map[string]int64{}
		for k, v := range before {
			out[k] = v + delta[k]
		}
		for k, v := range delta {
			if _, ok := before[k]; !ok {
				out[k] = v
			}
		}
		return out
	}
	upload := fe.log(t).add(fe.objs[0], 1).add(fe.objs[1], 2).add(fe.objs[2], -3).base64()
	newName := "new-" + tag
	return []faultOp{
		{"increment", func(fe *faultEnv) apitest.Response {
			return fe.env.Call("IncrementIntValueToKey", with(fe.owner, "Id", id(0), "IntValue", "5"))
		}, func(b map[string]int64) map[string]int64 { return changed(b, map[string]int64{"a": 5}) }},
		{"decrement", func(fe *faultEnv) apitest.Response {
			return fe.env.Call("DecrementIntValueToKey", with(fe.owner, "Id", id(1), "IntValue", "4"))
		}, func(b map[string]int64) map[string]int64 { return changed(b, map[string]int64{"b": -4}) }},
		{"set", func(fe *faultEnv) apitest.Response {
			return fe.env.Call("SetIntValueToKey", with(fe.owner, "Id", id(2), "IntValue", "77"))
		}, func(b map[string]int64) map[string]int64 { return changed(b, map[string]int64{"c": 77 - b["c"]}) }},
		{"add", func(fe *faultEnv) apitest.Response {
			return fe.env.Call("AddDataObjectToKey", with(fe.owner, "Name", newName, "IntValue", "9"))
		}, func(b map[string]int64) map[string]int64 { return changed(b, map[string]int64{newName: 9}) }},
		{"upload", func(fe *faultEnv) apitest.Response {
			return fe.upload(upload)
		}, func(b map[string]int64) map[string]int64 {
			return changed(b, map[string]int64{"a": 1, "b": 2, "c": -3})
		}},
	}
}

// TestStoreFaultsAtTheCommitBoundary fails appends in every place a command writes (the first
// to the fifth append of the call, every append, one stream category) for increments,
// decrements, sets, adds and uploads. A call whose append fails answers 503 and leaves every
// value as it was; once the fault clears, the same call succeeds and counts exactly once, and
// the live projection agrees with a replay.
func TestStoreFaultsAtTheCommitBoundary(t *testing.T) {
	failpoints := []struct {
		name string
		rule func() storetest.AppendRule
	}{
		{"every append", func() storetest.AppendRule {
			return func(string, []eventstore.EventData) error { return storetest.ErrInjected }
		}},
		{"data-object streams", func() storetest.AppendRule { return storetest.FailStreams(domain.CategoryDataObject + "-") }},
		{"upload streams", func() storetest.AppendRule { return storetest.FailStreams(domain.CategoryUpload + "-") }},
	}
	for n := 1; n <= 5; n++ {
		failpoints = append(failpoints, struct {
			name string
			rule func() storetest.AppendRule
		}{fmt.Sprintf("append %d of the call", n), func() storetest.AppendRule { return storetest.FailNth(n) }})
	}
	hits := 0
	for _, fp := range failpoints {
		t.Run(fp.name, func(t *testing.T) {
			fe := newFaultEnv(t, apitest.Options{UploadLease: 200 * time.Millisecond}, nil)
			for _, op := range faultOps(t, fe, strings.ReplaceAll(fp.name, " ", "-")) {
				before := fe.values()
				failedBefore := fe.store.Failed()
				fe.store.FailAppends(fp.rule())
				r := op.call(fe)
				fe.store.FailAppends(nil)
				if r.Status == http.StatusOK {
					// The fault struck no append this call makes; or, for an upload, it struck
					// the commit, which the ledger retries once (same id, same revision).
					if fe.store.Failed() != failedBefore && op.name != "upload" {
						t.Fatalf("%s: an append failed, yet the answer is %s", op.name, r.Body)
					}
					assertValues(t, fe.values(), op.apply(before))
					continue
				}
				hits++
				refused(t, r, http.StatusServiceUnavailable, unavailableMsg)
				assertValues(t, fe.values(), before)
				// The fault cleared: the same call succeeds and counts once, whatever the
				// failed attempt left behind (an upload may be undecided until its lease ends).
				r = op.call(fe)
				ok(t, r)
				if op.name == "upload" {
					if applied, known := uploadBody(t, r); int64(applied)+known != 3 {
						t.Fatalf("retried upload: applied %d, known %d", applied, known)
					}
				}
				assertValues(t, fe.values(), op.apply(before))
				if n := fe.pendingUploads(); n != 0 {
					t.Fatalf("%s: %d uploads undecided after the retry", op.name, n)
				}
			}
			assertConsistent(t, fe.env)
		})
	}
	if hits < 2*len(failpoints) {
		t.Fatalf("only %d calls met a fault", hits)
	}
	t.Logf("%d of %d calls met a fault, were refused, changed nothing and succeeded once retried", hits, 5*len(failpoints))
}

// TestWaitingCommandDecidesAStaleUpload leaves an upload undecided (the store refuses even its
// abort) and shows that, with no restart, an increment waiting on the upload's objects decides
// it once the lease ends: completed when every event is in, discarded otherwise. The client's
// retry of the upload then counts each entry once.
func TestWaitingCommandDecidesAStaleUpload(t *testing.T) {
	for _, tc := range []struct {
		name string
		// cut fails appends given the stream's category and how many prepares and object
		// appends went through.
		cut           func(category string, prepared, objectAppends int) bool
		wantCommitted bool
	}{
		{"every event in, the commit refused: completed", func(cat string, prepared, _ int) bool {
			return cat == domain.CategoryUpload && prepared >= 1
		}, true},
		{"one object in, the abort refused: discarded", func(cat string, prepared, objects int) bool {
			return cat == domain.CategoryUpload && prepared >= 1 || cat == domain.CategoryDataObject && objects >= 1
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fe := newFaultEnv(t, apitest.Options{UploadLease: 150 * time.Millisecond}, nil)
			l := fe.log(t).add(fe.objs[0], 1).add(fe.objs[1], 2).add(fe.objs[2], 3)
			var mu sync.Mutex
			prepared, objects := 0, 0
			fe.store.FailAppends(func(stream string, _ []eventstore.EventData) error {
				mu.Lock()
				defer mu.Unlock()
				cat := domain.StreamCategory(stream)
				if tc.cut(cat, prepared, objects) {
					return storetest.ErrInjected
				}
				switch cat {
				case domain.CategoryUpload:
					prepared++
				case domain.CategoryDataObject:
					objects++
				}
				return nil
			})
			refused(t, fe.upload(l.base64()), http.StatusServiceUnavailable, unavailableMsg)
			if n := fe.pendingUploads(); n != 1 {
				t.Fatalf("%d undecided uploads, want 1", n)
			}
			assertValues(t, fe.values(), map[string]int64{"a": 10, "b": 10, "c": 10})
			fe.store.FailAppends(nil)

			// An increment of an object the upload holds waits for the decision, and after
			// the lease makes it.
			ok(t, fe.env.Call("IncrementIntValueToKey", with(fe.owner, "Id", strconv.FormatInt(fe.objs[0], 10), "IntValue", "100")))
			want := map[string]int64{"a": 110, "b": 10, "c": 10}
			if tc.wantCommitted {
				want = map[string]int64{"a": 111, "b": 12, "c": 13}
			}
			assertValues(t, fe.values(), want)
			if n := fe.pendingUploads(); n != 0 {
				t.Fatalf("%d undecided uploads after the lease", n)
			}
			applied, known := uploadBody(t, fe.upload(l.base64()))
			if tc.wantCommitted && (applied != 0 || known != 3) || !tc.wantCommitted && (applied != 3 || known != 0) {
				t.Fatalf("retry applied %d, known %d", applied, known)
			}
			assertValues(t, fe.values(), map[string]int64{"a": 111, "b": 12, "c": 13})
			assertConsistent(t, fe.env)
		})
	}
}

// TestSlowStore delays every append. Concurrent calls still succeed and count exactly once;
// an upload whose client gives up mid-way (the append it waits on still lands later) and then
// retries counts each entry once, wherever the client gave up.
func TestSlowStore(t *testing.T) {
	fe := newFaultEnv(t, apitest.Options{UploadLease: 300 * time.Millisecond}, nil)
	fe.store.DelayAppends(20 * time.Millisecond)

	const clients, increments = 6, 4
	logs := make([]string, clients)
	for i := range logs {
		logs[i] = fe.log(t).add(fe.objs[0], 1).add(fe.objs[1], 1).add(fe.objs[2], 1).base64()
	}
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range increments {
				r := fe.env.Call("IncrementIntValueToKey", with(fe.owner, "Id", strconv.FormatInt(fe.objs[i%3], 10), "IntValue", "10"))
				if r.Status != http.StatusOK {
					t.Errorf("increment on a slow store: %d %s", r.Status, r.Body)
				}
			}
			if r := fe.upload(logs[i]); r.Status != http.StatusOK {
				t.Errorf("upload on a slow store: %d %s", r.Status, r.Body)
			}
		}()
	}
	wg.Wait()
	perObject := int64(clients/3*increments*10 + clients)
	assertValues(t, fe.values(), map[string]int64{"a": 10 + perObject, "b": 10 + perObject, "c": 10 + perObject})

	// A client that gives up: an upload appends five times (prepare, three objects, commit),
	// 100 ms each; give up after 50 ms to 550 ms, then retry without a deadline.
	const delay = 100 * time.Millisecond
	fe.store.DelayAppends(delay)
	want := fe.values()
	for cut := delay / 2; cut <= 11*delay/2; cut += delay {
		l := fe.log(t).add(fe.objs[0], 1).add(fe.objs[1], 2).add(fe.objs[2], 3)
		impatient := &http.Client{Timeout: cut}
		resp, err := impatient.PostForm(fe.env.URL+"/api/data/UploadValuesToKey", with(fe.owner, "Data", l.base64()))
		if err == nil {
			resp.Body.Close()
			t.Logf("the upload finished within %v: %d", cut, resp.StatusCode)
		}
		r := fe.upload(l.base64())
		if applied, known := uploadBody(t, r); int64(applied)+known != 3 {
			t.Fatalf("cut at %v: retry applied %d, known %d", cut, applied, known)
		}
		fe.store.Settle()
		want["a"], want["b"], want["c"] = want["a"]+1, want["b"]+2, want["c"]+3
		assertValues(t, fe.values(), want)
		if n := fe.pendingUploads(); n != 0 {
			t.Fatalf("cut at %v: %d uploads undecided", cut, n)
		}
	}
	fe.store.DelayAppends(0)
	assertConsistent(t, fe.env)
}

// TestDroppedSubscription drops the projection's subscription every few events while clients
// write: the projection resubscribes from its position each time, every call succeeds, and
// the live state equals a replay (nothing missed, nothing applied twice).
func TestDroppedSubscription(t *testing.T) {
	// The projection warns of every drop; keep the test's output to errors.
	quiet := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelError}))
	fe := newFaultEnv(t, apitest.Options{Logger: quiet}, func(f *storetest.Faulty) { f.DropSubscriptionsAfter(3) })
	set := fe.add(t, fe.owner, "AddDataObjectToKey", "set", 0)
	const clients, increments = 4, 10
	logs := make([]string, clients)
	for i := range logs {
		logs[i] = fe.log(t).add(fe.objs[0], 1).add(fe.objs[1], 2).add(fe.objs[2], 3).base64()
	}
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range increments {
				r := fe.env.Call("IncrementIntValueToKey", with(fe.owner, "Id", strconv.FormatInt(fe.objs[n%3], 10), "IntValue", "10"))
				if r.Status != http.StatusOK {
					t.Errorf("increment: %d %s", r.Status, r.Body)
				}
			}
			for _, r := range []apitest.Response{
				fe.upload(logs[i]),
				fe.env.Call("SetIntValueToKey", with(fe.owner, "Id", strconv.FormatInt(set, 10), "IntValue", strconv.Itoa(i+1))),
				fe.env.Call("AddDataObjectToKey", with(fe.owner, "Name", fmt.Sprintf("added-%d", i), "IntValue", strconv.Itoa(i))),
			} {
				if r.Status != http.StatusOK {
					t.Errorf("call: %d %s", r.Status, r.Body)
				}
			}
		}()
	}
	wg.Wait()
	got := fe.values()
	// Each object got increments of 10 from every client: a on n = 0, 3, 6, 9; b on 1, 4, 7;
	// c on 2, 5, 8; and 1, 2 and 3 from every upload.
	want := map[string]int64{
		"a": 10 + clients*(4*10+1), "b": 10 + clients*(3*10+2), "c": 10 + clients*(3*10+3), "set": got["set"],
	}
	for i := range clients {
		want[fmt.Sprintf("added-%d", i)] = int64(i)
	}
	if got["set"] < 1 || got["set"] > clients {
		t.Fatalf("set = %d, want one of the values set", got["set"])
	}
	assertValues(t, got, want)
	assertConsistent(t, fe.env)
	if d := fe.store.Drops(); d < 20 {
		t.Fatalf("only %d subscriptions dropped", d)
	}
	t.Logf("%d subscriptions dropped and resumed", fe.store.Drops())
}

// TestProjectionFailureAfterADurableAppend breaks the projection's subscription for good just
// as a call's event is stored. The event counts (a restart replays it), so the answer must
// not be "try again": a client that retried would count the change twice.
func TestProjectionFailureAfterADurableAppend(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelError + 1}))
	fe := newFaultEnv(t, apitest.Options{Logger: quiet}, nil)
	// The cleanup then expects the projection to have stopped with an error.
	defer fe.env.CloseStore()
	fe.store.BreakSubscriptions(errors.New("injected: the store cannot be read"))
	r := fe.env.Call("IncrementIntValueToKey", with(fe.owner, "Id", strconv.FormatInt(fe.objs[0], 10), "IntValue", "5"))
	evs, err := fe.store.ReadStream(context.Background(), domain.DataObjectStream(fe.objs[0]), eventstore.Forwards, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	counted := len(evs) == 2 && evs[1].Type == domain.EventIncrementApplied
	switch {
	case counted && r.Status != http.StatusOK:
		t.Fatalf("the increment is stored and counts, yet the answer is %d %s", r.Status, r.Body)
	case !counted && r.Status == http.StatusOK:
		t.Fatalf("the increment is not stored, yet acknowledged")
	}
	rebuilt, err := projections.Rebuild(context.Background(), fe.store, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o, _ := rebuilt.Object(fe.objs[0]); o.IntValue != 15 {
		t.Fatalf("a replay gives %d, want 15", o.IntValue)
	}
}
