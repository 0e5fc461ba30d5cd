package httpapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/tallyledger/tally/domain"
)

// Defences against clients that send bodies slowly or send many big ones (docs/reliability.md,
// "Hostile clients"). A body is read before the token it carries can be checked, so whoever
// connects decides what is read; these bound what that costs.
const (
	// DefaultMinBodyRate is the average rate, in bytes per second, at which a body must arrive
	// once its grace period is over: 64 KiB/s, so that the largest body tally serve accepts
	// (64 MiB) may take up to about 17 minutes, and a 1.2 MB log about 20 s.
	DefaultMinBodyRate = 64 << 10
	// DefaultBodyRateGrace is how long a body may take before the rate applies: time for a
	// connection's first round trips.
	DefaultBodyRateGrace = time.Second
	// DefaultMaxPendingBodyBytes bounds the memory reserved for bodies being read and handled:
	// one body of tally serve's largest (64 MiB) and 32 MiB of others. With 128 MiB, two
	// largest bodies at once and the garbage collector's slack took the process to 280 MB
	// (TestBigBadBodiesStayWithinMemory); with 96 MiB, 152 MB.
	DefaultMaxPendingBodyBytes int64 = 96 << 20
	// unreservedBody is the size up to which a body is read without a reservation: its memory
	// is of the order of the connection's own buffers.
	unreservedBody = 64 << 10
)

// errBodyTooSlow says that a body did not arrive at the minimum rate.
var errBodyTooSlow = errors.New("the request body arrived too slowly")

// bodyTooSlowMessage is the answer to a body that arrived too slowly (HTTP 408).
const bodyTooSlowMessage = "The request body arrived too slowly."

// bodyGate decides when a body may be read: every body over unreservedBody first reserves its
// size from a global byte budget (bodies of unknown length reserve the largest body accepted),
// and a large one (over largeBody, or of unknown length) also takes its client address's
// single turn and one of the global large-body slots.
type bodyGate struct {
	budget   *semaphore.Weighted
	capacity int64
	maxBody  int64
	slots    chan struct{}
	addrs    addrTurns
	minRate  float64 // bytes per second; 0: no minimum
	grace    time.Duration
	// writeTimeout is the time given to the answer once the body is in (0: the server's).
	writeTimeout time.Duration
	logger       *slog.Logger
}

func newBodyGate(cfg Config, maxBody int64, logger *slog.Logger) *bodyGate {
	g := &bodyGate{
		capacity: cfg.MaxPendingBodyBytes, maxBody: maxBody, logger: logger,
		minRate: cfg.MinBodyRate, grace: cfg.BodyRateGrace, writeTimeout: cfg.WriteTimeout,
	}
	if g.capacity <= 0 {
		g.capacity = DefaultMaxPendingBodyBytes
	}
	g.budget = semaphore.NewWeighted(g.capacity)
	n := cfg.MaxLargeBodies
	if n <= 0 {
		n = DefaultMaxLargeBodies
	}
	g.slots = make(chan struct{}, n)
	g.addrs.per = max(1, cfg.LargeBodiesPerAddress)
	if g.minRate == 0 {
		g.minRate = DefaultMinBodyRate
	}
	if g.minRate < 0 {
		g.minRate = 0
	}
	if g.grace <= 0 {
		g.grace = DefaultBodyRateGrace
	}
	return g
}

// readsBody reports whether the handler will read the request's body: only a form body of a
// POST is (r.ParseForm reads no other).
func readsBody(r *http.Request) bool {
	if r.Method != http.MethodPost || r.Body == nil || r.Body == http.NoBody {
		return false
	}
	return isForm(r)
}

// admit waits until the body may be read and returns the function that ends its turn, to call
// once the request is handled: the body's memory counts until then.
func (g *bodyGate) admit(r *http.Request) (func(), error) {
	if r.ContentLength >= 0 && r.ContentLength <= unreservedBody || !readsBody(r) {
		return func() {}, nil
	}
	ctx := r.Context()
	var undo []func()
	release := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	fail := func(err error) (func(), error) {
		release()
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil, domain.ErrServiceUnavailable
		}
		return nil, err
	}
	if r.ContentLength < 0 || r.ContentLength > largeBody {
		// One large body per client address at a time (LargeBodiesPerAddress): one client
		// cannot take every slot, nor the whole budget, by opening many connections.
		done, err := g.addrs.lock(ctx, ClientAddr(r))
		if err != nil {
			return fail(err)
		}
		undo = append(undo, done)
		select {
		case g.slots <- struct{}{}:
			undo = append(undo, func() { <-g.slots })
		case <-ctx.Done():
			return fail(ctx.Err())
		}
	}
	size := r.ContentLength
	if size < 0 || size > g.maxBody {
		// Unknown length, or more than will be read before the limit refuses it.
		size = g.maxBody + 1
	}
	size = min(size, g.capacity)
	if err := g.budget.Acquire(ctx, size); err != nil {
		return fail(err)
	}
	undo = append(undo, func() { g.budget.Release(size) })
	if r.ContentLength < 0 || r.ContentLength > largeBody {
		g.logger.Debug("reading a large body", "request_id", infoOf(r).requestID, "client", ClientAddr(r), "announced", r.ContentLength, "reserved", size)
	}
	return release, nil
}

// rateBody reads a request body that must arrive at the gate's minimum rate: the connection's
// read deadline is moved as bytes arrive, to grace + bytes read / rate after the first read, so
// a client that falls behind that average is cut off by the deadline even while a read blocks.
type rateBody struct {
	body  io.ReadCloser
	rc    *http.ResponseController
	gate  *bodyGate
	start time.Time
	set   time.Time // the read deadline last set
	n     int64
	done  bool
}

// deadlineStep is how far the rate deadline must move before the connection's is moved.
const deadlineStep = 10 * time.Millisecond

// wrap returns the request's body held to the gate's rate (a nil gate: no rate).
func (g *bodyGate) wrap(w http.ResponseWriter, r *http.Request) *rateBody {
	return &rateBody{body: r.Body, rc: http.NewResponseController(w), gate: g, start: time.Now()}
}

func (b *rateBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, errBodyTooSlow
	}
	var deadline time.Time
	if b.gate != nil && b.gate.minRate > 0 {
		deadline = b.start.Add(b.gate.grace + time.Duration(float64(b.n)/b.gate.minRate*float64(time.Second)))
		// Moved only when it moves noticeably: a small body's reads then cost one deadline.
		// Not every ResponseWriter supports deadlines (a test's recorder does not); the
		// check after the read still holds the client to the rate then.
		if b.set.IsZero() || deadline.Sub(b.set) > deadlineStep {
			_ = b.rc.SetReadDeadline(deadline)
			b.set = deadline
		}
	}
	n, err := b.body.Read(p)
	b.n += int64(n)
	if err != nil && !deadline.IsZero() && (errors.Is(err, os.ErrDeadlineExceeded) || time.Now().After(deadline)) {
		b.done = true
		return n, errBodyTooSlow
	}
	return n, err
}

// Close closes the request body.
func (b *rateBody) Close() error { return b.body.Close() }

// finish clears the rate deadline once the body is read: a deadline passing while the request
// is handled would make the server cancel the request's context. After a body that took longer
// than the grace period, the answer gets the gate's write timeout from now, since the body may
// have used up the server's.
func (b *rateBody) finish() {
	if b.gate == nil {
		return
	}
	if !b.set.IsZero() {
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	// A body read within the grace period left the server's write deadline nearly whole.
	if b.gate.writeTimeout > 0 && time.Since(b.start) > b.gate.grace {
		_ = b.rc.SetWriteDeadline(time.Now().Add(b.gate.writeTimeout))
	}
}

// addrTurns gives each client address per turns at a time; an entry exists while someone holds
// or awaits a turn.
type addrTurns struct {
	per   int
	mu    sync.Mutex
	turns map[string]*addrTurn
}

type addrTurn struct {
	held chan struct{}
	refs int
}

// lock takes addr's turn, or gives up when ctx ends; the returned func ends the turn.
func (a *addrTurns) lock(ctx context.Context, addr string) (func(), error) {
	a.mu.Lock()
	if a.turns == nil {
		a.turns = map[string]*addrTurn{}
	}
	t := a.turns[addr]
	if t == nil {
		t = &addrTurn{held: make(chan struct{}, max(1, a.per))}
		a.turns[addr] = t
	}
	t.refs++
	a.mu.Unlock()
	select {
	case t.held <- struct{}{}:
		return func() { <-t.held; a.release(addr, t) }, nil
	case <-ctx.Done():
		a.release(addr, t)
		return nil, ctx.Err()
	}
}

func (a *addrTurns) release(addr string, t *addrTurn) {
	a.mu.Lock()
	t.refs--
	if t.refs == 0 {
		delete(a.turns, addr)
	}
	a.mu.Unlock()
}
