package main

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestViewerCommands runs tally serve and the viewer commands against it: a credential created
// by the CLI (secret printed once) signs in to the audit API as a read-only viewer, is listed
// without its secret, and is refused once revoked. The console's pages are served beside the
// admin API.
func TestViewerCommands(t *testing.T) {
	dataDir := privateTempDir(t) // serve refuses a data directory others may read
	g := &globalFlags{DataDir: dataDir}
	urls, stop := startServe(t, g, serveConfig{Addr: "127.0.0.1:0", Store: "embedded", MaxBodyBytes: 1 << 20, UploadLease: time.Minute}, &syncBuffer{})
	base := urls.Admin // the admin API, the audit API and the console
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	cli := func(args ...string) (string, string, error) {
		t.Helper()
		root := newRootCommand()
		var out, errOut bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&errOut)
		root.SetArgs(append([]string{"--server", base, "--data-dir", dataDir}, args...))
		err := root.Execute()
		return strings.TrimSpace(out.String()), errOut.String(), err
	}
	secret, note, err := cli("viewer", "create", "--name", "billing", "--valid-for", "24h")
	if err != nil || !strings.HasPrefix(secret, "tv_") || !strings.Contains(note, "shown only now") {
		t.Fatalf("viewer create: %q %q %v", secret, note, err)
	}
	whoami := func() (int, string) {
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/whoami", nil)
		req.Header.Set("Authorization", "Bearer "+secret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := whoami(); code != http.StatusOK || !strings.Contains(body, `"role":"viewer"`) {
		t.Fatalf("whoami as the viewer: %d %s", code, body)
	}
	list, _, err := cli("viewer", "list")
	if err != nil || !strings.Contains(list, "billing") || strings.Contains(list, secret) {
		t.Fatalf("viewer list: %q %v", list, err)
	}
	id := strings.Fields(strings.Split(list, "\n")[1])[0]
	if out, _, err := cli("viewer", "revoke", id); err != nil || !strings.Contains(out, "revoked "+id) {
		t.Fatalf("viewer revoke: %q %v", out, err)
	}
	if code, body := whoami(); code != http.StatusUnauthorized || !strings.Contains(body, "revoked") {
		t.Fatalf("whoami after revocation: %d %s", code, body)
	}
	if _, _, err := cli("viewer", "create"); err == nil || !strings.Contains(err.Error(), "required flag") {
		t.Errorf("viewer create without a name: %v", err)
	}
	if _, _, err := cli("viewer", "revoke", "x"); err == nil || !strings.Contains(err.Error(), "viewer id") {
		t.Errorf("viewer revoke x: %v", err)
	}

	resp, err := http.Get(base + "/console/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "Tally console") || resp.Header.Get("Content-Security-Policy") == "" {
		t.Errorf("/console/ on tally serve's admin listener: %d", resp.StatusCode)
	}
	// Not on the public listener, which customers' applications reach.
	if resp, err := http.Get(urls.Public + "/console/"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("/console/ on the public listener: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}
