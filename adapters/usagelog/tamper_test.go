package usagelog

import (
	"context"
	"crypto/rand"
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

// TestOriginalsRecoverAModifiedIV: for a layer whose IV was modified, Originals given the
// entry the layer was written with returns its identities and digest under the original IV,
// for increments and decrements in the clean shape and the reference writer's; given another
// entry it returns none of them. Layers re-encrypted, or with their first ciphertext block
// modified, are not recovered.
func TestOriginalsRecoverAModifiedIV(t *testing.T) {
	priv := testKey(t, 1)
	ring := testRing(t, priv)
	d := &Decoder{Keys: ring}
	const ts = 1767225600
	cases := []struct {
		name string
		raw  RawEntry
	}{
		{"increment", RawEntry{Increment: 50, DataObjectID: 7, Timestamp: ts}},
		{"large increment", RawEntry{Increment: 1 << 30, DataObjectID: 1 << 40, Timestamp: ts}},
		{"decrement", RawEntry{Increment: -3, DataObjectID: 7, Timestamp: ts}},
		{"decrement by id", RawEntry{Increment: 3, DataObjectID: -7, Timestamp: ts}},
		{"reference writer's increment", RawEntry{Increment: 9, DataObjectID: 9, Timestamp: ts}},
		{"reference writer's decrement", RawEntry{Increment: -9, DataObjectID: -9, Timestamp: ts}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			inner, err := Wrap(nil, &priv.PublicKey, RawEntry{Increment: 1, DataObjectID: 1, Timestamp: ts - 60}, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := Wrap(inner, &priv.PublicKey, c.raw, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			original, err := LayerRefOf(raw)
			if err != nil {
				t.Fatal(err)
			}
			innerRef, err := LayerRefOf(inner)
			if err != nil {
				t.Fatal(err)
			}
			known := func(r LayerRef) bool { return r.ID == innerRef.ID }
			decodeModified := func(modified []byte) *Log {
				l, err := d.DecodeLog(context.Background(), base64.StdEncoding.EncodeToString(modified), OldestFirst, known)
				if err != nil {
					t.Fatalf("decode: %v", err)
				}
				if len(l.Entries) != 1 {
					t.Fatalf("%d new entries", len(l.Entries))
				}
				return l
			}
			recorded := Entry{ObjectID: abs(c.raw.DataObjectID), Decrement: c.raw.Increment < 0 || c.raw.DataObjectID < 0,
				Amount: abs(int64(c.raw.Increment)), Timestamp: ts}
			recovers := func(l *Log, e Entry) bool {
				for _, r := range l.Originals(e.ObjectID, e.Decrement, e.Amount, e.Timestamp) {
					if r == original {
						return true
					}
				}
				return false
			}
			// Modify a bit of the IV over the low byte of the DataObjectId and, when it lies
			// in the first block, of the timestamp (a uint32 here).
			idEnd := 2 + msgpackIntLen(int64(c.raw.Increment)) + msgpackIntLen(c.raw.DataObjectID)
			flips := []int{idEnd - 1}
			if idEnd+4 < 16 {
				flips = append(flips, idEnd+4)
			}
			for _, at := range flips {
				modified := slices.Clone(raw)
				modified[3+at] ^= 0x04
				l := decodeModified(modified)
				if e := l.Entries[0]; e.Timestamp == ts && e.ObjectID == recorded.ObjectID {
					t.Fatalf("flip at %d changed nothing", at)
				}
				if !recovers(l, recorded) {
					t.Fatalf("flip at %d: the original layer is not recovered from its recorded entry", at)
				}
				other := recorded
				other.Amount++
				if recovers(l, other) {
					t.Fatal("recovered from an entry the layer was not written with")
				}
			}
			// Unmodified: its own entry gives its own identities.
			if !recovers(decodeModified(raw), recorded) {
				t.Fatal("the unmodified layer is not its own original")
			}
			// The first ciphertext block modified as well: nothing to recover.
			hdr, err := readOuter(&window{src: plainSource(raw)}, 0, len(raw))
			if err != nil {
				t.Fatal(err)
			}
			modified := slices.Clone(raw)
			modified[3+idEnd-1] ^= 0x04
			modified[hdr.objOff+3] ^= 0x01 // garbles block 0 (so the entry may not decode)
			if l, err := d.DecodeLog(context.Background(), base64.StdEncoding.EncodeToString(modified), OldestFirst, known); err == nil && len(l.Entries) == 1 && recovers(l, recorded) {
				t.Fatal("recovered a layer whose first ciphertext block was modified")
			}
		})
	}
}

// msgpackIntLen is the length of the smallest MessagePack encoding of n.
func msgpackIntLen(n int64) int {
	switch {
	case n >= -32 && n <= 127:
		return 1
	case n >= -128 && n <= 255:
		return 2
	case n >= -32768 && n <= 65535:
		return 3
	case n >= -1<<31 && n <= 1<<32-1:
		return 5
	}
	return 9
}

// TestWhatTheLayerDigestsDetect shows what the digests Tally records of each applied layer
// can and cannot tell about a known layer presented again (docs/uploads.md, "What the format
// can and cannot prove"). The known layer S is the outermost of version 2 of a log; it is
// presented (a) under a new layer 3, where the walk stops at it without opening it, so only
// its digest (IV, wrapped key, first 32 ciphertext bytes) and its length are compared, and
// (b) alone, where the whole log's SHA-256 is compared too.
func TestWhatTheLayerDigestsDetect(t *testing.T) {
	priv := testKey(t, 1)
	ring := testRing(t, priv)
	d := &Decoder{Keys: ring}
	versions := buildLog(t, &priv.PublicKey, []RawEntry{
		{Increment: 10, DataObjectID: 1, Timestamp: 1_700_000_000},
		{Increment: 20, DataObjectID: 1, Timestamp: 1_700_000_060},
	})
	s := versions[1]
	applied, err := LayerRefOf(s)
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := readOuter(&window{src: plainSource(s)}, 0, len(s))
	if err != nil {
		t.Fatal(err)
	}
	obj := s[hdr.objOff:]
	known := func(r LayerRef) bool { return r.ID == applied.ID }
	decode := func(raw []byte) (*Log, error) {
		return d.DecodeLog(context.Background(), base64.StdEncoding.EncodeToString(raw), OldestFirst, known)
	}
	// seen returns S as a walk stopping at it sees it, under a new layer and alone.
	seen := func(modified []byte) (under LayerRef, alone *Log) {
		t.Helper()
		newer, err := Wrap(modified, &priv.PublicKey, RawEntry{Increment: 5, DataObjectID: 1, Timestamp: 1_700_000_120}, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		l, err := decode(newer)
		if err != nil || l.Stop == nil || len(l.Entries) != 1 {
			t.Fatalf("under a new layer: %v, %+v", err, l)
		}
		alone, err = decode(modified)
		if err != nil || alone.Stop == nil {
			t.Fatalf("alone: %v", err)
		}
		return *l.Stop, alone
	}
	flip := func(at int) []byte {
		b := slices.Clone(s)
		b[at] ^= 0x01
		return b
	}
	resized := func(newObj []byte) []byte { return opaqueLayer(hdr.iv, hdr.encryptedKey, newObj) }
	wholeDigest := sha256.Sum256(s)
	cases := []struct {
		name                     string
		modified                 []byte
		digest, length, wholeLog bool // what tells the modified S from the applied one
	}{
		{"untouched", s, false, false, false},
		{"IV byte", flip(3 + 5), true, false, true},
		{"ciphertext byte 0 (the entry's first block)", flip(hdr.objOff), true, false, true},
		{"ciphertext byte 31 (the entry's second block)", flip(hdr.objOff + headDigestBytes - 1), true, false, true},
		{"ciphertext byte 32 (the layer inside S)", flip(hdr.objOff + headDigestBytes), false, false, true},
		{"last ciphertext byte (S's zero padding, or the end of the layer inside)", flip(len(s) - 1), false, false, true},
		{"truncated by one block", resized(obj[:len(obj)-16]), false, true, true},
		{"extended by one block", resized(append(slices.Clone(obj), make([]byte, 16)...)), false, true, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			under, alone := seen(c.modified)
			if got := under.Digest != applied.Digest; got != c.digest {
				t.Errorf("digest differs: %v, want %v", got, c.digest)
			}
			if got := under.Length != applied.Length; got != c.length {
				t.Errorf("length differs: %v (%d vs %d), want %v", got, under.Length, applied.Length, c.length)
			}
			if *alone.Stop != under || alone.StopDepth != 1 {
				t.Errorf("alone S is seen as %+v at depth %d, under a layer as %+v", alone.Stop, alone.StopDepth, under)
			}
			if got := alone.FileDigest != wholeDigest; got != c.wholeLog {
				t.Errorf("whole-log digest differs: %v, want %v", got, c.wholeLog)
			}
		})
	}
	// A new layer decodes from its own bytes: any change to a byte its entry decodes from
	// changes its digest (and what it decodes to, or it fails to decode).
	untouched, err := Wrap(s, &priv.PublicKey, RawEntry{Increment: 5, DataObjectID: 1, Timestamp: 1_700_000_120}, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	before, err := decode(untouched)
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []int{3 + 2, 3 + 15} {
		modified := slices.Clone(untouched)
		modified[at] ^= 0x01
		after, err := decode(modified)
		if err == nil && (after.Entries[0].Digest == before.Entries[0].Digest || after.Entries[0] == before.Entries[0]) {
			t.Errorf("IV byte %d of a new layer: digest or entry unchanged", at-3)
		}
	}
}
