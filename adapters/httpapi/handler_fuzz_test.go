package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
)

// FuzzDataAPI sends arbitrary method paths and parameters, by GET or POST, with one of a few
// real tokens, through the real handler (called directly, so that even requests no HTTP
// parser would pass reach it) on a real store. Every answer must be the API's JSON
// with result 0 or 1, never a 500, and a refusal must append nothing to the store.
func FuzzDataAPI(f *testing.F) {
	env := apitest.Start(f, nil)
	p := env.Product("P")
	k := env.Key(p.ID)
	other := env.Key(p.ID)
	p2 := env.Product("Q")
	tokens := []string{
		"",
		env.AllMethodsToken(),
		env.Token(ledger.TokenSpec{Methods: domain.AllMethods, KeyLock: -1, FeatureLock: 2}),
		env.Token(ledger.TokenSpec{Methods: domain.AllMethods, ProductLock: p2.ID}),
		env.Token(ledger.TokenSpec{Methods: []domain.Method{domain.MethodListDataObjects}, KeyLock: other.ID}),
	}
	pid := strconv.FormatInt(p.ID, 10)
	owner := "ProductId=" + pid + "&Key=" + k.Key
	for _, m := range []string{"AddDataObject", "ListDataObjects", "SetIntValue", "SetStringValue", "IncrementIntValue", "DecrementIntValue", "RemoveDataObject", "UploadValues"} {
		f.Add(m+"ToKey", owner+"&Id=1&Name=n&IntValue=3&EnableBound=true&Bound=5", "", true, uint8(1))
		f.Add(m, "ReferencerType=2&ReferencerId="+strconv.FormatInt(k.ID, 10)+"&Name=n&IntValue=-2147483648", "StringValue=%00", false, uint8(2))
		f.Add(strings.ToLower(m)+"/", "ReferencerType=1&ReferencerId="+pid+"&ShowAll=True&Data=AAAA", "intvalue=1e3", true, uint8(3))
	}
	f.Add("//IncrementIntValueToKey//", owner+"&Name=n&IntValue=2147483647", "Id=9223372036854775807", true, uint8(4))
	f.Add("AddDataObjectToKey", owner, "Name="+strings.Repeat("x", 101)+"&CheckForDuplicates=1", true, uint8(1))

	h, err := httpapi.New(httpapi.Config{Ledger: env.Ledger})
	if err != nil {
		f.Fatal(err)
	}
	// known is the store's head as last seen; fuzz calls run one at a time in a process.
	known := head(f, env.Store, 0)
	f.Fuzz(func(t *testing.T, path, query, body string, post bool, tokenChoice uint8) {
		tok := tokens[int(tokenChoice)%len(tokens)]
		if tok != "" {
			body += "&token=" + tok
		}
		method := http.MethodGet
		if post {
			method = http.MethodPost
		}
		req := httptest.NewRequest(method, "/api/data/", strings.NewReader(body))
		// The path and query go in as they are, escaped or not, even what no HTTP parser
		// would let through: the handler is called directly.
		req.URL.Path = "/api/data/" + path
		req.URL.RawQuery = query
		if post {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		} else {
			req.URL.RawQuery = query + "&" + body
			req.Body = http.NoBody
		}
		before := head(t, env.Store, known)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		resp, answer := rec.Result(), rec.Body.Bytes()
		if resp.StatusCode == http.StatusInternalServerError {
			t.Fatalf("500 for %s %q ? %q body %q: %s", method, path, query, body, answer)
		}
		var res struct {
			Result  *int    `json:"result"`
			Message *string `json:"message"`
		}
		if err := json.Unmarshal(answer, &res); err != nil || res.Result == nil || (*res.Result != 0 && *res.Result != 1) {
			t.Fatalf("%d %q is not a Cryptolens answer (%s %q ? %q body %q)", resp.StatusCode, answer, method, path, query, body)
		}
		if *res.Result == 1 {
			if res.Message == nil || *res.Message == "" || resp.StatusCode == http.StatusOK {
				t.Fatalf("refusal without a message or with 200: %d %s", resp.StatusCode, answer)
			}
			if after := head(t, env.Store, before); after != before {
				t.Fatalf("a refusal (%s) appended to the store: position %d -> %d", answer, before, after)
			}
		} else if resp.StatusCode != http.StatusOK {
			t.Fatalf("success with status %d: %s", resp.StatusCode, answer)
		}
		known = head(t, env.Store, before)
	})
}

// head is the position of the store's last event, reading on from position from.
func head(t testing.TB, s eventstore.Store, from eventstore.Position) eventstore.Position {
	t.Helper()
	pos := from
	for {
		evs, err := s.ReadAll(context.Background(), pos, 1024)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			return pos
		}
		pos = evs[len(evs)-1].Position
	}
}
