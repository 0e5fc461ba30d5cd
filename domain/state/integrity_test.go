package state

import (
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
)

// TestIntegrityFold folds the integrity events: an upload's digests and the re-identification
// of a legacy stop layer, an anomaly (which moves the upload stream's revision, as every event
// of that stream must for the next expected revision), its acknowledgement and a product's
// policy; a snapshot round trip keeps them all.
func TestIntegrityFold(t *testing.T) {
	owner := domain.Owner{Type: domain.OwnerKey, ID: 3}
	stream := domain.UploadStream(owner)
	h := newHistory(t)
	h.add(domain.ProductStream(1), domain.EventProductCreated, domain.ProductCreated{ProductID: 1, Name: "p"})
	h.add(domain.KeyStream(3), domain.EventKeyCreated, domain.KeyCreated{KeyID: 3, ProductID: 1, Key: "K"})
	old, up := uuid.New(), uuid.New()
	// Written before identity version 2: no digests.
	h.add(stream, domain.EventUploadPrepared, domain.UploadPrepared{UploadID: old, Owner: owner, Layers: []string{"legacy1"}, Timestamps: []int64{5}})
	h.add(stream, domain.EventUploadCommitted, domain.UploadCommitted{UploadID: old})
	h.add(stream, domain.EventUploadPrepared, domain.UploadPrepared{
		UploadID: up, Owner: owner, Layers: []string{"new2", "new3"}, Timestamps: []int64{6, 7}, BaseDepth: 1,
		Digests: []string{"d2", "d3"}, FileDigest: "f3", Base: &domain.LayerAlias{Legacy: "legacy1", Layer: "new1", Digest: "d1"},
	})
	h.add(stream, domain.EventUploadCommitted, domain.UploadCommitted{UploadID: up})
	st := h.fold()
	u := layersOf(t, st, owner)
	want := map[string]LayerInfo{
		"legacy1": {Depth: 1, Timestamp: 5},
		"new1":    {Depth: 1, Timestamp: 5, Digest: "d1"},
		"new2":    {Depth: 2, Timestamp: 6, Digest: "d2"},
		"new3":    {Depth: 3, Timestamp: 7, Digest: "d3", FileDigest: "f3"},
	}
	for l, info := range want {
		if u[l] != info {
			t.Errorf("layer %s: %+v, want %+v", l, u[l], info)
		}
	}
	if !st.HasLayerAtDepth(owner, 3) || st.HasLayerAtDepth(owner, 4) {
		t.Error("depth index wrong")
	}
	if st.IntegrityPolicy(1) != domain.IntegrityApply {
		t.Errorf("default policy %q", st.IntegrityPolicy(1))
	}

	a := domain.UploadIntegrityAnomaly{AnomalyID: uuid.New(), Owner: owner, Layer: "new3", Depth: 3,
		Differs: []string{domain.DiffersEntryBytes}, AppliedDigest: "d3", SeenDigest: "x3", Policy: domain.IntegrityRefuse}
	ev := h.add(stream, domain.EventUploadIntegrityAnomaly, a)
	h.add(domain.ProductStream(1), domain.EventProductIntegrityPolicySet, domain.ProductIntegrityPolicySet{ProductID: 1, Policy: domain.IntegrityRefuse})
	st = h.fold()
	if got := st.Upload(owner).Revision; got != ev.Revision {
		t.Fatalf("upload stream revision %d after the anomaly, want %d", got, ev.Revision)
	}
	// The same layer seen with the same entry bytes (under newer layers: no whole-bytes digest)
	// is the same anomaly; other bytes are another.
	if _, ok := st.SameAnomaly(owner, domain.UploadIntegrityAnomaly{Layer: "new3", SeenDigest: "x3", Differs: []string{domain.DiffersEntryBytes}}); !ok {
		t.Error("same anomaly not found")
	}
	if _, ok := st.SameAnomaly(owner, domain.UploadIntegrityAnomaly{Layer: "new3", SeenDigest: "y3", Differs: []string{domain.DiffersEntryBytes}}); ok {
		t.Error("another version of the layer found as the same anomaly")
	}
	if st.IntegrityPolicy(1) != domain.IntegrityRefuse {
		t.Errorf("policy %q after ProductIntegrityPolicySet", st.IntegrityPolicy(1))
	}

	h.add(stream, domain.EventUploadIntegrityAcknowledged, domain.UploadIntegrityAcknowledged{AnomalyID: a.AnomalyID, Reason: "ok"})
	st = h.fold()
	got, ok := st.AnomalyByID(a.AnomalyID)
	if !ok || !got.Acknowledged || got.AckReason != "ok" {
		t.Fatalf("acknowledged anomaly %+v %v", got, ok)
	}
	b, err := MarshalState(st)
	if err != nil {
		t.Fatal(err)
	}
	back, err := UnmarshalState(b)
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(st, back); len(d) > 0 || !back.HasLayerAtDepth(owner, 3) {
		t.Fatalf("snapshot round trip: %v", d)
	}

	// An acknowledgement of an anomaly the stream does not hold is reported.
	bad := NewState()
	for _, e := range h.evs[:len(h.evs)-1] {
		bad.ApplyOrSkip(e)
	}
	other := h.add(stream, domain.EventUploadIntegrityAcknowledged, domain.UploadIntegrityAcknowledged{AnomalyID: uuid.New(), Reason: "?"})
	if err := bad.Apply(other); err == nil {
		t.Fatal("acknowledgement of an unknown anomaly folded without error")
	}
}
