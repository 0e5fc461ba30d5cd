package openapi_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tallyledger/tally/adapters/auditapi"
	"github.com/tallyledger/tally/adapters/console"
	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/adapters/httpapi/openapi"
	"github.com/tallyledger/tally/adapters/httpapi/openapi/openapitest"
)

// TestOpenAPICoversRoutes walks the routers tally serve composes (the service's, and the audit
// API's mounted at /v1/) and checks that every path and method they serve is documented in
// openapi.yaml, and that every documented operation is served.
func TestOpenAPICoversRoutes(t *testing.T) {
	v, err := openapitest.Shared()
	if err != nil {
		t.Fatal(err)
	}
	env := apitest.Start(t, nil)
	// With the viewer service, as tally serve builds it: without one, /admin/v1/viewers is absent.
	service, err := httpapi.New(httpapi.Config{Ledger: env.Ledger, Metrics: http.NotFoundHandler(), Viewers: env.Viewers})
	if err != nil {
		t.Fatal(err)
	}
	// With the view and the viewer service, as tally serve builds it: without a view the
	// console's summaries (/v1/status, /v1/overview, …) are absent.
	audit, err := auditapi.New(auditapi.Config{Store: env.Store, Ledger: env.Ledger, Viewers: env.Viewers, View: env.Projection})
	if err != nil {
		t.Fatal(err)
	}
	// The console's files, which tally serve mounts on the admin listener (cmd/tally/serve.go).
	consoleFiles, err := console.New()
	if err != nil {
		t.Fatal(err)
	}
	var served []httpapi.Route
	for name, h := range map[string]http.Handler{"httpapi.New": service, "auditapi.New": audit, "console.New": consoleFiles} {
		routes, err := httpapi.RoutesOf(h)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(routes) == 0 {
			t.Fatalf("%s: no routes listed", name)
		}
		served = append(served, routes...)
	}
	undocumented, unserved := v.CompareRoutes(served)
	for _, op := range undocumented {
		t.Errorf("route %s is served but not documented: add it to adapters/httpapi/openapi/openapi.yaml (paths) with its parameters and every answer it gives", op)
	}
	for _, op := range unserved {
		t.Errorf("operation %s is documented in adapters/httpapi/openapi/openapi.yaml but no router serves it", op)
	}
	// tally serve's two listeners serve the paths the document gives them (x-listener).
	handlers, err := httpapi.NewHandlers(httpapi.Config{Ledger: env.Ledger, Metrics: http.NotFoundHandler(), Viewers: env.Viewers})
	if err != nil {
		t.Fatal(err)
	}
	for listener, h := range map[string]http.Handler{"public": handlers.Public, "admin": handlers.Admin, "admin (audit)": audit, "admin (console)": consoleFiles} {
		routes, err := httpapi.RoutesOf(h)
		if err != nil {
			t.Fatalf("%s listener: %v", listener, err)
		}
		for _, op := range v.Misplaced(strings.Fields(listener)[0], routes) {
			t.Errorf("route %s is served on the %s listener, but openapi.yaml gives it x-listener of the other", op, listener)
		}
	}
	if len(v.Operations()) < len(served) {
		t.Errorf("%d operations documented for %d routes", len(v.Operations()), len(served))
	}
}

// TestCompareRoutesNamesTheDifferences shows that the comparison fails on a route missing from
// the document and on an operation no route serves.
func TestCompareRoutesNamesTheDifferences(t *testing.T) {
	v, err := openapitest.Shared()
	if err != nil {
		t.Fatal(err)
	}
	var all []httpapi.Route
	for _, op := range v.Operations() {
		if op.Path == "/healthz" {
			continue // documented, not served
		}
		all = append(all, httpapi.Route{Path: strings.ToLower(op.Path), Methods: []string{op.Method}})
	}
	all = append(all, httpapi.Route{Path: "/admin/v1/widgets/{widget}", Methods: []string{http.MethodDelete}})
	undocumented, unserved := v.CompareRoutes(all)
	if len(undocumented) != 1 || undocumented[0].String() != "DELETE /admin/v1/widgets/{widget}" {
		t.Errorf("undocumented = %v, want the widgets route", undocumented)
	}
	if len(unserved) != 1 || unserved[0].String() != "GET /healthz" {
		t.Errorf("unserved = %v, want GET /healthz", unserved)
	}
}

// TestValidatorRejectsAnswersOffTheDocument shows that the validation the HTTP tests rely on
// can fail: each answer here differs from the document in one way.
func TestValidatorRejectsAnswersOffTheDocument(t *testing.T) {
	v, err := openapitest.Shared()
	if err != nil {
		t.Fatal(err)
	}
	jsonHeader := http.Header{"Content-Type": {"application/json; charset=utf-8"}, "X-Request-Id": {"r-1"}}
	cases := []struct {
		name, method, path string
		status             int
		header             http.Header
		body               string
		ok                 bool
	}{
		{"success", "POST", "/api/data/IncrementIntValueToKey", 200, jsonHeader, `{"result":0,"message":null}`, true},
		{"path spelt as an SDK does", "POST", "/api//data/incrementintvaluetokey/", 200, jsonHeader, `{"result":0,"message":null}`, true},
		{"refusal", "GET", "/api/data/ListDataObjects", 404, jsonHeader, `{"result":1,"message":"The data object could not be found."}`, true},
		{"unknown method", "POST", "/api/data/NoSuchMethod", 404, jsonHeader, `{"result":1,"message":"Unknown method."}`, true},
		{"HEAD as GET", "HEAD", "/healthz", 200, http.Header{"Content-Type": {"text/plain; charset=utf-8"}}, ``, true},
		{"a field too many", "POST", "/api/data/IncrementIntValueToKey", 200, jsonHeader, `{"result":0,"message":null,"extra":1}`, false},
		{"refusal answered 200", "POST", "/api/data/IncrementIntValueToKey", 200, jsonHeader, `{"result":1,"message":"Access denied."}`, false},
		{"message under the wrong status", "POST", "/api/data/IncrementIntValueToKey", 403, jsonHeader, `{"result":1,"message":"The data object could not be found."}`, false},
		{"undocumented status", "POST", "/api/data/IncrementIntValueToKey", 418, jsonHeader, `{"result":1,"message":"I'm a teapot."}`, false},
		{"no request id", "POST", "/api/data/IncrementIntValueToKey", 200, http.Header{"Content-Type": {"application/json"}}, `{"result":0,"message":null}`, false},
		{"list without dataObjects", "POST", "/api/data/ListDataObjectsToKey", 200, jsonHeader, `{"result":0,"message":null}`, false},
		{"int32 overflow in a list", "POST", "/api/data/ListDataObjectsToKey", 200, jsonHeader, `{"result":0,"message":null,"dataObjects":[{"id":1,"name":"n","stringValue":"","intValue":2147483648}]}`, false},
		{"token with its secret in a list", "GET", "/admin/v1/tokens", 200, jsonHeader, `{"tokens":[{"id":"0b9f0f5e-6b8c-4a43-9b43-4f2c5d1e3a10","methods":[],"productLock":0,"keyLock":0,"featureLock":0,"revoked":false,"created":"2026-01-01T00:00:00Z","secret":"s"}]}`, false},
		{"unknown admin path in the Cryptolens shape", "GET", "/admin/v1/nothing", 404, jsonHeader, `{"result":1,"message":"Unknown method."}`, false},
		{"audit error without error", "GET", "/v1/dataobjects/7/history", 404, http.Header{"Content-Type": {"application/json"}}, `{}`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := httptest.NewRequest(c.method, c.path, nil)
			resp := &http.Response{StatusCode: c.status, Header: c.header, Body: io.NopCloser(strings.NewReader(c.body))}
			err := v.Check(req, resp)
			if c.ok && err != nil {
				t.Fatalf("want valid, got: %v", err)
			}
			if !c.ok && err == nil {
				t.Fatal("want a validation error, got none")
			}
			if b, _ := io.ReadAll(resp.Body); string(b) != c.body {
				t.Fatalf("the body was not put back: %q", b)
			}
		})
	}
}

// TestServedDocumentIsTheYAML checks that /openapi.json serves the document: the JSON decodes to
// the same paths the YAML has, and the answer itself validates.
func TestServedDocumentIsTheYAML(t *testing.T) {
	env := apitest.Start(t, nil)
	r := env.Get("/openapi.json", nil)
	if r.Status != http.StatusOK || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /openapi.json: %d %s", r.Status, r.Header.Get("Content-Type"))
	}
	var served, embedded map[string]any
	if err := json.Unmarshal(r.Body, &served); err != nil {
		t.Fatalf("decode the served document: %v", err)
	}
	j, err := openapi.JSON()
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(j, &embedded); err != nil {
		t.Fatal(err)
	}
	if served["openapi"] != "3.1.0" {
		t.Fatalf("openapi = %v", served["openapi"])
	}
	paths := served["paths"].(map[string]any)
	for p := range embedded["paths"].(map[string]any) {
		if _, ok := paths[p]; !ok {
			t.Errorf("path %s missing from the served document", p)
		}
	}
	if len(paths) != len(embedded["paths"].(map[string]any)) {
		t.Errorf("%d paths served, %d embedded", len(paths), len(embedded["paths"].(map[string]any)))
	}
}

// recordingTB keeps the errors reported to it instead of failing the test.
type recordingTB struct {
	testing.TB
	errors []string
}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

// TestTransportAndHandlerReportAnswersOffTheDocument shows that both ways the tests validate
// answers (the client's transport and the server-side handler) report an answer that does not
// match the document, and pass one that does.
func TestTransportAndHandlerReportAnswersOffTheDocument(t *testing.T) {
	serve := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Header().Set("X-Request-ID", "r-1")
		if r.URL.Query().Get("bad") != "" {
			_, _ = w.Write([]byte(`{"result":0,"message":"not null"}`))
			return
		}
		_, _ = w.Write([]byte(`{"result":0,"message":null}`))
	}
	for _, side := range []string{"transport", "handler"} {
		t.Run(side, func(t *testing.T) {
			rec := &recordingTB{TB: t}
			var h http.Handler = http.HandlerFunc(serve)
			if side == "handler" {
				h = openapitest.Handler(rec, h)
			}
			srv := httptest.NewServer(h)
			defer srv.Close()
			client := srv.Client()
			if side == "transport" {
				client = openapitest.Client(rec, client)
			}
			for _, q := range []string{"", "?bad=1"} {
				resp, err := client.Post(srv.URL+"/api/data/SetIntValueToKey"+q, "application/x-www-form-urlencoded", nil)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if !strings.HasPrefix(string(b), `{"result":0`) {
					t.Fatalf("the client got %q", b)
				}
			}
			if len(rec.errors) != 1 || !strings.Contains(rec.errors[0], "?bad=1") || !strings.Contains(rec.errors[0], "message") {
				t.Fatalf("reported %d errors, want 1 about the bad answer: %q", len(rec.errors), rec.errors)
			}
		})
	}
}

// TestListenersAnswerTheOtherListenersPathsAsUnknown checks the document's x-listener: on the
// public listener an admin path is an unknown path, on the admin listener it is the operation.
func TestListenersAnswerTheOtherListenersPathsAsUnknown(t *testing.T) {
	v, err := openapitest.Shared()
	if err != nil {
		t.Fatal(err)
	}
	header := http.Header{"Content-Type": {"application/json; charset=utf-8"}, "X-Request-Id": {"r-1"}}
	check := func(listener, method, path string, status int, body string) error {
		resp := &http.Response{StatusCode: status, Header: header, Body: io.NopCloser(strings.NewReader(body))}
		return v.CheckOn(listener, httptest.NewRequest(method, path, nil), resp)
	}
	notFound := `{"error":"not found"}`
	if err := check("public", "GET", "/admin/v1/products", 404, notFound); err != nil {
		t.Errorf("public listener, admin path, 404: %v", err)
	}
	if err := check("admin", "GET", "/admin/v1/products", 404, notFound); err == nil {
		t.Error("admin listener, admin path, 404: no error, but the operation has no 404")
	}
	if err := check("admin", "GET", "/admin/v1/products", 200, `{"products":[]}`); err != nil {
		t.Errorf("admin listener, admin path, 200: %v", err)
	}
	unknown := `{"result":1,"message":"Unknown method."}`
	if err := check("admin", "POST", "/api/data/AddDataObject", 404, unknown); err != nil {
		t.Errorf("admin listener, data-object path, 404: %v", err)
	}
	if err := check("public", "POST", "/api/data/AddDataObject", 404, unknown); err == nil {
		t.Error("public listener, data-object path, Unknown method.: no error")
	}
}
