package main

import (
	"encoding/base64"
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyledger/tally/adapters/auditapi"
	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/domain/state"
)

// TestIntegrityCommands sets a product to refuse on tampering with `tally product set`, makes
// a real tampered upload, lists the anomaly with `tally anomalies list` (table and json),
// acknowledges it with `tally anomalies acknowledge`, and reads the metrics; bad input is
// refused and changes nothing.
func TestIntegrityCommands(t *testing.T) {
	key, err := usagelog.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keys, err := usagelog.NewKeyRing(key)
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
	token := env.AllMethodsToken()
	call := func(method string, kv ...string) apitest.Result {
		v := url.Values{"token": {token}, "ProductId": {strconv.FormatInt(p.ID, 10)}, "Key": {k.Key}}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return env.Call(method, v).Result(t)
	}
	obj := call("AddDataObjectToKey", "Name", "a", "IntValue", "0").ID

	// Bad input first: nothing changes.
	for _, args := range [][]string{
		{"set", strconv.FormatInt(p.ID, 10), "--on-tamper", "ignore"},
		{"set", "99", "--on-tamper", "refuse"},
		{"set", "x", "--on-tamper", "refuse"},
	} {
		if _, err := runCommand(t, newProductCommand(g), args...); err == nil {
			t.Fatalf("product %v: no error", args)
		}
	}
	if out, err := runCommand(t, newProductCommand(g), "list"); err != nil || !strings.Contains(out, "apply (default)") {
		t.Fatalf("product list before set: %q, %v", out, err)
	}
	if out, err := runCommand(t, newProductCommand(g), "set", strconv.FormatInt(p.ID, 10), "--on-tamper", "refuse"); err != nil || !strings.Contains(out, "on tamper refuse") {
		t.Fatalf("product set: %q, %v", out, err)
	}
	if out, err := runCommand(t, newProductCommand(g), "list"); err != nil || !strings.Contains(out, "refuse") || strings.Contains(out, "default") {
		t.Fatalf("product list after set: %q, %v", out, err)
	}

	// v1 = +10, +50; uploaded with the IV of +50 modified (+51), then the original arrives.
	var data []byte
	for i, amount := range []int64{10, 50} {
		if data, err = usagelog.Record(data, keys.Public(), obj, amount, 1767225600+int64(i), false); err != nil {
			t.Fatal(err)
		}
	}
	tampered := slices.Clone(data)
	tampered[5] ^= 0x01
	if r := call("UploadValuesToKey", "Data", base64.StdEncoding.EncodeToString(tampered)); r.Result != 0 {
		t.Fatalf("tampered upload refused: %+v", r)
	}
	if r := call("UploadValuesToKey", "Data", base64.StdEncoding.EncodeToString(data)); r.Result != 1 || r.Msg() != domain.ErrIntegrityRefused.Message {
		t.Fatalf("original: %+v, want the integrity refusal", r)
	}

	out, err := runCommand(t, newAnomaliesCommand(g), "list")
	if err != nil || !strings.HasPrefix(out, "ID") || !strings.Contains(out, "entry-bytes,layer-bytes") || !strings.Contains(out, "refuse") {
		t.Fatalf("anomalies list: %q, %v", out, err)
	}
	out, err = runCommand(t, newAnomaliesCommand(g), "list", "--key", k.Key, "--format", "json")
	var listed []state.IntegrityAnomaly
	if err != nil || json.Unmarshal([]byte(out), &listed) != nil || len(listed) != 1 {
		t.Fatalf("anomalies list json: %q, %v", out, err)
	}
	a := listed[0]
	if a.AppliedDigest == a.SeenDigest || len(a.AppliedDigest) != 64 || a.AppliedLayerDigest == "" || a.Acknowledged {
		t.Fatalf("listed anomaly %+v", a)
	}
	if out, err := runCommand(t, newAnomaliesCommand(g), "list", "--product", strconv.FormatInt(p.ID, 10), "--format", "json"); err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("the product's own anomalies: %q, %v", out, err)
	}

	// tally uploads list shows the anomaly among the key's upload records, with both digests.
	out, err = runCommand(t, newUploadsCommand(g), "list", "--state", "anomaly", "--key", k.Key)
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(out, a.AnomalyID.String()) ||
		!strings.Contains(out, "applied digest "+a.AppliedDigest[:12]) || !strings.Contains(out, "seen "+a.SeenDigest[:12]) ||
		!strings.Contains(out, "NOT ACKNOWLEDGED") {
		t.Fatalf("uploads list --state anomaly: %q, %v", out, err)
	}

	// tally history (through the audit API) notes the anomaly on the entry of its layer.
	audit, err := auditapi.New(auditapi.Config{Store: env.Store, Ledger: env.Ledger, AdminToken: env.AdminToken})
	if err != nil {
		t.Fatal(err)
	}
	auditSrv := httptest.NewServer(audit)
	defer auditSrv.Close()
	out, err = runCommand(t, newHistoryCommand(&globalFlags{Server: auditSrv.URL, DataDir: dataDir}), "--object", strconv.FormatInt(obj, 10))
	if err != nil || strings.Count(out, "integrity anomaly "+a.AnomalyID.String()) != 1 {
		t.Fatalf("history: %v\n%s", err, out)
	}

	reg := prometheus.NewRegistry()
	registerIntegrityMetrics(reg, env.Ledger)
	if v := gathered(t, reg, "tally_upload_integrity_anomalies_total"); v != 1 {
		t.Fatalf("anomalies total %v, want 1", v)
	}
	if v := gathered(t, reg, "tally_upload_integrity_anomalies_unacknowledged"); v != 1 {
		t.Fatalf("unacknowledged %v, want 1", v)
	}

	for _, args := range [][]string{
		{"acknowledge", a.AnomalyID.String(), "--reason", " "},
		{"acknowledge", "not-a-uuid", "--reason", "x"},
		{"acknowledge", "6f1c1a52-8d1e-4b39-9a57-1e0f1d6c2b7e", "--reason", "x"},
	} {
		if _, err := runCommand(t, newAnomaliesCommand(g), args...); err == nil {
			t.Fatalf("anomalies %v: no error", args)
		}
	}
	if out, err := runCommand(t, newAnomaliesCommand(g), "acknowledge", a.AnomalyID.String(), "--reason", "restored from backup"); err != nil || !strings.Contains(out, "restored from backup") {
		t.Fatalf("acknowledge: %q, %v", out, err)
	}
	if r := call("UploadValuesToKey", "Data", base64.StdEncoding.EncodeToString(data)); r.Result != 0 {
		t.Fatalf("original after the acknowledgement: %+v", r)
	}
	out, err = runCommand(t, newUploadsCommand(g), "list", "--state", "anomaly", "--format", "json")
	var recs []ledger.UploadRecord
	if err != nil || json.Unmarshal([]byte(out), &recs) != nil || len(recs) != 1 || recs[0].ID != a.AnomalyID ||
		!recs[0].Acknowledged || recs[0].Reason != "restored from backup" || recs[0].Anomaly == nil || recs[0].Anomaly.SeenDigest != a.SeenDigest {
		t.Fatalf("uploads list --state anomaly --format json after the acknowledgement: %q, %v", out, err)
	}
	if v := gathered(t, reg, "tally_upload_integrity_anomalies_unacknowledged"); v != 0 {
		t.Fatalf("unacknowledged %v, want 0", v)
	}
	if o, _ := env.Object(obj); o.IntValue != 61 {
		t.Fatalf("value %d, want 61 (the tampered +51 counted once, the original never again)", o.IntValue)
	}
}

// gathered reads the value of a single-series counter or gauge from a registry (-1: absent).
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			return m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return -1
}
