package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/kurrentdb/kurrenttest"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/cmd/tally/internal/backup"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
)

// upTo reads a store's events up to and including last only.
type upTo struct {
	store eventstore.Store
	last  eventstore.Position
}

func (u upTo) ReadAll(ctx context.Context, from eventstore.Position, max int) ([]eventstore.RecordedEvent, error) {
	evs, err := u.store.ReadAll(ctx, from, max)
	for i, e := range evs {
		if e.Position > u.last {
			return evs[:i], err
		}
	}
	return evs, err
}

// rebuildDir folds the events of a stopped data directory's store, up to last (0: all).
func rebuildDir(t *testing.T, dataDir string, last eventstore.Position) *state.State {
	t.Helper()
	s, err := embedded.Open(t.Context(), filepath.Join(dataDir, "events"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var r projections.AllReader = s
	if last > 0 {
		r = upTo{store: s, last: last}
	}
	st, err := projections.Rebuild(t.Context(), r, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestBackupWhileServingThenRestoreAndVerify runs the real server, keeps eight clients
// incrementing while `tally backup` fetches an archive, and goes on writing after it. Restored
// into a fresh directory, the data directory is owner-only, `tally verify` passes there, its
// state equals the source's state at the backup's position (folded from the source's own
// events once it stopped), and a server started on it serves those values.
func TestBackupWhileServingThenRestoreAndVerify(t *testing.T) {
	dataDir := privateTempDir(t)
	g := &globalFlags{DataDir: dataDir}
	base, stop := startServe(t, g, testServeConfig(), &syncBuffer{})
	stopped := false
	defer func() {
		if !stopped {
			_ = stop()
		}
	}()
	cli := func(args ...string) (string, error) {
		t.Helper()
		return run(t, append([]string{"--server", base.Admin, "--data-dir", dataDir}, args...)...)
	}
	mustCLI := func(args ...string) string { // stdout only
		t.Helper()
		root := newRootCommand()
		var out, errOut bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&errOut)
		root.SetArgs(append([]string{"--server", base.Admin, "--data-dir", dataDir}, args...))
		if err := root.Execute(); err != nil {
			t.Fatalf("tally %v: %v\n%s", args, err, errOut.String())
		}
		return strings.TrimSpace(out.String())
	}
	product := mustCLI("product", "create", "--name", "App")
	key := mustCLI("key", "create", "--product", product)
	token := mustCLI("token", "create", "--permissions", "all", "--product-lock", "0", "--key-lock", "0", "--feature-lock", "0")
	owner := url.Values{"token": {token}, "ProductId": {product}, "Key": {key}}
	const objects = 8
	ids := make([]string, objects)
	for i := range ids {
		add := call(t, base.Public, "AddDataObjectToKey", with(owner, "Name", fmt.Sprintf("o%d", i), "IntValue", "0"))
		if add["result"] != float64(0) {
			t.Fatalf("AddDataObjectToKey: %v", add)
		}
		ids[i] = fmt.Sprint(add["id"])
	}

	ctx, stopWriting := context.WithCancel(t.Context())
	var acked atomic.Int64
	var wg sync.WaitGroup
	for i := range objects {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				// Not call: it may t.Fatal, which only the test's goroutine may do.
				r, err := http.PostForm(base.Public+"/api/data/IncrementIntValueToKey", with(owner, "Id", ids[i], "IntValue", "1"))
				if err != nil {
					t.Errorf("increment: %v", err)
					return
				}
				b, _ := io.ReadAll(r.Body)
				r.Body.Close()
				if r.StatusCode != http.StatusOK || !bytes.Contains(b, []byte(`"result":0`)) {
					t.Errorf("increment: %d %s", r.StatusCode, b)
					return
				}
				acked.Add(1)
			}
		}()
	}
	// Some writes before the backup, and more during and after it.
	for acked.Load() < 50 {
		call(t, base.Public, "ListDataObjectsToKey", owner)
	}
	archive := filepath.Join(t.TempDir(), "tally.tar.gz")
	out := mustCLI("backup", "--to", archive)
	atBackup := acked.Load()
	for acked.Load() < atBackup+50 {
		call(t, base.Public, "ListDataObjectsToKey", owner)
	}
	stopWriting()
	wg.Wait()
	if _, err := cli("backup", "--to", archive); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("a second backup over the same file: %v", err)
	}
	stopped = true
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(archive)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("the archive has mode %04o, want 0600", fi.Mode().Perm())
	}
	m, err := checkArchive(archive)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, fmt.Sprintf("backup at position %d", m.Position)) {
		t.Errorf("backup said %q; manifest position %d", out, m.Position)
	}
	source := rebuildDir(t, dataDir, 0)
	if source.Position <= eventstore.Position(m.Position) {
		t.Fatalf("no write after the backup: source at %d, backup at %d", source.Position, m.Position)
	}

	restored := filepath.Join(t.TempDir(), "restored")
	if out, err := run(t, "restore", "--from", archive, "--data-dir", restored); err != nil || !strings.Contains(out, fmt.Sprintf("at position %d", m.Position)) {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	seen := checkTreeOwnerOnly(t, restored)
	for _, want := range []string{"admin.token", "rsa-private.pem", "readmodels/state.db", "events/events.db"} {
		if !seen[want] {
			t.Errorf("restored directory lacks %s (has %v)", want, seen)
		}
	}
	for _, name := range []string{"admin.token", "rsa-private.pem"} {
		a, _ := os.ReadFile(filepath.Join(dataDir, name))
		b, _ := os.ReadFile(filepath.Join(restored, name))
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("restored %s differs from the source's", name)
		}
	}
	if out, err := run(t, "verify", "--data-dir", restored); err != nil || !strings.Contains(out, "ok: ") {
		t.Fatalf("verify on the restored directory: %v\n%s", err, out)
	}
	want := rebuildDir(t, dataDir, eventstore.Position(m.Position))
	got := rebuildDir(t, restored, 0)
	if d := state.Diff(got, want); len(d) > 0 || got.Position != want.Position || got.Position != eventstore.Position(m.Position) {
		t.Fatalf("restored state (position %d) vs source at the backup's position %d: %v", got.Position, want.Position, d)
	}
	var sum int64
	for _, o := range got.Objects {
		sum += int64(o.IntValue)
	}
	if sum == 0 {
		t.Fatal("the backup holds no increment")
	}

	// A server on the restored directory serves the backup's values with the backup's token.
	base2, stop2 := startServe(t, &globalFlags{DataDir: restored}, testServeConfig(), &syncBuffer{})
	list := call(t, base2.Public, "ListDataObjectsToKey", owner)
	objs, _ := list["dataObjects"].([]any)
	if len(objs) != objects {
		t.Fatalf("restored server lists %v", list)
	}
	for _, o := range objs {
		obj := o.(map[string]any)
		var id int64
		fmt.Sscan(fmt.Sprint(obj["id"]), &id)
		if obj["intValue"] != float64(want.Objects[id].IntValue) {
			t.Errorf("object %d: restored server says %v, the source at the backup's position %d", id, obj["intValue"], want.Objects[id].IntValue)
		}
	}
	must(t, stop2())

	// restore never writes over a data directory.
	if _, err := run(t, "restore", "--from", archive, "--data-dir", restored); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("restore over a data directory: %v", err)
	}
}

// TestBackupRefusals: a backup needs the admin token, is refused on a store it does not cover,
// and one cut short, or altered, is refused by restore, which then leaves nothing behind.
func TestBackupRefusals(t *testing.T) {
	dataDir := privateTempDir(t)
	base, stop := startServe(t, &globalFlags{DataDir: dataDir}, testServeConfig(), &syncBuffer{})
	defer stop()
	var ae *httpapi.AdminError
	if _, err := httpapi.NewAdminClient(base.Admin, "wrong", nil).Backup(t.Context(), io.Discard); !errors.As(err, &ae) || ae.Status != 401 {
		t.Errorf("backup with a wrong token: %v", err)
	}
	tok, err := (&globalFlags{DataDir: dataDir}).adminToken()
	must(t, err)
	var whole bytes.Buffer
	if _, err := httpapi.NewAdminClient(base.Admin, tok, nil).Backup(t.Context(), &whole); err != nil {
		t.Fatal(err)
	}

	restoreBytes := func(b []byte) error {
		dir := filepath.Join(t.TempDir(), "r")
		_, err := backup.Restore(bytes.NewReader(b), dir)
		if _, serr := os.Stat(dir); err != nil && !errors.Is(serr, os.ErrNotExist) {
			t.Errorf("a refused restore left %s behind", dir)
		}
		return err
	}
	if err := restoreBytes(whole.Bytes()); err != nil {
		t.Fatalf("the whole archive: %v", err)
	}
	if err := restoreBytes(whole.Bytes()[:whole.Len()*2/3]); err == nil {
		t.Error("an archive cut short was restored")
	}
	// Rewrite the archive without its manifest, and with one file changed.
	entries := readTar(t, whole.Bytes())
	if err := restoreBytes(writeTar(t, entries[:len(entries)-1])); err == nil || !strings.Contains(err.Error(), "no manifest") {
		t.Errorf("an archive without manifest: %v", err)
	}
	altered := append([]tarEntry(nil), entries...)
	altered[0].body = append([]byte("x"), altered[0].body...)
	if err := restoreBytes(writeTar(t, altered)); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("an altered archive: %v", err)
	}
	evil := append([]tarEntry{{name: "../escape", body: []byte("x")}}, entries...)
	if err := restoreBytes(writeTar(t, evil)); err == nil || !strings.Contains(err.Error(), "unexpected file") {
		t.Errorf("an archive with a path outside: %v", err)
	}
	// An archive whose manifest names another position than its store holds: tally restore
	// refuses it after unpacking and takes back what it wrote.
	var m backup.Manifest
	last := entries[len(entries)-1]
	must(t, json.Unmarshal(last.body, &m))
	m.Position++
	wrongPosition := append([]tarEntry(nil), entries[:len(entries)-1]...)
	mb, err := json.Marshal(m)
	must(t, err)
	wrongPosition = append(wrongPosition, tarEntry{name: last.name, body: mb})
	archive := filepath.Join(t.TempDir(), "wrong.tar.gz")
	must(t, os.WriteFile(archive, writeTar(t, wrongPosition), 0o600))
	target := privateTempDir(t)
	if out, err := run(t, "restore", "--from", archive, "--data-dir", target); err == nil || !strings.Contains(err.Error(), "the manifest says") {
		t.Errorf("restore of an archive with a wrong position: %v\n%s", err, out)
	}
	if left, _ := os.ReadDir(target); len(left) != 0 {
		t.Errorf("the refused restore left %d entries in %s", len(left), target)
	}
	// HEAD would copy the store for nothing: 405.
	req, err := http.NewRequest(http.MethodHead, base.Admin+"/admin/v1/backup", nil)
	must(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("HEAD /admin/v1/backup: %d", resp.StatusCode)
	}

	// A non-empty directory is refused and left as it was.
	full := t.TempDir()
	must(t, os.WriteFile(filepath.Join(full, "keep"), []byte("k"), 0o600))
	if _, err := backup.Restore(bytes.NewReader(whole.Bytes()), full); err == nil {
		t.Error("restored into a non-empty directory")
	}
	if b, err := os.ReadFile(filepath.Join(full, "keep")); err != nil || string(b) != "k" {
		t.Error("the refused restore touched the directory")
	}
}

// TestBackupCoversTheEmbeddedStoreOnly: on KurrentDB the admin API answers 501 and says so;
// KurrentDB is backed up with its own tools.
func TestBackupCoversTheEmbeddedStoreOnly(t *testing.T) {
	server := kurrenttest.Start(t)
	cfg := testServeConfig()
	cfg.Store, cfg.KurrentURL = "kurrentdb", server.URL()
	dataDir := privateTempDir(t)
	base, stop := startServe(t, &globalFlags{DataDir: dataDir}, cfg, &syncBuffer{})
	defer stop()
	archive := filepath.Join(t.TempDir(), "b.tar.gz")
	_, err := run(t, "backup", "--to", archive, "--server", base.Admin, "--data-dir", dataDir)
	if err == nil || !strings.Contains(err.Error(), "embedded store only") || !strings.Contains(err.Error(), "501") {
		t.Fatalf("backup on KurrentDB: %v", err)
	}
	if _, serr := os.Stat(archive); !errors.Is(serr, os.ErrNotExist) {
		t.Error("a refused backup left a file")
	}
}

type tarEntry struct {
	name string
	body []byte
}

func readTar(t *testing.T, b []byte) []tarEntry {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(b))
	must(t, err)
	tr := tar.NewReader(gz)
	var out []tarEntry
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		must(t, err)
		body, err := io.ReadAll(tr)
		must(t, err)
		out = append(out, tarEntry{hdr.Name, body})
	}
}

func writeTar(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		must(t, tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o600, Size: int64(len(e.body)), Typeflag: tar.TypeReg}))
		_, err := tw.Write(e.body)
		must(t, err)
	}
	must(t, tw.Close())
	must(t, gz.Close())
	return buf.Bytes()
}

// blockingWriter signals its first write and then waits to be released.
type blockingWriter struct {
	once    sync.Once
	started chan struct{}
	release chan struct{}
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	b.once.Do(func() { close(b.started); <-b.release })
	return len(p), nil
}

// TestOneBackupAtATime: a copy left by a crashed backup is removed when the server starts;
// while a backup is being sent, a second one is refused with ErrBackupRunning (409 on the
// admin API) instead of making a second copy of the store.
func TestOneBackupAtATime(t *testing.T) {
	dir := privateTempDir(t)
	store, err := embedded.Open(t.Context(), filepath.Join(dir, "events"))
	must(t, err)
	defer store.Close()
	stale := filepath.Join(dir, ".backup-left-by-a-crash.db")
	must(t, os.WriteFile(stale, []byte("x"), 0o600))
	fn := newBackupFunc(dir, store, nil, slog.New(slog.DiscardHandler))
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a stale copy survived the server's start: %v", err)
	}
	w := &blockingWriter{started: make(chan struct{}), release: make(chan struct{})}
	first := make(chan error, 1)
	go func() { first <- fn(t.Context(), w) }()
	<-w.started
	if err := fn(t.Context(), io.Discard); !errors.Is(err, httpapi.ErrBackupRunning) {
		t.Errorf("a second backup while one runs: %v", err)
	}
	close(w.release)
	must(t, <-first)
	if err := fn(t.Context(), io.Discard); err != nil {
		t.Errorf("a backup after the first ended: %v", err)
	}
	// No copy of the store is left in the data directory.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".backup-") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

// TestBackupNotesExternalKeys: keys given with --rsa-key are not in the archive, and the
// backup says so, in its manifest and on its output.
func TestBackupNotesExternalKeys(t *testing.T) {
	dataDir := privateTempDir(t)
	keyDir := t.TempDir()
	k, err := usagelog.GenerateKey()
	must(t, err)
	keyFile := filepath.Join(keyDir, "key.pem")
	must(t, usagelog.SavePrivateKeyFile(keyFile, k))
	cfg := testServeConfig()
	cfg.RSAKeys = []string{keyFile}
	base, stop := startServe(t, &globalFlags{DataDir: dataDir}, cfg, &syncBuffer{})
	defer stop()
	archive := filepath.Join(t.TempDir(), "b.tar.gz")
	out, err := run(t, "backup", "--to", archive, "--server", base.Admin, "--data-dir", dataDir)
	if err != nil || !strings.Contains(out, "note: the server was started with --rsa-key "+keyFile) {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	m, err := checkArchive(archive)
	must(t, err)
	for _, f := range m.Files {
		if strings.HasPrefix(f.Name, "rsa-private") {
			t.Errorf("the archive holds %s", f.Name)
		}
	}
	if len(m.Notes) != 1 {
		t.Errorf("manifest notes: %v", m.Notes)
	}
}
