package httpapi_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

const legacyFixture = "testdata/legacy-992cfab"

// legacyEnv is a server on a copy of the store written before identity version 2.
type legacyEnv struct {
	*uploadEnv
	env    *apitest.Env
	object int64
	owner  domain.Owner
	v1, v2 []byte
}

// startLegacy starts a server on a fresh copy of testdata/legacy-992cfab and waits until its
// projection holds the old store.
func startLegacy(t *testing.T) *legacyEnv { return startLegacyOn(t, nil) }

// startLegacyOn is startLegacy on another store (nil: the embedded store of the fixture itself),
// into which every event of the fixture is copied, same ids, streams and revisions.
func startLegacyOn(t *testing.T, target func(testing.TB) eventstore.Store) *legacyEnv {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(legacyFixture, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var fx struct {
		ProductID int64  `json:"productId"`
		KeyID     int64  `json:"keyId"`
		Key       string `json:"key"`
		ObjectID  int64  `json:"objectId"`
		Token     string `json:"token"`
	}
	if err := json.Unmarshal(read("fixture.json"), &fx); err != nil {
		t.Fatal(err)
	}
	keys, err := usagelog.LoadKeyRingFiles(filepath.Join(legacyFixture, "keys", "rsa-private.pem"))
	if err != nil {
		t.Fatal(err)
	}
	open := func(t testing.TB) eventstore.Store {
		dir := filepath.Join(t.TempDir(), "store")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "events.db"), read("store/events.db"), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := embedded.Open(context.Background(), dir)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if target != nil {
		fixtureStore := open
		open = func(t testing.TB) eventstore.Store {
			from, to := fixtureStore(t), target(t)
			defer from.Close()
			copyEvents(t, from, to)
			return to
		}
	}
	env := apitest.StartWith(t, apitest.Options{Open: open, Decoder: usagelog.NewLedgerDecoder(keys)})
	u := &uploadEnv{fixture: &fixture{env: env, product: domain.Product{ID: fx.ProductID}, key: domain.LicenseKey{ID: fx.KeyID, ProductID: fx.ProductID, Key: fx.Key}, token: fx.Token}, keys: keys}
	// The projection folds the old store in the background: wait for its last event.
	head, err := eventstore.Head(context.Background(), env.Store, eventstore.Start)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Projection.WaitFor(context.Background(), head); err != nil {
		t.Fatal(err)
	}
	return &legacyEnv{uploadEnv: u, env: env, object: fx.ObjectID, owner: domain.Owner{Type: domain.OwnerKey, ID: fx.KeyID},
		v1: read("log-v1.skm"), v2: read("log-v2.skm")}
}

// legacyOnly reports whether the outermost layer of raw is known by its legacy identity only.
func (le *legacyEnv) legacyOnly(t *testing.T, raw []byte) bool {
	t.Helper()
	ref, err := usagelog.LayerRefOf(raw)
	if err != nil {
		t.Fatal(err)
	}
	var byLegacy, byID bool
	le.env.Projection.Read(func(st *state.State) {
		_, byID = st.Layer(le.owner, ref.ID)
		_, byLegacy = st.Layer(le.owner, ref.Legacy)
	})
	return byLegacy && !byID
}

// TestStoreWrittenBeforeIdentityV2 runs on a store written by Tally before layer identity
// version 2 (testdata/legacy-992cfab/README.md says how it was made): its layers, named by
// SHA-256(IV ‖ EncryptedKey), are still known, so no entry counts twice; the layer where a
// walk stops is re-identified by its wrapped key, after which a modified IV on it is known and
// flagged. Last, a modified IV on an old layer never re-identified: the layer under it has a
// known layer above it already, whose recorded entry gives back the IV it had, so the modified
// layer is recognised as that one (docs/uploads.md, "Tampering").
func TestStoreWrittenBeforeIdentityV2(t *testing.T) {
	le := startLegacy(t)
	u, env, a := le.uploadEnv, le.env, le.object
	keys := u.keys
	legacyOnly := func(raw []byte) bool { return le.legacyOnly(t, raw) }
	v1, v2 := le.v1, le.v2
	if v := u.value(t, a); v != 150 {
		t.Fatalf("value %d in the old store, want 150", v)
	}
	if !legacyOnly(v1) || !legacyOnly(v2) {
		t.Fatal("the old store should know its layers by their legacy identity only")
	}

	// Both old versions again: known, nothing counts twice.
	for _, v := range [][]byte{v2, v1} {
		if n, _ := uploadBody(t, u.upload(b64(v))); n != 0 {
			t.Fatalf("an old version applied %d entries again", n)
		}
	}
	// A newer version written now: its new layer applies once, and the old layer the walk
	// stopped at is re-identified by its wrapped key.
	l := &usageLog{t: t, pub: keys.Public(), data: slices.Clone(v2), ts: 1767225600 + 5*60}
	l.add(a, 5)
	if n, known := uploadBody(t, u.upload(l.base64())); n != 1 || known != 5 {
		t.Fatalf("newer version applied %d known %d; want 1 and 5", n, known)
	}
	if legacyOnly(v2) || !legacyOnly(v1) {
		t.Fatal("the stop layer should now be known by its wrapped key too, and only it")
	}
	if v := u.value(t, a); v != 155 {
		t.Fatalf("value %d, want 155", v)
	}
	// v2 with its IV modified (+50 read as +51): known by the wrapped key, flagged.
	if n, _ := uploadBody(t, u.upload(b64(flipped(v2, 3+2, 0x01)))); n != 0 || u.value(t, a) != 155 {
		t.Fatalf("modified v2 applied %d, value %d", n, u.value(t, a))
	}
	assertAnomaly(t, env, 1, v2, domain.DiffersEntryBytes)

	// v1 with its IV modified (+30 read as +31). Its layer was applied before identity
	// version 2 and never reached by a walk since, so Tally never saw its wrapped key. Before,
	// this was the documented limit: the layer was new to Tally and counted again (value 186,
	// flagged suspected-replay). Now the walk stops at the layer under it, which already has a
	// known layer above it (the one applied from v1); the IV that makes the modified layer's
	// first block decrypt to that layer's recorded entry gives back its legacy identity: it
	// is that layer, not counted, flagged, and known by its wrapped key from then on.
	mod1 := flipped(v1, 3+2, 0x01)
	if n, _ := uploadBody(t, u.upload(b64(mod1))); n != 0 || u.value(t, a) != 155 {
		t.Fatalf("modified v1 applied %d, value %d; want 0 and 155", n, u.value(t, a))
	}
	an := assertAnomaly(t, env, 2, v1, domain.DiffersEntryBytes)
	if an.Recognised != domain.RecognisedByIV || an.Alias == nil || legacyOnly(v1) {
		t.Fatalf("the modified v1 should be recognised by its original IV: %+v", an)
	}
	// Once recognised, its wrapped key is known: a second modified copy is known and flagged.
	if n, _ := uploadBody(t, u.upload(b64(flipped(v1, 3+2, 0x03)))); n != 0 || u.value(t, a) != 155 {
		t.Fatalf("second modified v1 applied %d, value %d; want 0 and 155", n, u.value(t, a))
	}
	assertAnomaly(t, env, 3, v1, domain.DiffersEntryBytes)
	// The untouched v1: its digest is the one recovered, nothing to flag.
	if n, _ := uploadBody(t, u.upload(b64(v1))); n != 0 || u.value(t, a) != 155 || len(anomalies(env)) != 3 {
		t.Fatalf("v1 applied %d, value %d, %d anomalies; want 0, 155, 3", n, u.value(t, a), len(anomalies(env)))
	}
	assertVerified(t, env)
}

// copyEvents appends every event of from to to, in global order, each at its own revision.
func copyEvents(t testing.TB, from, to eventstore.Store) {
	t.Helper()
	ctx := context.Background()
	for pos := eventstore.Start; ; {
		evs, err := from.ReadAll(ctx, pos, 256)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			return
		}
		for _, ev := range evs {
			expected := eventstore.NoStream()
			if ev.Revision > 0 {
				expected = eventstore.Exact(ev.Revision - 1)
			}
			if _, err := to.Append(ctx, ev.Stream, expected, eventstore.EventData{ID: ev.ID, Type: ev.Type, Data: ev.Data, Metadata: ev.Metadata}); err != nil {
				t.Fatalf("copy %s@%d: %v", ev.Stream, ev.Revision, err)
			}
		}
		pos = evs[len(evs)-1].Position
	}
}
