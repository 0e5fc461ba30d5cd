package main

import (
	"context"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/usagelog"
)

const umaskChildEnv = "TALLY_SERVE_UMASK_CHILD"

func testServeConfig() serveConfig {
	return serveConfig{Addr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Store: "embedded", MaxBodyBytes: 1 << 20, UploadLease: 30 * time.Second}
}

// serveOnce runs serve on a data directory that is expected to be refused before it listens.
func serveRefusal(t *testing.T, g *globalFlags, cfg serveConfig) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	logs := &syncBuffer{}
	cfg.onReady = func(string, string) { cancel() } // started after all: stop it, the caller fails
	return serve(ctx, slog.New(slog.NewTextHandler(logs, nil)), g, cfg)
}

// TestServeDataDirIsOwnerOnlyUnderAnyUmask runs the real server in a child process with umask
// 0, writes through it, and finds every directory of the data directory 0700 and every file
// 0600, while it runs (the store's -wal and -shm exist then) and after it stopped (the
// projection snapshot is written then).
func TestServeDataDirIsOwnerOnlyUnderAnyUmask(t *testing.T) {
	if os.Getenv(umaskChildEnv) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestServeDataDirIsOwnerOnlyUnderAnyUmask$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), umaskChildEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestServeDataDirIsOwnerOnlyUnderAnyUmask") {
			t.Fatalf("child with umask 0: %v\n%s", err, out)
		}
		return
	}
	syscall.Umask(0)
	dataDir := filepath.Join(t.TempDir(), "data")
	g := &globalFlags{DataDir: dataDir}
	base, stop := startServe(t, g, testServeConfig(), &syncBuffer{})
	tok, err := g.adminToken()
	if err != nil {
		t.Fatal(err)
	}
	admin := httpapi.NewAdminClient(base.Admin, tok, nil)
	p, err := admin.CreateProduct(t.Context(), "P")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateKey(t.Context(), p.ID); err != nil {
		t.Fatal(err)
	}
	seen := checkTreeOwnerOnly(t, dataDir)
	for _, want := range []string{"admin.token", usagelog.CurrentKeyFile, "events/events.db", "events/events.db-wal", "events/events.db-shm", "events/LOCK"} {
		if !seen[want] {
			t.Errorf("%s missing while serving (saw %v)", want, seen)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if seen := checkTreeOwnerOnly(t, dataDir); !seen["readmodels/state.db"] {
		t.Errorf("no projection snapshot after stopping (saw %v)", seen)
	}
}

// checkTreeOwnerOnly walks dir and reports every directory not 0700 and every file not 0600;
// it returns the relative paths it saw.
func checkTreeOwnerOnly(t *testing.T, dir string) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		seen[rel] = true
		want := fs.FileMode(0o600)
		if fi.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want || fi.Mode()&fs.ModeSymlink != 0 {
			t.Errorf("%s has mode %v, want %04o", rel, fi.Mode(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return seen
}

// TestServeRefusesLooseDataDirAndSecrets: a data directory open to group or others, a secret
// file readable by them, or a symlink in place of a secret stops serve at start with a message
// naming the file and the chmod that fixes it; nothing is created or changed.
func TestServeRefusesLooseDataDirAndSecrets(t *testing.T) {
	privateKey := func(t *testing.T, path string, mode os.FileMode) {
		t.Helper()
		k, err := usagelog.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		b, err := usagelog.MarshalPrivateKeyPEM(k)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
	const goodToken = "k7Qx9Lm2Vb4Np8Rs1Tz6Wc3Yd5"
	cases := []struct {
		name    string
		prepare func(t *testing.T, dir string) (rsaKeys []string)
		want    func(dir string) string
	}{
		{"data directory 0755", func(t *testing.T, dir string) []string {
			must(t, os.Chmod(dir, 0o755))
			return nil
		}, func(dir string) string { return "chmod 700 " + dir }},
		{"data directory 0701", func(t *testing.T, dir string) []string {
			must(t, os.Chmod(dir, 0o701))
			return nil
		}, func(dir string) string { return "chmod 700 " + dir }},
		{"admin token 0644", func(t *testing.T, dir string) []string {
			must(t, os.WriteFile(filepath.Join(dir, "admin.token"), []byte(goodToken), 0o600))
			must(t, os.Chmod(filepath.Join(dir, "admin.token"), 0o644))
			return nil
		}, func(dir string) string { return "chmod 600 " + filepath.Join(dir, "admin.token") }},
		{"admin token group-writable", func(t *testing.T, dir string) []string {
			must(t, os.WriteFile(filepath.Join(dir, "admin.token"), []byte(goodToken), 0o600))
			must(t, os.Chmod(filepath.Join(dir, "admin.token"), 0o620))
			return nil
		}, func(dir string) string { return "chmod 600 " + filepath.Join(dir, "admin.token") }},
		{"admin token a symlink to a private file", func(t *testing.T, dir string) []string {
			target := filepath.Join(t.TempDir(), "token")
			must(t, os.WriteFile(target, []byte(goodToken), 0o600))
			must(t, os.Symlink(target, filepath.Join(dir, "admin.token")))
			return nil
		}, func(dir string) string { return filepath.Join(dir, "admin.token") + " is a symlink" }},
		{"current RSA key 0640", func(t *testing.T, dir string) []string {
			privateKey(t, filepath.Join(dir, usagelog.CurrentKeyFile), 0o640)
			return nil
		}, func(dir string) string { return "chmod 600 " + filepath.Join(dir, usagelog.CurrentKeyFile) }},
		{"older RSA key 0604", func(t *testing.T, dir string) []string {
			privateKey(t, filepath.Join(dir, usagelog.CurrentKeyFile), 0o600)
			privateKey(t, filepath.Join(dir, "rsa-private-2025.pem"), 0o604)
			return nil
		}, func(dir string) string { return "chmod 600 " + filepath.Join(dir, "rsa-private-2025.pem") }},
		{"RSA key a symlink", func(t *testing.T, dir string) []string {
			target := filepath.Join(t.TempDir(), "key.pem")
			privateKey(t, target, 0o600)
			must(t, os.Symlink(target, filepath.Join(dir, usagelog.CurrentKeyFile)))
			return nil
		}, func(dir string) string { return filepath.Join(dir, usagelog.CurrentKeyFile) + " is a symlink" }},
		{"--rsa-key 0644", func(t *testing.T, dir string) []string {
			key := filepath.Join(t.TempDir(), "key.pem")
			privateKey(t, key, 0o644)
			return []string{key}
		}, func(dir string) string { return "--rsa-key: " }},
		{"--rsa-key a symlink to a 0644 file", func(t *testing.T, dir string) []string {
			keyDir := t.TempDir()
			privateKey(t, filepath.Join(keyDir, "real.pem"), 0o644)
			must(t, os.Symlink(filepath.Join(keyDir, "real.pem"), filepath.Join(keyDir, "key.pem")))
			return []string{filepath.Join(keyDir, "key.pem")}
		}, func(dir string) string { return "key.pem is a symlink" }},
		{"--rsa-key a symlink to an owner-only file", func(t *testing.T, dir string) []string {
			keyDir := t.TempDir()
			privateKey(t, filepath.Join(keyDir, "real.pem"), 0o600)
			must(t, os.Symlink(filepath.Join(keyDir, "real.pem"), filepath.Join(keyDir, "key.pem")))
			return []string{filepath.Join(keyDir, "key.pem")}
		}, func(dir string) string { return "key.pem is a symlink" }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := privateTempDir(t)
			rsaKeys := tc.prepare(t, dir)
			before := listTree(t, dir)
			cfg := testServeConfig()
			cfg.RSAKeys = rsaKeys
			err := serveRefusal(t, &globalFlags{DataDir: dir}, cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want(dir)) {
				t.Fatalf("serve: %v; want an error containing %q", err, tc.want(dir))
			}
			if after := listTree(t, dir); after != before {
				t.Errorf("the refusal changed the data directory:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// TestServeAcceptsAPrivateDataDirAndRSAKey is the happy path of the checks above: an
// owner-only data directory with an owner-only admin token, and an owner-only --rsa-key file.
func TestServeAcceptsAPrivateDataDirAndRSAKey(t *testing.T) {
	dir := privateTempDir(t)
	tok := "Zq3xV9mK2pL7nB4cR8tY1wE6uI5oA0sD" // 32 characters
	must(t, os.WriteFile(filepath.Join(dir, "admin.token"), []byte(tok+"\n"), 0o600))
	keyDir := t.TempDir()
	k, err := usagelog.GenerateKey()
	must(t, err)
	b, err := usagelog.MarshalPrivateKeyPEM(k)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(keyDir, "key.pem"), b, 0o400))
	cfg := testServeConfig()
	cfg.RSAKeys = []string{filepath.Join(keyDir, "key.pem")}
	g := &globalFlags{DataDir: dir}
	base, stop := startServe(t, g, cfg, &syncBuffer{})
	if _, err := httpapi.NewAdminClient(base.Admin, tok, nil).ListProducts(t.Context()); err != nil {
		t.Errorf("admin call with the file's token: %v", err)
	}
	must(t, stop())
}

// TestServeRefusesASymlinkedDataDir: a data directory given as a symlink, even to an
// owner-only directory, stops serve at start, naming the directory to give instead.
func TestServeRefusesASymlinkedDataDir(t *testing.T) {
	real := privateTempDir(t)
	link := filepath.Join(t.TempDir(), "data")
	must(t, os.Symlink(real, link))
	before := listTree(t, real)
	err := serveRefusal(t, &globalFlags{DataDir: link}, testServeConfig())
	if err == nil || !strings.Contains(err.Error(), link+" is a symlink") || !strings.Contains(err.Error(), "--data-dir "+real) {
		t.Fatalf("serve on a symlinked data directory: %v", err)
	}
	if after := listTree(t, real); after != before {
		t.Errorf("the refusal changed the data directory:\nbefore %s\nafter  %s", before, after)
	}
}

// TestServeRefusesWeakAdminTokens: a token from the flag (or TALLY_ADMIN_TOKEN) or from the
// file that cannot hold 128 bits stops serve at start, saying why.
func TestServeRefusesWeakAdminTokens(t *testing.T) {
	weak := map[string]string{
		"a":                                 "too weak: 1 hex digits",
		"x":                                 "too weak: 1 characters",
		"0123456789abcdef0123456789abcde":   "31 hex digits",
		"AbCdEfGhIjKlMnOpQrStU":             "21 characters",
		"AbCdEfGhIjKlMnOpQrStU==":           "21 characters",
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa":  "only 1 different characters",
		"ghghghghghghghghghghghgh":          "only 2 different characters",
		"correct horse battery staple":      `character ' ' is not allowed`,
		"Zq3xV9mK2pL7nB4cR8tY1wE6uI5oA0sD!": `character '!' is not allowed`,
	}
	for tok, want := range weak {
		t.Run("flag "+tok, func(t *testing.T) {
			err := serveRefusal(t, &globalFlags{DataDir: privateTempDir(t), AdminToken: tok}, testServeConfig())
			if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "--admin-token") {
				t.Fatalf("serve with admin token %q: %v; want %q", tok, err, want)
			}
		})
	}
	t.Run("file", func(t *testing.T) {
		dir := privateTempDir(t)
		file := filepath.Join(dir, "admin.token")
		must(t, os.WriteFile(file, []byte("a\n"), 0o600))
		err := serveRefusal(t, &globalFlags{DataDir: dir}, testServeConfig())
		if err == nil || !strings.Contains(err.Error(), file+" is too weak") {
			t.Fatalf("serve with a one-character token file: %v", err)
		}
	})
	for _, tok := range []string{
		"0123456789abcdef0123456789ABCDEF",             // 32 hex digits
		"k7Qx9Lm2Vb4Np8Rs1Tz6Wc",                       // 22 base64 characters
		"k7Qx9Lm2Vb4Np8Rs1Tz6Wc3Yd5/+aZ0rT1uV2wX3yZ==", // standard base64 with padding
		"k7Qx9Lm2Vb4Np8Rs1Tz6Wc3Yd5-_aZ0rT1uV2wX3yZ.~", // URL-safe alphabet and . ~
	} {
		if err := checkAdminTokenStrength(tok, "test"); err != nil {
			t.Errorf("token %q refused: %v", tok, err)
		}
	}
}

// listTree describes dir's entries with their modes, to compare before and after.
func listTree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		b.WriteString(rel + " " + fi.Mode().String() + "; ")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// privateTempDir is a fresh owner-only directory: t.TempDir makes its directories with mode
// 0777 less the umask, which serve refuses as a data directory.
func privateTempDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	must(t, os.Mkdir(dir, 0o700))
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
