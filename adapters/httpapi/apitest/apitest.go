// Package apitest starts a whole Tally service for tests: an event store (the embedded one on
// a temporary directory unless told otherwise), the current-state projection following it, the
// ledger, and the HTTP handler under an httptest server. Tests of the HTTP API, of uploads and
// of other store backends share it, so that the same requests run against every backend.
package apitest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/httpapi/openapi/openapitest"
	"github.com/tallyledger/tally/adapters/kurrentdb"
	"github.com/tallyledger/tally/adapters/kurrentdb/kurrenttest"
	"github.com/tallyledger/tally/adapters/prommetrics"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/domain/viewer"
	"github.com/tallyledger/tally/projections"
)

// AdminToken is the admin credential of every test service.
const AdminToken = "test-admin-token"

// Options tune StartWith. The zero value is the default service.
type Options struct {
	// Open returns the event store to run on; nil opens an embedded store on t.TempDir().
	// The environment closes the store at cleanup.
	Open func(t testing.TB) eventstore.Store
	// Decoder reads uploaded usage logs (nil: uploads are refused as corrupted).
	Decoder ledger.LogDecoder
	// MaxBodyBytes bounds request bodies (0: the handler's default).
	MaxBodyBytes int64
	// MaxLargeBodies bounds the large bodies read at once (0: the handler's default).
	MaxLargeBodies int
	// MaxPendingBodyBytes, MinBodyRate and BodyRateGrace are the handler's body defences
	// (0: its defaults).
	MaxPendingBodyBytes   int64
	MinBodyRate           float64
	BodyRateGrace         time.Duration
	LargeBodiesPerAddress int
	// Ready is the readiness check handed to the handler (nil: always ready).
	Ready func() error
	// Logger receives the service's logs (nil: the test's output, warnings and above).
	Logger *slog.Logger
	// RateLimit and RateBurst are the handler's per-token rate limit (0: none).
	RateLimit float64
	RateBurst int
	// UploadLease is how long an upload may stay undecided before a waiting command decides
	// it (0: the ledger's default).
	UploadLease time.Duration
	// Clock is the ledger's clock (nil: time.Now).
	Clock func() time.Time
	// RefusalRepeatInterval is the ledger's (0: its default; negative: every repeat recorded).
	RefusalRepeatInterval time.Duration
	// MaxNewEntries is the ledger's limit on new entries per upload (0: 1000); give the
	// decoder the same limit.
	MaxNewEntries int
}

// Env is a running service.
type Env struct {
	t          testing.TB
	URL        string // base URL of the service, without a trailing slash
	AdminToken string
	Store      eventstore.Store
	Projection *projections.Current
	Ledger     *ledger.Service
	Registry   *prometheus.Registry
	// HTTP is the client of the service; it validates every answer against the OpenAPI
	// document (openapitest) and fails the test on one that does not match.
	HTTP  *http.Client
	Admin *httpapi.AdminClient
	// Viewers keeps the read-only viewer credentials on Store.
	Viewers *viewer.Service
	opts    Options
	// storeClosed is set when a test closed the store under the service on purpose, which
	// stops the projection with an error the cleanup then expects. Instances on one store
	// share it.
	storeClosed *atomic.Bool
}

// OpenEmbedded opens an embedded store on a fresh temporary directory.
func OpenEmbedded(t testing.TB) eventstore.Store {
	t.Helper()
	s, err := embedded.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatalf("open embedded store: %v", err)
	}
	return s
}

// Start runs a service on the store open returns (nil: an embedded store on t.TempDir()).
func Start(t testing.TB, open func(t testing.TB) eventstore.Store) *Env {
	t.Helper()
	return StartWith(t, Options{Open: open})
}

// StartWith runs a service configured by opts and stops it at the test's cleanup.
func StartWith(t testing.TB, opts Options) *Env {
	t.Helper()
	if opts.Open == nil {
		opts.Open = OpenEmbedded
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	store := opts.Open(t)
	env := &Env{t: t, AdminToken: AdminToken, Store: store, opts: opts, storeClosed: &atomic.Bool{}}
	// Registered first, so it runs last: after every instance has stopped.
	t.Cleanup(func() {
		if err := store.Close(); err != nil && !env.storeClosed.Load() {
			t.Errorf("close store: %v", err)
		}
	})
	env.start()
	return env
}

// AnotherInstance starts a second Tally instance (its own projection, ledger and HTTP server)
// on the same store, as two processes sharing a KurrentDB would run.
func (e *Env) AnotherInstance() *Env {
	e.t.Helper()
	other := &Env{t: e.t, AdminToken: e.AdminToken, Store: e.Store, opts: e.opts, storeClosed: e.storeClosed}
	other.start()
	return other
}

// start runs the projection, ledger and HTTP server of one instance on e.Store.
func (e *Env) start() {
	t := e.t
	t.Helper()
	// Each instance persists its state in a data directory of its own, checkpointing after
	// nearly every batch, so that the tests decide against layers in the state database too.
	proj, err := projections.NewCurrent(context.Background(), e.Store, projections.CurrentOptions{
		Logger: e.opts.Logger, StatePath: filepath.Join(t.TempDir(), projections.StateFile), SnapshotEvery: time.Millisecond,
	})
	if err != nil {
		t.Fatalf("projection: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	projDone := make(chan error, 1)
	go func() { projDone <- proj.Run(ctx) }()
	reg := prometheus.NewRegistry()
	ledgerMetrics, err := prommetrics.NewLedger(reg)
	if err != nil {
		t.Fatalf("ledger metrics: %v", err)
	}
	svc, err := ledger.New(ledger.Config{Store: e.Store, View: proj, Decoder: e.opts.Decoder, Logger: e.opts.Logger, UploadLease: e.opts.UploadLease,
		Clock: e.opts.Clock, RefusalRepeatInterval: e.opts.RefusalRepeatInterval, MaxNewEntries: e.opts.MaxNewEntries, Metrics: ledgerMetrics})
	if err != nil {
		t.Fatalf("ledger: %v", err)
	}
	viewers := viewer.New(e.Store, nil)
	h, err := httpapi.New(httpapi.Config{
		Ledger: svc, AdminToken: AdminToken, Ready: e.opts.Ready, Viewers: viewers,
		Metrics:  promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
		Registry: reg, Logger: e.opts.Logger, MaxBodyBytes: e.opts.MaxBodyBytes,
		MaxLargeBodies: e.opts.MaxLargeBodies, MaxPendingBodyBytes: e.opts.MaxPendingBodyBytes,
		MinBodyRate: e.opts.MinBodyRate, BodyRateGrace: e.opts.BodyRateGrace,
		LargeBodiesPerAddress: e.opts.LargeBodiesPerAddress,
		RateLimit:             e.opts.RateLimit, RateBurst: e.opts.RateBurst,
	})
	if err != nil {
		t.Fatalf("http handler: %v", err)
	}
	srv := httptest.NewServer(h)
	e.URL, e.Projection, e.Ledger, e.Registry, e.Viewers = srv.URL, proj, svc, reg, viewers
	// Every answer a test receives is validated against the OpenAPI document; one that does
	// not match fails the test that received it.
	e.HTTP = openapitest.Client(t, srv.Client())
	e.Admin = httpapi.NewAdminClient(srv.URL, AdminToken, e.HTTP)
	t.Cleanup(func() {
		srv.Close()
		cancel()
		if err := <-projDone; err != nil && !errors.Is(err, context.Canceled) && !e.storeClosed.Load() {
			t.Errorf("projection: %v", err)
		}
	})
}

// CloseStore closes the event store under the running service, to see how it fails.
func (e *Env) CloseStore() {
	e.t.Helper()
	e.storeClosed.Store(true)
	if err := e.Store.Close(); err != nil {
		e.t.Fatalf("close store: %v", err)
	}
}

// adminCaller is the caller of the environment's own setup commands.
func adminCaller() ledger.Caller { return ledger.Caller{Admin: true, RequestID: "apitest"} }

// Product creates a product.
func (e *Env) Product(name string) domain.Product {
	e.t.Helper()
	p, err := e.Ledger.CreateProduct(context.Background(), adminCaller(), name)
	if err != nil {
		e.t.Fatalf("create product: %v", err)
	}
	return p
}

// Key creates a license key of a product.
func (e *Env) Key(productID int64) domain.LicenseKey {
	e.t.Helper()
	k, err := e.Ledger.CreateKey(context.Background(), adminCaller(), productID)
	if err != nil {
		e.t.Fatalf("create key: %v", err)
	}
	return k
}

// Token creates an access token and returns its secret.
func (e *Env) Token(spec ledger.TokenSpec) string {
	e.t.Helper()
	_, secret, err := e.Ledger.CreateToken(context.Background(), adminCaller(), spec)
	if err != nil {
		e.t.Fatalf("create token: %v", err)
	}
	return secret
}

// AllMethodsToken creates a token with every permission and no locks.
func (e *Env) AllMethodsToken() string {
	e.t.Helper()
	return e.Token(ledger.TokenSpec{Name: "all", Methods: domain.AllMethods})
}

// Response is an HTTP answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Result decodes a data-object API answer.
func (r Response) Result(t testing.TB) Result {
	t.Helper()
	var res Result
	if err := json.Unmarshal(r.Body, &res); err != nil {
		t.Fatalf("decode %q: %v", r.Body, err)
	}
	return res
}

// Result is any answer of the data-object API.
type Result struct {
	Result      int          `json:"result"`
	Message     *string      `json:"message"`
	ID          int64        `json:"id"`
	DataObjects []DataObject `json:"dataObjects"`
	Applied     int          `json:"applied"`
	Known       int64        `json:"known"`
}

// Msg is the message, or "" when it is null.
func (r Result) Msg() string {
	if r.Message == nil {
		return ""
	}
	return *r.Message
}

// DataObject is a listed data object.
type DataObject struct {
	ID             int64  `json:"id"`
	Name           string `json:"name"`
	StringValue    string `json:"stringValue"`
	IntValue       int32  `json:"intValue"`
	ReferencerType *int   `json:"referencerType"`
	ReferencerID   *int64 `json:"referencerId"`
}

// Post sends params as a form to a path of the service, as the SDKs do.
func (e *Env) Post(path string, params url.Values) Response {
	e.t.Helper()
	return e.Do(http.MethodPost, path, params)
}

// Get sends params as a query string.
func (e *Env) Get(path string, params url.Values) Response {
	e.t.Helper()
	return e.Do(http.MethodGet, path, params)
}

// Do sends params as a form (POST) or query (any other method) to a path of the service.
func (e *Env) Do(method, path string, params url.Values) Response {
	e.t.Helper()
	var body io.Reader
	target := e.URL + path
	if method == http.MethodPost {
		body = strings.NewReader(params.Encode())
	} else if len(params) > 0 {
		target += "?" + params.Encode()
	}
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		e.t.Fatalf("request: %v", err)
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	return e.Send(req)
}

// Send sends a prepared request to the service.
func (e *Env) Send(req *http.Request) Response {
	e.t.Helper()
	resp, err := e.HTTP.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("read answer: %v", err)
	}
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// Call posts a data-object API method (e.g. "IncrementIntValueToKey") with params.
func (e *Env) Call(method string, params url.Values) Response {
	e.t.Helper()
	return e.Post("/api/data/"+method, params)
}

// Object reads a data object from the projection.
func (e *Env) Object(id int64) (state.Object, bool) {
	var o state.Object
	var ok bool
	e.Projection.Read(func(st *state.State) {
		var p *state.Object
		if p, ok = st.Object(id); ok {
			o = *p
		}
	})
	return o, ok
}

// Backend is an event-store backend the same tests run on.
type Backend struct {
	Name string
	Open func(t testing.TB) eventstore.Store
}

// Backends lists every backend Tally ships: the embedded store, and KurrentDB through its
// real client against the in-process gRPC test server.
func Backends() []Backend {
	return []Backend{{Name: "embedded", Open: OpenEmbedded}, {Name: "kurrentdb", Open: OpenKurrentTest}}
}

// OpenKurrentTest starts a KurrentDB test server and opens the KurrentDB store on it, filtered
// to Tally's streams as tally serve does. The server stops after the store closes.
func OpenKurrentTest(t testing.TB) eventstore.Store {
	t.Helper()
	server := kurrenttest.Start(t)
	prefixes := make([]string, len(domain.StreamCategories))
	for i, c := range domain.StreamCategories {
		prefixes[i] = c + "-"
	}
	s, err := kurrentdb.Open(context.Background(), kurrentdb.Config{URL: server.URL(), StreamPrefixes: prefixes})
	if err != nil {
		t.Fatalf("open KurrentDB store: %v", err)
	}
	return s
}

// Metrics scrapes url (a /metrics endpoint) and returns every sample by its name and labels,
// written as name{a="x",b="y"} with the labels in the order Prometheus sorts them (name alone
// when it has none).
func Metrics(t testing.TB, client *http.Client, url string) map[string]float64 {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: status %d", url, resp.StatusCode)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	out := map[string]float64{}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			key := name
			if len(m.GetLabel()) > 0 {
				var parts []string
				for _, l := range m.GetLabel() {
					parts = append(parts, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
				key += "{" + strings.Join(parts, ",") + "}"
			}
			switch {
			case m.GetCounter() != nil:
				out[key] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[key] = m.GetGauge().GetValue()
			case m.GetUntyped() != nil:
				out[key] = m.GetUntyped().GetValue()
			}
		}
	}
	return out
}

// Metrics scrapes the service's /metrics.
func (e *Env) Metrics() map[string]float64 {
	e.t.Helper()
	return Metrics(e.t, e.HTTP, e.URL+"/metrics")
}
