package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/httpapi/openapi/openapitest"
	"github.com/tallyledger/tally/adapters/kurrentdb/kurrenttest"
	"github.com/tallyledger/tally/adapters/usagelog"
)

// served are the base URLs of a running tally serve's listeners.
type served struct {
	Public string // the Cryptolens API, /healthz, /readyz
	Admin  string // the admin API, /v1, /metrics
}

// startServe runs serve in-process and returns its listeners' base URLs once it is ready, and a
// function that stops it as SIGTERM would and returns serve's error. Both listeners listen on
// a free port of 127.0.0.1 unless cfg says otherwise.
func startServe(t testing.TB, g *globalFlags, cfg serveConfig, logs *syncBuffer) (served, func() error) {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.AdminAddr == "" {
		cfg.AdminAddr = "127.0.0.1:0"
	}
	ctx, cancel := context.WithCancel(context.Background())
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ready := make(chan served, 1)
	scheme, adminScheme := "http://", "http://"
	if cfg.TLSCert != "" {
		scheme = "https://"
	}
	if cfg.AdminTLSCert != "" {
		adminScheme = "https://"
	}
	cfg.onReady = func(public, admin string) { ready <- served{Public: scheme + public, Admin: adminScheme + admin} }
	// Every answer either listener gives, whoever the client (the CLI, a test's request), is
	// validated against the OpenAPI document, as that listener's (x-listener).
	cfg.wrapHandler = func(listener string, h http.Handler) http.Handler { return openapitest.HandlerOn(t, listener, h) }
	done := make(chan error, 1)
	go func() { done <- serve(ctx, logger, g, cfg) }()
	select {
	case urls := <-ready:
		if cfg.TLSCert == "" {
			r, err := http.Get(urls.Public + "/readyz")
			if err != nil || r.StatusCode != http.StatusOK {
				t.Fatalf("/readyz after ready: %v %v", r, err)
			}
			r.Body.Close()
		}
		return urls, func() error { cancel(); return <-done }
	case err := <-done:
		cancel()
		t.Fatalf("serve ended before it was ready: %v\n%s", err, logs.String())
	case <-time.After(time.Minute):
		cancel()
		t.Fatalf("serve not ready in a minute:\n%s", logs.String())
	}
	return served{}, nil
}

func call(t *testing.T, base, method string, params url.Values) map[string]any {
	t.Helper()
	r, err := http.PostForm(base+"/api/data/"+method, params)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(r.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestServeOnEachStore starts the real composition root on the embedded store and on KurrentDB
// (the gRPC test server), provisions through the CLI, counts through the Cryptolens API and an
// upload, restarts, and finds everything back; then, stopped, verifies, catches a tampered
// projection, replays and verifies again.
func TestServeOnEachStore(t *testing.T) {
	for _, store := range []string{"embedded", "kurrentdb"} {
		t.Run(store, func(t *testing.T) {
			dataDir := privateTempDir(t)
			g := &globalFlags{DataDir: dataDir}
			cfg := serveConfig{Addr: "127.0.0.1:0", Store: store, MaxBodyBytes: 1 << 20, UploadLease: time.Minute}
			if store == "kurrentdb" {
				server := kurrenttest.Start(t)
				cfg.KurrentURL = server.URL()
				key, err := usagelog.GenerateKey()
				if err != nil {
					t.Fatal(err)
				}
				keyPath := filepath.Join(t.TempDir(), "shared-key.pem")
				if err := usagelog.SavePrivateKeyFile(keyPath, key); err != nil {
					t.Fatal(err)
				}
				cfg.RSAKeys = []string{keyPath}
			}
			logs := &syncBuffer{}
			base, stop := startServe(t, g, cfg, logs)

			cli := func(args ...string) string {
				t.Helper()
				root := newRootCommand()
				var out bytes.Buffer
				root.SetOut(&out)
				root.SetErr(io.Discard)
				root.SetArgs(append([]string{"--server", base.Admin, "--data-dir", dataDir}, args...))
				if err := root.Execute(); err != nil {
					t.Fatalf("tally %v: %v", args, err)
				}
				return strings.TrimSpace(out.String())
			}
			product := cli("product", "create", "--name", "App")
			key := cli("key", "create", "--product", product)
			token := cli("token", "create", "--permissions", "all", "--product-lock", "0", "--key-lock", "0", "--feature-lock", "0")
			owner := url.Values{"token": {token}, "ProductId": {product}, "Key": {key}}
			add := call(t, base.Public, "AddDataObjectToKey", with(owner, "Name", "seats", "IntValue", "5"))
			if add["result"] != float64(0) {
				t.Fatalf("AddDataObjectToKey: %v", add)
			}
			id := fmt.Sprint(add["id"])
			if r := call(t, base.Public, "IncrementIntValueToKey", with(owner, "Id", id, "IntValue", "3")); r["result"] != float64(0) {
				t.Fatalf("IncrementIntValueToKey: %v", r)
			}

			// An upload of a log written for the key the server uses.
			pubPath := filepath.Join(t.TempDir(), "pub.pem")
			if store == "kurrentdb" {
				pubPath = cfg.RSAKeys[0]
			} else {
				if err := os.WriteFile(pubPath, []byte(cli("rsa", "export", "--format", "pem")+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			logPath := filepath.Join(t.TempDir(), "usage.skm")
			cli("log", "append", "--public-key", pubKeyFile(t, pubPath), "--file", logPath, "--object", id, "--amount", "4")
			raw, err := os.ReadFile(logPath)
			if err != nil {
				t.Fatal(err)
			}
			data := base64.StdEncoding.EncodeToString(raw)
			if r := call(t, base.Public, "UploadValuesToKey", with(owner, "Data", data)); r["result"] != float64(0) || r["applied"] != float64(1) {
				t.Fatalf("UploadValuesToKey: %v", r)
			}
			if err := stop(); err != nil {
				t.Fatalf("serve: %v", err)
			}

			// Restart on the same data directory (and store): everything is back.
			logs2 := &syncBuffer{}
			base, stop = startServe(t, g, cfg, logs2)
			list := call(t, base.Public, "ListDataObjectsToKey", owner)
			objs, _ := list["dataObjects"].([]any)
			if len(objs) != 1 || objs[0].(map[string]any)["intValue"] != float64(12) {
				t.Fatalf("after restart: %v", list)
			}
			if r := call(t, base.Public, "UploadValuesToKey", with(owner, "Data", data)); r["applied"] != float64(0) || r["known"] != float64(1) {
				t.Fatalf("re-upload after restart: %v", r)
			}
			// The projection resumed from the checkpoint it persisted on the way out, not from zero.
			m := regexp.MustCompile(`msg=ready position=(\d+) checkpoint=(\d+)`).FindStringSubmatch(logs2.String())
			if m == nil || m[2] == "0" || m[1] != m[2] {
				t.Fatalf("restart did not resume from the checkpoint: %q\n%s", m, logs2.String())
			}
			// At debug level the uploads' planning is logged: what the decoder found new, and
			// what was planned.
			for _, want := range []string{
				`msg="upload decoded" component=ledger request_id=`,
				`new_entries=1 reached_known_layer=false`,
				`msg="upload planned" component=ledger request_id=`,
			} {
				if !strings.Contains(logs.String(), want) {
					t.Errorf("the first run's debug log lacks %q", want)
				}
			}
			// The access log is off here (serveConfig's zero value, --access-log=false).
			if strings.Contains(logs.String()+logs2.String(), "msg=request ") {
				t.Error("the access log is off, yet requests were logged")
			}
			if !strings.Contains(logs2.String(), `new_entries=0 reached_known_layer=true`) {
				t.Errorf("the re-upload's debug log does not say it found nothing new:\n%s", logs2.String())
			}
			if strings.Contains(logs.String()+logs2.String(), token) {
				t.Fatal("a token secret appears in the logs")
			}
			if err := stop(); err != nil {
				t.Fatalf("serve: %v", err)
			}

			// With the server stopped, replay and verify work on the same store and data
			// directory, on KurrentDB as on the embedded store.
			storeArgs := []string{"--store", store}
			if store == "kurrentdb" {
				storeArgs = append(storeArgs, "--kurrentdb-url", cfg.KurrentURL)
			}
			offline := func(args ...string) (string, error) {
				root := newRootCommand()
				var out bytes.Buffer
				root.SetOut(&out)
				root.SetErr(&out)
				root.SetArgs(append(append([]string{"--data-dir", dataDir}, args...), storeArgs...))
				err := root.Execute()
				return out.String(), err
			}
			if out, err := offline("verify"); err != nil {
				t.Fatalf("verify on a healthy store: %v\n%s", err, out)
			}
			snapshot := filepath.Join(dataDir, "readmodels/state.db")
			b, err := os.ReadFile(snapshot)
			if err != nil {
				t.Fatal(err)
			}
			tampered := strings.Replace(string(b), `"intValue":12`, `"intValue":13`, 1)
			if tampered == string(b) {
				t.Fatal("the snapshot does not hold the value to tamper with")
			}
			if err := os.WriteFile(snapshot, []byte(tampered), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := offline("verify"); err == nil || !strings.Contains(out, "data object "+id) {
				t.Fatalf("verify of a tampered projection: %v\n%s", err, out)
			}
			if out, err := offline("replay"); err != nil {
				t.Fatalf("replay: %v\n%s", err, out)
			}
			if out, err := offline("verify"); err != nil {
				t.Fatalf("verify after replay: %v\n%s", err, out)
			}
		})
	}
}

// pubKeyFile returns a public key file for a private or public PEM file.
func pubKeyFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "PRIVATE KEY") {
		return path
	}
	key, err := usagelog.ParsePrivateKeyPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := usagelog.PublicKeyPEM(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "pub.pem")
	if err := os.WriteFile(out, pub, 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}

func with(v url.Values, kv ...string) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = vs
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out.Set(kv[i], kv[i+1])
	}
	return out
}
