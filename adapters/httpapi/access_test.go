package httpapi_test

import (
	"fmt"
	"net/url"
	"strconv"
	"testing"

	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/domain/state"
)

// accessScope is an owner as a call names it: a key in the …ToKey form, or a referencer in the
// general form.
type accessScope struct {
	name     string
	toKey    bool
	params   url.Values // owner parameters, without the token
	owner    domain.Owner
	product  int64 // the product the owner belongs to (0 for the user)
	keyStr   string
	ownerKey int64 // the key id, when the owner is a key
}

// accessToken is a token with its locks, and the rule that says which scopes it may address.
type accessToken struct {
	name   string
	secret string
	may    func(s accessScope) bool
}

// fullState is every data object's int value, string value, removal and revision.
func fullState(t *testing.T, f *fixture) map[int64]string {
	t.Helper()
	out := map[int64]string{}
	f.env.Projection.Read(func(st *state.State) {
		for id, o := range st.Objects {
			out[id] = fmt.Sprintf("%d|%q|%v|%d|%v", o.IntValue, o.StringValue, o.Removed, o.Revision, o.Owner)
		}
	})
	return out
}

// TestAccessMatrix calls every data-object method, in both forms, by Id and by Name, with
// tokens under each kind of lock, on every owner, aimed at the object of every owner: a call
// is accepted only when the token's locks admit the owner it names and the object belongs to
// that owner. Every other call is refused and changes nothing, not even a revision.
func TestAccessMatrix(t *testing.T) {
	u := newUploadEnv(t, nil)
	f := u.fixture
	env := f.env
	pA, k1, k2 := f.product, f.key, f.other
	pB := env.Product("Product B")
	k3 := env.Key(pB.ID)

	keyScope := func(p domain.Product, k domain.LicenseKey) accessScope {
		return accessScope{name: "ToKey " + k.Key[:5], toKey: true, owner: domain.Owner{Type: domain.OwnerKey, ID: k.ID}, product: p.ID, keyStr: k.Key, ownerKey: k.ID,
			params: vals("ProductId", strconv.FormatInt(p.ID, 10), "Key", k.Key)}
	}
	generalScope := func(name string, o domain.Owner, product int64) accessScope {
		s := accessScope{name: name, owner: o, product: product,
			params: vals("ReferencerType", strconv.Itoa(int(o.Type)), "ReferencerId", strconv.FormatInt(o.ID, 10))}
		if o.Type == domain.OwnerKey {
			s.ownerKey = o.ID
		}
		return s
	}
	scopes := []accessScope{
		keyScope(pA, k1), keyScope(pA, k2), keyScope(pB, k3),
		generalScope("user", domain.Owner{Type: domain.OwnerUser}, 0),
		generalScope("product A", domain.Owner{Type: domain.OwnerProduct, ID: pA.ID}, pA.ID),
		generalScope("product B", domain.Owner{Type: domain.OwnerProduct, ID: pB.ID}, pB.ID),
		generalScope("key 1", domain.Owner{Type: domain.OwnerKey, ID: k1.ID}, pA.ID),
		generalScope("key 2", domain.Owner{Type: domain.OwnerKey, ID: k2.ID}, pA.ID),
		generalScope("key 3", domain.Owner{Type: domain.OwnerKey, ID: k3.ID}, pB.ID),
	}
	tokens := []accessToken{
		{"no locks", f.token, func(accessScope) bool { return true }},
		{"key lock -1", env.Token(ledger.TokenSpec{Methods: domain.AllMethods, KeyLock: -1}),
			func(s accessScope) bool { return s.toKey }},
		{"product lock A", env.Token(ledger.TokenSpec{Methods: domain.AllMethods, ProductLock: pA.ID}),
			func(s accessScope) bool { return s.product == pA.ID }},
		{"key lock key 1", env.Token(ledger.TokenSpec{Methods: domain.AllMethods, KeyLock: k1.ID}),
			func(s accessScope) bool { return !s.toKey && s.ownerKey == k1.ID }},
	}

	// One object per owner, each with a name no other owner uses.
	objects := map[domain.Owner]int64{}
	names := map[int64]string{}
	for _, s := range scopes {
		if _, done := objects[s.owner]; done {
			continue
		}
		name := "obj of " + s.owner.String()
		id := f.add(t, with(s.params, "token", f.token), "AddDataObject"+map[bool]string{true: "ToKey"}[s.toKey], name, 100)
		objects[s.owner], names[id] = id, name
	}

	objectMethods := []struct {
		name  string
		extra []string
	}{
		{"SetIntValue", []string{"IntValue", "7"}},
		{"SetStringValue", []string{"StringValue", "taken"}},
		{"IncrementIntValue", []string{"IntValue", "1"}},
		{"DecrementIntValue", []string{"IntValue", "1"}},
		{"RemoveDataObject", nil},
	}
	suffix := func(s accessScope) string {
		if s.toKey {
			return "ToKey"
		}
		return ""
	}

	refusals, accepted := 0, 0
	for _, tok := range tokens {
		for _, s := range scopes {
			base := with(s.params, "token", tok.secret)
			// Scope-level methods: AddDataObject and ListDataObjects.
			before := fullState(t, f)
			r := env.Call("AddDataObject"+suffix(s), with(base, "Name", "intruder"))
			list := env.Call("ListDataObjects"+suffix(s), base)
			if tok.may(s) {
				res := ok(t, r)
				ok(t, env.Call("RemoveDataObject"+suffix(s), with(base, "Id", strconv.FormatInt(res.ID, 10))))
				for _, o := range ok(t, list).DataObjects {
					if o.ID != objects[s.owner] && o.ID != res.ID {
						t.Fatalf("%s on %s listed object %d of another owner", tok.name, s.name, o.ID)
					}
				}
				accepted++
			} else {
				assertRefused(t, fmt.Sprintf("%s: AddDataObject on %s", tok.name, s.name), r)
				assertRefused(t, fmt.Sprintf("%s: ListDataObjects on %s", tok.name, s.name), list)
				if after := fullState(t, f); fmt.Sprint(after) != fmt.Sprint(before) {
					t.Fatalf("%s: a refused AddDataObject on %s changed the state", tok.name, s.name)
				}
				refusals += 2
			}

			// Object methods, aimed at every owner's object, by Id and by Name.
			for _, target := range objects {
				mine := tok.may(s) && objects[s.owner] == target
				if mine {
					continue // accepted calls are TestEveryMethod's; here they would remove the target
				}
				for _, m := range objectMethods {
					for _, by := range []url.Values{
						with(base, append([]string{"Id", strconv.FormatInt(target, 10)}, m.extra...)...),
						with(base, append([]string{"Name", names[target]}, m.extra...)...),
					} {
						before := fullState(t, f)
						r := env.Call(m.name+suffix(s), by)
						what := fmt.Sprintf("%s: %s%s on %s aimed at object %d (%v)", tok.name, m.name, suffix(s), s.name, target, by)
						assertRefused(t, what, r)
						if after := fullState(t, f); fmt.Sprint(after) != fmt.Sprint(before) {
							t.Fatalf("%s changed the state", what)
						}
						refusals++
					}
				}
			}

			// Uploads: an entry for each object of another owner.
			for owner, target := range objects {
				if tok.may(s) && owner == s.owner {
					continue
				}
				data := u.log(t).add(target, 1).base64()
				method := "UploadValues" + suffix(s)
				before := fullState(t, f)
				for _, params := range []url.Values{with(base, "Data", data), with(base, "Data", data, "Id", strconv.FormatInt(target, 10))} {
					assertRefused(t, fmt.Sprintf("%s: %s on %s with an entry for object %d", tok.name, method, s.name, target), env.Call(method, params))
					refusals++
				}
				if after := fullState(t, f); fmt.Sprint(after) != fmt.Sprint(before) {
					t.Fatalf("%s: a refused upload on %s changed the state", tok.name, s.name)
				}
			}
		}
	}
	t.Logf("%d calls refused and changed nothing; %d token × owner pairs admitted", refusals, accepted)
}

// assertRefused checks that an answer is a refusal: result 1 with a message and a 4xx status.
func assertRefused(t *testing.T, what string, r apitest.Response) {
	t.Helper()
	res := r.Result(t)
	if res.Result != 1 || res.Msg() == "" || r.Status < 400 || r.Status >= 500 {
		t.Fatalf("%s: not refused: %d %s", what, r.Status, r.Body)
	}
}
