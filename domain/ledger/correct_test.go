package ledger_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/projections"
)

// newLedger runs a ledger on a real embedded store and a followed projection; adjust, if
// given, completes its configuration.
func newLedger(t *testing.T, adjust ...func(*ledger.Config)) (*ledger.Service, eventstore.Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	store, err := embedded.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	proj, err := projections.NewCurrent(ctx, store, projections.CurrentOptions{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = proj.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = store.Close()
	})
	cfg := ledger.Config{Store: store, View: proj}
	for _, a := range adjust {
		a(&cfg)
	}
	svc, err := ledger.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return svc, store
}

func TestCorrectAppendsACompensatingEventWithItsReason(t *testing.T) {
	ctx := context.Background()
	svc, store := newLedger(t)
	admin := ledger.Caller{Admin: true, RequestID: "req-1"}
	p, err := svc.CreateProduct(ctx, admin, "P")
	if err != nil {
		t.Fatal(err)
	}
	user := ledger.Caller{Token: domain.Token{Methods: domain.AllMethods}}
	id, err := svc.AddDataObject(ctx, user, ledger.AddDataObject{Scope: ledger.Scope{Referencer: domain.Owner{Type: domain.OwnerProduct, ID: p.ID}}, Name: "seats", IntValue: 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Correct(ctx, admin, id, -4, "  double-counted run  "); err != nil {
		t.Fatal(err)
	}
	if err := svc.Correct(ctx, admin, id, 3, "missed entry"); err != nil {
		t.Fatal(err)
	}
	evs, err := store.ReadStream(ctx, domain.DataObjectStream(id), eventstore.Forwards, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 3 {
		t.Fatalf("%d events, want 3", len(evs))
	}
	want := []struct {
		typ           string
		amount        int64
		before, after int32
		reason        string
	}{{domain.EventDecrementApplied, 4, 10, 6, "double-counted run"}, {domain.EventIncrementApplied, 3, 6, 9, "missed entry"}}
	for i, w := range want {
		ev := evs[i+1]
		var vc domain.ValueChanged
		if err := json.Unmarshal(ev.Data, &vc); err != nil {
			t.Fatal(err)
		}
		if ev.Type != w.typ || vc.Amount != w.amount || vc.Before != w.before || vc.After != w.after || vc.Correction != w.reason {
			t.Errorf("event %d: %s %+v, want %+v", i+1, ev.Type, vc, w)
		}
		var meta domain.Metadata
		if err := json.Unmarshal(ev.Metadata, &meta); err != nil {
			t.Fatal(err)
		}
		if !meta.Admin || meta.RequestID != "req-1" {
			t.Errorf("event %d metadata %+v, want the admin's request", i+1, meta)
		}
	}
}

func TestCorrectRefusals(t *testing.T) {
	ctx := context.Background()
	svc, _ := newLedger(t)
	admin := ledger.Caller{Admin: true}
	user := ledger.Caller{Token: domain.Token{Methods: domain.AllMethods}}
	id, err := svc.AddDataObject(ctx, user, ledger.AddDataObject{Scope: ledger.Scope{Referencer: domain.Owner{Type: domain.OwnerUser}}, Name: "x", IntValue: 2147483640})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		caller ledger.Caller
		object int64
		amount int64
		reason string
		want   error
	}{
		{"token caller", user, id, 1, "r", domain.ErrAccessDenied},
		{"empty reason", admin, id, 1, "  ", ledger.ErrInvalid},
		{"zero amount", admin, id, 0, "r", ledger.ErrInvalid},
		{"past int32", admin, id, 100, "r", domain.ErrInt32Limit},
		{"amount beyond int32", admin, id, -1 << 40, "r", domain.ErrInt32Limit},
		{"unknown object", admin, id + 1, 1, "r", domain.ErrDataObjectNotFound},
	}
	for _, c := range cases {
		if err := svc.Correct(ctx, c.caller, c.object, c.amount, c.reason); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

func TestCanListFollowsTheTokensLocks(t *testing.T) {
	ctx := context.Background()
	svc, _ := newLedger(t)
	admin := ledger.Caller{Admin: true}
	p1, _ := svc.CreateProduct(ctx, admin, "P1")
	p2, _ := svc.CreateProduct(ctx, admin, "P2")
	k1, err := svc.CreateKey(ctx, admin, p1.ID)
	if err != nil {
		t.Fatal(err)
	}
	all := ledger.Caller{Token: domain.Token{Methods: domain.AllMethods}}
	onKey, _ := svc.AddDataObject(ctx, all, ledger.AddDataObject{Scope: ledger.Scope{Referencer: domain.Owner{Type: domain.OwnerKey, ID: k1.ID}}, Name: "k"})
	onP2, _ := svc.AddDataObject(ctx, all, ledger.AddDataObject{Scope: ledger.Scope{Referencer: domain.Owner{Type: domain.OwnerProduct, ID: p2.ID}}, Name: "p"})
	list := []domain.Method{domain.MethodListDataObjects}
	cases := []struct {
		name   string
		tok    domain.Token
		object int64
		want   bool
	}{
		{"unlocked", domain.Token{Methods: list}, onKey, true},
		{"no list method", domain.Token{Methods: []domain.Method{domain.MethodIncrementIntValue}}, onKey, false},
		{"revoked", domain.Token{Methods: list, Revoked: true}, onKey, false},
		{"product lock matches", domain.Token{Methods: list, ProductLock: p1.ID}, onKey, true},
		{"product lock other", domain.Token{Methods: list, ProductLock: p1.ID}, onP2, false},
		{"key lock matches", domain.Token{Methods: list, KeyLock: k1.ID}, onKey, true},
		{"key-specific only", domain.Token{Methods: list, KeyLock: -1}, onKey, false},
		{"unknown object", domain.Token{Methods: list}, onP2 + 10, false},
	}
	for _, c := range cases {
		if got := svc.CanList(c.tok, c.object); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
