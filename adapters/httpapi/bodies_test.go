package httpapi_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/httpapi/apitest"
)

// largeBodyNotices is a log handler that reports each "reading a large body" record, so that a
// test can wait until the server holds a body's turn and reservation.
type largeBodyNotices struct{ ch chan string }

func (h largeBodyNotices) Enabled(context.Context, slog.Level) bool { return true }
func (h largeBodyNotices) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h largeBodyNotices) WithGroup(string) slog.Handler            { return h }
func (h largeBodyNotices) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "reading a large body" {
		client := ""
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "client" {
				client = a.Value.String()
			}
			return true
		})
		h.ch <- client
	}
	return nil
}

// clientFrom is an HTTP client whose connections come from a loopback address of its own, so
// that the server sees a distinct client address.
func clientFrom(local string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: time.Minute}
}

// postBody posts a form body and returns "status body" (or the error), for use in goroutines.
func postBody(c *http.Client, url string, body io.Reader, length int64) string {
	req, err := http.NewRequest(http.MethodPost, url, body)
	if err != nil {
		return err.Error()
	}
	req.ContentLength = length
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := c.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, b)
}

const unauthenticated = `401 {"result":1,"message":"Unable to authenticate."}`

// TestLargeBodyTurnsAreByClientAddress holds a large body open from one address: a second
// large body from that address waits for it, while one from another address is read and
// answered meanwhile.
func TestLargeBodyTurnsAreByClientAddress(t *testing.T) {
	notices := largeBodyNotices{ch: make(chan string, 8)}
	env := apitest.StartWith(t, apitest.Options{MinBodyRate: -1, Logger: slog.New(notices)})
	url := env.URL + "/api/data/ListDataObjects"
	const size = 2 << 20
	pad := "token=nope&pad=" + strings.Repeat("x", size-len("token=nope&pad="))

	held, writer := io.Pipe()
	first := make(chan string, 1)
	go func() { first <- postBody(clientFrom("127.0.0.2"), url, held, size) }()
	if _, err := writer.Write([]byte("token=nope&")); err != nil {
		t.Fatal(err)
	}
	if c := <-notices.ch; c != "127.0.0.2" {
		t.Fatalf("large body read for %q", c)
	}

	var released atomic.Bool
	second := make(chan string, 1)
	go func() {
		a := postBody(clientFrom("127.0.0.2"), url, strings.NewReader(pad), size)
		if !released.Load() {
			a = "answered while the address's first large body held its turn: " + a
		}
		second <- a
	}()
	if a := postBody(clientFrom("127.0.0.3"), url, strings.NewReader(pad), size); a != unauthenticated {
		t.Fatalf("a large body from another address: %s", a)
	}
	released.Store(true)
	if _, err := writer.Write([]byte(strings.Repeat("y", size-len("token=nope&")))); err != nil {
		t.Fatal(err)
	}
	writer.Close()
	if a := <-first; a != unauthenticated {
		t.Fatalf("first: %s", a)
	}
	if a := <-second; a != unauthenticated {
		t.Fatalf("second: %s", a)
	}
}

// TestPendingBodiesShareAByteBudget gives the server 3 MiB for bodies: a 2 MiB body being read
// holds 2 MiB of it, so a second 2 MiB body (from another address) waits until the first is
// answered, while small calls go through meanwhile.
func TestPendingBodiesShareAByteBudget(t *testing.T) {
	notices := largeBodyNotices{ch: make(chan string, 8)}
	env := apitest.StartWith(t, apitest.Options{MinBodyRate: -1, MaxPendingBodyBytes: 3 << 20, Logger: slog.New(notices)})
	url := env.URL + "/api/data/ListDataObjects"
	const size = 2 << 20
	pad := "token=nope&pad=" + strings.Repeat("x", size-len("token=nope&pad="))

	held, writer := io.Pipe()
	first := make(chan string, 1)
	go func() { first <- postBody(clientFrom("127.0.0.2"), url, held, size) }()
	if _, err := writer.Write([]byte("token=nope&")); err != nil {
		t.Fatal(err)
	}
	<-notices.ch

	var released atomic.Bool
	second := make(chan string, 1)
	go func() {
		a := postBody(clientFrom("127.0.0.3"), url, strings.NewReader(pad), size)
		if !released.Load() {
			a = "answered while the budget was held: " + a
		}
		second <- a
	}()
	refused(t, env.Call("ListDataObjects", vals("token", "nope")), http.StatusUnauthorized, "Unable to authenticate.")
	released.Store(true)
	if _, err := writer.Write([]byte(strings.Repeat("y", size-len("token=nope&")))); err != nil {
		t.Fatal(err)
	}
	writer.Close()
	if a := <-first; a != unauthenticated {
		t.Fatalf("first: %s", a)
	}
	if a := <-second; a != unauthenticated {
		t.Fatalf("second: %s", a)
	}
}

// TestBodyRate sends bodies over raw connections: one at a byte per 20 ms is cut with 408 after
// the grace period, and one of 320 KiB at about 320 KiB/s, which takes longer than the grace
// period but keeps above the minimum rate, is read to the end and answered.
func TestBodyRate(t *testing.T) {
	env := apitest.StartWith(t, apitest.Options{MinBodyRate: 64 << 10, BodyRateGrace: 200 * time.Millisecond})
	addr := strings.TrimPrefix(env.URL, "http://")
	send := func(size, chunk int, pause time.Duration) (status string, sent int) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		head := fmt.Sprintf("POST /api/data/ListDataObjects HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\ntoken=nope&pad=", size)
		if _, err := conn.Write([]byte(head)); err != nil {
			t.Fatal(err)
		}
		sent = len("token=nope&pad=")
		answered := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(conn).ReadString('\n')
			answered <- strings.TrimSpace(line)
		}()
		for sent < size {
			select {
			case status := <-answered:
				return status, sent
			default:
			}
			n := min(chunk, size-sent)
			if _, err := conn.Write([]byte(strings.Repeat("x", n))); err != nil {
				break
			}
			sent += n
			time.Sleep(pause) // the client's pace, not a synchronisation
		}
		return <-answered, sent
	}
	if status, sent := send(2<<20, 1, 20*time.Millisecond); !strings.Contains(status, " 408 ") || sent >= 2<<20 {
		t.Fatalf("a body at 50 bytes/s: %q after %d bytes", status, sent)
	}
	if status, sent := send(320<<10, 32<<10, 100*time.Millisecond); !strings.Contains(status, " 401 ") || sent != 320<<10 {
		t.Fatalf("a body at 320 KiB/s: %q after %d bytes", status, sent)
	}
}

// TestLargeBodiesPerAddressCanBeRaised: with two turns per address (a server behind a reverse
// proxy), a second large body from the address holding one is read at once.
func TestLargeBodiesPerAddressCanBeRaised(t *testing.T) {
	notices := largeBodyNotices{ch: make(chan string, 8)}
	env := apitest.StartWith(t, apitest.Options{MinBodyRate: -1, LargeBodiesPerAddress: 2, Logger: slog.New(notices)})
	url := env.URL + "/api/data/ListDataObjects"
	const size = 2 << 20
	held, writer := io.Pipe()
	first := make(chan string, 1)
	go func() { first <- postBody(clientFrom("127.0.0.2"), url, held, size) }()
	if _, err := writer.Write([]byte("token=nope&")); err != nil {
		t.Fatal(err)
	}
	<-notices.ch
	pad := "token=nope&pad=" + strings.Repeat("x", size-len("token=nope&pad="))
	if a := postBody(clientFrom("127.0.0.2"), url, strings.NewReader(pad), size); a != unauthenticated {
		t.Fatalf("a second large body from the same address: %s", a)
	}
	if _, err := writer.Write([]byte(strings.Repeat("y", size-len("token=nope&")))); err != nil {
		t.Fatal(err)
	}
	writer.Close()
	if a := <-first; a != unauthenticated {
		t.Fatalf("first: %s", a)
	}
}
