package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
)

// TestAdminAPIIsAsStrictAsTheCLI sends raw JSON to the admin API: creating a token needs every
// lock, locks are validated, and unknown fields, duplicate keys and keys in the wrong case are
// refused with 400 naming the field. No refusal writes anything.
func TestAdminAPIIsAsStrictAsTheCLI(t *testing.T) {
	env := apitest.Start(t, nil)
	ctx := context.Background()
	p, err := env.Admin.CreateProduct(ctx, "P")
	if err != nil {
		t.Fatal(err)
	}
	k, err := env.Admin.CreateKey(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	pid, kid := strconv.FormatInt(p.ID, 10), strconv.FormatInt(k.ID, 10)
	token := func(fields ...string) string {
		return `{"name":"t","methods":["ListDataObjects"]` + strings.Join(append([]string{""}, fields...), ",") + `}`
	}
	cases := []struct {
		name, path, body string
		status           int
		msg              string // the message must contain it
	}{
		{"no locks", "/admin/v1/tokens", token(), 400, "productLock is required"},
		{"no product lock", "/admin/v1/tokens", token(`"keyLock":0`, `"featureLock":0`), 400, "productLock is required"},
		{"no key lock", "/admin/v1/tokens", token(`"productLock":0`, `"featureLock":0`), 400, "keyLock is required"},
		{"no feature lock", "/admin/v1/tokens", token(`"productLock":0`, `"keyLock":0`), 400, "featureLock is required"},
		{"a null lock", "/admin/v1/tokens", token(`"productLock":0`, `"keyLock":null`, `"featureLock":0`), 400, "keyLock is required"},
		{"key lock -5", "/admin/v1/tokens", token(`"productLock":0`, `"keyLock":-5`, `"featureLock":0`), 400, "key lock -5"},
		{"key lock -2", "/admin/v1/tokens", token(`"productLock":0`, `"keyLock":-2`, `"featureLock":0`), 400, "key lock -2"},
		{"key lock of no key", "/admin/v1/tokens", token(`"productLock":0`, `"keyLock":99`, `"featureLock":0`), 404, "key lock 99"},
		{"product lock -1", "/admin/v1/tokens", token(`"productLock":-1`, `"keyLock":0`, `"featureLock":0`), 400, "product lock -1"},
		{"product lock of no product", "/admin/v1/tokens", token(`"productLock":99`, `"keyLock":0`, `"featureLock":0`), 404, "product lock 99"},
		{"feature lock -1", "/admin/v1/tokens", token(`"productLock":0`, `"keyLock":0`, `"featureLock":-1`), 400, "feature lock"},
		{"a lock given twice", "/admin/v1/tokens", token(`"productLock":0`, `"keyLock":0`, `"featureLock":0`, `"keyLock":-1`), 400, `field \"keyLock\" is given twice`},
		{"a lock in lower case", "/admin/v1/tokens", token(`"productlock":`+pid, `"keyLock":0`, `"featureLock":0`), 400, `field \"productlock\": names are case-sensitive, the field is \"productLock\"`},
		{"a lock in upper case beside the right one", "/admin/v1/tokens", token(`"productLock":0`, `"PRODUCTLOCK":`+pid, `"keyLock":0`, `"featureLock":0`), 400, `\"PRODUCTLOCK\"`},
		{"an unknown field", "/admin/v1/tokens", token(`"productLock":0`, `"keyLock":0`, `"featureLock":0`, `"expires":"2030-01-01"`), 400, `unknown field \"expires\"`},
		{"methods in the wrong case", "/admin/v1/tokens", `{"Methods":["ListDataObjects"],"productLock":0,"keyLock":0,"featureLock":0}`, 400, `\"Methods\"`},
		{"product name twice", "/admin/v1/products", `{"name":"a","name":"b"}`, 400, `field \"name\" is given twice`},
		{"product name in the wrong case", "/admin/v1/products", `{"Name":"a"}`, 400, `field \"Name\": names are case-sensitive`},
		{"key product id in the wrong case", "/admin/v1/keys", `{"productID":` + pid + `}`, 400, `field \"productID\"`},
		{"key product id twice", "/admin/v1/keys", `{"productId":` + pid + `,"productId":` + pid + `}`, 400, `field \"productId\" is given twice`},
		{"an array, not an object", "/admin/v1/products", `[{"name":"a"}]`, 400, "request body"},
		{"trailing data", "/admin/v1/keys", `{"productId":` + pid + `}{}`, 400, "trailing data"},
	}
	head := func() eventstore.Position {
		t.Helper()
		h, err := eventstore.Head(ctx, env.Store, eventstore.Start)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before, tokens := head(), len(env.Ledger.Tokens())
			r := env.Send(adminRequest(t, env, http.MethodPost, tc.path, tc.body))
			if r.Status != tc.status || !bytes.Contains(r.Body, []byte(tc.msg)) {
				t.Fatalf("%s: %d %s; want %d with %s", tc.body, r.Status, r.Body, tc.status, tc.msg)
			}
			if after := head(); after != before || len(env.Ledger.Tokens()) != tokens {
				t.Fatalf("the refusal wrote: head %d -> %d, %d -> %d tokens", before, after, tokens, len(env.Ledger.Tokens()))
			}
		})
	}

	// With every lock, each of its allowed kinds is accepted.
	for _, locks := range [][]string{
		{`"productLock":0`, `"keyLock":0`, `"featureLock":0`},
		{`"productLock":` + pid, `"keyLock":-1`, `"featureLock":5`},
		{`"productLock":` + pid, `"keyLock":` + kid, `"featureLock":0`},
	} {
		r := env.Send(adminRequest(t, env, http.MethodPost, "/admin/v1/tokens", token(locks...)))
		if r.Status != http.StatusCreated || !bytes.Contains(r.Body, []byte(`"secret":"`)) {
			t.Errorf("%v: %d %s", locks, r.Status, r.Body)
		}
	}
}

// TestDecodeStrictJSON covers what the admin bodies do not: nested objects, maps and embedded
// structs.
func TestDecodeStrictJSON(t *testing.T) {
	type Inner struct {
		Amount int64 `json:"amount"`
	}
	type Base struct {
		ID int64 `json:"id"`
	}
	type body struct {
		Base
		Inner  Inner            `json:"inner"`
		List   []Inner          `json:"list"`
		Labels map[string]int   `json:"labels"`
		Any    any              `json:"any"`
		Skip   string           `json:"-"`
		Ptr    *Inner           `json:"ptr,omitempty"`
		Named  string           // no tag: its Go name
		Extra  map[string]Inner `json:"extra"`
		Raw    json.RawMessage  `json:"raw"`
		When   time.Time        `json:"when"`
	}
	cases := map[string]string{
		`{"inner":{"amount":1,"amount":2}}`:       `field "inner.amount" is given twice`,
		`{"inner":{"Amount":1}}`:                  `field "inner.Amount": names are case-sensitive`,
		`{"list":[{"amount":1},{"amont":1}]}`:     `unknown field "list[1].amont"`,
		`{"labels":{"a":1,"a":2}}`:                `field "labels.a" is given twice`,
		`{"any":{"x":{"y":1,"y":2}}}`:             `field "any.x.y" is given twice`,
		`{"Skip":"x"}`:                            `unknown field "Skip"`,
		`{"ptr":{"AMOUNT":1}}`:                    `field "ptr.AMOUNT"`,
		`{"named":"x"}`:                           `field "named": names are case-sensitive, the field is "Named"`,
		`{"ID":1}`:                                `field "ID": names are case-sensitive, the field is "id"`,
		`{"extra":{"k":{"amount":1,"Amount":2}}}`: `field "extra.k.Amount"`,
		`{"inner":{"amount":1}`:                   "not valid JSON",
		`{"raw":{"a":1,"a":2}}`:                   `field "raw.a" is given twice`,
	}
	for in, want := range cases {
		var b body
		err := httpapi.DecodeStrictJSON(strings.NewReader(in), &b)
		if !errors.Is(err, ledger.ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v; want %q", in, err, want)
		}
	}
	var b body
	in := `{"id":7,"inner":{"amount":1},"list":[{"amount":2}],"labels":{"a":1,"A":2},"any":{"x":1,"X":2},"ptr":{"amount":3},"Named":"n","extra":{"k":{"amount":4}},"raw":{"Any":{"thing":[1]}},"when":"2026-01-02T03:04:05Z"}`
	if err := httpapi.DecodeStrictJSON(strings.NewReader(in), &b); err != nil {
		t.Fatalf("%s: %v", in, err)
	}
	if b.ID != 7 || b.Inner.Amount != 1 || b.List[0].Amount != 2 || b.Labels["A"] != 2 || b.Ptr.Amount != 3 || b.Named != "n" || b.Extra["k"].Amount != 4 ||
		string(b.Raw) != `{"Any":{"thing":[1]}}` || b.When.Year() != 2026 {
		t.Errorf("decoded %+v", b)
	}
}
