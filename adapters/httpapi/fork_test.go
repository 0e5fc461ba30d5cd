package httpapi_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"slices"
	"testing"

	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
)

// digestOf is the digest of a log's outermost layer as the ledger records it.
func digestOf(t *testing.T, raw []byte) string {
	t.Helper()
	ref, err := usagelog.LayerRefOf(raw)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(ref.Digest[:])
}

// TestLegacyLayerWithAModifiedIVCountsOnce closes the case identity version 2 left open
// (docs/uploads.md, "Tampering"): on the store written before it (legacy-992cfab: +10 +20 +30,
// then +40 +50), the newest legacy layer (+50) is uploaded with its IV modified (+51) before
// any walk saw its wrapped key. It is recognised as the applied layer, not counted, flagged
// with the digest the original had; then the untouched original, then a newer version: every
// entry counted exactly once, and `tally verify`'s replay agrees.
func TestLegacyLayerWithAModifiedIVCountsOnce(t *testing.T) {
	t.Run("IV modified: recognised by its original IV", func(t *testing.T) {
		forEachBackend(t, testLegacyIVModified)
	})

	t.Run("re-encrypted with another IV: recognised by its entry", func(t *testing.T) {
		le := startLegacy(t)
		u, a := le.uploadEnv, le.object
		ctx := context.Background()
		admin := ledger.Caller{Admin: true, RequestID: "test"}
		if _, err := u.env.Ledger.SetIntegrityPolicy(ctx, admin, u.product.ID, domain.IntegrityRefuse); err != nil {
			t.Fatal(err)
		}
		newIV := make([]byte, 16)
		if _, err := rand.Read(newIV); err != nil {
			t.Fatal(err)
		}
		same := reseal(t, u.keys.Keys()[0], le.v2, newIV, func([]byte) {})
		// Recognised (known from now on, not counted) and, the product refusing on tampering,
		// refused until acknowledged; a retry is the same anomaly, refused again.
		for range 2 {
			refused(t, u.upload(b64(same)), http.StatusUnprocessableEntity, domain.ErrIntegrityRefused.Message)
		}
		if v := u.value(t, a); v != 150 || le.legacyOnly(t, same) {
			t.Fatalf("value %d, known by its legacy identity only %v; want 150 and false", v, le.legacyOnly(t, same))
		}
		an := assertAnomaly(t, le.env, 1, le.v2, domain.DiffersEntryBytes)
		if an.Recognised != domain.RecognisedByEntry || an.Alias == nil {
			t.Fatalf("anomaly %+v", an)
		}
		// The untouched original flows and is not flagged: the original digest is unknown.
		if n, _ := uploadBody(t, u.upload(b64(le.v2))); n != 0 || u.value(t, a) != 150 || len(anomalies(le.env)) != 1 {
			t.Fatalf("original applied %d, value %d, %d anomalies", n, u.value(t, a), len(anomalies(le.env)))
		}
		if _, err := u.env.Ledger.AcknowledgeAnomaly(ctx, admin, an.AnomalyID, "the License Server was reinstalled"); err != nil {
			t.Fatal(err)
		}
		if n, _ := uploadBody(t, u.upload(b64(same))); n != 0 || u.value(t, a) != 150 || len(anomalies(le.env)) != 1 {
			t.Fatalf("acknowledged version applied %d, value %d, %d anomalies", n, u.value(t, a), len(anomalies(le.env)))
		}
		assertVerified(t, le.env)
	})

	t.Run("re-encrypted with another entry: a fork, the product's policy", func(t *testing.T) {
		le := startLegacy(t)
		u, a := le.uploadEnv, le.object
		ctx := context.Background()
		admin := ledger.Caller{Admin: true, RequestID: "test"}
		if _, err := u.env.Ledger.SetIntegrityPolicy(ctx, admin, u.product.ID, domain.IntegrityRefuse); err != nil {
			t.Fatal(err)
		}
		newIV := make([]byte, 16)
		if _, err := rand.Read(newIV); err != nil {
			t.Fatal(err)
		}
		// Whoever holds the layer's AES key re-encrypts +50 as +49 under another IV: nothing
		// proves it is the applied layer (its legacy identity needs its IV), but it sits on
		// +40, which already has +50 above it: a log never forks.
		payLess := func(plain []byte) {
			if plain[2] != 50 {
				t.Fatalf("amount byte %d, want 50", plain[2])
			}
			plain[2] = 49
		}
		fork := reseal(t, u.keys.Keys()[0], le.v2, newIV, payLess)
		before := snapshot(le.env)
		refused(t, u.upload(b64(fork)), http.StatusUnprocessableEntity, domain.ErrIntegrityRefused.Message)
		assertUnchanged(t, le.env, before)
		an := assertAnomaly(t, le.env, 1, fork, domain.DiffersFork)
		if an.Successor == "" || an.Alias != nil || an.Depth != 5 || an.Policy != domain.IntegrityRefuse {
			t.Fatalf("anomaly %+v", an)
		}
		// The untouched original flows: known, nothing counted.
		if n, _ := uploadBody(t, u.upload(b64(le.v2))); n != 0 || u.value(t, a) != 150 {
			t.Fatalf("original applied %d, value %d", n, u.value(t, a))
		}
		assertVerified(t, le.env)
	})
}

// TestForkOfAVersion2LogIsFlagged: the same fork rule for layers applied with identity
// version 2. A new layer on a known layer that already has a known layer above it cannot be
// that layer (its wrapped key differs): it is a fork (an old version continued, say a License
// Server restored from a backup, or a layer fabricated on it), flagged and, by the default
// policy, applied. A second log of the same owner is not a fork: its first layer sits on the
// empty file, and its later layers on layers that share their depth with the first log's.
func TestForkOfAVersion2LogIsFlagged(t *testing.T) { forEachBackend(t, testForkOfAVersion2Log) }

func testForkOfAVersion2Log(t *testing.T, open func(testing.TB) eventstore.Store) {
	u := newUploadEnv(t, open)
	a := u.add(t, u.toKey(u.token), "AddDataObjectToKey", "a", 0)
	l := u.log(t).add(a, 10)
	old := slices.Clone(l.data)
	l.add(a, 20)
	if n, _ := uploadBody(t, u.upload(l.base64())); n != 2 {
		t.Fatalf("first upload applied %d", n)
	}
	f := &usageLog{t: t, pub: u.keys.Public(), data: old, ts: l.ts}
	f.add(a, 7)
	if n, known := uploadBody(t, u.upload(f.base64())); n != 1 || known != 1 || u.value(t, a) != 37 {
		t.Fatalf("fork applied %d known %d, value %d; want 1, 1, 37", n, known, u.value(t, a))
	}
	an := assertAnomaly(t, u.env, 1, f.data, domain.DiffersFork)
	if an.Successor != layerRef(t, l.data) || an.AppliedDigest != digestOf(t, l.data) || an.Depth != 2 {
		t.Fatalf("fork anomaly %+v, want successor %s", an, layerRef(t, l.data))
	}
	// Both branches go on: each new entry once, no further anomaly.
	f.add(a, 1)
	l.add(a, 2)
	for _, v := range []*usageLog{f, l, f, l} {
		uploadBody(t, u.upload(v.base64()))
	}
	if v := u.value(t, a); v != 40 || len(anomalies(u.env)) != 1 {
		t.Fatalf("value %d, %d anomalies; want 40 and 1", v, len(anomalies(u.env)))
	}
	// A second log of the same key (another License Server): not flagged.
	m := u.log(t).add(a, 100).add(a, 100)
	if n, _ := uploadBody(t, u.upload(m.base64())); n != 2 {
		t.Fatalf("second log applied %d", n)
	}
	m.add(a, 100)
	if n, _ := uploadBody(t, u.upload(m.base64())); n != 1 || u.value(t, a) != 340 || len(anomalies(u.env)) != 1 {
		t.Fatalf("second log applied %d, value %d, %d anomalies; want 1, 340, 1", n, u.value(t, a), len(anomalies(u.env)))
	}
	assertVerified(t, u.env)
}

// testLegacyIVModified: the newest legacy layer with its IV modified, then the original, then
// newer versions (TestLegacyLayerWithAModifiedIVCountsOnce), on each backend with the
// fixture's events copied into it.
func testLegacyIVModified(t *testing.T, open func(testing.TB) eventstore.Store) {
	le := startLegacyOn(t, open)
	u, a := le.uploadEnv, le.object
	mod2 := flipped(le.v2, 3+2, 0x01)
	if n, known := uploadBody(t, u.upload(b64(mod2))); n != 0 || known != 5 || u.value(t, a) != 150 {
		t.Fatalf("modified v2 applied %d known %d, value %d; want 0, 5, 150", n, known, u.value(t, a))
	}
	an := assertAnomaly(t, le.env, 1, le.v2, domain.DiffersEntryBytes)
	if an.Recognised != domain.RecognisedByIV || an.Alias == nil || an.Depth != 5 || an.NewEntries != 0 {
		t.Fatalf("anomaly %+v", an)
	}
	// The digest recovered is exactly the untouched layer's: the IV was recovered.
	if an.AppliedDigest != digestOf(t, le.v2) || an.SeenDigest != digestOf(t, mod2) {
		t.Fatalf("applied digest %s, want the original's %s", an.AppliedDigest, digestOf(t, le.v2))
	}
	assertHistoryShows(t, le.env, a, 50, an)
	// The same modified log again (a client retrying): the same anomaly.
	if n, _ := uploadBody(t, u.upload(b64(mod2))); n != 0 || len(anomalies(le.env)) != 1 {
		t.Fatalf("retry applied %d, %d anomalies", n, len(anomalies(le.env)))
	}
	// The untouched original: known by its wrapped key now, its digest the one recovered.
	if n, known := uploadBody(t, u.upload(b64(le.v2))); n != 0 || known != 5 || u.value(t, a) != 150 || len(anomalies(le.env)) != 1 {
		t.Fatalf("original applied %d known %d, value %d, %d anomalies", n, known, u.value(t, a), len(anomalies(le.env)))
	}
	// A newer version: its one new entry counts once.
	l := &usageLog{t: t, pub: u.keys.Public(), data: slices.Clone(le.v2), ts: 1767225600 + 5*60}
	l.add(a, 5)
	if n, known := uploadBody(t, u.upload(l.base64())); n != 1 || known != 5 || u.value(t, a) != 155 {
		t.Fatalf("newer version applied %d known %d, value %d; want 1, 5, 155", n, known, u.value(t, a))
	}
	// And a newer version of the modified log: the new entry only (it was just applied).
	m := &usageLog{t: t, pub: u.keys.Public(), data: mod2, ts: 1767225600 + 5*60}
	m.add(a, 7)
	if n, _ := uploadBody(t, u.upload(m.base64())); n != 1 || u.value(t, a) != 162 || len(anomalies(le.env)) != 1 {
		t.Fatalf("newer modified version applied %d, value %d, %d anomalies; want 1, 162, 1", n, u.value(t, a), len(anomalies(le.env)))
	}
	assertVerified(t, le.env)
}
