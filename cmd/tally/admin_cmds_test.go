package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tallyledger/tally/adapters/httpapi/apitest"
)

// runCommand executes a command tree with args and returns what it printed.
func runCommand(t *testing.T, cmd *cobra.Command, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestAdminCommands(t *testing.T) {
	env := apitest.Start(t, nil)
	// The admin credential is read from the data directory, as tally serve leaves it.
	dataDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dataDir, "admin.token"), []byte(env.AdminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &globalFlags{Server: env.URL, DataDir: dataDir}

	out, err := runCommand(t, newProductCommand(g), "create", "--name", "Desktop app")
	if err != nil || strings.TrimSpace(out) != "1" {
		t.Fatalf("product create: %q, %v", out, err)
	}
	out, err = runCommand(t, newProductCommand(g), "list")
	if err != nil || !strings.Contains(out, "Desktop app") || !strings.HasPrefix(out, "ID") {
		t.Fatalf("product list: %q, %v", out, err)
	}

	out, err = runCommand(t, newKeyCommand(g), "create", "--product", "1")
	key := strings.TrimSpace(out)
	if err != nil || len(key) != 23 {
		t.Fatalf("key create: %q, %v", out, err)
	}
	out, err = runCommand(t, newKeyCommand(g), "list", "--product", "1")
	if err != nil || !strings.Contains(out, key) {
		t.Fatalf("key list: %q, %v", out, err)
	}
	if _, err = runCommand(t, newKeyCommand(g), "create", "--product", "7"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("key of an unknown product: %v", err)
	}

	out, err = runCommand(t, newTokenCommand(g), "create", "--permissions", "IncrementIntValue, listdataobjects",
		"--product-lock", "1", "--key-lock", "-1", "--feature-lock", "1", "--name", "app")
	secret := strings.TrimSpace(out)
	if err != nil || secret == "" || strings.Contains(secret, "\n") {
		t.Fatalf("token create: %q, %v", out, err)
	}
	tok, err := env.Ledger.Authenticate(context.Background(), secret)
	if err != nil || tok.Name != "app" || tok.ProductLock != 1 || tok.KeyLock != -1 || tok.FeatureLock != 1 || len(tok.Methods) != 2 {
		t.Fatalf("created token %+v, %v", tok, err)
	}
	allOut, err := runCommand(t, newTokenCommand(g), "create", "--permissions", "all", "--product-lock", "0", "--key-lock", "0", "--feature-lock", "0")
	if err != nil {
		t.Fatal(err)
	}
	if all, err := env.Ledger.Authenticate(context.Background(), strings.TrimSpace(allOut)); err != nil || len(all.Methods) != 7 {
		t.Fatalf("token with all permissions: %+v, %v", all, err)
	}

	out, err = runCommand(t, newTokenCommand(g), "list")
	if err != nil || !strings.Contains(out, tok.ID.String()) || strings.Contains(out, secret) || !strings.Contains(out, "IncrementIntValue,ListDataObjects") {
		t.Fatalf("token list: %q, %v", out, err)
	}
	out, err = runCommand(t, newTokenCommand(g), "revoke", tok.ID.String())
	if err != nil || !strings.Contains(out, tok.ID.String()) {
		t.Fatalf("token revoke: %q, %v", out, err)
	}
	if _, err := env.Ledger.Authenticate(context.Background(), secret); err == nil {
		t.Fatal("a revoked token still authenticates")
	}

	refusals := []struct {
		name string
		cmd  *cobra.Command
		args []string
		want string
	}{
		{"unknown permission", newTokenCommand(g), []string{"create", "--permissions", "Frobnicate", "--product-lock", "0", "--key-lock", "0", "--feature-lock", "0"}, "unknown method"},
		{"no permission", newTokenCommand(g), []string{"create", "--permissions", ",", "--product-lock", "0", "--key-lock", "0", "--feature-lock", "0"}, "at least one method"},
		{"locks must be given", newTokenCommand(g), []string{"create", "--permissions", "all"}, "required flag"},
		{"product name required", newProductCommand(g), []string{"create"}, "required flag"},
		{"malformed token id", newTokenCommand(g), []string{"revoke", "x"}, "token id"},
		{"wrong admin token", newProductCommand(&globalFlags{Server: env.URL, AdminToken: "wrong"}), []string{"list"}, "401"},
		{"no admin token", newProductCommand(&globalFlags{Server: env.URL, DataDir: t.TempDir()}), []string{"list"}, "no admin token"},
	}
	for _, r := range refusals {
		t.Run(r.name, func(t *testing.T) {
			_, err := runCommand(t, r.cmd, r.args...)
			if err == nil || !strings.Contains(err.Error(), r.want) {
				t.Fatalf("got %v, want an error with %q", err, r.want)
			}
		})
	}
}

// TestServerDefault: the client commands reach --server's default, else TALLY_SERVER, else the
// --server of the command line, through the real command tree.
func TestServerDefault(t *testing.T) {
	g := &globalFlags{}
	g.register(pflag.NewFlagSet("tally", pflag.ContinueOnError))
	if g.Server != "http://127.0.0.1:8081" {
		t.Fatalf("default server %q", g.Server)
	}
	asked := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked <- r.URL.Path
		_, _ = w.Write([]byte(`{"products":[]}`))
	}))
	t.Cleanup(srv.Close)
	t.Setenv("TALLY_SERVER", srv.URL)
	if _, err := run(t, "product", "list", "--admin-token", "t"); err != nil || <-asked != "/admin/v1/products" {
		t.Fatalf("server from the environment: %v", err)
	}
	t.Setenv("TALLY_SERVER", "http://127.0.0.1:1") // nothing listens there
	if _, err := run(t, "--server", srv.URL, "product", "list", "--admin-token", "t"); err != nil || <-asked != "/admin/v1/products" {
		t.Fatalf("server from the flag: %v", err)
	}
}

func TestAdminTokenPrecedence(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "admin.token"), []byte(" from-file \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := (&globalFlags{DataDir: dir}).adminToken(); err != nil || tok != "from-file" {
		t.Fatalf("token from the data directory: %q, %v", tok, err)
	}
	if tok, err := (&globalFlags{DataDir: dir, AdminToken: "from-flag"}).adminToken(); err != nil || tok != "from-flag" {
		t.Fatalf("token from the flag: %q, %v", tok, err)
	}
}

func TestServeRefusesAnUnusableAdminTokenFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(file, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := loadOrCreateAdminToken(&globalFlags{DataDir: dir})
	if err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Fatalf("an empty admin token file: got %v, want an error saying it is empty", err)
	}
	if b, _ := os.ReadFile(file); string(b) != " \n" {
		t.Fatalf("the admin token file was changed to %q", b)
	}
	fresh := t.TempDir()
	tok, err := loadOrCreateAdminToken(&globalFlags{DataDir: fresh})
	if err != nil || tok == "" {
		t.Fatalf("no admin token file: got %q, %v, want a fresh token", tok, err)
	}
	if again, err := (&globalFlags{DataDir: fresh}).adminToken(); err != nil || again != tok {
		t.Fatalf("the fresh token reads back as %q, %v, want %q", again, err, tok)
	}
}
