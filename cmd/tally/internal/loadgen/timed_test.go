package loadgen

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestTimedCallChecksAnswers sends one reused call through fasthttp to a server answering each
// body with a chosen status and answer: only the exact success body skips decoding, and every
// refusal, whatever its status or result, is an error.
func TestTimedCallChecksAnswers(t *testing.T) {
	type answer struct {
		status  int
		body    string
		refused bool   // the call must be a refusal...
		message string // ...with this message
	}
	answers := map[string]answer{
		"ok":          {status: 200, body: `{"result":0,"message":null}`},
		"ok-spaced":   {status: 200, body: `{"result": 0, "message": null}`},
		"applied":     {status: 200, body: `{"result":0,"message":null,"applied":3,"known":7}`},
		"refused":     {status: 200, body: `{"result":1,"message":"Access denied."}`, refused: true, message: "Access denied."},
		"refused-400": {status: 400, body: `{"result":1,"message":"No such object."}`, refused: true, message: "No such object."},
		"status-503":  {status: 503, body: `{"result":0,"message":null}`, refused: true},
		"result-2":    {status: 200, body: `{"result":2,"message":null}`, refused: true},
		"garbage":     {status: 200, body: `<html>`},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.URL.Path != "/prefix/api/data/IncrementIntValueToKey" ||
			r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
			http.Error(w, "unexpected request "+r.Method+" "+r.URL.Path, http.StatusTeapot)
			return
		}
		a, ok := answers[strings.TrimPrefix(string(b), "case=")]
		if !ok {
			http.Error(w, "unknown case "+string(b), http.StatusTeapot)
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(a.status)
		_, _ = io.WriteString(w, a.body)
	}))
	defer srv.Close()

	timed, err := newTimedClient(srv.URL+"/prefix/", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer timed.close()
	call := timed.newCall("IncrementIntValueToKey")
	defer call.release()

	// One call object for all: success and refusal alternate, so that a reused response
	// carries nothing over.
	for _, name := range []string{"ok", "refused", "ok-spaced", "status-503", "applied", "refused-400", "ok", "result-2", "garbage"} {
		want := answers[name]
		a, err := call.do(context.Background(), []byte("case="+name))
		var ref *refusal
		switch {
		case want.refused:
			if !errors.As(err, &ref) || ref.status != want.status || ref.message != want.message || ref.method != "IncrementIntValueToKey" {
				t.Errorf("%s: %+v, %v; want a refusal with HTTP %d and message %q", name, a, err, want.status, want.message)
			}
		case name == "garbage":
			if err == nil || errors.As(err, &ref) || !strings.Contains(err.Error(), "decode answer") {
				t.Errorf("%s: %v; want a decode error", name, err)
			}
		case err != nil:
			t.Errorf("%s: %v; want success", name, err)
		case name == "applied" && (a.Applied != 3 || a.Known != 7):
			t.Errorf("%s: %+v; want applied 3, known 7", name, a)
		case name != "applied" && !reflect.DeepEqual(a, apiAnswer{}):
			t.Errorf("%s: %+v; want the zero answer", name, a)
		}
	}
}

// TestRefusedIncrementsAreReported drives a real server with increments it refuses (a wrong
// token): every call must be an error of the report, none acknowledged, and the data check
// must still hold.
func TestRefusedIncrementsAreReported(t *testing.T) {
	srv := startServer(t)
	cfg := Config{URL: srv.URL, AdminToken: srv.AdminToken, Clients: 2, Requests: 12}
	if err := cfg.defaults(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	api := newAPIClient(cfg.URL, cfg.HTTP)
	fx, err := provision(ctx, cfg, httpapiAdmin(cfg), api)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range fx.incObjects {
		fx.incBodies[i] = form("token", "not-a-token", "ProductId", itoa(fx.productID), "Key", fx.incKey.Key, "Id", itoa(id), "IntValue", "1")
	}
	timed, err := newTimedClient(cfg.URL, cfg.Clients)
	if err != nil {
		t.Fatal(err)
	}
	defer timed.close()
	res := drive(ctx, cfg, timed, fx, nil)
	sum := res.increment.summary("IncrementIntValueToKey", res.elapsed, 1)
	if sum == nil || sum.OK != 0 || sum.Errors != cfg.Requests {
		t.Fatalf("summary %+v; want %d errors", sum, cfg.Requests)
	}
	var ref *refusal
	if !errors.As(res.increment.firstErr, &ref) || ref.status < 400 || ref.message == "" {
		t.Errorf("first error %v; want the server's refusal", res.increment.firstErr)
	}
	if res.incAcked[0]+res.incAcked[1] != 0 || res.incFailed[0]+res.incFailed[1] != int64(cfg.Requests) {
		t.Errorf("acknowledged %v, failed %v", res.incAcked, res.incFailed)
	}
	check, err := checkData(ctx, api, fx, res, nil)
	if err != nil || !check.OK {
		t.Errorf("check: %+v, %v", check, err)
	}
}

// TestCancelEndsCallsInFlight ends the run's context while a call waits on a server that does
// not answer: the call must fail (its connection closed under it) and drive must return.
func TestCancelEndsCallsInFlight(t *testing.T) {
	arrived := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		arrived <- struct{}{}
		<-r.Context().Done() // the client closing the connection ends it
	}))
	defer srv.Close()
	timed, err := newTimedClient(srv.URL, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer timed.close()
	fx := &fixture{incObjects: []int64{1}, incBodies: [][]byte{[]byte("Id=1")}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan driveResult, 1)
	go func() { done <- drive(ctx, Config{Clients: 1, Requests: 5}, timed, fx, nil) }()
	<-arrived
	cancel()
	var res driveResult
	select {
	case res = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("drive did not return after the context ended")
	}
	if res.incFailed[0] != 1 || res.incAcked[0] != 0 || !errors.Is(res.increment.firstErr, context.Canceled) {
		t.Errorf("acknowledged %d, failed %d, first error %v; want one call failed by the cancel", res.incAcked[0], res.incFailed[0], res.increment.firstErr)
	}
	if n := timed.conns.open(); n != 0 {
		t.Errorf("%d connections open after the cancel", n)
	}
}

// TestNoGoroutineOutlivesRun runs a short timed load and then looks at every goroutine's stack:
// none may be the tool's or fasthttp's once fasthttp's idle-connection cleaner has had its one
// idleConnTimeout of sleep to see that the connections are gone.
func TestNoGoroutineOutlivesRun(t *testing.T) {
	srv := startServer(t)
	if _, err := Run(context.Background(), Config{URL: srv.URL, AdminToken: srv.AdminToken, Clients: 8, Duration: 200 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * idleConnTimeout)
	for {
		left := toolGoroutines()
		if left == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines left after Run:\n%s", left)
		}
		time.Sleep(idleConnTimeout / 4) // polling fasthttp's cleaner, which sleeps on its own clock
	}
}

// toolGoroutines is the stacks of the goroutines running fasthttp or the load generator.
func toolGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var left []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "valyala/fasthttp") || strings.Contains(g, "loadgen.drive") || strings.Contains(g, "loadgen.(*timedClient)") {
			left = append(left, g)
		}
	}
	return strings.Join(left, "\n\n")
}
