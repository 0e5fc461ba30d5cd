package httpapi_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/auditapi"
	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
)

// outerLayout locates the parts of a log's outermost layer (RSA-2048, as the codec writes it:
// IV in a bin8, the EncryptedKey in a bin16, the EncryptedObject in a bin8/16/32).
type outerLayout struct{ ivOff, keyOff, keyLen, objOff, objLen int }

func layoutOf(t *testing.T, raw []byte) outerLayout {
	t.Helper()
	if raw[0] != 0x93 || raw[1] != 0xc4 || raw[2] != 16 || raw[19] != 0xc5 {
		t.Fatalf("unexpected outer layer shape % x", raw[:20])
	}
	l := outerLayout{ivOff: 3, keyOff: 22, keyLen: int(binary.BigEndian.Uint16(raw[20:22]))}
	p := l.keyOff + l.keyLen
	switch raw[p] {
	case 0xc4:
		l.objOff, l.objLen = p+2, int(raw[p+1])
	case 0xc5:
		l.objOff, l.objLen = p+3, int(binary.BigEndian.Uint16(raw[p+1:]))
	case 0xc6:
		l.objOff, l.objLen = p+5, int(binary.BigEndian.Uint32(raw[p+1:]))
	default:
		t.Fatalf("unexpected EncryptedObject tag 0x%02x", raw[p])
	}
	if l.objOff+l.objLen != len(raw) {
		t.Fatalf("layout %+v does not end at %d", l, len(raw))
	}
	return l
}

// flipped returns a copy of raw with byte i xor-ed with mask.
func flipped(raw []byte, i int, mask byte) []byte {
	out := slices.Clone(raw)
	out[i] ^= mask
	return out
}

// reseal re-encrypts the outermost layer of raw under the same wrapped key (the same AES key,
// which only the License Server and the holder of the private key know), with newIV (nil:
// the same IV), after modify has changed its plaintext in place. It is what a writer holding
// the layer's AES key can make: the layer keeps its identity.
func reseal(t *testing.T, priv *rsa.PrivateKey, raw, newIV []byte, modify func(plain []byte)) []byte {
	t.Helper()
	l := layoutOf(t, raw)
	//lint:ignore SA1019 the usage-log format mandates PKCS#1 v1.5 encryption
	key, err := rsa.DecryptPKCS1v15(nil, priv, raw[l.keyOff:l.keyOff+l.keyLen])
	if err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	out := slices.Clone(raw)
	iv := out[l.ivOff : l.ivOff+16]
	obj := out[l.objOff:]
	cipher.NewCBCDecrypter(block, slices.Clone(iv)).CryptBlocks(obj, obj)
	modify(obj)
	if newIV != nil {
		copy(iv, newIV)
	}
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(obj, obj)
	return out
}

func b64(raw []byte) string { return base64.StdEncoding.EncodeToString(raw) }

// anomalies returns the recorded integrity anomalies.
func anomalies(env *apitest.Env) []state.IntegrityAnomaly {
	return env.Ledger.IntegrityAnomalies(nil)
}

// assertAnomaly checks the newest anomaly: its layer, what differs, and the digests.
func assertAnomaly(t *testing.T, env *apitest.Env, count int, layer []byte, differs ...string) state.IntegrityAnomaly {
	t.Helper()
	all := anomalies(env)
	if len(all) != count {
		t.Fatalf("%d anomalies, want %d: %+v", len(all), count, all)
	}
	a := all[len(all)-1]
	ref := layerRef(t, layer)
	if a.Layer != ref {
		t.Fatalf("anomaly names layer %s, want %s", a.Layer, ref)
	}
	if !slices.Equal(a.Differs, differs) {
		t.Fatalf("anomaly differs in %v, want %v", a.Differs, differs)
	}
	if slices.Equal(differs, []string{domain.DiffersSuspectedReplay}) {
		if a.SeenDigest == "" || a.AppliedDigest != "" {
			t.Fatalf("a suspected replay has the new layer's digest only: %+v", a)
		}
		return a
	}
	if slices.Equal(differs, []string{domain.DiffersFork}) {
		// A fork names the new layer; the known one it competes with has a digest when it
		// was applied with identity version 2.
		if a.SeenDigest == "" || a.AppliedDigest == a.SeenDigest || a.Successor == "" {
			t.Fatalf("a fork has the new layer's digest and names the known one: %+v", a)
		}
		return a
	}
	if a.Recognised == domain.RecognisedByEntry {
		// Re-encrypted under another IV: the original's digest cannot be recovered.
		if a.SeenDigest == "" || a.AppliedDigest != "" || a.Alias == nil {
			t.Fatalf("a layer recognised by its entry has the seen digest only: %+v", a)
		}
		return a
	}
	if a.AppliedDigest == "" || a.SeenDigest == "" {
		t.Fatalf("anomaly without both digests: %+v", a)
	}
	if slices.Contains(differs, domain.DiffersEntryBytes) == (a.AppliedDigest == a.SeenDigest) {
		t.Fatalf("entry digests %s and %s disagree with %v", a.AppliedDigest, a.SeenDigest, differs)
	}
	if slices.Contains(differs, domain.DiffersLayerBytes) && (a.AppliedLayerDigest == "" || a.AppliedLayerDigest == a.SeenLayerDigest) {
		t.Fatalf("layer digests %q and %q disagree with %v", a.AppliedLayerDigest, a.SeenLayerDigest, differs)
	}
	return a
}

// assertVerified replays the store as `tally verify` does and compares it with the live state.
func assertVerified(t *testing.T, env *apitest.Env) {
	t.Helper()
	rebuilt, problems, err := projections.RebuildVerified(context.Background(), env.Store, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("verify: %v", problems)
	}
	// tally verify compares the replay with the projection's persisted snapshot: the live
	// state through its JSON encoding.
	var snapshot []byte
	env.Projection.Read(func(st *state.State) { snapshot, err = state.MarshalState(st) })
	if err != nil {
		t.Fatal(err)
	}
	live, err := state.UnmarshalState(snapshot)
	if err != nil {
		t.Fatal(err)
	}
	if diff := state.Diff(live, rebuilt); len(diff) > 0 {
		t.Fatalf("live state and replay differ: %v", diff)
	}
	if len(live.AllAnomalies()) != len(anomalies(env)) {
		t.Fatalf("the snapshot holds %d anomalies, the live state %d", len(live.AllAnomalies()), len(anomalies(env)))
	}
}

// TestTamperedLayersNeverCountTwiceAndLeaveEvidence tampers with logs the ways docs/uploads.md
// ("Tampering") lists, each before and after the layer was applied, then uploads the untouched
// original: no entry counts twice, and every tampering that reaches a known layer is recorded
// as an integrity anomaly with both digests.
func TestTamperedLayersNeverCountTwiceAndLeaveEvidence(t *testing.T) {
	forEachBackend(t, testTamperedLayers)
}

func testTamperedLayers(t *testing.T, open func(testing.TB) eventstore.Store) {
	setup := func(t *testing.T) (*uploadEnv, int64, *usageLog) {
		u := newUploadEnv(t, open)
		a := u.add(t, u.toKey(u.token), "AddDataObjectToKey", "a", 0)
		l := u.log(t).add(a, 10).add(a, 20)
		if applied, _ := uploadBody(t, u.upload(l.base64())); applied != 2 {
			t.Fatalf("first upload applied %d", applied)
		}
		return u, a, l
	}
	// The clean shape's inner layer starts 93 92 <Increment> <DataObjectId>: byte 2 of the
	// first plaintext block is the amount, and flipping bit 0 of IV byte 2 turns +50 into +51.
	const amountByte = 2

	t.Run("IV flip on a layer not yet uploaded, then the original", func(t *testing.T) {
		u, a, l := setup(t)
		l.add(a, 50)
		tampered := flipped(l.data, 3+amountByte, 0x01)
		if applied, _ := uploadBody(t, u.upload(b64(tampered))); applied != 1 {
			t.Fatalf("tampered upload applied %d", applied)
		}
		// Nothing in the format can tell: the layer is new and decrypts to a valid +51.
		if v := u.value(t, a); v != 81 || len(anomalies(u.env)) != 0 {
			t.Fatalf("value %d, anomalies %v; want 81 and none", v, anomalies(u.env))
		}
		// The original arrives: the same wrapped key, so the layer is known, and not counted
		// again; its bytes differ from those applied, which is flagged.
		if applied, known := uploadBody(t, u.upload(l.base64())); applied != 0 || known != 3 {
			t.Fatalf("original applied %d known %d; want 0 and 3", applied, known)
		}
		if v := u.value(t, a); v != 81 {
			t.Fatalf("value %d after the original, want 81 (before the identity change: 131)", v)
		}
		an := assertAnomaly(t, u.env, 1, l.data, domain.DiffersEntryBytes, domain.DiffersLayerBytes)
		assertHistoryShows(t, u.env, a, 51, an)
		// Newer versions above the layer apply their own entries once; the same difference
		// seen again under them is the same anomaly.
		l.add(a, 5)
		if applied, known := uploadBody(t, u.upload(l.base64())); applied != 1 || known != 3 {
			t.Fatalf("newer version applied %d known %d; want 1 and 3", applied, known)
		}
		if v := u.value(t, a); v != 86 || len(anomalies(u.env)) != 1 {
			t.Fatalf("value %d, %d anomalies; want 86 and 1", v, len(anomalies(u.env)))
		}
		assertVerified(t, u.env)
	})

	t.Run("IV flip on a known layer", func(t *testing.T) {
		u, a, l := setup(t)
		tampered := flipped(l.data, 3+amountByte, 0x01)
		before := snapshot(u.env)
		if applied, known := uploadBody(t, u.upload(b64(tampered))); applied != 0 || known != 2 {
			t.Fatalf("tampered upload applied %d known %d; want 0 and 2", applied, known)
		}
		assertUnchanged(t, u.env, before)
		assertAnomaly(t, u.env, 1, l.data, domain.DiffersEntryBytes, domain.DiffersLayerBytes)
		// The same tampered log again (clients retry) is the same anomaly.
		uploadBody(t, u.upload(b64(tampered)))
		if n := len(anomalies(u.env)); n != 1 {
			t.Fatalf("%d anomalies after a retry, want 1", n)
		}
		// The original again: what was applied, nothing to flag.
		if applied, _ := uploadBody(t, u.upload(l.base64())); applied != 0 || u.value(t, a) != 30 || len(anomalies(u.env)) != 1 {
			t.Fatalf("original applied %d, value %d, %d anomalies", applied, u.value(t, a), len(anomalies(u.env)))
		}
		assertVerified(t, u.env)
	})

	t.Run("ciphertext flip in an inner layer", func(t *testing.T) {
		u, a, l := setup(t)
		applied := slices.Clone(l.data) // the known version, whose outermost layer is known
		inner := layoutOf(t, applied)
		l.add(a, 7)
		// The file is edited on disk between two writes of the License Server: a byte of the
		// known layer's ciphertext head, then the License Server wraps the edited file. Built
		// here by re-sealing the original's new layer with its own key and IV around the edit.
		editHead := func(plain []byte) {
			at := bytes.Index(plain, applied)
			if at < 0 {
				t.Fatal("the known version is not in the new layer's plaintext")
			}
			plain[at+inner.objOff+20] ^= 0x40
		}
		tampered := reseal(t, u.keys.Keys()[0], l.data, nil, editHead)
		if got, want := layerRef(t, tampered), layerRef(t, l.data); got != want {
			t.Fatalf("re-sealed layer has identity %s, want %s", got, want)
		}
		if n, known := uploadBody(t, u.upload(b64(tampered))); n != 1 || known != 2 {
			t.Fatalf("tampered upload applied %d known %d; want 1 and 2", n, known)
		}
		if v := u.value(t, a); v != 37 {
			t.Fatalf("value %d, want 37", v)
		}
		// The walk stopped at the known layer, whose entry bytes differ.
		assertAnomaly(t, u.env, 1, applied, domain.DiffersEntryBytes)
		// The untouched original: its newest layer is known (applied from the tampered log);
		// its entry bytes are the same, its whole bytes are not.
		if n, known := uploadBody(t, u.upload(l.base64())); n != 0 || known != 3 {
			t.Fatalf("original applied %d known %d; want 0 and 3", n, known)
		}
		assertAnomaly(t, u.env, 2, l.data, domain.DiffersLayerBytes)
		if v := u.value(t, a); v != 37 {
			t.Fatalf("value %d, want 37", v)
		}

		// An edit deeper in the known layer (past the bytes its entry decrypts from) under a
		// new layer cannot be seen when it arrives: the walk stops at the known layer without
		// reading it whole. It changes no count, and the original is flagged when it arrives.
		applied = slices.Clone(l.data)
		inner = layoutOf(t, applied)
		l.add(a, 3)
		editDeep := func(plain []byte) {
			at := bytes.Index(plain, applied)
			plain[at+inner.objOff+inner.objLen/2] ^= 0x40
		}
		tampered = reseal(t, u.keys.Keys()[0], l.data, nil, editDeep)
		if n, _ := uploadBody(t, u.upload(b64(tampered))); n != 1 || len(anomalies(u.env)) != 2 {
			t.Fatalf("deep edit applied %d with %d anomalies; want 1 and 2", n, len(anomalies(u.env)))
		}
		if n, _ := uploadBody(t, u.upload(l.base64())); n != 0 {
			t.Fatalf("original applied %d", n)
		}
		assertAnomaly(t, u.env, 3, l.data, domain.DiffersLayerBytes)
		if v := u.value(t, a); v != 40 {
			t.Fatalf("value %d, want 40", v)
		}
		assertVerified(t, u.env)
	})

	t.Run("layer re-wrapped with a new IV", func(t *testing.T) {
		u, a, l := setup(t)
		l.add(a, 50)
		newIV := make([]byte, 16)
		if _, err := rand.Read(newIV); err != nil {
			t.Fatal(err)
		}
		// Whoever holds the layer's AES key re-encrypts it with a new IV and +49.
		payLess := func(plain []byte) {
			if plain[amountByte] != 50 {
				t.Fatalf("amount byte %d, want 50", plain[amountByte])
			}
			plain[amountByte] = 49
		}
		rewrapped := reseal(t, u.keys.Keys()[0], l.data, newIV, payLess)
		if n, _ := uploadBody(t, u.upload(b64(rewrapped))); n != 1 || u.value(t, a) != 79 {
			t.Fatalf("re-wrapped layer applied %d, value %d; want 1 and 79", n, u.value(t, a))
		}
		// The original: known by its wrapped key, not counted again, flagged.
		if n, _ := uploadBody(t, u.upload(l.base64())); n != 0 || u.value(t, a) != 79 {
			t.Fatalf("original applied %d, value %d; want 0 and 79", n, u.value(t, a))
		}
		assertAnomaly(t, u.env, 1, l.data, domain.DiffersEntryBytes, domain.DiffersLayerBytes)

		// And once the original is known, a re-wrapped version of it is known too and flagged.
		l.add(a, 50)
		if n, _ := uploadBody(t, u.upload(l.base64())); n != 1 || u.value(t, a) != 129 {
			t.Fatalf("next version applied %d, value %d; want 1 and 129", n, u.value(t, a))
		}
		rewrapped = reseal(t, u.keys.Keys()[0], l.data, newIV, payLess)
		if n, _ := uploadBody(t, u.upload(b64(rewrapped))); n != 0 || u.value(t, a) != 129 {
			t.Fatalf("re-wrapped known layer applied %d, value %d; want 0 and 129", n, u.value(t, a))
		}
		assertAnomaly(t, u.env, 2, l.data, domain.DiffersEntryBytes, domain.DiffersLayerBytes)
		assertVerified(t, u.env)
	})
}

// TestIntegrityPolicyRefuseUntilAcknowledged: a product set to refuse on tampering refuses an
// upload that shows an anomaly (recording it, changing nothing else) until an operator
// acknowledges the anomaly; then that log and newer versions apply, each entry once.
func TestIntegrityPolicyRefuseUntilAcknowledged(t *testing.T) {
	u := newUploadEnv(t, nil)
	ctx := context.Background()
	admin := ledger.Caller{Admin: true, RequestID: "test"}
	if _, err := u.env.Ledger.SetIntegrityPolicy(ctx, admin, u.product.ID, domain.IntegrityRefuse); err != nil {
		t.Fatal(err)
	}
	a := u.add(t, u.toKey(u.token), "AddDataObjectToKey", "a", 0)
	l := u.log(t).add(a, 10).add(a, 50)
	tampered := flipped(l.data, 3+2, 0x01)
	if n, _ := uploadBody(t, u.upload(b64(tampered))); n != 2 || u.value(t, a) != 61 {
		t.Fatalf("tampered upload applied %d, value %d", n, u.value(t, a))
	}
	v2 := slices.Clone(l.data)
	l.add(a, 5)
	before := snapshot(u.env)
	for range 2 { // a client retrying: refused each time, recorded once
		refused(t, u.upload(l.base64()), http.StatusUnprocessableEntity, domain.ErrIntegrityRefused.Message)
	}
	assertUnchanged(t, u.env, before)
	an := assertAnomaly(t, u.env, 1, v2, domain.DiffersEntryBytes)
	if an.Policy != domain.IntegrityRefuse || an.NewEntries != 1 || an.Acknowledged {
		t.Fatalf("anomaly %+v", an)
	}

	// Bad acknowledgements change nothing.
	if _, err := u.env.Ledger.AcknowledgeAnomaly(ctx, admin, an.AnomalyID, "  "); !errors.Is(err, ledger.ErrInvalid) {
		t.Fatalf("empty reason: %v", err)
	}
	if _, err := u.env.Ledger.AcknowledgeAnomaly(ctx, admin, uuid.New(), "checked"); !errors.Is(err, ledger.ErrNotFound) {
		t.Fatalf("unknown anomaly: %v", err)
	}
	refused(t, u.upload(l.base64()), http.StatusUnprocessableEntity, domain.ErrIntegrityRefused.Message)

	acked, err := u.env.Ledger.AcknowledgeAnomaly(ctx, admin, an.AnomalyID, "the customer restored the file from a backup")
	if err != nil || !acked.Acknowledged {
		t.Fatalf("acknowledge: %+v %v", acked, err)
	}
	if n, known := uploadBody(t, u.upload(l.base64())); n != 1 || known != 2 || u.value(t, a) != 66 {
		t.Fatalf("after the acknowledgement applied %d known %d value %d; want 1, 2, 66", n, known, u.value(t, a))
	}
	if n, _ := uploadBody(t, u.upload(l.base64())); n != 0 || u.value(t, a) != 66 || len(anomalies(u.env)) != 1 {
		t.Fatalf("re-upload applied %d value %d", n, u.value(t, a))
	}
	assertVerified(t, u.env)
}

// assertHistoryShows reads an object's history through the audit API (/v1) and checks that
// the entry of the given amount is marked with the anomaly, which the history lists.
func assertHistoryShows(t *testing.T, env *apitest.Env, object, amount int64, an state.IntegrityAnomaly) {
	t.Helper()
	h, err := auditapi.New(auditapi.Config{Store: env.Store, Ledger: env.Ledger, AdminToken: env.AdminToken})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, err := http.NewRequest(http.MethodGet, srv.URL+"/v1/dataobjects/"+strconv.FormatInt(object, 10)+"/history", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+env.AdminToken)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var hist projections.ObjectHistory
	if err := json.NewDecoder(resp.Body).Decode(&hist); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("history: %d %v", resp.StatusCode, err)
	}
	marked := 0
	for _, e := range hist.Entries {
		if len(e.IntegrityAnomalies) > 0 {
			marked++
			if e.Amount != amount || !slices.Contains(e.IntegrityAnomalies, an.AnomalyID) {
				t.Fatalf("history marks entry %+v", e)
			}
		}
	}
	if marked != 1 || len(hist.IntegrityAnomalies) != 1 {
		t.Fatalf("history marks %d entries and lists %d anomalies; want 1 and 1", marked, len(hist.IntegrityAnomalies))
	}
	got := hist.IntegrityAnomalies[0]
	if got.AnomalyID != an.AnomalyID || got.AppliedDigest != an.AppliedDigest || got.SeenDigest != an.SeenDigest {
		t.Fatalf("history lists %+v, want %+v", got, an)
	}
}

// layerRef is the hex identity of a log's outermost layer.
func layerRef(t *testing.T, raw []byte) string {
	t.Helper()
	id, err := usagelog.LayerIDOf(raw)
	if err != nil {
		t.Fatal(err)
	}
	return id.String()
}

// TestConcurrentTamperedUploadsRecordOneAnomaly sends the same modified log, and a newer
// version above the modified layer, many times at once through two instances sharing a store:
// one anomaly is recorded, the newer version's entry counts once, and nothing else changes.
func TestConcurrentTamperedUploadsRecordOneAnomaly(t *testing.T) {
	u := newUploadEnv(t, nil)
	second := u.env.AnotherInstance()
	a := u.add(t, u.toKey(u.token), "AddDataObjectToKey", "a", 0)
	l := u.log(t).add(a, 10).add(a, 50)
	uploadBody(t, u.upload(l.base64()))
	tampered := b64(flipped(l.data, 3+2, 0x01))
	newer := slices.Clone(l.data)
	newer, err := usagelog.Record(newer, u.keys.Public(), a, 7, l.ts+60, false)
	if err != nil {
		t.Fatal(err)
	}
	// The newer version's new layer wraps the untouched v2: no anomaly of its own.
	var wg sync.WaitGroup
	results := make(chan apitest.Response, 16)
	for i := range 16 {
		env := u.env
		if i%2 == 1 {
			env = second
		}
		data := tampered
		if i%4 == 3 {
			data = b64(newer)
		}
		wg.Go(func() {
			results <- env.Call("UploadValuesToKey", with(u.toKey(u.token), "Data", data))
		})
	}
	wg.Wait()
	close(results)
	for r := range results {
		ok(t, r)
	}
	if err := second.Projection.WaitFor(context.Background(), lastPosition(t, u.env.Store)); err != nil {
		t.Fatal(err)
	}
	if err := u.env.Projection.WaitFor(context.Background(), lastPosition(t, u.env.Store)); err != nil {
		t.Fatal(err)
	}
	if v := u.value(t, a); v != 67 {
		t.Fatalf("value %d, want 67", v)
	}
	assertAnomaly(t, u.env, 1, l.data, domain.DiffersEntryBytes, domain.DiffersLayerBytes)
	if n := len(second.Ledger.IntegrityAnomalies(nil)); n != 1 {
		t.Fatalf("the second instance sees %d anomalies", n)
	}
	assertVerified(t, u.env)
}

// TestIntegrityAdminRefusals: malformed or unknown integrity requests on the admin API are
// refused with a clear status and change nothing; the settings and list answers have the
// documented shape.
func TestIntegrityAdminRefusals(t *testing.T) {
	u := newUploadEnv(t, nil)
	env := u.env
	pid := strconv.FormatInt(u.product.ID, 10)
	before := lastPosition(t, env.Store)
	for _, tc := range []struct {
		method, path, body string
		status             int
	}{
		{http.MethodPost, "/admin/v1/products/" + pid + "/settings", `{"onTamper":"ignore"}`, http.StatusBadRequest},
		{http.MethodPost, "/admin/v1/products/" + pid + "/settings", `{"onTamper":""}`, http.StatusBadRequest},
		{http.MethodPost, "/admin/v1/products/" + pid + "/settings", `{"onTamper":"refuse","extra":1}`, http.StatusBadRequest},
		{http.MethodPost, "/admin/v1/products/99/settings", `{"onTamper":"refuse"}`, http.StatusNotFound},
		{http.MethodPost, "/admin/v1/products/x/settings", `{"onTamper":"refuse"}`, http.StatusBadRequest},
		{http.MethodGet, "/admin/v1/products/" + pid + "/settings", "", http.StatusMethodNotAllowed},
		{http.MethodGet, "/admin/v1/anomalies?key=NOPE&productId=1", "", http.StatusBadRequest},
		{http.MethodGet, "/admin/v1/anomalies?key=NOPE", "", http.StatusNotFound},
		{http.MethodGet, "/admin/v1/anomalies?productId=-1", "", http.StatusBadRequest},
		{http.MethodPost, "/admin/v1/anomalies/not-a-uuid/acknowledge", `{"reason":"x"}`, http.StatusBadRequest},
		{http.MethodPost, "/admin/v1/anomalies/" + uuid.NewString() + "/acknowledge", `{"reason":"x"}`, http.StatusNotFound},
		{http.MethodPost, "/admin/v1/anomalies/" + uuid.NewString() + "/acknowledge", `{"reason":""}`, http.StatusBadRequest},
	} {
		r := env.Send(adminRequest(t, env, tc.method, tc.path, tc.body))
		if r.Status != tc.status {
			t.Errorf("%s %s %s: %d %s, want %d", tc.method, tc.path, tc.body, r.Status, r.Body, tc.status)
		}
	}
	if after := lastPosition(t, env.Store); after != before {
		t.Fatalf("refused requests appended events: position %d to %d", before, after)
	}
	// Without the admin credential: 401.
	req := adminRequest(t, env, http.MethodGet, "/admin/v1/anomalies", "")
	req.Header.Set("Authorization", "Bearer wrong")
	if r := env.Send(req); r.Status != http.StatusUnauthorized {
		t.Fatalf("anomalies without the credential: %d", r.Status)
	}
	r := env.Send(adminRequest(t, env, http.MethodGet, "/admin/v1/anomalies", ""))
	if r.Status != http.StatusOK || string(r.Body) != `{"anomalies":[]}`+"\n" && string(r.Body) != `{"anomalies":[]}` {
		t.Fatalf("empty anomaly list: %d %q", r.Status, r.Body)
	}
	p, err := env.Admin.SetProductSettings(context.Background(), u.product.ID, "refuse")
	if err != nil || p.OnTamper != "refuse" || p.ID != u.product.ID {
		t.Fatalf("settings: %+v %v", p, err)
	}
	products, err := env.Admin.ListProducts(context.Background())
	if err != nil || len(products) != 1 || products[0].OnTamper != "refuse" {
		t.Fatalf("products: %+v %v", products, err)
	}
}

// TestIntegrityPolicyOfProductOwnedObjects: uploads for a product's own objects (the general
// form, ReferencerType 1) follow that product's policy; another product's stays the default.
func TestIntegrityPolicyOfProductOwnedObjects(t *testing.T) {
	u := newUploadEnv(t, nil)
	ctx := context.Background()
	other := u.env.Product("Product B")
	if _, err := u.env.Admin.SetProductSettings(ctx, u.product.ID, "refuse"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		product int64
		refuse  bool
	}{{u.product.ID, true}, {other.ID, false}} {
		owner := general(u.token, domain.OwnerProduct, tc.product)
		obj := u.add(t, owner, "AddDataObject", "seats", 0)
		l := u.log(t).add(obj, 50)
		upload := func(data string) apitest.Response {
			return u.env.Call("UploadValues", with(owner, "Data", data))
		}
		if n, _ := uploadBody(t, upload(b64(flipped(l.data, 3+2, 0x01)))); n != 1 {
			t.Fatalf("product %d: tampered upload applied %d", tc.product, n)
		}
		r := upload(l.base64())
		if tc.refuse {
			refused(t, r, http.StatusUnprocessableEntity, domain.ErrIntegrityRefused.Message)
		} else if n, _ := uploadBody(t, r); n != 0 {
			t.Fatalf("product %d: original applied %d", tc.product, n)
		}
		if v := u.value(t, obj); v != 51 {
			t.Fatalf("product %d: value %d, want 51", tc.product, v)
		}
		list := u.env.Ledger.IntegrityAnomalies(&domain.Owner{Type: domain.OwnerProduct, ID: tc.product})
		if len(list) != 1 || (list[0].Policy == domain.IntegrityRefuse) != tc.refuse {
			t.Fatalf("product %d: anomalies %+v", tc.product, list)
		}
	}
	assertVerified(t, u.env)
}
