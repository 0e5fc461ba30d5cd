package usagelog

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// testKey loads fixed test key i (1 or 2) from testdata.
func testKey(t testing.TB, i int) *rsa.PrivateKey {
	t.Helper()
	k, err := LoadPrivateKeyFile(filepath.Join("testdata", fmt.Sprintf("test-key-%d.pem", i)))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testRing(t testing.TB, keys ...*rsa.PrivateKey) *KeyRing {
	t.Helper()
	r, err := NewKeyRing(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// buildLog wraps entries oldest first and returns every version of the file: versions[i] holds
// entries[0..i].
func buildLog(t testing.TB, pub *rsa.PublicKey, entries []RawEntry) [][]byte {
	t.Helper()
	var cur []byte
	versions := make([][]byte, 0, len(entries))
	for _, e := range entries {
		next, err := Wrap(cur, pub, e, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		versions = append(versions, next)
		cur = next
	}
	return versions
}

// expectedEntries interprets raw entries the way the spec says, newest first, with the layer ids
// of the given versions.
func expectedEntries(t testing.TB, raws []RawEntry, versions [][]byte) []Entry {
	t.Helper()
	out := make([]Entry, 0, len(raws))
	for i := len(raws) - 1; i >= 0; i-- {
		r := raws[i]
		ref, err := LayerRefOf(versions[i])
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, Entry{
			Layer:     ref.ID,
			Legacy:    ref.Legacy,
			Digest:    ref.Digest,
			Length:    ref.Length,
			ObjectID:  abs(r.DataObjectID),
			Decrement: r.Increment < 0 || r.DataObjectID < 0,
			Amount:    abs(int64(r.Increment)),
			Timestamp: r.Timestamp,
		})
	}
	return out
}

// randomEntries makes n valid raw entries: clean and quirk shapes, both directions, a few objects,
// integer widths from fixint to int64.
func randomEntries(rng *mrand.Rand, n int) []RawEntry {
	ids := []int64{1, 2, 127, 128, 300, 70000, 1 << 31, 1 << 40}
	out := make([]RawEntry, n)
	ts := int64(1_700_000_000)
	for i := range out {
		id := ids[rng.IntN(len(ids))]
		var inc int32
		switch rng.IntN(4) {
		case 0:
			inc = int32(1 + rng.IntN(10))
		case 1:
			inc = int32(rng.Int32()) | 1 // any width, never 0
		default:
			inc = int32(1 + rng.IntN(1000))
		}
		if rng.IntN(2) == 0 {
			inc = -inc
		}
		if rng.IntN(3) == 0 { // the reference writer's decrement shape: negative id
			id = -id
		}
		ts += int64(rng.IntN(100))
		out[i] = RawEntry{Increment: inc, DataObjectID: id, Timestamp: ts}
	}
	return out
}

// sealLayer encrypts arbitrary inner plaintext for pub as one outer layer, zero padding it to a
// block boundary when it is not aligned: a way to put any inner bytes in front of the decoder.
func sealLayer(t testing.TB, pub *rsa.PublicKey, inner []byte) []byte {
	t.Helper()
	key := make([]byte, 16)
	iv := make([]byte, 16)
	rand.Read(key)
	rand.Read(iv)
	//lint:ignore SA1019 the usage-log format mandates PKCS#1 v1.5 encryption
	encKey, err := rsa.EncryptPKCS1v15(rand.Reader, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	return sealWith(key, iv, encKey, inner)
}

func sealWith(key, iv, encKey, inner []byte) []byte {
	obj := append([]byte(nil), inner...)
	for len(obj)%16 != 0 || len(obj) == 0 {
		obj = append(obj, 0)
	}
	block, _ := aes.NewCipher(key)
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(obj, obj)
	return opaqueLayer(iv, encKey, obj)
}

// opaqueLayer is the outer array [bin(iv), bin(encKey), bin(obj)] of a layer, encoded by the
// msgpack library, whatever the three hold.
func opaqueLayer(iv, encKey, obj []byte) []byte {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	_ = enc.EncodeArrayLen(3)
	_ = enc.EncodeBytes(iv)
	_ = enc.EncodeBytes(encKey)
	_ = enc.EncodeBytes(obj)
	return buf.Bytes()
}

// openInner decrypts the outermost layer of raw with priv and returns the inner plaintext,
// independently of the decoder: the msgpack library parses the outer array.
func openInner(t testing.TB, priv *rsa.PrivateKey, raw []byte) []byte {
	t.Helper()
	var outer [][]byte
	if err := msgpack.Unmarshal(raw, &outer); err != nil {
		t.Fatal(err)
	}
	if len(outer) != 3 {
		t.Fatalf("outer array of %d", len(outer))
	}
	//lint:ignore SA1019 the usage-log format mandates PKCS#1 v1.5 encryption
	key, err := rsa.DecryptPKCS1v15(nil, priv, outer[1])
	if err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	plain := make([]byte, len(outer[2]))
	cipher.NewCBCDecrypter(block, outer[0]).CryptBlocks(plain, outer[2])
	return plain
}

// referenceDecode decodes a whole log with the msgpack library and the standard library only,
// newest first: an oracle independent of the decoder's hand-written parser.
func referenceDecode(t testing.TB, priv *rsa.PrivateKey, raw []byte) []RawEntry {
	t.Helper()
	var out []RawEntry
	for !(len(raw) == 1 && raw[0] == 0) {
		plain := openInner(t, priv, raw)
		dec := msgpack.NewDecoder(bytes.NewReader(plain))
		var inner []any
		if err := dec.Decode(&inner); err != nil {
			t.Fatal(err)
		}
		data := inner[0].([]any)
		out = append(out, RawEntry{
			Increment:    int32(toInt64(t, data[0])),
			DataObjectID: toInt64(t, data[1]),
			Timestamp:    toInt64(t, inner[1]),
		})
		raw = inner[2].([]byte)
	}
	return out
}

func toInt64(t testing.TB, v any) int64 {
	t.Helper()
	switch n := v.(type) {
	case int8:
		return int64(n)
	case int16:
		return int64(n)
	case int32:
		return int64(n)
	case int64:
		return n
	case uint8:
		return int64(n)
	case uint16:
		return int64(n)
	case uint32:
		return int64(n)
	case uint64:
		return int64(n)
	}
	t.Fatalf("not an integer: %T", v)
	return 0
}

// decodeBoth decodes with the fast path and with the straightforward decoder and fails unless
// they agree, on entries and on error kind. It also runs the fast path with tiny read-aheads
// (none, and a few blocks), so that even short logs extend the chain's buffers at almost every
// read, as long uploads do with the default read-ahead.
func decodeBoth(t testing.TB, ring *KeyRing, raw []byte, order Order, known func(LayerID) bool, maxLayers int) ([]Entry, error) {
	t.Helper()
	full := &Decoder{Keys: ring, MaxNewLayers: maxLayers, open: openFull}
	want, wantErr := full.DecodeRaw(context.Background(), raw, order, known)
	var got []Entry
	var err error
	for _, fast := range []*Decoder{
		{Keys: ring, MaxNewLayers: maxLayers},
		{Keys: ring, MaxNewLayers: maxLayers, open: openLazyTuned(nil, 0, 0)},
		{Keys: ring, MaxNewLayers: maxLayers, open: openLazyTuned(nil, 48, 32)},
	} {
		got, err = fast.DecodeRaw(context.Background(), raw, order, known)
		if errorKind(err) != errorKind(wantErr) {
			t.Fatalf("fast path error %v, straightforward error %v", err, wantErr)
		}
		if !entriesEqual(got, want) {
			t.Fatalf("fast path and straightforward decoder differ:\nfast %v\nfull %v", got, want)
		}
	}
	return got, err
}

func errorKind(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrEmpty):
		return "empty"
	case errors.Is(err, ErrTooManyEntries):
		return "too many"
	case errors.Is(err, ErrTooLarge):
		return "too large"
	case errors.Is(err, ErrCorrupted):
		return "corrupted"
	}
	return "other: " + err.Error()
}

func entriesEqual(a, b []Entry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// newTestRand returns a deterministic generator for test data.
func newTestRand(seed uint64) *mrand.Rand { return mrand.New(mrand.NewPCG(seed, 1)) }
