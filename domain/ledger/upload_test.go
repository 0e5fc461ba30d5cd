package ledger_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
)

// TestUploadFlagsTimestampsTooFarAhead: a layer up to ten minutes ahead of the server's clock is
// applied as it is (offline clocks drift); one further ahead is applied too, and its event
// records the anomaly (docs/uploads.md, Timestamps).
func TestUploadFlagsTimestampsTooFarAhead(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	keys := newKeyRing(t)
	svc, store := newLedger(t, func(cfg *ledger.Config) {
		cfg.Clock = func() time.Time { return now }
		cfg.Decoder = usagelog.NewLedgerDecoder(keys)
	})
	admin := ledger.Caller{Admin: true}
	p, err := svc.CreateProduct(ctx, admin, "P")
	if err != nil {
		t.Fatal(err)
	}
	k, err := svc.CreateKey(ctx, admin, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	user := ledger.Caller{Token: domain.Token{Methods: domain.AllMethods}}
	scope := ledger.Scope{KeySpecific: true, ProductID: p.ID, Key: k.Key}
	id, err := svc.AddDataObject(ctx, user, ledger.AddDataObject{Scope: scope, Name: "runs"})
	if err != nil {
		t.Fatal(err)
	}

	var data []byte
	for _, ahead := range []time.Duration{9 * time.Minute, 11 * time.Minute} {
		if data, err = usagelog.Record(data, keys.Public(), id, 1, now.Add(ahead).Unix(), false); err != nil {
			t.Fatal(err)
		}
	}
	res, err := svc.UploadValues(ctx, user, ledger.UploadValues{Scope: scope, Data: base64.StdEncoding.EncodeToString(data)})
	if err != nil || res.Applied != 2 {
		t.Fatalf("upload: %+v, %v; want both entries applied", res, err)
	}

	evs, err := store.ReadStream(ctx, domain.DataObjectStream(id), eventstore.Forwards, 1, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 {
		t.Fatalf("%d upload events, want 2", len(evs))
	}
	var anomalies []string
	for _, ev := range evs {
		var c domain.ValueChanged
		if err := json.Unmarshal(ev.Data, &c); err != nil || c.Upload == nil {
			t.Fatalf("event %s: %+v, %v", ev.Type, c, err)
		}
		anomalies = append(anomalies, c.Upload.Anomaly)
	}
	if anomalies[0] != "" || !strings.Contains(anomalies[1], "in the future") {
		t.Fatalf("anomalies %q; want none for 9 minutes ahead, \"in the future\" for 11", anomalies)
	}
}

// newKeyRing is a key ring of one fresh RSA key, for ledgers that decode real usage logs.
func newKeyRing(t *testing.T) *usagelog.KeyRing {
	t.Helper()
	key, err := usagelog.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keys, err := usagelog.NewKeyRing(key)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}
