package embedded_test

import (
	"testing"

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

// A batch size of one commits every append alone, and subscriptions read two events at a time:
// the contract must hold without group commit and across many page boundaries.
func TestContractWithoutGroupCommitSmallPages(t *testing.T) {
	storetest.Run(t, func(t *testing.T) eventstore.Store {
		return openStore(t, t.TempDir(), embedded.WithMaxBatch(1), embedded.WithSubscriptionPage(2), embedded.WithReadConnections(1))
	})
}
