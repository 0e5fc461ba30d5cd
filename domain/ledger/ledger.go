// Package ledger holds Tally's use cases: the commands of the Cryptolens data-object API, the
// upload of usage logs, and the vendor's administration of products, keys and tokens. Each
// command checks the projected current state, appends events with the projected stream
// revision as the expected revision, retries a bounded number of times when another writer got
// there first, and returns once its own events are in the projection it reads from (or, if the
// projection stopped first, once they are durable: they count, and a "try again" would count
// them twice).
package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// View is the projected state the ledger decides against.
type View interface {
	// Read runs fn with a consistent state; fn must not keep what it reads.
	Read(fn func(*state.State))
	// WaitUntil blocks until cond holds, ctx ends or the projection stops.
	WaitUntil(ctx context.Context, cond func(*state.State) bool) error
	// WaitFor blocks until the state reflects every event up to pos.
	WaitFor(ctx context.Context, pos eventstore.Position) error
	// Position is the global position of the last event the state reflects.
	Position() eventstore.Position
}

// LogEntry is one entry of an uploaded usage log.
type LogEntry struct {
	Layer     [32]byte // the layer's identity
	Legacy    [32]byte // its identity before version 2 (LayerRef)
	Digest    [32]byte // the digest of the bytes its entry is decrypted from (LayerRef)
	ObjectID  int64
	Decrement bool
	Amount    int64 // > 0
	Timestamp int64 // Unix seconds
}

// direction is the way the entry changes its object's value.
func (e LogEntry) direction() domain.Direction {
	if e.Decrement {
		return domain.Decrement
	}
	return domain.Increment
}

// LayerRef is a usage-log layer as a log presents it (docs/uploads.md, "Tampering").
type LayerRef struct {
	// ID is the layer's identity: SHA-256 of its RSA-wrapped key, which nobody can change
	// without the layer failing to decrypt.
	ID [32]byte
	// Legacy is its identity before version 2, SHA-256 of IV and wrapped key, which the
	// events written before name layers by.
	Legacy [32]byte
	// Digest covers the bytes the layer's entry is decrypted from (IV, wrapped key, the first
	// blocks of the ciphertext).
	Digest [32]byte
}

// DecodedLog is what a LogDecoder read.
type DecodedLog struct {
	// Entries are the entries of the layers newer than Stop, oldest first.
	Entries []LogEntry
	// Stop is the known layer the walk stopped at (nil: none was known); StopDepth is 1 when
	// it is the log's outermost layer.
	Stop      *LayerRef
	StopDepth int
	// FileDigest is SHA-256 of the whole log.
	FileDigest [32]byte
}

// LogDecoder reads usage logs. Decode walks from the newest layer inward, stops at the first
// layer for which known is true, and returns the entries of the newer layers. It fails with
// domain.ErrDataEmpty, domain.ErrDataCorrupted or domain.ErrTooManyEntries.
type LogDecoder interface {
	Decode(ctx context.Context, data string, known func(LayerRef) bool) (*DecodedLog, error)
}

// Config wires a Service.
type Config struct {
	Store eventstore.Store
	View  View
	// Decoder reads uploaded usage logs; nil refuses uploads as corrupted.
	Decoder LogDecoder
	// Clock gives the time recorded on events (default time.Now).
	Clock func() time.Time
	// Instance identifies this Tally process on the events it prepares (default random).
	Instance uuid.UUID
	// MaxAttempts bounds the retries of a command that keeps losing to concurrent writers
	// (default 16).
	MaxAttempts int
	// UploadLease is how long an upload may stay undecided before any instance may decide it
	// (default 30 s).
	UploadLease time.Duration
	// RefusalRepeatInterval is how often, at most, repeats of a refused log version are
	// recorded (default DefaultRefusalRepeatInterval; negative: every repeat).
	RefusalRepeatInterval time.Duration
	// MaxNewEntries is the most new entries one upload (and one chunk of an operator's
	// resolution) may apply (default and at most MaxNewEntries, the Cryptolens rule; tests set
	// less, with a decoder limited alike, to keep chunked resolutions quick).
	MaxNewEntries int
	// DecodeWorkers bounds the usage logs decoded at once (default DefaultDecodeWorkers), and
	// BusyDecodeWorkers those decoded at once while direct calls run (default
	// DefaultBusyDecodeWorkers): uploads leave direct calls the rest of the processors.
	DecodeWorkers     int
	BusyDecodeWorkers int
	// Metrics receives the ledger's counts (nil: none are kept).
	Metrics Metrics
	Logger  *slog.Logger
}

// Service runs the ledger's commands.
type Service struct {
	store       eventstore.Store
	view        View
	decoder     LogDecoder
	clock       func() time.Time
	instance    uuid.UUID
	maxAttempts int
	lease       time.Duration
	logger      *slog.Logger
	conflicts   atomic.Int64
	decodes     *decodePool
	metrics     Metrics
	// objectLocks serialise this process's commands on one data object. Optimistic
	// concurrency still decides between instances; within one, queueing spares concurrent
	// callers of one object the retries that otherwise run out (64 concurrent increments on
	// one object through HTTP: ~11,000 conflicts and ~550 answers of "changed concurrently too
	// often" without it, see adapters/httpapi TestConcurrentChanges).
	objectLocks keyedMutex
	// ownerLocks serialise this process's adds that check for a duplicate name, per owner, so
	// that two of them cannot both find the name free (between instances the check stays
	// optimistic: docs/api.md).
	ownerLocks keyedMutex
	ids        idClaims
	// refusals counts refused uploads and the repeats not yet recorded (refusal.go).
	refusals       refusalBook
	repeatInterval time.Duration
	maxNew         int
}

// New returns a Service, refusing missing dependencies.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("ledger: nil event store")
	}
	if cfg.View == nil {
		return nil, errors.New("ledger: nil view")
	}
	s := &Service{
		store: cfg.Store, view: cfg.View, decoder: cfg.Decoder, clock: cfg.Clock,
		instance: cfg.Instance, maxAttempts: cfg.MaxAttempts, lease: cfg.UploadLease, logger: cfg.Logger,
		repeatInterval: cfg.RefusalRepeatInterval, maxNew: cfg.MaxNewEntries,
		decodes: newDecodePool(cfg.DecodeWorkers, cfg.BusyDecodeWorkers), metrics: cfg.Metrics,
	}
	if s.metrics == nil {
		s.metrics = noMetrics{}
	}
	if s.maxNew <= 0 || s.maxNew > MaxNewEntries {
		s.maxNew = MaxNewEntries
	}
	switch {
	case s.repeatInterval == 0:
		s.repeatInterval = DefaultRefusalRepeatInterval
	case s.repeatInterval < 0:
		s.repeatInterval = 0
	}
	if s.clock == nil {
		s.clock = time.Now
	}
	if s.instance == uuid.Nil {
		s.instance = uuid.New()
	}
	if s.maxAttempts <= 0 {
		s.maxAttempts = 16
	}
	if s.lease <= 0 {
		s.lease = 30 * time.Second
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Conflicts counts appends refused for their expected revision and retried, since start.
func (s *Service) Conflicts() int64 { return s.conflicts.Load() }

// conflict counts an append refused for its expected revision.
func (s *Service) conflict() {
	s.conflicts.Add(1)
	s.metrics.Conflict()
}

// Caller is who issues a command and from where; it is recorded on every event.
type Caller struct {
	Token      domain.Token
	Admin      bool // the vendor's admin credential, not a token
	RequestID  string
	ClientAddr string
}

func (c Caller) metadata() domain.Metadata {
	return domain.Metadata{TokenID: c.Token.ID, Admin: c.Admin, RequestID: c.RequestID, ClientAddr: c.ClientAddr}
}

// Authenticate finds the live token with this secret. A token this instance does not know
// yet may have been created through another instance a moment ago: before refusing, it waits
// until its projection holds everything the store holds, and looks again.
func (s *Service) Authenticate(ctx context.Context, secret string) (domain.Token, error) {
	if secret == "" {
		return domain.Token{}, domain.ErrUnauthenticated
	}
	hash := domain.HashSecret(secret)
	lookup := func() (tok domain.Token, ok bool) {
		s.view.Read(func(st *state.State) { tok, ok = st.TokenBySecretHash(hash) })
		return tok, ok
	}
	tok, ok := lookup()
	if !ok {
		if err := s.syncView(ctx); err != nil {
			return domain.Token{}, err
		}
		tok, ok = lookup()
	}
	// The map lookup is by hash, so it leaks nothing about the secret; the comparison below
	// keeps the check itself constant-time.
	if !ok || tok.Revoked || !tok.SecretMatches(secret) {
		return domain.Token{}, domain.ErrUnauthenticated
	}
	return tok, nil
}

// newEvent encodes an event with the caller's metadata (domain.EncodeEvent: the compact form
// for the hot event types, JSON for the rest).
func newEvent(id uuid.UUID, typ string, data any, meta domain.Metadata) (eventstore.EventData, error) {
	b, err := domain.EncodeEvent(typ, data)
	if err != nil {
		return eventstore.EventData{}, err
	}
	m, err := json.Marshal(meta)
	if err != nil {
		return eventstore.EventData{}, fmt.Errorf("encode metadata: %w", err)
	}
	return eventstore.EventData{ID: id, Type: typ, Data: b, Metadata: m}, nil
}

// appendAndWait appends and returns once the projection holds the events. A refusal for the
// expected revision comes back as it is, after the projection has caught up with the stream,
// so that the caller's next attempt decides on fresh state.
func (s *Service) appendAndWait(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	res, err := s.store.Append(ctx, stream, expected, events...)
	if errors.Is(err, eventstore.ErrWrongExpectedVersion) {
		s.conflict()
		s.logger.Debug("append conflict; catching up and retrying", "stream", stream, "expected", expected.String())
		if cerr := s.catchUp(ctx, stream); cerr != nil {
			return res, cerr
		}
		return res, err
	}
	if err != nil {
		return res, unavailable(fmt.Errorf("append to %s: %w", stream, err))
	}
	if err := s.view.WaitFor(ctx, res.Position); err != nil {
		if ctx.Err() != nil {
			return res, unavailable(fmt.Errorf("wait for projection: %w", err))
		}
		// The projection stopped. The events are durable and count (a restart replays them):
		// answering "try again" would have the client count them twice.
		s.logger.Error("events stored, but the projection stopped before showing them", "stream", stream, "position", res.Position, "err", err)
		return res, nil
	}
	return res, nil
}

// syncView waits until the projection holds every event the store held when called. Another
// instance may have acknowledged a change the projection has not yet received; an answer read
// after syncView is at least as new as every change acknowledged before the call, so reads and
// refusals stay linearizable across instances sharing a store.
func (s *Service) syncView(ctx context.Context) error {
	head, err := eventstore.Head(ctx, s.store, s.view.Position())
	if err != nil {
		return unavailable(err)
	}
	if err := s.view.WaitFor(ctx, head); err != nil {
		return unavailable(fmt.Errorf("wait for projection: %w", err))
	}
	return nil
}

// catchUp waits until the projection holds the last event of a stream.
func (s *Service) catchUp(ctx context.Context, stream string) error {
	evs, err := s.store.ReadStream(ctx, stream, eventstore.Backwards, eventstore.End, 1)
	if errors.Is(err, eventstore.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return unavailable(fmt.Errorf("read %s: %w", stream, err))
	}
	if len(evs) == 0 {
		return nil
	}
	if err := s.view.WaitFor(ctx, evs[0].Position); err != nil {
		return unavailable(fmt.Errorf("wait for projection: %w", err))
	}
	return nil
}

// unavailableError keeps the cause of a refusal that is the service's fault, not the caller's.
type unavailableError struct{ cause error }

func (e *unavailableError) Error() string { return e.cause.Error() }
func (e *unavailableError) Unwrap() []error {
	return []error{domain.ErrServiceUnavailable, e.cause}
}

func unavailable(err error) error {
	if _, ok := domain.AsError(err); ok {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &unavailableError{cause: err}
}

// expectedFor is the expected revision of a stream last seen at rev (exists false: no events).
func expectedFor(rev uint64, exists bool) eventstore.ExpectedRevision {
	if !exists {
		return eventstore.NoStream()
	}
	return eventstore.Exact(rev)
}

// keyedMutex is a set of mutexes by id, each existing while someone holds or awaits it. The
// zero value is ready to use.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[int64]*keyedLock
}

type keyedLock struct {
	held chan struct{} // holds one token while locked
	refs int           // holders and waiters
}

// lock takes the mutex of id, or gives up when ctx ends; the returned func releases it.
func (k *keyedMutex) lock(ctx context.Context, id int64) (func(), error) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[int64]*keyedLock{}
	}
	l := k.locks[id]
	if l == nil {
		l = &keyedLock{held: make(chan struct{}, 1)}
		k.locks[id] = l
	}
	l.refs++
	k.mu.Unlock()
	select {
	case l.held <- struct{}{}:
		return func() { <-l.held; k.release(id, l) }, nil
	case <-ctx.Done():
		k.release(id, l)
		return nil, ctx.Err()
	}
}

func (k *keyedMutex) release(id int64, l *keyedLock) {
	k.mu.Lock()
	l.refs--
	if l.refs == 0 {
		delete(k.locks, id)
	}
	k.mu.Unlock()
}
