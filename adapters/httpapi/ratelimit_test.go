package httpapi_test

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/domain"
)

// TestRateLimit checks the per-token limit through HTTP: a token past its burst is refused
// with 429 and the rate-limit message, the refused calls change nothing, and other tokens are
// not affected.
func TestRateLimit(t *testing.T) {
	// One request per 1000 s: nothing refills while the test runs.
	env := apitest.StartWith(t, apitest.Options{RateLimit: 0.001, RateBurst: 3})
	p := env.Product("P")
	k := env.Key(p.ID)
	hot, other := env.AllMethodsToken(), env.AllMethodsToken()
	owner := func(tok string) []string {
		return []string{"token", tok, "ProductId", strconv.FormatInt(p.ID, 10), "Key", k.Key}
	}
	id := ok(t, env.Call("AddDataObjectToKey", vals(append(owner(hot), "Name", "n")...))).ID // 1 of 3
	inc := func(tok string) apitest.Response {
		return env.Call("IncrementIntValueToKey", vals(append(owner(tok), "Id", strconv.FormatInt(id, 10), "IntValue", "1")...))
	}
	ok(t, inc(hot)) // 2
	ok(t, inc(hot)) // 3
	for range 5 {
		refused(t, inc(hot), http.StatusTooManyRequests, domain.ErrRateLimited.Message)
	}
	if o, _ := env.Object(id); o.IntValue != 2 {
		t.Fatalf("value %d after 2 accepted and 5 refused increments", o.IntValue)
	}
	ok(t, inc(other))
	// An unknown token is refused as unauthenticated, not rate limited: the limit is per token.
	refused(t, inc("nope"), http.StatusUnauthorized, domain.ErrUnauthenticated.Message)

	resp, err := env.HTTP.Get(env.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if want := `tally_http_requests_total{method="IncrementIntValueToKey",result="rate_limited"} 5`; !strings.Contains(string(body), want) {
		t.Fatalf("metrics lack %s", want)
	}
}
