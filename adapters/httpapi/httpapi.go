// Package httpapi is Tally's inbound HTTP adapter: the Cryptolens-compatible data-object API
// under /api/data/, the vendor's admin API under /admin/v1/ (with a small client for it), and
// the operational endpoints /healthz, /readyz, /metrics and /openapi.json, split between a public and an admin
// handler (NewHandlers) for tally serve's two listeners; and the access log and the log of
// refused sign-ins. It parses requests the way the official Cryptolens SDKs send them, calls
// the ledger, and answers with the JSON those SDKs read. It holds no rules of its own beyond the
// order in which refusals are reported.
package httpapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyledger/tally/adapters/httpapi/openapi"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/domain/viewer"
)

// DefaultMaxBodyBytes is the largest request body accepted when Config leaves it unset. A
// usage log of 1000 new entries is far smaller; 8 MiB leaves room for long histories of layers.
// (tally serve sets 64 MiB: a License Server never trims its log.)
const DefaultMaxBodyBytes int64 = 8 << 20

// largeBody is the size from which a request body counts as large: a client address reads one
// large body at a time, and at most Config.MaxLargeBodies are read at once, since they are read
// and parsed before the token they carry can be checked.
const largeBody = 1 << 20

// DefaultMaxLargeBodies is how many large bodies are read at once when Config leaves it unset.
// The byte budget (Config.MaxPendingBodyBytes) is what bounds their memory; this bounds how
// many clients' bodies are in flight.
const DefaultMaxLargeBodies = 64

// Ledger is what the adapter needs from the ledger; *ledger.Service satisfies it.
type Ledger interface {
	Authenticate(ctx context.Context, secret string) (domain.Token, error)
	CheckScope(c ledger.Caller, sc ledger.Scope) error

	AddDataObject(ctx context.Context, c ledger.Caller, cmd ledger.AddDataObject) (int64, error)
	ListDataObjects(ctx context.Context, c ledger.Caller, q ledger.ListDataObjects) ([]domain.DataObject, error)
	SetIntValue(ctx context.Context, c ledger.Caller, cmd ledger.SetIntValue) error
	SetStringValue(ctx context.Context, c ledger.Caller, cmd ledger.SetStringValue) error
	IncrementIntValue(ctx context.Context, c ledger.Caller, cmd ledger.ChangeIntValue) error
	DecrementIntValue(ctx context.Context, c ledger.Caller, cmd ledger.ChangeIntValue) error
	RemoveDataObject(ctx context.Context, c ledger.Caller, cmd ledger.RemoveDataObject) error
	UploadValues(ctx context.Context, c ledger.Caller, cmd ledger.UploadValues) (ledger.UploadResult, error)

	CreateProduct(ctx context.Context, c ledger.Caller, name string) (domain.Product, error)
	CreateKey(ctx context.Context, c ledger.Caller, productID int64) (domain.LicenseKey, error)
	CreateToken(ctx context.Context, c ledger.Caller, spec ledger.TokenSpec) (domain.Token, string, error)
	RevokeToken(ctx context.Context, c ledger.Caller, id uuid.UUID) error
	Products() []domain.Product
	Keys(productID int64) []domain.LicenseKey
	Tokens() []domain.Token
	ListUploads(ctx context.Context, f ledger.UploadFilter) ([]ledger.UploadRecord, error)
	ResolveRefusedUpload(ctx context.Context, c ledger.Caller, cmd ledger.ResolveUpload) (domain.UploadResolutionDecided, error)
}

var _ Ledger = (*ledger.Service)(nil)

// Config wires the handler.
type Config struct {
	Ledger Ledger
	// AdminToken is the credential of the admin API (Authorization: Bearer). Empty disables
	// the admin API: every admin request is refused as unauthenticated.
	AdminToken string
	// Ready reports whether the service can take requests (nil: always ready).
	Ready func() error
	// WriteHealth reports whether the event store takes writes (nil: always). /readyz reports
	// it besides Ready; unlike Ready, it refuses no request: a request is how the store is
	// seen to take writes again.
	WriteHealth func() error
	// Metrics serves /metrics (nil: 404).
	Metrics http.Handler
	// Registry receives the request metrics (nil: none are recorded).
	Registry *prometheus.Registry
	Logger   *slog.Logger
	// MaxBodyBytes bounds request bodies (0: DefaultMaxBodyBytes).
	MaxBodyBytes int64
	// MaxLargeBodies bounds how many requests with a body over 1 MiB (or of unknown length) are
	// read at once (0: DefaultMaxLargeBodies).
	MaxLargeBodies int
	// LargeBodiesPerAddress is how many of them one client address may send at once (0: 1).
	// Behind a reverse proxy every client has the proxy's address: raise it there.
	LargeBodiesPerAddress int
	// MaxPendingBodyBytes bounds the memory reserved by bodies over 64 KiB being read and
	// handled, whoever sends them (0: DefaultMaxPendingBodyBytes). A body reserves its announced
	// length (one of unknown length, MaxBodyBytes), at most this, before it is read.
	MaxPendingBodyBytes int64
	// MinBodyRate is the average rate in bytes/s at which a body must arrive after
	// BodyRateGrace, or the connection is cut (0: DefaultMinBodyRate; negative: no minimum).
	MinBodyRate float64
	// BodyRateGrace is how long a body may take before MinBodyRate applies (0:
	// DefaultBodyRateGrace).
	BodyRateGrace time.Duration
	// WriteTimeout, when set, is the time the answer gets once a body is read, replacing the
	// server's write deadline, which a slow (but fast enough) body may have used up.
	WriteTimeout time.Duration
	// RateLimit is how many data-object API requests per second each access token may make
	// (0: no limit; tally serve uses DefaultRateLimit). Requests above it are refused with 429.
	RateLimit float64
	// RateBurst is how many requests a token may make at once (0: twice RateLimit).
	RateBurst int
	// SignIns logs refused credentials, rate-limited (nil: not logged).
	SignIns *SignInLog
	// Backup writes a backup archive of the server's data to w for GET /admin/v1/backup (nil:
	// 501, as on a KurrentDB store). It may return ErrBackupRunning.
	Backup func(ctx context.Context, w io.Writer) error
	// Verify verifies the live server against a replay of its store for POST /admin/v1/verify
	// (nil: 501); RebuildReadModels rebuilds its read models online for
	// POST /admin/v1/readmodels/rebuild (nil: 501). Both report progress as they go and may
	// return ErrAuditRunning (admin_audit.go).
	Verify            func(ctx context.Context, opts VerifyOptions, progress func(AuditProgress)) (VerifyResult, error)
	RebuildReadModels func(ctx context.Context, progress func(AuditProgress)) (RebuildResult, error)
	// Viewers keeps the read-only viewer credentials (nil: none; /admin/v1/viewers is absent).
	// A viewer may call the admin API's reads and is refused every change with 403.
	Viewers Viewers
}

// Viewers is what the admin API needs of the viewer credentials; *viewer.Service is one.
type Viewers interface {
	Create(ctx context.Context, meta domain.Metadata, name string, expires *time.Time) (viewer.Credential, string, error)
	Revoke(ctx context.Context, meta domain.Metadata, id uuid.UUID) (viewer.Credential, error)
	List(ctx context.Context) ([]viewer.Credential, error)
	Authenticate(ctx context.Context, secret string) (viewer.Credential, error)
}

// server holds the handler's dependencies.
type server struct {
	ledger     Ledger
	adminToken string
	ready      func() error
	writes     func() error // nil: not checked
	logger     *slog.Logger
	maxBody    int64
	metrics    *requestMetrics
	limiter    *tokenLimiter // nil: no rate limit
	bodies     *bodyGate
	// metricsHandler serves /metrics on the admin routes (nil: 404).
	metricsHandler http.Handler
	signIns        *SignInLog // nil: failed sign-ins are not logged
	viewers        Viewers    // nil: no viewer credentials
	backupFn       func(ctx context.Context, w io.Writer) error
	verifyFn       func(ctx context.Context, opts VerifyOptions, progress func(AuditProgress)) (VerifyResult, error)
	rebuildFn      func(ctx context.Context, progress func(AuditProgress)) (RebuildResult, error)
	// openapiDoc serves the OpenAPI document on the admin routes.
	openapiDoc http.Handler
}

// New returns the HTTP handler of the whole service: every route of both listeners (tests and
// single-listener use).
func New(cfg Config) (http.Handler, error) {
	s, err := newServer(cfg)
	if err != nil {
		return nil, err
	}
	return s.handler(publicRoutes | adminRoutes), nil
}

// Handlers are the two listeners' handlers of one service, sharing its limits and metrics.
type Handlers struct {
	// Public serves what customers' applications call: the Cryptolens API under /api/,
	// /healthz and /readyz.
	Public http.Handler
	// Admin serves the vendor's admin API under /admin/v1/ and /metrics.
	Admin http.Handler
}

// NewHandlers returns the handlers of the public and the admin listener. A path one listener
// does not serve is answered as unknown there (see notFound), whether or not the other serves it.
func NewHandlers(cfg Config) (Handlers, error) {
	s, err := newServer(cfg)
	if err != nil {
		return Handlers{}, err
	}
	return Handlers{Public: s.handler(publicRoutes), Admin: s.handler(adminRoutes)}, nil
}

// routeSet says which routes a handler serves.
type routeSet uint8

const (
	publicRoutes routeSet = 1 << iota // Cryptolens API, /healthz, /readyz
	adminRoutes                       // admin API, /metrics
)

func newServer(cfg Config) (*server, error) {
	if cfg.Ledger == nil {
		return nil, errors.New("httpapi: nil ledger")
	}
	s := &server{
		ledger: cfg.Ledger, adminToken: cfg.AdminToken, ready: cfg.Ready,
		writes: cfg.WriteHealth, logger: cfg.Logger, maxBody: cfg.MaxBodyBytes,
		limiter:        newTokenLimiter(cfg.RateLimit, cfg.RateBurst),
		metricsHandler: cfg.Metrics, signIns: cfg.SignIns, viewers: cfg.Viewers,
		backupFn: cfg.Backup, verifyFn: cfg.Verify, rebuildFn: cfg.RebuildReadModels,
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	s.bodies = newBodyGate(cfg, s.maxBody, s.logger)
	if cfg.Registry != nil {
		m, err := newRequestMetrics(cfg.Registry)
		if err != nil {
			return nil, err
		}
		s.metrics = m
	}
	doc, err := openapi.Handler()
	if err != nil {
		return nil, err
	}
	s.openapiDoc = doc
	return s, nil
}

// handler builds the router of a set of routes.
func (s *server) handler(routes routeSet) http.Handler {
	// The router sees normalised paths only (see normalise), so it must not clean or
	// redirect them itself: a redirect would turn an SDK's POST into a GET without its body.
	r := mux.NewRouter().SkipClean(true)
	r.NotFoundHandler = http.HandlerFunc(s.notFound)

	if routes&publicRoutes != 0 {
		// Methods are told apart in the handlers rather than with mux's Methods matchers: in
		// mux 1.8.1 a later route under the same prefix clears a method mismatch, so the
		// mismatch would be answered as 404 instead of 405.
		api := r.PathPrefix("/api/data/").Subrouter()
		for _, m := range dataMethods() {
			api.Handle("/"+strings.ToLower(m.name), s.dataHandler(m))
		}
		r.Handle("/healthz", s.byMethod(map[string]http.Handler{http.MethodGet: s.named("healthz", http.HandlerFunc(s.healthz))}))
		r.Handle("/readyz", s.byMethod(map[string]http.Handler{http.MethodGet: s.named("readyz", http.HandlerFunc(s.readyz))}))
	}

	if routes&adminRoutes != 0 {
		admin := r.PathPrefix("/admin/v1/").Subrouter()
		admin.Handle("/products", s.byMethod(map[string]http.Handler{
			http.MethodPost: s.adminHandler("admin.createProduct", s.createProduct),
			http.MethodGet:  s.adminRead("admin.listProducts", s.listProducts),
		}))
		admin.Handle("/keys", s.byMethod(map[string]http.Handler{
			http.MethodPost: s.adminHandler("admin.createKey", s.createKey),
			http.MethodGet:  s.adminRead("admin.listKeys", s.listKeys),
		}))
		admin.Handle("/tokens", s.byMethod(map[string]http.Handler{
			http.MethodPost: s.adminHandler("admin.createToken", s.createToken),
			http.MethodGet:  s.adminRead("admin.listTokens", s.listTokens),
		}))
		admin.Handle("/tokens/{id}/revoke", s.byMethod(map[string]http.Handler{
			http.MethodPost: s.adminHandler("admin.revokeToken", s.revokeToken),
		}))
		admin.Handle("/backup", s.byMethod(map[string]http.Handler{http.MethodGet: http.HandlerFunc(s.backup)}))
		s.integrityRoutes(admin)
		s.auditRoutes(admin)
		s.uploadRoutes(admin)
		if s.viewers != nil {
			admin.Handle("/viewers", s.byMethod(map[string]http.Handler{
				http.MethodPost: s.adminHandler("admin.createViewer", s.createViewer),
				http.MethodGet:  s.adminRead("admin.listViewers", s.listViewers),
			}))
			admin.Handle("/viewers/{id}/revoke", s.byMethod(map[string]http.Handler{
				http.MethodPost: s.adminHandler("admin.revokeViewer", s.revokeViewer),
			}))
		}
		if s.metricsHandler != nil {
			r.Handle("/metrics", s.byMethod(map[string]http.Handler{http.MethodGet: s.named("metrics", s.metricsHandler)}))
		}
		// The API's contract, beside the admin API (it documents every route, so adding a
		// route means documenting it: TestOpenAPICoversRoutes).
		r.Handle("/openapi.json", s.byMethod(map[string]http.Handler{http.MethodGet: s.named("openapi", s.openapiDoc)}))
	}

	return &routedHandler{Handler: s.normalise(s.observe(r)), router: r}
}

// normalise rewrites the path the way Cryptolens clients spell it into the one form the router
// knows: slashes collapsed, no trailing slash, lower case. So /api//data/IncrementIntValueToKey/
// routes as /api/data/incrementintvaluetokey.
func (s *server) normalise(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := NormalisePath(r.URL.Path)
		if p != r.URL.Path {
			r2 := new(http.Request)
			*r2 = *r
			u := *r.URL
			u.Path, u.RawPath = p, ""
			r2.URL = &u
			r = r2
		}
		next.ServeHTTP(w, r)
	})
}

// NormalisePath collapses runs of slashes, drops a trailing slash and lower-cases the path: the
// one form the router knows (the OpenAPI tests match paths the same way).
func NormalisePath(p string) string {
	var b strings.Builder
	b.Grow(len(p) + 1)
	prevSlash := false
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '/' {
			if prevSlash {
				continue
			}
			prevSlash = true
		} else {
			prevSlash = false
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
		}
		b.WriteByte(c)
	}
	out := b.String()
	if len(out) > 1 && strings.HasSuffix(out, "/") {
		out = out[:len(out)-1]
	}
	if !strings.HasPrefix(out, "/") {
		out = "/" + out
	}
	return out
}

func (s *server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// readyz answers 200 "ready" while the service takes requests and the store takes writes,
// else 503 with the reason.
func (s *server) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	for _, check := range []func() error{s.ready, s.writes} {
		if check == nil {
			continue
		}
		if err := check(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
	}
	_, _ = w.Write([]byte("ready\n"))
}

// notFound answers an unknown path. Under /api/, and under /data/ (an SDK whose base URL lacks
// the /api/ prefix), it answers in the Cryptolens shape, so that the SDK reports a readable
// message rather than failing to parse a plain-text 404.
func (s *server) notFound(w http.ResponseWriter, r *http.Request) {
	if isCryptolensPath(r.URL.Path) {
		s.writeResult(w, r, http.StatusNotFound, errorResult("Unknown method."))
		return
	}
	if strings.HasPrefix(r.URL.Path, "/admin/") {
		writeAdminJSON(w, http.StatusNotFound, adminError{Error: "not found"})
		return
	}
	http.NotFound(w, r)
}

// isCryptolensPath reports whether a (normalised) path is one a Cryptolens SDK might call.
func isCryptolensPath(p string) bool {
	return p == "/api" || p == "/data" || strings.HasPrefix(p, "/api/") || strings.HasPrefix(p, "/data/")
}

func (s *server) methodNotAllowed(w http.ResponseWriter, r *http.Request) {
	if isCryptolensPath(r.URL.Path) {
		s.writeResult(w, r, http.StatusMethodNotAllowed, errorResult("Use GET or POST."))
		return
	}
	if strings.HasPrefix(r.URL.Path, "/admin/") {
		writeAdminJSON(w, http.StatusMethodNotAllowed, adminError{Error: "method not allowed"})
		return
	}
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
}

// byMethod dispatches on the HTTP method; HEAD is served as GET.
func (s *server) byMethod(handlers map[string]http.Handler) http.Handler {
	return &methodSwitch{s: s, handlers: handlers}
}

// methodSwitch is a route's handler that dispatches on the HTTP method. It says which methods
// it takes, so that the routes can be listed (Routes).
type methodSwitch struct {
	s        *server
	handlers map[string]http.Handler
}

func (m *methodSwitch) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	method := r.Method
	if method == http.MethodHead {
		method = http.MethodGet
	}
	h, ok := m.handlers[method]
	if !ok {
		m.s.methodNotAllowed(w, r)
		return
	}
	h.ServeHTTP(w, r)
}

// AllowedMethods lists the methods served, HEAD left out (it is served wherever GET is).
func (m *methodSwitch) AllowedMethods() []string {
	out := make([]string, 0, len(m.handlers))
	for method := range m.handlers {
		out = append(out, method)
	}
	return out
}
