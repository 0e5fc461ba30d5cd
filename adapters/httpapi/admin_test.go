package httpapi_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
)

func TestAdminAPI(t *testing.T) {
	env := apitest.Start(t, nil)
	ctx := context.Background()
	c := env.Admin

	p, err := c.CreateProduct(ctx, "Desktop app")
	if err != nil || p.ID != 1 || p.Name != "Desktop app" || p.Created.IsZero() {
		t.Fatalf("create product: %+v, %v", p, err)
	}
	p2, _ := c.CreateProduct(ctx, "Other")
	products, err := c.ListProducts(ctx)
	if err != nil || len(products) != 2 || products[0].ID != p.ID || products[1].ID != p2.ID {
		t.Fatalf("list products: %+v, %v", products, err)
	}
	k, err := c.CreateKey(ctx, p.ID)
	if err != nil || k.ProductID != p.ID || len(k.Key) != 23 {
		t.Fatalf("create key: %+v, %v", k, err)
	}
	if _, err := c.CreateKey(ctx, p2.ID); err != nil {
		t.Fatal(err)
	}
	keys, err := c.ListKeys(ctx, p.ID)
	if err != nil || len(keys) != 1 || keys[0].Key != k.Key {
		t.Fatalf("list keys of a product: %+v, %v", keys, err)
	}
	if all, _ := c.ListKeys(ctx, 0); len(all) != 2 {
		t.Fatalf("list every key: %+v", all)
	}

	tok, err := c.CreateToken(ctx, httpapi.CreateTokenRequest{
		Name: "app", Methods: []string{"incrementintvalue", "ListDataObjects", "IncrementIntValue"},
		ProductLock: p.ID, KeyLock: -1, FeatureLock: 1,
	})
	if err != nil || tok.Secret == "" || tok.Name != "app" || tok.ProductLock != p.ID || tok.KeyLock != -1 || tok.FeatureLock != 1 ||
		strings.Join(tok.Methods, ",") != "IncrementIntValue,ListDataObjects" {
		t.Fatalf("create token: %+v, %v", tok, err)
	}
	// The secret works on the data-object API, within its permissions.
	pid := strconv.FormatInt(p.ID, 10)
	ok(t, env.Call("ListDataObjectsToKey", vals("token", tok.Secret, "ProductId", pid, "Key", k.Key)))
	refused(t, env.Call("AddDataObjectToKey", vals("token", tok.Secret, "ProductId", pid, "Key", k.Key)), 403, "Access denied.")

	// Listing never shows a secret or its hash.
	r := env.Send(adminRequest(t, env, http.MethodGet, "/admin/v1/tokens", ""))
	if r.Status != 200 || bytes.Contains(r.Body, []byte(tok.Secret)) || bytes.Contains(bytes.ToLower(r.Body), []byte("secret")) ||
		bytes.Contains(bytes.ToLower(r.Body), []byte("hash")) || !bytes.Contains(r.Body, []byte(tok.ID.String())) {
		t.Fatalf("token list %d %s", r.Status, r.Body)
	}
	tokens, err := c.ListTokens(ctx)
	if err != nil || len(tokens) != 1 || tokens[0].ID != tok.ID || tokens[0].Revoked {
		t.Fatalf("list tokens: %+v, %v", tokens, err)
	}

	revoked, err := c.RevokeToken(ctx, tok.ID)
	if err != nil || !revoked.Revoked || revoked.ID != tok.ID {
		t.Fatalf("revoke: %+v, %v", revoked, err)
	}
	refused(t, env.Call("ListDataObjectsToKey", vals("token", tok.Secret, "ProductId", pid, "Key", k.Key)), 401, "Unable to authenticate.")
	if again, err := c.RevokeToken(ctx, tok.ID); err != nil || !again.Revoked {
		t.Fatalf("revoking twice: %+v, %v", again, err)
	}

	// Admin calls are recorded as the admin's.
	tokenEvents, err := env.Store.ReadStream(ctx, domain.TokenStream(tok.ID), 0, 0, 10)
	if err != nil || len(tokenEvents) != 2 || !bytes.Contains(tokenEvents[1].Metadata, []byte(`"admin":true`)) {
		t.Fatalf("token stream: %v %d", err, len(tokenEvents))
	}

	refusals := []struct {
		name   string
		call   func() error
		status int
		msg    string
	}{
		{"empty product name", func() error { _, err := c.CreateProduct(ctx, " "); return err }, 400, "invalid input"},
		{"key of an unknown product", func() error { _, err := c.CreateKey(ctx, 99); return err }, 404, "not found"},
		{"key without a product", func() error { _, err := c.CreateKey(ctx, 0); return err }, 400, "productId is required"},
		{"unknown method", func() error {
			_, err := c.CreateToken(ctx, httpapi.CreateTokenRequest{Methods: []string{"Frobnicate"}})
			return err
		}, 400, "unknown method"},
		{"no method", func() error { _, err := c.CreateToken(ctx, httpapi.CreateTokenRequest{}); return err }, 400, "at least one method"},
		{"product lock on an unknown product", func() error {
			_, err := c.CreateToken(ctx, httpapi.CreateTokenRequest{Methods: []string{"AddDataObject"}, ProductLock: 99})
			return err
		}, 404, "not found"},
		{"revoke an unknown token", func() error { _, err := c.RevokeToken(ctx, uuid.New()); return err }, 404, "not found"},
		{"wrong admin token", func() error {
			_, err := httpapi.NewAdminClient(env.URL, "wrong", env.HTTP).ListProducts(ctx)
			return err
		}, 401, "admin credential"},
		{"no admin token", func() error {
			_, err := httpapi.NewAdminClient(env.URL, "", env.HTTP).ListProducts(ctx)
			return err
		}, 401, "admin credential"},
		{"a data-object token is not an admin token", func() error {
			_, err := httpapi.NewAdminClient(env.URL, tok.Secret, env.HTTP).ListProducts(ctx)
			return err
		}, 401, "admin credential"},
	}
	for _, rf := range refusals {
		t.Run(rf.name, func(t *testing.T) {
			var ae *httpapi.AdminError
			err := rf.call()
			if !errors.As(err, &ae) || ae.Status != rf.status || !strings.Contains(ae.Message, rf.msg) {
				t.Fatalf("got %v; want HTTP %d with %q", err, rf.status, rf.msg)
			}
		})
	}

	raw := []struct {
		name, method, path, body string
		status                   int
	}{
		{"malformed JSON", http.MethodPost, "/admin/v1/products", `{"name":`, 400},
		{"unknown field", http.MethodPost, "/admin/v1/products", `{"nmae":"x"}`, 400},
		{"trailing data", http.MethodPost, "/admin/v1/products", `{"name":"x"} {}`, 400},
		{"malformed token id", http.MethodPost, "/admin/v1/tokens/not-a-uuid/revoke", "", 400},
		{"malformed productId", http.MethodGet, "/admin/v1/keys?productId=x", "", 400},
		{"productId in any case", http.MethodGet, "/admin/v1/keys?PRODUCTID=" + pid, "", 200},
		{"path in any case, trailing slash", http.MethodGet, "/Admin/V1/Products/", "", 200},
		{"wrong HTTP method", http.MethodDelete, "/admin/v1/products", "", 405},
		{"unknown path", http.MethodGet, "/admin/v1/nothing", "", 404},
	}
	for _, rc := range raw {
		t.Run(rc.name, func(t *testing.T) {
			r := env.Send(adminRequest(t, env, rc.method, rc.path, rc.body))
			if r.Status != rc.status || (r.Status >= 400 && !bytes.HasPrefix(r.Body, []byte(`{"error":"`))) {
				t.Fatalf("%s %s: %d %s", rc.method, rc.path, r.Status, r.Body)
			}
		})
	}
}

func adminRequest(t *testing.T, env *apitest.Env, method, path, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, env.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+env.AdminToken)
	req.Header.Set("Content-Type", "application/json")
	return req
}

func TestOperationalEndpoints(t *testing.T) {
	var notReady atomic.Pointer[error]
	env := apitest.StartWith(t, apitest.Options{Ready: func() error {
		if e := notReady.Load(); e != nil {
			return *e
		}
		return nil
	}})
	if r := env.Get("/healthz", nil); r.Status != 200 {
		t.Fatalf("healthz %d", r.Status)
	}
	if r := env.Get("/readyz", nil); r.Status != 200 {
		t.Fatalf("readyz %d %s", r.Status, r.Body)
	}
	reason := errors.New("catching up with the event store")
	notReady.Store(&reason)
	if r := env.Get("/readyz", nil); r.Status != 503 || !bytes.Contains(r.Body, []byte("catching up with the event store")) {
		t.Fatalf("readyz when not ready: %d %s", r.Status, r.Body)
	}
	if r := env.Get("/healthz", nil); r.Status != 200 {
		t.Fatalf("healthz when not ready %d", r.Status)
	}
	// Until ready, the APIs answer "try again" rather than decide on a projection that is
	// still catching up.
	refused(t, env.Call("ListDataObjects", vals("token", "any")), 503, "The service is temporarily unavailable. Please try again.")
	if _, err := env.Admin.ListProducts(context.Background()); err == nil || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("admin call when not ready: %v", err)
	}
	notReady.Store(nil)

	// Metrics are labelled by method name and result, never by raw path or token.
	p := env.Product("P")
	k := env.Key(p.ID)
	secret := env.AllMethodsToken()
	owner := vals("token", secret, "ProductId", strconv.FormatInt(p.ID, 10), "Key", k.Key)
	ok(t, env.Post("/api//data/AddDataObjectToKey/", with(owner, "Name", "n")))
	ok(t, env.Post("/API/data/addDataObjectToKey", with(owner, "Name", "n")))
	refused(t, env.Call("AddDataObjectToKey", with(owner, "token", "bad")), 401, "Unable to authenticate.")
	env.Get("/no/such/path", nil)
	r := env.Get("/metrics", nil)
	if r.Status != 200 {
		t.Fatalf("metrics %d", r.Status)
	}
	for _, want := range []string{
		`tally_http_requests_total{method="AddDataObjectToKey",result="ok"} 2`,
		`tally_http_requests_total{method="AddDataObjectToKey",result="unauthenticated"} 1`,
		`tally_http_requests_total{method="unknown",result="not_found"} 1`,
		`tally_http_requests_total{method="readyz",result="unavailable"} 1`,
		`tally_http_request_duration_seconds_count{method="AddDataObjectToKey",result="ok"} 2`,
	} {
		if !bytes.Contains(r.Body, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
	for _, leak := range []string{secret, "/api", "addDataObjectToKey", "/no/such"} {
		if bytes.Contains(r.Body, []byte(leak)) {
			t.Errorf("metrics contain %q", leak)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	if _, err := httpapi.New(httpapi.Config{}); err == nil {
		t.Fatal("New accepted a nil ledger")
	}
	env := apitest.Start(t, nil)
	reg := prometheus.NewRegistry()
	if _, err := httpapi.New(httpapi.Config{Ledger: env.Ledger, Registry: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := httpapi.New(httpapi.Config{Ledger: env.Ledger, Registry: reg}); err == nil {
		t.Fatal("New registered its metrics twice on one registry")
	}
}

func TestAdminDisabledWithoutToken(t *testing.T) {
	env := apitest.Start(t, nil)
	h, err := httpapi.New(httpapi.Config{Ledger: env.Ledger})
	if err != nil {
		t.Fatal(err)
	}
	for _, cred := range []string{"", "Bearer ", "Bearer x"} {
		req, _ := http.NewRequest(http.MethodGet, "/admin/v1/products", nil)
		req.Header.Set("Authorization", cred)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 401 {
			t.Fatalf("credential %q: status %d", cred, rec.Code)
		}
	}
}

func TestBodyLimit(t *testing.T) {
	env := apitest.StartWith(t, apitest.Options{MaxBodyBytes: 1024})
	p := env.Product("P")
	k := env.Key(p.ID)
	secret := env.AllMethodsToken()
	owner := vals("token", secret, "ProductId", strconv.FormatInt(p.ID, 10), "Key", k.Key)
	ok(t, env.Call("AddDataObjectToKey", with(owner, "Name", "n", "StringValue", strings.Repeat("s", 900))))
	refused(t, env.Call("AddDataObjectToKey", with(owner, "Name", "n", "StringValue", strings.Repeat("s", 2000))), 413, domain.ErrRequestTooLarge.Message)
	refused(t, env.Call("UploadValuesToKey", with(owner, "Data", strings.Repeat("A", 4000))), 413, domain.ErrRequestTooLarge.Message)

	r := env.Send(adminRequest(t, env, http.MethodPost, "/admin/v1/products", `{"name":"`+strings.Repeat("x", 2000)+`"}`))
	if r.Status != 413 {
		t.Fatalf("admin body over the limit: %d %s", r.Status, r.Body)
	}
	if ps := env.Ledger.Products(); len(ps) != 1 {
		t.Fatalf("%d products", len(ps))
	}
}

// failingLedger is the real ledger whose SetIntValue fails as nothing foreseen does.
type failingLedger struct {
	*ledger.Service
}

func (failingLedger) SetIntValue(context.Context, ledger.Caller, ledger.SetIntValue) error {
	return errors.New("disk on fire")
}

func TestUnforeseenAndUnavailable(t *testing.T) {
	env := apitest.Start(t, nil)
	p := env.Product("P")
	k := env.Key(p.ID)
	secret := env.AllMethodsToken()
	owner := vals("token", secret, "ProductId", strconv.FormatInt(p.ID, 10), "Key", k.Key)
	id := ok(t, env.Call("AddDataObjectToKey", with(owner, "Name", "n"))).ID

	var logs bytes.Buffer
	h, err := httpapi.New(httpapi.Config{Ledger: failingLedger{env.Ledger}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, "/api/data/SetIntValueToKey", strings.NewReader(with(owner, "Id", strconv.FormatInt(id, 10), "IntValue", "3").Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Request-ID", "req-500")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 500 || rec.Body.String() != `{"result":1,"message":"An internal error occurred."}` {
		t.Fatalf("unforeseen failure: %d %s", rec.Code, rec.Body.String())
	}
	if !strings.Contains(logs.String(), "disk on fire") || !strings.Contains(logs.String(), "req-500") {
		t.Fatalf("the cause was not logged with the request id: %s", logs.String())
	}

	// With the store gone, a change is refused as unavailable.
	env.CloseStore()
	refused(t, env.Call("IncrementIntValueToKey", with(owner, "Id", strconv.FormatInt(id, 10), "IntValue", "1")), 503, domain.ErrServiceUnavailable.Message)
	// The admin API answers the same refusal with the same status.
	var ae *httpapi.AdminError
	if _, err := env.Admin.CreateProduct(context.Background(), "Q"); !errors.As(err, &ae) || ae.Status != 503 || ae.Message != domain.ErrServiceUnavailable.Message {
		t.Fatalf("admin call with the store gone: %v", err)
	}
}

// TestLargeBodiesAreReadAFewAtATime holds the one turn for large bodies with a body that is
// still arriving: small requests go through meanwhile, a second large one waits for the turn.
func TestLargeBodiesAreReadAFewAtATime(t *testing.T) {
	env := apitest.StartWith(t, apitest.Options{MaxLargeBodies: 1})
	url := env.URL + "/api/data/ListDataObjects"

	slowBody, writer := io.Pipe()
	first := make(chan apitest.Response, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, url, slowBody) // unknown length: large
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		first <- env.Send(req)
	}()
	if _, err := writer.Write([]byte("token=nope&")); err != nil {
		t.Fatal(err)
	}

	second := make(chan apitest.Response, 1)
	go func() {
		body := "token=nope&pad=" + strings.Repeat("x", 2<<20)
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		second <- env.Send(req)
	}()
	refused(t, env.Call("ListDataObjects", vals("token", "nope")), 401, "Unable to authenticate.")
	select {
	case r := <-second:
		t.Fatalf("a second large body was read while the first held the only turn: %d %s", r.Status, r.Body)
	default:
	}
	writer.Close()
	refused(t, <-first, 401, "Unable to authenticate.")
	refused(t, <-second, 401, "Unable to authenticate.")
}
