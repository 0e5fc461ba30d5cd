package readmodel_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/projections/readmodel"
)

// historyStore opens the event store of the ledger TALLY_HISTORY_DIR names (made by tally
// bench --workload history), closed when b ends, or skips b when it is not set.
func historyStore(ctx context.Context, b *testing.B) (dir string, store *embedded.Store) {
	dir = os.Getenv("TALLY_HISTORY_DIR")
	if dir == "" {
		b.Skip("TALLY_HISTORY_DIR is not set")
	}
	store, err := embedded.Open(ctx, filepath.Join(dir, "events"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = store.Close() })
	return dir, store
}

// BenchmarkCatchUpOnHistory builds the usage read model from zero on a ledger made by tally
// bench --workload history (TALLY_HISTORY_DIR names its data directory; skipped without it),
// into a file of its own (the directory's read model is left alone), and reports events/s.
// Profile it with -cpuprofile:
//
//	TALLY_HISTORY_DIR=/tmp/h1m go test -run '^$' -bench CatchUpOnHistory -benchtime 1x ./projections/readmodel
func BenchmarkCatchUpOnHistory(b *testing.B) {
	ctx := context.Background()
	_, store := historyStore(ctx, b)
	for range b.N {
		path := filepath.Join(b.TempDir(), "usage.db")
		mctx, cancel := context.WithCancel(ctx)
		started := time.Now()
		m, err := readmodel.Open(mctx, store, path, readmodel.Options{})
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- m.Run(mctx) }()
		if _, err := m.Wait(ctx); err != nil {
			b.Fatal(err)
		}
		took := time.Since(started)
		events, err := m.Events(ctx)
		if err != nil {
			b.Fatal(err)
		}
		cancel()
		<-done
		_ = m.Close()
		b.ReportMetric(float64(events)/took.Seconds(), "events/s")
		b.Logf("catch-up: %d events in %s: %.0f events/s", events, took.Round(time.Millisecond), float64(events)/took.Seconds())
	}
}
