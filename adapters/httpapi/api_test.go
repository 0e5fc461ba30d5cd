package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
)

// vals builds parameters from name, value pairs.
func vals(kv ...string) url.Values {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Add(kv[i], kv[i+1])
	}
	return v
}

// with returns a copy of base with the pairs added.
func with(base url.Values, kv ...string) url.Values {
	v := url.Values{}
	for k, vs := range base {
		v[k] = append([]string(nil), vs...)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return v
}

// fixture is a running service with one product, two keys of it, and a token with every
// permission.
type fixture struct {
	env     *apitest.Env
	product domain.Product
	key     domain.LicenseKey
	other   domain.LicenseKey
	token   string
}

func newFixture(t *testing.T) *fixture { return newFixtureOn(t, nil) }

// newFixtureOn is newFixture on the store open returns (nil: embedded).
func newFixtureOn(t *testing.T, open func(testing.TB) eventstore.Store) *fixture {
	t.Helper()
	env := apitest.Start(t, open)
	p := env.Product("Product A")
	return &fixture{env: env, product: p, key: env.Key(p.ID), other: env.Key(p.ID), token: env.AllMethodsToken()}
}

// toKey is the owner parameters of the fixture's key, with a token.
func (f *fixture) toKey(token string) url.Values {
	return vals("token", token, "ProductId", strconv.FormatInt(f.product.ID, 10), "Key", f.key.Key)
}

// general is the owner parameters of a referencer, with a token.
func general(token string, typ domain.OwnerType, id int64) url.Values {
	return vals("token", token, "ReferencerType", strconv.Itoa(int(typ)), "ReferencerId", strconv.FormatInt(id, 10))
}

// ok asserts a successful answer and returns it.
func ok(t *testing.T, r apitest.Response) apitest.Result {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("status %d, body %s", r.Status, r.Body)
	}
	res := r.Result(t)
	if res.Result != 0 || res.Message != nil {
		t.Fatalf("not a success: %s", r.Body)
	}
	return res
}

// refused asserts a refusal with a status and the exact message.
func refused(t *testing.T, r apitest.Response, status int, msg string) {
	t.Helper()
	res := r.Result(t)
	if r.Status != status || res.Result != 1 || res.Msg() != msg {
		t.Fatalf("got status %d body %s; want status %d message %q", r.Status, r.Body, status, msg)
	}
}

// add creates an object through the API and returns its id.
func (f *fixture) add(t *testing.T, owner url.Values, method, name string, intValue int32) int64 {
	t.Helper()
	res := ok(t, f.env.Call(method, with(owner, "Name", name, "IntValue", strconv.Itoa(int(intValue)))))
	if res.ID <= 0 {
		t.Fatalf("AddDataObject returned id %d", res.ID)
	}
	return res.ID
}

func (f *fixture) value(t *testing.T, id int64) int32 {
	t.Helper()
	o, found := f.env.Object(id)
	if !found {
		t.Fatalf("object %d not projected", id)
	}
	return o.IntValue
}

func TestExactResultBodies(t *testing.T) { forEachBackend(t, testExactResultBodies) }

func testExactResultBodies(t *testing.T, open func(testing.TB) eventstore.Store) {
	f := newFixtureOn(t, open)
	owner := f.toKey(f.token)

	r := f.env.Call("AddDataObjectToKey", with(owner, "Name", "usage", "StringValue", "a<b>&c", "IntValue", "5"))
	id := r.Result(t).ID
	if want := fmt.Sprintf(`{"result":0,"message":null,"id":%d}`, id); string(r.Body) != want {
		t.Fatalf("AddDataObject body %s, want %s", r.Body, want)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Fatalf("content type %q", ct)
	}

	r = f.env.Call("ListDataObjectsToKey", owner)
	want := fmt.Sprintf(`{"result":0,"message":null,"dataObjects":[{"id":%d,"name":"usage","stringValue":"a<b>&c","intValue":5}]}`, id)
	if string(r.Body) != want {
		t.Fatalf("ListDataObjects body %s, want %s", r.Body, want)
	}

	r = f.env.Call("ListDataObjects", with(general(f.token, domain.OwnerUser, 0), "ShowAll", "True"))
	want = fmt.Sprintf(`{"result":0,"message":null,"dataObjects":[{"id":%d,"name":"usage","stringValue":"a<b>&c","intValue":5,"referencerType":2,"referencerId":%d}]}`, id, f.key.ID)
	if string(r.Body) != want {
		t.Fatalf("ListDataObjects ShowAll body %s, want %s", r.Body, want)
	}

	r = f.env.Call("ListDataObjectsToKey", with(owner, "Contains", "nothing-matches"))
	if want := `{"result":0,"message":null,"dataObjects":[]}`; string(r.Body) != want {
		t.Fatalf("empty list body %s, want %s", r.Body, want)
	}

	r = f.env.Call("IncrementIntValueToKey", with(owner, "Id", strconv.FormatInt(id, 10), "IntValue", "1"))
	if want := `{"result":0,"message":null}`; string(r.Body) != want {
		t.Fatalf("basic body %s, want %s", r.Body, want)
	}

	r = f.env.Call("IncrementIntValueToKey", with(owner, "token", "wrong"))
	if want := `{"result":1,"message":"Unable to authenticate."}`; string(r.Body) != want || r.Status != http.StatusUnauthorized {
		t.Fatalf("error body %s (status %d), want %s", r.Body, r.Status, want)
	}
}

// TestEveryMethod runs every method in both forms and checks what it did.
func TestEveryMethod(t *testing.T) { forEachBackend(t, testEveryMethod) }

func testEveryMethod(t *testing.T, open func(testing.TB) eventstore.Store) {
	f := newFixtureOn(t, open)
	forms := []struct {
		name   string
		suffix string
		owner  url.Values
		ref    domain.Owner
	}{
		{"ToKey", "ToKey", f.toKey(f.token), domain.Owner{Type: domain.OwnerKey, ID: f.key.ID}},
		{"User", "", general(f.token, domain.OwnerUser, 0), domain.Owner{Type: domain.OwnerUser}},
		{"Product", "", general(f.token, domain.OwnerProduct, f.product.ID), domain.Owner{Type: domain.OwnerProduct, ID: f.product.ID}},
		{"Key", "", general(f.token, domain.OwnerKey, f.key.ID), domain.Owner{Type: domain.OwnerKey, ID: f.key.ID}},
	}
	for _, form := range forms {
		t.Run(form.name, func(t *testing.T) {
			name := "obj-" + form.name
			idRes := ok(t, f.env.Call("AddDataObject"+form.suffix, with(form.owner, "Name", name, "StringValue", "hello", "IntValue", "10")))
			id := idRes.ID
			o, _ := f.env.Object(id)
			if o.Owner != form.ref || o.Name != name || o.StringValue != "hello" || o.IntValue != 10 {
				t.Fatalf("added object %+v", o)
			}
			byID := with(form.owner, "Id", strconv.FormatInt(id, 10))
			byName := with(form.owner, "Name", name)

			ok(t, f.env.Call("SetIntValue"+form.suffix, with(byID, "IntValue", "-7")))
			if v := f.value(t, id); v != -7 {
				t.Fatalf("after SetIntValue: %d", v)
			}
			ok(t, f.env.Call("SetStringValue"+form.suffix, with(byName, "StringValue", "by name")))
			if o, _ := f.env.Object(id); o.StringValue != "by name" {
				t.Fatalf("after SetStringValue: %q", o.StringValue)
			}
			ok(t, f.env.Call("IncrementIntValue"+form.suffix, with(byID, "IntValue", "5")))
			ok(t, f.env.Call("IncrementIntValue"+form.suffix, with(byName, "IntValue", "-5"))) // -5 acts as 5
			if v := f.value(t, id); v != 3 {
				t.Fatalf("after increments: %d", v)
			}
			ok(t, f.env.Call("DecrementIntValue"+form.suffix, with(byName, "IntValue", "4")))
			if v := f.value(t, id); v != -1 {
				t.Fatalf("after decrement: %d", v)
			}
			list := ok(t, f.env.Call("ListDataObjects"+form.suffix, with(form.owner, "Contains", strings.ToUpper(name))))
			if len(list.DataObjects) != 1 || list.DataObjects[0].ID != id || list.DataObjects[0].IntValue != -1 ||
				list.DataObjects[0].StringValue != "by name" || list.DataObjects[0].ReferencerType != nil {
				t.Fatalf("listed %+v", list.DataObjects)
			}
			ok(t, f.env.Call("RemoveDataObject"+form.suffix, byID))
			if o, _ := f.env.Object(id); !o.Removed {
				t.Fatalf("object %d not removed", id)
			}
			refused(t, f.env.Call("IncrementIntValue"+form.suffix, with(byID, "IntValue", "1")), http.StatusNotFound, domain.ErrDataObjectNotFound.Message)
		})
	}
}

// TestTransport covers how the SDKs send requests: GET or POST, any path casing, trailing and
// doubled slashes, parameter names in any case, booleans in every spelling.
func TestTransport(t *testing.T) { forEachBackend(t, testTransport) }

func testTransport(t *testing.T, open func(testing.TB) eventstore.Store) {
	f := newFixtureOn(t, open)
	id := f.add(t, f.toKey(f.token), "AddDataObjectToKey", "counter", 0)
	pid := strconv.FormatInt(f.product.ID, 10)
	sid := strconv.FormatInt(id, 10)
	params := vals("token", f.token, "ProductId", pid, "Key", f.key.Key, "Id", sid, "IntValue", "1")
	lower := vals("token", f.token, "productid", pid, "key", f.key.Key, "id", sid, "intvalue", "1")
	mixed := vals("TOKEN", f.token, "productId", pid, "KEY", f.key.Key, "iD", sid, "intValue", "1", "v", "1", "modelversion", "1")

	cases := []struct {
		name   string
		method string
		path   string
		params url.Values
	}{
		{"POST", http.MethodPost, "/api/data/IncrementIntValueToKey", params},
		{"GET", http.MethodGet, "/api/data/IncrementIntValueToKey", params},
		{"lower-case path", http.MethodPost, "/api/data/incrementintvaluetokey", params},
		{"upper-case path", http.MethodGet, "/API/DATA/INCREMENTINTVALUETOKEY", params},
		{"trailing slash", http.MethodPost, "/api/data/IncrementIntValueToKey/", params},
		{"doubled slash", http.MethodPost, "/api//data/IncrementIntValueToKey/", params},
		{"many slashes", http.MethodGet, "//api///data//incrementIntValueToKey//", params},
		{"lower-case names", http.MethodPost, "/api/data/IncrementIntValueToKey", lower},
		{"mixed-case names, v and modelversion", http.MethodGet, "/api/data/IncrementIntValueToKey", mixed},
	}
	want := int32(0)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ok(t, f.env.Do(c.method, c.path, c.params))
			want++
			if v := f.value(t, id); v != want {
				t.Fatalf("value %d, want %d", v, want)
			}
		})
	}

	t.Run("query and form together", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, f.env.URL+"/api/data/IncrementIntValueToKey?token="+url.QueryEscape(f.token)+"&Id="+sid,
			strings.NewReader(vals("ProductId", pid, "Key", f.key.Key, "IntValue", "1").Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		ok(t, f.env.Send(req))
		want++
		if v := f.value(t, id); v != want {
			t.Fatalf("value %d, want %d", v, want)
		}
	})

	t.Run("token as a bearer header", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, f.env.URL+"/api/data/IncrementIntValueToKey",
			strings.NewReader(vals("ProductId", pid, "Key", f.key.Key, "Id", sid, "IntValue", "1").Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", "Bearer "+f.token)
		ok(t, f.env.Send(req))
		want++
		if v := f.value(t, id); v != want {
			t.Fatalf("value %d, want %d", v, want)
		}
	})

	for _, b := range []struct {
		spelling string
		on       bool
	}{{"True", true}, {"true", true}, {"TRUE", true}, {"1", true}, {"False", false}, {"false", false}, {"0", false}, {"", false}} {
		t.Run("boolean "+strconv.Quote(b.spelling), func(t *testing.T) {
			// With the bound enabled at the current value, the increment is refused.
			r := f.env.Call("IncrementIntValueToKey", with(params, "EnableBound", b.spelling, "Bound", strconv.Itoa(int(want))))
			if b.on {
				refused(t, r, http.StatusUnprocessableEntity, domain.ErrBoundReached.Message)
				return
			}
			ok(t, r)
			want++
		})
	}
	refused(t, f.env.Call("IncrementIntValueToKey", with(params, "EnableBound", "yes")), http.StatusBadRequest, domain.ErrInvalidInput.Message)
	if v := f.value(t, id); v != want {
		t.Fatalf("value %d, want %d", v, want)
	}

	t.Run("other HTTP methods", func(t *testing.T) {
		r := f.env.Do(http.MethodPut, "/api/data/IncrementIntValueToKey", params)
		refused(t, r, http.StatusMethodNotAllowed, "Use GET or POST.")
	})
	t.Run("unknown method", func(t *testing.T) {
		refused(t, f.env.Call("FrobnicateToKey", params), http.StatusNotFound, "Unknown method.")
	})
}

// TestRequestIDAndCaller checks that the request id is echoed and recorded on the event with
// the client's address.
func TestRequestIDAndCaller(t *testing.T) {
	f := newFixture(t)
	req, _ := http.NewRequest(http.MethodPost, f.env.URL+"/api/data/AddDataObjectToKey",
		strings.NewReader(with(f.toKey(f.token), "Name", "x").Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Request-ID", "req-42.a:b")
	r := f.env.Send(req)
	res := ok(t, r)
	if got := r.Header.Get("X-Request-ID"); got != "req-42.a:b" {
		t.Fatalf("echoed request id %q", got)
	}
	evs, err := f.env.Store.ReadStream(context.Background(), domain.DataObjectStream(res.ID), eventstore.Forwards, 0, 10)
	if err != nil || len(evs) != 1 {
		t.Fatalf("read stream: %v (%d events)", err, len(evs))
	}
	var meta domain.Metadata
	if err := json.Unmarshal(evs[0].Metadata, &meta); err != nil {
		t.Fatal(err)
	}
	tok, _ := f.env.Ledger.Authenticate(context.Background(), f.token)
	if meta.RequestID != "req-42.a:b" || meta.ClientAddr != "127.0.0.1" || meta.TokenID != tok.ID || meta.Admin {
		t.Fatalf("metadata %+v", meta)
	}

	// An id that is not plain is replaced by a fresh one.
	req, _ = http.NewRequest(http.MethodGet, f.env.URL+"/healthz", nil)
	req.Header.Set("X-Request-ID", "bad id\twith spaces")
	r = f.env.Send(req)
	if got := r.Header.Get("X-Request-ID"); got == "" || strings.Contains(got, " ") {
		t.Fatalf("request id %q", got)
	}
}

// TestListDataObjects covers Contains and ShowAll, and what each token may see.
func TestListDataObjects(t *testing.T) { forEachBackend(t, testListDataObjects) }

func testListDataObjects(t *testing.T, open func(testing.TB) eventstore.Store) {
	f := newFixtureOn(t, open)
	p2 := f.env.Product("Product B")
	k2 := f.env.Key(p2.ID)
	f.add(t, general(f.token, domain.OwnerUser, 0), "AddDataObject", "user-Seats", 1)
	f.add(t, general(f.token, domain.OwnerProduct, f.product.ID), "AddDataObject", "productA-seats", 2)
	f.add(t, f.toKey(f.token), "AddDataObjectToKey", "keyA-cpu", 3)
	f.add(t, general(f.token, domain.OwnerProduct, p2.ID), "AddDataObject", "productB-seats", 4)
	f.add(t, vals("token", f.token, "ProductId", strconv.FormatInt(p2.ID, 10), "Key", k2.Key), "AddDataObjectToKey", "keyB-SEATS", 5)

	names := func(objs []apitest.DataObject) string {
		var out []string
		for _, o := range objs {
			s := o.Name
			if o.ReferencerType != nil {
				s += fmt.Sprintf("@%d/%d", *o.ReferencerType, *o.ReferencerID)
			}
			out = append(out, s)
		}
		return strings.Join(out, ",")
	}
	productLocked := f.env.Token(ledger.TokenSpec{Methods: []domain.Method{domain.MethodListDataObjects}, ProductLock: f.product.ID})
	keySpecificOnly := f.env.Token(ledger.TokenSpec{Methods: []domain.Method{domain.MethodListDataObjects}, KeyLock: -1})
	cases := []struct {
		name   string
		method string
		params url.Values
		want   string
	}{
		{"owner only", "ListDataObjects", general(f.token, domain.OwnerProduct, f.product.ID), "productA-seats"},
		{"user", "ListDataObjects", general(f.token, domain.OwnerUser, 0), "user-Seats"},
		{"key", "ListDataObjectsToKey", f.toKey(f.token), "keyA-cpu"},
		{"contains, any case", "ListDataObjects", with(general(f.token, domain.OwnerUser, 0), "ShowAll", "true", "Contains", "SeAtS"),
			fmt.Sprintf("user-Seats@0/0,productA-seats@1/%d,productB-seats@1/%d,keyB-SEATS@2/%d", f.product.ID, p2.ID, k2.ID)},
		{"show all", "ListDataObjects", with(vals("token", f.token), "ShowAll", "True"),
			fmt.Sprintf("user-Seats@0/0,productA-seats@1/%d,keyA-cpu@2/%d,productB-seats@1/%d,keyB-SEATS@2/%d", f.product.ID, f.key.ID, p2.ID, k2.ID)},
		{"show all ignores a bad referencer", "ListDataObjects", vals("token", f.token, "ShowAll", "true", "ReferencerType", "9", "Contains", "cpu"),
			fmt.Sprintf("keyA-cpu@2/%d", f.key.ID)},
		{"show all within a product lock", "ListDataObjects", vals("token", productLocked, "ShowAll", "true"),
			fmt.Sprintf("productA-seats@1/%d,keyA-cpu@2/%d", f.product.ID, f.key.ID)},
		{"show all with a negative key lock", "ListDataObjects", vals("token", keySpecificOnly, "ShowAll", "true"), ""},
		{"show all is ignored by the key form", "ListDataObjectsToKey", with(f.toKey(f.token), "ShowAll", "true"), "keyA-cpu"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := ok(t, f.env.Call(c.method, c.params))
			if got := names(res.DataObjects); got != c.want {
				t.Fatalf("listed %q, want %q", got, c.want)
			}
		})
	}
}

// TestMalformedQueryIsRefusedInTheAPIsOrder: a query string Go cannot fully parse (a stray
// '%', a ';') is refused as incorrect input, but only after the token is checked.
func TestMalformedQueryIsRefusedInTheAPIsOrder(t *testing.T) {
	f := newFixture(t)
	get := func(rawQuery string) apitest.Response {
		req, err := http.NewRequest(http.MethodGet, f.env.URL+"/api/data/ListDataObjectsToKey?"+rawQuery, nil)
		if err != nil {
			t.Fatal(err)
		}
		return f.env.Send(req)
	}
	owner := fmt.Sprintf("ProductId=%d&Key=%s", f.product.ID, f.key.Key)
	refused(t, get("token=wrong&"+owner+"&x=%zz"), 401, "Unable to authenticate.")
	refused(t, get("token="+f.token+"&"+owner+"&x=%zz"), 400, "The input parameters were incorrect.")
	refused(t, get("token="+f.token+"&"+owner+"&a=1;b=2"), 400, "The input parameters were incorrect.")
	ok(t, get("token="+f.token+"&"+owner))
}
