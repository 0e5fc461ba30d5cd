package httpapi_test

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"

	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
)

// delta is how much each sample moved between two scrapes.
func delta(before, after map[string]float64, key string) float64 { return after[key] - before[key] }

// TestUploadMetricsCountOutcomes makes real uploads (logs written by the codec) that commit,
// change nothing and are refused for three reasons, and a token that goes over its rate, and
// checks that /metrics moved by exactly as much: uploads by outcome and refusal kind, entries
// applied and known, rate-limit refusals.
func TestUploadMetricsCountOutcomes(t *testing.T) {
	u := newUploadEnvWith(t, apitest.Options{RateLimit: 0.001, RateBurst: 40})
	owner := u.toKey(u.token)
	a := u.add(t, owner, "AddDataObjectToKey", "a", 0)
	b := u.add(t, owner, "AddDataObjectToKey", "b", 0)
	before := u.env.Metrics()

	l := u.log(t).add(a, 2).add(b, 1).add(a, 3)
	if applied, known := uploadBody(t, u.upload(l.base64())); applied != 3 || known != 0 {
		t.Fatalf("first upload: applied %d, known %d", applied, known)
	}
	if applied, known := uploadBody(t, u.upload(l.base64())); applied != 0 || known != 3 {
		t.Fatalf("the same file again: applied %d, known %d", applied, known)
	}
	l.add(b, 4).add(a, -1)
	if applied, known := uploadBody(t, u.upload(l.base64())); applied != 2 || known != 3 {
		t.Fatalf("grown file: applied %d, known %d", applied, known)
	}
	refused(t, u.upload("bm90IGEgbG9n"), http.StatusBadRequest, domain.ErrDataCorrupted.Message)
	noUpload := u.env.Token(ledger.TokenSpec{Name: "list only", Methods: []domain.Method{domain.MethodListDataObjects}})
	refused(t, u.env.Call("UploadValuesToKey", with(u.toKey(noUpload), "Data", l.base64())), http.StatusForbidden, domain.ErrAccessDenied.Message)
	wrongKey := with(owner, "Key", "NOSUC-HKEYX-XXXXX-XXXXX", "Data", l.base64())
	refused(t, u.env.Call("UploadValuesToKey", wrongKey), http.StatusNotFound, domain.ErrKeyNotFound.Message)

	// A token of its own goes over its burst of 40: the next 5 calls are refused.
	fast := u.toKey(u.env.AllMethodsToken())
	limited := 0
	for range 45 {
		if r := u.env.Call("ListDataObjectsToKey", fast); r.Status == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited != 5 {
		t.Fatalf("%d of 45 calls refused for the rate, want 5", limited)
	}

	after := u.env.Metrics()
	want := map[string]float64{
		`tally_uploads_total{outcome="committed",reason=""}`:                             2,
		`tally_uploads_total{outcome="unchanged",reason=""}`:                             1,
		`tally_uploads_total{outcome="refused",reason="invalid"}`:                        1,
		`tally_uploads_total{outcome="refused",reason="forbidden"}`:                      1,
		`tally_uploads_total{outcome="refused",reason="not_found"}`:                      1,
		`tally_upload_entries_applied_total`:                                             5,
		`tally_upload_entries_known_total`:                                               6,
		`tally_uploads_aborted_total{reason="conflict"}`:                                 0,
		`tally_http_defence_refusals_total{defence="rate_limit"}`:                        5,
		`tally_http_defence_refusals_total{defence="body_too_slow"}`:                     0,
		`tally_http_requests_total{method="ListDataObjectsToKey",result="rate_limited"}`: 5,
	}
	for key, d := range want {
		if _, ok := after[key]; !ok {
			t.Errorf("no sample %s in /metrics", key)
			continue
		}
		if got := delta(before, after, key); got != d {
			t.Errorf("%s moved by %v, want %v", key, got, d)
		}
	}
}

// TestConflictMetrics runs increments of one object through two instances on one store, which
// decide against their own projections and so lose appends to each other, and checks that each
// instance's /metrics counts the conflicts the ledger saw and one retry for each (a call that
// runs out of attempts counts its last lost append as a retry too).
func TestConflictMetrics(t *testing.T) {
	f := newFixture(t)
	second := f.env.AnotherInstance()
	owner := f.toKey(f.token)
	id := f.add(t, owner, "AddDataObjectToKey", "shared", 0)
	envs := []*apitest.Env{f.env, second}
	befores := []map[string]float64{f.env.Metrics(), second.Metrics()}
	conflictsBefore := []int64{f.env.Ledger.Conflicts(), second.Ledger.Conflicts()}
	var wg sync.WaitGroup
	unexpected := make(chan string, 160)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			env := envs[i%2]
			for range 10 {
				// Under this contention a call may also run out of attempts (409, "changed
				// concurrently too often"): allowed, and still counted.
				r := env.Call("IncrementIntValueToKey", with(owner, "Id", strconv.FormatInt(id, 10), "IntValue", "1"))
				if r.Status != http.StatusOK && r.Status != http.StatusConflict {
					unexpected <- fmt.Sprintf("%d %s", r.Status, r.Body)
				}
			}
		}()
	}
	wg.Wait()
	close(unexpected)
	for u := range unexpected {
		t.Errorf("increment: %s", u)
	}
	total := int64(0)
	for i, env := range envs {
		after := env.Metrics()
		seen := env.Ledger.Conflicts() - conflictsBefore[i]
		total += seen
		if got := delta(befores[i], after, "tally_ledger_conflicts_total"); got != float64(seen) {
			t.Errorf("instance %d: tally_ledger_conflicts_total moved by %v, the ledger saw %d conflicts", i, got, seen)
		}
		if got := delta(befores[i], after, "tally_ledger_retries_total"); got != float64(seen) {
			t.Errorf("instance %d: tally_ledger_retries_total moved by %v, want one retry per conflict (%d)", i, got, seen)
		}
	}
	t.Logf("%d conflicts between the two instances", total)
}
