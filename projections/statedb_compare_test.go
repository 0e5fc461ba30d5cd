package projections_test

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/audittest"
)

// storedDiff opens the state database at path, catches it up with the store, and compares it
// with rebuilt in one pass (tally verify's way); oracle does the same with the state loaded
// whole and state.Diff (the way before).
func storedDiff(t *testing.T, store eventstore.Store, path string, rebuilt *state.State) (got, oracle []string) {
	t.Helper()
	ctx := context.Background()
	live, err := projections.OpenStoredState(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := projections.CatchUp(ctx, store, live.State); err != nil {
		t.Fatal(err)
	}
	if got, err = live.Diff(ctx, rebuilt); err != nil {
		t.Fatal(err)
	}
	loaded, err := projections.LoadSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := projections.CatchUp(ctx, store, loaded); err != nil {
		t.Fatal(err)
	}
	oracle = state.Diff(loaded, rebuilt)
	slices.Sort(got)
	slices.Sort(oracle)
	return got, oracle
}

// TestStoredStateDiffReportsWhatDiffReports: the one-pass comparison of a state database with a
// replay finds nothing on an untouched file, and on a file with a changed, a missing and an
// extra layer, and with layers folded after its checkpoint, it reports the lines state.Diff
// reports on the same state loaded whole.
func TestStoredStateDiffReportsWhatDiffReports(t *testing.T) {
	ctx := context.Background()
	store, err := embedded.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	env := audittest.Start(t, store, "")
	audittest.Seed(t, env, rand.New(rand.NewPCG(21, 22)), 160)
	env.Stop()
	head, err := store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rebuilt, err := projections.Rebuild(ctx, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A checkpoint two thirds of the way: the rest is folded by CatchUp, its layers in memory.
	earlier, err := projections.Rebuild(ctx, projections.UpTo(store, head*2/3), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		st   *state.State
	}{{"at the head", rebuilt}, {"behind the head", earlier}} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), projections.StateFile)
			if err := projections.SaveSnapshot(path, tc.st); err != nil {
				t.Fatal(err)
			}
			if got, oracle := storedDiff(t, store, path, rebuilt); len(got) != 0 || len(oracle) != 0 {
				t.Fatalf("untouched: %q (state.Diff: %q)", got, oracle)
			}
			allOwners, stored := storedLayers(t, path)
			var owners []string
			for _, o := range allOwners {
				if len(stored[o]) > 1 {
					owners = append(owners, o)
				}
			}
			if len(owners) < 2 {
				t.Fatalf("%d owners with two layers or more: the test compares too little", len(owners))
			}
			first, last := owners[0], owners[len(owners)-1]
			// first: its least layer changed, its greatest missing; last: an extra layer.
			changed := stored[first][0]
			changed.Info.Timestamp++
			extra := stored[last][0]
			extra.ID = strings.Repeat("00", 32)
			changeStoredLayers(t, path, []state.LayerRecord{changed, extra}, []state.LayerRecord{stored[first][len(stored[first])-1]})
			got, oracle := storedDiff(t, store, path, rebuilt)
			if !slices.Equal(got, oracle) {
				t.Fatalf("one pass:\n%s\nstate.Diff:\n%s", strings.Join(got, "\n"), strings.Join(oracle, "\n"))
			}
			for _, want := range []string{
				"uploads of owner " + first + ": layer ",
				"uploads of owner " + last + ": layer 0000000000000000000000000000000000000000000000000000000000000000 differs",
				"uploads of owner " + last + ": ",
			} {
				if !slices.ContainsFunc(got, func(l string) bool { return strings.HasPrefix(l, want) }) {
					t.Errorf("no line %q in %q", want, got)
				}
			}
			if len(got) < 4 {
				t.Errorf("%d lines for a changed, a missing and an extra layer: %q", len(got), got)
			}
		})
	}
}
