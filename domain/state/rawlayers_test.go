package state

import (
	"slices"
	"strings"
	"testing"

	"github.com/tallyledger/tally/domain"
)

// TestAppendFreshLayersRawListsWhatChangesLists puts layers in every form the layer set stores
// differently (identities and digests as 64 lowercase hex digits, upper case, other lengths,
// text identities that sort before, between and after the hex ones; file digests, skip
// reasons; a replaced record), for three owners, and checks that AppendFreshLayersRaw lists exactly
// the layers Changes(false) lists, in the same order, each with the same identity and info, and
// that CompareRawLayers agrees with that order.
func TestAppendFreshLayersRawListsWhatChangesLists(t *testing.T) {
	owners := []domain.Owner{{Type: domain.OwnerKey, ID: 9}, {Type: domain.OwnerKey, ID: 10}, {Type: domain.OwnerProduct, ID: 3}}
	st := NewState()
	for _, o := range owners {
		st.Uploads[o.String()] = &Upload{Owner: o}
	}
	owner := owners[0].String()
	for id, info := range map[string]LayerInfo{
		hexID(1):                      {Depth: 1, Timestamp: 10},
		hexID(2):                      {Depth: 2, Timestamp: 20, Digest: hexID(0xd2)},
		hexID(3):                      {Depth: 3, Timestamp: 30, Digest: hexID(0xd3), FileDigest: hexID(0xf3), Length: 77},
		hexID(4):                      {Depth: 3, Skipped: "entry refused", Digest: strings.ToUpper(hexID(0xd4))},
		hexID(5):                      {Depth: 5, FileDigest: "short", Digest: hexID(0)},
		hexID(0xfe):                   {Depth: 5, FileDigest: hexID(0xfe), Skipped: "x"},
		strings.ToUpper(hexID(6)):     {Depth: 6, Digest: hexID(0xd6), FileDigest: hexID(0xf6)},
		"legacy":                      {Depth: 7, Timestamp: -1, Digest: "not hex"},
		"0":                           {Depth: 7},
		"3z":                          {Depth: 7},
		hexID(8)[:63] + "g":           {Depth: 8},
		"":                            {Depth: 9, Length: 1},
		hexID(0xab) + hexID(0xab)[:2]: {Depth: 10},
	} {
		st.layers.put(owner, id, info)
	}
	st.layers.put(owner, hexID(11), LayerInfo{Depth: 11, FileDigest: hexID(0xf1), Skipped: "x", Digest: "odd"})
	st.layers.put(owner, hexID(11), LayerInfo{Depth: 11, Timestamp: 1})
	for i := range 3000 { // more than a block of entries, in no order
		id := hexID(byte(i * 7))
		id = id[:56] + strings.Repeat("0", 4) + string("0123456789abcdef"[i%16]) + string("0123456789abcdef"[(i/16)%16]) + string("0123456789abcdef"[(i/256)%16]) + "0"
		st.layers.put(owners[1].String(), id, LayerInfo{Depth: int64(i), Digest: hexID(byte(i))})
	}
	st.layers.put(owners[2].String(), "only text", LayerInfo{Depth: 1, FileDigest: hexID(1)})

	want, err := st.Changes(false)
	if err != nil {
		t.Fatal(err)
	}
	got := st.AppendFreshLayersRaw(nil)
	// Into a buffer used before, as a replay does: the same list, nothing of the old one left.
	used := make([]RawLayer, 5000)
	for i := range used {
		used[i] = RawLayer{Owner: "old", TextID: "old", IsText: true, Skipped: "old", DigestRaw: true, Depth: 1}
	}
	if again := st.AppendFreshLayersRaw(used[:0]); !slices.Equal(again, got) {
		t.Fatal("AppendFreshLayersRaw into a used buffer lists other layers")
	}
	if len(got) != len(want.Layers) || len(got) != 3000+14+1 {
		t.Fatalf("FreshLayersRaw lists %d layers, Changes %d", len(got), len(want.Layers))
	}
	for i := range got {
		w := want.Layers[i]
		if got[i].Owner != w.Owner || got[i].IDString() != w.ID || got[i].Info() != w.Info {
			t.Fatalf("layer %d: raw %s %q %+v, Changes %s %q %+v", i, got[i].Owner, got[i].IDString(), got[i].Info(), w.Owner, w.ID, w.Info)
		}
		if _, hex := ParseHash(w.ID); got[i].IsText == hex {
			t.Errorf("layer %q: IsText %v", w.ID, got[i].IsText)
		}
		if i > 0 && CompareRawLayers(&got[i-1], &got[i]) >= 0 {
			t.Errorf("layers %d and %d out of order by CompareRawLayers", i-1, i)
		}
	}
}
