package backup_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/tallyledger/tally/cmd/tally/internal/backup"
)

// TestArchiveOrderAndModes: the snapshot is read before the store is copied (a snapshot
// written during the copy is not the one archived), the current key comes before older ones,
// every entry has mode 0600, the manifest is last, and Restore gives back the same bytes in an
// owner-only directory.
func TestArchiveOrderAndModes(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"projection.json":      `{"position":7}`,
		"admin.token":          "k7Qx9Lm2Vb4Np8Rs1Tz6Wc3Yd5",
		"rsa-private.pem":      "current",
		"rsa-private-2025.pem": "older",
		"unrelated.txt":        "not backed up",
		"rsa-private.pem.bak":  "not a key file name",
		".backup-stale.db":     "not backed up",
		"events/events.db-wal": "not backed up",
	}
	for name, body := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	m, err := backup.Write(context.Background(), &buf, backup.Source{
		DataDir: dir,
		CopyStore: func(_ context.Context, path string) (uint64, error) {
			// The projection moves on while the store is copied.
			if err := os.WriteFile(filepath.Join(dir, "projection.json"), []byte(`{"position":9}`), 0o600); err != nil {
				return 0, err
			}
			return 8, os.WriteFile(path, []byte("the store at 8"), 0o600)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if m.Position != 8 {
		t.Errorf("manifest position %d", m.Position)
	}
	archive := buf.Bytes()
	gz, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var names []string
	bodies := map[string]string{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Mode != 0o600 {
			t.Errorf("%s has mode %o", hdr.Name, hdr.Mode)
		}
		b, _ := io.ReadAll(tr)
		names = append(names, hdr.Name)
		bodies[hdr.Name] = string(b)
	}
	want := []string{"projection.json", "admin.token", "rsa-private.pem", "rsa-private-2025.pem", "events/events.db", "MANIFEST.json"}
	if len(names) != len(want) {
		t.Fatalf("entries %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("entries %v, want %v", names, want)
		}
	}
	if bodies["projection.json"] != `{"position":7}` {
		t.Errorf("archived snapshot %q: not the one read before the copy", bodies["projection.json"])
	}

	restored := filepath.Join(t.TempDir(), "r")
	if _, err := backup.Restore(bytes.NewReader(archive), restored); err != nil {
		t.Fatal(err)
	}
	for _, name := range want[:5] {
		b, err := os.ReadFile(filepath.Join(restored, name))
		if err != nil || string(b) != bodies[name] {
			t.Errorf("restored %s: %q, %v", name, b, err)
		}
		if fi, _ := os.Stat(filepath.Join(restored, name)); fi == nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("restored %s mode %v", name, fi)
		}
	}
	for _, d := range []string{restored, filepath.Join(restored, "events")} {
		if fi, _ := os.Stat(d); fi == nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("restored directory %s mode %v", d, fi)
		}
	}
}

// TestStateCopyIsMadeBeforeTheStoreAndRestored: the projection's state database is copied
// before the store is (so its checkpoint is never past the store's copy), archived as
// readmodels/state.db and restored owner-only; without one, the archive simply lacks it.
func TestStateCopyIsMadeBeforeTheStoreAndRestored(t *testing.T) {
	dir := t.TempDir()
	stateCopied := false
	var buf bytes.Buffer
	m, err := backup.Write(context.Background(), &buf, backup.Source{
		DataDir: dir,
		CopyState: func(_ context.Context, path string) (bool, error) {
			stateCopied = true
			return true, os.WriteFile(path, []byte("the state at 5"), 0o600)
		},
		CopyStore: func(_ context.Context, path string) (uint64, error) {
			if !stateCopied {
				return 0, errors.New("the store is copied before the state")
			}
			return 8, os.WriteFile(path, []byte("the store at 8"), 0o600)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	names := []string{}
	for _, f := range m.Files {
		names = append(names, f.Name)
	}
	if len(names) != 2 || names[0] != backup.StateName || names[1] != backup.StoreName {
		t.Fatalf("archived %v", names)
	}
	restored := filepath.Join(t.TempDir(), "restored")
	if _, err := backup.Restore(bytes.NewReader(buf.Bytes()), restored); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(restored, backup.StateName))
	if err != nil || string(b) != "the state at 5" {
		t.Fatalf("restored state %q, %v", b, err)
	}
	for _, p := range []string{filepath.Join(restored, backup.StateName), filepath.Dir(filepath.Join(restored, backup.StateName))} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if want := os.FileMode(0o600); fi.IsDir() {
			if fi.Mode().Perm() != 0o700 {
				t.Errorf("%s: mode %v", p, fi.Mode().Perm())
			}
		} else if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v", p, fi.Mode().Perm())
		}
	}
	if stale, _ := filepath.Glob(filepath.Join(dir, backup.TempPattern)); len(stale) != 0 {
		t.Fatalf("copies left behind: %v", stale)
	}

	buf.Reset()
	m, err = backup.Write(context.Background(), &buf, backup.Source{
		DataDir:   dir,
		CopyState: func(context.Context, string) (bool, error) { return false, nil },
		CopyStore: func(_ context.Context, path string) (uint64, error) { return 8, os.WriteFile(path, []byte("s"), 0o600) },
	})
	if err != nil || len(m.Files) != 1 {
		t.Fatalf("without a state: %v, %+v", err, m.Files)
	}
}
