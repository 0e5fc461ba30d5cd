package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/tallyledger/tally/adapters/auditapi"
	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/kurrentdb"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/cmd/tally/internal/auditcli"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/projections"
)

// serveConfig is everything tally serve is configured with.
type serveConfig struct {
	Addr         string
	LogFormat    string
	LogLevel     string
	Store        string
	KurrentURL   string
	RSAKeys      []string
	MaxBodyBytes int64
	UploadLease  time.Duration
	RateLimit    float64
	RateBurst    int
	// onReady, if set, is called with the listening address once the server is ready (tests
	// use it instead of polling).
	onReady func(addr string)
	// wrapHandler, if set, wraps the whole handler (tests validate every answer against the
	// OpenAPI document with it).
	wrapHandler func(http.Handler) http.Handler
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
	f.StringVar(&cfg.Addr, "addr", "127.0.0.1:8080", "listen address (TALLY_ADDR)")
	f.StringVar(&cfg.LogFormat, "log-format", "text", "log format: text or json (TALLY_LOG_FORMAT)")
	f.StringVar(&cfg.LogLevel, "log-level", "info", "log level: debug, info, warn, error (TALLY_LOG_LEVEL)")
	f.StringVar(&cfg.Store, "store", "embedded", "event store: embedded or kurrentdb (TALLY_STORE)")
	f.StringVar(&cfg.KurrentURL, "kurrentdb-url", "", "KurrentDB connection string, esdb://… (TALLY_KURRENTDB_URL)")
	f.StringSliceVar(&cfg.RSAKeys, "rsa-key", nil, "RSA private key PEM file(s); the first is current (TALLY_RSA_KEY); default: keys in the data directory, created on first start")
	// A License Server never trims its log: 100,000 layers are about 31 MB, 41 MB of base64.
	f.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", 64<<20, "largest request body, and so usage log, accepted (TALLY_MAX_BODY_BYTES)")
	f.Float64Var(&cfg.RateLimit, "rate-limit", httpapi.DefaultRateLimit, "data-object API requests per second per access token; 0 turns the limit off (TALLY_RATE_LIMIT)")
	f.IntVar(&cfg.RateBurst, "rate-burst", httpapi.DefaultRateBurst, "requests a token may send at once; 0: twice --rate-limit (TALLY_RATE_BURST)")
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
	if err := os.MkdirAll(g.DataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	adminToken, err := loadOrCreateAdminToken(g)
	if err != nil {
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
	defer func() {
		if err := store.Close(); err != nil {
			logger.Error("close store", "err", err)
		}
	}()

	started := time.Now()
	proj, err := projections.NewCurrent(ctx, store, projections.CurrentOptions{
		// The file tally replay writes and tally verify reads.
		SnapshotPath: filepath.Join(g.DataDir, auditcli.SnapshotFile),
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

	svc, err := ledger.New(ledger.Config{
		Store: store, View: proj, Decoder: &usagelog.LedgerDecoder{Decoder: &usagelog.Decoder{Keys: keys, MaxInputBytes: int(cfg.MaxBodyBytes)}},
		Instance: uuid.New(), UploadLease: cfg.UploadLease, Logger: logger.With("component", "ledger"),
	})
	if err != nil {
		return err
	}

	registry := prometheus.NewRegistry()
	registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tally_ledger_conflicts_total",
			Help: "Appends refused for their expected revision and retried.",
		}, func() float64 { return float64(svc.Conflicts()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tally_projection_position",
			Help: "Global position of the last event in the current-state projection.",
		}, func() float64 { return float64(proj.Position()) }),
	)

	ready := newReadiness()
	readyCheck := func() error {
		// A projection that stopped no longer moves: every write would be refused.
		if err := proj.Err(); err != nil {
			return fmt.Errorf("projection stopped: %w", err)
		}
		return ready.check()
	}
	handler, err := httpapi.New(httpapi.Config{
		Ledger: svc, AdminToken: adminToken, Ready: readyCheck,
		Metrics:  promhttp.HandlerFor(registry, promhttp.HandlerOpts{Registry: registry}),
		Registry: registry, Logger: logger.With("component", "http"), MaxBodyBytes: cfg.MaxBodyBytes,
		RateLimit: cfg.RateLimit, RateBurst: cfg.RateBurst,
	})
	if err != nil {
		return err
	}
	audit, err := auditapi.New(auditapi.Config{
		Store: store, Ledger: svc, AdminToken: adminToken, Logger: logger.With("component", "audit"),
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	root := routeByPrefix("/v1/", whenReady(readyCheck, audit), handler)
	if cfg.wrapHandler != nil {
		root = cfg.wrapHandler(root)
	}
	srv := newHTTPServer(root, defaultServerTimeouts(), logger)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	logger.Info("listening", "addr", ln.Addr().String(), "store", cfg.Store, "data_dir", g.DataDir)

	// Background work ends before the projection stops and the store closes (the deferred
	// calls above run after this one).
	bgCtx, stopBackground := context.WithCancel(ctx)
	var background sync.WaitGroup
	defer func() {
		stopBackground()
		background.Wait()
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
			cfg.onReady(ln.Addr().String())
		}
		svc.RunRecovery(bgCtx)
	}()

	var runErr error
	select {
	case err := <-serveErr:
		return fmt.Errorf("http server: %w", err)
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
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Error("http shutdown", "err", err)
	}
	return runErr
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
		s, err := embedded.Open(ctx, filepath.Join(dataDir, "events"))
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

// routeByPrefix sends requests whose path starts with prefix to one handler and the rest to
// another. It does no path cleaning: the Cryptolens API accepts doubled slashes that
// http.ServeMux would redirect.
func routeByPrefix(prefix string, matched, rest http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, prefix) {
			matched.ServeHTTP(w, r)
			return
		}
		rest.ServeHTTP(w, r)
	})
}
