package usagelog

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// The smallest encodings MessagePack-CSharp writes: non-negative values as positive fixint or
// uint8/16/32/64, negative ones as negative fixint or int8/16/32/64.
var intEncodings = []struct {
	v    int64
	want string
}{
	{0, "00"},
	{1, "01"},
	{127, "7f"},
	{128, "cc80"},
	{255, "ccff"},
	{256, "cd0100"},
	{65535, "cdffff"},
	{65536, "ce00010000"},
	{math.MaxInt32, "ce7fffffff"},
	{math.MaxUint32, "ceffffffff"},
	{math.MaxUint32 + 1, "cf0000000100000000"},
	{math.MaxInt64, "cf7fffffffffffffff"},
	{-1, "ff"},
	{-32, "e0"},
	{-33, "d0df"},
	{-128, "d080"},
	{-129, "d1ff7f"},
	{-32768, "d18000"},
	{-32769, "d2ffff7fff"},
	{math.MinInt32, "d280000000"},
	{math.MinInt32 - 1, "d3ffffffff7fffffff"},
	{math.MinInt64, "d38000000000000000"},
}

func TestEncodingBytes(t *testing.T) {
	priv := testKey(t, 1)
	pub := &priv.PublicKey
	for _, tc := range intEncodings {
		inc := int32(1)
		if tc.v >= math.MinInt32 && tc.v <= math.MaxInt32 && tc.v != 0 {
			inc = int32(tc.v)
		}
		id := tc.v
		if id == 0 {
			id = 1
		}
		e := RawEntry{Increment: inc, DataObjectID: id, Timestamp: tc.v}
		raw, err := Wrap(nil, pub, e, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		plain := openInner(t, priv, raw)
		enc := func(v int64) string {
			for _, c := range intEncodings {
				if c.v == v {
					return c.want
				}
			}
			t.Fatalf("no expected encoding for %d", v)
			return ""
		}
		// 93 | 92 <Increment> <DataObjectId> | <Timestamp> | c4 01 00
		want := "9392" + enc(int64(inc)) + enc(id) + tc.want + "c40100"
		got := hex.EncodeToString(plain)
		if !strings.HasPrefix(got, want) {
			t.Errorf("%+v: inner layer %s, want %s + zero padding", e, got, want)
			continue
		}
		checkPadding(t, plain, len(want)/2)
	}
}

// checkPadding asserts that plain is the inner layer of innerLen bytes followed by zeros up to
// the next 16-byte boundary and no further.
func checkPadding(t *testing.T, plain []byte, innerLen int) {
	t.Helper()
	wantLen := (innerLen + 15) / 16 * 16
	if len(plain) != wantLen {
		t.Errorf("encrypted object of %d bytes for an inner layer of %d, want %d", len(plain), innerLen, wantLen)
	}
	if !bytes.Equal(plain[innerLen:], make([]byte, len(plain)-innerLen)) {
		t.Errorf("padding % x is not zeros", plain[innerLen:])
	}
}

func TestEncodingBinAndPadding(t *testing.T) {
	priv := testKey(t, 1)
	pub := &priv.PublicKey
	e := RawEntry{Increment: 1, DataObjectID: 2, Timestamp: 3} // inner header 93 92 01 02 03 = 5 bytes
	for _, tc := range []struct {
		prevLen int
		header  string
	}{
		{1, "c401"},
		{9, "c409"}, // 5 + 2 + 9 = 16: already aligned, no padding
		{255, "c4ff"},
		{256, "c50100"},
		{65535, "c5ffff"},
		{65536, "c600010000"},
	} {
		prev := bytes.Repeat([]byte{0xab}, tc.prevLen)
		raw, err := Wrap(prev, pub, e, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		plain := openInner(t, priv, raw)
		head := "9392010203" + tc.header
		if got := hex.EncodeToString(plain[:len(head)/2]); got != head {
			t.Errorf("previous of %d bytes: header %s, want %s", tc.prevLen, got, head)
		}
		innerLen := len(head)/2 + tc.prevLen
		if !bytes.Equal(plain[len(head)/2:innerLen], prev) {
			t.Errorf("previous of %d bytes not copied verbatim", tc.prevLen)
		}
		checkPadding(t, plain, innerLen)

		// The outer layer: 93 | c4 10 <IV> | c5 01 00 <256-byte key> | bin <object>.
		objLen := len(plain)
		var objHeader []byte
		switch {
		case objLen < 256:
			objHeader = []byte{0xc4, byte(objLen)}
		case objLen <= math.MaxUint16:
			objHeader = []byte{0xc5, byte(objLen >> 8), byte(objLen)}
		default:
			objHeader = []byte{0xc6, byte(objLen >> 24), byte(objLen >> 16), byte(objLen >> 8), byte(objLen)}
		}
		if raw[0] != 0x93 || raw[1] != 0xc4 || raw[2] != 0x10 || !bytes.Equal(raw[19:22], []byte{0xc5, 0x01, 0x00}) ||
			!bytes.Equal(raw[278:278+len(objHeader)], objHeader) || len(raw) != 278+len(objHeader)+objLen {
			t.Errorf("previous of %d bytes: outer layer % x…, want 93 c4 10 … c5 01 00 … % x", tc.prevLen, raw[:24], objHeader)
		}
	}
}

// The library, decoding what Wrap wrote, sees the same values: the hand-written shapes are
// ordinary MessagePack.
func TestEncodingReadsBackWithTheLibrary(t *testing.T) {
	priv := testKey(t, 1)
	ring := testRing(t, priv)
	for _, tc := range intEncodings {
		if tc.v < math.MinInt32 || tc.v > math.MaxInt32 || tc.v == 0 {
			continue
		}
		e := RawEntry{Increment: int32(tc.v), DataObjectID: tc.v * 3, Timestamp: tc.v}
		raw, err := Wrap([]byte{0}, &priv.PublicKey, e, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		var inner []any
		if err := msgpack.NewDecoder(bytes.NewReader(openInner(t, priv, raw))).Decode(&inner); err != nil {
			t.Fatal(err)
		}
		data := inner[0].([]any)
		if toInt64(t, data[0]) != int64(e.Increment) || toInt64(t, data[1]) != e.DataObjectID || toInt64(t, inner[1]) != e.Timestamp ||
			!bytes.Equal(inner[2].([]byte), []byte{0}) {
			t.Errorf("library read %v for %+v", inner, e)
		}
		got, err := (&Decoder{Keys: ring}).DecodeRaw(context.Background(), raw, NewestFirst, nil)
		if err != nil || got[0].Amount != abs(tc.v) || got[0].ObjectID != abs(tc.v*3) || got[0].Decrement != (tc.v < 0) {
			t.Errorf("decoder read %+v, %v for %+v", got, err, e)
		}
	}
}

// Decoding k new layers reads only their headers and paddings: the AES work is O(k² × header
// size) plus the read-ahead, the same whatever lies below once the history is longer than the
// read-ahead, and the chain serves every read from its head and tail buffers.
func TestFastPathWorkIsIndependentOfHistory(t *testing.T) {
	priv := testKey(t, 1)
	ring := testRing(t, priv)
	const newLayers = 20
	var decrypted []int
	for _, history := range []int{10_000, 100_000} {
		base := opaqueHistory(t, &priv.PublicKey, history)
		baseID, _ := LayerIDOf(base)
		log := base
		for i := range newLayers {
			var err error
			if log, err = Record(log, &priv.PublicKey, 1, 1, int64(i), false); err != nil {
				t.Fatal(err)
			}
		}
		w := &work{}
		d := &Decoder{Keys: ring, open: openLazyCounting(w)}
		entries, err := d.DecodeRaw(context.Background(), log, NewestFirst, func(id LayerID) bool { return id == baseID })
		if err != nil || len(entries) != newLayers {
			t.Fatalf("history %d: %d entries, %v", history, len(entries), err)
		}
		if w.refused != 0 {
			t.Errorf("history %d: %d reads or opens the chain refused", history, w.refused)
		}
		decrypted = append(decrypted, w.decryptedBytes)
	}
	// The read-ahead (headChunk, tailChunk) reaches a few KiB into the history; a history longer
	// than that changes nothing.
	if decrypted[0] != decrypted[1] {
		t.Errorf("AES work depends on the history: %d bytes over 10,000 bytes, %d over 100,000", decrypted[0], decrypted[1])
	}
	if limit := newLayers*newLayers*400 + newLayers*2*(headChunk+tailChunk); decrypted[0] > limit {
		t.Errorf("%d bytes decrypted for %d layers, more than %d", decrypted[0], newLayers, limit)
	}
}

// opaqueHistory is a well-formed outer layer whose EncryptedObject is size random bytes: it
// stands for a long history that the decoder knows and never opens.
func opaqueHistory(t testing.TB, pub interface{ Size() int }, size int) []byte {
	t.Helper()
	size = (size + 15) / 16 * 16
	iv, encKey, obj := make([]byte, 16), make([]byte, pub.Size()), make([]byte, size)
	rand.Read(iv)
	rand.Read(encKey)
	rand.Read(obj)
	return opaqueLayer(iv, encKey, obj)
}

// With two keys of the same size (a rotation), every layer of the older key is first opened
// with the newer one and fails: the chain pops that level and pushes it again. Over a log long
// enough to extend both of the chain's buffers several times, the result still matches the
// straightforward decoder, with every read served from the buffers and at most one pop per layer of
// the older key (none when its EncryptedKey is not below the newer key's modulus: the RSA step
// refuses it and there is no candidate to pop).
func TestFastPathKeyRotation(t *testing.T) {
	current, old := testKey(t, 1), testKey(t, 2)
	ring := testRing(t, current, old)
	rng := newTestRand(21)
	const layers = 120
	raws := randomEntries(rng, layers)
	var log []byte
	oldLayers := 0
	for _, r := range raws {
		pub := &current.PublicKey
		if rng.IntN(2) == 0 {
			pub, oldLayers = &old.PublicKey, oldLayers+1
		}
		var err error
		if log, err = Wrap(log, pub, r, rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	want, err := (&Decoder{Keys: ring, open: openFull}).DecodeRaw(context.Background(), log, OldestFirst, nil)
	if err != nil || len(want) != layers {
		t.Fatalf("straightforward: %d entries, %v", len(want), err)
	}
	w := &work{}
	got, err := (&Decoder{Keys: ring, open: openLazyCounting(w)}).DecodeRaw(context.Background(), log, OldestFirst, nil)
	if err != nil || !entriesEqual(got, want) {
		t.Fatalf("fast path: %v, %v; want %v", got, err, want)
	}
	if w.pops == 0 || w.pops > oldLayers {
		t.Errorf("%d levels popped, want up to one for each of the %d layers of the older key", w.pops, oldLayers)
	}
	if w.refused != 0 {
		t.Errorf("%d reads or opens the chain refused", w.refused)
	}
}

// The chain serves only the walk's reads: a read of an outer level, once a layer is pushed on
// it, and an open from a view the chain has moved past are refused (and counted), not served.
func TestChainRefusesReadsNoWalkMakes(t *testing.T) {
	priv := testKey(t, 1)
	ring := testRing(t, priv)
	raw := buildLog(t, &priv.PublicKey, randomEntries(newTestRand(5), 3))[2]
	w := &work{}
	open := openLazyCounting(w)
	var src source = plainSource(raw)
	hdr, err := readOuter(&window{src: src}, 0, len(raw))
	if err != nil {
		t.Fatal(err)
	}
	var views []source // the plaintexts of the two outer layers
	var hdrs []outerHeader
	for depth := 1; ; depth++ {
		_, next, _, err := openLayer(open, src, hdr, ring.unwrap(hdr.encryptedKey)[0])
		if err != nil {
			t.Fatalf("layer %d: %v", depth, err)
		}
		if next == nil {
			break
		}
		src, hdr = next.src, next.hdr
		views, hdrs = append(views, src), append(hdrs, hdr)
	}
	if len(views) != 2 || w.refused != 0 {
		t.Fatalf("walk: %d views, %d refused", len(views), w.refused)
	}
	for i, v := range views {
		if _, err := v.bytes(0, 1); err == nil || errors.Is(err, ErrCorrupted) {
			t.Errorf("read of outer layer %d: %v, want an internal error", i+1, err)
		}
	}
	h := hdrs[0]
	if _, err := open(views[0], h.objOff, h.objLen, h.iv, ring.unwrap(h.encryptedKey)[0]); err == nil || errors.Is(err, ErrCorrupted) {
		t.Errorf("open from a view the chain has moved past: %v, want an internal error", err)
	}
	if w.refused != 3 {
		t.Errorf("%d refusals counted, want 3", w.refused)
	}
}
