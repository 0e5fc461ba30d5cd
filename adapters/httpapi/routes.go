package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/gorilla/mux"
)

// Route is a path a router serves and the HTTP methods it takes there (HEAD, served wherever
// GET is, left out). Path variables are written {name}, without their patterns.
type Route struct {
	Path    string
	Methods []string
}

// RouteLister is a handler that can list the routes it serves.
type RouteLister interface {
	Routes() ([]Route, error)
}

// routedHandler is the handler New returns: the service behind its normalisation and
// observation, with the router it routes by, so that its routes can be listed.
type routedHandler struct {
	http.Handler
	router *mux.Router
}

// Routes lists the routes of the handler New returned.
func (h *routedHandler) Routes() ([]Route, error) { return WalkRoutes(h.router) }

// RoutesOf lists the routes a handler serves: one returned by New (or another RouteLister), or
// a gorilla/mux router. The OpenAPI test compares them with the document.
func RoutesOf(h http.Handler) ([]Route, error) {
	switch h := h.(type) {
	case RouteLister:
		return h.Routes()
	case *mux.Router:
		return WalkRoutes(h)
	}
	return nil, fmt.Errorf("httpapi: a %T cannot list its routes", h)
}

// WalkRoutes lists the routes of a gorilla/mux router. A route's methods are those of its
// Methods matcher or, failing that, those its handler says it takes (AllowedMethods); a route
// with neither is an error, since what it serves cannot be known.
func WalkRoutes(r *mux.Router) ([]Route, error) {
	var out []Route
	err := r.Walk(func(route *mux.Route, _ *mux.Router, _ []*mux.Route) error {
		h := route.GetHandler()
		if h == nil {
			return nil // a subrouter's prefix: its routes are walked in turn
		}
		tpl, err := route.GetPathTemplate()
		if err != nil {
			return fmt.Errorf("httpapi: a route without a path: %w", err)
		}
		methods, err := route.GetMethods()
		if err != nil {
			lister, ok := h.(interface{ AllowedMethods() []string })
			if !ok {
				return fmt.Errorf("httpapi: route %s: its handler (%T) does not say which HTTP methods it takes: give it a Methods matcher, or serve it through byMethod", tpl, h)
			}
			methods = lister.AllowedMethods()
		}
		methods = slices.DeleteFunc(slices.Clone(methods), func(m string) bool { return m == http.MethodHead })
		slices.Sort(methods)
		out = append(out, Route{Path: stripVariablePatterns(tpl), Methods: methods})
		return nil
	})
	if err != nil && !errors.Is(err, mux.SkipRouter) {
		return nil, err
	}
	return out, nil
}

// stripVariablePatterns turns /v1/dataobjects/{id:-?[0-9]+}/history into
// /v1/dataobjects/{id}/history.
func stripVariablePatterns(tpl string) string {
	segs := strings.Split(tpl, "/")
	for i, s := range segs {
		if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
			if name, _, ok := strings.Cut(s[1:len(s)-1], ":"); ok {
				segs[i] = "{" + name + "}"
			}
		}
	}
	return strings.Join(segs, "/")
}
