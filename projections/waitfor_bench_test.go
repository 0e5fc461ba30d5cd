package projections_test

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// BenchmarkAppendAndWait is the ledger's write path without HTTP: 64 writers each append an
// event to a stream of their own and wait until the projection holds it (what every command
// does), b.N appends in all, on the embedded store.
func BenchmarkAppendAndWait(b *testing.B) {
	store, err := embedded.Open(context.Background(), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	c, stop := runCurrent(b, store, "")
	defer stop()
	const writers = 64
	data, err := json.Marshal(domain.ValueChanged{ObjectID: 1, Amount: 1})
	if err != nil {
		b.Fatal(err)
	}
	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	errs := make(chan error, writers) // each writer stops at its first error
	b.ResetTimer()
	for w := range writers {
		wg.Go(func() {
			stream := domain.DataObjectStream(int64(1000 + w))
			for left.Add(-1) >= 0 {
				res, err := store.Append(context.Background(), stream, eventstore.Any(), eventstore.EventData{ID: uuid.New(), Type: domain.EventIncrementApplied, Data: data})
				if err == nil {
					err = c.WaitFor(context.Background(), res.Position)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
}
