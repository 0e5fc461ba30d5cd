package embedded_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
)

// fillStore appends n benchEvents in batches of 1000.
func fillStore(b *testing.B, store *embedded.Store, n int) {
	b.Helper()
	for i := 0; i < n; i += 1000 {
		events := make([]eventstore.EventData, min(1000, n-i))
		for j := range events {
			events[j] = benchEvent(i + j)
		}
		if _, err := store.Append(context.Background(), fmt.Sprintf("fill-%d", i), eventstore.NoStream(), events...); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBackupTo measures one VACUUM INTO copy of a store of 200,000 small events, alone
// and while 8 writers keep appending one event at a time. It reports the copy's size and, for
// the writers, the p50/p99/max latency of their appends while copies run back to back, so the
// two runs compare the appends' latency with and without a backup beside them.
func BenchmarkBackupTo(b *testing.B) {
	const events = 200_000
	for _, writers := range []int{0, 8} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			dir := b.TempDir()
			store, err := embedded.Open(context.Background(), dir)
			if err != nil {
				b.Fatal(err)
			}
			defer store.Close()
			fillStore(b, store, events)
			ctx, stop := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			var mu sync.Mutex
			var latencies []time.Duration
			for w := range writers {
				wg.Go(func() {
					var mine []time.Duration
					for i := 0; ctx.Err() == nil; i++ {
						t0 := time.Now()
						if _, err := store.Append(ctx, fmt.Sprintf("w-%d", w), eventstore.Any(), benchEvent(i)); err != nil && ctx.Err() == nil {
							b.Error(err)
							return
						}
						mine = append(mine, time.Since(t0))
					}
					mu.Lock()
					latencies = append(latencies, mine...)
					mu.Unlock()
				})
			}
			var size int64
			b.ResetTimer()
			for i := range b.N {
				path := filepath.Join(b.TempDir(), fmt.Sprintf("copy-%d.db", i))
				if _, err := store.BackupTo(context.Background(), path); err != nil {
					b.Fatal(err)
				}
				if fi, err := os.Stat(path); err == nil {
					size = fi.Size()
				}
				os.Remove(path)
			}
			b.StopTimer()
			stop()
			wg.Wait()
			b.ReportMetric(float64(size)/(1<<20), "MiB/copy")
			if len(latencies) > 0 {
				slices.Sort(latencies)
				at := func(q float64) float64 {
					return float64(latencies[int(q*float64(len(latencies)-1))].Microseconds()) / 1000
				}
				b.ReportMetric(at(0.5), "append-p50-ms")
				b.ReportMetric(at(0.99), "append-p99-ms")
				b.ReportMetric(at(1), "append-max-ms")
				b.ReportMetric(float64(len(latencies))/b.Elapsed().Seconds(), "appends/s")
			}
		})
	}
}

// BenchmarkAppendWithoutBackup is the writers' baseline for BenchmarkBackupTo: the same 8
// writers on the same store size, for one second, with no copy running.
func BenchmarkAppendWithoutBackup(b *testing.B) {
	dir := b.TempDir()
	store, err := embedded.Open(context.Background(), dir)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	fillStore(b, store, 200_000)
	b.ResetTimer()
	for range b.N {
		ctx, stop := context.WithTimeout(context.Background(), time.Second)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var latencies []time.Duration
		for w := range 8 {
			wg.Go(func() {
				var mine []time.Duration
				for i := 0; ctx.Err() == nil; i++ {
					t0 := time.Now()
					if _, err := store.Append(ctx, fmt.Sprintf("w-%d", w), eventstore.Any(), benchEvent(i)); err != nil && ctx.Err() == nil {
						b.Error(err)
						return
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				latencies = append(latencies, mine...)
				mu.Unlock()
			})
		}
		wg.Wait()
		stop()
		slices.Sort(latencies)
		at := func(q float64) float64 {
			return float64(latencies[int(q*float64(len(latencies)-1))].Microseconds()) / 1000
		}
		b.ReportMetric(at(0.5), "append-p50-ms")
		b.ReportMetric(at(0.99), "append-p99-ms")
		b.ReportMetric(at(1), "append-max-ms")
		b.ReportMetric(float64(len(latencies)), "appends/s")
	}
}
