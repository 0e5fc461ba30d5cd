package embedded_test

import (
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
)

// umaskChildEnv marks the re-executed test binary that runs with umask 0.
const umaskChildEnv = "TALLY_EMBEDDED_UMASK_CHILD"

// TestStoreFilesAreOwnerOnlyUnderAnyUmask re-runs itself in a child process with umask 0 (the
// umask is per process: setting it here would touch every other test) and checks there that
// the store's directory is 0700 and every file it makes (events.db, -wal, -shm, LOCK) 0600,
// while the store is open and after it is closed.
func TestStoreFilesAreOwnerOnlyUnderAnyUmask(t *testing.T) {
	if os.Getenv(umaskChildEnv) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStoreFilesAreOwnerOnlyUnderAnyUmask$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), umaskChildEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestStoreFilesAreOwnerOnlyUnderAnyUmask") {
			t.Fatalf("child with umask 0: %v\n%s", err, out)
		}
		return
	}
	syscall.Umask(0)
	if old := syscall.Umask(0); old != 0 {
		t.Fatalf("umask is %o, want 0", old)
	}
	dir := filepath.Join(t.TempDir(), "events")
	s, err := embedded.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(t.Context(), "modes-1", eventstore.NoStream(), eventstore.EventData{Type: "T", Data: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	want := []string{embedded.DatabaseFile, embedded.DatabaseFile + "-wal", embedded.DatabaseFile + "-shm", "LOCK"}
	checkOwnerOnly(t, dir, want)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	checkOwnerOnly(t, dir, []string{embedded.DatabaseFile, "LOCK"})
}

// TestOpenTightensLooseFiles opens a store whose directory and files an older build left open
// to everyone, and finds them owner-only afterwards.
func TestOpenTightensLooseFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "events")
	s := openStore(t, dir)
	if _, err := s.Append(t.Context(), "modes-1", eventstore.NoStream(), eventstore.EventData{Type: "T", Data: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		if err := os.Chmod(filepath.Join(dir, e.Name()), 0o666); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir)
	defer s.Close()
	checkOwnerOnly(t, dir, names)
	got, err := s.ReadAll(t.Context(), eventstore.Start, 10)
	if err != nil || len(got) != 1 {
		t.Fatalf("read back after tightening: %d events, %v", len(got), err)
	}
}

// TestOpenRefusesASymlinkedDatabase: a link in place of events.db is not followed.
func TestOpenRefusesASymlinkedDatabase(t *testing.T) {
	dir := t.TempDir()
	elsewhere := filepath.Join(t.TempDir(), "other.db")
	if err := os.WriteFile(elsewhere, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, filepath.Join(dir, embedded.DatabaseFile)); err != nil {
		t.Fatal(err)
	}
	if s, err := embedded.Open(t.Context(), dir); err == nil {
		s.Close()
		t.Fatal("opened a store whose database is a symlink")
	}
}

func checkOwnerOnly(t *testing.T, dir string, files []string) {
	t.Helper()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("%s has mode %04o, want 0700", dir, perm)
	}
	for _, name := range files {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if perm := fi.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", name, perm)
		}
	}
	// Nothing else in the directory may be open to others either.
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		fi, err := d.Info()
		if err == nil && fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %04o", path, fi.Mode().Perm())
		}
		return nil
	})
}
