package usagelog

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"os"
	"strings"
	"testing"
)

// FuzzDecode feeds arbitrary logs to both decoders. Seeds are valid logs for the fixed test key,
// which the fuzz key ring holds, so mutations of the outer layer and of the RSA and AES inputs
// reach the inner parsing. Only the three error kinds (or success) may come out, never a panic,
// and the fast path must agree with the straightforward decoder.
func FuzzDecode(f *testing.F) {
	priv := testKey(f, 1)
	ring := testRing(f, priv)
	for _, n := range []int{1, 2, 5} {
		raws := randomEntries(newTestRand(uint64(n)), n)
		versions := buildLog(f, &priv.PublicKey, raws)
		f.Add(versions[n-1])
	}
	f.Add([]byte{0x00})
	f.Add([]byte{0x93, 0xc4, 0x10})
	if b64, err := os.ReadFile("testdata/dotnet-sdk-sample-log.b64"); err == nil {
		if raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b64))); err == nil {
			f.Add(raw)
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, err := decodeBoth(t, ring, raw, NewestFirst, nil, 8)
		checkKind(t, err)
		// The base64 entry point agrees with the raw one.
		viaText, textErr := (&Decoder{Keys: ring, MaxNewLayers: 8}).Decode(context.Background(), base64.StdEncoding.EncodeToString(raw), NewestFirst, nil)
		if errorKind(textErr) != errorKind(err) || !entriesEqual(viaText, got) {
			t.Fatalf("base64 path: %v, %v; raw path: %v, %v", viaText, textErr, got, err)
		}
	})
}

// FuzzDecodeLayer fuzzes the inner layer's plaintext directly: each input is encrypted as one
// layer (zero padded to a block boundary) and opened with its AES key by every opener, skipping
// the RSA step (slow under coverage instrumentation), so the fuzzer explores the MessagePack
// parsing behind the encryption. They must agree on the entry, the nested layer and the error
// kind, and never panic.
func FuzzDecodeLayer(f *testing.F) {
	priv := testKey(f, 1)
	key, iv := make([]byte, 16), make([]byte, 16)
	rand.Read(key)
	rand.Read(iv)
	//lint:ignore SA1019 the usage-log format mandates PKCS#1 v1.5 encryption
	encKey, err := rsa.EncryptPKCS1v15(rand.Reader, &priv.PublicKey, key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{0x93, 0x92, 0x01, 0x05, 0xce, 0x65, 0x53, 0xf1, 0x00, 0xc4, 0x01, 0x00})
	nested := buildLog(f, &priv.PublicKey, randomEntries(newTestRand(9), 2))[1]
	f.Add(append([]byte{0x93, 0x92, 0xff, 0xd3, 0x80, 0, 0, 0, 0, 0, 0, 1, 0x0a, 0xc5, byte(len(nested) >> 8), byte(len(nested))}, nested...))
	f.Fuzz(func(t *testing.T, inner []byte) {
		raw := sealWith(key, iv, encKey, inner)
		hdr, err := readOuter(&window{src: plainSource(raw)}, 0, len(raw))
		if err != nil {
			t.Fatalf("sealed layer does not parse: %v", err)
		}
		fullEntry, fullNext, _, fullErr := openLayer(openFull, plainSource(raw), hdr, key)
		for _, fast := range []opener{openLazy, openLazyTuned(nil, 0, 0)} {
			fastEntry, fastNext, _, fastErr := openLayer(fast, plainSource(raw), hdr, key)
			checkKind(t, fastErr)
			if errorKind(fastErr) != errorKind(fullErr) || fastEntry != fullEntry || (fastNext == nil) != (fullNext == nil) {
				t.Fatalf("fast %+v %v, full %+v %v", fastEntry, fastErr, fullEntry, fullErr)
			}
			if fastNext == nil {
				continue
			}
			a, b := fastNext.hdr, fullNext.hdr
			if a.ref != b.ref || a.objOff != b.objOff || a.objLen != b.objLen {
				t.Fatalf("nested layer differs: %+v vs %+v", a, b)
			}
			ct1, err1 := fastNext.src.bytes(a.objOff, a.objLen)
			ct2, err2 := fullNext.src.bytes(b.objOff, b.objLen)
			if err1 != nil || err2 != nil || string(ct1) != string(ct2) {
				t.Fatalf("nested ciphertext differs: %v, %v", err1, err2)
			}
		}
	})
}

func checkKind(t *testing.T, err error) {
	t.Helper()
	switch errorKind(err) {
	case "ok", "empty", "corrupted", "too large", "too many":
	default:
		t.Fatalf("unexpected error: %v", err)
	}
}
