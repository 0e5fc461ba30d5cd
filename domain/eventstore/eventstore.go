// Package eventstore holds the event-store port that Tally's ledger and projections write to and
// read from. It is modelled on KurrentDB (EventStoreDB): streams of events with per-stream
// revisions and optimistic concurrency, a global order over all streams, and catch-up
// subscriptions. Backends live in adapters/ and prove themselves with the contract suite in
// eventstore/storetest.
package eventstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/google/uuid"
)

// Position is an event's place in the global order of all streams. Positions increase with
// every committed event; they need not be consecutive. Start is before the first event, so a
// subscription or read "from Start" sees everything.
type Position uint64

// Start is the position before every event.
const Start Position = 0

// End is the stream revision that asks a backwards read to begin at the stream's last event.
const End uint64 = math.MaxUint64

// EventData is an event to be appended.
type EventData struct {
	// ID identifies the event. Re-appending the same IDs with the same exact expected revision is
	// idempotent, so callers derive IDs deterministically where a retry must not duplicate.
	ID       uuid.UUID
	Type     string
	Data     []byte // JSON
	Metadata []byte // JSON, may be empty
}

// RecordedEvent is an event as the store committed it.
type RecordedEvent struct {
	ID       uuid.UUID
	Type     string
	Data     []byte
	Metadata []byte
	Stream   string
	Revision uint64   // 0 for the first event of a stream
	Position Position // global order
	Recorded time.Time
}

// expectationKind says how an append constrains the stream's current revision.
type expectationKind uint8

const (
	expectAny expectationKind = iota
	expectNoStream
	expectStreamExists
	expectExact
)

// ExpectedRevision is the optimistic-concurrency condition of an append.
type ExpectedRevision struct {
	kind     expectationKind
	revision uint64
}

// Any accepts the append whatever the stream's state.
func Any() ExpectedRevision { return ExpectedRevision{kind: expectAny} }

// NoStream accepts the append only if the stream has no events.
func NoStream() ExpectedRevision { return ExpectedRevision{kind: expectNoStream} }

// StreamExists accepts the append only if the stream has at least one event.
func StreamExists() ExpectedRevision { return ExpectedRevision{kind: expectStreamExists} }

// Exact accepts the append only if the stream's last event has this revision.
func Exact(revision uint64) ExpectedRevision {
	return ExpectedRevision{kind: expectExact, revision: revision}
}

// IsAny reports whether the condition accepts any stream state.
func (e ExpectedRevision) IsAny() bool { return e.kind == expectAny }

// IsNoStream reports whether the condition wants a stream with no events.
func (e ExpectedRevision) IsNoStream() bool { return e.kind == expectNoStream }

// IsStreamExists reports whether the condition wants a stream with events.
func (e ExpectedRevision) IsStreamExists() bool { return e.kind == expectStreamExists }

// IsExact reports whether the condition is an exact revision, and which.
func (e ExpectedRevision) IsExact() (uint64, bool) { return e.revision, e.kind == expectExact }

// Matches reports whether a stream whose last revision is last (exists false when the stream
// has no events) satisfies the condition.
func (e ExpectedRevision) Matches(last uint64, exists bool) bool {
	switch e.kind {
	case expectNoStream:
		return !exists
	case expectStreamExists:
		return exists
	case expectExact:
		return exists && last == e.revision
	default:
		return true
	}
}

func (e ExpectedRevision) String() string {
	switch e.kind {
	case expectNoStream:
		return "no stream"
	case expectStreamExists:
		return "stream exists"
	case expectExact:
		return fmt.Sprintf("revision %d", e.revision)
	default:
		return "any"
	}
}

// AppendResult says where an append landed.
type AppendResult struct {
	// NextExpectedRevision is the stream's last revision after the append: the expected revision
	// for the next append.
	NextExpectedRevision uint64
	// Position is the global position of the last appended event.
	Position Position
}

// Direction of a stream read.
type Direction uint8

// The directions of a stream read.
const (
	Forwards Direction = iota
	Backwards
)

// ErrWrongExpectedVersion is matched (errors.Is) by every append refused for its expected
// revision.
var ErrWrongExpectedVersion = errors.New("wrong expected version")

// ErrStreamNotFound is returned by ReadStream for a stream with no events.
var ErrStreamNotFound = errors.New("stream not found")

// ErrSubscriptionDropped is matched by the error a subscription returns when the backend ended
// it; the caller may subscribe again from the last position it processed.
var ErrSubscriptionDropped = errors.New("subscription dropped")

// ErrClosed is matched by calls on a closed store or subscription.
var ErrClosed = errors.New("event store closed")

// WrongExpectedVersionError details a refused append. Actual is known only to backends that
// report it (KurrentDB's client does not).
type WrongExpectedVersionError struct {
	Stream       string
	Expected     ExpectedRevision
	Actual       uint64
	ActualExists bool
	ActualKnown  bool
}

func (e *WrongExpectedVersionError) Error() string {
	actual := "unknown"
	if e.ActualKnown {
		actual = "no stream"
		if e.ActualExists {
			actual = fmt.Sprintf("revision %d", e.Actual)
		}
	}
	return fmt.Sprintf("append to %q: %v: expected %v, actual %s", e.Stream, ErrWrongExpectedVersion, e.Expected, actual)
}

// Is makes errors.Is(err, ErrWrongExpectedVersion) true.
func (e *WrongExpectedVersionError) Is(target error) bool { return target == ErrWrongExpectedVersion }

// Store is the event-store port.
type Store interface {
	// Append writes events to one stream atomically (all or none, consecutive revisions) if the
	// stream satisfies expected; otherwise it returns an error matching ErrWrongExpectedVersion.
	// An append with no events checks the condition and writes nothing. When it returns nil, the
	// events are durable.
	Append(ctx context.Context, stream string, expected ExpectedRevision, events ...EventData) (AppendResult, error)
	// ReadStream returns up to max events of one stream, starting at revision from (inclusive)
	// and going in dir; Backwards with from End starts at the last event. A stream with no
	// events gives ErrStreamNotFound.
	ReadStream(ctx context.Context, stream string, dir Direction, from uint64, max int) ([]RecordedEvent, error)
	// ReadAll returns up to max events of every stream in global order, after position from
	// (exclusive).
	ReadAll(ctx context.Context, from Position, max int) ([]RecordedEvent, error)
	// SubscribeAll starts a catch-up subscription over every stream after position from
	// (exclusive): it delivers the stored events in order, then live ones as they commit,
	// without a gap or a repeat.
	SubscribeAll(ctx context.Context, from Position) (Subscription, error)
	// Close releases the store. Appends and subscriptions fail with ErrClosed afterwards.
	Close() error
}

// Subscription delivers events in global order.
type Subscription interface {
	// Next blocks until the next event, ctx's end, or the subscription's end (an error matching
	// ErrSubscriptionDropped or ErrClosed). The event's Data and Metadata may be shared with
	// other subscribers: they must not be modified.
	Next(ctx context.Context) (RecordedEvent, error)
	// Close ends the subscription.
	Close() error
}

// HeadReader is implemented by stores that know their last committed position without reading
// events.
type HeadReader interface {
	Head(ctx context.Context) (Position, error)
}

// Head returns the position of the last event of the store (Start for an empty store). known
// is a position the caller knows the store holds, where a store without HeadReader starts
// reading forward.
func Head(ctx context.Context, s Store, known Position) (Position, error) {
	if h, ok := s.(HeadReader); ok {
		return h.Head(ctx)
	}
	head := known
	for {
		evs, err := s.ReadAll(ctx, head, 256)
		if err != nil {
			return head, fmt.Errorf("find the store's head: %w", err)
		}
		if len(evs) == 0 {
			return head, nil
		}
		head = evs[len(evs)-1].Position
	}
}
