package console_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/tallyledger/tally/adapters/console"
)

func get(t *testing.T, srv *httptest.Server, method, path string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// TestConsoleFiles serves the embedded pages: the index with a content security policy that
// allows only the server's own origin, every file the pages load (uPlot and its licence
// included), a redirect from /console, and nothing but GET and HEAD.
func TestConsoleFiles(t *testing.T) {
	h, err := console.New()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	resp, index := get(t, srv, http.MethodGet, "/console/")
	if resp.StatusCode != http.StatusOK || !strings.Contains(index, `type="password"`) || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("index: %d %s\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), index)
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Referrer-Policy") != "no-referrer" {
		t.Errorf("headers: %v", resp.Header)
	}
	// Every script and stylesheet the index names is served, from this server (relative URLs).
	refs := regexp.MustCompile(`(?:src|href)="([^"#]+)"`).FindAllStringSubmatch(index, -1)
	if len(refs) < 4 {
		t.Fatalf("the index loads %d files", len(refs))
	}
	for _, m := range refs {
		ref := m[1]
		if strings.HasPrefix(ref, "data:") {
			continue
		}
		if strings.Contains(ref, "//") {
			t.Errorf("the index loads %s from another host", ref)
			continue
		}
		if r, _ := get(t, srv, http.MethodGet, "/console/"+ref); r.StatusCode != http.StatusOK {
			t.Errorf("%s: %d", ref, r.StatusCode)
		}
	}
	// The modules import only each other, by relative paths.
	imports := 0
	for _, module := range []string{"app.js", "api.js", "dom.js"} {
		_, src := get(t, srv, http.MethodGet, "/console/"+module)
		for _, m := range regexp.MustCompile(`(?m)^import .* from "([^"]+)";$`).FindAllStringSubmatch(src, -1) {
			imports++
			if !strings.HasPrefix(m[1], "./") {
				t.Errorf("%s imports %s", module, m[1])
			} else if r, _ := get(t, srv, http.MethodGet, "/console/"+strings.TrimPrefix(m[1], "./")); r.StatusCode != http.StatusOK {
				t.Errorf("%s imports %s: %d", module, m[1], r.StatusCode)
			}
		}
	}
	if imports < 2 {
		t.Errorf("found %d imports in the modules", imports)
	}
	if r, lic := get(t, srv, http.MethodGet, "/console/vendor/uplot/LICENSE"); r.StatusCode != http.StatusOK || !strings.Contains(lic, "MIT") {
		t.Errorf("uPlot's licence: %d", r.StatusCode)
	}
	if r, _ := get(t, srv, http.MethodGet, "/console"); r.StatusCode != http.StatusMovedPermanently || r.Header.Get("Location") != "/console/" {
		t.Errorf("/console: %d %s", r.StatusCode, r.Header.Get("Location"))
	}
	if r, _ := get(t, srv, http.MethodPost, "/console/"); r.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", r.StatusCode)
	}
	if r, _ := get(t, srv, http.MethodGet, "/console/nothing-here.js"); r.StatusCode != http.StatusNotFound {
		t.Errorf("a missing file: %d", r.StatusCode)
	}
}
