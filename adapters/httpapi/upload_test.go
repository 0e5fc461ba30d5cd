package httpapi_test

import (
	"context"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/eventstore/storetest"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
)

// usageLog is a usage-log file as the License Server grows it, one layer per call.
type usageLog struct {
	t       testing.TB
	pub     *rsa.PublicKey
	data    []byte
	ts      int64
	entries []logEntry // oldest first
}

// logEntry is one entry as the test wrote it: the signed change to an object.
type logEntry struct {
	object int64
	delta  int64
}

func newUsageLog(t testing.TB, pub *rsa.PublicKey) *usageLog {
	return &usageLog{t: t, pub: pub, ts: 1767225600} // 2026-01-01T00:00:00Z
}

// add wraps the file in a new layer: delta > 0 increments the object, delta < 0 decrements it.
func (l *usageLog) add(object, delta int64) *usageLog {
	l.t.Helper()
	l.ts += 60
	data, err := usagelog.Record(l.data, l.pub, object, delta, l.ts, false)
	if err != nil {
		l.t.Fatalf("record: %v", err)
	}
	l.data = data
	l.entries = append(l.entries, logEntry{object, delta})
	return l
}

// addQuirky wraps the file as the reference writer does: the amount is the object id, and a
// decrement is written with a negative id.
func (l *usageLog) addQuirky(object int64, decrement bool) *usageLog {
	l.t.Helper()
	l.ts += 60
	delta := object
	if decrement {
		delta = -object
	}
	data, err := usagelog.Record(l.data, l.pub, object, delta, l.ts, true)
	if err != nil {
		l.t.Fatalf("record: %v", err)
	}
	l.data = data
	l.entries = append(l.entries, logEntry{object, delta})
	return l
}

func (l *usageLog) base64() string { return base64.StdEncoding.EncodeToString(l.data) }

// uploadEnv is a running service whose decoder holds a real RSA key, with one product, a key
// and a token with every permission.
type uploadEnv struct {
	*fixture
	keys *usagelog.KeyRing
}

func newUploadEnv(t *testing.T, open func(testing.TB) eventstore.Store) *uploadEnv {
	t.Helper()
	return newUploadEnvWith(t, apitest.Options{Open: open})
}

// newUploadEnvWith is newUploadEnv with more options; the decoder is always set.
func newUploadEnvWith(t *testing.T, opts apitest.Options) *uploadEnv {
	t.Helper()
	key, err := usagelog.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keys, err := usagelog.NewKeyRing(key)
	if err != nil {
		t.Fatal(err)
	}
	dec := usagelog.NewLedgerDecoder(keys)
	dec.Decoder.MaxNewLayers = opts.MaxNewEntries // 0: the default, as the ledger's
	opts.Decoder = dec
	env := apitest.StartWith(t, opts)
	p := env.Product("Product A")
	f := &fixture{env: env, product: p, key: env.Key(p.ID), other: env.Key(p.ID), token: env.AllMethodsToken()}
	return &uploadEnv{fixture: f, keys: keys}
}

func (u *uploadEnv) log(t testing.TB) *usageLog { return newUsageLog(t, u.keys.Public()) }

// upload sends a log with the fixture's key and token.
func (u *uploadEnv) upload(data string, extra ...string) apitest.Response {
	return u.env.Call("UploadValuesToKey", with(u.toKey(u.token), append([]string{"Data", data}, extra...)...))
}

// snapshot is every data object's value and stream revision.
func snapshot(env *apitest.Env) map[int64][2]int64 {
	out := map[int64][2]int64{}
	env.Projection.Read(func(st *state.State) {
		for id, o := range st.Objects {
			out[id] = [2]int64{int64(o.IntValue), int64(o.Revision)}
		}
	})
	return out
}

func assertUnchanged(t *testing.T, env *apitest.Env, before map[int64][2]int64) {
	t.Helper()
	after := snapshot(env)
	for id, b := range before {
		if a := after[id]; a[0] != b[0] {
			t.Fatalf("object %d changed from %d to %d", id, b[0], a[0])
		}
	}
}

func uploadBody(t *testing.T, r apitest.Response) (applied int, known int64) {
	t.Helper()
	ok(t, r)
	var body struct {
		Applied int   `json:"applied"`
		Known   int64 `json:"known"`
	}
	if err := json.Unmarshal(r.Body, &body); err != nil {
		t.Fatal(err)
	}
	return body.Applied, body.Known
}

func TestUploadAppliesEachEntryExactlyOnce(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open func(testing.TB) eventstore.Store) {
		u := newUploadEnv(t, open)
		owner := u.toKey(u.token)
		a := u.add(t, owner, "AddDataObjectToKey", "a", 100)
		b := u.add(t, owner, "AddDataObjectToKey", "b", 0)

		l := u.log(t).add(a, 5).add(b, 7).add(a, -2).add(b, -1).add(a, 10)
		r := u.upload(l.base64())
		if want := `{"result":0,"message":null,"applied":5,"known":0}`; r.Status != http.StatusOK || string(r.Body) != want {
			t.Fatalf("first upload: %d %s, want %s", r.Status, r.Body, want)
		}
		if va, vb := u.value(t, a), u.value(t, b); va != 113 || vb != 6 {
			t.Fatalf("values %d, %d; want 113, 6", va, vb)
		}
		before := snapshot(u.env)

		// The same file again: nothing new, nothing changes, not even a revision.
		if applied, known := uploadBody(t, u.upload(l.base64())); applied != 0 || known != 5 {
			t.Fatalf("re-upload applied %d known %d; want 0 and 5", applied, known)
		}
		if after := snapshot(u.env); after[a] != before[a] || after[b] != before[b] {
			t.Fatalf("re-upload changed %v to %v", before, after)
		}

		// A newer version of the same file: only its new entries count.
		l.add(b, 3).add(a, -1)
		if applied, known := uploadBody(t, u.upload(l.base64())); applied != 2 || known != 5 {
			t.Fatalf("newer version applied %d known %d; want 2 and 5", applied, known)
		}
		if va, vb := u.value(t, a), u.value(t, b); va != 112 || vb != 9 {
			t.Fatalf("values %d, %d; want 112, 9", va, vb)
		}

		// The general form, with the key as referencer, sees the same applied layers.
		r = u.env.Call("UploadValues", with(general(u.token, domain.OwnerKey, u.key.ID), "Data", l.base64()))
		if applied, known := uploadBody(t, r); applied != 0 || known != 7 {
			t.Fatalf("general form applied %d known %d; want 0 and 7", applied, known)
		}

		// The reference writer's quirks: the amount is the id, a decrement has a negative id.
		q := u.log(t).addQuirky(b, false).addQuirky(b, false).addQuirky(b, true)
		if applied, _ := uploadBody(t, u.upload(q.base64())); applied != 3 {
			t.Fatalf("quirky log applied %d, want 3", applied)
		}
		if vb := u.value(t, b); vb != 9+int32(b) {
			t.Fatalf("value after the quirky log %d, want %d", vb, 9+b)
		}
	})
}

func TestUploadEventsRecordTheirSource(t *testing.T) {
	u := newUploadEnv(t, nil)
	a := u.add(t, u.toKey(u.token), "AddDataObjectToKey", "a", 0)
	l := u.log(t).add(a, 4)
	l.ts -= 3600 // the next layer's clock went back an hour and a minute
	l.add(a, -1)
	uploadBody(t, u.upload(l.base64()))

	evs, err := u.env.Store.ReadStream(context.Background(), domain.DataObjectStream(a), eventstore.Forwards, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 3 || evs[1].Type != domain.EventIncrementApplied || evs[2].Type != domain.EventDecrementApplied {
		t.Fatalf("events %v", evs)
	}
	var inc, dec domain.ValueChanged
	if err := json.Unmarshal(evs[1].Data, &inc); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(evs[2].Data, &dec); err != nil {
		t.Fatal(err)
	}
	if inc.Upload == nil || dec.Upload == nil || inc.Upload.UploadID != dec.Upload.UploadID {
		t.Fatalf("upload sources %+v, %+v", inc.Upload, dec.Upload)
	}
	if inc.Before != 0 || inc.After != 4 || dec.Before != 4 || dec.After != 3 || dec.Amount != 1 {
		t.Fatalf("values: %+v, %+v", inc, dec)
	}
	if inc.Upload.Anomaly != "" || dec.Upload.Anomaly == "" {
		t.Fatalf("anomalies %q, %q; want only the second flagged", inc.Upload.Anomaly, dec.Upload.Anomaly)
	}
	if !inc.Upload.LogTimestamp.After(dec.Upload.LogTimestamp) || dec.Upload.LogTimestamp.Unix() != l.ts {
		t.Fatalf("log timestamps %v, %v; the second is the file's last, an hour before the first", inc.Upload.LogTimestamp, dec.Upload.LogTimestamp)
	}
	var meta domain.Metadata
	if err := json.Unmarshal(evs[1].Metadata, &meta); err != nil {
		t.Fatal(err)
	}
	if meta.RequestID == "" || meta.TokenID.String() == "00000000-0000-0000-0000-000000000000" {
		t.Fatalf("metadata %+v lacks the request or the token", meta)
	}
}

func TestUploadRefusalsChangeNothing(t *testing.T) {
	u := newUploadEnv(t, nil)
	owner := u.toKey(u.token)
	a := u.add(t, owner, "AddDataObjectToKey", "a", 10)
	nearMax := u.add(t, owner, "AddDataObjectToKey", "near max", math.MaxInt32-1)
	foreign := u.add(t, u.otherKey(), "AddDataObjectToKey", "foreign", 0)
	incOnly := u.env.Token(ledger.TokenSpec{Methods: []domain.Method{domain.MethodIncrementIntValue}})
	listOnly := u.env.Token(ledger.TokenSpec{Methods: []domain.Method{domain.MethodListDataObjects}})
	featureLocked := u.env.Token(ledger.TokenSpec{Methods: domain.AllMethods, FeatureLock: 5})
	otherProduct := u.env.Product("Product B")
	productLocked := u.env.Token(ledger.TokenSpec{Methods: domain.AllMethods, ProductLock: otherProduct.ID})
	keyLocked := u.env.Token(ledger.TokenSpec{Methods: domain.AllMethods, KeyLock: u.key.ID})
	revoked := u.env.AllMethodsToken()
	if _, err := u.env.Admin.RevokeToken(context.Background(), revokedID(t, u.env, revoked)); err != nil {
		t.Fatal(err)
	}

	good := u.log(t).add(a, 1).base64()
	decrement := u.log(t).add(a, 1).add(a, -1).base64()
	sample, err := os.ReadFile("../usagelog/testdata/dotnet-sdk-sample-log.b64")
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := usagelog.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	foreignKeyLog := newUsageLog(t, &otherKey.PublicKey).add(a, 1).base64()
	tooMany := u.log(t)
	for range ledger.MaxNewEntries + 1 {
		tooMany.add(a, 1)
	}
	pid := strconv.FormatInt(u.product.ID, 10)

	const (
		unauth     = "Unable to authenticate."
		denied     = "Access denied."
		permission = "Not enough permission."
		product    = "Not enough permission and/or product not found."
		keyMsg     = "Not enough permission and/or key not found."
		empty      = "Data parameter was empty."
		corrupted  = "Data parameter was corrupted."
		refType    = "Incorrect 'ReferencerType'. It can either be 0 (for a User), 1 (for a Product) and 2 (for a Key)."
		feature    = "The increment/decrement value not allowed by security settings."
		int32Limit = "Cannot increment/decrement value since the limit was reached for an int32."
		tooManyMsg = "The log has more than 1000 new entries. Upload more often."
		incorrect  = "The input parameters were incorrect."
	)
	cases := []struct {
		name   string
		method string
		params []string
		status int
		msg    string
	}{
		{"no token", "UploadValuesToKey", []string{"ProductId", pid, "Key", u.key.Key, "Data", good}, 401, unauth},
		{"unknown token", "UploadValuesToKey", []string{"token", "nope", "ProductId", pid, "Key", u.key.Key, "Data", good}, 401, unauth},
		{"revoked token", "UploadValuesToKey", []string{"token", revoked, "ProductId", pid, "Key", u.key.Key, "Data", good}, 401, unauth},
		{"no increment or decrement permission", "UploadValuesToKey", []string{"token", listOnly, "ProductId", pid, "Key", u.key.Key, "Data", good}, 403, denied},
		{"a decrement without its permission", "UploadValuesToKey", []string{"token", incOnly, "ProductId", pid, "Key", u.key.Key, "Data", decrement}, 403, permission},
		{"unknown product", "UploadValuesToKey", []string{"token", u.token, "ProductId", "999", "Key", u.key.Key, "Data", good}, 404, product},
		{"product lock", "UploadValuesToKey", []string{"token", productLocked, "ProductId", pid, "Key", u.key.Key, "Data", good}, 404, product},
		{"unknown key", "UploadValuesToKey", []string{"token", u.token, "ProductId", pid, "Key", "AAAAA-BBBBB-CCCCC-DDDDD", "Data", good}, 404, keyMsg},
		{"positive key lock", "UploadValuesToKey", []string{"token", keyLocked, "ProductId", pid, "Key", u.key.Key, "Data", good}, 404, keyMsg},
		{"no data", "UploadValuesToKey", []string{"token", u.token, "ProductId", pid, "Key", u.key.Key}, 400, empty},
		{"empty data", "UploadValuesToKey", []string{"token", u.token, "ProductId", pid, "Key", u.key.Key, "Data", ""}, 400, empty},
		{"not base64", "UploadValuesToKey", []string{"token", u.token, "ProductId", pid, "Key", u.key.Key, "Data", "!!!"}, 400, corrupted},
		{"not a log", "UploadValuesToKey", []string{"token", u.token, "ProductId", pid, "Key", u.key.Key, "Data", base64.StdEncoding.EncodeToString([]byte("hello"))}, 400, corrupted},
		{"a log for another server's key", "UploadValuesToKey", []string{"token", u.token, "ProductId", pid, "Key", u.key.Key, "Data", foreignKeyLog}, 400, corrupted},
		{"the .NET SDK's sample log", "UploadValuesToKey", []string{"token", u.token, "ProductId", pid, "Key", u.key.Key, "Data", string(sample)}, 400, corrupted},
		{"referencer type 3", "UploadValues", []string{"token", u.token, "ReferencerType", "3", "ReferencerId", "1", "Data", good}, 400, refType},
		{"feature lock", "UploadValuesToKey", []string{"token", featureLocked, "ProductId", pid, "Key", u.key.Key, "Data", u.log(t).add(a, 6).base64()}, 403, feature},
		{"past int32", "UploadValuesToKey", []string{"token", u.token, "ProductId", pid, "Key", u.key.Key, "Data", u.log(t).add(nearMax, 2).base64()}, 422, int32Limit},
		{"below int32", "UploadValuesToKey", []string{"token", u.token, "ProductId", pid, "Key", u.key.Key, "Data", u.log(t).add(a, -(math.MaxInt32)).add(a, -20).base64()}, 422, int32Limit},
		{"1001 new entries", "UploadValuesToKey", []string{"token", u.token, "ProductId", pid, "Key", u.key.Key, "Data", tooMany.base64()}, 413, tooManyMsg},
		{"missing ProductId", "UploadValuesToKey", []string{"token", u.token, "Key", u.key.Key, "Data", good}, 400, incorrect},
		{"an entry for an unknown object", "UploadValuesToKey", []string{"token", u.token, "ProductId", pid, "Key", u.key.Key, "Data", u.log(t).add(a, 1).add(9999, 1).base64()}, 400, incorrect},
		{"an entry for another key's object", "UploadValuesToKey", []string{"token", u.token, "ProductId", pid, "Key", u.key.Key, "Data", u.log(t).add(a, 1).add(foreign, 1).base64()}, 400, incorrect},
		{"an entry for another object than Id", "UploadValuesToKey", []string{"token", u.token, "ProductId", pid, "Key", u.key.Key, "Id", strconv.FormatInt(nearMax, 10), "Data", good}, 400, incorrect},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := snapshot(u.env)
			refused(t, u.env.Call(c.method, vals(c.params...)), c.status, c.msg)
			assertUnchanged(t, u.env, before)
			var pending int
			u.env.Projection.Read(func(st *state.State) { pending = len(st.PendingUploads()) })
			if pending != 0 {
				t.Fatalf("%d uploads left undecided", pending)
			}
		})
	}
	// And the good log still applies: the refusals left no trace that would block it.
	if applied, _ := uploadBody(t, u.upload(good)); applied != 1 {
		t.Fatalf("good log applied %d, want 1", applied)
	}
}

func TestUploadOverflowInThe700thOf900EntriesAppliesNothing(t *testing.T) {
	u := newUploadEnv(t, nil)
	owner := u.toKey(u.token)
	objs := []int64{
		u.add(t, owner, "AddDataObjectToKey", "a", 0),
		u.add(t, owner, "AddDataObjectToKey", "b", 0),
		u.add(t, owner, "AddDataObjectToKey", "c", math.MaxInt32-1000),
	}
	l := u.log(t)
	for i := range 900 {
		obj, delta := objs[i%3], int64(1)
		if i == 699 {
			obj, delta = objs[2], 2000 // c would pass MaxInt32 here, and only here
		}
		l.add(obj, delta)
	}
	if l.entries[699].object != objs[2] {
		t.Fatal("the 700th entry must target the object near the limit")
	}
	before := snapshot(u.env)
	refused(t, u.upload(l.base64()), 422, "Cannot increment/decrement value since the limit was reached for an int32.")
	after := snapshot(u.env)
	for _, id := range objs {
		if after[id] != before[id] {
			t.Fatalf("object %d: %v before, %v after; want no change at all", id, before[id], after[id])
		}
	}
}

// TestInterruptedUploadIsDecidedOnRestart cuts the store off in the middle of an upload, so
// that not even the abort can be written, then starts another instance as a restart would.
func TestInterruptedUploadIsDecidedOnRestart(t *testing.T) {
	for _, tc := range []struct {
		name string
		// cut decides which appends fail, given how many data-object appends went through.
		cut            func(stream string, objectAppends int) bool
		wantCommitted  bool
		wantAfterRetry int
	}{
		{
			name: "after one of three objects: discarded",
			cut: func(stream string, objectAppends int) bool {
				return domain.StreamCategory(stream) == domain.CategoryDataObject && objectAppends >= 1 ||
					domain.StreamCategory(stream) == domain.CategoryUpload && objectAppends >= 1
			},
			wantCommitted: false, wantAfterRetry: 3,
		},
		{
			name: "after every object, before the commit: completed",
			cut: func(stream string, objectAppends int) bool {
				return domain.StreamCategory(stream) == domain.CategoryUpload && objectAppends >= 3
			},
			wantCommitted: true, wantAfterRetry: 0,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var faulty *storetest.Faulty
			u := newUploadEnv(t, func(t testing.TB) eventstore.Store {
				faulty = storetest.NewFaulty(apitest.OpenEmbedded(t))
				return faulty
			})
			owner := u.toKey(u.token)
			objs := []int64{
				u.add(t, owner, "AddDataObjectToKey", "a", 0),
				u.add(t, owner, "AddDataObjectToKey", "b", 0),
				u.add(t, owner, "AddDataObjectToKey", "c", 0),
			}
			l := u.log(t).add(objs[0], 1).add(objs[1], 2).add(objs[2], 3)
			var mu sync.Mutex
			objectAppends := 0
			faulty.FailAppends(func(stream string, _ []eventstore.EventData) error {
				mu.Lock()
				defer mu.Unlock()
				if tc.cut(stream, objectAppends) {
					return storetest.ErrInjected
				}
				if domain.StreamCategory(stream) == domain.CategoryDataObject {
					objectAppends++
				}
				return nil
			})
			refused(t, u.upload(l.base64()), 503, "The service is temporarily unavailable. Please try again.")
			for _, id := range objs {
				if v := u.value(t, id); v != 0 {
					t.Fatalf("object %d = %d while the upload is undecided; want 0", id, v)
				}
			}
			var undecided int
			u.env.Projection.Read(func(st *state.State) { undecided = len(st.PendingUploads()) })
			if undecided != 1 {
				t.Fatalf("%d undecided uploads, want 1", undecided)
			}

			// The store comes back; a new instance starts on it and recovers.
			faulty.FailAppends(nil)
			restarted := u.env.AnotherInstance()
			if err := restarted.Projection.WaitFor(context.Background(), lastPosition(t, faulty)); err != nil {
				t.Fatal(err)
			}
			n, err := restarted.Ledger.RecoverUploads(context.Background(), true)
			if err != nil || n != 1 {
				t.Fatalf("recovered %d, %v; want 1", n, err)
			}
			for i, id := range objs {
				want := int32(0)
				if tc.wantCommitted {
					want = int32(i + 1)
				}
				o, _ := restarted.Object(id)
				if o.IntValue != want || len(o.Pending) != 0 {
					t.Fatalf("object %d after recovery = %d (pending %d), want %d", id, o.IntValue, len(o.Pending), want)
				}
			}
			// The client retries: each entry counts once, whichever way recovery decided.
			r := restarted.Call("UploadValuesToKey", with(owner, "Data", l.base64()))
			if applied, _ := uploadBody(t, r); applied != tc.wantAfterRetry {
				t.Fatalf("retry applied %d, want %d", applied, tc.wantAfterRetry)
			}
			for i, id := range objs {
				if o, _ := restarted.Object(id); o.IntValue != int32(i+1) {
					t.Fatalf("object %d after the retry = %d, want %d", id, o.IntValue, i+1)
				}
			}
		})
	}
}

func lastPosition(t *testing.T, s eventstore.Store) eventstore.Position {
	t.Helper()
	var last eventstore.Position
	for {
		evs, err := s.ReadAll(context.Background(), last, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			return last
		}
		last = evs[len(evs)-1].Position
	}
}

// TestConcurrentOverlappingUploads sends 32 versions of one growing file at once, with direct
// increments of the same objects in between, on one instance and on two sharing a store.
func TestConcurrentOverlappingUploads(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open func(testing.TB) eventstore.Store) {
		for _, instances := range []int{1, 2} {
			t.Run(fmt.Sprintf("%d instances", instances), func(t *testing.T) {
				runUploadRace(t, open, instances, 1000)
			})
		}
	})
}

// TestConcurrentUploadsNearTheInt32Limit runs the same race with every value a few units
// below MaxInt32: some uploads and increments must be refused, none may apply in part.
func TestConcurrentUploadsNearTheInt32Limit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open func(testing.TB) eventstore.Store) {
		runUploadRace(t, open, 2, math.MaxInt32-60)
	})
}

func runUploadRace(t *testing.T, open func(testing.TB) eventstore.Store, instances int, start int32) {
	u := newUploadEnv(t, open)
	envs := []*apitest.Env{u.env}
	for len(envs) < instances {
		envs = append(envs, u.env.AnotherInstance())
	}
	owner := u.toKey(u.token)
	objs := []int64{
		u.add(t, owner, "AddDataObjectToKey", "a", start),
		u.add(t, owner, "AddDataObjectToKey", "b", start),
		u.add(t, owner, "AddDataObjectToKey", "c", start),
	}
	for _, e := range envs[1:] {
		if err := e.Projection.WaitFor(context.Background(), lastPosition(t, u.env.Store)); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(1, uint64(start)))
	l := u.log(t)
	var versions []string
	for range 32 {
		for range 1 + rng.IntN(3) {
			l.add(objs[rng.IntN(3)], int64(1+rng.IntN(5)))
		}
		versions = append(versions, l.base64())
	}
	rng.Shuffle(len(versions), func(i, j int) { versions[i], versions[j] = versions[j], versions[i] })

	var mu sync.Mutex
	incremented := map[int64]int64{}
	outcomes := map[string]int{}
	var wg sync.WaitGroup
	for i, data := range versions {
		env := envs[i%len(envs)]
		wg.Add(2)
		go func() {
			defer wg.Done()
			r := env.Call("UploadValuesToKey", with(owner, "Data", data))
			res := r.Result(t)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case r.Status == http.StatusOK && res.Result == 0:
				outcomes["applied"]++
			case res.Msg() == "Cannot increment/decrement value since the limit was reached for an int32.":
				outcomes["refused at the int32 limit"]++
			default:
				t.Errorf("upload: %d %s", r.Status, r.Body)
			}
		}()
		obj, amount := objs[i%3], int64(1+i%3)
		go func() {
			defer wg.Done()
			r := env.Call("IncrementIntValueToKey", with(owner, "Id", strconv.FormatInt(obj, 10), "IntValue", strconv.FormatInt(amount, 10)))
			res := r.Result(t)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case r.Status == http.StatusOK && res.Result == 0:
				incremented[obj] += amount
				outcomes["increment"]++
			case res.Msg() == "Cannot increment/decrement value since the limit was reached for an int32.":
				outcomes["increment refused at the int32 limit"]++
			default:
				t.Errorf("increment: %d %s", r.Status, r.Body)
			}
		}()
	}
	wg.Wait()
	t.Logf("outcomes %v; conflicts retried %d", outcomes, conflicts(envs))

	// The applied layers are a prefix of the file: the depth of the newest applied one says
	// how many entries count.
	var depth int64
	ownerOf := domain.Owner{Type: domain.OwnerKey, ID: u.key.ID}
	if err := u.env.Projection.WaitFor(context.Background(), lastPosition(t, u.env.Store)); err != nil {
		t.Fatal(err)
	}
	u.env.Projection.Read(func(st *state.State) {
		_ = st.Layers(ownerOf.String(), func(_ string, info state.LayerInfo) bool {
			depth = max(depth, info.Depth)
			return true
		})
	})
	want := map[int64]int64{}
	for _, id := range objs {
		want[id] = int64(start) + incremented[id]
	}
	for _, e := range l.entries[:depth] {
		want[e.object] += e.delta
	}
	for _, id := range objs {
		if got := int64(u.value(t, id)); got != want[id] {
			t.Fatalf("object %d = %d, want %d (start %d + increments %d + %d applied entries)", id, got, want[id], start, incremented[id], depth)
		}
	}
	if start < 1000 && depth != int64(len(l.entries)) {
		t.Fatalf("%d of %d entries applied; far from the limit every entry should be", depth, len(l.entries))
	}
	assertHistoryWithinInt32(t, u.env.Store, objs)
	rebuilt, err := projections.Rebuild(context.Background(), u.env.Store, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range envs {
		if err := e.Projection.WaitFor(context.Background(), rebuilt.Position); err != nil {
			t.Fatal(err)
		}
		e.Projection.Read(func(st *state.State) {
			if d := state.Diff(rebuilt, st); len(d) != 0 {
				t.Fatalf("an instance's projection differs from a replay: %v", d)
			}
		})
	}
}

func conflicts(envs []*apitest.Env) int64 {
	var n int64
	for _, e := range envs {
		n += e.Ledger.Conflicts()
	}
	return n
}

// assertHistoryWithinInt32 replays each object's counted events in 64-bit arithmetic and
// checks every value on the way stayed within int32, and that each event's recorded values
// agree with the replay.
func assertHistoryWithinInt32(t *testing.T, store eventstore.Store, objs []int64) {
	t.Helper()
	st, err := projections.Rebuild(context.Background(), store, nil)
	if err != nil {
		t.Fatal(err)
	}
	aborted := st.Aborted
	for _, id := range objs {
		evs, err := store.ReadStream(context.Background(), domain.DataObjectStream(id), eventstore.Forwards, 0, 100000)
		if err != nil {
			t.Fatal(err)
		}
		var value int64
		for _, ev := range evs {
			switch ev.Type {
			case domain.EventDataObjectAdded:
				var e domain.DataObjectAdded
				mustUnmarshal(t, ev.Data, &e)
				value = int64(e.IntValue)
			case domain.EventIncrementApplied, domain.EventDecrementApplied:
				var e domain.ValueChanged
				mustUnmarshal(t, ev.Data, &e)
				if e.Upload != nil && aborted[e.Upload.UploadID] {
					continue
				}
				sign := int64(1)
				if ev.Type == domain.EventDecrementApplied {
					sign = -1
				}
				if int64(e.Before) != value {
					t.Fatalf("object %d rev %d: recorded before %d, replay %d", id, ev.Revision, e.Before, value)
				}
				value += sign * e.Amount
				if value > math.MaxInt32 || value < math.MinInt32 {
					t.Fatalf("object %d rev %d: value %d left int32", id, ev.Revision, value)
				}
				if int64(e.After) != value {
					t.Fatalf("object %d rev %d: recorded after %d, replay %d", id, ev.Revision, e.After, value)
				}
			}
		}
	}
}

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func revokedID(t *testing.T, env *apitest.Env, secret string) uuid.UUID {
	t.Helper()
	tok, err := env.Ledger.Authenticate(context.Background(), secret)
	if err != nil {
		t.Fatal(err)
	}
	return tok.ID
}

// otherKey is the owner parameters of the fixture's second key.
func (f *fixture) otherKey() url.Values {
	return vals("token", f.token, "ProductId", strconv.FormatInt(f.product.ID, 10), "Key", f.other.Key)
}

// forEachBackend runs a test on every event-store backend Tally ships.
func forEachBackend(t *testing.T, test func(t *testing.T, open func(testing.TB) eventstore.Store)) {
	for _, b := range apitest.Backends() {
		t.Run(b.Name, func(t *testing.T) { test(t, b.Open) })
	}
}

// TestUploadDataWithUnescapedPlus sends a log in a GET query string with its '+' left
// unescaped, as some clients do: the server reads the spaces back as '+'.
func TestUploadDataWithUnescapedPlus(t *testing.T) {
	u := newUploadEnv(t, nil)
	a := u.add(t, u.toKey(u.token), "AddDataObjectToKey", "a", 0)
	l := u.log(t).add(a, 2)
	for !strings.Contains(l.base64(), "+") {
		l.add(a, 2)
	}
	raw := fmt.Sprintf("%s/api/data/uploadvaluestokey/?token=%s&productId=%d&key=%s&data=%s",
		u.env.URL, u.token, u.product.ID, u.key.Key, l.base64())
	req, err := http.NewRequest(http.MethodGet, raw, nil)
	if err != nil {
		t.Fatal(err)
	}
	if applied, _ := uploadBody(t, u.env.Send(req)); applied != len(l.entries) {
		t.Fatalf("applied %d, want %d", applied, len(l.entries))
	}
	if v := u.value(t, a); v != int32(2*len(l.entries)) {
		t.Fatalf("value %d, want %d", v, 2*len(l.entries))
	}
}

// TestUploadWithAnUnrepresentableTimestamp: a layer whose timestamp no event can record (a
// year past 9999) still counts, with the anomaly, and later versions of the file still apply.
func TestUploadWithAnUnrepresentableTimestamp(t *testing.T) {
	u := newUploadEnv(t, nil)
	a := u.add(t, u.toKey(u.token), "AddDataObjectToKey", "a", 0)
	l := u.log(t).add(a, 1)
	l.ts = 1 << 50
	l.add(a, 2)
	l.ts = 1767225600
	if applied, _ := uploadBody(t, u.upload(l.base64())); applied != 2 {
		t.Fatalf("applied %d, want 2", applied)
	}
	l.add(a, 4)
	if applied, _ := uploadBody(t, u.upload(l.base64())); applied != 1 {
		t.Fatalf("the next version applied %d, want 1", applied)
	}
	if v := u.value(t, a); v != 7 {
		t.Fatalf("value %d, want 7", v)
	}
	evs, err := u.env.Store.ReadStream(context.Background(), domain.DataObjectStream(a), eventstore.Forwards, 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	var e domain.ValueChanged
	mustUnmarshal(t, evs[0].Data, &e)
	if e.Upload == nil || !strings.Contains(e.Upload.Anomaly, "outside the years") {
		t.Fatalf("the far-future entry records no anomaly: %+v", e.Upload)
	}
}
