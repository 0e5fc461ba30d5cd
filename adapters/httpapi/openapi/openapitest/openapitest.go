// Package openapitest keeps Tally's OpenAPI document true in tests. Its HTTP transport
// validates every response a test receives against the document (with
// github.com/pb33f/libopenapi-validator, which validates OpenAPI 3.1 natively with JSON Schema
// 2020-12) and fails the test that received one that does not match; CompareRoutes lists the
// routes a router serves that the document lacks, and the operations it documents that no
// router serves.
package openapitest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/pb33f/libopenapi-validator/config"
	"github.com/pb33f/libopenapi-validator/content"
	valerrors "github.com/pb33f/libopenapi-validator/errors"
	v3 "github.com/pb33f/libopenapi/datamodel/high/v3"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/httpapi/openapi"
)

// auditPrefix is where tally serve mounts the audit API: its paths are matched as sent (its
// router neither folds case nor collapses slashes), every other path after the data-object
// API's normalisation.
const auditPrefix = "/v1/"

// Validator checks answers against the document.
type Validator struct {
	check validator.Validator
	paths []docPath
	// unknown holds the answers to requests no documented operation takes, by path prefix
	// (components/pathItems in the document).
	unknown map[string]*v3.PathItem
}

// docPath is one path of the document, split for matching.
type docPath struct {
	template string
	segments []string
	// numeric marks the segments that are integer path parameters: like the routers, they
	// match digits only.
	numeric []bool
	item    *v3.PathItem
	audit   bool
	// listener is the listener that serves the path (x-listener: public or admin).
	listener string
}

// Load parses the embedded document, checks it against the OpenAPI 3.1 schema and prepares a
// validator.
func Load() (*Validator, error) {
	doc, err := libopenapi.NewDocument(openapi.YAML())
	if err != nil {
		return nil, fmt.Errorf("openapi: parse: %w", err)
	}
	// The audit jobs answer JSON lines (application/x-ndjson): each line is validated as one
	// item of the array schema the document gives them.
	check, errs := validator.NewValidator(doc, config.WithBodyDecoder("application/x-ndjson", ndjsonDecoder()))
	if len(errs) > 0 {
		return nil, fmt.Errorf("openapi: build the model: %w", errors.Join(errs...))
	}
	if ok, verrs := check.ValidateDocument(); !ok {
		return nil, fmt.Errorf("openapi: the document is not valid OpenAPI: %s", describe(verrs))
	}
	model, err := doc.BuildV3Model()
	if err != nil {
		return nil, fmt.Errorf("openapi: build the model: %w", err)
	}
	v := &Validator{check: check, unknown: map[string]*v3.PathItem{}}
	for p := model.Model.Paths.PathItems.First(); p != nil; p = p.Next() {
		dp := docPath{template: p.Key(), item: p.Value(), audit: strings.HasPrefix(p.Key(), auditPrefix)}
		if node, ok := p.Value().Extensions.Get("x-listener"); ok && node != nil {
			dp.listener = node.Value
		}
		if dp.listener != "public" && dp.listener != "admin" {
			return nil, fmt.Errorf("openapi: path %s: x-listener is %q, want public or admin", p.Key(), dp.listener)
		}
		numericParams := map[string]bool{}
		for op := p.Value().GetOperations().First(); op != nil; op = op.Next() {
			for _, param := range op.Value().Parameters {
				if param.In == "path" && param.Schema != nil && slices.Contains(param.Schema.Schema().Type, "integer") {
					numericParams[param.Name] = true
				}
			}
		}
		for _, seg := range strings.Split(strings.Trim(p.Key(), "/"), "/") {
			name, isParam := strings.CutPrefix(seg, "{")
			name = strings.TrimSuffix(name, "}")
			dp.segments = append(dp.segments, seg)
			dp.numeric = append(dp.numeric, isParam && numericParams[name])
		}
		v.paths = append(v.paths, dp)
	}
	for prefix, name := range map[string]string{
		"/api/": "UnknownCryptolensPath", "/admin/": "UnknownAdminPath", auditPrefix: "UnknownAuditPath", "/": "UnknownPath",
	} {
		item, ok := model.Model.Components.PathItems.Get(name)
		if !ok {
			return nil, fmt.Errorf("openapi: components/pathItems/%s is missing", name)
		}
		v.unknown[prefix] = item
	}
	return v, nil
}

// shared is the document parsed once for every test of a process: it never changes, and
// parsing it for each of the hundreds of test services would cost seconds.
var shared = sync.OnceValues(Load)

// Shared returns the validator of the embedded document, parsed once per process.
func Shared() (*Validator, error) { return shared() }

var digits = regexp.MustCompile(`^-?[0-9]+$`)

// find returns the documented path a request's path is served as on a listener ("": one
// that serves every path), or nil. Of several that match, the one with the most literal
// segments wins, as in the routers (/admin/v1/uploads/resolve before /admin/v1/uploads/{id}).
func (v *Validator) find(rawPath, listener string) *docPath {
	audit := strings.HasPrefix(rawPath, auditPrefix)
	path := rawPath
	if !audit {
		path = httpapi.NormalisePath(rawPath)
	}
	segs := strings.Split(strings.Trim(path, "/"), "/")
	var best *docPath
	bestLiterals := -1
	for i := range v.paths {
		dp := &v.paths[i]
		if dp.audit != audit || len(dp.segments) != len(segs) || listener != "" && dp.listener != listener {
			continue
		}
		match, literals := true, 0
		for j, seg := range dp.segments {
			switch {
			case strings.HasPrefix(seg, "{"):
				match = segs[j] != "" && (!dp.numeric[j] || digits.MatchString(segs[j]))
				literals--
			case audit:
				match = seg == segs[j]
			default:
				match = strings.EqualFold(seg, segs[j])
			}
			if !match {
				break
			}
		}
		if literals += len(dp.segments); match && literals > bestLiterals {
			best, bestLiterals = dp, literals
		}
	}
	return best
}

// unknownItem returns the answers documented for a request no operation takes on a listener
// (the public one has no audit API: /v1/ is any other path there).
func (v *Validator) unknownItem(rawPath, listener string) *v3.PathItem {
	if strings.HasPrefix(rawPath, auditPrefix) && listener != "public" {
		return v.unknown[auditPrefix]
	}
	p := httpapi.NormalisePath(rawPath)
	// /data/: an SDK whose base URL lacks /api/ is answered in the Cryptolens shape too.
	if p == "/api" || p == "/data" || strings.HasPrefix(p, "/api/") || strings.HasPrefix(p, "/data/") {
		return v.unknown["/api/"]
	}
	if strings.HasPrefix(p, "/admin/") {
		return v.unknown["/admin/"]
	}
	return v.unknown["/"]
}

// Check validates one answer of a server that serves every documented path.
func (v *Validator) Check(req *http.Request, resp *http.Response) error {
	return v.CheckOn("", req, resp)
}

// CheckOn validates one answer against the document: the operation the request reached on the
// listener ("": one that serves every path), or if none, the document's answers to unknown
// paths and methods; its status, headers and body. The response's body is read and put back.
func (v *Validator) CheckOn(listener string, req *http.Request, resp *http.Response) error {
	method := req.Method
	if method == http.MethodHead {
		method = http.MethodGet // served as GET, without a body
	}
	var item *v3.PathItem
	specPath := "(no documented operation)"
	if dp := v.find(req.URL.Path, listener); dp != nil && dp.item.GetOperations().GetOrZero(strings.ToLower(method)) != nil {
		item, specPath = dp.item, dp.template
	} else {
		item, method = v.unknownItem(req.URL.Path, listener), http.MethodGet
	}
	if req.Method == http.MethodHead {
		op := item.GetOperations().GetOrZero(strings.ToLower(method))
		if op.Responses == nil || op.Responses.Codes.GetOrZero(strconv.Itoa(resp.StatusCode)) == nil {
			return fmt.Errorf("HEAD %s: status %d is not documented for GET %s", req.URL.Path, resp.StatusCode, specPath)
		}
		return nil
	}
	as := req.Clone(req.Context())
	as.Method = method
	ok, errs := v.check.GetResponseBodyValidator().ValidateResponseBodyWithPathItem(as, resp, item, specPath)
	if !ok {
		return fmt.Errorf("%s", describe(errs))
	}
	return nil
}

// ndjsonDecoder decodes a body of JSON lines into the array of its lines.
func ndjsonDecoder() content.Decoder {
	return content.DecoderFunc(func(in *content.DecodeInput) (any, error) {
		lines := []any{}
		if in == nil || in.Body == nil {
			return lines, nil
		}
		dec := json.NewDecoder(in.Body)
		for {
			var v any
			err := dec.Decode(&v)
			if errors.Is(err, io.EOF) {
				return lines, nil
			}
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", len(lines)+1, err)
			}
			lines = append(lines, v)
		}
	})
}

func describe(errs []*valerrors.ValidationError) string {
	var b strings.Builder
	for _, e := range errs {
		fmt.Fprintf(&b, "\n  - %s: %s", e.Message, e.Reason)
		for _, se := range e.SchemaValidationErrors {
			fmt.Fprintf(&b, "\n      %s at %s (schema %s)", se.Reason, se.FieldPath, se.KeywordLocation)
		}
	}
	return b.String()
}

// transport validates every answer that passes through it.
type transport struct {
	t    testing.TB
	v    *Validator
	next http.RoundTripper
}

func (tr *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := tr.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("openapitest: read the answer: %w", err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err := tr.v.Check(req, resp); err != nil {
		tr.t.Errorf("openapi: the answer to %s %s (%d) does not match adapters/httpapi/openapi/openapi.yaml:%s\nbody: %.500s",
			req.Method, req.URL.RequestURI(), resp.StatusCode, err, body)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, nil
}

// Transport returns a round tripper that sends through next (nil: http.DefaultTransport) and
// fails t, without stopping it, for each answer that does not match the document.
func Transport(t testing.TB, next http.RoundTripper) http.RoundTripper {
	t.Helper()
	v, err := Shared()
	if err != nil {
		t.Fatal(err)
	}
	if next == nil {
		next = http.DefaultTransport
	}
	return &transport{t: t, v: v, next: next}
}

// Client returns a copy of c (nil: a new client) whose answers are validated for t.
func Client(t testing.TB, c *http.Client) *http.Client {
	t.Helper()
	out := &http.Client{}
	if c != nil {
		*out = *c
	}
	out.Transport = Transport(t, out.Transport)
	return out
}

// Operation is one documented or served path and HTTP method.
type Operation struct {
	Path   string
	Method string
}

func (o Operation) String() string { return o.Method + " " + o.Path }

// Operations lists the documented operations.
func (v *Validator) Operations() []Operation {
	var out []Operation
	for _, dp := range v.paths {
		for op := dp.item.GetOperations().First(); op != nil; op = op.Next() {
			out = append(out, Operation{Path: dp.template, Method: strings.ToUpper(op.Key())})
		}
	}
	return out
}

// CompareRoutes compares the routes the routers serve with the document: undocumented are the
// served path and method pairs the document lacks, unserved the documented operations no
// route serves. Paths compare without case (the data-object API folds it) and with path
// variables by position, not name.
func (v *Validator) CompareRoutes(served []httpapi.Route) (undocumented, unserved []Operation) {
	key := func(path, method string) string {
		segs := strings.Split(strings.ToLower(path), "/")
		for i, s := range segs {
			if strings.HasPrefix(s, "{") {
				segs[i] = "{}"
			}
		}
		return method + " " + strings.Join(segs, "/")
	}
	documented := map[string]bool{}
	for _, op := range v.Operations() {
		documented[key(op.Path, op.Method)] = true
	}
	servedKeys := map[string]bool{}
	for _, r := range served {
		for _, m := range r.Methods {
			k := key(r.Path, m)
			servedKeys[k] = true
			if !documented[k] {
				undocumented = append(undocumented, Operation{Path: r.Path, Method: m})
			}
		}
	}
	for _, op := range v.Operations() {
		if !servedKeys[key(op.Path, op.Method)] {
			unserved = append(unserved, op)
		}
	}
	return undocumented, unserved
}

// Handler serves through next and fails t, without stopping it, for each answer that does not
// match the document: for tests whose client is not theirs to wrap (a CLI command's).
func Handler(t testing.TB, next http.Handler) http.Handler {
	t.Helper()
	return HandlerOn(t, "", next)
}

// HandlerOn is Handler for the handler of one listener (x-listener: public or admin), which
// answers the other listener's paths as unknown.
func HandlerOn(t testing.TB, listener string, next http.Handler) http.Handler {
	t.Helper()
	v, err := Shared()
	if err != nil {
		t.Fatal(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &recorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		resp := &http.Response{StatusCode: rec.status, Header: w.Header().Clone(), Body: io.NopCloser(bytes.NewReader(rec.body.Bytes()))}
		if err := v.CheckOn(listener, r, resp); err != nil {
			t.Errorf("openapi: the answer to %s %s (%d) does not match adapters/httpapi/openapi/openapi.yaml:%s\nbody: %.500s",
				r.Method, r.URL.RequestURI(), rec.status, err, rec.body.Bytes())
		}
	})
}

// recorder passes an answer on and keeps a copy of its status and body.
type recorder struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.body.Write(b)
	return r.ResponseWriter.Write(b)
}

// Misplaced lists the routes a listener serves that the document gives to the other listener
// (x-listener).
func (v *Validator) Misplaced(listener string, served []httpapi.Route) []Operation {
	var out []Operation
	for _, r := range served {
		dp := v.find(r.Path, "")
		if strings.HasPrefix(r.Path, auditPrefix) {
			dp = v.findTemplate(r.Path)
		}
		if dp != nil && dp.listener != listener {
			for _, m := range r.Methods {
				out = append(out, Operation{Path: r.Path, Method: m})
			}
		}
	}
	return out
}

// findTemplate returns the documented path with this template (variables compared by
// position), or nil.
func (v *Validator) findTemplate(tpl string) *docPath {
	norm := func(p string) string {
		segs := strings.Split(strings.ToLower(p), "/")
		for i, s := range segs {
			if strings.HasPrefix(s, "{") {
				segs[i] = "{}"
			}
		}
		return strings.Join(segs, "/")
	}
	for i := range v.paths {
		if norm(v.paths[i].template) == norm(tpl) {
			return &v.paths[i]
		}
	}
	return nil
}
