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
	"strings"
	"sync"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
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
}

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

	mu            sync.Mutex
	client        *esdb.Client
	closed        bool
	subscriptions map[*subscription]struct{}
}

var _ eventstore.Store = (*Store)(nil)

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
		subscriptions:       make(map[*subscription]struct{}),
	}
	if s.resubscribeMaxDelay <= 0 {
		s.resubscribeMaxDelay = 2 * time.Second
	}
	if s.resubscribeAttempts <= 0 {
		s.resubscribeAttempts = 20
	}
	if s.client, err = s.newClient(); err != nil {
		return nil, err
	}
	if err := s.ping(ctx); err != nil {
		_ = s.client.Close()
		return nil, fmt.Errorf("kurrentdb: connect to %s: %w", cfg.URL, err)
	}
	return s, nil
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
	read, err := s.client.ReadAll(ctx, esdb.ReadAllOptions{Direction: esdb.Backwards, From: esdb.End{}}, 1)
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

// current returns the client, or ErrClosed.
func (s *Store) current() (*esdb.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, eventstore.ErrClosed
	}
	return s.client, nil
}

// renew replaces a client that closed itself. The esdb client gives up for good when a
// rediscovery (after the server became unavailable) fails all its attempts; every later call
// then fails with ErrorCodeConnectionClosed. A fresh client rediscovers on its next call.
func (s *Store) renew(dead *esdb.Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.client != dead {
		return
	}
	fresh, err := s.newClient()
	if err != nil {
		s.logger.Error("kurrentdb: cannot replace closed client", "error", err)
		return
	}
	_ = dead.Close()
	s.client = fresh
	s.logger.Warn("kurrentdb: client had closed itself after failed discovery; replaced it")
}

// fail wraps a client error for op, naming ErrClosed after Close and ctx's error when ctx ended.
func (s *Store) fail(ctx context.Context, client *esdb.Client, op string, err error) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return fmt.Errorf("kurrentdb: %s: %w", op, eventstore.ErrClosed)
	}
	var esErr *esdb.Error
	if errors.As(err, &esErr) && esErr.Code() == esdb.ErrorCodeConnectionClosed {
		s.renew(client)
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

// Append writes events to one stream in one KurrentDB append, atomic on the server.
func (s *Store) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	client, err := s.current()
	if err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("kurrentdb: append to %q: %w", stream, err)
	}
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
			ContentType: esdb.ContentTypeJson,
			Data:        event.Data,
			Metadata:    event.Metadata,
		}
	}
	result, err := client.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: expectedRevision(expected)}, proposed...)
	if err != nil {
		var esErr *esdb.Error
		// errors.As, not esdb.FromError: the latter inverts its boolean and misses wrapped errors.
		if errors.As(err, &esErr) && esErr.Code() == esdb.ErrorCodeWrongExpectedVersion {
			// The client reports the actual revision only as text.
			return eventstore.AppendResult{}, &eventstore.WrongExpectedVersionError{Stream: stream, Expected: expected}
		}
		return eventstore.AppendResult{}, s.fail(ctx, client, fmt.Sprintf("append to %q", stream), err)
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
	client, err := s.current()
	if err != nil {
		return nil, fmt.Errorf("kurrentdb: read %q: %w", stream, err)
	}
	if limit <= 0 {
		return nil, nil
	}
	options := esdb.ReadStreamOptions{Direction: esdb.Forwards, From: esdb.Revision(from)}
	if dir == eventstore.Backwards {
		options.Direction = esdb.Backwards
		if from == eventstore.End {
			options.From = esdb.End{}
		}
	}
	read, err := client.ReadStream(ctx, stream, options, uint64(limit))
	if err != nil {
		return nil, s.fail(ctx, client, fmt.Sprintf("read %q", stream), err)
	}
	defer read.Close()
	var out []eventstore.RecordedEvent
	for {
		event, err := read.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		var esErr *esdb.Error
		if errors.As(err, &esErr) && esErr.Code() == esdb.ErrorCodeResourceNotFound {
			// KurrentDB reports a missing stream at the first Recv, not at the call.
			return nil, fmt.Errorf("kurrentdb: read %q: %w", stream, eventstore.ErrStreamNotFound)
		}
		if err != nil {
			return nil, s.fail(ctx, client, fmt.Sprintf("read %q", stream), err)
		}
		if event.Event != nil {
			out = append(out, recorded(event.Event))
		}
	}
}

// ReadAll reads up to limit events of the configured streams after position from. The client has
// no server-side filter for reads, so it reads $all in batches and filters here.
func (s *Store) ReadAll(ctx context.Context, from eventstore.Position, limit int) ([]eventstore.RecordedEvent, error) {
	client, err := s.current()
	if err != nil {
		return nil, fmt.Errorf("kurrentdb: read $all: %w", err)
	}
	var out []eventstore.RecordedEvent
	after := from
	for len(out) < limit {
		// +1: a read from a position includes the event at it, which is dropped.
		batch := uint64(min(readBatchMax, max(readBatchMin, limit-len(out)))) + 1
		received, err := s.readAllBatch(ctx, client, after, batch, func(event eventstore.RecordedEvent) bool {
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
func (s *Store) readAllBatch(ctx context.Context, client *esdb.Client, after eventstore.Position, count uint64, each func(eventstore.RecordedEvent) bool) (uint64, error) {
	read, err := client.ReadAll(ctx, esdb.ReadAllOptions{From: toAllPosition(after)}, count)
	if err != nil {
		return 0, s.fail(ctx, client, "read $all", err)
	}
	defer read.Close()
	var received uint64
	for {
		event, err := read.Recv()
		if errors.Is(err, io.EOF) {
			return received, nil
		}
		if err != nil {
			return received, s.fail(ctx, client, "read $all", err)
		}
		received++
		if event.Event == nil {
			continue
		}
		rec := recorded(event.Event)
		if rec.Position <= after {
			continue
		}
		if !each(rec) {
			return count, nil
		}
	}
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

// Close ends every subscription and closes the client.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	subscriptions := make([]*subscription, 0, len(s.subscriptions))
	for sub := range s.subscriptions {
		subscriptions = append(subscriptions, sub)
	}
	client := s.client
	s.mu.Unlock()
	for _, sub := range subscriptions {
		_ = sub.Close()
	}
	return client.Close()
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
