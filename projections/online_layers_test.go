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
	if err := db.QueryRow(`SELECT count(*) FROM layers`).Scan(&onDisk); err != nil {
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

	if _, err := db.Exec(`UPDATE layers SET depth = depth + 1000 WHERE layer = (SELECT layer FROM layers ORDER BY owner, layer LIMIT 1)`); err != nil {
		t.Fatal(err)
	}
	v, err = projections.VerifyOnline(ctx, store, env.Proj, projections.OnlineOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(v.Problems, "\n")
	if len(v.Problems) != 1 || !strings.Contains(got, "projection vs replay: uploads of owner") || !strings.Contains(got, "differs") {
		t.Fatalf("problems = %q, want the one changed layer", got)
	}
}
