package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// buildTally builds the tally binary (with the race detector when the test runs with it, so
// that the build reuses the test's compiled packages) and returns its path.
func buildTally(t testing.TB) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to build tally: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "tally")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/tallyledger/tally/cmd/tally")
	if out, err := exec.Command(goTool, args...).CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

// TestReadmeQuickStart pastes the README's quick start into bash, as written, against the built
// binary in an empty directory. Only two things differ from a reader's paste: the binary is
// copied rather than built again, and the listeners take free ports rather than 8080 and 8081
// (through TALLY_ADDR, TALLY_ADMIN_ADDR and TALLY_SERVER, and in the script's URLs), so that
// the test runs beside anything else on the machine. The script must succeed (bash -e), its
// calls must succeed, and the server must have stopped cleanly.
func TestReadmeQuickStart(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed to run the README's quick start (.ci/run installs it)")
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)## Quick start\n.*?```sh\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("the README has no quick start block")
	}
	script := string(m[1])
	const build = "go build -o tally ./cmd/tally\n"
	if !strings.HasPrefix(script, build) {
		t.Fatalf("the quick start does not begin with %q:\n%s", build, script)
	}
	bin := buildTally(t)
	public, admin := freePort(t), freePort(t)
	script = "cp " + bin + " tally\n" + strings.TrimPrefix(script, build)
	script = strings.ReplaceAll(script, "127.0.0.1:8080", "127.0.0.1:"+public)
	script = strings.ReplaceAll(script, "127.0.0.1:8081", "127.0.0.1:"+admin)

	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-e", "-u", "-o", "pipefail", "-c", script)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TALLY_") { // a reader's shell has none set
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env,
		"TALLY_ADDR=127.0.0.1:"+public, "TALLY_ADMIN_ADDR=127.0.0.1:"+admin, "TALLY_SERVER=http://127.0.0.1:"+admin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "tally.log"))
		t.Fatalf("the quick start failed: %v\n%s\nserver log:\n%s", err, out.String(), log)
	}
	got := out.String()
	for _, want := range []string{
		`{"result":0,"message":null,"id":1}`,
		`{"result":0,"message":null}`,
		`"name":"seats","stringValue":"","intValue":1`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the quick start's output lacks %s:\n%s", want, got)
		}
	}
	log, err := os.ReadFile(filepath.Join(dir, "tally.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), `msg="shutting down"`) || strings.Contains(string(log), "level=ERROR") {
		t.Errorf("the server did not stop cleanly:\n%s", log)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "tally-public-key.xml")); err != nil || !bytes.Contains(b, []byte("<RSAKeyValue>")) {
		t.Errorf("the public key was not exported: %v %q", err, b)
	}
}
