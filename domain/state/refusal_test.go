package state

import (
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
)

// TestRefusalLifecycleFolds: a refused version, its counted repeats, a newer refused version
// replacing it, an operator's decision, and the commit that makes the version's newest layer
// known (with one skipped layer) closing both; a snapshot round trip keeps it all.
func TestRefusalLifecycleFolds(t *testing.T) {
	owner := domain.Owner{Type: domain.OwnerKey, ID: 3}
	stream := domain.UploadStream(owner)
	h := newHistory(t)
	h.add(domain.DataObjectStream(1), domain.EventDataObjectAdded, domain.DataObjectAdded{ObjectID: 1, Owner: owner, Name: "y"})
	v5, v8 := uuid.New(), uuid.New()
	h.add(stream, domain.EventUploadRefused, domain.UploadRefused{RefusalID: v5, Reason: domain.RefusalInvalidObject, NewestLayer: "l4"})
	h.add(stream, domain.EventUploadRefusalRepeated, domain.UploadRefusalRepeated{RefusalID: v5, Repeats: 3})
	h.add(stream, domain.EventUploadRefusalRepeated, domain.UploadRefusalRepeated{RefusalID: v5, Repeats: 2, At: time.Unix(100, 0).UTC(),
		Newest: &domain.UploadRefused{NewestLayer: "l5", NewEntries: 5, Offending: &domain.RefusedEntry{Layer: "l1", ObjectID: 9}}})
	st := h.fold()
	r, ok := st.OpenRefusal(owner)
	if !ok || r.RefusalID != v5 || r.Repeats != 5 || !r.LastAt.Equal(time.Unix(100, 0)) || r.NewestLayer != "l5" || r.NewEntries != 5 || r.Offending.ObjectID != 9 {
		t.Fatalf("open refusal %+v, %v", r, ok)
	}
	if st.Upload(owner).Revision != 2 {
		t.Fatalf("upload stream revision %d, want 2", st.Upload(owner).Revision)
	}
	h.add(stream, domain.EventUploadRefused, domain.UploadRefused{RefusalID: v8, Reason: domain.RefusalInvalidObject, NewestLayer: "l7"})
	h.add(stream, domain.EventUploadRefusalRepeated, domain.UploadRefusalRepeated{RefusalID: v5, Repeats: 9}) // of the superseded one
	decision := uuid.New()
	h.add(stream, domain.EventUploadResolutionDecided, domain.UploadResolutionDecided{ResolutionID: decision, RefusalID: v8, NewestLayer: "l7", Mode: domain.ResolveSkipEntries, Reason: "x retired"})
	st = h.fold()
	if r, _ := st.OpenRefusal(owner); r.RefusalID != v8 || r.Repeats != 0 {
		t.Fatalf("open refusal %+v, want v8 with no repeats", r)
	}
	if d, ok := st.OpenResolution(owner); !ok || d.ResolutionID != decision {
		t.Fatalf("open resolution %+v, %v", d, ok)
	}
	up := uuid.New()
	h.add(stream, domain.EventUploadPrepared, domain.UploadPrepared{
		UploadID: up, Owner: owner, Layers: []string{"l6", "l7"}, Timestamps: []int64{6, 7}, BaseDepth: 5,
		Changes: []domain.PlannedStep{{ObjectID: 1, FromRevision: 0, Events: 1}}, Resolution: &decision,
		Skipped: []domain.SkippedEntry{{Index: 0, ObjectID: 9, Amount: 1, Reason: domain.RefusalInvalidObject}},
	})
	h.add(domain.DataObjectStream(1), domain.EventIncrementApplied, domain.ValueChanged{ObjectID: 1, Amount: 1, After: 1, Upload: &domain.UploadSource{UploadID: up, Layer: "l7"}})
	h.add(stream, domain.EventUploadCommitted, domain.UploadCommitted{UploadID: up})
	st = h.fold()
	if _, ok := st.OpenRefusal(owner); ok {
		t.Fatal("the refusal is still open after its newest layer became known")
	}
	if _, ok := st.OpenResolution(owner); ok {
		t.Fatal("the resolution is still open after its newest layer became known")
	}
	u := layersOf(t, st, owner)
	if u["l6"] != (LayerInfo{Depth: 6, Timestamp: 6, Skipped: domain.RefusalInvalidObject}) || u["l7"] != (LayerInfo{Depth: 7, Timestamp: 7}) {
		t.Fatalf("layers %+v", u)
	}
	if o, _ := st.Object(1); o.IntValue != 1 {
		t.Fatalf("y = %d, want 1", o.IntValue)
	}
	b, err := MarshalState(st)
	if err != nil {
		t.Fatal(err)
	}
	back, err := UnmarshalState(b)
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(st, back); len(d) > 0 {
		t.Fatalf("snapshot round trip: %v", d)
	}
}
