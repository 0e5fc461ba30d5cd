package embedded_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/tallyledger/tally/domain/eventstore"

	"github.com/tallyledger/tally/adapters/embedded"
)

// populateInterleaved fills a store in dir with total events as a ledger writes them: appends of
// ten events to 1,000 streams in turn, three event types, so that a range read meets a new
// stream every ten rows (as a replay of uploads and direct calls does).
func populateInterleaved(b *testing.B, dir string, total int) {
	b.Helper()
	ctx := context.Background()
	store, err := embedded.Open(ctx, dir, embedded.WithSubscriptionTail(0, 0))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	types := []string{"IncrementApplied", "DecrementApplied", "UploadPrepared"}
	batch := make([]eventstore.EventData, 10)
	for i := 0; i < total; i += len(batch) {
		for k := range batch {
			batch[k] = benchEvent(i + k)
			batch[k].Type = types[(i+k)%len(types)]
		}
		if _, err := store.Append(ctx, fmt.Sprintf("dataobject-%d", (i/len(batch))%1000), eventstore.Any(), batch...); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadRangeForReplay reads every event of a 200,000-event store as a replay does:
// ranges of 4,096 positions one after the other, handing each range's slice back. It reports
// the wall time and the heap allocations per row (stream and type strings, ids, bodies).
func BenchmarkReadRangeForReplay(b *testing.B) {
	const total, rangeSize = 200_000, 4096
	ctx := context.Background()
	dir := b.TempDir()
	populateInterleaved(b, dir, total)
	store, err := embedded.Open(ctx, dir)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	var buf []eventstore.RecordedEvent
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		n := 0
		for from := eventstore.Start; from < total; from += rangeSize {
			events, err := store.ReadRangeForReplay(ctx, from, min(from+rangeSize, total), buf)
			if err != nil {
				b.Fatal(err)
			}
			n += len(events)
			buf = events
		}
		if n != total {
			b.Fatalf("read %d events, want %d", n, total)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	runtime.ReadMemStats(&after)
	rows := float64(total) * float64(b.N)
	b.ReportMetric(float64(elapsed.Nanoseconds())/rows, "ns/row")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/rows, "allocs/row")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/rows, "B/row")
}
