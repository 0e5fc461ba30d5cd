package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/tallyledger/tally/adapters/auditapi"
	"github.com/tallyledger/tally/adapters/console"
	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/kurrentdb"
	"github.com/tallyledger/tally/adapters/prommetrics"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/cmd/tally/internal/auditcli"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/domain/viewer"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/readmodel"
)

// serveConfig is everything tally serve is configured with.
type serveConfig struct {
	Addr         string // public listener: the Cryptolens API, /healthz, /readyz
	AdminAddr    string // admin listener: the admin API, /v1, /metrics
	TLSCert      string // public listener's certificate and key (PEM); empty: plain HTTP
	TLSKey       string
	AdminTLSCert string // admin listener's
	AdminTLSKey  string
	AccessLog    bool
	// WriteProbe is how often the store's write health is probed for /readyz.
	WriteProbe   time.Duration
	LogFormat    string
	LogLevel     string
	Store        string
	KurrentURL   string
	RSAKeys      []string
	MaxBodyBytes int64
	UploadLease  time.Duration
	RateLimit    float64
	RateBurst    int
	// Hostile clients and uploads against direct calls (docs/reliability.md, docs/performance.md).
	MinBodyRate         float64
	BodyRateGrace       time.Duration
	MaxPendingBodyBytes int64
	LargeBodiesPerAddr  int
	DecodeWorkers       int
	BusyDecodeWorkers   int
	// onReady, if set, is called with the listening addresses once the server is ready (tests
	// use it instead of polling).
	onReady func(public, admin string)
	// wrapStore, if set, wraps the opened store (tests inject faults with it).
	wrapStore func(eventstore.Store) eventstore.Store
	// onWriteProbe, if set, sees the outcome of every write probe (tests wait on it).
	onWriteProbe func(error)
	// onCertReload, if set, sees the outcome of every certificate reload (tests wait on it).
	onCertReload func(error)
	// wrapHandler, if set, wraps each listener's whole handler (tests validate every answer
	// against the OpenAPI document with it).
	wrapHandler func(listener string, h http.Handler) http.Handler
}

func newServeCommand(g *globalFlags) *cobra.Command {
	var cfg serveConfig
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Tally server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := newLogger(cmd.ErrOrStderr(), cfg.LogFormat, cfg.LogLevel)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), logger, g, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Addr, "addr", "127.0.0.1:8080", "public listen address: the Cryptolens API, /healthz, /readyz (TALLY_ADDR)")
	f.StringVar(&cfg.AdminAddr, "admin-addr", "127.0.0.1:8081", "admin listen address: the admin API, /v1, /metrics (TALLY_ADMIN_ADDR)")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "PEM certificate (chain) of the public listener; with --tls-key it serves HTTPS, re-read on SIGHUP (TALLY_TLS_CERT)")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "PEM private key of the public listener (TALLY_TLS_KEY)")
	f.StringVar(&cfg.AdminTLSCert, "admin-tls-cert", "", "PEM certificate (chain) of the admin listener; with --admin-tls-key it serves HTTPS, re-read on SIGHUP (TALLY_ADMIN_TLS_CERT)")
	f.StringVar(&cfg.AdminTLSKey, "admin-tls-key", "", "PEM private key of the admin listener (TALLY_ADMIN_TLS_KEY)")
	f.BoolVar(&cfg.AccessLog, "access-log", true, "log every request: method, path, status, duration, bytes, request id, client address (TALLY_ACCESS_LOG)")
	f.DurationVar(&cfg.WriteProbe, "write-probe-interval", 10*time.Second, "how often /readyz's check that the event store takes writes runs (TALLY_WRITE_PROBE_INTERVAL)")
	f.StringVar(&cfg.LogFormat, "log-format", "text", "log format: text or json (TALLY_LOG_FORMAT)")
	f.StringVar(&cfg.LogLevel, "log-level", "info", "log level: debug, info, warn, error (TALLY_LOG_LEVEL)")
	f.StringVar(&cfg.Store, "store", "embedded", "event store: embedded or kurrentdb (TALLY_STORE)")
	f.StringVar(&cfg.KurrentURL, "kurrentdb-url", "", "KurrentDB connection string, esdb://… (TALLY_KURRENTDB_URL)")
	f.StringSliceVar(&cfg.RSAKeys, "rsa-key", nil, "RSA private key PEM file(s); the first is current (TALLY_RSA_KEY); default: keys in the data directory, created on first start")
	// A License Server never trims its log: 100,000 layers are about 31 MB, 41 MB of base64.
	f.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", 64<<20, "largest request body, and so usage log, accepted (TALLY_MAX_BODY_BYTES)")
	f.Float64Var(&cfg.RateLimit, "rate-limit", httpapi.DefaultRateLimit, "data-object API requests per second per access token; 0 turns the limit off (TALLY_RATE_LIMIT)")
	f.IntVar(&cfg.RateBurst, "rate-burst", httpapi.DefaultRateBurst, "requests a token may send at once; 0: twice --rate-limit (TALLY_RATE_BURST)")
	f.Float64Var(&cfg.MinBodyRate, "min-body-rate", httpapi.DefaultMinBodyRate, "bytes/s a request body must average after --body-rate-grace, or the connection is cut; negative turns it off (TALLY_MIN_BODY_RATE)")
	f.DurationVar(&cfg.BodyRateGrace, "body-rate-grace", httpapi.DefaultBodyRateGrace, "how long a request body may take before --min-body-rate applies (TALLY_BODY_RATE_GRACE)")
	f.Int64Var(&cfg.MaxPendingBodyBytes, "max-pending-body-bytes", httpapi.DefaultMaxPendingBodyBytes, "memory reserved at most for request bodies over 64 KiB being read and handled (TALLY_MAX_PENDING_BODY_BYTES)")
	f.IntVar(&cfg.LargeBodiesPerAddr, "large-bodies-per-address", 1, "request bodies over 1 MiB one client address may send at once; behind a reverse proxy every client has its address (TALLY_LARGE_BODIES_PER_ADDRESS)")
	f.IntVar(&cfg.DecodeWorkers, "decode-workers", 0, "usage logs decoded at once; 0: one per processor (TALLY_DECODE_WORKERS)")
	f.IntVar(&cfg.BusyDecodeWorkers, "decode-workers-busy", 0, "usage logs decoded at once while direct data-object calls run; 0: half the processors, at least 1 (TALLY_DECODE_WORKERS_BUSY)")
	f.DurationVar(&cfg.UploadLease, "upload-lease", 30*time.Second, "how long an interrupted upload may stay undecided before recovery decides it (TALLY_UPLOAD_LEASE)")
	return cmd
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// serve runs the server until ctx ends, then shuts down in order: stop accepting and finish
// in-flight requests, stop the projection (which persists its checkpoint), close the store.
func serve(ctx context.Context, logger *slog.Logger, g *globalFlags, cfg serveConfig) error {
	if cfg.UploadLease < time.Second {
		return fmt.Errorf("--upload-lease %v: at least 1s", cfg.UploadLease)
	}
	if pending := cmp.Or(max(cfg.MaxPendingBodyBytes, 0), httpapi.DefaultMaxPendingBodyBytes); pending < cfg.MaxBodyBytes {
		// A body reserves at most the budget: one larger than it would be held beyond it.
		return fmt.Errorf("--max-pending-body-bytes %d: at least --max-body-bytes (%d)", pending, cfg.MaxBodyBytes)
	}
	if cfg.DecodeWorkers < 0 || cfg.BusyDecodeWorkers < 0 {
		return errors.New("--decode-workers and --decode-workers-busy: 0 (the default) or more")
	}
	if cfg.AdminAddr == "" {
		return errors.New("--admin-addr: an address is required (the admin API has its own listener)")
	}
	if cfg.WriteProbe <= 0 {
		cfg.WriteProbe = 10 * time.Second
	}
	// Certificates first: a wrong file is reported before anything is opened.
	publicCert, err := listenerCertificate(cfg.TLSCert, cfg.TLSKey, "--tls")
	if err != nil {
		return err
	}
	adminCert, err := listenerCertificate(cfg.AdminTLSCert, cfg.AdminTLSKey, "--admin-tls")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(g.DataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if err := checkDataDirSecrets(g.DataDir, cfg.RSAKeys); err != nil {
		return err
	}
	adminToken, err := loadOrCreateAdminToken(g)
	if err != nil {
		return err
	}
	tokenSource := adminTokenFile(g.DataDir)
	if g.AdminToken != "" {
		tokenSource = "--admin-token (TALLY_ADMIN_TOKEN)"
	}
	if err := checkAdminTokenStrength(adminToken, tokenSource); err != nil {
		return err
	}
	keys, err := loadKeys(g.DataDir, cfg.RSAKeys)
	if err != nil {
		return err
	}
	store, err := openStore(ctx, logger, g.DataDir, cfg)
	if err != nil {
		return err
	}
	if cfg.wrapStore != nil {
		store = cfg.wrapStore(store)
	}
	defer func() {
		if err := store.Close(); err != nil {
			logger.Error("close store", "err", err)
		}
	}()
	var probeDir string
	if cfg.Store == "embedded" {
		probeDir = embeddedStoreDir(g.DataDir)
	}
	health := newStoreHealth(store, probeDir)

	started := time.Now()
	proj, err := projections.NewCurrent(ctx, store, projections.CurrentOptions{
		// The file tally replay writes and tally verify reads.
		StatePath: filepath.Join(g.DataDir, auditcli.SnapshotFile),
		// What an earlier build kept instead: read once, then replaced by the state database.
		SnapshotPath: filepath.Join(g.DataDir, auditcli.LegacySnapshotFile),
		Logger:       logger.With("component", "projection"),
	})
	if err != nil {
		return err
	}
	projCtx, stopProjection := context.WithCancel(context.WithoutCancel(ctx))
	projDone := make(chan error, 1)
	go func() { projDone <- proj.Run(projCtx) }()
	defer func() {
		stopProjection()
		if err := <-projDone; err != nil && !errors.Is(err, context.Canceled) {
			logger.Error("projection", "err", err)
		}
	}()

	// The usage and value-as-of read model, in its own file, checkpointed by the store's
	// position: a new instance (or a lost file) builds it by catching up.
	// It runs until shutdown, and can be rebuilt online (POST /admin/v1/readmodels/rebuild).
	usageModel, err := readmodel.OpenLive(ctx, store, filepath.Join(g.DataDir, readmodel.File), readmodel.Options{Logger: logger.With("component", "readmodel")})
	if err != nil {
		return err
	}
	defer func() {
		if err := usageModel.Close(); err != nil {
			logger.Error("read model", "err", err)
		}
	}()
	online := &onlineAudit{store: store, proj: proj, model: usageModel, logger: logger.With("component", "audit")}

	registry := prometheus.NewRegistry()
	ledgerMetrics, err := prommetrics.NewLedger(registry)
	if err != nil {
		return err
	}
	if err := registerServeMetrics(registry, store, proj, keys, g.DataDir); err != nil {
		return err
	}
	registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tally_readmodel_position",
		Help: "Global position of the last event in the usage read model (readmodels/usage.db).",
	}, func() float64 { return float64(usageModel.Position()) }))
	svc, err := ledger.New(ledger.Config{
		Store: health.writer(), View: proj, Decoder: &usagelog.LedgerDecoder{Decoder: &usagelog.Decoder{Keys: keys, MaxInputBytes: int(cfg.MaxBodyBytes)}},
		Instance: uuid.New(), UploadLease: cfg.UploadLease, Logger: logger.With("component", "ledger"),
		DecodeWorkers: cfg.DecodeWorkers, BusyDecodeWorkers: cfg.BusyDecodeWorkers, Metrics: ledgerMetrics,
	})
	if err != nil {
		return err
	}

	registerIntegrityMetrics(registry, svc)

	var backupFn func(ctx context.Context, w io.Writer) error
	if es, ok := store.(*embedded.Store); ok {
		backupFn = newBackupFunc(g.DataDir, es, cfg.RSAKeys, logger.With("component", "backup"))
	}
	ready := newReadiness()
	readyCheck := func() error {
		// A projection that stopped no longer moves: every write would be refused.
		if err := proj.Err(); err != nil {
			return fmt.Errorf("projection stopped: %w", err)
		}
		return ready.check()
	}
	// Read-only viewer credentials live on the store, so every instance on it shares them.
	viewers := viewer.New(store, nil)
	// Failed sign-ins: a few lines a second at most, whatever a client sends.
	signIns := httpapi.NewSignInLog(logger.With("component", "auth"), 1, 10)
	handlers, err := httpapi.NewHandlers(httpapi.Config{
		Ledger: svc, AdminToken: adminToken, Ready: readyCheck, WriteHealth: health.check, Viewers: viewers,
		Metrics:  promhttp.HandlerFor(registry, promhttp.HandlerOpts{Registry: registry}),
		Registry: registry, Logger: logger.With("component", "http"), MaxBodyBytes: cfg.MaxBodyBytes,
		RateLimit: cfg.RateLimit, RateBurst: cfg.RateBurst, SignIns: signIns, Backup: backupFn,
		Verify: online.verify, RebuildReadModels: online.rebuild,
		MinBodyRate: cfg.MinBodyRate, BodyRateGrace: cfg.BodyRateGrace, MaxPendingBodyBytes: cfg.MaxPendingBodyBytes,
		LargeBodiesPerAddress: cfg.LargeBodiesPerAddr,
		WriteTimeout:          defaultServerTimeouts().Write,
	})
	if err != nil {
		return err
	}
	audit, err := auditapi.New(auditapi.Config{
		Store: store, Ledger: svc, AdminToken: adminToken, ReadModel: usageModel, Viewers: viewers, View: proj,
		Logger: logger.With("component", "audit"), SignIns: signIns,
	})
	if err != nil {
		return err
	}
	consoleFiles, err := console.New()
	if err != nil {
		return err
	}
	// The admin listener's mounts: each serves the paths under its prefix. Add the console,
	// the OpenAPI document and the like here.
	adminMounts := []adminMount{
		{Prefix: "/v1/", Handler: whenReady(readyCheck, audit)},
		{Prefix: console.Prefix, Handler: consoleFiles},
		{Prefix: strings.TrimSuffix(console.Prefix, "/"), Handler: consoleFiles}, // redirects to /console/
	}
	listeners := []*listener{
		{Name: "public", Addr: cfg.Addr, Handler: handlers.Public, Cert: publicCert},
		{Name: "admin", Addr: cfg.AdminAddr, Handler: adminHandler(handlers.Admin, adminMounts...), Cert: adminCert},
	}
	for _, l := range listeners {
		if cfg.wrapHandler != nil {
			l.Handler = cfg.wrapHandler(l.Name, l.Handler)
		}
		if cfg.AccessLog {
			l.Handler = httpapi.AccessLog(logger.With("component", "access", "listener", l.Name), l.Handler)
		}
		if err := l.listen(); err != nil {
			closeListeners(listeners)
			return err
		}
	}
	serveErr := make(chan error, len(listeners))
	for _, l := range listeners {
		l.server = newHTTPServer(l.Handler, defaultServerTimeouts(), logger)
		go func() { serveErr <- l.serve() }()
		logger.Info("listening", "listener", l.Name, "addr", l.ln.Addr().String(), "tls", l.Cert != nil)
	}
	logger.Info("serving", "store", cfg.Store, "data_dir", g.DataDir)

	// Background work ends before the projection stops and the store closes (the deferred
	// calls above run after this one).
	bgCtx, stopBackground := context.WithCancel(ctx)
	var background sync.WaitGroup
	defer func() {
		stopBackground()
		background.Wait()
	}()
	// SIGHUP is caught from here on (before ready), whether or not a listener has TLS.
	hangup := make(chan os.Signal, 1)
	signal.Notify(hangup, syscall.SIGHUP)
	defer signal.Stop(hangup)
	background.Add(2)
	go func() {
		defer background.Done()
		reloadCertificatesOnHangup(bgCtx, hangup, logger, []*certificate{publicCert, adminCert}, cfg.onCertReload)
	}()
	go func() {
		defer background.Done()
		health.runProbes(bgCtx, cfg.WriteProbe, logger.With("component", "readiness"), cfg.onWriteProbe)
	}()
	background.Add(1)
	go func() {
		defer background.Done()
		// Ready once the projection holds every event stored before start, and interrupted
		// uploads are decided.
		if err := catchUpToHead(bgCtx, store, proj); err != nil {
			ready.fail(err)
			return
		}
		force := cfg.Store == "embedded" // the store's file lock proves no other instance runs
		n, err := svc.RecoverUploads(bgCtx, force)
		if err != nil {
			logger.Error("recover uploads", "err", err)
			ready.fail(fmt.Errorf("recover interrupted uploads: %w", err))
			return
		}
		if n > 0 {
			logger.Info("recovered interrupted uploads", "count", n)
		}
		ready.set()
		logger.Info("ready", "position", proj.Position(), "checkpoint", proj.LoadedAt(), "took", time.Since(started).String())
		if cfg.onReady != nil {
			cfg.onReady(listeners[0].ln.Addr().String(), listeners[1].ln.Addr().String())
		}
		svc.RunRecovery(bgCtx)
	}()

	var runErr error
	select {
	case err := <-serveErr:
		runErr = fmt.Errorf("http server: %w", err)
		logger.Error("http server stopped; shutting down", "err", err)
	case err := <-projDone:
		// A projection that stopped no longer moves, so every command would be refused. Exit,
		// so that a supervisor restarts the process and the restart catches up again.
		projDone <- err // for the deferred wait
		runErr = fmt.Errorf("projection stopped: %w", err)
		logger.Error("projection stopped; shutting down", "err", err)
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	var shutdown sync.WaitGroup
	for _, l := range listeners {
		shutdown.Add(1)
		go func() {
			defer shutdown.Done()
			if err := l.server.Shutdown(shutdownCtx); err != nil {
				logger.Error("http shutdown", "listener", l.Name, "err", err)
			}
		}()
	}
	shutdown.Wait()
	return runErr
}

// embeddedStoreDir is the embedded store's directory inside the data directory.
func embeddedStoreDir(dataDir string) string { return filepath.Join(dataDir, "events") }

// listener is one of tally serve's listeners: an address, what it serves, and its TLS
// certificate (nil: plain HTTP).
type listener struct {
	Name    string
	Addr    string
	Handler http.Handler
	Cert    *certificate
	ln      net.Listener
	server  *http.Server
}

func (l *listener) listen() error {
	ln, err := net.Listen("tcp", l.Addr)
	if err != nil {
		return fmt.Errorf("listen on the %s address: %w", l.Name, err)
	}
	if l.Cert != nil {
		ln = tls.NewListener(ln, l.Cert.serverConfig())
	}
	l.ln = ln
	return nil
}

func (l *listener) serve() error {
	if err := l.server.Serve(l.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s listener: %w", l.Name, err)
	}
	return nil
}

// closeListeners closes those listeners that were opened (start-up failed half way).
func closeListeners(ls []*listener) {
	for _, l := range ls {
		if l.ln != nil {
			_ = l.ln.Close()
		}
	}
}

// adminMount is a handler the admin listener serves for the paths under Prefix (a prefix that
// ends in "/"), or for the path Prefix itself (one that does not, such as "/openapi.json").
type adminMount struct {
	Prefix  string
	Handler http.Handler
}

// adminHandler is the admin listener's handler: the mounts for their paths, the admin API
// (with /metrics) for the rest. The mounts see the path as the client sent it.
func adminHandler(api http.Handler, mounts ...adminMount) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, m := range mounts {
			if m.matches(r.URL.Path) {
				m.Handler.ServeHTTP(w, r)
				return
			}
		}
		api.ServeHTTP(w, r)
	})
}

func (m adminMount) matches(path string) bool {
	if strings.HasSuffix(m.Prefix, "/") {
		return strings.HasPrefix(path, m.Prefix)
	}
	return path == m.Prefix
}

// reloadCertificatesOnHangup reads the listeners' certificates again on every SIGHUP (from
// hup) until ctx ends. A reload that fails keeps the certificates in use and says why. onReload,
// if set, sees each outcome.
func reloadCertificatesOnHangup(ctx context.Context, hup <-chan os.Signal, logger *slog.Logger, certs []*certificate, onReload func(error)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		n, err := reloadCertificates(certs)
		switch {
		case err != nil:
			logger.Error("SIGHUP: certificates not reloaded; the ones in use stay", "err", err)
		case n == 0:
			logger.Info("SIGHUP: no listener has TLS; nothing to reload")
		default:
			logger.Info("SIGHUP: certificates reloaded", "listeners", n)
		}
		if onReload != nil {
			onReload(err)
		}
	}
}

// reloadCertificates reloads every certificate given (nil ones are listeners without TLS) and
// says how many there were.
func reloadCertificates(certs []*certificate) (int, error) {
	var errs []error
	n := 0
	for _, c := range certs {
		if c != nil {
			n++
			errs = append(errs, c.reload())
		}
	}
	return n, errors.Join(errs...)
}

// serverTimeouts bound how long a client may take over each part of a request, so that slow
// or stalled clients (slowloris) cannot hold connections and memory indefinitely.
type serverTimeouts struct {
	ReadHeader time.Duration // the request line and headers
	Read       time.Duration // the whole request, body included
	Write      time.Duration // from the end of the headers to the end of the answer
	Idle       time.Duration // between requests on a kept-alive connection
	MaxHeader  int           // bytes of request line and headers
}

// defaultServerTimeouts are tally serve's. An upload of a long log on a slow link fits in the
// read timeout; a client dribbling its headers is cut off after ReadHeader.
func defaultServerTimeouts() serverTimeouts {
	return serverTimeouts{
		ReadHeader: 10 * time.Second,
		Read:       60 * time.Second,
		Write:      60 * time.Second,
		Idle:       120 * time.Second,
		MaxHeader:  http.DefaultMaxHeaderBytes, // 1 MiB: a GET upload carries its log in the query string
	}
}

// newHTTPServer is the HTTP server tally serve runs: the handler behind the timeouts and the
// header limit, with the server's own errors in the log.
func newHTTPServer(handler http.Handler, to serverTimeouts, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: to.ReadHeader,
		ReadTimeout:       to.Read,
		WriteTimeout:      to.Write,
		IdleTimeout:       to.Idle,
		MaxHeaderBytes:    to.MaxHeader,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

// catchUpToHead waits until the projection holds the last event the store had when called.
func catchUpToHead(ctx context.Context, store eventstore.Store, proj *projections.Current) error {
	head, err := eventstore.Head(ctx, store, proj.Position())
	if err != nil {
		return err
	}
	return proj.WaitFor(ctx, head)
}

func openStore(ctx context.Context, logger *slog.Logger, dataDir string, cfg serveConfig) (eventstore.Store, error) {
	switch cfg.Store {
	case "embedded":
		s, err := embedded.Open(ctx, embeddedStoreDir(dataDir), embedded.WithLogger(logger.With("component", "eventstore")))
		if err != nil {
			return nil, fmt.Errorf("open embedded store: %w", err)
		}
		return s, nil
	case "kurrentdb":
		if cfg.KurrentURL == "" {
			return nil, errors.New("--store kurrentdb needs --kurrentdb-url (TALLY_KURRENTDB_URL)")
		}
		prefixes := make([]string, len(domain.StreamCategories))
		for i, c := range domain.StreamCategories {
			prefixes[i] = c + "-"
		}
		s, err := kurrentdb.Open(ctx, kurrentdb.Config{URL: cfg.KurrentURL, Logger: logger.With("component", "kurrentdb"), StreamPrefixes: prefixes})
		if err != nil {
			return nil, fmt.Errorf("open KurrentDB store: %w", err)
		}
		return s, nil
	}
	return nil, fmt.Errorf("--store %q: want embedded or kurrentdb", cfg.Store)
}

func loadKeys(dataDir string, paths []string) (*usagelog.KeyRing, error) {
	if len(paths) > 0 {
		kr, err := usagelog.LoadKeyRingFiles(paths...)
		if err != nil {
			return nil, fmt.Errorf("load RSA keys: %w", err)
		}
		return kr, nil
	}
	kr, err := usagelog.LoadOrCreateKeyRing(dataDir)
	if err != nil {
		return nil, fmt.Errorf("RSA keys in %s: %w", dataDir, err)
	}
	return kr, nil
}

// loadOrCreateAdminToken returns TALLY_ADMIN_TOKEN, or the token in the data directory,
// creating it (mode 0600) on first start.
func loadOrCreateAdminToken(g *globalFlags) (string, error) {
	tok, err := g.adminToken()
	if err == nil {
		return tok, nil
	}
	if _, serr := os.Stat(adminTokenFile(g.DataDir)); !errors.Is(serr, os.ErrNotExist) {
		// The file is there but unusable (empty, unreadable): say so rather than fail to
		// create it over the top.
		return "", err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	tok = base64.RawURLEncoding.EncodeToString(raw)
	f, err := os.OpenFile(adminTokenFile(g.DataDir), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("create admin token: %w", err)
	}
	_, werr := f.WriteString(tok + "\n")
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return "", fmt.Errorf("write admin token: %w", werr)
	}
	return tok, nil
}

// whenReady answers 503 until ready is nil, then passes requests on: the audit API reads the
// projection too (tokens, objects), which is not to be trusted while it catches up.
func whenReady(ready func() error, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := ready(); err != nil {
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"error":"not ready: catching up with the event store"}` + "\n"))
			return
		}
		next.ServeHTTP(w, r)
	})
}
