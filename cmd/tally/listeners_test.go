package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestListenersServeTheirOwnPaths runs the real server and asks each listener for every kind of
// path: the public one serves the Cryptolens API, /healthz and /readyz only; the admin one the
// admin API, the audit API and /metrics only. A path a listener does not serve is refused there
// as unknown: in the Cryptolens shape under /api/ and /data/, as the admin API's JSON under
// /admin/, as a plain 404 elsewhere.
func TestListenersServeTheirOwnPaths(t *testing.T) {
	dataDir := privateTempDir(t)
	g := &globalFlags{DataDir: dataDir}
	cfg := serveConfig{Store: "embedded", MaxBodyBytes: 1 << 20, UploadLease: time.Minute}
	urls, stop := startServe(t, g, cfg, &syncBuffer{})
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	adminToken, err := g.adminToken()
	if err != nil {
		t.Fatal(err)
	}
	const (
		served        = "served"
		cryptolens404 = "cryptolens 404"
		admin404      = "admin 404"
		plain404      = "plain 404"
	)
	cases := []struct {
		path          string
		public, admin string
	}{
		{"/api/data/ListDataObjects", served, cryptolens404},
		{"/API//Data/ListDataObjectsToKey/", served, cryptolens404},
		{"/healthz", served, plain404},
		{"/readyz", served, plain404},
		{"/admin/v1/products", admin404, served},
		{"/v1/usage?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z", plain404, served},
		{"/metrics", plain404, served},
		// Not served anywhere: the Cryptolens shape for every path an SDK might call.
		{"/api/key/Activate", cryptolens404, cryptolens404},
		{"/api/", cryptolens404, cryptolens404},
		{"/data/ListDataObjects", cryptolens404, cryptolens404},
		{"/Data/IncrementIntValueToKey", cryptolens404, cryptolens404},
		{"/", plain404, plain404},
		{"/console/", plain404, plain404},
	}
	ask := func(base, path string) (int, string, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	check := func(listener, base, path, want string) {
		t.Helper()
		status, ctype, body := ask(base, path)
		switch want {
		case served:
			if status == http.StatusNotFound || status == http.StatusMethodNotAllowed {
				t.Errorf("%s %s: %d %s, want it served", listener, path, status, body)
			}
		case cryptolens404:
			var res struct {
				Result  int     `json:"result"`
				Message *string `json:"message"`
			}
			if status != http.StatusNotFound || !strings.HasPrefix(ctype, "application/json") ||
				json.Unmarshal([]byte(body), &res) != nil || res.Result != 1 || res.Message == nil || *res.Message != "Unknown method." {
				t.Errorf("%s %s: %d %s %q, want 404 with the Cryptolens Unknown method.", listener, path, status, ctype, body)
			}
		case admin404:
			if status != http.StatusNotFound || body != `{"error":"not found"}` {
				t.Errorf("%s %s: %d %q, want the admin API's 404", listener, path, status, body)
			}
		case plain404:
			if status != http.StatusNotFound || strings.HasPrefix(ctype, "application/json") {
				t.Errorf("%s %s: %d %s %q, want a plain 404", listener, path, status, ctype, body)
			}
		}
	}
	for _, c := range cases {
		check("public", urls.Public, c.path, c.public)
		check("admin", urls.Admin, c.path, c.admin)
	}

	// The client commands work on the admin listener, and not on the public one.
	if out, err := run(t, "--server", urls.Admin, "--data-dir", dataDir, "product", "create", "--name", "App"); err != nil || strings.TrimSpace(out) == "" {
		t.Fatalf("product create on the admin listener: %q %v", out, err)
	}
	if _, err := run(t, "--server", urls.Public, "--data-dir", dataDir, "product", "list"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("product list on the public listener: %v, want a 404", err)
	}
	if _, err := run(t, "--server", urls.Public, "--data-dir", dataDir, "usage", "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z"); err == nil {
		t.Fatal("usage on the public listener succeeded")
	}
}
