// Package kurrenttest holds an in-process server that speaks KurrentDB's gRPC streams protocol,
// so that tests can run the unmodified esdb client (and the kurrentdb adapter built on it)
// without a real KurrentDB.
//
// The server is built on the generated stubs shipped in the client module and implements only
// what the v4 client uses for appends, reads and catch-up subscriptions. Its behaviour follows
// KurrentDB's documented guarantees as this project reads them (docs/kurrentdb.md): it shows the
// adapter against that reading of the protocol, not against a real server. Everything is held in
// memory; nothing survives Close.
package kurrenttest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	streamspb "github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

// DefaultMaxAppendSize is KurrentDB's default limit on the size of one append request (1 MiB),
// in bytes of event data, custom metadata and event type; the server refuses larger appends.
const DefaultMaxAppendSize = 1 << 20

// idempotencyCacheSize bounds the recent-event-ID cache that makes appends with expected
// revision Any or StreamExists idempotent, as KurrentDB's own bounded cache does.
const idempotencyCacheSize = 10_000

// recordOverhead is added to each event's payload when advancing the log position, so that
// positions, like KurrentDB's byte offsets in its transaction log, are increasing but not
// consecutive.
const recordOverhead = 100

// maxMessageSize matches the client's inbound limit, so an oversized append is refused by the
// append-size check (as on a real server) rather than by gRPC's default 4 MiB message limit.
const maxMessageSize = 17 << 20

// Server is an in-process KurrentDB gRPC streams server. Create it with Start.
type Server struct {
	streamspb.UnimplementedStreamsServer

	address        string // host:port, kept across Stop and Restart
	densePositions bool

	// lifecycle guards the running gRPC server; nil while stopped.
	lifecycle  sync.Mutex
	grpcServer *grpc.Server
	served     chan struct{} // closed when grpcServer's Serve returns
	closed     bool

	mu      sync.Mutex
	log     []*record            // every event in global order
	streams map[string][]*record // per stream, index == revision
	// nextPosition is where the next event lands in the global order.
	nextPosition uint64
	// appended is closed and replaced after every commit, waking live subscriptions.
	appended chan struct{}
	// recentIDs and recentOrder form the bounded idempotency cache for Any and StreamExists.
	recentIDs   map[uuid.UUID]*record
	recentOrder []uuid.UUID
	subscribers map[*subscriber]struct{}
	// subscriptionsStarted counts every subscription request ever confirmed.
	subscriptionsStarted int
	failBefore           []error // errors for the next appends, before anything is written
	failAfter            []error // errors for the next appends, after they are committed
}

// record is a committed event. It is immutable once stored.
type record struct {
	id             uuid.UUID
	stream         string
	revision       uint64
	position       uint64 // commit == prepare
	eventType      string
	contentType    string
	created        time.Time
	customMetadata []byte
	data           []byte
}

// subscriber is one live subscription request; closing dropped ends it.
type subscriber struct {
	dropped chan struct{}
}

// Option configures a Server.
type Option func(*Server)

// WithDensePositions makes positions consecutive (each event one after the previous) instead of
// advancing by the event's size as KurrentDB's log positions do. Dense positions expose
// off-by-one errors in a client's position handling that sparse ones hide.
func WithDensePositions() Option {
	return func(s *Server) { s.densePositions = true }
}

// Start runs a server on 127.0.0.1 on a free port, without TLS, until Close or the end of the
// test.
func Start(tb testing.TB, options ...Option) *Server {
	tb.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("kurrenttest: listen: %v", err)
	}
	s := &Server{
		address:     listener.Addr().String(),
		streams:     make(map[string][]*record),
		appended:    make(chan struct{}),
		recentIDs:   make(map[uuid.UUID]*record),
		subscribers: make(map[*subscriber]struct{}),
	}
	for _, option := range options {
		option(s)
	}
	s.serve(listener)
	tb.Cleanup(s.Close)
	return s
}

// serve runs a new gRPC server on listener. s.lifecycle held, or s not yet shared.
func (s *Server) serve(listener net.Listener) {
	grpcServer := grpc.NewServer(
		grpc.MaxRecvMsgSize(maxMessageSize),
		// The client pings every 10 s even without active calls; grpc-go's default policy would
		// answer that with GOAWAY.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	// Only Streams is registered: for a single-node connection string the client asks
	// ServerFeatures for optional features and, getting Unimplemented, assumes none; it reads
	// gossip only for cluster connection strings.
	streamspb.RegisterStreamsServer(grpcServer, s)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = grpcServer.Serve(listener)
	}()
	s.grpcServer, s.served = grpcServer, served
}

// stopServing ends the running gRPC server, if any, at once. s.lifecycle held.
func (s *Server) stopServing() {
	if s.grpcServer == nil {
		return
	}
	s.grpcServer.Stop()
	<-s.served
	s.grpcServer, s.served = nil, nil
}

// Stop takes the server off the network, as when a node goes down: calls in flight end,
// connections close and new ones are refused. The events stay; Restart brings the server back on
// the same address.
func (s *Server) Stop() {
	s.lifecycle.Lock()
	defer s.lifecycle.Unlock()
	s.stopServing()
}

// Restart serves again on the same address with the same events after Stop. It fails the test
// if the address cannot be bound again.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.lifecycle.Lock()
	defer s.lifecycle.Unlock()
	if s.closed || s.grpcServer != nil {
		return
	}
	listener, err := net.Listen("tcp", s.address)
	if err != nil {
		tb.Fatalf("kurrenttest: listen again on %s: %v", s.address, err)
	}
	s.serve(listener)
}

// URL is the connection string for the esdb client.
func (s *Server) URL() string {
	return fmt.Sprintf("esdb://%s?tls=false", s.address)
}

// Close stops the server for good. It is safe to call twice.
func (s *Server) Close() {
	s.lifecycle.Lock()
	defer s.lifecycle.Unlock()
	s.closed = true
	s.stopServing()
}

// DropSubscriptions ends every live subscription from the server side: each client sees its
// subscription dropped (an Unavailable status, as when a node goes away) and must resubscribe.
// It returns how many it dropped.
func (s *Server) DropSubscriptions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.subscribers)
	for sub := range s.subscribers {
		close(sub.dropped)
		delete(s.subscribers, sub)
	}
	return n
}

// SubscriptionsStarted is how many subscriptions the server has confirmed since it started, so a
// test can tell that a client resubscribed.
func (s *Server) SubscriptionsStarted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.subscriptionsStarted
}

// LiveSubscriptions is how many subscriptions are running now.
func (s *Server) LiveSubscriptions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.subscribers)
}

// FailNextAppends makes the next n append requests fail with err before anything is written.
// err is returned from the gRPC handler as is, so pass a status error (status.Error) to choose
// the code the client sees; nil means codes.Unavailable.
func (s *Server) FailNextAppends(n int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failBefore = appendFaults(s.failBefore, n, err)
}

// LoseNextAppendAcks makes the next n append requests commit and then fail with err, as when the
// connection breaks after the server wrote the events but before the client read the answer.
// nil means codes.Unavailable.
func (s *Server) LoseNextAppendAcks(n int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failAfter = appendFaults(s.failAfter, n, err)
}

func appendFaults(queue []error, n int, err error) []error {
	if err == nil {
		err = status.Error(codes.Unavailable, "kurrenttest: injected append failure")
	}
	for range n {
		queue = append(queue, err)
	}
	return queue
}

// takeFault pops the next injected error of queue, if any.
func (s *Server) takeFault(queue *[]error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(*queue) == 0 {
		return nil
	}
	err := (*queue)[0]
	*queue = (*queue)[1:]
	return err
}

// EventCount is how many events the server holds, in all streams.
func (s *Server) EventCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.log)
}

var errDropped = status.Error(codes.Unavailable, "kurrenttest: subscription dropped by the server")

// register adds a live subscriber.
func (s *Server) register() *subscriber {
	sub := &subscriber{dropped: make(chan struct{})}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subscribers[sub] = struct{}{}
	s.subscriptionsStarted++
	return sub
}

func (s *Server) unregister(sub *subscriber) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.subscribers, sub)
}

// isDropped reports whether DropSubscriptions ended sub.
func (sub *subscriber) isDropped() bool {
	select {
	case <-sub.dropped:
		return true
	default:
		return false
	}
}

// structuredUUID encodes id as the client's default (structured) UUID form.
func structuredUUID(id uuid.UUID) *shared.UUID {
	var most, least uint64
	for i := range 8 {
		most = most<<8 | uint64(id[i])
		least = least<<8 | uint64(id[8+i])
	}
	return &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{
		MostSignificantBits:  int64(most),
		LeastSignificantBits: int64(least),
	}}}
}

// parseUUID decodes either UUID form.
func parseUUID(id *shared.UUID) (uuid.UUID, error) {
	if id == nil {
		return uuid.Nil, errors.New("missing event id")
	}
	if structured := id.GetStructured(); structured != nil {
		var out uuid.UUID
		most, least := uint64(structured.MostSignificantBits), uint64(structured.LeastSignificantBits)
		for i := 7; i >= 0; i-- {
			out[i] = byte(most)
			out[8+i] = byte(least)
			most >>= 8
			least >>= 8
		}
		return out, nil
	}
	return uuid.Parse(id.GetString_())
}

// waitLive returns nil when wake is closed, or an error when sub is dropped or ctx ends.
func waitLive(ctx context.Context, sub *subscriber, wake <-chan struct{}) error {
	select {
	case <-wake:
		return nil
	case <-sub.dropped:
		return errDropped
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}
