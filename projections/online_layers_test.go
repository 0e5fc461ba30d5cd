package projections_test

import (
	"context"
	"database/sql"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	_ "modernc.org/sqlite"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/audittest"
)

// TestVerifyOnlineComparesLayersOnDisk: the live projection's applied layers, most of them in
// the state database after a checkpoint and the rest in memory, are compared with the replay's
// after the projection is let go (from a read transaction taken while it was held); a layer
// changed on disk is found.
func TestVerifyOnlineComparesLayersOnDisk(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store, err := embedded.Open(ctx, filepath.Join(dir, "events"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	statePath := filepath.Join(dir, "state.db")
	env := audittest.Start(t, store, statePath)
	audittest.Seed(t, env, rand.New(rand.NewPCG(7, 13)), 300)
	head, err := store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Proj.WaitFor(ctx, head); err != nil {
		t.Fatal(err)
	}
	if err := env.Proj.Save(); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+statePath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var onDisk int
	if err := db.QueryRow(`SELECT count(*) FROM layer_pages`).Scan(&onDisk); err != nil {
		t.Fatal(err)
	}
	if onDisk == 0 {
		t.Fatal("the checkpoint wrote no layers: the test compares nothing on disk")
	}

	v, err := projections.VerifyOnline(ctx, store, env.Proj, projections.OnlineOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Problems) != 0 {
		t.Fatalf("problems on an untouched state: %q", v.Problems)
	}

	changeFirstLayer(t, statePath, func(info *state.LayerInfo) { info.Depth += 1000 })
	v, err = projections.VerifyOnline(ctx, store, env.Proj, projections.OnlineOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(v.Problems, "\n")
	if len(v.Problems) != 1 || !strings.Contains(got, "projection vs replay: uploads of owner") || !strings.Contains(got, "differs") {
		t.Fatalf("problems = %q, want the one changed layer", got)
	}
}

// TestALayerSnapshotReadsWhatTheDatabaseReads: a snapshot answers every field of a layer as the
// database's own lookups do, and does not see a layer written after it was taken.
func TestALayerSnapshotReadsWhatTheDatabaseReads(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := projections.OpenStateDB(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	id, digest := strings.Repeat("ab", 32), strings.Repeat("cd", 32)
	put := func(id string, info state.LayerInfo) {
		if err := db.PutLayers(ctx, []state.LayerRecord{{Owner: "key-1", ID: id, Info: info}}); err != nil {
			t.Fatal(err)
		}
	}
	put(id, state.LayerInfo{Depth: 7, Timestamp: 1700000000, Digest: digest, FileDigest: digest, Length: 336})
	snap, err := db.SnapshotLayers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	later := strings.Repeat("ef", 32)
	put(later, state.LayerInfo{Depth: 8, Timestamp: 1700000001, Digest: digest})
	want, ok, err := db.Layer("key-1", id)
	if err != nil || !ok || want.Length != 336 || want.Digest != digest || want.Depth != 7 {
		t.Fatalf("database: %+v %v %v", want, ok, err)
	}
	got, ok, err := snap.Layer("key-1", id)
	if err != nil || !ok || got != want {
		t.Fatalf("snapshot: %+v %v %v, want %+v", got, ok, err, want)
	}
	if _, ok, err := snap.Layer("key-1", later); ok || err != nil {
		t.Fatalf("the snapshot sees a layer written after it: %v %v", ok, err)
	}
	if ok, err := snap.HasDepth("key-1", 7); !ok || err != nil {
		t.Fatalf("depth 7: %v %v", ok, err)
	}
	atDepth := func(store interface {
		EachLayerAt(string, int64, func(string, state.LayerInfo) bool) error
	}, depth int64) []string {
		var ids []string
		if err := store.EachLayerAt("key-1", depth, func(l string, _ state.LayerInfo) bool { ids = append(ids, l); return true }); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	if got := atDepth(snap, 7); len(got) != 1 || got[0] != id {
		t.Fatalf("snapshot at depth 7: %v", got)
	}
	if got := atDepth(snap, 8); len(got) != 0 {
		t.Fatalf("snapshot at depth 8 (written after it): %v", got)
	}
	if got := atDepth(db, 8); len(got) != 1 || got[0] != later {
		t.Fatalf("database at depth 8: %v", got)
	}
	var seen []string
	if err := snap.EachLayer("key-1", func(l string, info state.LayerInfo) bool {
		if info != want {
			t.Errorf("each: %+v, want %+v", info, want)
		}
		seen = append(seen, l)
		return true
	}); err != nil || len(seen) != 1 || seen[0] != id {
		t.Fatalf("each: %v %v", seen, err)
	}
}

// TestVerifyOnlineNamesAChangedAMissingAndAnExtraLayer: the online comparison of the live
// projection's layers (the stored ones in one pass over a snapshot's pages, the ones since its
// checkpoint from memory) names a changed layer, counts a missing one, and names an extra one,
// in state.Diff's lines.
func TestVerifyOnlineNamesAChangedAMissingAndAnExtraLayer(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store, err := embedded.Open(ctx, filepath.Join(dir, "events"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	statePath := filepath.Join(dir, "state.db")
	env := audittest.Start(t, store, statePath)
	rng := rand.New(rand.NewPCG(31, 37))
	audittest.Seed(t, env, rng, 200)
	head, err := store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Proj.WaitFor(ctx, head); err != nil {
		t.Fatal(err)
	}
	if err := env.Proj.Save(); err != nil {
		t.Fatal(err)
	}
	// More uploads after the checkpoint: their layers are in memory only.
	audittest.Seed(t, env, rng, 60)
	if head, err = store.Head(ctx); err != nil {
		t.Fatal(err)
	}
	if err := env.Proj.WaitFor(ctx, head); err != nil {
		t.Fatal(err)
	}
	owners, stored := storedLayers(t, statePath)
	var two []string
	for _, o := range owners {
		if len(stored[o]) > 1 {
			two = append(two, o)
		}
	}
	if len(two) < 2 {
		t.Fatalf("%d owners with two stored layers or more: the test compares too little", len(two))
	}
	first, last := two[0], two[len(two)-1]
	changed := stored[first][0]
	changed.Info.Timestamp++
	missing := stored[first][len(stored[first])-1]
	extra := stored[last][0]
	extra.ID = strings.Repeat("00", 32)
	changeStoredLayers(t, statePath, []state.LayerRecord{changed, extra}, []state.LayerRecord{missing})

	v, err := projections.VerifyOnline(ctx, store, env.Proj, projections.OnlineOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(v.Problems, "\n")
	for _, want := range []string{
		"projection vs replay: uploads of owner " + first + ": layer " + changed.ID + " differs",
		"projection vs replay: uploads of owner " + last + ": layer " + extra.ID + " differs",
		"projection vs replay: uploads of owner " + last + ": ",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in:\n%s", want, got)
		}
	}
	if !strings.Contains(got, "projection vs replay: uploads of owner "+first+": ") || !strings.Contains(got, " applied layers") {
		t.Errorf("the missing layer is not counted:\n%s", got)
	}
	// As state.Diff: per owner the counts when they differ, then each layer of the projection
	// the replay lacks or holds otherwise (the missing one shows in the count only).
	if len(v.Problems) != 4 || !strings.HasSuffix(v.Problems[0], " applied layers") || !strings.HasSuffix(v.Problems[2], " applied layers") {
		t.Errorf("%d problems, want 4 (each owner's count, the changed layer, the extra one):\n%s", len(v.Problems), got)
	}
}
