package hostiletest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/usagelog"
)

// startTimeout bounds how long the server may take to listen and to become ready.
const startTimeout = 60 * time.Second

// buildTally builds cmd/tally without the race detector, whatever the test runs under: the
// memory test measures the process as it ships (the race detector's shadow memory would
// multiply it).
//
// TALLY_HOSTILE_BIN names a binary to run instead (an older build, to measure "before").
func buildTally(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("TALLY_HOSTILE_BIN"); bin != "" {
		return bin
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to build tally: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "tally")
	out, err := exec.Command(goTool, "build", "-o", bin, "github.com/tallyledger/tally/cmd/tally").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

var listeningLine = regexp.MustCompile(`msg=listening listener=(public|admin) addr=(\S+)`)

// serverLog receives the server's stderr: it keeps it for the failure report and lets the test
// wait for lines.
type serverLog struct {
	mu      sync.Mutex
	all     bytes.Buffer
	partial []byte
	lines   []string
	changed chan struct{} // closed and replaced at every new line
}

func newServerLog() *serverLog { return &serverLog{changed: make(chan struct{})} }

func (l *serverLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all.Write(p)
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, string(l.partial[:i]))
		l.partial = l.partial[i+1:]
		close(l.changed)
		l.changed = make(chan struct{})
	}
	return len(p), nil
}

// await waits until n lines match re, or the deadline; it returns the matches' submatches.
func (l *serverLog) await(t *testing.T, re *regexp.Regexp, n int, exited <-chan struct{}) [][]string {
	t.Helper()
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		var found [][]string
		for _, line := range l.lines {
			if m := re.FindStringSubmatch(line); m != nil {
				found = append(found, m)
			}
		}
		changed := l.changed
		l.mu.Unlock()
		if len(found) >= n {
			return found
		}
		select {
		case <-changed:
		case <-exited:
			t.Fatalf("tally serve exited while the test waited for %d lines matching %s", n, re)
		case <-deadline.C:
			t.Fatalf("%d of %d lines matching %s within %v", len(found), n, re, startTimeout)
		}
	}
}

func (l *serverLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.all.String()
}

// server is one run of `tally serve`.
type server struct {
	cmd     *exec.Cmd
	base    string // http://host:port of the public listener
	addr    string // its host:port
	admin   string // http://host:port of the admin listener
	dataDir string
	log     *serverLog
	exited  chan struct{}
}

// startServe runs `tally serve` with extra flags and returns once it is ready.
func startServe(t *testing.T, bin string, extra ...string) *server {
	t.Helper()
	dataDir := filepath.Join(t.TempDir(), "data")
	args := append([]string{"serve", "--data-dir", dataDir, "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--log-level", "debug"}, extra...)
	cmd := exec.Command(bin, args...)
	s := &server{cmd: cmd, dataDir: dataDir, log: newServerLog(), exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start tally serve: %v", err)
	}
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-s.exited
		if t.Failed() {
			t.Logf("server log:\n%s", lastLines(s.log.String(), 40))
		}
	})
	for _, m := range s.log.await(t, listeningLine, 2, s.exited) {
		if m[1] == "public" {
			s.addr = m[2]
		} else {
			s.admin = "http://" + m[2]
		}
	}
	s.base = "http://" + s.addr
	s.log.await(t, regexp.MustCompile(`msg=ready `), 1, s.exited)
	return s
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// memory reads the process's resident set now (VmRSS) and at its peak (VmHWM), in bytes.
func (s *server) memory(t *testing.T) (rss, peak int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("read the server's memory: %v", err)
	}
	field := func(name string) int64 {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, name+":"); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				if err != nil {
					t.Fatalf("%s: %q: %v", name, v, err)
				}
				return kb << 10
			}
		}
		t.Fatalf("no %s in /proc/PID/status", name)
		return 0
	}
	return field("VmRSS"), field("VmHWM")
}

// fixture is a product, a key, a data object on it and a token that may upload for it.
type fixture struct {
	owner  url.Values // token, ProductId, Key
	object int64
	pub    *rsa.PublicKey
}

func provision(t *testing.T, s *server) fixture {
	t.Helper()
	ctx := t.Context()
	b, err := os.ReadFile(filepath.Join(s.dataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	admin := httpapi.NewAdminClient(s.admin, strings.TrimSpace(string(b)), nil)
	p, err := admin.CreateProduct(ctx, "P")
	if err != nil {
		t.Fatal(err)
	}
	k, err := admin.CreateKey(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := admin.CreateToken(ctx, httpapi.CreateTokenRequest{Name: "uploader", Methods: []string{"AddDataObject", "IncrementIntValue", "ListDataObjects"}})
	if err != nil {
		t.Fatal(err)
	}
	owner := url.Values{"token": {tok.Secret}, "ProductId": {strconv.FormatInt(p.ID, 10)}, "Key": {k.Key}}
	res := post(t, s.base, "AddDataObjectToKey", with(owner, "Name", "usage"))
	if res.status != http.StatusOK {
		t.Fatalf("add a data object: %d %s", res.status, res.body)
	}
	var added struct{ ID int64 }
	if err := json.Unmarshal(res.body, &added); err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(filepath.Join(s.dataDir, usagelog.CurrentKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	key, err := usagelog.ParsePrivateKeyPEM(pem)
	if err != nil {
		t.Fatal(err)
	}
	return fixture{owner: owner, object: added.ID, pub: &key.PublicKey}
}

// logVersions writes a usage log of n entries for the object with the codec, and returns its
// base64 text after every step entries (the versions a License Server would upload).
func logVersions(t *testing.T, pub *rsa.PublicKey, object int64, n, step int) []string {
	t.Helper()
	var data []byte
	var versions []string
	ts := time.Now().Add(-time.Duration(n) * time.Minute).Unix()
	for i := 1; i <= n; i++ {
		var err error
		if data, err = usagelog.Record(data, pub, object, 1, ts+int64(i)*60, false); err != nil {
			t.Fatal(err)
		}
		if i%step == 0 {
			versions = append(versions, base64.StdEncoding.EncodeToString(data))
		}
	}
	return versions
}

// answer is an HTTP answer.
type answer struct {
	status int
	body   []byte
}

func post(t *testing.T, base, method string, params url.Values) answer {
	t.Helper()
	resp, err := http.Post(base+"/api/data/"+method, "application/x-www-form-urlencoded", strings.NewReader(params.Encode()))
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	return answer{status: resp.StatusCode, body: b}
}

func with(v url.Values, kv ...string) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out.Set(kv[i], kv[i+1])
	}
	return out
}

// dialFrom connects to addr from a loopback address of its own (127.0.0.x), so that the server
// sees a distinct client address, as it would see distinct attacking hosts.
func dialFrom(t *testing.T, local string, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 10 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", local, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// dribbler sends a request whose headers announce a body of size bytes, then the body one byte
// a second, as a slowloris client does, until the server closes the connection or stop.
type dribbler struct {
	conn   net.Conn
	closed chan struct{} // closed when the server closed the connection or answered
	status string        // the answer's status line, if any (read after closed)
}

func startDribbler(ctx context.Context, t *testing.T, local, addr string, size int) *dribbler {
	t.Helper()
	conn := dialFrom(t, local, addr)
	head := fmt.Sprintf("POST /api/data/UploadValuesToKey HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\nData=", size)
	if _, err := conn.Write([]byte(head)); err != nil {
		t.Fatal(err)
	}
	d := &dribbler{conn: conn, closed: make(chan struct{})}
	go func() {
		line, _ := bufio.NewReader(conn).ReadString('\n')
		d.status = strings.TrimSpace(line)
		close(d.closed)
	}()
	go func() {
		tick := time.NewTicker(time.Second) // the attack's pace, not a synchronisation
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-d.closed:
				return
			case <-tick.C:
				if _, err := conn.Write([]byte("A")); err != nil {
					return
				}
			}
		}
	}()
	return d
}

// connected reports whether the server has neither answered nor closed the connection.
func (d *dribbler) connected() bool {
	select {
	case <-d.closed:
		return false
	default:
		return true
	}
}
