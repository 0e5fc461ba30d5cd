package embedded_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
)

// TestWALGrowsPastSQLitesDefaultCheckpoint shows the store checkpoints its WAL far less often
// than SQLite's default of every 1000 pages: after some 3000 pages of appends the WAL file
// still holds them all. (After a checkpoint SQLite rewrites the WAL from its start, so with the
// default the file would stay near 1000 pages.) The events stay readable either way.
func TestWALGrowsPastSQLitesDefaultCheckpoint(t *testing.T) {
	dir := t.TempDir()
	store := openStore(t, dir)
	const (
		pageSize  = 4096
		perAppend = 100 // events of a page each: about 100 pages a commit
		appends   = 30
	)
	data := make([]byte, pageSize)
	for i := range appends {
		events := make([]eventstore.EventData, perAppend)
		for j := range events {
			events[j] = eventstore.EventData{Type: "Filled", Data: data}
		}
		if _, err := store.Append(t.Context(), "wal-test", eventstore.Any(), events...); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	info, err := os.Stat(filepath.Join(dir, embedded.DatabaseFile+"-wal"))
	if err != nil {
		t.Fatalf("stat the WAL: %v", err)
	}
	if pages := info.Size() / pageSize; pages < 2500 {
		t.Errorf("the WAL holds %d pages after about %d pages of appends: it was checkpointed early", pages, appends*perAppend)
	}
	got, err := store.ReadAll(t.Context(), eventstore.Start, appends*perAppend+1)
	if err != nil {
		t.Fatalf("read back: %v", err)
	}
	if len(got) != appends*perAppend {
		t.Errorf("read back %d events, want %d", len(got), appends*perAppend)
	}
}
