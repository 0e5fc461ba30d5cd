package projections_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/audittest"
)

// seededState runs a seeded workload (uploads included) with the state persisted at path and
// stops it; it returns the store and the rebuilt state.
func seededState(t *testing.T, path string) (eventstore.Store, *state.State) {
	t.Helper()
	store, err := embedded.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	env := audittest.Start(t, store, path)
	audittest.Seed(t, env, rand.New(rand.NewPCG(7, 8)), 120)
	env.Stop()
	rebuilt, err := projections.Rebuild(context.Background(), store, nil)
	if err != nil {
		t.Fatal(err)
	}
	return store, rebuilt
}

func countLayers(t *testing.T, st *state.State) int {
	t.Helper()
	n := 0
	for owner := range st.Uploads {
		if err := st.Layers(owner, func(string, state.LayerInfo) bool { n++; return true }); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// TestRestartServesLayersFromTheStateDatabase: a projection restarted on its state database
// resumes at its checkpoint with no applied layer in memory, and answers every layer (and
// every record) as a replay does.
func TestRestartServesLayersFromTheStateDatabase(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), projections.StateFile)
	store, rebuilt := seededState(t, path)
	if countLayers(t, rebuilt) == 0 {
		t.Fatal("the workload applied no layer")
	}
	c, stop := runCurrentOn(t, store, path)
	defer stop()
	if c.LoadedAt() != rebuilt.Position {
		t.Fatalf("restarted from %d, want the checkpoint %d", c.LoadedAt(), rebuilt.Position)
	}
	if err := c.WaitFor(ctx, rebuilt.Position); err != nil {
		t.Fatal(err)
	}
	c.Read(func(st *state.State) {
		if n := st.LayersInMemory(); n != 0 {
			t.Errorf("%d layers in memory after a restart, want 0", n)
		}
		if d := state.Diff(st, rebuilt); len(d) != 0 {
			t.Errorf("restarted state differs from a replay: %v", d)
		}
		for key, u := range rebuilt.Uploads {
			_ = rebuilt.Layers(key, func(id string, want state.LayerInfo) bool {
				if !st.HasLayerAtDepth(u.Owner, want.Depth) {
					t.Errorf("owner %s: no layer at depth %d", key, want.Depth)
				}
				return true
			})
			if st.HasLayerAtDepth(u.Owner, 1<<40) {
				t.Errorf("owner %s: a layer at an impossible depth", key)
			}
		}
	})
	if err := c.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestMigratesAnEarlierBuildsProjectionJSON: a data directory with only the projection.json
// of an earlier build starts from it (no replay), writes it to the state database, and removes
// it.
func TestMigratesAnEarlierBuildsProjectionJSON(t *testing.T) {
	ctx := context.Background()
	store, rebuilt := seededState(t, "")
	dir := t.TempDir()
	legacy := filepath.Join(dir, "projection.json")
	b, err := state.MarshalState(rebuilt)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(legacy, b, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, projections.StateFile)
	c, err := projections.NewCurrent(ctx, store, projections.CurrentOptions{StatePath: path, SnapshotPath: legacy, SnapshotEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if c.LoadedAt() != rebuilt.Position {
		t.Fatalf("started from %d, want the snapshot's %d", c.LoadedAt(), rebuilt.Position)
	}
	if _, err := os.Stat(legacy); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("projection.json still there after the migration: %v", err)
	}
	c.Read(func(st *state.State) {
		if n := st.LayersInMemory(); n != 0 {
			t.Errorf("%d layers in memory after the migration, want 0", n)
		}
		if d := state.Diff(st, rebuilt); len(d) != 0 {
			t.Errorf("migrated state differs from a replay: %v", d)
		}
	})
	runCtx, cancel := context.WithCancel(ctx)
	cancel()
	_ = c.Run(runCtx)
	loaded, err := projections.LoadSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	if d := state.Diff(loaded, rebuilt); len(d) != 0 {
		t.Fatalf("state database differs from a replay: %v", d)
	}
}

// TestReplayWritesTheStateDatabaseWhole: SaveSnapshot (tally replay) replaces whatever the file
// held, and LoadSnapshot (tally verify) reads back the same state, layers included.
func TestReplayWritesTheStateDatabaseWhole(t *testing.T) {
	_, rebuilt := seededState(t, "")
	path := filepath.Join(t.TempDir(), projections.StateFile)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("not a database"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := projections.SaveSnapshot(path, rebuilt); err != nil {
		t.Fatal(err)
	}
	loaded, err := projections.LoadSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	if d := state.Diff(loaded, rebuilt); len(d) != 0 {
		t.Fatalf("loaded state differs: %v", d)
	}
	if countLayers(t, loaded) != countLayers(t, rebuilt) || loaded.Position != rebuilt.Position || loaded.LastEvent != rebuilt.LastEvent || loaded.Events != rebuilt.Events {
		t.Fatalf("loaded at %d (%d events), want %d (%d)", loaded.Position, loaded.Events, rebuilt.Position, rebuilt.Events)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("state database mode %v, want 0600", fi.Mode().Perm())
	}
	if _, err := projections.LoadSnapshot(filepath.Join(t.TempDir(), "none.db")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing state database: %v", err)
	}
}

// runCurrentOn starts a projection on the state database at path.
func runCurrentOn(t testing.TB, store eventstore.Store, path string) (*projections.Current, func()) {
	t.Helper()
	c, err := projections.NewCurrent(context.Background(), store, projections.CurrentOptions{StatePath: path, SnapshotEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return c, func() { cancel(); <-done }
}

// TestCopyStateWhileCheckpointing: copies of the state database taken while a projection
// checkpoints every millisecond (tally backup's) each hold a checkpoint with exactly the layers
// and records up to it: a projection started on any copy catches up to a replay's state.
func TestCopyStateWhileCheckpointing(t *testing.T) {
	ctx := context.Background()
	store, err := embedded.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	env := audittest.Start(t, store, "")
	dir := t.TempDir()
	path := filepath.Join(dir, projections.StateFile)
	follower, err := projections.NewCurrent(ctx, store, projections.CurrentOptions{StatePath: path, SnapshotEvery: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	followed := make(chan error, 1)
	go func() { followed <- follower.Run(runCtx) }()

	seeded := make(chan struct{})
	copies := make(chan []string, 1)
	go func() {
		var out []string
		for i := 0; ; i++ {
			select {
			case <-seeded:
				copies <- out
				return
			default:
			}
			to := filepath.Join(dir, fmt.Sprintf("copy-%d.db", i))
			if ok, err := projections.CopyState(ctx, path, to); err != nil {
				t.Error(err)
			} else if ok {
				out = append(out, to)
			}
		}
	}()
	audittest.Seed(t, env, rand.New(rand.NewPCG(3, 4)), 80)
	close(seeded)
	taken := <-copies
	cancel()
	<-followed
	rebuilt, err := projections.Rebuild(ctx, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(taken) < 2 {
		t.Fatalf("only %d copies taken", len(taken))
	}
	positions := map[eventstore.Position]bool{}
	for _, copyPath := range taken {
		c, stop := runCurrentOn(t, store, copyPath)
		positions[c.LoadedAt()] = true
		if err := c.WaitFor(ctx, rebuilt.Position); err != nil {
			t.Fatal(err)
		}
		c.Read(func(st *state.State) {
			if d := state.Diff(st, rebuilt); len(d) != 0 {
				t.Errorf("copy %s (checkpoint %d) caught up differs from a replay: %v", copyPath, c.LoadedAt(), d)
			}
		})
		stop()
	}
	t.Logf("%d copies at %d distinct checkpoints", len(taken), len(positions))
}

// TestAFormat2StateDatabaseIsReplacedAndReplayed: a state database of the format before the
// layer pages (one row per layer in a layers table, format 2 in its meta row) is replaced by a
// fresh file on start, and the projection replays the events into it: it ends equal to a
// replay, every layer answered from the new pages, and the old table gone.
func TestAFormat2StateDatabaseIsReplacedAndReplayed(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), projections.StateFile)
	store, rebuilt := seededState(t, "")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Exec(`
CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), format INTEGER NOT NULL, position INTEGER NOT NULL,
	last_stream TEXT NOT NULL, last_revision INTEGER NOT NULL, last_id BLOB NOT NULL, events INTEGER NOT NULL);
CREATE TABLE layers (owner TEXT NOT NULL, layer NOT NULL, depth INTEGER NOT NULL, timestamp INTEGER NOT NULL,
	skipped TEXT NOT NULL, digest NOT NULL, file_digest NOT NULL, length INTEGER NOT NULL,
	PRIMARY KEY (owner, layer)) WITHOUT ROWID;
CREATE INDEX layers_depth ON layers (owner, depth);
INSERT INTO meta VALUES (1, 2, 3, 's', 0, zeroblob(16), 3);
INSERT INTO layers VALUES ('1-1', zeroblob(32), 1, 0, '', x'', x'', 0);`); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	c, stop := runCurrentOn(t, store, path)
	if c.LoadedAt() != 0 {
		t.Fatalf("started from %d on a file of format 2, want a replay from 0", c.LoadedAt())
	}
	if err := c.WaitFor(ctx, rebuilt.Position); err != nil {
		t.Fatal(err)
	}
	if err := c.Save(); err != nil {
		t.Fatal(err)
	}
	stop()
	c, stop = runCurrentOn(t, store, path)
	defer stop()
	if c.LoadedAt() != rebuilt.Position {
		t.Fatalf("restarted from %d, want the checkpoint %d", c.LoadedAt(), rebuilt.Position)
	}
	c.Read(func(st *state.State) {
		if n := st.LayersInMemory(); n != 0 {
			t.Errorf("%d layers in memory after a restart, want 0", n)
		}
		if d := state.Diff(st, rebuilt); len(d) != 0 {
			t.Errorf("the state differs from a replay: %v", d)
		}
	})
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var tables int
	if err := db.QueryRow(`SELECT count(*) FROM sqlite_master WHERE name IN ('layers', 'layers_depth')`).Scan(&tables); err != nil || tables != 0 {
		t.Fatalf("the format 2 layers table is still there: %d %v", tables, err)
	}
}
