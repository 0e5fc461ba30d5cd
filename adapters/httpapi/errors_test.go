package httpapi_test

import (
	"context"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
)

// TestErrorRows covers every row of the spec's error table that a direct call can reach (the
// usage-log rows are the upload tests'), with the status each kind gets, and the order of
// checks: token, permission, owner, then the rest.
func TestErrorRows(t *testing.T) { forEachBackend(t, testErrorRows) }

func testErrorRows(t *testing.T, open func(testing.TB) eventstore.Store) {
	f := newFixtureOn(t, open)
	env := f.env
	p2 := env.Product("Product B")
	k2 := env.Key(p2.ID)
	objID := f.add(t, f.toKey(f.token), "AddDataObjectToKey", "obj", 0)
	productObj := f.add(t, general(f.token, domain.OwnerProduct, f.product.ID), "AddDataObject", "pobj", 0)

	listOnly := env.Token(ledger.TokenSpec{Methods: []domain.Method{domain.MethodListDataObjects}})
	incOnly := env.Token(ledger.TokenSpec{Methods: []domain.Method{domain.MethodIncrementIntValue}})
	lockedToP2 := env.Token(ledger.TokenSpec{Methods: domain.AllMethods, ProductLock: p2.ID})
	lockedToKey := env.Token(ledger.TokenSpec{Methods: domain.AllMethods, KeyLock: f.key.ID})
	feature1 := env.Token(ledger.TokenSpec{Methods: domain.AllMethods, FeatureLock: 1})
	revoked := env.Token(ledger.TokenSpec{Methods: domain.AllMethods})
	revTok, err := env.Ledger.Authenticate(context.Background(), revoked)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Ledger.RevokeToken(context.Background(), ledger.Caller{Admin: true}, revTok.ID); err != nil {
		t.Fatal(err)
	}

	pid := strconv.FormatInt(f.product.ID, 10)
	oid := strconv.FormatInt(objID, 10)
	inc := func(token string, kv ...string) url.Values {
		return with(vals("token", token, "ProductId", pid, "Key", f.key.Key, "Id", oid, "IntValue", "1"), kv...)
	}
	without := func(v url.Values, names ...string) url.Values {
		v = with(v)
		for _, n := range names {
			v.Del(n)
		}
		return v
	}
	const (
		unauth    = "Unable to authenticate."
		denied    = "Access denied."
		noProduct = "Not enough permission and/or product not found."
		noKey     = "Not enough permission and/or key not found."
		incorrect = "The input parameters were incorrect."
		refType   = "Incorrect 'ReferencerType'. It can either be 0 (for a User), 1 (for a Product) and 2 (for a Key)."
		feature   = "The increment/decrement value not allowed by security settings."
		dataEmpty = "Data parameter was empty."
		corrupted = "Data parameter was corrupted."
	)
	rows := []struct {
		name   string
		method string
		params url.Values
		status int
		msg    string
	}{
		{"no token", "IncrementIntValueToKey", without(inc(""), "token"), 401, unauth},
		{"unknown token", "IncrementIntValueToKey", inc("not-a-token"), 401, unauth},
		{"revoked token", "IncrementIntValueToKey", inc(revoked), 401, unauth},
		{"token checked before anything else", "IncrementIntValueToKey", inc("nope", "ProductId", "x", "IntValue", "x"), 401, unauth},
		{"no permission", "IncrementIntValueToKey", inc(listOnly), 403, denied},
		{"no permission, general form", "AddDataObject", general(listOnly, domain.OwnerUser, 0), 403, denied},
		{"permission checked before a malformed value", "IncrementIntValueToKey", inc(listOnly, "IntValue", "abc"), 403, denied},
		{"permission checked before a malformed owner", "IncrementIntValueToKey", inc(listOnly, "ProductId", "abc"), 403, denied},
		{"unknown product", "IncrementIntValueToKey", inc(f.token, "ProductId", "999"), 404, noProduct},
		{"product outside the lock", "IncrementIntValueToKey", inc(lockedToP2), 404, noProduct},
		{"product checked before a malformed value", "IncrementIntValueToKey", inc(lockedToP2, "IntValue", "abc"), 404, noProduct},
		{"product checked before the feature lock", "IncrementIntValueToKey", inc(f.token, "ProductId", "999", "IntValue", "5"), 404, noProduct},
		{"product outside the lock, general form", "ListDataObjects", general(lockedToP2, domain.OwnerProduct, f.product.ID), 404, noProduct},
		{"missing ProductId", "IncrementIntValueToKey", without(inc(f.token), "ProductId"), 400, incorrect},
		{"missing ProductId, add", "AddDataObjectToKey", vals("token", f.token, "Key", f.key.Key, "Name", "n"), 400, incorrect},
		{"malformed ProductId", "ListDataObjectsToKey", vals("token", f.token, "ProductId", "1.5", "Key", f.key.Key), 400, incorrect},
		{"missing key", "IncrementIntValueToKey", without(inc(f.token), "Key"), 404, noKey},
		{"unknown key", "IncrementIntValueToKey", inc(f.token, "Key", "AAAAA-BBBBB-CCCCC-DDDDD"), 404, noKey},
		{"key of another product", "IncrementIntValueToKey", inc(f.token, "Key", k2.Key), 404, noKey},
		{"positive key lock on a key-specific method", "IncrementIntValueToKey", inc(lockedToKey), 404, noKey},
		{"unknown key, general form", "ListDataObjects", general(f.token, domain.OwnerKey, 999), 404, noKey},
		{"referencer type 3", "ListDataObjects", general(f.token, 3, 0), 400, refType},
		{"referencer type -1", "AddDataObject", general(f.token, -1, 0), 400, refType},
		{"malformed referencer type", "ListDataObjects", vals("token", f.token, "ReferencerType", "user"), 400, incorrect},
		{"malformed referencer id", "ListDataObjects", vals("token", f.token, "ReferencerType", "1", "ReferencerId", "one"), 400, incorrect},
		{"malformed IntValue", "IncrementIntValueToKey", inc(f.token, "IntValue", "abc"), 400, incorrect},
		{"IntValue above int32", "SetIntValueToKey", inc(f.token, "IntValue", "2147483648"), 400, incorrect},
		{"IntValue below int32", "AddDataObjectToKey", inc(f.token, "IntValue", "-2147483649", "Name", "n"), 400, incorrect},
		{"malformed Id", "RemoveDataObjectToKey", inc(f.token, "Id", "1e3"), 400, incorrect},
		{"malformed Bound", "DecrementIntValueToKey", inc(f.token, "Bound", "1.5"), 400, incorrect},
		{"malformed boolean", "AddDataObjectToKey", inc(f.token, "CheckForDuplicates", "yes", "Name", "n"), 400, incorrect},
		{"neither Id nor Name", "SetIntValueToKey", without(inc(f.token), "Id"), 400, incorrect},
		{"unknown object", "SetIntValueToKey", inc(f.token, "Id", "99999"), 404, domain.ErrDataObjectNotFound.Message},
		{"unknown object by name", "SetIntValueToKey", with(without(inc(f.token), "Id"), "Name", "nope"), 404, domain.ErrDataObjectNotFound.Message},
		{"another owner's object", "IncrementIntValueToKey", inc(f.token, "Id", strconv.FormatInt(productObj, 10)), 404, domain.ErrDataObjectNotFound.Message},
		{"duplicate name", "AddDataObjectToKey", inc(f.token, "Name", "obj", "CheckForDuplicates", "True"), 422, domain.ErrDuplicateName.Message},
		{"name too long", "AddDataObjectToKey", inc(f.token, "Name", strings.Repeat("n", 101)), 400, domain.ErrNameTooLong.Message},
		{"string value too long", "SetStringValueToKey", inc(f.token, "StringValue", strings.Repeat("s", 10001)), 400, domain.ErrStringValueTooLong.Message},
		{"string value checked after the product", "SetStringValueToKey", inc(f.token, "ProductId", "999", "StringValue", strings.Repeat("s", 10001)), 404, noProduct},
		{"increment above the feature lock", "IncrementIntValueToKey", inc(feature1, "IntValue", "2"), 403, feature},
		{"decrement above the feature lock", "DecrementIntValueToKey", inc(feature1, "IntValue", "-2"), 403, feature},

		{"upload: no token", "UploadValuesToKey", vals("ProductId", pid, "Key", f.key.Key, "Data", "x"), 401, unauth},
		{"upload: no increment or decrement permission", "UploadValuesToKey", vals("token", listOnly, "ProductId", pid, "Key", f.key.Key, "Data", "x"), 403, denied},
		{"upload: unknown product", "UploadValuesToKey", vals("token", incOnly, "ProductId", "999", "Key", f.key.Key, "Data", "x"), 404, noProduct},
		{"upload: product outside the lock", "UploadValuesToKey", vals("token", lockedToP2, "ProductId", pid, "Key", f.key.Key, "Data", "x"), 404, noProduct},
		{"upload: missing ProductId", "UploadValuesToKey", vals("token", incOnly, "Key", f.key.Key, "Data", "x"), 400, incorrect},
		{"upload: missing key before empty data", "UploadValuesToKey", vals("token", incOnly, "ProductId", pid), 404, noKey},
		{"upload: positive key lock", "UploadValuesToKey", vals("token", lockedToKey, "ProductId", pid, "Key", f.key.Key, "Data", "x"), 404, noKey},
		{"upload: data missing", "UploadValuesToKey", vals("token", incOnly, "ProductId", pid, "Key", f.key.Key), 400, dataEmpty},
		{"upload: data empty", "UploadValuesToKey", vals("token", incOnly, "ProductId", pid, "Key", f.key.Key, "Data", ""), 400, dataEmpty},
		{"upload: malformed Id", "UploadValuesToKey", vals("token", incOnly, "ProductId", pid, "Key", f.key.Key, "Id", "x", "Data", "x"), 400, incorrect},
		{"upload: no decoder configured", "UploadValuesToKey", vals("token", incOnly, "ProductId", pid, "Key", f.key.Key, "Data", "AAAA"), 400, corrupted},
		{"upload general: referencer type", "UploadValues", with(general(incOnly, 7, 0), "Data", "x"), 400, refType},
		{"upload general: data empty", "UploadValues", general(incOnly, domain.OwnerKey, f.key.ID), 400, dataEmpty},
		{"upload general: unknown key", "UploadValues", with(general(incOnly, domain.OwnerKey, 999), "Data", "x"), 404, noKey},
		{"upload general: no permission", "UploadValues", with(general(listOnly, domain.OwnerKey, f.key.ID), "Data", "x"), 403, denied},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			r := env.Call(row.method, row.params)
			refused(t, r, row.status, row.msg)
			if row.status == http.StatusUnauthorized && r.Header.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
		})
	}
	// None of the refusals changed the object.
	if o, _ := env.Object(objID); o.IntValue != 0 || o.Revision != 0 {
		t.Fatalf("object changed by refused calls: %+v", o)
	}
}

// TestOverflowAndBounds checks that a change leaving int32 or passing an enabled bound changes
// nothing and says why.
func TestOverflowAndBounds(t *testing.T) { forEachBackend(t, testOverflowAndBounds) }

func testOverflowAndBounds(t *testing.T, open func(testing.TB) eventstore.Store) {
	f := newFixtureOn(t, open)
	owner := f.toKey(f.token)
	id := f.add(t, owner, "AddDataObjectToKey", "n", 0)
	obj := with(owner, "Id", strconv.FormatInt(id, 10))
	set := func(v int64) { ok(t, f.env.Call("SetIntValueToKey", with(obj, "IntValue", strconv.FormatInt(v, 10)))) }
	limit := "Cannot increment/decrement value since the limit was reached for an int32."
	bound := domain.ErrBoundReached.Message

	steps := []struct {
		name   string
		start  int64
		method string
		kv     []string
		status int    // 0: success
		msg    string // the refusal
		want   int64
	}{
		{"increment to MaxInt32", math.MaxInt32 - 2, "IncrementIntValueToKey", []string{"IntValue", "2"}, 0, "", math.MaxInt32},
		{"increment past MaxInt32", math.MaxInt32 - 2, "IncrementIntValueToKey", []string{"IntValue", "3"}, 422, limit, math.MaxInt32 - 2},
		{"increment by MaxInt32 from MaxInt32", math.MaxInt32, "IncrementIntValueToKey", []string{"IntValue", "2147483647"}, 422, limit, math.MaxInt32},
		{"increment by MinInt32 acts as 2^31", 0, "IncrementIntValueToKey", []string{"IntValue", "-2147483648"}, 422, limit, 0},
		{"decrement to MinInt32", math.MinInt32 + 2, "DecrementIntValueToKey", []string{"IntValue", "2"}, 0, "", math.MinInt32},
		{"decrement past MinInt32", math.MinInt32 + 2, "DecrementIntValueToKey", []string{"IntValue", "3"}, 422, limit, math.MinInt32 + 2},
		{"negative decrement acts as positive", math.MinInt32, "DecrementIntValueToKey", []string{"IntValue", "-1"}, 422, limit, math.MinInt32},
		{"increment up to the bound", 8, "IncrementIntValueToKey", []string{"IntValue", "2", "EnableBound", "True", "Bound", "10"}, 0, "", 10},
		{"increment past the bound", 9, "IncrementIntValueToKey", []string{"IntValue", "2", "EnableBound", "true", "Bound", "10"}, 422, bound, 9},
		{"bound ignored unless enabled", 9, "IncrementIntValueToKey", []string{"IntValue", "2", "EnableBound", "false", "Bound", "10"}, 0, "", 11},
		{"decrement down to the bound", 2, "DecrementIntValueToKey", []string{"IntValue", "2", "EnableBound", "True", "Bound", "0"}, 0, "", 0},
		{"decrement past the bound", 1, "DecrementIntValueToKey", []string{"IntValue", "2", "EnableBound", "True", "Bound", "0"}, 422, bound, 1},
		{"bound beyond int32 still meets the int32 limit", math.MaxInt32, "IncrementIntValueToKey", []string{"IntValue", "1", "EnableBound", "True", "Bound", "9999999999"}, 422, limit, math.MaxInt32},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			set(s.start)
			before, _ := f.env.Object(id)
			r := f.env.Call(s.method, with(obj, s.kv...))
			if s.status == 0 {
				ok(t, r)
			} else {
				refused(t, r, s.status, s.msg)
				if after, _ := f.env.Object(id); after.Revision != before.Revision {
					t.Fatalf("a refused change appended an event: revision %d -> %d", before.Revision, after.Revision)
				}
			}
			if v := f.value(t, id); int64(v) != s.want {
				t.Fatalf("value %d, want %d", v, s.want)
			}
		})
	}
}
