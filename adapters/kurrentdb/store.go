// Package kurrentdb implements Tally's event-store port (domain/eventstore) on KurrentDB
// (EventStoreDB) through the official v4 gRPC client, package esdb.
//
// Positions: KurrentDB orders $all by a commit position p that may be 0 for the first record,
// while the port reserves Position 0 (eventstore.Start) for "before everything". The adapter
// therefore reports an event at commit position p as eventstore.Position(p+1) and sends
// Position(q) back as commit position q-1. Reads and subscriptions take the port's positions as
// exclusive bounds; KurrentDB reads $all from an inclusive position, so ReadAll drops the event at
// the bound itself. Only positions this adapter returned may be passed back: a real server may
// refuse a commit position that is not the start of a record.
//
// See docs/kurrentdb.md for operation, subscription resume and running the contract suite
// against a real server.
package kurrentdb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// Config says where KurrentDB is and which streams Tally reads back.
type Config struct {
	// URL is a KurrentDB connection string, esdb://host:2113?tls=false or
	// esdb+discover://… for a cluster.
	URL string
	// Logger receives the client's log lines (its info lines at debug level). Nil means
	// slog.Default().
	Logger *slog.Logger
	// StreamPrefixes limits ReadAll and SubscribeAll to streams whose names start with one of
	// them (Tally's categories, such as "product-"). Empty means every stream. System events
	// (stream or type starting with "$") are always left out.
	StreamPrefixes []string
	// ResubscribeMaxDelay caps the backoff between attempts to resubscribe after KurrentDB drops
	// a subscription. Zero means 2 s.
	ResubscribeMaxDelay time.Duration
	// ResubscribeAttempts is how many consecutive failed attempts end a subscription with
	// eventstore.ErrSubscriptionDropped. Zero means 20.
	ResubscribeAttempts int
	// CallTimeout bounds how long one call waits for the client. The esdb client can leave a
	// call unanswered for good after it lost its connection; past this bound the store treats
	// the client as dead, replaces it and fails the call, so a caller without a deadline of its
	// own is not stuck. Zero means 10 s.
	CallTimeout time.Duration
}

// closeWait bounds how long Close waits for calls still running on the client.
const closeWait = 5 * time.Second

// readBatchMin and readBatchMax bound the count of one $all read request.
const (
	readBatchMin = 64
	readBatchMax = 4096
)

// Store is the KurrentDB event store. It is safe for concurrent use.
type Store struct {
	clientConfig        esdb.Configuration
	logger              *slog.Logger
	prefixes            []string
	resubscribeMaxDelay time.Duration
	resubscribeAttempts int
	callTimeout         time.Duration

	done          chan struct{} // closed by Close
	mu            sync.Mutex
	conn          *conn
	closed        bool
	subscriptions map[*subscription]struct{}
}

var _ eventstore.Store = (*Store)(nil)

// conn is one esdb client and the calls running on it. The client's Close closes a channel its
// calls send on, so closing it under a running call can panic ("send on closed channel"): every
// call holds calls for reading, and close takes it for writing.
type conn struct {
	client *esdb.Client
	calls  sync.RWMutex
}

// close closes the client once no call runs on it.
func (c *conn) close() error {
	c.calls.Lock()
	defer c.calls.Unlock()
	return c.client.Close()
}

// Open connects to KurrentDB and checks that it answers (the client itself does not dial until
// the first call), so a wrong URL or an unreachable server fails here.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	clientConfig, err := esdb.ParseConnectionString(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("kurrentdb: parse connection string: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	clientConfig.Logger = clientLogger(logger)
	s := &Store{
		clientConfig:        *clientConfig,
		logger:              logger,
		prefixes:            append([]string(nil), cfg.StreamPrefixes...),
		resubscribeMaxDelay: cfg.ResubscribeMaxDelay,
		resubscribeAttempts: cfg.ResubscribeAttempts,
		callTimeout:         cfg.CallTimeout,
		subscriptions:       make(map[*subscription]struct{}),
		done:                make(chan struct{}),
	}
	if s.resubscribeMaxDelay <= 0 {
		s.resubscribeMaxDelay = 2 * time.Second
	}
	if s.resubscribeAttempts <= 0 {
		s.resubscribeAttempts = 20
	}
	if s.callTimeout <= 0 {
		s.callTimeout = 10 * time.Second
	}
	client, err := s.newClient()
	if err != nil {
		return nil, err
	}
	s.conn = &conn{client: client}
	if err := s.ping(ctx); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("kurrentdb: connect to %s: %w", redactURL(cfg.URL), err)
	}
	return s, nil
}

// receiveAll drains a read and closes it: the events it carried, and how many messages the
// server sent (links to deleted events count, but carry none).
func receiveAll(read *esdb.ReadStream) ([]eventstore.RecordedEvent, uint64, error) {
	defer read.Close()
	var out []eventstore.RecordedEvent
	var received uint64
	for {
		event, err := read.Recv()
		if errors.Is(err, io.EOF) {
			return out, received, nil
		}
		if err != nil {
			return out, received, err
		}
		received++
		if event.Event != nil {
			out = append(out, recorded(event.Event))
		}
	}
}

// redactURL hides the password of a connection string, for messages and logs.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "the configured KurrentDB"
	}
	return u.Redacted()
}

// newClient builds a client from the parsed configuration; each client gets its own copy.
func (s *Store) newClient() (*esdb.Client, error) {
	config := s.clientConfig
	client, err := esdb.NewClient(&config)
	if err != nil {
		return nil, fmt.Errorf("kurrentdb: new client: %w", err)
	}
	return client, nil
}

// clientLogger routes the esdb client's printf-style logging to logger. The client logs every
// discovery attempt at info, so info becomes debug.
func clientLogger(logger *slog.Logger) esdb.LoggingFunc {
	return func(level esdb.LogLevel, format string, args ...any) {
		slogLevel := slog.LevelDebug
		switch level {
		case esdb.LogWarn:
			slogLevel = slog.LevelWarn
		case esdb.LogError:
			slogLevel = slog.LevelError
		}
		ctx := context.Background()
		if !logger.Enabled(ctx, slogLevel) {
			return
		}
		logger.Log(ctx, slogLevel, fmt.Sprintf(format, args...), "component", "esdb")
	}
}

// ping reads the last event of $all.
func (s *Store) ping(ctx context.Context) error {
	read, err := s.conn.client.ReadAll(ctx, esdb.ReadAllOptions{Direction: esdb.Backwards, From: esdb.End{}}, 1)
	if err != nil {
		return err
	}
	defer read.Close()
	for {
		if _, err := read.Recv(); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// acquire returns the current connection with a call registered on it (release it with
// c.calls.RUnlock()), or ErrClosed.
func (s *Store) acquire() (*conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, eventstore.ErrClosed
	}
	s.conn.calls.RLock()
	return s.conn, nil
}

// checkOpen returns ErrClosed after Close.
func (s *Store) checkOpen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return eventstore.ErrClosed
	}
	return nil
}

// call runs op on the current connection in its own goroutine and waits for it, for ctx or for
// Close. The esdb client can block a call for good, whatever its context: a call queued for the
// client's connection loop when that loop gives up after a failed rediscovery never returns.
// call lets the caller go and abandons op, which then keeps its (replaced) client from closing.
// It returns the connection op ran on (nil if the store is closed) and op's error.
func (s *Store) call(ctx context.Context, op func(client *esdb.Client) error) (*conn, error) {
	c, err := s.acquire()
	if err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() {
		defer c.calls.RUnlock()
		done <- op(c.client)
	}()
	timeout := time.NewTimer(s.callTimeout)
	defer timeout.Stop()
	select {
	case err := <-done:
		return c, err
	case <-ctx.Done():
		return c, ctx.Err()
	case <-s.done:
		return c, eventstore.ErrClosed
	case <-timeout.C:
		s.renew(c)
		return c, fmt.Errorf("no answer from KurrentDB in %v: %w", s.callTimeout, errCallTimeout)
	}
}

// errCallTimeout marks a call that the client left unanswered past Config.CallTimeout.
var errCallTimeout = errors.New("call timed out")

// renew replaces a client that closed itself or stopped answering. The esdb client gives up for
// good when a rediscovery (after the server became unavailable) fails all its attempts; every
// later call then fails with ErrorCodeConnectionClosed, and calls that were queued meanwhile
// never return. A fresh client rediscovers on its next call.
func (s *Store) renew(dead *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.conn != dead {
		return
	}
	fresh, err := s.newClient()
	if err != nil {
		s.logger.Error("kurrentdb: cannot replace closed client", "error", err)
		return
	}
	s.conn = &conn{client: fresh}
	s.logger.Warn("kurrentdb: replaced a client that closed itself or stopped answering")
	// In its own goroutine: the caller still holds a call on dead, and a call that was queued
	// for the dead client's (exited) connection loop never returns.
	go func() { _ = dead.close() }()
}

// fail wraps a client error for op, naming ErrClosed after Close and ctx's error when ctx ended.
func (s *Store) fail(ctx context.Context, c *conn, op string, err error) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return fmt.Errorf("kurrentdb: %s: %w", op, eventstore.ErrClosed)
	}
	var esErr *esdb.Error
	if c != nil && errors.As(err, &esErr) && esErr.Code() == esdb.ErrorCodeConnectionClosed {
		s.renew(c)
	}
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		return fmt.Errorf("kurrentdb: %s: %w: %w", op, ctxErr, err)
	}
	return fmt.Errorf("kurrentdb: %s: %w", op, err)
}

// expectedRevision maps the port's condition to the client's.
func expectedRevision(expected eventstore.ExpectedRevision) esdb.ExpectedRevision {
	switch {
	case expected.IsNoStream():
		return esdb.NoStream{}
	case expected.IsStreamExists():
		return esdb.StreamExists{}
	}
	if revision, ok := expected.IsExact(); ok {
		return esdb.Revision(revision)
	}
	return esdb.Any{}
}

// contentType labels an event body for KurrentDB: JSON (shown as such in its UI, usable by
// its projections), or binary for the compact bodies of UploadPrepared and UploadCommitted
// (docs/encoding.md, "KurrentDB").
func contentType(data []byte) esdb.ContentType {
	if domain.IsBinary(data) {
		return esdb.ContentTypeBinary
	}
	return esdb.ContentTypeJson
}

// Append writes events to one stream in one KurrentDB append, atomic on the server.
func (s *Store) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	if len(events) == 0 {
		return s.check(ctx, stream, expected)
	}
	proposed := make([]esdb.EventData, len(events))
	for i, event := range events {
		id := event.ID
		if id == uuid.Nil {
			// The client would pick a fresh random ID on every call; pick one here so the ID is
			// at least fixed for this call and visible in errors.
			id = uuid.New()
		}
		proposed[i] = esdb.EventData{
			EventID:     id,
			EventType:   event.Type,
			ContentType: contentType(event.Data),
			Data:        event.Data,
			Metadata:    event.Metadata,
		}
	}
	var result *esdb.WriteResult
	c, err := s.call(ctx, func(client *esdb.Client) (err error) {
		result, err = client.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: expectedRevision(expected)}, proposed...)
		return err
	})
	if err != nil {
		var esErr *esdb.Error
		// errors.As, not esdb.FromError: the latter inverts its boolean and misses wrapped errors.
		if errors.As(err, &esErr) && esErr.Code() == esdb.ErrorCodeWrongExpectedVersion {
			// The client reports the actual revision only as text.
			return eventstore.AppendResult{}, &eventstore.WrongExpectedVersionError{Stream: stream, Expected: expected}
		}
		return eventstore.AppendResult{}, s.fail(ctx, c, fmt.Sprintf("append to %q", stream), err)
	}
	return eventstore.AppendResult{
		NextExpectedRevision: result.NextExpectedVersion,
		Position:             fromCommit(result.CommitPosition),
	}, nil
}

// check serves an append without events: it reads the stream's last event and tests the
// condition, writing nothing. (KurrentDB's answer to an empty append is not part of its
// documented guarantees, so the adapter does not send one.)
func (s *Store) check(ctx context.Context, stream string, expected eventstore.ExpectedRevision) (eventstore.AppendResult, error) {
	last, err := s.ReadStream(ctx, stream, eventstore.Backwards, eventstore.End, 1)
	if err != nil && !errors.Is(err, eventstore.ErrStreamNotFound) {
		return eventstore.AppendResult{}, err
	}
	exists := len(last) > 0
	var result eventstore.AppendResult
	if exists {
		result = eventstore.AppendResult{NextExpectedRevision: last[0].Revision, Position: last[0].Position}
	}
	if !expected.Matches(result.NextExpectedRevision, exists) {
		return eventstore.AppendResult{}, &eventstore.WrongExpectedVersionError{
			Stream: stream, Expected: expected,
			Actual: result.NextExpectedRevision, ActualExists: exists, ActualKnown: true,
		}
	}
	return result, nil
}

// ReadStream reads up to limit events of one stream from revision from.
func (s *Store) ReadStream(ctx context.Context, stream string, dir eventstore.Direction, from uint64, limit int) ([]eventstore.RecordedEvent, error) {
	if limit <= 0 {
		if err := s.checkOpen(); err != nil {
			return nil, fmt.Errorf("kurrentdb: read %q: %w", stream, err)
		}
		return nil, nil
	}
	options := esdb.ReadStreamOptions{Direction: esdb.Forwards, From: esdb.Revision(from)}
	if dir == eventstore.Backwards {
		options.Direction = esdb.Backwards
		if from == eventstore.End {
			options.From = esdb.End{}
		}
	}
	var out []eventstore.RecordedEvent
	c, err := s.call(ctx, func(client *esdb.Client) error {
		read, err := client.ReadStream(ctx, stream, options, uint64(limit))
		if err != nil {
			return err
		}
		out, _, err = receiveAll(read)
		return err
	})
	var esErr *esdb.Error
	if errors.As(err, &esErr) && esErr.Code() == esdb.ErrorCodeResourceNotFound {
		// KurrentDB reports a missing stream at the first Recv, not at the call.
		return nil, fmt.Errorf("kurrentdb: read %q: %w", stream, eventstore.ErrStreamNotFound)
	}
	if err != nil {
		return nil, s.fail(ctx, c, fmt.Sprintf("read %q", stream), err)
	}
	return out, nil
}

// ReadAll reads up to limit events of the configured streams after position from. The client has
// no server-side filter for reads, so it reads $all in batches and filters here.
func (s *Store) ReadAll(ctx context.Context, from eventstore.Position, limit int) ([]eventstore.RecordedEvent, error) {
	if err := s.checkOpen(); err != nil {
		return nil, fmt.Errorf("kurrentdb: read $all: %w", err)
	}
	var out []eventstore.RecordedEvent
	after := from
	for len(out) < limit {
		// +1: a read from a position includes the event at it, which is dropped.
		batch := uint64(min(readBatchMax, max(readBatchMin, limit-len(out)))) + 1
		received, err := s.readAllBatch(ctx, after, batch, func(event eventstore.RecordedEvent) bool {
			after = event.Position
			if s.wanted(event) {
				out = append(out, event)
			}
			return len(out) < limit
		})
		if err != nil {
			return nil, err
		}
		if received < batch {
			break // the end of $all
		}
	}
	return out, nil
}

// readAllBatch reads up to count events of $all from after (exclusive), calling each with every
// event after it until each returns false. It returns how many events the server sent.
func (s *Store) readAllBatch(ctx context.Context, after eventstore.Position, count uint64, each func(eventstore.RecordedEvent) bool) (uint64, error) {
	var events []eventstore.RecordedEvent
	var received uint64
	c, err := s.call(ctx, func(client *esdb.Client) error {
		read, err := client.ReadAll(ctx, esdb.ReadAllOptions{From: toAllPosition(after)}, count)
		if err != nil {
			return err
		}
		events, received, err = receiveAll(read)
		return err
	})
	if err != nil {
		return 0, s.fail(ctx, c, "read $all", err)
	}
	for _, rec := range events {
		if rec.Position <= after {
			continue
		}
		if !each(rec) {
			return count, nil
		}
	}
	return received, nil
}

// wanted says whether an event of $all belongs to the configured streams.
func (s *Store) wanted(event eventstore.RecordedEvent) bool {
	if strings.HasPrefix(event.Stream, "$") || strings.HasPrefix(event.Type, "$") {
		return false
	}
	if len(s.prefixes) == 0 {
		return true
	}
	for _, prefix := range s.prefixes {
		if strings.HasPrefix(event.Stream, prefix) {
			return true
		}
	}
	return false
}

// Close ends every subscription and closes the client once the calls running on it return.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	subscriptions := make([]*subscription, 0, len(s.subscriptions))
	for sub := range s.subscriptions {
		subscriptions = append(subscriptions, sub)
	}
	c := s.conn
	s.mu.Unlock()
	for _, sub := range subscriptions {
		_ = sub.Close()
	}
	// Wait for the calls running on the client, but not for ever: one the client left blocked
	// (see call) would never return.
	closed := make(chan error, 1)
	go func() { closed <- c.close() }()
	select {
	case err := <-closed:
		return err
	case <-time.After(closeWait):
		s.logger.Warn("kurrentdb: calls still running on the client; closing it when they end", "waited", closeWait)
		return nil
	}
}

// fromCommit maps a KurrentDB commit position to the port's position (see the package comment).
func fromCommit(commit uint64) eventstore.Position { return eventstore.Position(commit + 1) }

// toAllPosition maps the port's position to where a $all read or subscription starts: Start is
// the beginning, any other position the commit position of the event it names. Commit and
// prepare positions of an appended event are equal on KurrentDB 20 and later.
func toAllPosition(position eventstore.Position) esdb.AllPosition {
	if position == eventstore.Start {
		return esdb.Start{}
	}
	commit := uint64(position) - 1
	// By value: a *esdb.Position also satisfies AllPosition but is sent as no start at all.
	return esdb.Position{Commit: commit, Prepare: commit}
}

// recorded converts a client event.
func recorded(event *esdb.RecordedEvent) eventstore.RecordedEvent {
	return eventstore.RecordedEvent{
		ID:       event.EventID,
		Type:     event.EventType,
		Data:     nonEmpty(event.Data),
		Metadata: nonEmpty(event.UserMetadata),
		Stream:   event.StreamID,
		Revision: event.EventNumber,
		Position: fromCommit(event.Position.Commit),
		Recorded: event.CreatedDate,
	}
}

// nonEmpty gives nil for empty bytes, so an event read back compares equal whether the wire
// carried an empty or an absent field.
func nonEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}
