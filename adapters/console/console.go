// Package console serves Tally's web console: plain HTML, CSS and JavaScript modules embedded in
// the binary (no build step, no CDN), with the uPlot chart library vendored. The pages call the
// audit API (/v1/) and the admin API (/admin/v1/) of the server they came from with the
// credential the person signed in with; this package serves files only and holds no data.
package console

import (
	"embed"
	"fmt"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed static
var static embed.FS

// Prefix is the path the console is served under.
const Prefix = "/console/"

// contentSecurityPolicy lets a page load and call only its own origin: no inline script, no
// other host, no framing. A script injected through data (an object's name) cannot run, and the
// pages cannot leak a credential to another host.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; " +
	"connect-src 'self'; font-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"

// New returns the handler of the console's files under Prefix; /console redirects to it.
func New() (http.Handler, error) {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		return nil, fmt.Errorf("console files: %w", err)
	}
	files := http.StripPrefix(Prefix, http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		if r.URL.Path == strings.TrimSuffix(Prefix, "/") {
			http.Redirect(w, r, Prefix, http.StatusMovedPermanently)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		// The files change with the binary; revalidate so an upgrade is seen at once.
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	}), nil
}
