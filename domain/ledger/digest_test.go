package ledger_test

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"slices"
	"testing"

	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/domain/state"
)

// withoutLengths is the decoder as it was before layer lengths were recorded: every layer's
// Length is unknown, so the digests recorded are the SHA-256 alone.
type withoutLengths struct {
	ledger.LogDecoder
	on *bool
}

func (d withoutLengths) Decode(ctx context.Context, data string, known func(ledger.LayerRef) bool) (*ledger.DecodedLog, error) {
	l, err := d.LogDecoder.Decode(ctx, data, known)
	if err != nil || !*d.on {
		return l, err
	}
	for i := range l.Entries {
		l.Entries[i].Length = 0
	}
	if l.Stop != nil {
		l.Stop.Length = 0
	}
	return l, nil
}

// TestLayerLengthsInDigestsAreBackwardCompatible: a layer's recorded digest is its SHA-256
// and its ciphertext's length. Digests recorded before the length was added (SHA-256 only)
// still compare: the same layer is not flagged, a modified IV is. A layer recorded with its
// length is flagged when presented truncated under a new layer, which the SHA-256 of its first
// bytes alone cannot see; one recorded before cannot be (docs/uploads.md, "Tampering").
func TestLayerLengthsInDigestsAreBackwardCompatible(t *testing.T) {
	ctx := context.Background()
	keys := newKeyRing(t)
	old := true
	svc, _ := newLedger(t, func(cfg *ledger.Config) {
		cfg.Decoder = withoutLengths{LogDecoder: usagelog.NewLedgerDecoder(keys), on: &old}
	})
	admin := ledger.Caller{Admin: true}
	p, err := svc.CreateProduct(ctx, admin, "P")
	if err != nil {
		t.Fatal(err)
	}
	k, err := svc.CreateKey(ctx, admin, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	user := ledger.Caller{Token: domain.Token{Methods: domain.AllMethods}}
	scope := ledger.Scope{KeySpecific: true, ProductID: p.ID, Key: k.Key}
	id, err := svc.AddDataObject(ctx, user, ledger.AddDataObject{Scope: scope, Name: "runs"})
	if err != nil {
		t.Fatal(err)
	}
	upload := func(raw []byte) int {
		t.Helper()
		res, err := svc.UploadValues(ctx, user, ledger.UploadValues{Scope: scope, Data: base64.StdEncoding.EncodeToString(raw)})
		if err != nil {
			t.Fatalf("upload: %v", err)
		}
		return res.Applied
	}
	record := func(prev []byte, amount int64, ts int64) []byte {
		t.Helper()
		raw, err := usagelog.Record(prev, keys.Public(), id, amount, ts, false)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	// truncated drops the last ciphertext block of a log's outermost layer (RSA-2048: the
	// EncryptedObject is a bin16 after 3 + 16 + 3 + 256 bytes).
	truncated := func(raw []byte) []byte {
		const lenAt = 3 + 16 + 3 + 256 + 1
		if raw[lenAt-1] != 0xc5 {
			t.Fatalf("EncryptedObject tag 0x%02x", raw[lenAt-1])
		}
		out := slices.Clone(raw[:len(raw)-16])
		binary.BigEndian.PutUint16(out[lenAt:], binary.BigEndian.Uint16(raw[lenAt:])-16)
		return out
	}
	anomalies := func() []state.IntegrityAnomaly { return svc.IntegrityAnomalies(nil) }

	v1 := record(record(nil, 1, 1_700_000_000), 2, 1_700_000_060)
	if n := upload(v1); n != 2 { // recorded as before: SHA-256 only
		t.Fatalf("applied %d", n)
	}
	old = false
	if n := upload(v1); n != 0 || len(anomalies()) != 0 {
		t.Fatalf("the same version again: applied %d, anomalies %v", n, anomalies())
	}
	// Truncated under a new layer: recorded before the length, so not seen.
	t1 := record(truncated(v1), 3, 1_700_000_120)
	if n := upload(t1); n != 1 || len(anomalies()) != 0 {
		t.Fatalf("truncated old layer under a new one: applied %d, anomalies %v", n, anomalies())
	}
	// A modified IV on the old layer is seen, with both digests in the old form.
	modified := slices.Clone(v1)
	modified[3+2] ^= 0x01
	if n := upload(modified); n != 0 {
		t.Fatalf("modified v1 applied %d", n)
	}
	got := anomalies()
	if len(got) != 1 || !slices.Equal(got[0].Differs, []string{domain.DiffersEntryBytes, domain.DiffersLayerBytes}) || got[0].AppliedLength != 0 {
		t.Fatalf("anomalies %+v; want one entry-bytes,layer-bytes without lengths", got)
	}

	// A layer recorded now has its length: truncated under a new layer, it is flagged.
	v2 := record(t1, 4, 1_700_000_180)
	if n := upload(v2); n != 1 {
		t.Fatalf("v2 applied %d", n)
	}
	t2 := record(truncated(v2), 5, 1_700_000_240)
	if n := upload(t2); n != 1 {
		t.Fatalf("truncated v2 under a new layer applied %d", n)
	}
	got = anomalies()
	if len(got) != 2 {
		t.Fatalf("anomalies %+v; want the truncation flagged", got)
	}
	if a := got[1]; !slices.Equal(a.Differs, []string{domain.DiffersLayerLength}) || a.AppliedDigest != a.SeenDigest ||
		a.AppliedLength != a.SeenLength+16 {
		t.Fatalf("truncation anomaly %+v: want the same digest and a length 16 bytes shorter", a)
	}
	// A client retrying that log: its newest layer is known now, nothing new.
	if n := upload(t2); n != 0 || len(anomalies()) != 2 {
		t.Fatalf("retry applied %d, %d anomalies; want 0 and 2", n, len(anomalies()))
	}
}
