package state

import (
	"testing"

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
