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
	"path"
	"strings"

	"github.com/tallyledger/tally/adapters/httpapi"
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

// handler serves the console's files and lists the routes they make, so that the OpenAPI test
// can check they are documented (httpapi.RouteLister).
type handler struct {
	http.HandlerFunc
	routes []httpapi.Route
}

// Routes lists Prefix and one route per directory of files: GET Prefix{file}, GET
// Prefix<dir>/{file}.
func (h handler) Routes() ([]httpapi.Route, error) { return h.routes, nil }

// routesOf lists the route templates the files of fsys are served under.
func routesOf(fsys fs.FS) ([]httpapi.Route, error) {
	routes := []httpapi.Route{{Path: Prefix, Methods: []string{http.MethodGet}}}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		tpl := Prefix + "{file}"
		if p != "." {
			tpl = path.Join(Prefix, p, "{file}")
		}
		routes = append(routes, httpapi.Route{Path: tpl, Methods: []string{http.MethodGet}})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("console files: %w", err)
	}
	return routes, nil
}

// New returns the handler of the console's files under Prefix; /console redirects to it. It is
// an httpapi.RouteLister.
func New() (http.Handler, error) {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		return nil, fmt.Errorf("console files: %w", err)
	}
	routes, err := routesOf(sub)
	if err != nil {
		return nil, err
	}
	files := http.StripPrefix(Prefix, http.FileServerFS(sub))
	return handler{routes: routes, HandlerFunc: func(w http.ResponseWriter, r *http.Request) {
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
	}}, nil
}
