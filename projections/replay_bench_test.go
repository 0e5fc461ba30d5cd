package projections_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/projections"
)

// benchEvents is the size of the replayed store: one million with TALLY_LONG=1, else 50 000.
func benchEvents() int {
	if os.Getenv("TALLY_LONG") == "1" {
		return 1_000_000
	}
	return 50_000
}

// seedForBench writes n events: 1000 data objects, then increments in appends of 1000 events
// to one object's stream at a time, each with the metadata a token's call carries. Bodies are
// encoded by encode: domain.EncodeEvent (what the ledger writes) or json.Marshal (events
// written before the compact encoding).
func seedForBench(b *testing.B, store eventstore.Store, n int, encode func(typ string, body any) ([]byte, error)) eventstore.Position {
	b.Helper()
	ctx := context.Background()
	meta, _ := json.Marshal(domain.Metadata{TokenID: uuid.New(), RequestID: "bench"})
	const objects, batch = 1000, 1000
	at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	var head eventstore.Position
	for id := int64(1); id <= objects; id++ {
		data, _ := encode(domain.EventDataObjectAdded, domain.DataObjectAdded{ObjectID: id, Owner: domain.Owner{Type: domain.OwnerUser}, Name: "o", At: at})
		res, err := store.Append(ctx, domain.DataObjectStream(id), eventstore.NoStream(), eventstore.EventData{ID: uuid.New(), Type: domain.EventDataObjectAdded, Data: data, Metadata: meta})
		if err != nil {
			b.Fatal(err)
		}
		head = res.Position
	}
	values := make([]int32, objects+1)
	evs := make([]eventstore.EventData, 0, batch)
	for written, i := objects, 0; written < n; i++ {
		id := int64(i%objects + 1)
		evs = evs[:0]
		for j := 0; j < batch && written < n; j++ {
			data, _ := encode(domain.EventIncrementApplied, domain.ValueChanged{ObjectID: id, Amount: 1, Before: values[id], After: values[id] + 1, At: at})
			values[id]++
			evs = append(evs, eventstore.EventData{ID: uuid.New(), Type: domain.EventIncrementApplied, Data: data, Metadata: meta})
			written++
		}
		res, err := store.Append(ctx, domain.DataObjectStream(id), eventstore.Any(), evs...)
		if err != nil {
			b.Fatal(err)
		}
		head = res.Position
	}
	return head
}

// BenchmarkReplayAndRestart measures, on an embedded store of benchEvents() events: a full
// replay (projections.Rebuild, events/s), and restart-to-ready (NewCurrent until WaitFor(head))
// without a snapshot and with a snapshot at the head.
func BenchmarkReplayAndRestart(b *testing.B) {
	ctx := context.Background()
	n := benchEvents()
	dir := b.TempDir()
	store, err := embedded.Open(ctx, dir)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	seeded := time.Now()
	head := seedForBench(b, store, n, domain.EncodeEvent)
	b.Logf("seeded %d events in %s", n, time.Since(seeded).Round(time.Millisecond))

	b.Run("replay", func(b *testing.B) {
		cpu := processCPU()
		for b.Loop() {
			st, err := projections.Rebuild(ctx, store, nil)
			if err != nil {
				b.Fatal(err)
			}
			if st.Position != head {
				b.Fatalf("replayed to %d, head %d", st.Position, head)
			}
		}
		b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
		b.ReportMetric(float64(processCPU()-cpu)/float64(n*b.N), "cpu-ns/event")
	})

	restart := func(b *testing.B, snapshot string) {
		for b.Loop() {
			runCtx, cancel := context.WithCancel(ctx)
			proj, err := projections.NewCurrent(runCtx, store, projections.CurrentOptions{StatePath: snapshot, SnapshotEvery: time.Hour})
			if err != nil {
				b.Fatal(err)
			}
			done := make(chan struct{})
			go func() { defer close(done); _ = proj.Run(runCtx) }()
			if err := proj.WaitFor(runCtx, head); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			cancel()
			<-done
			b.StartTimer()
		}
	}
	b.Run("restart-without-checkpoint", func(b *testing.B) { restart(b, "") })

	snapshot := filepath.Join(dir, projections.StateFile)
	st, err := projections.Rebuild(ctx, store, nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := projections.SaveSnapshot(snapshot, st); err != nil {
		b.Fatal(err)
	}
	b.Run("restart-with-checkpoint", func(b *testing.B) { restart(b, snapshot) })
}

// BenchmarkReplayLegacyJSON is the replay of BenchmarkReplayAndRestart on a store whose events
// were all written as JSON, before the compact encoding (docs/encoding.md): what a store
// written by an older Tally costs to rebuild.
func BenchmarkReplayLegacyJSON(b *testing.B) {
	ctx := context.Background()
	n := benchEvents()
	store, err := embedded.Open(ctx, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	head := seedForBench(b, store, n, func(_ string, body any) ([]byte, error) { return json.Marshal(body) })
	cpu := processCPU()
	for b.Loop() {
		st, err := projections.Rebuild(ctx, store, nil)
		if err != nil {
			b.Fatal(err)
		}
		if st.Position != head {
			b.Fatalf("replayed to %d, head %d", st.Position, head)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(processCPU()-cpu)/float64(n*b.N), "cpu-ns/event")
}

// processCPU is the CPU time this process has used (user and system), in nanoseconds: on a
// machine shared with other jobs, the CPU an event costs varies less than the wall time.
func processCPU() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
