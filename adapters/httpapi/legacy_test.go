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

// TestStoreWrittenBeforeIdentityV2 runs on a store written by Tally before layer identity
// version 2 (testdata/legacy-992cfab/README.md says how it was made): its layers, named by
// SHA-256(IV ‖ EncryptedKey), are still known, so no entry counts twice; the layer where a
// walk stops is re-identified by its wrapped key, after which a modified IV on it is known and
// flagged. The one case the old events cannot cover (docs/uploads.md, "Tampering") is shown
// last: a modified IV on an old layer never re-identified is new to Tally.
func TestStoreWrittenBeforeIdentityV2(t *testing.T) {
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
	env := apitest.StartWith(t, apitest.Options{Open: open, Decoder: usagelog.NewLedgerDecoder(keys)})
	u := &uploadEnv{fixture: &fixture{env: env, product: domain.Product{ID: fx.ProductID}, key: domain.LicenseKey{ID: fx.KeyID, ProductID: fx.ProductID, Key: fx.Key}, token: fx.Token}, keys: keys}
	a := fx.ObjectID
	v1, v2 := read("log-v1.skm"), read("log-v2.skm")
	if v := u.value(t, a); v != 150 {
		t.Fatalf("value %d in the old store, want 150", v)
	}
	owner := domain.Owner{Type: domain.OwnerKey, ID: fx.KeyID}
	legacyOnly := func(raw []byte) bool {
		ref, err := usagelog.LayerRefOf(raw)
		if err != nil {
			t.Fatal(err)
		}
		var byLegacy, byID bool
		env.Projection.Read(func(st *state.State) {
			_, byID = st.Layer(owner, ref.ID)
			_, byLegacy = st.Layer(owner, ref.Legacy)
		})
		return byLegacy && !byID
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

	// The limit: v1 with its IV modified (+30 read as +31). Its layer was applied before
	// identity version 2 and never reached by a walk since, so Tally never saw its wrapped key:
	// the layer is new to it and counts again. It does leave evidence: the walk stopped at an
	// old layer, and the owner already has a layer at the new one's depth.
	mod1 := flipped(v1, 3+2, 0x01)
	if n, _ := uploadBody(t, u.upload(b64(mod1))); n != 1 || u.value(t, a) != 186 {
		t.Fatalf("modified v1 applied %d, value %d; the documented limit says 1 and 186", n, u.value(t, a))
	}
	assertAnomaly(t, env, 2, v1, domain.DiffersSuspectedReplay)
	// Once counted, its wrapped key is known: a second modified copy is known and flagged.
	if n, _ := uploadBody(t, u.upload(b64(flipped(v1, 3+2, 0x03)))); n != 0 || u.value(t, a) != 186 {
		t.Fatalf("second modified v1 applied %d, value %d; want 0 and 186", n, u.value(t, a))
	}
	assertAnomaly(t, env, 3, v1, domain.DiffersEntryBytes, domain.DiffersLayerBytes)
	assertVerified(t, env)
}
