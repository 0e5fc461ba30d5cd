package embedded_test

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/eventstore/storetest"
)

func openStore(t *testing.T, dir string, opts ...embedded.Option) *embedded.Store {
	t.Helper()
	store, err := embedded.Open(t.Context(), dir, opts...)
	if err != nil {
		t.Fatalf("open store in %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := store.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return store
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) eventstore.Store { return openStore(t, t.TempDir()) })
}

// A batch size of one commits every append alone, subscriptions read two events at a time, and
// the in-memory tail holds three: the contract must hold without group commit, across many page
// boundaries, and with subscribers moving between the tail and the database.
func TestContractWithoutGroupCommitSmallPages(t *testing.T) {
	storetest.Run(t, func(t *testing.T) eventstore.Store {
		return openStore(t, t.TempDir(), embedded.WithMaxBatch(1), embedded.WithSubscriptionPage(2), embedded.WithReadConnections(1), embedded.WithSubscriptionTail(3, 1<<20))
	})
}

// Without the in-memory tail every subscription reads the database: that path keeps the
// contract on its own.
func TestContractWithoutTail(t *testing.T) {
	storetest.Run(t, func(t *testing.T) eventstore.Store {
		return openStore(t, t.TempDir(), embedded.WithSubscriptionTail(0, 0))
	})
}

// TestHeadIsTheLastCommittedPosition, also right after reopening, when no commit has woken the
// store yet: readiness and read-your-writes depend on it.
func TestHeadIsTheLastCommittedPosition(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := embedded.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if head, err := eventstore.Head(ctx, s, eventstore.Start); err != nil || head != eventstore.Start {
		t.Fatalf("empty store head %d, %v", head, err)
	}
	res, err := s.Append(ctx, "head-1", eventstore.NoStream(), eventstore.EventData{ID: uuid.New(), Type: "T", Data: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = embedded.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if head, err := s.Head(ctx); err != nil || head != res.Position {
		t.Fatalf("head after reopening %d, %v; want %d", head, err, res.Position)
	}
}
