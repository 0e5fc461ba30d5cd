package viewer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/viewer"
)

// TestViewerCredentials creates, checks, lists and revokes credentials on each store (the
// embedded one and KurrentDB's test server, filtered to Tally's streams as tally serve does),
// with a clock the test moves: a second service on the same store (another instance) accepts
// what the first created; expired, revoked and unknown secrets are told apart; the secret is
// never recorded.
func TestViewerCredentials(t *testing.T) {
	for _, b := range apitest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			store := b.Open(t)
			t.Cleanup(func() { _ = store.Close() })
			testViewerCredentials(t, store)
		})
	}
}

func testViewerCredentials(t *testing.T, store eventstore.Store) {
	ctx := context.Background()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	a, b := viewer.New(store, clock), viewer.New(store, clock)
	meta := domain.Metadata{Admin: true, RequestID: "test"}

	if _, _, err := a.Create(ctx, meta, "  ", nil); !errors.Is(err, viewer.ErrInvalid) {
		t.Errorf("empty name: %v", err)
	}
	past := now.Add(-time.Second)
	if _, _, err := a.Create(ctx, meta, "late", &past); !errors.Is(err, viewer.ErrInvalid) {
		t.Errorf("expiry in the past: %v", err)
	}
	billing, secret, err := a.Create(ctx, meta, " billing ", nil)
	if err != nil || billing.Name != "billing" || !strings.HasPrefix(secret, viewer.SecretPrefix) || len(secret) < 40 {
		t.Fatalf("create: %+v %q %v", billing, secret, err)
	}
	expires := now.Add(time.Hour)
	temp, tempSecret, err := a.Create(ctx, meta, "auditor", &expires)
	if err != nil {
		t.Fatal(err)
	}

	// Another instance accepts both at once.
	if c, err := b.Authenticate(ctx, secret); err != nil || c.ID != billing.ID {
		t.Fatalf("authenticate on another instance: %+v %v", c, err)
	}
	if _, err := b.Authenticate(ctx, tempSecret); err != nil {
		t.Fatalf("authenticate the temporary credential: %v", err)
	}
	for _, wrong := range []string{"", "tv_", secret + "x", "tv_" + strings.Repeat("A", 43), "admin-token"} {
		if _, err := b.Authenticate(ctx, wrong); !errors.Is(err, viewer.ErrUnknown) {
			t.Errorf("secret %q: %v", wrong, err)
		}
	}

	// Expiry, by the clock.
	now = expires
	if _, err := b.Authenticate(ctx, tempSecret); !errors.Is(err, viewer.ErrExpired) {
		t.Errorf("at its expiry: %v", err)
	}
	if _, err := b.Authenticate(ctx, secret); err != nil {
		t.Errorf("a credential without expiry: %v", err)
	}

	// Revocation on one instance counts on the other; revoking twice is fine.
	for range 2 {
		if c, err := b.Revoke(ctx, meta, billing.ID); err != nil || !c.Revoked {
			t.Fatalf("revoke: %+v %v", c, err)
		}
	}
	if _, err := a.Authenticate(ctx, secret); !errors.Is(err, viewer.ErrRevoked) {
		t.Errorf("revoked: %v", err)
	}
	if _, err := a.Revoke(ctx, meta, uuid.New()); !errors.Is(err, viewer.ErrNotFound) {
		t.Errorf("revoke an unknown id: %v", err)
	}

	list, err := a.List(ctx)
	if err != nil || len(list) != 2 || !list[0].Revoked || list[1].Revoked || list[1].ID != temp.ID || list[1].Expires == nil {
		t.Fatalf("list: %+v %v", list, err)
	}

	// Only hashes are recorded.
	evs, err := store.ReadStream(ctx, viewer.Stream, eventstore.Forwards, 0, 100)
	if err != nil || len(evs) != 3 {
		t.Fatalf("stream: %d events, %v", len(evs), err)
	}
	for _, ev := range evs {
		if strings.Contains(string(ev.Data), secret) || strings.Contains(string(ev.Data), tempSecret) || strings.Contains(string(ev.Metadata), secret) {
			t.Errorf("a secret is recorded in %s", ev.Type)
		}
	}
	if domain.StreamCategory(viewer.Stream) != domain.CategoryViewer {
		t.Errorf("the viewer stream's category %q is not in domain.StreamCategories", domain.StreamCategory(viewer.Stream))
	}
}
