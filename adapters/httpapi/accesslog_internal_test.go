package httpapi

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestAccessLogLine sends a request with a secret in its query string, its form and its
// Authorization header, and a forged X-Forwarded-For, through AccessLog over a real server, and reads the one JSON line it
// logs: every field is there with the request's values, the request id is the one the handler
// saw, and no secret or form value appears.
func TestAccessLogLine(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	const secret, formValue = "query-secret-5f4e3d", "form-value-a1b2c3"
	var seenID string
	h := AccessLog(logger, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seenID = r.Header.Get("X-Request-ID")
		_ = r.ParseForm()
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte("hello"))
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/api/data/AddDataObjectToKey?token="+secret, strings.NewReader("Name="+formValue))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+secret)
	req.Header.Set("X-Request-ID", "req-42")
	// A header any client can set does not change the address logged (docs/deploy.md).
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	req.Header.Set("Forwarded", "for=203.0.113.9")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if id := resp.Header.Get("X-Request-ID"); id != "req-42" {
		t.Errorf("the answer's X-Request-ID is %q", id)
	}

	line := buf.String()
	if strings.Count(line, "\n") != 1 {
		t.Fatalf("want one line, got:\n%s", line)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(line), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"msg": "request", "method": "POST", "path": "/api/data/AddDataObjectToKey", "status": float64(201),
		"bytes": float64(5), "request_id": "req-42", "client_addr": "127.0.0.1",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %v, want %v", k, got[k], v)
		}
	}
	if d, ok := got["duration"].(float64); !ok || d <= 0 {
		t.Errorf("duration: %v", got["duration"])
	}
	if seenID != "req-42" {
		t.Errorf("the handler saw request id %q", seenID)
	}
	if strings.Contains(line, secret) || strings.Contains(line, formValue) || strings.Contains(line, "203.0.113.9") {
		t.Errorf("a secret or form value was logged: %s", line)
	}

	// Without a usable id of the client's, the one made up is the one the handler sees.
	buf.Reset()
	req, _ = http.NewRequest(http.MethodGet, srv.URL+"/healthz", nil)
	req.Header.Set("X-Request-ID", "not a plain id")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got["request_id"] != seenID || seenID == "not a plain id" || seenID == "" {
		t.Errorf("logged %v, the handler saw %q", got["request_id"], seenID)
	}
	// A long path is cut.
	if p := loggedPath("/" + strings.Repeat("é", 300)); len(p) > maxLoggedPath+len("…") || !strings.HasSuffix(p, "…") {
		t.Errorf("a long path logged as %d bytes", len(p))
	}
}

// TestSignInLogIsRateLimited: a burst of refused sign-ins logs only as many lines as the limit
// lets through, with the client's address and never the credential; the next line allowed says
// how many were left out.
func TestSignInLogIsRateLimited(t *testing.T) {
	var buf bytes.Buffer
	l := NewSignInLog(slog.New(slog.NewJSONHandler(&buf, nil)), 1, 3)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l.now = func() time.Time { return now }
	const secret = "bad-token-7a6b5c"
	r := httptest.NewRequest(http.MethodGet, "/api/data/ListDataObjects?token="+secret, nil)
	r.RemoteAddr = "192.0.2.7:4321"
	for range 100 {
		l.Failed(r, "rid", "access token", true)
	}
	if n := strings.Count(buf.String(), "\n"); n != 3 {
		t.Fatalf("%d lines for 100 refusals within a second, want 3:\n%s", n, buf.String())
	}
	now = now.Add(time.Second)
	buf.Reset()
	l.Failed(r, "rid", "access token", false)
	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"msg": "sign-in refused", "credential": "access token", "reason": "missing",
		"client_addr": "192.0.2.7", "path": "/api/data/ListDataObjects", "request_id": "rid", "not_logged_before": float64(97)}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %v, want %v", k, got[k], v)
		}
	}
	if strings.Contains(buf.String(), secret) {
		t.Error("the credential was logged")
	}
}
