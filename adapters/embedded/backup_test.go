package embedded_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
)

// TestBackupWhileWriting copies the database while four writers keep appending: the copy (mode 0600) opens as a store whose events are exactly the source's
// first events up to the position BackupTo returned, and appends acknowledged before the
// backup started are all in it.
func TestBackupWhileWriting(t *testing.T) {
	src := openStore(t, t.TempDir())
	ctx := t.Context()
	appendOne := func(i int) error {
		_, err := src.Append(ctx, fmt.Sprintf("backup-%d", i%16), eventstore.Any(), eventstore.EventData{Type: "T", Data: []byte(fmt.Sprintf(`{"i":%d}`, i))})
		return err
	}
	for i := range 500 {
		if err := appendOne(i); err != nil {
			t.Fatal(err)
		}
	}
	before, err := src.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	writeCtx, stopWriting := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; writeCtx.Err() == nil; i++ {
				if err := appendOne(1000 + w*100000 + i); err != nil {
					if writeCtx.Err() == nil {
						t.Errorf("append during backup: %v", err)
					}
					return
				}
			}
		}()
	}
	path := filepath.Join(t.TempDir(), "copy.db")
	pos, err := src.BackupTo(ctx, path)
	stopWriting()
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if pos < before {
		t.Fatalf("backup at position %d, before it the store was at %d", pos, before)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("the copy has mode %04o, want 0600", fi.Mode().Perm())
	}
	if _, err := src.BackupTo(ctx, path); err == nil {
		t.Error("BackupTo overwrote an existing file")
	}

	dir := t.TempDir()
	if err := os.Rename(path, filepath.Join(dir, embedded.DatabaseFile)); err != nil {
		t.Fatal(err)
	}
	restored := openStore(t, dir)
	if head, _ := restored.Head(ctx); head != pos {
		t.Fatalf("the copy's head is %d, BackupTo said %d", head, pos)
	}
	got, err := restored.ReadAll(ctx, eventstore.Start, int(pos)+100)
	if err != nil {
		t.Fatal(err)
	}
	want, err := src.ReadAll(ctx, eventstore.Start, len(got))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || got[len(got)-1].Position != pos {
		t.Fatalf("copy holds %d events up to %d; source's first %d", len(got), got[len(got)-1].Position, len(want))
	}
	for i := range got {
		if got[i].Position != want[i].Position || got[i].ID != want[i].ID || string(got[i].Data) != string(want[i].Data) {
			t.Fatalf("event %d differs: %+v vs %+v", i, got[i], want[i])
		}
	}
}
