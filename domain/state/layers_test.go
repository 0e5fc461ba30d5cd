package state

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
)

// layersOf returns every applied layer of an owner.
func layersOf(t *testing.T, st *State, owner domain.Owner) map[string]LayerInfo {
	t.Helper()
	out := map[string]LayerInfo{}
	if err := st.Layers(owner.String(), func(id string, info LayerInfo) bool {
		out[id] = info
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// hexID is a layer identity or digest in the form the codec writes: 64 lowercase hex digits.
func hexID(seed byte) string { return strings.Repeat(fmt.Sprintf("%02x", seed), 32) }

// TestLayerSetKeepsEveryInfoExactly puts layers in every form the compact layer set stores
// differently (identities and digests as 64 lowercase hex digits, in upper case, of other
// lengths; file digests and skip reasons) and reads each back whole by every way a State
// answers: Layer, KnownLayer, Layers, LayersAt, HasLayerAtDepth, Changes and a FreezeLayers
// copy; a replaced record keeps nothing of the one it replaced.
func TestLayerSetKeepsEveryInfoExactly(t *testing.T) {
	owner := domain.Owner{Type: domain.OwnerKey, ID: 9}
	other := domain.Owner{Type: domain.OwnerKey, ID: 10}
	want := map[string]LayerInfo{
		hexID(1):                      {Depth: 1, Timestamp: 10},
		hexID(2):                      {Depth: 2, Timestamp: 20, Digest: hexID(0xd2)},
		hexID(3):                      {Depth: 3, Timestamp: 30, Digest: hexID(0xd3), FileDigest: hexID(0xf3), Length: 77},
		hexID(4):                      {Depth: 3, Skipped: "entry refused", Digest: strings.ToUpper(hexID(0xd4))},
		hexID(5):                      {Depth: 5, FileDigest: "short", Digest: hexID(0)},
		strings.ToUpper(hexID(6)):     {Depth: 6, Digest: hexID(0xd6)},
		"legacy":                      {Depth: 7, Timestamp: -1},
		hexID(8)[:63] + "g":           {Depth: 8},
		"":                            {Depth: 9, Length: 1},
		hexID(0xab) + hexID(0xab)[:2]: {Depth: 10},
	}
	st := NewState()
	st.Uploads[owner.String()] = &Upload{Owner: owner}
	st.Uploads[other.String()] = &Upload{Owner: other}
	for id, info := range want {
		st.layers.put(owner.String(), id, info)
	}
	st.layers.put(other.String(), hexID(1), LayerInfo{Depth: 99})
	// Replaced: the file digest and skip reason of the first record must not show through.
	st.layers.put(owner.String(), hexID(11), LayerInfo{Depth: 11, FileDigest: hexID(0xf1), Skipped: "x"})
	st.layers.put(owner.String(), hexID(11), LayerInfo{Depth: 11, Timestamp: 1})
	want[hexID(11)] = LayerInfo{Depth: 11, Timestamp: 1}

	if got := layersOf(t, st, owner); !maps.Equal(got, want) {
		t.Fatalf("Layers:\n got %v\nwant %v", got, want)
	}
	for id, info := range want {
		if raw, ok := ParseHash(id); ok {
			if got, ok := st.Layer(owner, raw); !ok || got != info {
				t.Errorf("Layer(%s) = %+v %v, want %+v", id, got, ok, info)
			}
			if got, byID, ok := st.KnownLayer(owner, [32]byte{}, raw); !ok || byID || got != info {
				t.Errorf("KnownLayer by legacy %s = %+v %v %v", id, got, byID, ok)
			}
		}
		if got, ok := st.layerInfo(owner, id); !ok || got != info {
			t.Errorf("layerInfo(%q) = %+v %v, want %+v", id, got, ok, info)
		}
		if !st.HasLayerAtDepth(owner, info.Depth) {
			t.Errorf("no layer at depth %d", info.Depth)
		}
	}
	if raw, _ := ParseHash(hexID(1)); true {
		if got, ok := st.Layer(other, raw); !ok || got.Depth != 99 {
			t.Errorf("other owner's layer %+v %v", got, ok)
		}
	}
	if _, ok := st.layerInfo(owner, hexID(12)); ok {
		t.Error("unknown layer found")
	}
	if _, ok := st.layerInfo(owner, hexID(0xe6)); ok {
		t.Error("an identity in upper case found as its lower-case layer")
	}
	if st.HasLayerAtDepth(owner, 4) || st.HasLayerAtDepth(owner, 99) {
		t.Error("a depth no layer has")
	}
	at3 := map[string]LayerInfo{}
	for _, l := range st.LayersAt(owner, 3) {
		at3[l.ID] = l.LayerInfo
	}
	if !maps.Equal(at3, map[string]LayerInfo{hexID(3): want[hexID(3)], hexID(4): want[hexID(4)]}) {
		t.Errorf("LayersAt(3) = %v", at3)
	}
	if n := st.LayersInMemory(); n != len(want)+1 {
		t.Errorf("LayersInMemory %d, want %d", n, len(want)+1)
	}
	c, err := st.Changes(false)
	if err != nil {
		t.Fatal(err)
	}
	fromChanges := map[string]LayerInfo{}
	for _, l := range c.Layers {
		if l.Owner == owner.String() {
			fromChanges[l.ID] = l.Info
		}
	}
	if !maps.Equal(fromChanges, want) || len(c.Layers) != len(want)+1 {
		t.Errorf("Changes: %v", fromChanges)
	}
	fromAll := map[string]LayerInfo{}
	var order []string
	if err := st.AllLayers(func(l LayerRecord) error {
		if l.Owner == owner.String() {
			fromAll[l.ID] = l.Info
			order = append(order, l.ID)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(fromAll, want) || !slices.IsSorted(order) {
		t.Errorf("AllLayers: %v in order %v", fromAll, order)
	}
	frozen := st.FreezeLayers(nil)
	st.layers.put(owner.String(), hexID(13), LayerInfo{Depth: 13})
	if d := DiffLayers(frozen, st); len(d) != 1 || !strings.Contains(d[0], "applied layers") {
		t.Errorf("a frozen copy moved with the state: %v", d)
	}
}

// TestLayerSetKeepsIdentitiesThatShareTheirFirstBytes: the layer set indexes a layer by the
// first eight bytes of its identity; identities that share them (one differing only in its
// last byte, others after the eighth) are each kept, found, replaced and listed on their own,
// in any order of arrival, and a FreezeLayers copy does not move with the state.
func TestLayerSetKeepsIdentitiesThatShareTheirFirstBytes(t *testing.T) {
	owner := domain.Owner{Type: domain.OwnerKey, ID: 3}
	base := hexID(0x5a)
	ids := []string{base, base[:62] + "5b", base[:16] + strings.Repeat("00", 24), base[:16] + "01" + base[18:], hexID(0x5b)}
	st := NewState()
	st.Uploads[owner.String()] = &Upload{Owner: owner}
	want := map[string]LayerInfo{}
	for i, id := range ids {
		info := LayerInfo{Depth: int64(i + 1), Timestamp: int64(100 + i), Digest: hexID(byte(i))}
		st.layers.put(owner.String(), id, info)
		want[id] = info
	}
	// Replace the second and the first: each keeps its own record.
	for _, i := range []int{1, 0} {
		info := LayerInfo{Depth: int64(20 + i), Length: int64(7 + i)}
		st.layers.put(owner.String(), ids[i], info)
		want[ids[i]] = info
	}
	if got := layersOf(t, st, owner); !maps.Equal(got, want) {
		t.Fatalf("Layers:\n got %v\nwant %v", got, want)
	}
	for id, info := range want {
		raw, _ := ParseHash(id)
		if got, ok := st.Layer(owner, raw); !ok || got != info {
			t.Errorf("Layer(%s) = %+v %v, want %+v", id, got, ok, info)
		}
		if got, ok := st.layerInfo(owner, id); !ok || got != info {
			t.Errorf("layerInfo(%s) = %+v %v, want %+v", id, got, ok, info)
		}
	}
	for _, unknown := range []string{base[:62] + "5c", base[:16] + strings.Repeat("11", 24)} {
		raw, _ := ParseHash(unknown)
		if got, ok := st.Layer(owner, raw); ok {
			t.Errorf("unknown layer %s found: %+v", unknown, got)
		}
	}
	if n := st.LayersInMemory(); n != len(ids) {
		t.Errorf("LayersInMemory %d, want %d", n, len(ids))
	}
	frozen := st.FreezeLayers(nil)
	st.layers.put(owner.String(), base[:62]+"5c", LayerInfo{Depth: 30})
	st.layers.put(owner.String(), ids[2], LayerInfo{Depth: 31})
	if d := strings.Join(DiffLayers(frozen, st), "\n"); !strings.Contains(d, "5 vs 6 applied layers") || !strings.Contains(d, ids[2]+" differs") {
		t.Errorf("a frozen copy moved with the state: %v", d)
	}
	want[base[:62]+"5c"], want[ids[2]] = LayerInfo{Depth: 30}, LayerInfo{Depth: 31}
	if got := layersOf(t, st, owner); !maps.Equal(got, want) {
		t.Fatalf("Layers after more puts:\n got %v\nwant %v", got, want)
	}
}

// TestLayerSetOfManyLayers: an owner's layers past several blocks of the layer set (entryBlock)
// are each found, replaced and listed once, and a FreezeLayers copy keeps them as they were.
func TestLayerSetOfManyLayers(t *testing.T) {
	owner := domain.Owner{Type: domain.OwnerKey, ID: 4}
	st := NewState()
	st.Uploads[owner.String()] = &Upload{Owner: owner}
	idOf := func(i int) string { return fmt.Sprintf("%064x", i*7919+1) }
	const n = 3*entryBlock + 17
	want := map[string]LayerInfo{}
	for i := range n {
		want[idOf(i)] = LayerInfo{Depth: int64(i + 1), Timestamp: int64(i)}
		st.layers.put(owner.String(), idOf(i), want[idOf(i)])
	}
	frozen := st.FreezeLayers(nil)
	for _, i := range []int{0, entryBlock - 1, entryBlock, 2*entryBlock + 5, n - 1} {
		want[idOf(i)] = LayerInfo{Depth: int64(i + 1), Length: 5}
		st.layers.put(owner.String(), idOf(i), want[idOf(i)])
	}
	if got := layersOf(t, st, owner); !maps.Equal(got, want) {
		t.Fatalf("Layers: %d layers, want %d (or different records)", len(got), len(want))
	}
	if n := st.LayersInMemory(); n != len(want) {
		t.Errorf("LayersInMemory %d, want %d", n, len(want))
	}
	for id, info := range want {
		raw, _ := ParseHash(id)
		if got, ok := st.Layer(owner, raw); !ok || got != info {
			t.Fatalf("Layer(%s) = %+v %v, want %+v", id, got, ok, info)
		}
	}
	if d := DiffLayers(frozen, st); len(d) != 5 {
		t.Errorf("the frozen copy differs from the state in %d layers, want the 5 replaced: %v", len(d), d)
	}
}

// TestBinaryAndJSONUploadsFoldAlike folds the same uploads once with their bodies as the
// ledger writes them (binary UploadPrepared: the layers are indexed from the raw hashes) and
// once as JSON (from the hex strings), and finds the same layers and values.
func TestBinaryAndJSONUploadsFoldAlike(t *testing.T) {
	owner := domain.Owner{Type: domain.OwnerKey, ID: 4}
	first, second := uuid.New(), uuid.New()
	bodies := []struct {
		stream, typ string
		body        any
	}{
		{domain.DataObjectStream(1), domain.EventDataObjectAdded, domain.DataObjectAdded{ObjectID: 1, Owner: owner, Name: "a"}},
		{domain.UploadStream(owner), domain.EventUploadPrepared, domain.UploadPrepared{
			UploadID: first, Owner: owner, Layers: []string{hexID(1), hexID(2), hexID(3)}, Timestamps: []int64{100, 200, 300},
			Changes: []domain.PlannedStep{{ObjectID: 1, Events: 2}}, Digests: []string{hexID(0xd1), hexID(0xd2), hexID(0xd3)},
			FileDigest: hexID(0xf3), Length: 512,
			Skipped: []domain.SkippedEntry{{Index: 1, ObjectID: 1, Amount: 3, Reason: "refused", Message: "m"}},
		}},
		{domain.DataObjectStream(1), domain.EventIncrementApplied, domain.ValueChanged{ObjectID: 1, Amount: 2, After: 2,
			Upload: &domain.UploadSource{UploadID: first, Layer: hexID(1), Entry: 1}}},
		{domain.DataObjectStream(1), domain.EventIncrementApplied, domain.ValueChanged{ObjectID: 1, Amount: 5, Before: 2, After: 7,
			Upload: &domain.UploadSource{UploadID: first, Layer: hexID(3), Entry: 3}}},
		{domain.UploadStream(owner), domain.EventUploadCommitted, domain.UploadCommitted{UploadID: first}},
		// Before identity version 2: no digests.
		{domain.UploadStream(owner), domain.EventUploadPrepared, domain.UploadPrepared{
			UploadID: second, Owner: owner, Layers: []string{hexID(4)}, Timestamps: []int64{400}, BaseDepth: 3,
			Changes: []domain.PlannedStep{{ObjectID: 1, FromRevision: 2, Events: 1}},
		}},
		{domain.DataObjectStream(1), domain.EventDecrementApplied, domain.ValueChanged{ObjectID: 1, Amount: 1, Before: 7, After: 6,
			Upload: &domain.UploadSource{UploadID: second, Layer: hexID(4), Entry: 1}}},
		{domain.UploadStream(owner), domain.EventUploadCommitted, domain.UploadCommitted{UploadID: second}},
	}
	fold := func(encode func(typ string, body any) ([]byte, error)) *State {
		h := newHistory(t)
		for _, b := range bodies {
			h.add(b.stream, b.typ, b.body)
			data, err := encode(b.typ, b.body)
			if err != nil {
				t.Fatal(err)
			}
			h.evs[len(h.evs)-1].Data = data
		}
		return h.fold()
	}
	binary := fold(domain.EncodeEvent)
	plain := fold(func(_ string, body any) ([]byte, error) { return json.Marshal(body) })
	if prepared := binary.Uploads[owner.String()]; prepared.Prepared != nil {
		t.Fatal("upload still prepared after its commit")
	}
	if d := Diff(binary, plain); len(d) != 0 {
		t.Fatalf("binary and JSON bodies fold differently: %v", d)
	}
	got, want := layersOf(t, binary, owner), layersOf(t, plain, owner)
	if !maps.Equal(got, want) || len(got) != 4 {
		t.Fatalf("layers from binary bodies %v, from JSON %v", got, want)
	}
	if got[hexID(3)] != (LayerInfo{Depth: 3, Timestamp: 300, Digest: hexID(0xd3), FileDigest: hexID(0xf3), Length: 512}) ||
		got[hexID(2)].Skipped != "refused" || got[hexID(4)] != (LayerInfo{Depth: 4, Timestamp: 400}) {
		t.Fatalf("layers %v", got)
	}
	if o, _ := binary.Object(1); o.IntValue != 6 {
		t.Fatalf("value %d, want 6", o.IntValue)
	}
	if !domain.IsBinary(mustEncode(t, domain.EventUploadPrepared, bodies[1].body)) {
		t.Fatal("the upload is not in the binary form: the test does not test the raw path")
	}
}

func mustEncode(t *testing.T, typ string, body any) []byte {
	t.Helper()
	b, err := domain.EncodeEvent(typ, body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestChangesHandsLayersOverInKeyOrder: Changes lists the fresh layers of every owner once, in
// (owner, identity) order, what the state database's writer relies on for local b-tree writes.
func TestChangesHandsLayersOverInKeyOrder(t *testing.T) {
	st := NewState()
	want := map[string]bool{}
	for o := range 12 {
		owner := domain.Owner{Type: domain.OwnerKey, ID: int64(o*37%12 + 1)}
		st.Uploads[owner.String()] = &Upload{Owner: owner}
		for i := range 50 {
			id := fmt.Sprintf("%064x", (i*7919+o)%1000)
			if i%10 == 0 {
				id = fmt.Sprintf("legacy-%d", i)
			}
			st.layers.put(owner.String(), id, LayerInfo{Depth: int64(i + 1)})
			want[owner.String()+" "+id] = true
		}
	}
	c, err := st.Changes(false)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, l := range c.Layers {
		got[l.Owner+" "+l.ID] = true
	}
	if len(c.Layers) != len(want) || !maps.Equal(got, want) {
		t.Fatalf("Changes lists %d layers (%d distinct), want %d", len(c.Layers), len(got), len(want))
	}
	if !slices.IsSortedFunc(c.Layers, func(a, b LayerRecord) int {
		if a.Owner != b.Owner {
			return strings.Compare(a.Owner, b.Owner)
		}
		return strings.Compare(a.ID, b.ID)
	}) {
		t.Fatal("Changes lists the layers out of key order")
	}
}
