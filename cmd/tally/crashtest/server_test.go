package crashtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds how long a server may take to listen, and then to become ready.
const startTimeout = 60 * time.Second

// buildTally builds cmd/tally into a temporary directory, with the race detector when the test
// itself runs under it.
func buildTally(t *testing.T) string {
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
	out, err := exec.Command(goTool, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

// serverStats is what the servers' logs told, over every run.
type serverStats struct {
	mu sync.Mutex
	// recoveries counts the starts that logged "recovered interrupted uploads", and recovered
	// the uploads they decided.
	recoveries, recovered int
	// committed and aborted count the interrupted uploads recovery completed or discarded.
	committed, aborted   int
	warnings, errorCount int
	notes                []string // level=WARN and level=ERROR lines, the first few
}

var (
	listeningLine = regexp.MustCompile(`msg=listening listener=(public|admin) addr=(\S+)`)
	recoveredLine = regexp.MustCompile(`msg="recovered interrupted uploads" count=(\d+)`)
	decidedLine   = regexp.MustCompile(`msg="recovered an interrupted upload" .*committed=(true|false)`)
)

// logWatcher receives one server's stderr: it copies it to the shared log file and reads what
// the test needs from it.
type logWatcher struct {
	stats   *serverStats
	out     io.Writer // the shared log file, written under outMu
	outMu   *sync.Mutex
	partial []byte
	addr    chan [2]string // a listener's name and address, once each
}

func (w *logWatcher) Write(p []byte) (int, error) {
	w.outMu.Lock()
	_, _ = w.out.Write(p)
	w.outMu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.line(string(w.partial[:i]))
		w.partial = w.partial[i+1:]
	}
	return len(p), nil
}

func (w *logWatcher) line(line string) {
	if m := listeningLine.FindStringSubmatch(line); m != nil {
		select {
		case w.addr <- [2]string{m[1], m[2]}:
		default:
		}
	}
	s := w.stats
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := recoveredLine.FindStringSubmatch(line); m != nil {
		n, _ := strconv.Atoi(m[1])
		s.recoveries++
		s.recovered += n
	}
	if m := decidedLine.FindStringSubmatch(line); m != nil {
		if m[1] == "true" {
			s.committed++
		} else {
			s.aborted++
		}
	}
	warn, fail := strings.Contains(line, "level=WARN"), strings.Contains(line, "level=ERROR")
	if warn {
		s.warnings++
	}
	if fail {
		s.errorCount++
	}
	if (warn || fail) && len(s.notes) < 20 {
		s.notes = append(s.notes, line)
	}
}

// server is one run of `tally serve`.
type server struct {
	cmd    *exec.Cmd
	url    string // the public listener: the Cryptolens API, /readyz
	admin  string // the admin listener: the admin and audit APIs
	exited chan struct{}
	err    error // Wait's result, set before exited is closed
}

// harness runs the binary on one data directory.
type harness struct {
	t       *testing.T
	bin     string
	dataDir string
	logPath string
	logFile *os.File
	logMu   sync.Mutex
	stats   serverStats
	client  *http.Client
}

func newHarness(t *testing.T, bin string) *harness {
	t.Helper()
	root := t.TempDir()
	h := &harness{
		t: t, bin: bin, dataDir: filepath.Join(root, "data"), logPath: filepath.Join(root, "server.log"),
		client: &http.Client{
			Timeout:   60 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: 64},
		},
	}
	f, err := os.Create(h.logPath)
	if err != nil {
		t.Fatal(err)
	}
	h.logFile = f
	t.Cleanup(func() {
		_ = f.Close()
		if t.Failed() {
			t.Logf("last lines of the servers' logs (%s):\n%s", h.logPath, tail(h.logPath, 60))
		}
	})
	return h
}

// start runs `tally serve` on the data directory and returns once it listens.
func (h *harness) start() *server {
	h.t.Helper()
	w := &logWatcher{stats: &h.stats, out: h.logFile, outMu: &h.logMu, addr: make(chan [2]string, 2)}
	cmd := exec.Command(h.bin, "serve", "--data-dir", h.dataDir, "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--log-level", "info")
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		h.t.Fatalf("start tally serve: %v", err)
	}
	s := &server{cmd: cmd, exited: make(chan struct{})}
	go func() {
		s.err = cmd.Wait()
		close(s.exited)
	}()
	h.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-s.exited
	})
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	for s.url == "" || s.admin == "" {
		select {
		case l := <-w.addr:
			if l[0] == "public" {
				s.url = "http://" + l[1]
			} else {
				s.admin = "http://" + l[1]
			}
		case <-s.exited:
			h.t.Fatalf("tally serve exited before listening: %v", s.err)
		case <-deadline.C:
			h.t.Fatalf("tally serve did not listen within %v", startTimeout)
		}
	}
	return s
}

// kill ends the server with SIGKILL: no shutdown, no last snapshot, requests cut mid-way.
func (h *harness) kill(s *server) {
	h.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		h.t.Fatalf("SIGKILL: %v", err)
	}
	<-s.exited
}

// stop ends the server with SIGTERM and expects a clean exit.
func (h *harness) stop(s *server) {
	h.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		h.t.Fatalf("SIGTERM: %v", err)
	}
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	select {
	case <-s.exited:
	case <-deadline.C:
		h.t.Fatalf("tally serve did not stop within %v of SIGTERM", startTimeout)
	}
	if s.err != nil {
		h.t.Fatalf("tally serve after SIGTERM: %v", s.err)
	}
}

// waitReady polls /readyz until the server is ready: the projection caught up and interrupted
// uploads decided. Polling is the only way to wait on another process's state.
func (h *harness) waitReady(s *server) {
	h.t.Helper()
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := h.client.Get(s.url + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("not ready within %v (last: %v)", startTimeout, err)
		}
		select {
		case <-tick.C:
		case <-s.exited:
			h.t.Fatalf("tally serve exited while starting: %v", s.err)
		}
	}
}

// cli runs a tally command against a server and returns its standard output, trimmed.
func (h *harness) cli(s *server, args ...string) string {
	h.t.Helper()
	full := append([]string{"--data-dir", h.dataDir}, args...)
	if s != nil {
		full = append([]string{"--server", s.admin}, full...)
	}
	cmd := exec.Command(h.bin, full...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		h.t.Fatalf("tally %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func (h *harness) adminToken() string {
	h.t.Helper()
	b, err := os.ReadFile(filepath.Join(h.dataDir, "admin.token"))
	if err != nil {
		h.t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// outcome is what a client knows about a call it made.
type outcome int

const (
	// acknowledged: 200 with result 0; the change must be applied exactly once.
	acknowledged outcome = iota
	// refused: a Cryptolens error; the call must have changed nothing.
	refused
	// undelivered: the connection was refused, so the request never reached a server.
	undelivered
	// unknown: the connection died; the call is applied entirely or not at all.
	unknown
)

func (o outcome) String() string {
	return [...]string{"acknowledged", "refused", "undelivered", "unknown"}[o]
}

// answer is the outcome of a data-object API call and what its body said.
type answer struct {
	outcome outcome
	status  int
	message string
	id      int64
	applied int
	known   int64
	err     error
}

// call posts a data-object API method with an X-Request-ID, which the ledger records on the
// events the call appends, so that the test can find them afterwards.
func (h *harness) call(ctx context.Context, base, method string, params url.Values, requestID string) answer {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/data/"+method, strings.NewReader(params.Encode()))
	if err != nil {
		return answer{outcome: unknown, err: err}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if requestID != "" {
		req.Header.Set("X-Request-ID", requestID)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return answer{outcome: undelivered, err: err}
		}
		return answer{outcome: unknown, err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{outcome: unknown, status: resp.StatusCode, err: err}
	}
	var body struct {
		Result  int     `json:"result"`
		Message *string `json:"message"`
		ID      int64   `json:"id"`
		Applied int     `json:"applied"`
		Known   int64   `json:"known"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return answer{outcome: unknown, status: resp.StatusCode, err: fmt.Errorf("decode %q: %w", b, err)}
	}
	a := answer{status: resp.StatusCode, id: body.ID, applied: body.Applied, known: body.Known}
	if body.Message != nil {
		a.message = *body.Message
	}
	if resp.StatusCode == http.StatusOK && body.Result == 0 {
		a.outcome = acknowledged
	} else {
		a.outcome = refused
	}
	return a
}

// getJSON reads an admin or audit endpoint with the admin credential.
func (h *harness) getJSON(s *server, path string, out any) {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.admin+path, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+h.adminToken())
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		h.t.Fatalf("GET %s: %d %s %v", path, resp.StatusCode, b, err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		h.t.Fatalf("GET %s: decode: %v", path, err)
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
