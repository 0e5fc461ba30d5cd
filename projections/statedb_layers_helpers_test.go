package projections_test

import (
	"context"
	"testing"

	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
)

// storedLayers lists the layers of the state database at path, by owner, each owner's in key
// order (the pages' order; text identities last).
func storedLayers(t *testing.T, path string) (owners []string, layers map[string][]state.LayerRecord) {
	t.Helper()
	ctx := context.Background()
	db, err := projections.OpenStateDB(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if owners, err = db.LayerOwners(ctx); err != nil {
		t.Fatal(err)
	}
	layers = map[string][]state.LayerRecord{}
	for _, o := range owners {
		if err := db.EachLayer(o, func(id string, info state.LayerInfo) bool {
			layers[o] = append(layers[o], state.LayerRecord{Owner: o, ID: id, Info: info})
			return true
		}); err != nil {
			t.Fatal(err)
		}
	}
	return owners, layers
}

// changeStoredLayers writes puts into the state database at path and removes removes from it.
func changeStoredLayers(t *testing.T, path string, puts, removes []state.LayerRecord) {
	t.Helper()
	ctx := context.Background()
	db, err := projections.OpenStateDB(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.PutLayers(ctx, puts); err != nil {
		t.Fatal(err)
	}
	for _, l := range removes {
		if err := db.RemoveLayer(ctx, l.Owner, l.ID); err != nil {
			t.Fatal(err)
		}
	}
}

// changeFirstLayer changes the first layer of the first owner the state database at path holds
// layers of, in key order.
func changeFirstLayer(t *testing.T, path string, change func(*state.LayerInfo)) {
	t.Helper()
	owners, layers := storedLayers(t, path)
	if len(owners) == 0 {
		t.Fatal("no layers to change")
	}
	l := layers[owners[0]][0]
	change(&l.Info)
	changeStoredLayers(t, path, []state.LayerRecord{l}, nil)
}
