package state

import (
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
)

// TestChangesListOnlyWhatMovedSinceTheCheckpoint: after a checkpoint, Changes holds the records
// the next events touched and the layers they made known, nothing else; Changes(true) holds
// everything.
func TestChangesListOnlyWhatMovedSinceTheCheckpoint(t *testing.T) {
	owner := domain.Owner{Type: domain.OwnerKey, ID: 3}
	h := newHistory(t)
	h.add(domain.ProductStream(1), domain.EventProductCreated, domain.ProductCreated{ProductID: 1, Name: "p"})
	for id := int64(1); id <= 5; id++ {
		h.add(domain.DataObjectStream(id), domain.EventDataObjectAdded, domain.DataObjectAdded{ObjectID: id, Owner: owner, Name: "n"})
	}
	st := NewState()
	st.TrackChanges()
	for _, ev := range h.evs {
		if err := st.Apply(ev); err != nil {
			t.Fatal(err)
		}
	}
	c, err := st.Changes(false)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Products) != 1 || len(c.Objects) != 5 || c.Len() != 6 {
		t.Fatalf("first changes: %d products, %d objects, %d records", len(c.Products), len(c.Objects), c.Len())
	}
	st.Checkpointed(nil)

	// An increment of object 2 and a committed upload on object 4 with two layers.
	h.evs = nil
	h.add(domain.DataObjectStream(2), domain.EventIncrementApplied, domain.ValueChanged{ObjectID: 2, Amount: 1})
	up := uuid.New()
	h.add(domain.UploadStream(owner), domain.EventUploadPrepared, domain.UploadPrepared{
		UploadID: up, Owner: owner, Layers: []string{"l1", "l2"}, Timestamps: []int64{1, 2},
		Changes: []domain.PlannedStep{{ObjectID: 4}},
	})
	h.add(domain.DataObjectStream(4), domain.EventIncrementApplied, domain.ValueChanged{ObjectID: 4, Amount: 3, Upload: &domain.UploadSource{UploadID: up, Layer: "l2"}})
	h.add(domain.UploadStream(owner), domain.EventUploadCommitted, domain.UploadCommitted{UploadID: up})
	for _, ev := range h.evs {
		if err := st.Apply(ev); err != nil {
			t.Fatal(err)
		}
	}
	c, err = st.Changes(false)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[int64]bool{}
	for _, o := range c.Objects {
		ids[o.ID] = true
	}
	if len(c.Objects) != 2 || !ids[2] || !ids[4] || len(c.Uploads) != 1 || len(c.Products) != 0 || len(c.Layers) != 2 || c.Len() != 5 {
		t.Fatalf("changes after the checkpoint: objects %v, %d uploads, %d products, %d layers, %d records", ids, len(c.Uploads), len(c.Products), len(c.Layers), c.Len())
	}
	if c.Layers[0].ID != "l1" || c.Layers[1].Info != (LayerInfo{Depth: 2, Timestamp: 2}) {
		t.Fatalf("layers %+v", c.Layers)
	}
	if v := st.Objects[4].IntValue; v != 3 {
		t.Fatalf("object 4 = %d, want 3", v)
	}
	all, err := st.Changes(true)
	if err != nil {
		t.Fatal(err)
	}
	var layers []LayerRecord
	if err := st.AllLayers(func(l LayerRecord) error { layers = append(layers, l); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(all.Objects) != 5 || len(all.Products) != 1 || !all.All || len(layers) != 2 || layers[0].ID != "l1" || layers[1].ID != "l2" {
		t.Fatalf("all: %d objects, %d products, all %v, layers %+v", len(all.Objects), len(all.Products), all.All, layers)
	}
}
