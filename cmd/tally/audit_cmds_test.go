package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestAuditCommandsShowAMigrationsProgress runs the real binary's offline `tally verify` on a
// data directory whose event store an earlier build wrote (schema 1, the legacy-992cfab
// fixture): the store is migrated on open, which takes minutes on a large store, so the
// command must say so on stderr, and then verify the migrated store.
func TestAuditCommandsShowAMigrationsProgress(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildTally(t)
	dataDir := t.TempDir()
	events := filepath.Join(dataDir, "events")
	if err := os.MkdirAll(events, 0o700); err != nil {
		t.Fatal(err)
	}
	fixture := filepath.Join("..", "..", "adapters", "httpapi", "testdata", "legacy-992cfab", "store")
	for _, name := range []string{"events.db", "events.db-wal"} {
		b, err := os.ReadFile(filepath.Join(fixture, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(events, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "verify", "--data-dir", dataDir)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tally verify: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	for _, want := range []string{"migrating the database from schema 1 to 2", "migrated the database to schema 2"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr does not say %q:\n%s", want, stderr.String())
		}
	}
	if !strings.Contains(stdout.String(), "ok: 13 events") {
		t.Errorf("verify after the migration:\n%s", stdout.String())
	}
	// A second run opens a store of the current schema: nothing to migrate, nothing said.
	again, err := exec.Command(bin, "verify", "--data-dir", dataDir).CombinedOutput()
	if err != nil || strings.Contains(string(again), "migrat") {
		t.Errorf("second verify (%v):\n%s", err, again)
	}
}
