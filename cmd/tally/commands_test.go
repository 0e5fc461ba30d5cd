package main

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tallyledger/tally/adapters/usagelog"
)

// run executes the real command tree in-process, as `tally args...`.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestExportAppendInspect(t *testing.T) {
	tmp := t.TempDir()
	dataDir := filepath.Join(tmp, "data")

	// No key yet: export refuses and creates nothing.
	if _, err := run(t, "rsa", "export", "--data-dir", dataDir); err == nil || !strings.Contains(err.Error(), "no key") {
		t.Fatalf("export without a key: %v", err)
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Fatal("export created the data directory")
	}

	ring, err := usagelog.LoadOrCreateKeyRing(dataDir) // what the server does on first start
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dataDir, usagelog.CurrentKeyFile)
	xmlOut, err := run(t, "rsa", "export", "--format", "xml", "--data-dir", dataDir)
	if err != nil {
		t.Fatal(err)
	}
	pemOut, err := run(t, "rsa", "export", "--format", "pem", "--data-dir", dataDir)
	if err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string]string{"xml": xmlOut, "pem": pemOut} {
		pub, err := usagelog.ParsePublicKey([]byte(text))
		if err != nil || !pub.Equal(ring.Public()) {
			t.Fatalf("exported %s is not the current public key: %v", name, err)
		}
	}
	if _, err := run(t, "rsa", "export", "--format", "der", "--data-dir", dataDir); err == nil {
		t.Error("unknown format accepted")
	}
	xmlFile, pemFile := filepath.Join(tmp, "pub.xml"), filepath.Join(tmp, "pub.pem")
	if err := os.WriteFile(xmlFile, []byte(xmlOut), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pemFile, []byte(pemOut), 0o644); err != nil {
		t.Fatal(err)
	}

	logFile := filepath.Join(tmp, "usage", "3.ABCD-usage.skm")
	if err := os.MkdirAll(filepath.Dir(logFile), 0o755); err != nil {
		t.Fatal(err)
	}
	steps := [][]string{
		{"--public-key", xmlFile, "--object", "5", "--amount", "3", "--timestamp", "1700000000"},
		{"--public-key", pemFile, "--object", "5", "--amount", "-2", "--timestamp", "1700000010"},
		{"--public-key", xmlFile, "--object", "7", "--amount", "1", "--quirks", "--timestamp", "1700000020"},
		{"--public-key", xmlFile, "--object", "7", "--amount", "-1", "--quirks", "--timestamp", "1700000030"},
	}
	var layers []string
	for _, s := range steps {
		out, err := run(t, append([]string{"log", "append", "--file", logFile}, s...)...)
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`appended layer ([0-9a-f]{64})`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("append printed %q", out)
		}
		layers = append(layers, m[1])
	}

	want := strings.Join([]string{
		layers[0] + " 2023-11-14T22:13:20Z increment object=5 amount=3",
		layers[1] + " 2023-11-14T22:13:30Z decrement object=5 amount=2",
		layers[2] + " 2023-11-14T22:13:40Z increment object=7 amount=7",
		layers[3] + " 2023-11-14T22:13:50Z decrement object=7 amount=7",
	}, "\n") + "\n"
	got, err := run(t, "log", "inspect", "--private-key", keyFile, logFile)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("inspect printed\n%s\nwant\n%s", got, want)
	}

	// The base64 form, as uploaded, reads the same.
	raw, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	b64File := filepath.Join(tmp, "log.b64")
	if err := os.WriteFile(b64File, []byte(base64.StdEncoding.EncodeToString(raw)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := run(t, "log", "inspect", "--private-key", keyFile, b64File); err != nil || got != want {
		t.Fatalf("inspect of the base64 form: %v\n%s", err, got)
	}
	// append --base64 keeps the file as base64 text.
	if _, err := run(t, "log", "append", "--base64", "--file", b64File, "--public-key", xmlFile, "--object", "9", "--amount", "4", "--timestamp", "1700000040"); err != nil {
		t.Fatal(err)
	}
	text, _ := os.ReadFile(b64File)
	if _, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(text))); err != nil {
		t.Fatalf("append --base64 wrote non-base64: %v", err)
	}
	got, err = run(t, "log", "inspect", "--private-key", keyFile, b64File)
	if err != nil || !strings.HasPrefix(got, want) || !strings.HasSuffix(got, " 2023-11-14T22:14:00Z increment object=9 amount=4\n") {
		t.Fatalf("inspect after append --base64: %v\n%s", err, got)
	}

	// The wrong key: corrupted, reported as an error.
	other := filepath.Join(tmp, "other.pem")
	otherKey, err := usagelog.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := usagelog.SavePrivateKeyFile(other, otherKey); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, "log", "inspect", "--private-key", other, logFile); err == nil || !strings.Contains(err.Error(), "corrupted") {
		t.Fatalf("inspect with another key: %v", err)
	}
	// With the old key added for rotation, it reads again.
	if got, err := run(t, "log", "inspect", "--private-key", other, "--private-key", keyFile, logFile); err != nil || got != want {
		t.Fatalf("inspect with two keys: %v", err)
	}
	// Bad inputs to append.
	for _, args := range [][]string{
		{"--public-key", xmlFile, "--object", "0", "--amount", "1"},
		{"--public-key", xmlFile, "--object", "5", "--amount", "0"},
		{"--public-key", keyFile + ".missing", "--object", "5", "--amount", "1"},
		{"--object", "5", "--amount", "1"},
	} {
		if _, err := run(t, append([]string{"log", "append", "--file", logFile}, args...)...); err == nil {
			t.Errorf("log append %v succeeded", args)
		}
	}
}

// TestEnvironmentFillsOnlyGlobalStoreAndServeFlags: TALLY_DATA_DIR reaches any command, while
// a variable named after another command's own flag (TALLY_FORMAT) changes nothing; a flag
// given on the command line wins over its variable.
func TestEnvironmentFillsOnlyGlobalStoreAndServeFlags(t *testing.T) {
	dataDir := t.TempDir()
	key, err := usagelog.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := usagelog.SavePrivateKeyFile(filepath.Join(dataDir, usagelog.CurrentKeyFile), key); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TALLY_DATA_DIR", dataDir)
	t.Setenv("TALLY_FORMAT", "csv") // rsa export's --format takes xml or pem: it must not see this
	out, err := run(t, "rsa", "export")
	if err != nil || !strings.HasPrefix(out, "<RSAKeyValue>") {
		t.Fatalf("rsa export with TALLY_DATA_DIR: %v\n%s", err, out)
	}
	if _, err := run(t, "--data-dir", t.TempDir(), "rsa", "export"); err == nil {
		t.Fatal("the command line's --data-dir did not win over TALLY_DATA_DIR")
	}
	// A server on a shared key (serve --rsa-key, TALLY_RSA_KEY) exports that key.
	shared := filepath.Join(t.TempDir(), "shared.pem")
	other, err := usagelog.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := usagelog.SavePrivateKeyFile(shared, other); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TALLY_RSA_KEY", shared)
	if got, err := run(t, "rsa", "export"); err != nil || got != usagelog.PublicKeyXML(&other.PublicKey)+"\n" {
		t.Fatalf("rsa export with TALLY_RSA_KEY: %v\n%s", err, got)
	}
	if readsEnv(newServeCommand(&globalFlags{}), "log-format") != true || readsEnv(newLogCommand(), "file") {
		t.Fatal("readsEnv: serve's flags read the environment, other commands' own flags do not")
	}
}
