package main

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
)

// TestUploadsCommands lists a refused log with `tally uploads list`, resolves it with `tally
// uploads resolve --skip-entries`, and sees the next upload of the log carry the decision out.
func TestUploadsCommands(t *testing.T) {
	rsaKey, err := usagelog.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keys, err := usagelog.NewKeyRing(rsaKey)
	if err != nil {
		t.Fatal(err)
	}
	env := apitest.StartWith(t, apitest.Options{Decoder: usagelog.NewLedgerDecoder(keys)})
	dataDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dataDir, "admin.token"), []byte(env.AdminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &globalFlags{Server: env.URL, DataDir: dataDir}
	p := env.Product("P")
	k := env.Key(p.ID)
	secret := env.AllMethodsToken()
	owner := url.Values{"token": {secret}, "ProductId": {strconv.FormatInt(p.ID, 10)}, "Key": {k.Key}}
	call := func(method string, extra ...string) apitest.Result {
		v := url.Values{}
		for name, vs := range owner {
			v[name] = vs
		}
		for i := 0; i+1 < len(extra); i += 2 {
			v.Set(extra[i], extra[i+1])
		}
		return env.Call(method, v).Result(t)
	}
	a := call("AddDataObjectToKey", "Name", "a", "IntValue", "0").ID
	var data []byte
	for _, obj := range []int64{9999, a, a} { // 9999 does not exist
		if data, err = usagelog.Record(data, keys.Public(), obj, 1, 1767225600+obj, false); err != nil {
			t.Fatal(err)
		}
	}
	log := base64.StdEncoding.EncodeToString(data)
	if r := call("UploadValuesToKey", "Data", log); r.Result != 1 || r.Msg() != domain.ErrInvalidInput.Message {
		t.Fatalf("upload: %+v", r)
	}

	// The refusal is counted in tally_uploads_total, the one metric of upload outcomes (the
	// kind of refusal there; the refusal's own reason is in the record listed below).
	if n := env.Metrics()[`tally_uploads_total{outcome="refused",reason="invalid"}`]; n != 1 {
		t.Fatalf("tally_uploads_total{outcome=\"refused\",reason=\"invalid\"} is %v, want 1", n)
	}

	out, err := runCommand(t, newUploadsCommand(g), "list", "--state", "refused", "--key", k.Key, "--format", "json")
	if err != nil {
		t.Fatal(err)
	}
	var recs []ledger.UploadRecord
	if err := json.Unmarshal([]byte(out), &recs); err != nil {
		t.Fatalf("list --format json: %v in %q", err, out)
	}
	if len(recs) != 1 || !recs[0].Open || recs[0].Offending == nil || recs[0].Offending.ObjectID != 9999 {
		t.Fatalf("refused uploads %+v", recs)
	}
	if recs[0].Reason != domain.RefusalInvalidObject {
		t.Fatalf("refusal reason %q, want %q", recs[0].Reason, domain.RefusalInvalidObject)
	}
	for _, bad := range [][]string{
		{"resolve", "--key", k.Key, "--reason", "r"},
		{"resolve", "--key", k.Key, "--reason", "r", "--in-chunks", "--skip-entries"},
		{"resolve", "--key", k.Key, "--skip-entries"},
		{"resolve", recs[0].ID.String(), "--in-chunks", "--reason", "r"},
	} {
		if _, err := runCommand(t, newUploadsCommand(g), bad...); err == nil {
			t.Fatalf("%v: no error", bad)
		}
	}
	out, err = runCommand(t, newUploadsCommand(g), "resolve", recs[0].ID.String(), "--skip-entries", "--reason", "object 9999 never existed", "--by", "bob")
	if err != nil || !strings.Contains(out, "skip-entries") || !strings.Contains(out, "bob") {
		t.Fatalf("resolve: %q, %v", out, err)
	}
	if r := call("UploadValuesToKey", "Data", log); r.Result != 0 {
		t.Fatalf("upload after the decision: %+v", r)
	}
	if v := call("ListDataObjectsToKey").DataObjects; len(v) != 1 || v[0].IntValue != 2 {
		t.Fatalf("objects after the decision: %+v", v)
	}
	out, err = runCommand(t, newUploadsCommand(g), "list", "--key", strconv.FormatInt(k.ID, 10))
	if err != nil || !strings.Contains(out, "cleared") || !strings.Contains(out, "skip-entries decided by bob") ||
		!strings.Contains(out, "1 entries skipped") || !strings.HasPrefix(out, "OWNER") {
		t.Fatalf("list: %q, %v", out, err)
	}
	if _, err := runCommand(t, newUploadsCommand(g), "list", "--format", "xml"); err == nil {
		t.Fatal("--format xml accepted")
	}
	if _, err := runCommand(t, newUploadsCommand(g), "list", "--state", "lost"); err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("--state lost: %v", err)
	}
}
