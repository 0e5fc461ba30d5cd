package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/readmodel"
)

// TestServeOpensAGeneratedHistory: tally bench --workload history leaves a data directory that
// tally serve opens as is, answers usage from its read model (built by catching up), and that
// tally verify passes once the server stopped.
func TestServeOpensAGeneratedHistory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	out, err := run(t, "bench", "--workload", "history", "--events", "3000", "--bench-dir", dir, "--quiet")
	if err != nil || !strings.Contains(out, "events/s") {
		t.Fatalf("bench --workload history: %v\n%s", err, out)
	}
	if _, err := run(t, "bench", "--workload", "history", "--events", "3000"); err == nil || !strings.Contains(err.Error(), "--bench-dir") {
		t.Errorf("without --bench-dir: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(b))
	logs := &syncBuffer{}
	srv, stop := startServe(t, &globalFlags{DataDir: dir}, serveConfig{Addr: "127.0.0.1:0", Store: "embedded", MaxBodyBytes: 1 << 20, UploadLease: time.Minute}, logs)
	get := func(path string, out any) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, srv.Admin+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, out) != nil {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
		}
	}
	var rep projections.UsageReport
	from, to := time.Now().AddDate(-1, 0, -1).Format(time.DateOnly), time.Now().Format(time.DateOnly)
	get("/v1/usage?by=month&tz=Asia/Kathmandu&from="+from+"&to="+to, &rep)
	if rep.Source != readmodel.SourceReadModel || len(rep.Rows) == 0 {
		t.Fatalf("usage: source %q, %d rows", rep.Source, len(rep.Rows))
	}
	var v projections.ValueAsOf
	get("/v1/dataobjects/1/value", &v)
	if !v.Exists || v.AsOf != rep.Position {
		t.Fatalf("value of the hot object: %+v (report at %d)", v, rep.Position)
	}
	if err := stop(); err != nil {
		t.Fatalf("serve: %v\n%s", err, logs.String())
	}
	if _, err := os.Stat(filepath.Join(dir, readmodel.File)); err != nil {
		t.Errorf("read model file: %v", err)
	}
	out, err = run(t, "verify", "--data-dir", dir)
	if err != nil || !strings.Contains(out, "ok: ") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
}
