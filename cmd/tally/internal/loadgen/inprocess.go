package loadgen

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/projections"
)

// ServerOptions configure StartEmbedded.
type ServerOptions struct {
	// Dir is the data directory: the store, the RSA key and the projection's snapshot.
	Dir string
	// MaxBodyBytes bounds request bodies and the decoder's input (0: 128 MiB, enough for
	// a file of about 300,000 entries).
	MaxBodyBytes int64
	// DecodeWorkers and BusyDecodeWorkers size the ledger's decode pool (0: its defaults).
	DecodeWorkers, BusyDecodeWorkers int
	Logger                           *slog.Logger
}

// Server is a Tally server running in this process, composed as tally serve composes it,
// listening on a loopback port.
type Server struct {
	URL        string
	AdminToken string
	Keys       *usagelog.KeyRing
	Store      eventstore.Store
	// Embedded is the store when it is the embedded one (nil otherwise), for its counters.
	Embedded   *embedded.Store
	Projection *projections.Current

	http     *http.Server
	stopProj context.CancelFunc
	projDone chan error
}

// StartEmbedded starts a server on the embedded store in opts.Dir.
func StartEmbedded(ctx context.Context, opts ServerOptions) (*Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("loadgen: no data directory")
	}
	store, err := embedded.Open(ctx, filepath.Join(opts.Dir, "events"))
	if err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	s, err := StartOn(ctx, store, opts)
	if err != nil {
		return nil, err
	}
	s.Embedded = store
	return s, nil
}

// StartOn starts a server on store, which it closes on Close (also when it fails to start).
// opts.Dir holds the RSA key and the projection's snapshot.
func StartOn(ctx context.Context, store eventstore.Store, opts ServerOptions) (*Server, error) {
	if opts.Dir == "" {
		_ = store.Close()
		return nil, errors.New("loadgen: no data directory")
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 128 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	keys, err := usagelog.LoadOrCreateKeyRing(opts.Dir)
	if err != nil {
		_ = store.Close()
		return nil, fmt.Errorf("loadgen: RSA key: %w", err)
	}
	s := &Server{Keys: keys, Store: store, projDone: make(chan error, 1)}
	fail := func(err error) (*Server, error) {
		s.Close()
		return nil, err
	}
	s.Projection, err = projections.NewCurrent(ctx, store, projections.CurrentOptions{
		StatePath: filepath.Join(opts.Dir, projections.StateFile), Logger: opts.Logger,
	})
	if err != nil {
		_ = store.Close()
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	projCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stopProj = stop
	go func() { s.projDone <- s.Projection.Run(projCtx) }()

	decoder := &usagelog.LedgerDecoder{Decoder: &usagelog.Decoder{Keys: keys, MaxInputBytes: int(opts.MaxBodyBytes)}}
	svc, err := ledger.New(ledger.Config{
		Store: store, View: s.Projection, Decoder: decoder, Logger: opts.Logger,
		DecodeWorkers: opts.DecodeWorkers, BusyDecodeWorkers: opts.BusyDecodeWorkers,
	})
	if err != nil {
		return fail(fmt.Errorf("loadgen: %w", err))
	}
	secret := make([]byte, 24)
	rand.Read(secret)
	s.AdminToken = base64.RawURLEncoding.EncodeToString(secret)
	handler, err := httpapi.New(httpapi.Config{Ledger: svc, AdminToken: s.AdminToken, Logger: opts.Logger, MaxBodyBytes: opts.MaxBodyBytes})
	if err != nil {
		return fail(fmt.Errorf("loadgen: %w", err))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(fmt.Errorf("loadgen: listen: %w", err))
	}
	s.URL = "http://" + ln.Addr().String()
	s.http = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.http.Serve(ln) }()
	return s, nil
}

// Close stops the HTTP server, the projection and the store.
func (s *Server) Close() error {
	var errs []error
	if s.http != nil {
		errs = append(errs, s.http.Close())
	}
	if s.stopProj != nil {
		s.stopProj()
		if err := <-s.projDone; err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, err)
		}
	}
	errs = append(errs, s.Store.Close())
	return errors.Join(errs...)
}

// SeedHistory is a HistorySeeder: it appends to the key's upload stream what an upload of a
// file whose newest layer is layer, at depth, would have left there (an UploadPrepared that
// lists the layer, and its UploadCommitted), and waits until the projection holds it. The
// file's older entries changed no value: the run checks only the new ones.
func (s *Server) SeedHistory(ctx context.Context, keyID int64, layer [32]byte, depth int64, timestamp int64) error {
	owner := domain.Owner{Type: domain.OwnerKey, ID: keyID}
	id := uuid.New()
	now := time.Now().UTC()
	meta, err := json.Marshal(domain.Metadata{Admin: true, RequestID: "bench-seed-history"})
	if err != nil {
		return err
	}
	prepared, err := domain.EncodeEvent(domain.EventUploadPrepared, domain.UploadPrepared{
		UploadID: id, Owner: owner, Layers: []string{hex.EncodeToString(layer[:])}, Timestamps: []int64{timestamp},
		BaseDepth: depth - 1, Instance: uuid.New(), At: now,
	})
	if err != nil {
		return err
	}
	committed, err := domain.EncodeEvent(domain.EventUploadCommitted, domain.UploadCommitted{UploadID: id, At: now})
	if err != nil {
		return err
	}
	res, err := s.Store.Append(ctx, domain.UploadStream(owner), eventstore.NoStream(),
		eventstore.EventData{ID: uuid.New(), Type: domain.EventUploadPrepared, Data: prepared, Metadata: meta},
		eventstore.EventData{ID: uuid.New(), Type: domain.EventUploadCommitted, Data: committed, Metadata: meta})
	if err != nil {
		return fmt.Errorf("seed history of key %d: %w", keyID, err)
	}
	return s.Projection.WaitFor(ctx, res.Position)
}
