package main

import (
	"encoding/base64"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain"
)

// TestServeExportsStoreAndUploadMetrics runs the real composition root, uploads a log of 7
// entries written by the codec, and checks what tally serve's /metrics says: 7 RSA operations
// and 7 entries applied, a store whose event count is the projection's position, no lag once
// the calls are answered, and a store size that is at least its database file's.
func TestServeExportsStoreAndUploadMetrics(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	cfg := serveConfig{Addr: "127.0.0.1:0", Store: "embedded", MaxBodyBytes: 8 << 20, UploadLease: 30 * time.Second}
	srv, stop := startServe(t, &globalFlags{DataDir: dataDir}, cfg, &syncBuffer{})
	base, adminBase := srv.Public, srv.Admin
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	ctx := t.Context()
	adminToken, err := (&globalFlags{DataDir: dataDir}).adminToken()
	if err != nil {
		t.Fatal(err)
	}
	admin := httpapi.NewAdminClient(adminBase, adminToken, nil)
	p, err := admin.CreateProduct(ctx, "P")
	if err != nil {
		t.Fatal(err)
	}
	k, err := admin.CreateKey(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := admin.CreateToken(ctx, httpapi.CreateTokenRequest{Name: "u", Methods: []string{string(domain.MethodAddDataObject), string(domain.MethodIncrementIntValue)}})
	if err != nil {
		t.Fatal(err)
	}
	owner := with(nil, "token", tok.Secret, "ProductId", strconv.FormatInt(p.ID, 10), "Key", k.Key)
	added := call(t, base, "AddDataObjectToKey", with(owner, "Name", "n"))
	id := int64(added["id"].(float64))

	pem, err := os.ReadFile(filepath.Join(dataDir, usagelog.CurrentKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	key, err := usagelog.ParsePrivateKeyPEM(pem)
	if err != nil {
		t.Fatal(err)
	}
	before := apitest.Metrics(t, http.DefaultClient, adminBase+"/metrics")
	var data []byte
	for i := range 7 {
		if data, err = usagelog.Record(data, &key.PublicKey, id, 1, 1767225600+int64(i)*60, false); err != nil {
			t.Fatal(err)
		}
	}
	if res := call(t, base, "UploadValuesToKey", with(owner, "Data", base64.StdEncoding.EncodeToString(data))); res["result"] != 0.0 || res["applied"] != 7.0 {
		t.Fatalf("upload: %v", res)
	}
	after := apitest.Metrics(t, http.DefaultClient, adminBase+"/metrics")

	for key, want := range map[string]float64{
		"tally_rsa_operations_total":                         7,
		"tally_upload_entries_applied_total":                 7,
		`tally_uploads_total{outcome="committed",reason=""}`: 1,
	} {
		if got := after[key] - before[key]; got != want {
			t.Errorf("%s moved by %v, want %v", key, got, want)
		}
	}
	events, position := after["tally_store_events"], after["tally_projection_position"]
	// product, key, token, object, and the upload: prepared, 7 increments, committed.
	if events < 13 || events != position {
		t.Errorf("tally_store_events %v, tally_projection_position %v: want equal, at least 13", events, position)
	}
	if lag, age := after["tally_projection_lag_events"], after["tally_projection_lag_seconds"]; lag != 0 || age != 0 || after["tally_projection_lag_read_errors"] != 0 {
		t.Errorf("projection lag %v events, %v s (read errors %v) after every call was answered", lag, age, after["tally_projection_lag_read_errors"])
	}
	fi, err := os.Stat(filepath.Join(dataDir, "events", "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	if size := after["tally_store_size_bytes"]; size < float64(fi.Size()) || size == 0 {
		t.Errorf("tally_store_size_bytes %v, the database file alone is %d bytes", size, fi.Size())
	}
}

// TestServeRefusesABodyBudgetBelowTheBodyLimit: a body reserves at most the budget, so a
// budget smaller than the largest body would not bound memory; serve says so at start.
func TestServeRefusesABodyBudgetBelowTheBodyLimit(t *testing.T) {
	cfg := serveConfig{Addr: "127.0.0.1:0", Store: "embedded", MaxBodyBytes: 64 << 20, MaxPendingBodyBytes: 32 << 20, UploadLease: 30 * time.Second}
	err := serve(t.Context(), slog.New(slog.DiscardHandler), &globalFlags{DataDir: t.TempDir()}, cfg)
	if err == nil || !strings.Contains(err.Error(), "--max-pending-body-bytes 33554432: at least --max-body-bytes (67108864)") {
		t.Fatalf("serve with a 32 MiB budget and 64 MiB bodies: %v", err)
	}
}
