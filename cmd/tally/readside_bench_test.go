package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/readmodel"
)

// BenchmarkReadSideOnHistory measures the read side on a ledger made by tally bench --workload
// history (TALLY_HISTORY_DIR names its data directory; the benchmark is skipped without it):
// the usage read model's catch-up from zero (events/s), then, through a real tally serve on
// that directory, /v1/usage for one key a month by day in Asia/Kathmandu and a year by month in
// UTC, the monthly billing run over every object, and value as of a time on the hot object,
// each as p50 and p99 over its requests. It writes the read model to the data directory's
// readmodels/usage.db (replacing one there) so that serve starts with it.
//
//	TALLY_HISTORY_DIR=/tmp/h1m go test -run '^$' -bench ReadSideOnHistory -benchtime 1x ./cmd/tally
func BenchmarkReadSideOnHistory(b *testing.B) {
	dir := os.Getenv("TALLY_HISTORY_DIR")
	if dir == "" {
		b.Skip("TALLY_HISTORY_DIR is not set")
	}
	ctx := context.Background()
	path := filepath.Join(dir, readmodel.File)
	for _, suffix := range []string{"", "-wal", "-shm"} {
		_ = os.Remove(path + suffix)
	}
	store, err := embedded.Open(ctx, filepath.Join(dir, "events"))
	if err != nil {
		b.Fatal(err)
	}
	mctx, cancel := context.WithCancel(ctx)
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
	_ = m.Close()
	// The current-state snapshot, as tally replay writes it: serve starts from it as a
	// deployment that has run does, instead of folding the whole history first.
	if _, err := os.Stat(filepath.Join(dir, projections.StateFile)); err != nil {
		st, err := projections.Rebuild(ctx, store, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := projections.SaveSnapshot(filepath.Join(dir, projections.StateFile), st); err != nil {
			b.Fatal(err)
		}
	}
	_ = store.Close()
	st, _ := os.Stat(path)
	b.Logf("read model catch-up: %d events in %s: %.0f events/s; file %d MB", events, took.Round(time.Millisecond), float64(events)/took.Seconds(), st.Size()>>20)
	b.ReportMetric(float64(events)/took.Seconds(), "catchup-events/s")

	tok, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		b.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))
	logs := &syncBuffer{}
	readyAt := time.Now()
	srv, stop := startServe(b, &globalFlags{DataDir: dir}, serveConfig{Addr: "127.0.0.1:0", Store: "embedded", MaxBodyBytes: 1 << 20, UploadLease: time.Minute}, logs)
	b.Logf("serve ready in %s", time.Since(readyAt).Round(time.Millisecond))
	defer func() { _ = stop() }()
	get := func(path string) time.Duration {
		req, _ := http.NewRequest(http.MethodGet, srv.Admin+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		t0 := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		d := time.Since(t0)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"source":"readmodel"`) && strings.Contains(path, "usage") {
			b.Fatalf("%s: %d %.300s", path, resp.StatusCode, body)
		}
		return d
	}
	now := time.Now().UTC()
	lastMonth := time.Date(now.Year(), now.Month()-1, 1, 0, 0, 0, 0, time.UTC)
	kathmandu, _ := time.LoadLocation("Asia/Kathmandu")
	kmMonth := time.Date(now.Year(), now.Month()-1, 1, 0, 0, 0, 0, kathmandu)
	day := func(t time.Time) string { return t.Format(time.DateOnly) }
	rng := rand.New(rand.NewPCG(1, 2))
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
		}, 50},
		{"value-at/hot-object", func() string {
			at := now.Add(-time.Duration(rng.Int64N(int64(365 * 24 * time.Hour))))
			return "/v1/dataobjects/1/value?at=" + at.Format(time.RFC3339Nano)
		}, 500},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				get(c.path()) // warm
				var ds []time.Duration
				for range c.n {
					ds = append(ds, get(c.path()))
				}
				sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
				p := func(q float64) float64 { return float64(ds[int(q*float64(len(ds)-1))].Microseconds()) / 1000 }
				b.ReportMetric(p(0.5), "p50-ms")
				b.ReportMetric(p(0.99), "p99-ms")
			}
		})
	}
}
