package httpapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/httpapi/apitest"
)

// TestViewerOnTheAdminAPI creates viewer credentials through the admin API and checks that a
// viewer may call every read of the admin API and is refused every change with 403 and a clear
// message (nothing changes); that its secret is shown once; that a revoked or unknown viewer
// secret is refused with 401 saying which; and that a viewer cannot manage viewers.
func TestViewerOnTheAdminAPI(t *testing.T) {
	env := apitest.Start(t, nil)
	ctx := context.Background()
	p, err := env.Admin.CreateProduct(ctx, "App")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Admin.CreateKey(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	created, err := env.Admin.CreateViewer(ctx, httpapi.CreateViewerRequest{Name: "billing"})
	if err != nil || created.Secret == "" || created.Name != "billing" {
		t.Fatalf("create viewer: %+v %v", created, err)
	}
	if _, err := env.Admin.CreateViewer(ctx, httpapi.CreateViewerRequest{Name: ""}); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("a viewer without a name: %v", err)
	}
	past := time.Now().Add(-time.Hour)
	if _, err := env.Admin.CreateViewer(ctx, httpapi.CreateViewerRequest{Name: "x", Expires: &past}); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("a viewer that expired already: %v", err)
	}

	send := func(secret, method, path, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, env.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+secret)
		resp, err := env.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	for _, path := range []string{"/admin/v1/products", "/admin/v1/keys", "/admin/v1/keys?productId=1", "/admin/v1/tokens", "/admin/v1/viewers", "/admin/v1/uploads", "/admin/v1/anomalies"} {
		code, body := send(created.Secret, http.MethodGet, path, "")
		if code != http.StatusOK {
			t.Errorf("viewer GET %s: %d %s", path, code, body)
		}
		if strings.Contains(body, created.Secret) || strings.Contains(body, `"secret"`) {
			t.Errorf("GET %s shows a secret: %s", path, body)
		}
	}
	writes := []struct{ path, body string }{
		{"/admin/v1/products", `{"name":"Sneaky"}`},
		{"/admin/v1/keys", `{"productId":1}`},
		{"/admin/v1/tokens", `{"methods":["IncrementIntValue"],"productLock":0,"keyLock":0,"featureLock":0}`},
		{"/admin/v1/tokens/7d4c2d6e-0000-4000-8000-000000000000/revoke", ``},
		{"/admin/v1/viewers", `{"name":"another"}`},
		{"/admin/v1/viewers/" + created.ID.String() + "/revoke", ``},
		{"/admin/v1/uploads/resolve", `{"key":"K","mode":"in-chunks","reason":"r"}`},
		{"/admin/v1/anomalies/7d4c2d6e-0000-4000-8000-000000000000/acknowledge", `{"reason":"r"}`},
		{"/admin/v1/products/1/settings", `{"onTamper":"refuse"}`},
	}
	for _, w := range writes {
		code, body := send(created.Secret, http.MethodPost, w.path, w.body)
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal([]byte(body), &e)
		if code != http.StatusForbidden || !strings.Contains(e.Error, "read-only") {
			t.Errorf("viewer POST %s: %d %s", w.path, code, body)
		}
	}
	if ps, _ := env.Admin.ListProducts(ctx); len(ps) != 1 {
		t.Errorf("a viewer's refused change changed the products: %+v", ps)
	}
	if ks, _ := env.Admin.ListKeys(ctx, 0); len(ks) != 1 {
		t.Errorf("a viewer's refused change changed the keys: %+v", ks)
	}
	if ts, _ := env.Admin.ListTokens(ctx); len(ts) != 0 {
		t.Errorf("a viewer's refused change made a token: %+v", ts)
	}
	vs, err := env.Admin.ListViewers(ctx)
	if err != nil || len(vs) != 1 || vs[0].Revoked {
		t.Fatalf("viewers after refused changes: %+v %v", vs, err)
	}

	// Unknown and revoked secrets: 401, saying which.
	if code, body := send("tv_not-a-viewer", http.MethodGet, "/admin/v1/products", ""); code != http.StatusUnauthorized || !strings.Contains(body, "unknown viewer credential") {
		t.Errorf("unknown viewer secret: %d %s", code, body)
	}
	if _, err := env.Admin.RevokeViewer(ctx, created.ID); err != nil {
		t.Fatal(err)
	}
	if code, body := send(created.Secret, http.MethodGet, "/admin/v1/products", ""); code != http.StatusUnauthorized || !strings.Contains(body, "revoked") {
		t.Errorf("revoked viewer: %d %s", code, body)
	}
	if code, body := send("wrong", http.MethodGet, "/admin/v1/products", ""); code != http.StatusUnauthorized || !strings.Contains(body, "admin credential missing or wrong") {
		t.Errorf("wrong admin token: %d %s", code, body)
	}
}
