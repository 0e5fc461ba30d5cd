package projections_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
)

// copyFile copies a file as a crash would leave it on disk.
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestReplayReplacesAStateDatabaseACrashLeftWithItsLog: a state database that a crash left
// with a write-ahead log still holding checkpoints, and a half-written file of a replay that
// crashed, are replaced whole: the log is not applied to the new file (SQLite would apply a
// log it finds beside a file), the new file reads back as the replay, and a projection starts
// from it at its checkpoint without replaying.
func TestReplayReplacesAStateDatabaseACrashLeftWithItsLog(t *testing.T) {
	ctx := context.Background()
	store, rebuilt := seededState(t, "")
	earlier, err := projections.Rebuild(ctx, projections.UpTo(store, rebuilt.Position/2), nil)
	if err != nil {
		t.Fatal(err)
	}
	// A state database in use, its last checkpoints only in its log; copied as it is on disk.
	live := filepath.Join(t.TempDir(), "state.db")
	if err := projections.SaveSnapshot(live, earlier); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+live+"?_pragma=journal_mode(WAL)&_pragma=wal_autocheckpoint(0)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE meta SET events = events + 1; DELETE FROM layer_pages`); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), projections.StateFile)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	copyFile(t, live, path)
	copyFile(t, live+"-wal", path+"-wal")
	if fi, err := os.Stat(path + "-wal"); err != nil || fi.Size() == 0 {
		t.Fatalf("the crashed database has no log to replace: %v", err)
	}
	if err := os.WriteFile(path+".new", []byte("half a replay"), 0o600); err != nil {
		t.Fatal(err)
	}

	if err := projections.SaveSnapshot(path, rebuilt); err != nil {
		t.Fatal(err)
	}
	for _, leftover := range []string{path + "-wal", path + "-shm", path + ".new"} {
		if _, err := os.Stat(leftover); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after the replay: %v", filepath.Base(leftover), err)
		}
	}
	loaded, err := projections.LoadSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	if d := state.Diff(loaded, rebuilt); len(d) != 0 {
		t.Fatalf("replaced state differs from the replay: %v", d)
	}
	if loaded.Events != rebuilt.Events || loaded.Position != rebuilt.Position {
		t.Fatalf("replaced state at %d (%d events), want %d (%d)", loaded.Position, loaded.Events, rebuilt.Position, rebuilt.Events)
	}
	c, stop := runCurrentOn(t, store, path)
	defer stop()
	if c.LoadedAt() != rebuilt.Position {
		t.Fatalf("the projection started from %d, want the replay's checkpoint %d", c.LoadedAt(), rebuilt.Position)
	}
	c.Read(func(st *state.State) {
		if n := st.LayersInMemory(); n != 0 {
			t.Errorf("%d layers in memory after starting on the replay's file, want 0", n)
		}
		if d := state.Diff(st, rebuilt); len(d) != 0 {
			t.Errorf("the projection differs from the replay: %v", d)
		}
	})
}

// TestReplayStateWritesWhatItFolds: ReplayState, which hands the layers of each chunk of
// events to the writer while it folds the next and looks older ones up in the new file,
// leaves the state a replay gives (records, layers and checkpoint) with no layer of it in
// memory at the end beyond the last chunk's, whatever the chunk; a projection starts on the
// file at its checkpoint.
func TestReplayStateWritesWhatItFolds(t *testing.T) {
	ctx := context.Background()
	store, rebuilt := seededState(t, "")
	// A store that is only an eventstore.Store (no dense positions to chunk by) is folded
	// whole, then written.
	plain := struct{ eventstore.Store }{store}
	for _, tc := range []struct {
		chunk eventstore.Position
		store eventstore.Store
	}{{1, store}, {7, store}, {64, store}, {0, store}, {7, plain}} {
		chunk := tc.chunk
		t.Run(fmt.Sprintf("%d %T", chunk, tc.store), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), projections.StateFile)
			calls := 0
			st, err := projections.ReplayState(ctx, tc.store, path, projections.ReplayOptions{Chunk: chunk, Progress: func(int) { calls++ }})
			if err != nil {
				t.Fatal(err)
			}
			if calls == 0 {
				t.Error("no progress reported")
			}
			if st.Events != rebuilt.Events || st.Position != rebuilt.Position || len(st.Objects) != len(rebuilt.Objects) {
				t.Errorf("replayed %d events to %d, want %d to %d", st.Events, st.Position, rebuilt.Events, rebuilt.Position)
			}
			if chunk > 0 && chunk < 64 && tc.store == store && st.LayersInMemory() != 0 {
				t.Errorf("%d layers in memory after the replay", st.LayersInMemory())
			}
			loaded, err := projections.LoadSnapshot(path)
			if err != nil {
				t.Fatal(err)
			}
			if d := state.Diff(loaded, rebuilt); len(d) != 0 {
				t.Fatalf("written state differs from a replay: %v", d)
			}
			if countLayers(t, loaded) != countLayers(t, rebuilt) || loaded.Position != rebuilt.Position || loaded.Events != rebuilt.Events || loaded.LastEvent != rebuilt.LastEvent {
				t.Fatalf("written at %d (%d events), want %d (%d)", loaded.Position, loaded.Events, rebuilt.Position, rebuilt.Events)
			}
		})
	}
}
