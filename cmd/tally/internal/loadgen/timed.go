package loadgen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// The timed phase's calls go through fasthttp rather than net/http: in-process the load
// generator shares the cores with the server, and net/http's client (a read and a write
// goroutine per connection, a request, a response and their headers allocated per call) took
// about a quarter of the CPU. fasthttp's HostClient runs a call on the caller's goroutine, and
// each client goroutine here reuses one request and one response for all its calls.
// Provisioning and the final check stay on net/http (apiClient): they are few.

const (
	// successAnswer is the exact body the server sends for a successful call that answers
	// nothing more (httpapi's success()): recognised by its bytes, it spares the increments a
	// JSON decode. Any other body is decoded in full (decodeAnswer).
	successAnswer = `{"result":0,"message":null}`
	// callTimeout bounds one call, as the net/http client's Timeout does (an upload of a long
	// history takes a while).
	callTimeout = 5 * time.Minute
	// idleConnTimeout closes connections idle that long. The timed phase keeps every
	// connection busy; it also bounds how long fasthttp's idle-connection cleaner, a goroutine
	// that sleeps this long between looks, lives on after the client is closed.
	idleConnTimeout = 200 * time.Millisecond
)

// errClientClosed is what dialling answers once the timed client is closed.
var errClientClosed = errors.New("loadgen: timed client closed")

// timedClient sends the timed phase's calls over keep-alive fasthttp connections, at most one
// per client goroutine.
type timedClient struct {
	hc    *fasthttp.HostClient
	base  string
	conns *connSet
}

// newTimedClient is a client of the server at rawURL (http or https, with an optional path
// prefix) for up to maxConns concurrent calls.
func newTimedClient(rawURL string, maxConns int) (*timedClient, error) {
	base := strings.TrimRight(rawURL, "/")
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("loadgen: server URL: %w", err)
	}
	var isTLS bool
	switch u.Scheme {
	case "http":
	case "https":
		isTLS = true
	default:
		return nil, fmt.Errorf("loadgen: server URL %q: want http or https", rawURL)
	}
	if u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("loadgen: server URL %q: want scheme://host[:port][/prefix]", rawURL)
	}
	conns := &connSet{conns: map[*trackedConn]struct{}{}}
	hc := &fasthttp.HostClient{
		Addr:        fasthttp.AddMissingPort(u.Host, isTLS),
		IsTLS:       isTLS,
		Name:        "tally-bench",
		DialTimeout: conns.dial,
		MaxConns:    max(1, maxConns),
		// Never wait long for a connection: there is one for each client goroutine.
		MaxConnWaitTimeout:  callTimeout,
		MaxIdleConnDuration: idleConnTimeout,
		// A call that failed is reported, never sent again: a resent increment the server had
		// applied would count twice, and the data check would call it lost.
		MaxIdemponentCallAttempts: 1,
		MaxResponseBodySize:       maxAnswerBytes,
	}
	return &timedClient{hc: hc, base: base, conns: conns}, nil
}

// close closes every connection, idle or in use, and makes later calls fail. The client's
// goroutines end with it, but for fasthttp's idle-connection cleaner, which sees within
// idleConnTimeout that no connection is left and ends.
func (c *timedClient) close() {
	c.hc.CloseIdleConnections()
	c.conns.closeAll()
}

// timedCall is one client goroutine's calls of one method: a request and a response reused
// for every call. Not safe for concurrent use.
type timedCall struct {
	client *timedClient
	method string
	req    *fasthttp.Request
	resp   *fasthttp.Response
}

func (c *timedClient) newCall(method string) *timedCall {
	req := fasthttp.AcquireRequest()
	req.SetRequestURI(c.base + "/api/data/" + method)
	req.Header.SetMethod(http.MethodPost)
	req.Header.SetContentType("application/x-www-form-urlencoded")
	return &timedCall{client: c, method: method, req: req, resp: fasthttp.AcquireResponse()}
}

// release hands the request and the response back to fasthttp's pools.
func (k *timedCall) release() {
	fasthttp.ReleaseRequest(k.req)
	fasthttp.ReleaseResponse(k.resp)
	k.req, k.resp = nil, nil
}

// do posts a prepared form body and checks the answer as apiClient.do does: a status other than
// 200 or a result other than 0 is a refusal. The exact success body is recognised without
// decoding; its answer is then the zero apiAnswer, as decoding it would give. body must not
// change until do returns.
func (k *timedCall) do(ctx context.Context, body []byte) (apiAnswer, error) {
	if err := ctx.Err(); err != nil {
		return apiAnswer{}, fmt.Errorf("%s: %w", k.method, err)
	}
	deadline := time.Now().Add(callTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	k.req.SetBodyRaw(body)
	if err := k.client.hc.DoDeadline(k.req, k.resp, deadline); err != nil {
		if cerr := ctx.Err(); cerr != nil {
			// The connection was closed under the call because ctx ended.
			return apiAnswer{}, fmt.Errorf("%s: %w (%w)", k.method, cerr, err)
		}
		return apiAnswer{}, fmt.Errorf("%s: %w", k.method, err)
	}
	status, answer := k.resp.StatusCode(), k.resp.Body()
	if status == http.StatusOK && string(answer) == successAnswer {
		return apiAnswer{}, nil
	}
	return decodeAnswer(k.method, status, answer)
}

// connSet tracks the connections a timedClient dialled, so that closing the client (or ending
// its context) also ends calls in flight, which fasthttp's own CloseIdleConnections leaves.
type connSet struct {
	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool
}

func (s *connSet) dial(addr string, timeout time.Duration) (net.Conn, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, errClientClosed
	}
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = c.Close()
		return nil, errClientClosed
	}
	tc := &trackedConn{Conn: c, set: s}
	s.conns[tc] = struct{}{}
	return tc, nil
}

// closeAll closes every tracked connection and refuses new ones.
func (s *connSet) closeAll() {
	s.mu.Lock()
	s.closed = true
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c.Conn)
		delete(s.conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// open counts the connections not closed yet.
func (s *connSet) open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// trackedConn leaves its set when closed.
type trackedConn struct {
	net.Conn
	set *connSet
}

func (c *trackedConn) Close() error {
	c.set.mu.Lock()
	delete(c.set.conns, c)
	c.set.mu.Unlock()
	return c.Conn.Close()
}
