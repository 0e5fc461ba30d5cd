package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/adapters/httpapi/openapi/openapitest"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/readmodel"
)

// BenchmarkReadSideOnHistory measures the read side on a ledger made by tally bench --workload
// history (TALLY_HISTORY_DIR names its data directory; the benchmark is skipped without it).
//
// First the usage read model's catch-up from zero (events/s): it writes the read model to the
// data directory's readmodels/usage.db, replacing one there, so that serve starts with it
// (TALLY_HISTORY_KEEP_READMODEL=1 keeps a read model already there and only catches it up).
//
// Then the answer times of the #13 reads, as a user sees them: the tally binary is built and
// started as `tally serve --data-dir DIR` in a process of its own (so the server's heap, GC and
// CPU are its own, as in a deployment), and a Go HTTP client in this process sends, for each
// case, one warm-up request and then n requests one after the other on one kept-alive
// connection, timing each from sending the request to reading the answer's last byte. It
// reports p50 and p99 (the sorted times' element at q·(n−1)), the server process's CPU time per
// request (its utime+stime from /proc, 10 ms ticks, over the n requests) and the answer's size.
// The cases: /v1/usage for one key (10 data objects) a month by day in Asia/Kathmandu and a
// year by month in UTC, for the hot key and for other keys; the monthly billing run (last
// month by month over every object, in UTC, and for comparison in Asia/Kathmandu, whose month
// starts and ends inside a UTC hour); a data object's value as of a random time of the past
// year on the hot object.
//
// Each case's warm-up answer is checked against the OpenAPI document, outside the timing; the
// check's cost on the billing answer is reported as openapi-check-ms. The tests' in-process
// server (startServe) runs that check inside every request's handler, before the answer's end
// is sent: this benchmark used to start that server and so measured the check with the server
// (docs/performance.md). TALLY_READSIDE_SERVER=in-process runs serve in this process instead of
// its own, and in-process-checked runs it as the tests do, check included, which reproduces the
// old figures. TALLY_READSIDE_BINARY names a tally binary to start instead of building this
// one's (another build's server, the same client and method).
//
//	TALLY_HISTORY_DIR=/tmp/h10m go test -run '^$' -bench ReadSideOnHistory -benchtime 1x -timeout 60m ./cmd/tally
//	TALLY_HISTORY_KEEP_READMODEL=1 TALLY_HISTORY_DIR=/tmp/h10m go test -run '^$' -bench ReadSideOnHistory -benchtime 1x ./cmd/tally
func BenchmarkReadSideOnHistory(b *testing.B) {
	dir := os.Getenv("TALLY_HISTORY_DIR")
	if dir == "" {
		b.Skip("TALLY_HISTORY_DIR is not set")
	}
	ctx := context.Background()
	catchUpReadModel(ctx, b, dir, os.Getenv("TALLY_HISTORY_KEEP_READMODEL") == "1")

	tok, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		b.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))
	var srv *readServer
	switch mode := os.Getenv("TALLY_READSIDE_SERVER"); mode {
	case "", "process":
		bin := os.Getenv("TALLY_READSIDE_BINARY")
		if bin == "" {
			bin = buildTally(b)
		}
		srv = startServeProcess(ctx, b, bin, dir)
	case "in-process", "in-process-checked":
		srv = startServeHere(b, dir, mode == "in-process-checked")
	default:
		b.Fatalf("TALLY_READSIDE_SERVER=%q: want process, in-process or in-process-checked", mode)
	}
	validator, err := openapitest.Shared()
	if err != nil {
		b.Fatal(err)
	}
	// One connection, kept alive, as curl in a loop or a billing job would hold one.
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
	defer client.CloseIdleConnections()
	get := func(b *testing.B, path string) (time.Duration, *http.Request, *http.Response, []byte) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.admin+path, nil)
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		t0 := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		d := time.Since(t0)
		resp.Body.Close()
		if err != nil {
			b.Fatalf("%s: %v", path, err)
		}
		if resp.StatusCode != http.StatusOK || strings.HasPrefix(path, "/v1/usage") && !bytes.Contains(body, []byte(`"source":"readmodel"`)) {
			b.Fatalf("%s: %d %.300s", path, resp.StatusCode, body)
		}
		return d, req, resp, body
	}

	now := time.Now().UTC()
	lastMonth := time.Date(now.Year(), now.Month()-1, 1, 0, 0, 0, 0, time.UTC)
	kathmandu, err := time.LoadLocation("Asia/Kathmandu")
	if err != nil {
		b.Fatal(err)
	}
	kmMonth := time.Date(now.Year(), now.Month()-1, 1, 0, 0, 0, 0, kathmandu)
	day := func(t time.Time) string { return t.Format(time.DateOnly) }
	rng := rand.New(rand.NewPCG(1, 2))
	const hotObject = 1 // historygen: the first object of the first key
	cases := []struct {
		name string
		path func() string
		n    int
	}{
		{"usage/key-hot/month-by-day/Asia-Kathmandu", func() string {
			return "/v1/usage?key=1&tz=Asia/Kathmandu&by=day&from=" + day(kmMonth) + "&to=" + day(kmMonth.AddDate(0, 1, -1))
		}, 200},
		{"usage/key-other/month-by-day/Asia-Kathmandu", func() string {
			return fmt.Sprintf("/v1/usage?key=%d&tz=Asia/Kathmandu&by=day&from=%s&to=%s", 2+rng.IntN(900), day(kmMonth), day(kmMonth.AddDate(0, 1, -1)))
		}, 200},
		{"usage/key-hot/year-by-month/UTC", func() string {
			return "/v1/usage?key=1&by=month&from=" + day(lastMonth.AddDate(-1, 1, 0)) + "&to=" + day(lastMonth.AddDate(0, 1, -1))
		}, 200},
		{"usage/key-other/year-by-month/UTC", func() string {
			return fmt.Sprintf("/v1/usage?key=%d&by=month&from=%s&to=%s", 2+rng.IntN(900), day(lastMonth.AddDate(-1, 1, 0)), day(lastMonth.AddDate(0, 1, -1)))
		}, 200},
		{"usage/billing/all-objects/last-month/UTC", func() string {
			return "/v1/usage?by=month&from=" + day(lastMonth) + "&to=" + day(lastMonth.AddDate(0, 1, -1))
		}, 100},
		{"usage/billing/all-objects/last-month/Asia-Kathmandu", func() string { // no target: the edges are quarters and hours
			return "/v1/usage?by=month&tz=Asia/Kathmandu&from=" + day(kmMonth) + "&to=" + day(kmMonth.AddDate(0, 1, -1))
		}, 20},
		{"value-at/hot-object", func() string {
			at := now.Add(-time.Duration(rng.Int64N(int64(365 * 24 * time.Hour))))
			return fmt.Sprintf("/v1/dataobjects/%d/value?at=%s", hotObject, at.Format(time.RFC3339Nano))
		}, 500},
	}
	_, _, _, hot := get(b, fmt.Sprintf("/v1/dataobjects/%d/value", hotObject))
	b.Logf("the hot object now: %.200s", hot)
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				// The warm-up answer, checked against the OpenAPI document outside the timing.
				_, req, resp, body := get(b, c.path())
				resp.Body = io.NopCloser(bytes.NewReader(body))
				checkStarted := time.Now()
				if err := validator.CheckOn("admin", req, resp); err != nil {
					b.Fatalf("openapi: %s: %v", req.URL.RequestURI(), err)
				}
				checkTook := time.Since(checkStarted)
				var rows struct {
					Rows []json.RawMessage `json:"rows"`
				}
				_ = json.Unmarshal(body, &rows)

				cpuBefore, measured := srv.cpu(b)
				ds := make([]time.Duration, 0, c.n)
				for range c.n {
					d, _, _, _ := get(b, c.path())
					ds = append(ds, d)
				}
				cpuAfter, _ := srv.cpu(b)
				sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
				p := func(q float64) float64 { return float64(ds[int(q*float64(len(ds)-1))].Microseconds()) / 1000 }
				b.ReportMetric(p(0.5), "p50-ms")
				b.ReportMetric(p(0.99), "p99-ms")
				if measured {
					b.ReportMetric(float64((cpuAfter-cpuBefore).Microseconds())/1000/float64(c.n), "server-cpu-ms/req")
				}
				b.ReportMetric(float64(len(body))/1000, "answer-kB")
				if len(rows.Rows) > 0 {
					b.ReportMetric(float64(len(rows.Rows)), "rows")
				}
				if strings.HasSuffix(c.name, "billing/all-objects/last-month/UTC") {
					b.ReportMetric(float64(checkTook.Microseconds())/1000, "openapi-check-ms")
				}
			}
		})
	}
	if rss, ok := srv.rss(b); ok {
		b.Logf("server RSS after the runs: %.1f MB", float64(rss)/(1<<20))
	}
	srv.stop(b)
}

// catchUpReadModel builds the usage read model of dir from zero (or, with keep and a read model
// there, catches it up) and reports its rate; it also writes the current-state snapshot if dir
// has none, as tally replay does, so that serve starts from it as a deployment that has run
// does instead of folding the whole history first.
func catchUpReadModel(ctx context.Context, b *testing.B, dir string, keep bool) {
	b.Helper()
	path := filepath.Join(dir, readmodel.File)
	if _, err := os.Stat(path); err != nil || !keep {
		keep = false
		for _, suffix := range []string{"", "-wal", "-shm"} {
			_ = os.Remove(path + suffix)
		}
	}
	store, err := embedded.Open(ctx, filepath.Join(dir, "events"))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = store.Close() }()
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	started := time.Now()
	m, err := readmodel.Open(mctx, store, path, readmodel.Options{})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(mctx) }()
	if _, err := m.Wait(ctx); err != nil {
		b.Fatal(err)
	}
	took := time.Since(started)
	events, err := m.Events(ctx)
	if err != nil {
		b.Fatal(err)
	}
	cancel()
	<-done
	if err := m.Close(); err != nil {
		b.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, projections.StateFile)); err != nil {
		st, err := projections.Rebuild(ctx, store, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := projections.SaveSnapshot(filepath.Join(dir, projections.StateFile), st); err != nil {
			b.Fatal(err)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	if keep {
		b.Logf("read model kept: %d events, caught up in %s; file %d MB", events, took.Round(time.Millisecond), fi.Size()>>20)
		return
	}
	b.Logf("read model catch-up: %d events in %s: %.0f events/s; file %d MB", events, took.Round(time.Millisecond), float64(events)/took.Seconds(), fi.Size()>>20)
	b.ReportMetric(float64(events)/took.Seconds(), "catchup-events/s")
}

// readServer is the server the read-side benchmark asks: a tally serve in a process of its own,
// or serve running in the benchmark's process.
type readServer struct {
	admin string // the admin listener's base URL
	// process is the server's own process (nil: serve runs in this one).
	process *exec.Cmd
	logs    *syncBuffer  // its log
	exited  chan error   // its exit, sent once
	wait    func() error // waits for its exit
	stopIt  func() error // stops serve in this process
}

// startServeHere runs serve in the benchmark's process, as the tests do, and with checked as the
// tests do (startServe): every answer checked against the OpenAPI document in the handler,
// before the answer's end is sent. This is how the benchmark measured before it started the
// server in a process of its own; TALLY_READSIDE_SERVER=in-process or in-process-checked
// reproduce those figures.
func startServeHere(b *testing.B, dir string, checked bool) *readServer {
	b.Helper()
	g := &globalFlags{DataDir: dir}
	cfg := serveConfig{Addr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Store: "embedded", MaxBodyBytes: 1 << 20, UploadLease: time.Minute}
	logs := &syncBuffer{}
	started := time.Now()
	if checked {
		urls, stop := startServe(b, g, cfg, logs)
		b.Logf("serve (in this process, answers checked in the handler) ready in %s", time.Since(started).Round(time.Millisecond))
		return &readServer{admin: urls.Admin, logs: logs, stopIt: stop}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	cfg.onReady = func(_, admin string) { ready <- "http://" + admin }
	done := make(chan error, 1)
	go func() { done <- serve(ctx, slog.New(slog.NewTextHandler(logs, nil)), g, cfg) }()
	select {
	case admin := <-ready:
		b.Logf("serve (in this process) ready in %s", time.Since(started).Round(time.Millisecond))
		return &readServer{admin: admin, logs: logs, stopIt: func() error { cancel(); return <-done }}
	case err := <-done:
		cancel()
		b.Fatalf("serve ended before it was ready: %v\n%s", err, logs.String())
	}
	return nil
}

// startServeProcess starts bin serve on dir with both listeners on free ports and returns once
// it logs that it is ready (its log says where it listens).
func startServeProcess(ctx context.Context, b *testing.B, bin, dir string) *readServer {
	b.Helper()
	cmd := exec.CommandContext(ctx, bin, "serve", "--data-dir", dir, "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--log-format", "json")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &readServer{process: cmd, logs: &syncBuffer{}, exited: make(chan error, 1)}
	admin, ready := make(chan string, 1), make(chan struct{})
	go func() {
		lines := bufio.NewScanner(stderr)
		lines.Buffer(make([]byte, 64<<10), 1<<20)
		for lines.Scan() {
			_, _ = p.logs.Write(append(lines.Bytes(), '\n'))
			var rec struct {
				Msg      string `json:"msg"`
				Listener string `json:"listener"`
				Addr     string `json:"addr"`
			}
			if json.Unmarshal(lines.Bytes(), &rec) != nil {
				continue
			}
			switch {
			case rec.Msg == "listening" && rec.Listener == "admin":
				admin <- "http://" + rec.Addr
			case rec.Msg == "ready":
				close(ready)
			}
		}
		p.exited <- cmd.Wait()
	}()
	p.wait = sync.OnceValue(func() error { return <-p.exited })
	b.Cleanup(func() {
		_ = cmd.Process.Kill() // os.ErrProcessDone once stop has waited for it
		_ = p.wait()
	})
	select {
	case <-ready:
	case err := <-p.exited:
		p.exited <- err // for wait
		b.Fatalf("tally serve ended before it was ready: %v\n%s", err, p.logs.String())
	case <-time.After(10 * time.Minute):
		b.Fatalf("tally serve not ready in 10 minutes:\n%s", p.logs.String())
	}
	p.admin = <-admin
	rss, _ := p.rss(b)
	b.Logf("tally serve (pid %d) ready in %s, RSS %.1f MB", cmd.Process.Pid, time.Since(started).Round(time.Millisecond), float64(rss)/(1<<20))
	return p
}

// cpu is the server process's CPU time so far, user and system, from /proc (in ticks of 10 ms);
// false if the server runs in this process.
func (p *readServer) cpu(b *testing.B) (time.Duration, bool) {
	b.Helper()
	if p.process == nil {
		return 0, false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.process.Process.Pid))
	if err != nil {
		b.Fatalf("the server's CPU time: %v", err)
	}
	// The fields after the command name (in parentheses, which may hold spaces): utime and
	// stime are the 12th and 13th, in USER_HZ (100 per second on Linux).
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		b.Fatalf("the server's CPU time: %v", err)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, true
}

// rss is the server process's resident set size in bytes (VmRSS); false if the server runs in
// this process.
func (p *readServer) rss(b *testing.B) (int64, bool) {
	b.Helper()
	if p.process == nil {
		return 0, false
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.process.Process.Pid))
	if err != nil {
		b.Fatalf("the server's RSS: %v", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				b.Fatalf("the server's RSS: %q: %v", line, err)
			}
			return kb << 10, true
		}
	}
	b.Fatal("the server's RSS: no VmRSS line")
	return 0, false
}

// stop stops the server as SIGTERM does and fails unless it ends cleanly.
func (p *readServer) stop(b *testing.B) {
	b.Helper()
	if p.process == nil {
		if err := p.stopIt(); err != nil {
			b.Fatalf("serve: %v", err)
		}
		return
	}
	if err := p.process.Process.Signal(syscall.SIGTERM); err != nil {
		b.Fatalf("stop tally serve: %v", err)
	}
	if err := p.wait(); err != nil {
		b.Fatalf("tally serve: %v\n%s", err, p.logs.String())
	}
}
