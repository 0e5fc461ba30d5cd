package usagelog

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	priv := testKey(t, 1)
	ring := testRing(t, priv)
	for _, n := range []int{1, 2, 10, 1000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			rng := newTestRand(uint64(n))
			raws := randomEntries(rng, n)
			versions := buildLog(t, &priv.PublicKey, raws)
			raw := versions[n-1]
			want := expectedEntries(t, raws, versions)

			// The library-based oracle reads back exactly what was written.
			if ref := referenceDecode(t, priv, raw); !slices.Equal(ref, reversed(raws)) {
				t.Fatalf("reference decoder read %v, wrote %v", ref, raws)
			}
			d := &Decoder{Keys: ring}
			b64 := base64.StdEncoding.EncodeToString(raw)
			newest, err := d.Decode(context.Background(), b64, NewestFirst, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !entriesEqual(newest, want) {
				t.Fatalf("newest first: got %v, want %v", newest, want)
			}
			oldest, err := d.Decode(context.Background(), b64, OldestFirst, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !entriesEqual(oldest, reversed(want)) {
				t.Fatalf("oldest first: got %v, want %v", oldest, reversed(want))
			}
			if n <= 10 { // the straightforward decoder agrees (larger logs: see the property test)
				decodeBoth(t, ring, raw, OldestFirst, nil, 0)
			}
		})
	}
}

func TestRecordShapes(t *testing.T) {
	priv := testKey(t, 1)
	ring := testRing(t, priv)
	d := &Decoder{Keys: ring}
	type step struct {
		object, amount int64
		quirks         bool
		want           RawEntry
	}
	steps := []step{
		{object: 7, amount: 5, want: RawEntry{Increment: 5, DataObjectID: 7}},
		{object: 7, amount: -3, want: RawEntry{Increment: -3, DataObjectID: 7}},
		{object: 9, amount: 1, quirks: true, want: RawEntry{Increment: 9, DataObjectID: 9}},
		{object: 9, amount: -1, quirks: true, want: RawEntry{Increment: -9, DataObjectID: -9}},
		{object: 1 << 40, amount: math.MinInt32, want: RawEntry{Increment: math.MinInt32, DataObjectID: 1 << 40}},
	}
	var log []byte
	for i, s := range steps {
		var err error
		log, err = Record(log, &priv.PublicKey, s.object, s.amount, int64(1000+i), s.quirks)
		if err != nil {
			t.Fatal(err)
		}
		s.want.Timestamp = int64(1000 + i)
		if got := referenceDecode(t, priv, log)[0]; got != s.want {
			t.Fatalf("step %d wrote %+v, want %+v", i, got, s.want)
		}
	}
	entries, err := d.DecodeRaw(context.Background(), log, OldestFirst, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		obj, amount int64
		dec         bool
	}{{7, 5, false}, {7, 3, true}, {9, 9, false}, {9, 9, true}, {1 << 40, 1 << 31, true}}
	for i, w := range want {
		e := entries[i]
		if e.ObjectID != w.obj || e.Amount != w.amount || e.Decrement != w.dec || e.Timestamp != int64(1000+i) {
			t.Errorf("entry %d = %+v, want %+v", i, e, w)
		}
	}

	for _, bad := range []struct{ object, amount int64 }{{0, 1}, {-1, 1}, {1, 0}, {1, math.MaxInt32 + 1}, {1, math.MinInt32 - 1}} {
		if _, err := Record(nil, &priv.PublicKey, bad.object, bad.amount, 0, false); err == nil {
			t.Errorf("Record(object %d, amount %d) succeeded", bad.object, bad.amount)
		}
	}
	if _, err := Record(nil, &priv.PublicKey, math.MaxInt32+1, 1, 0, true); err == nil {
		t.Error("quirks Record with an id beyond int32 succeeded")
	}
}

func TestTooManyEntries(t *testing.T) {
	priv := testKey(t, 1)
	ring := testRing(t, priv)
	rng := mrand.New(mrand.NewPCG(7, 7))
	raws := randomEntries(rng, 1001)
	versions := buildLog(t, &priv.PublicKey, raws)
	d := &Decoder{Keys: ring}

	before := ring.Decryptions()
	_, err := d.DecodeRaw(context.Background(), versions[1000], NewestFirst, nil)
	if !errors.Is(err, ErrTooManyEntries) {
		t.Fatalf("1001 new layers: %v, want ErrTooManyEntries", err)
	}
	if ops := ring.Decryptions() - before; ops != 1000 {
		t.Errorf("refusing 1001 layers took %d RSA operations, want 1000 (none for the 1001st)", ops)
	}

	// With the oldest layer known, the same file holds exactly 1000 new layers: accepted.
	oldest, err := LayerIDOf(versions[0])
	if err != nil {
		t.Fatal(err)
	}
	entries, err := d.DecodeRaw(context.Background(), versions[1000], OldestFirst, func(id LayerID) bool { return id == oldest })
	if err != nil {
		t.Fatal(err)
	}
	if want := expectedEntries(t, raws, versions)[:1000]; !entriesEqual(entries, reversed(want)) {
		t.Fatal("1000 new layers above a known one decoded wrongly")
	}

	// A smaller limit, on both decoders.
	if _, err := decodeBoth(t, ring, versions[5], NewestFirst, nil, 5); !errors.Is(err, ErrTooManyEntries) {
		t.Fatalf("6 layers, limit 5: %v", err)
	}
	if _, err := decodeBoth(t, ring, versions[4], NewestFirst, nil, 5); err != nil {
		t.Fatalf("5 layers, limit 5: %v", err)
	}
}

func TestKnownLayersStopTheWalk(t *testing.T) {
	priv := testKey(t, 1)
	ring := testRing(t, priv)
	raws := randomEntries(mrand.New(mrand.NewPCG(3, 3)), 10)
	versions := buildLog(t, &priv.PublicKey, raws)
	all := expectedEntries(t, raws, versions) // newest first
	for k := 0; k <= 10; k++ {
		known := map[LayerID]bool{}
		for _, v := range versions[:k] { // the k oldest layers were applied before
			id, _ := LayerIDOf(v)
			known[id] = true
		}
		for _, open := range []opener{openLazy, openFull} {
			d := &Decoder{Keys: ring, open: open}
			before := ring.Decryptions()
			got, err := d.DecodeRaw(context.Background(), versions[9], NewestFirst, func(id LayerID) bool { return known[id] })
			if err != nil {
				t.Fatal(err)
			}
			if ops := ring.Decryptions() - before; ops != uint64(10-k) {
				t.Errorf("%d known of 10: %d RSA operations, want %d", k, ops, 10-k)
			}
			if !entriesEqual(got, all[:10-k]) {
				t.Errorf("%d known of 10: got %v, want %v", k, got, all[:10-k])
			}
		}
	}
}

func TestDotNetSDKSample(t *testing.T) {
	b64, err := os.ReadFile("testdata/dotnet-sdk-sample-log.b64")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.TrimSpace(string(b64))
	raw, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		t.Fatal(err)
	}
	// Outer shape: 93 | c4 10 <16> | c5 01 00 <256> | c5 0b f0 <3056>.
	if len(raw) != 3337 || raw[0] != 0x93 || raw[1] != 0xc4 || raw[2] != 0x10 ||
		string(raw[19:22]) != "\xc5\x01\x00" || string(raw[278:281]) != "\xc5\x0b\xf0" {
		t.Fatalf("unexpected outer shape % x…", raw[:24])
	}
	if _, err := LayerIDOf(raw); err != nil {
		t.Fatalf("outer layer does not parse: %v", err)
	}
	ring := testRing(t, testKey(t, 1), testKey(t, 2))
	before := ring.Decryptions()
	_, err = (&Decoder{Keys: ring}).Decode(context.Background(), text, NewestFirst, nil)
	if !errors.Is(err, ErrCorrupted) {
		t.Fatalf("got %v, want ErrCorrupted", err)
	}
	if ops := ring.Decryptions() - before; ops != 2 {
		t.Errorf("%d RSA operations, want 2 (one per key)", ops)
	}
	decodeBoth(t, ring, raw, NewestFirst, nil, 0)
}

func TestKeyRotation(t *testing.T) {
	k1, k2 := testKey(t, 1), testKey(t, 2)
	ring := testRing(t, k1, k2)
	raws := randomEntries(mrand.New(mrand.NewPCG(4, 4)), 3)
	for _, k := range []int{1, 2} {
		pub := &k1.PublicKey
		if k == 2 {
			pub = &k2.PublicKey
		}
		versions := buildLog(t, pub, raws)
		got, err := decodeBoth(t, ring, versions[2], NewestFirst, nil, 0)
		if err != nil {
			t.Fatalf("log for key %d: %v", k, err)
		}
		if !entriesEqual(got, expectedEntries(t, raws, versions)) {
			t.Fatalf("log for key %d decoded to %v", k, got)
		}
	}
	// A log whose layers alternate between the keys (written across a rotation) decodes too.
	var mixed []byte
	var err error
	for i, r := range raws {
		pub := &k1.PublicKey
		if i%2 == 1 {
			pub = &k2.PublicKey
		}
		if mixed, err = Wrap(mixed, pub, r, rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := decodeBoth(t, ring, mixed, NewestFirst, nil, 0); err != nil || len(got) != 3 {
		t.Fatalf("mixed-key log: %v, %v", got, err)
	}
	// Without the key it was written for, a log is corrupted.
	only1 := testRing(t, k1)
	v2 := buildLog(t, &k2.PublicKey, raws[:1])
	if _, err := decodeBoth(t, only1, v2[0], NewestFirst, nil, 0); !errors.Is(err, ErrCorrupted) {
		t.Fatalf("log for another key: %v, want ErrCorrupted", err)
	}
}

func TestDecodeRefusals(t *testing.T) {
	priv := testKey(t, 1)
	ring := testRing(t, priv)
	pub := &priv.PublicKey
	good := buildLog(t, pub, []RawEntry{{Increment: 1, DataObjectID: 5, Timestamp: 10}, {Increment: 2, DataObjectID: 5, Timestamp: 11}})[1]
	seal := func(inner ...byte) []byte { return sealLayer(t, pub, inner) }
	// An inner layer [[inc, id], ts, bin(0x00)] from raw MessagePack pieces.
	inner := func(inc, id, ts []byte) []byte {
		b := []byte{0x93, 0x92}
		b = append(append(append(b, inc...), id...), ts...)
		return append(b, 0xc4, 0x01, 0x00)
	}

	tests := []struct {
		name string
		raw  []byte
		want error // nil: decodes
	}{
		{"empty", nil, ErrEmpty},
		{"one zero byte: no entries", []byte{0x00}, nil},
		{"one other byte", []byte{0x01}, ErrCorrupted},
		{"trailing byte after the outer layer", append(slices.Clone(good), 0x00), ErrCorrupted},
		{"truncated", good[:len(good)-1], ErrCorrupted},
		{"truncated in the header", good[:10], ErrCorrupted},
		{"outer map", []byte{0x83, 0xc4, 0x00}, ErrCorrupted},
		{"outer array of 2", []byte{0x92, 0xc4, 0x00, 0xc4, 0x00}, ErrCorrupted},
		{"bin32 length beyond the data", []byte{0x93, 0xc6, 0xff, 0xff, 0xff, 0xff}, ErrCorrupted},
		{"minimal inner", seal(inner([]byte{0x01}, []byte{0x05}, []byte{0x0a})...), nil},
		{"int64 encodings of small values", seal(inner([]byte{0xd3, 0, 0, 0, 0, 0, 0, 0, 1}, []byte{0xcf, 0, 0, 0, 0, 0, 0, 0, 5}, []byte{0xd2, 0, 0, 0, 9})...), nil},
		{"array16 headers", seal(0xdc, 0, 3, 0xdc, 0, 2, 0x01, 0x05, 0x0a, 0xc4, 0x01, 0x00), nil},
		{"Increment 0", seal(inner([]byte{0x00}, []byte{0x05}, []byte{0x0a})...), ErrCorrupted},
		{"DataObjectId 0", seal(inner([]byte{0x01}, []byte{0x00}, []byte{0x0a})...), ErrCorrupted},
		{"DataObjectId MinInt64", seal(inner([]byte{0x01}, []byte{0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0}, []byte{0x0a})...), ErrCorrupted},
		{"Increment 2^31", seal(inner([]byte{0xce, 0x80, 0, 0, 0}, []byte{0x05}, []byte{0x0a})...), ErrCorrupted},
		{"Increment -2^31-1", seal(inner([]byte{0xd3, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff}, []byte{0x05}, []byte{0x0a})...), ErrCorrupted},
		{"DataObjectId 2^63", seal(inner([]byte{0x01}, []byte{0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0}, []byte{0x0a})...), ErrCorrupted},
		{"Timestamp 2^64-1", seal(inner([]byte{0x01}, []byte{0x05}, []byte{0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})...), ErrCorrupted},
		{"float Increment", seal(inner([]byte{0xca, 0x3f, 0x80, 0, 0}, []byte{0x05}, []byte{0x0a})...), ErrCorrupted},
		{"str instead of bin", seal(0x93, 0x92, 0x01, 0x05, 0x0a, 0xa1, 0x00), ErrCorrupted},
		{"previous is 0x01", seal(0x93, 0x92, 0x01, 0x05, 0x0a, 0xc4, 0x01, 0x01), ErrCorrupted},
		{"previous is empty", seal(0x93, 0x92, 0x01, 0x05, 0x0a, 0xc4, 0x00), ErrCorrupted},
		{"inner array of 4", seal(0x94, 0x92, 0x01, 0x05, 0x0a, 0xc4, 0x01, 0x00, 0x00), ErrCorrupted},
		{"Data array of 3", seal(0x93, 0x93, 0x01, 0x05, 0x05, 0x0a, 0xc4, 0x01, 0x00), ErrCorrupted},
		{"non-zero byte after the inner layer", seal(0x93, 0x92, 0x01, 0x05, 0x0a, 0xc4, 0x01, 0x00, 0x07), ErrCorrupted},
		{"16 zero bytes after the inner layer", seal(append(inner([]byte{0x01}, []byte{0x05}, []byte{0x0a}), make([]byte, 23)...)...), ErrCorrupted},
		{"15 zero bytes after the inner layer", seal(append(inner([]byte{0x01}, []byte{0x05}, []byte{0x0a}), make([]byte, 7)...)...), nil},
		{"previous bin longer than the plaintext", seal(0x93, 0x92, 0x01, 0x05, 0x0a, 0xc5, 0xff, 0xff, 0x00), ErrCorrupted},
		{"previous is garbage", seal(0x93, 0x92, 0x01, 0x05, 0x0a, 0xc4, 0x03, 0x93, 0xc4, 0x10), ErrCorrupted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeBoth(t, ring, tc.raw, NewestFirst, nil, 0)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}

	d := &Decoder{Keys: ring, MaxInputBytes: 100}
	if _, err := d.Decode(context.Background(), "", NewestFirst, nil); !errors.Is(err, ErrEmpty) {
		t.Errorf("empty string: %v", err)
	}
	long := strings.Repeat("A", 104)
	if _, err := d.Decode(context.Background(), long, NewestFirst, nil); !errors.Is(err, ErrTooLarge) || !errors.Is(err, ErrCorrupted) {
		t.Errorf("over the input limit: %v, want ErrTooLarge and ErrCorrupted", err)
	}
	if _, err := d.DecodeRaw(context.Background(), make([]byte, 76), NewestFirst, nil); !errors.Is(err, ErrTooLarge) {
		t.Errorf("raw over the input limit: %v", err)
	}
	if _, err := d.Decode(context.Background(), "k8QQ*", NewestFirst, nil); !errors.Is(err, ErrCorrupted) {
		t.Errorf("not base64: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := (&Decoder{Keys: ring}).DecodeRaw(ctx, good, NewestFirst, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
}

// TestFastPathMatchesStraightforward is the property test: on random logs, random known
// prefixes and random single-byte corruptions, the fast path and the straightforward decoder
// return the same entries, or errors of the same kind.
func TestFastPathMatchesStraightforward(t *testing.T) {
	k1, k2 := testKey(t, 1), testKey(t, 2)
	ring := testRing(t, k1, k2)
	rng := mrand.New(mrand.NewPCG(11, 12))
	rounds := 40
	if testing.Short() {
		rounds = 10
	}
	for round := range rounds {
		n := 1 + rng.IntN(12)
		raws := randomEntries(rng, n)
		var versions [][]byte
		var cur []byte
		for _, r := range raws {
			pub := &k1.PublicKey
			if rng.IntN(3) == 0 {
				pub = &k2.PublicKey
			}
			next, err := Wrap(cur, pub, r, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			versions, cur = append(versions, next), next
		}
		k := rng.IntN(n + 1)
		known := map[LayerID]bool{}
		for _, v := range versions[:k] {
			id, _ := LayerIDOf(v)
			known[id] = true
		}
		isKnown := func(id LayerID) bool { return known[id] }
		got, err := decodeBoth(t, ring, cur, NewestFirst, isKnown, 0)
		if err != nil || !entriesEqual(got, expectedEntries(t, raws, versions)[:n-k]) {
			t.Fatalf("round %d: %v, %v", round, got, err)
		}
		// Corrupt one byte anywhere; both decoders must agree on the outcome.
		bad := slices.Clone(cur)
		bad[rng.IntN(len(bad))] ^= byte(1 + rng.IntN(255))
		decodeBoth(t, ring, bad, NewestFirst, isKnown, 0)
	}
}

func reversed[T any](s []T) []T {
	out := slices.Clone(s)
	slices.Reverse(out)
	return out
}

// The EncryptedKey bin is bounded by maxEncryptedKeyBytes (an RSA-8192 ciphertext) when the
// outer header is read, before any key is tried: 1024 bytes pass the outer checks, 1025 (and 0)
// do not, and a decode of such a layer performs no RSA operation.
func TestEncryptedKeyBound(t *testing.T) {
	ring := testRing(t, testKey(t, 1))
	iv, obj := make([]byte, 16), make([]byte, 32)
	for _, tc := range []struct {
		keyLen int
		parses bool
	}{{0, false}, {1, true}, {maxEncryptedKeyBytes, true}, {maxEncryptedKeyBytes + 1, false}} {
		raw := opaqueLayer(iv, make([]byte, tc.keyLen), obj)
		if _, err := LayerIDOf(raw); (err == nil) != tc.parses {
			t.Errorf("EncryptedKey of %d bytes: outer header error %v, want parsed %v", tc.keyLen, err, tc.parses)
		}
		before := ring.Decryptions()
		if _, err := decodeBoth(t, ring, raw, NewestFirst, nil, 0); !errors.Is(err, ErrCorrupted) {
			t.Errorf("EncryptedKey of %d bytes: %v, want ErrCorrupted", tc.keyLen, err)
		}
		if ops := ring.Decryptions() - before; ops != 0 {
			t.Errorf("EncryptedKey of %d bytes: %d RSA operations, want 0 (no key of that size)", tc.keyLen, ops)
		}
	}
}
