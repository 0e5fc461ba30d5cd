package embedded_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
)

// benchEvent is a typical small ledger event: about 95 bytes of JSON data and 56 of metadata.
func benchEvent(i int) eventstore.EventData {
	return eventstore.EventData{
		ID:       uuid.New(),
		Type:     "DataObjectValueSet",
		Data:     fmt.Appendf(nil, `{"objectId":%d,"name":"usage-counter","intValue":%d,"stringValue":"license-key-ABCDE-FGHIJ"}`, i%1000, i),
		Metadata: []byte(`{"correlationId":"c0ffee00-0000-4000-8000-000000000000"}`),
	}
}

// BenchmarkAppend measures durable one-event appends (each acknowledged after a
// synchronous=FULL commit) from 1, 8 and 64 concurrent writers, each on its own stream with
// exact expected revisions.
func BenchmarkAppend(b *testing.B) {
	for _, writers := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			dir := b.TempDir()
			store, err := embedded.Open(context.Background(), dir)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			var next atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, writers)
			b.ResetTimer()
			start := time.Now()
			for w := range writers {
				wg.Go(func() {
					stream := fmt.Sprintf("bench-%d", w)
					expected := eventstore.NoStream()
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						result, err := store.Append(ctx, stream, expected, benchEvent(int(i)))
						if err != nil {
							errs <- err
							return
						}
						expected = eventstore.Exact(result.NextExpectedRevision)
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			stats := store.Stats()
			if err := store.Close(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "appends/s")
			if stats.Batches > 0 {
				b.ReportMetric(float64(stats.Appends)/float64(stats.Batches), "appends/batch")
			}
			if info, err := os.Stat(filepath.Join(dir, embedded.DatabaseFile)); err == nil && b.N >= 10000 {
				b.ReportMetric(float64(info.Size())/float64(b.N), "bytes/event")
			}
		})
	}
}

// populate fills a store in dir with total benchmark events, appended 1000 at a time to 50
// streams (read-0, read-1000, ... read-49000).
func populate(b *testing.B, dir string, total int) {
	b.Helper()
	ctx := context.Background()
	store, err := embedded.Open(ctx, dir)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	batch := make([]eventstore.EventData, 1000)
	for i := 0; i < total; i += len(batch) {
		for k := range batch {
			batch[k] = benchEvent(i + k)
		}
		if _, err := store.Append(ctx, fmt.Sprintf("read-%d", i%50_000), eventstore.Any(), batch...); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadAll measures reading every event of a 200,000-event store in global order.
func BenchmarkReadAll(b *testing.B) {
	const total, page = 200_000, 4096
	ctx := context.Background()
	dir := b.TempDir()
	populate(b, dir, total)
	store, err := embedded.Open(ctx, dir)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		n := 0
		for from := eventstore.Start; ; {
			events, err := store.ReadAll(ctx, from, page)
			if err != nil {
				b.Fatal(err)
			}
			n += len(events)
			if len(events) < page {
				break
			}
			from = events[len(events)-1].Position
		}
		if n != total {
			b.Fatalf("read %d events, want %d", n, total)
		}
	}
	b.ReportMetric(float64(total)*float64(b.N)/time.Since(start).Seconds(), "events/s")
}

// BenchmarkBareScan scans the same 200,000 events with one plain database/sql query, reading
// two columns or all eight, without building RecordedEvents: the floor under ReadAll.
func BenchmarkBareScan(b *testing.B) {
	const total = 200_000
	dir := b.TempDir()
	populate(b, dir, total)
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, embedded.DatabaseFile)+"?_pragma=query_only(1)")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	for _, columns := range []string{"position, data", "position, stream, revision, id, type, data, metadata, recorded"} {
		b.Run(fmt.Sprintf("columns=%d", strings.Count(columns, ",")+1), func(b *testing.B) {
			start := time.Now()
			for b.Loop() {
				rows, err := db.Query("SELECT " + columns + " FROM events ORDER BY position")
				if err != nil {
					b.Fatal(err)
				}
				values := make([]any, strings.Count(columns, ",")+1)
				targets := make([]any, len(values))
				for i := range values {
					targets[i] = &values[i]
				}
				n := 0
				for rows.Next() {
					if err := rows.Scan(targets...); err != nil {
						b.Fatal(err)
					}
					n++
				}
				if err := rows.Close(); err != nil || n != total {
					b.Fatalf("scanned %d rows (%v), want %d", n, err, total)
				}
			}
			b.ReportMetric(float64(total)*float64(b.N)/time.Since(start).Seconds(), "events/s")
		})
	}
}

// BenchmarkReadAllNearHead measures the short reads of a reader near the head: two events asked
// for with a subscription's page of 512, and nothing after the head asked for with a page of
// 4096 (a catch-up's last read). B/op shows whether a short read pays for a whole page.
func BenchmarkReadAllNearHead(b *testing.B) {
	store, err := embedded.Open(b.Context(), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	var head eventstore.AppendResult
	for i := range 10 {
		if head, err = store.Append(b.Context(), "near-head", eventstore.Any(), benchEvent(i), benchEvent(i)); err != nil {
			b.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name      string
		from      eventstore.Position
		max, want int
	}{
		{"events=2/max=512", head.Position - 2, 512, 2},
		{"events=0/max=4096", head.Position, 4096, 0},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				events, err := store.ReadAll(b.Context(), tc.from, tc.max)
				if err != nil || len(events) != tc.want {
					b.Fatalf("read %d events (%v), want %d", len(events), err, tc.want)
				}
			}
		})
	}
}
