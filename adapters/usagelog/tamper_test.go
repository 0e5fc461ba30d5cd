package usagelog

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"slices"
	"testing"
)

// TestLayerRefUnderTampering checks what each part of a LayerRef follows: the identity only
// the wrapped key, the legacy identity the IV and the wrapped key, the digest also the first
// 32 bytes of the EncryptedObject and nothing after them.
func TestLayerRefUnderTampering(t *testing.T) {
	priv := testKey(t, 1)
	versions := buildLog(t, &priv.PublicKey, randomEntries(newTestRand(3), 3))
	raw := versions[2]
	ref, err := LayerRefOf(raw)
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := readOuter(&window{src: plainSource(raw)}, 0, len(raw))
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) LayerRef {
		b := slices.Clone(raw)
		b[i] ^= 0x01
		r, err := LayerRefOf(b)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := flip(3); r.ID != ref.ID || r.Legacy == ref.Legacy || r.Digest == ref.Digest {
		t.Errorf("IV flip: %v", r)
	}
	if r := flip(hdr.objOff + headDigestBytes - 1); r.ID != ref.ID || r.Legacy != ref.Legacy || r.Digest == ref.Digest {
		t.Errorf("flip in the ciphertext head: %v", r)
	}
	if r := flip(hdr.objOff + headDigestBytes); r != ref {
		t.Errorf("flip past the ciphertext head: %v, want %v", r, ref)
	}
	if r := flip(hdr.objOff - 1 - 16); r.ID == ref.ID {
		t.Error("a flip in the wrapped key kept the identity")
	}
}

// TestDecodeLogReportsTheStopLayer: DecodeLog returns the known layer the walk stopped at, its
// depth from the outside, and the log's SHA-256.
func TestDecodeLogReportsTheStopLayer(t *testing.T) {
	priv := testKey(t, 1)
	ring := testRing(t, priv)
	versions := buildLog(t, &priv.PublicKey, randomEntries(newTestRand(4), 5))
	d := &Decoder{Keys: ring}
	text := base64.StdEncoding.EncodeToString(versions[4])
	for stopAt := 0; stopAt <= 5; stopAt++ {
		var want *LayerRef
		known := map[LayerID]bool{}
		if stopAt > 0 {
			r, err := LayerRefOf(versions[stopAt-1])
			if err != nil {
				t.Fatal(err)
			}
			want, known[r.ID] = &r, true
		}
		l, err := d.DecodeLog(context.Background(), text, OldestFirst, func(r LayerRef) bool { return known[r.ID] })
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Entries) != 5-stopAt || l.FileDigest != sha256.Sum256(versions[4]) {
			t.Fatalf("stop at %d: %d entries, digest %x", stopAt, len(l.Entries), l.FileDigest)
		}
		switch {
		case want == nil && l.Stop != nil:
			t.Fatalf("nothing known, stopped at %v", l.Stop)
		case want != nil && (l.Stop == nil || *l.Stop != *want || l.StopDepth != 5-stopAt+1):
			t.Fatalf("stop at %d: %v depth %d, want %v depth %d", stopAt, l.Stop, l.StopDepth, want, 5-stopAt+1)
		}
	}
}
