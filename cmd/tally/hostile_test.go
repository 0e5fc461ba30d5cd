package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain"
)

// syncBuffer is a log sink that several goroutines write and the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestServeKeepsSecretsSecret runs the real server with debug logging, calls it with token
// secrets in query strings, forms and headers (right and wrong), and checks that neither a
// token secret nor the admin token appears in the log, in /metrics, in the event store's files
// or in the projection snapshot; and that the admin token and the RSA private key are created
// readable by their owner only.
func TestServeKeepsSecretsSecret(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	logs := &syncBuffer{}
	cfg := serveConfig{Addr: "127.0.0.1:0", Store: "embedded", MaxBodyBytes: 8 << 20, UploadLease: 30 * time.Second, AccessLog: true,
		RateLimit: httpapi.DefaultRateLimit, RateBurst: httpapi.DefaultRateBurst}
	base, stopServe := startServe(t, &globalFlags{DataDir: dataDir}, cfg, logs)
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			if err := stopServe(); err != nil {
				t.Errorf("serve: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	ctx := t.Context()

	for _, name := range []string{"admin.token", usagelog.CurrentKeyFile} {
		fi, err := os.Stat(filepath.Join(dataDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s has mode %v, want 0600", name, perm)
		}
	}
	adminToken, err := (&globalFlags{DataDir: dataDir}).adminToken()
	if err != nil {
		t.Fatal(err)
	}

	admin := httpapi.NewAdminClient(base.Admin, adminToken, nil)
	p, err := admin.CreateProduct(ctx, "P")
	if err != nil {
		t.Fatal(err)
	}
	k, err := admin.CreateKey(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	const tokenName = "token-name-visible-in-the-store"
	methods := make([]string, len(domain.AllMethods))
	for i, m := range domain.AllMethods {
		methods[i] = string(m)
	}
	tok, err := admin.CreateToken(ctx, httpapi.CreateTokenRequest{Name: tokenName, Methods: methods})
	if err != nil {
		t.Fatal(err)
	}
	secret := tok.Secret
	// A secret that was never issued, sent as if it were one: it must not be logged either.
	const wrongSecret = "wrong-secret-9f8e7d6c5b4a"

	owner := url.Values{"ProductId": {strconv.FormatInt(p.ID, 10)}, "Key": {k.Key}}
	call := func(method, path string, params url.Values, header map[string]string) {
		t.Helper()
		var body io.Reader
		target := base.Public + path
		if strings.HasPrefix(path, "/v1/") || strings.HasPrefix(path, "/admin/") {
			target = base.Admin + path
		}
		if method == http.MethodPost {
			body = strings.NewReader(params.Encode())
		} else {
			target += "?" + params.Encode()
		}
		req, err := http.NewRequestWithContext(ctx, method, target, body)
		if err != nil {
			t.Fatal(err)
		}
		if method == http.MethodPost {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for _, s := range []string{secret, wrongSecret} {
		call(http.MethodPost, "/api/data/AddDataObjectToKey", with(owner, "token", s, "Name", "n"), nil)
		call(http.MethodGet, "/api/data/IncrementIntValueToKey", with(owner, "token", s, "Name", "n", "IntValue", "1"), nil)
		call(http.MethodGet, "/api/data/ListDataObjectsToKey", with(owner, "TOKEN", s), nil)
		call(http.MethodPost, "/api/data/UploadValuesToKey", with(owner, "token", s, "Data", "bm90IGEgbG9n"), nil)
		call(http.MethodPost, "/api/data/IncrementIntValueToKey", with(owner, "Name", "n", "IntValue", "x"), map[string]string{"Authorization": "Bearer " + s})
		call(http.MethodGet, "/api/data/NoSuchMethod", with(owner, "token", s), nil)
		call(http.MethodGet, "/v1/history?token="+url.QueryEscape(s), nil, map[string]string{"Authorization": "Bearer " + s})
		call(http.MethodGet, "/admin/v1/tokens", nil, map[string]string{"Authorization": "Bearer " + s})
	}
	call(http.MethodGet, "/admin/v1/tokens", nil, map[string]string{"Authorization": "Bearer " + adminToken + "x"})
	call(http.MethodGet, "/api/data/ListDataObjectsToKey", with(owner, "token", adminToken), nil)

	resp, err := http.Get(base.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(metrics, []byte("tally_http_requests_total")) {
		t.Fatalf("metrics lack the request counter:\n%s", metrics)
	}
	stop() // the projection snapshot is written on shutdown

	secrets := map[string]string{"token secret": secret, "wrong secret": wrongSecret, "admin token": adminToken}
	for what, s := range secrets {
		if strings.Contains(logs.String(), s) {
			t.Errorf("the %s appears in the log", what)
		}
		if bytes.Contains(metrics, []byte(s)) {
			t.Errorf("the %s appears in /metrics", what)
		}
	}
	if !strings.Contains(logs.String(), "level=DEBUG") && !strings.Contains(logs.String(), "level=INFO") {
		t.Fatalf("nothing was logged:\n%s", logs.String())
	}
	// The access log and the failed sign-ins were logged (so the scan above read them), and no
	// form value made it there either.
	for _, want := range []string{
		"msg=request component=access listener=public method=POST path=/api/data/AddDataObjectToKey status=200",
		"msg=request component=access listener=admin method=GET path=/admin/v1/tokens status=401",
		`msg="sign-in refused" component=auth credential="access token" reason=wrong`,
		`msg="sign-in refused" component=auth credential="admin token" reason=wrong`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log lacks %q:\n%s", want, logs.String())
		}
	}
	if strings.Contains(logs.String(), "bm90IGEgbG9n") {
		t.Error("a form value (an upload's Data) appears in the log")
	}

	// Every file of the data directory except the admin token's own: the event store (with its
	// write-ahead log) and the projection snapshot.
	sawName, sawSnapshot := false, false
	err = filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "admin.token" {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		sawName = sawName || bytes.Contains(b, []byte(tokenName))
		sawSnapshot = sawSnapshot || d.Name() == "state.db"
		for what, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("the %s appears in %s", what, path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The scan read the real data: the token's name is stored in the clear next to its hash.
	if !sawName || !sawSnapshot {
		t.Fatalf("the scan found the token's name: %v, the projection snapshot: %v", sawName, sawSnapshot)
	}
}

// serveOn runs newHTTPServer with the given timeouts on a real listener over a real Tally
// handler (an embedded store on a temporary directory) and returns its address.
func serveOn(t *testing.T, to serverTimeouts, maxBody int64) (addr string, owner url.Values) {
	t.Helper()
	env := apitest.Start(t, nil)
	p := env.Product("P")
	k := env.Key(p.ID)
	secret := env.AllMethodsToken()
	h, err := httpapi.New(httpapi.Config{Ledger: env.Ledger, MaxBodyBytes: maxBody})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newHTTPServer(h, to, slog.New(slog.DiscardHandler))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String(), url.Values{"token": {secret}, "ProductId": {strconv.FormatInt(p.ID, 10)}, "Key": {k.Key}}
}

// dribble writes data one byte at a time with a pause between bytes, as a slowloris client
// does, until the server closes the connection or everything is sent; it returns how many
// bytes were written. The pause simulates a slow client; it synchronises nothing.
func dribble(conn net.Conn, data []byte, pause time.Duration) int {
	for i := range data {
		if _, err := conn.Write(data[i : i+1]); err != nil {
			return i
		}
		time.Sleep(pause)
	}
	return len(data)
}

// closedOrAnswered reads from conn until the server closes it or answers; it returns the
// status line, if any. A client-side deadline keeps a broken server from hanging the test.
func closedOrAnswered(t *testing.T, conn net.Conn) string {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server neither answered nor closed the connection within 30 s")
	}
	return strings.TrimSpace(line)
}

// TestServerRefusesSlowAndHugeRequests checks the timeouts and limits of the server tally serve
// runs, with short timeouts against a real listener: a client dribbling its headers or its
// body is cut off before it finishes, and a 20 MiB body is refused with 413 while the client is
// still sending it (the handler reads it through http.MaxBytesReader, so at most the 8 MiB
// limit of it is ever held).
func TestServerRefusesSlowAndHugeRequests(t *testing.T) {
	to := serverTimeouts{ReadHeader: 200 * time.Millisecond, Read: 500 * time.Millisecond, Write: 5 * time.Second, Idle: time.Second, MaxHeader: 4 << 10}

	t.Run("headers byte by byte", func(t *testing.T) {
		addr, _ := serveOn(t, to, 0)
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// 400 header bytes at 10 ms each would take 4 s; the server allows 200 ms.
		header := []byte("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 400) + "\r\n\r\n")
		done := make(chan int, 1)
		go func() { done <- dribble(conn, header, 10*time.Millisecond) }()
		status := closedOrAnswered(t, conn)
		if sent := <-done; sent == len(header) && !strings.Contains(status, "408") {
			t.Fatalf("the whole dribbled header was accepted: %q", status)
		}
	})

	t.Run("body byte by byte", func(t *testing.T) {
		addr, owner := serveOn(t, to, 0)
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		body := owner.Encode() + "&Name=" + strings.Repeat("n", 90)
		head := fmt.Sprintf("POST /api/data/AddDataObjectToKey HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n", len(body))
		if _, err := conn.Write([]byte(head)); err != nil {
			t.Fatal(err)
		}
		done := make(chan int, 1)
		go func() { done <- dribble(conn, []byte(body), 10*time.Millisecond) }()
		status := closedOrAnswered(t, conn)
		sent := <-done
		if strings.Contains(status, " 200 ") {
			t.Fatalf("a body dribbled over %d bytes was served: %q", sent, status)
		}
		if sent == len(body) && status == "" {
			t.Fatal("the whole dribbled body was read")
		}
	})

	t.Run("20 MiB body", func(t *testing.T) {
		addr, owner := serveOn(t, serverTimeouts{ReadHeader: time.Second, Read: 30 * time.Second, Write: 30 * time.Second, Idle: time.Second, MaxHeader: 4 << 10}, 8<<20)
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		const size = 20 << 20
		prefix := owner.Encode() + "&Data="
		head := fmt.Sprintf("POST /api/data/UploadValuesToKey HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s", size, prefix)
		sent := make(chan int64, 1)
		go func() {
			n, _ := conn.Write([]byte(head))
			chunk := bytes.Repeat([]byte("A"), 64<<10)
			total := int64(n)
			for total < size {
				m, err := conn.Write(chunk[:min(int64(len(chunk)), size-total)])
				total += int64(m)
				if err != nil {
					break
				}
			}
			sent <- total
		}()
		status := closedOrAnswered(t, conn)
		if !strings.Contains(status, " 413 ") {
			t.Fatalf("status %q, want 413", status)
		}
		_ = conn.Close()
		t.Logf("the client had sent %d of %d bytes when it closed after the 413", <-sent, size)
	})
}
