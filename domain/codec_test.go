package domain_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
)

func hash(seed byte) string {
	var b [32]byte
	for i := range b {
		b[i] = seed + byte(i)
	}
	return hex.EncodeToString(b[:])
}

// uploadEntry is an upload entry as the ledger writes it: At is the log timestamp, whole
// seconds, and the layer is named by its index in UploadPrepared.
func uploadEntry(amount int64, before, after int32) domain.ValueChanged {
	at := time.Unix(1767225600, 0).UTC()
	return domain.ValueChanged{ObjectID: 42, Amount: amount, Before: before, After: after, At: at,
		Upload: &domain.UploadSource{UploadID: uuid.New(), Layer: hash(1), LogTimestamp: at, Entry: 3}}
}

// TestCompactValueChangedRoundTrips: increments and decrements, direct, corrections and upload
// entries come back as written from the compact form (an upload entry without its Layer, which
// UploadPrepared.EntryLayer gives), through DecodeValueChanged and through json.Unmarshal.
func TestCompactValueChangedRoundTrips(t *testing.T) {
	at := time.Date(2026, 3, 4, 5, 6, 7, 891011121, time.UTC)
	anomalous := uploadEntry(2, -3, -5)
	anomalous.Upload.Anomaly = `timestamp 5 is "earlier" than the previous layer's 6 \ é`
	cases := []struct {
		typ string
		v   domain.ValueChanged
	}{
		{domain.EventIncrementApplied, domain.ValueChanged{ObjectID: 1, Amount: 5, Before: 10, After: 15, At: at}},
		{domain.EventDecrementApplied, domain.ValueChanged{ObjectID: 9e15, Amount: 4294967295, Before: 2147483647, After: -2147483648, At: at}},
		{domain.EventDecrementApplied, domain.ValueChanged{ObjectID: 3, Amount: 4, Before: 10, After: 6, At: at, Correction: "double-counted\n\"run\""}},
		{domain.EventIncrementApplied, uploadEntry(7, 1, 8)},
		{domain.EventDecrementApplied, anomalous},
		{domain.EventIncrementApplied, domain.ValueChanged{ObjectID: 5, Amount: 1, Before: 0, After: 1, At: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)}},
	}
	for _, c := range cases {
		b, err := domain.EncodeEvent(c.typ, c.v)
		if err != nil {
			t.Fatal(err)
		}
		if b[0] != '[' || !json.Valid(b) {
			t.Fatalf("%s %+v encoded as %q, want a compact JSON array", c.typ, c.v, b)
		}
		want := c.v
		if want.Upload != nil {
			u := *want.Upload
			u.Layer = "" // named by Entry
			want.Upload = &u
		}
		got, err := domain.DecodeValueChanged(b)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("%q decodes to %+v, %v; want %+v", b, got, err, want)
		}
		var viaJSON domain.ValueChanged
		if err := json.Unmarshal(b, &viaJSON); err != nil || !reflect.DeepEqual(viaJSON, want) {
			t.Fatalf("json.Unmarshal(%q) = %+v, %v; want %+v", b, viaJSON, err, want)
		}
		legacy, _ := json.Marshal(c.v)
		if len(b) >= len(legacy) {
			t.Errorf("compact %d bytes, JSON object %d", len(b), len(legacy))
		}
	}
	p := domain.UploadPrepared{Layers: []string{hash(9), hash(8), hash(1)}}
	if got := p.EntryLayer(&domain.UploadSource{Entry: 3}); got != hash(1) {
		t.Fatalf("EntryLayer = %q", got)
	}
	if got := p.EntryLayer(&domain.UploadSource{Layer: "kept", Entry: 1}); got != "kept" {
		t.Fatalf("EntryLayer of a recorded layer = %q", got)
	}
}

// TestCodecFallsBackToJSON: a body the compact form cannot carry exactly is written as the
// JSON object it always was, and reads back whole.
func TestCodecFallsBackToJSON(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 5, time.UTC)
	noEntry := uploadEntry(1, 0, 1)
	noEntry.Upload.Entry = 0
	subSecond := uploadEntry(1, 0, 1)
	subSecond.At, subSecond.Upload.LogTimestamp = at, at
	cases := []struct {
		typ  string
		body any
	}{
		{domain.EventIncrementApplied, domain.ValueChanged{ObjectID: 1, Amount: 1, Before: 0, After: 7, At: at}}, // after ≠ before + amount
		{domain.EventDecrementApplied, domain.ValueChanged{ObjectID: 1, Amount: 1, Before: 0, After: 1, At: at}}, // wrong direction
		{domain.EventIntValueSet, domain.ValueChanged{ObjectID: 1, Amount: 1, Before: 0, After: 1, At: at}},      // not a ValueChanged type
		{domain.EventIncrementApplied, noEntry},   // layer not indexed
		{domain.EventIncrementApplied, subSecond}, // not a log timestamp
		{domain.EventUploadPrepared, domain.UploadPrepared{UploadID: uuid.New(), Layers: []string{"legacy1"}}},                // not a 32-byte hex identity
		{domain.EventUploadPrepared, domain.UploadPrepared{UploadID: uuid.New(), Layers: []string{strings.ToUpper(hash(1))}}}, // would come back lowercase
		{domain.EventUploadPrepared, domain.UploadPrepared{UploadID: uuid.New(), Layers: []string{hash(1)}, Base: &domain.LayerAlias{Legacy: "x"}}},
	}
	for _, c := range cases {
		b, err := domain.EncodeEvent(c.typ, c.body)
		if err != nil {
			t.Fatal(err)
		}
		if b[0] != '{' {
			t.Fatalf("%s %+v encoded as %q, want a JSON object", c.typ, c.body, b)
		}
		want, _ := json.Marshal(c.body)
		if string(b) != string(want) {
			t.Fatalf("encoded %s, want %s", b, want)
		}
		ptr := reflect.New(reflect.TypeOf(c.body))
		if err := domain.DecodeEvent(c.typ, b, ptr.Interface()); err != nil || !reflect.DeepEqual(ptr.Elem().Interface(), c.body) {
			t.Fatalf("%s decodes to %+v, %v", b, ptr.Elem().Interface(), err)
		}
	}
}

// TestBinaryUploadEventsRoundTrip: UploadPrepared (with every optional part) and
// UploadCommitted in the binary form start with a byte no JSON starts with, decode to what was
// written, and show as the JSON object form through EventJSON.
func TestBinaryUploadEventsRoundTrip(t *testing.T) {
	res := uuid.New()
	at := time.Date(2026, 2, 3, 4, 5, 6, 7, time.UTC)
	prepared := []domain.UploadPrepared{
		{UploadID: uuid.New(), Owner: domain.Owner{Type: domain.OwnerKey, ID: 7}, Layers: []string{hash(1), hash(2), hash(3)},
			Timestamps: []int64{1767225600, 1767225000, 1767229999}, BaseDepth: 12,
			Changes:  []domain.PlannedStep{{ObjectID: 4, FromRevision: 9, Events: 2}, {ObjectID: -1, FromRevision: 0, Events: 1}},
			Instance: uuid.New(), At: at, Resolution: &res,
			Skipped: []domain.SkippedEntry{{Index: 1, ObjectID: 4, Decrement: true, Amount: 3, Reason: domain.RefusalPermission, Message: "no"}},
			Digests: []string{hash(4), hash(5), hash(6)}, FileDigest: hash(7)},
		{UploadID: uuid.New(), Owner: domain.Owner{Type: domain.OwnerUser, ID: 1}, Instance: uuid.New(), At: time.Unix(-62135596800, 0).UTC()},
	}
	for _, p := range prepared {
		b, err := domain.EncodeEvent(domain.EventUploadPrepared, p)
		if err != nil {
			t.Fatal(err)
		}
		if !domain.IsBinary(b) || json.Valid(b) {
			t.Fatalf("UploadPrepared encoded as %q, want binary", b)
		}
		got, err := domain.DecodeUploadPrepared(b)
		if err != nil || !reflect.DeepEqual(got, p) {
			t.Fatalf("decoded %+v, %v; want %+v", got, err, p)
		}
		js, err := domain.EventJSON(domain.EventUploadPrepared, b)
		if err != nil {
			t.Fatal(err)
		}
		var fromJSON domain.UploadPrepared
		if err := json.Unmarshal(js, &fromJSON); err != nil || !reflect.DeepEqual(fromJSON, p) {
			t.Fatalf("EventJSON gives %s (%v)", js, err)
		}
		if id, err := domain.PreparedUploadID(b); err != nil || id != p.UploadID {
			t.Fatalf("PreparedUploadID = %v, %v", id, err)
		}
		legacy, _ := json.Marshal(p)
		if id, err := domain.PreparedUploadID(legacy); err != nil || id != p.UploadID {
			t.Fatalf("PreparedUploadID of JSON = %v, %v", id, err)
		}
		t.Logf("UploadPrepared with %d layers: %d bytes binary, %d JSON", len(p.Layers), len(b), len(legacy))
	}
	c := domain.UploadCommitted{UploadID: uuid.New(), At: at}
	b, err := domain.EncodeEvent(domain.EventUploadCommitted, c)
	if err != nil || !domain.IsBinary(b) {
		t.Fatalf("UploadCommitted encoded as %q, %v", b, err)
	}
	if got, err := domain.DecodeUploadCommitted(b); err != nil || got != c {
		t.Fatalf("decoded %+v, %v", got, err)
	}
	if id, reason, err := domain.DecodeUploadDecision(domain.EventUploadCommitted, b); err != nil || id != c.UploadID || reason != "" {
		t.Fatalf("decision %v %q %v", id, reason, err)
	}
	aborted, _ := json.Marshal(domain.UploadAborted{UploadID: c.UploadID, Reason: "conflict"})
	if id, reason, err := domain.DecodeUploadDecision(domain.EventUploadAborted, aborted); err != nil || id != c.UploadID || reason != "conflict" {
		t.Fatalf("abort decision %v %q %v", id, reason, err)
	}
	// Binary bodies refuse to decode as another kind, and cut ones fail instead of panicking.
	if _, err := domain.DecodeUploadPrepared(b); err == nil {
		t.Fatal("an UploadCommitted body decoded as UploadPrepared")
	}
	full, _ := domain.EncodeEvent(domain.EventUploadPrepared, prepared[0])
	for n := 1; n < len(full); n++ {
		if _, err := domain.DecodeUploadPrepared(full[:n]); err == nil {
			t.Fatalf("a body cut to %d of %d bytes decoded", n, len(full))
		}
	}
	if _, err := domain.DecodeUploadPrepared(append(full, 0)); err == nil {
		t.Fatal("a body with a trailing byte decoded")
	}
}

// TestLegacyJSONEventsDecode: bodies written as JSON objects before the compact encoding (as in
// adapters/httpapi/testdata/legacy-992cfab) decode through the codec unchanged.
func TestLegacyJSONEventsDecode(t *testing.T) {
	vc := `{"objectId":1,"amount":10,"before":0,"after":10,"at":"2025-06-01T10:00:00Z","upload":{"uploadId":"2b1a6c52-5b0e-5d0e-9a43-6c0e51f6e1a2","layer":"` + hash(3) + `","logTimestamp":"2025-06-01T10:00:00Z"}}`
	got, err := domain.DecodeValueChanged([]byte(vc))
	if err != nil || got.Upload == nil || got.Upload.Layer != hash(3) || got.After != 10 || got.Upload.Entry != 0 {
		t.Fatalf("legacy ValueChanged decoded to %+v, %v", got, err)
	}
	if js, err := domain.EventJSON(domain.EventIncrementApplied, []byte(vc)); err != nil || string(js) != vc {
		t.Fatalf("EventJSON changed a JSON body: %s, %v", js, err)
	}
	prep := `{"uploadId":"2b1a6c52-5b0e-5d0e-9a43-6c0e51f6e1a2","owner":{"type":2,"id":1},"layers":["` + hash(3) + `"],"timestamps":[1748772000],"baseDepth":0,"changes":[{"objectId":1,"fromRevision":0,"events":1}],"instance":"6f1c1e8e-55e7-4a1c-9d5e-0e6a3b8f9d10","at":"2025-06-01T10:00:01Z"}`
	p, err := domain.DecodeUploadPrepared([]byte(prep))
	if err != nil || len(p.Layers) != 1 || p.Changes[0].ObjectID != 1 {
		t.Fatalf("legacy UploadPrepared decoded to %+v, %v", p, err)
	}
	c, err := domain.DecodeUploadCommitted([]byte(`{"uploadId":"2b1a6c52-5b0e-5d0e-9a43-6c0e51f6e1a2","at":"2025-06-01T10:00:02Z"}`))
	if err != nil || c.UploadID != p.UploadID {
		t.Fatalf("legacy UploadCommitted decoded to %+v, %v", c, err)
	}
	for _, bad := range []string{`[2,1,1,1,5,"short",1]`, `[1,1,1]`, `[3,1,1,1,1,1]`, `[1,1,99999999999,1,1,1]`, `[1,1,1,1,1,1,"x"`, `[1,1,1,1,1,1] x`, `[1,1,-9223372036854775808,0,0,0]`} {
		if _, err := domain.DecodeValueChanged([]byte(bad)); err == nil {
			t.Errorf("%s decoded", bad)
		}
	}
}

// FuzzDecodeEvent: the decoders never panic on any body, and whatever decodes re-encodes to a
// body that decodes to the same value.
func FuzzDecodeEvent(f *testing.F) {
	e, _ := domain.EncodeEvent(domain.EventDecrementApplied, uploadEntry(2, 5, 3))
	f.Add(e)
	e, _ = domain.EncodeEvent(domain.EventUploadPrepared, domain.UploadPrepared{UploadID: uuid.New(), Layers: []string{hash(1)}, Timestamps: []int64{5}, Digests: []string{hash(2)}})
	f.Add(e)
	e, _ = domain.EncodeEvent(domain.EventUploadCommitted, domain.UploadCommitted{UploadID: uuid.New()})
	f.Add(e)
	f.Add([]byte(`{"objectId":1,"amount":1,"before":0,"after":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if v, err := domain.DecodeValueChanged(data); err == nil && data[0] == '[' {
			typ := domain.EventIncrementApplied
			if v.After < v.Before {
				typ = domain.EventDecrementApplied
			}
			again, err := domain.EncodeEvent(typ, v)
			if err != nil {
				t.Fatal(err)
			}
			if w, err := domain.DecodeValueChanged(again); err != nil || !reflect.DeepEqual(w, v) {
				t.Fatalf("%q → %+v → %q → %+v, %v", data, v, again, w, err)
			}
		}
		if p, err := domain.DecodeUploadPrepared(data); err == nil && domain.IsBinary(data) {
			again, err := domain.EncodeEvent(domain.EventUploadPrepared, p)
			if err != nil {
				t.Fatal(err)
			}
			if w, err := domain.DecodeUploadPrepared(again); err != nil || !reflect.DeepEqual(w, p) {
				t.Fatalf("%q → %+v → %+v, %v", data, p, w, err)
			}
		}
		_, _ = domain.DecodeUploadCommitted(data)
		_, _ = domain.PreparedUploadID(data)
		_, _ = domain.EventJSON(domain.EventUploadPrepared, data)
	})
}

// FuzzLegacyValueChanged: the reflection-free reading of ValueChanged JSON objects (events
// written before the compact encoding) gives exactly what encoding/json gives, for bodies
// json.Marshal wrote from any field values and for any bytes at all.
func FuzzLegacyValueChanged(f *testing.F) {
	f.Add(int64(1), int64(5), int32(0), int32(5), int64(1767225600), int64(0), true, "ab12", "", "", 0, []byte(nil))
	f.Add(int64(-7), int64(0), int32(-2147483648), int32(2147483647), int64(-62135596800), int64(999), false, "", "odd \"one\"", "fix", 3, []byte(`{"objectId":01}`))
	f.Add(int64(9e18), int64(1), int32(1), int32(2), int64(253402300799), int64(5e8), true, "é\x01", "x", "y", -1, []byte(`{"objectId":1,"amount":1,"before":0,"after":1,"at":"2025-01-01T00:00:00+01:00"}`))
	f.Fuzz(func(t *testing.T, obj, amount int64, before, after int32, sec, nsec int64, upload bool, layer, anomaly, correction string, entry int, raw []byte) {
		at := time.Unix(sec%253402300800, nsec%1e9).UTC()
		v := domain.ValueChanged{ObjectID: obj, Amount: amount, Before: before, After: after, At: at, Correction: correction}
		if upload {
			v.Upload = &domain.UploadSource{UploadID: uuid.NewSHA1(uuid.Nil, []byte(layer)), Layer: layer, LogTimestamp: at.Add(time.Hour), Anomaly: anomaly, Entry: entry}
		}
		written, err := json.Marshal(v)
		if err != nil {
			t.Skip()
		}
		bodies := [][]byte{written}
		if t := bytes.TrimLeft(raw, " \t\r\n"); len(t) == 0 || t[0] != '[' { // not the compact form
			bodies = append(bodies, raw)
		}
		for _, body := range bodies {
			var want domain.ValueChanged
			type plain domain.ValueChanged // encoding/json alone, without the codec's method
			wantErr := json.Unmarshal(body, (*plain)(&want))
			got, gotErr := domain.DecodeValueChanged(body)
			if (wantErr == nil) != (gotErr == nil) {
				t.Fatalf("%s: encoding/json says %v, the codec %v", body, wantErr, gotErr)
			}
			if wantErr == nil && !reflect.DeepEqual(got, want) {
				t.Fatalf("%s: encoding/json gives %+v, the codec %+v", body, want, got)
			}
		}
	})
}
