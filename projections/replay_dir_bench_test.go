package projections_test

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/projections"
)

// BenchmarkRebuildOfDataDir replays an existing event store, such as a copy of the generator's
// 10M ledger: TALLY_REPLAY_EVENTS names its events directory (skipped when unset; the store is
// only read, but it takes the directory's lock, so use a copy of a server's data). "rebuild" is
// projections.Rebuild, "verified" RebuildVerified, "replaystate" ReplayState (tally replay: the
// fold and the state database written, into a temporary directory), "storeddiff" the
// comparison of tally verify (StoredState.Diff of the data directory's readmodels/state.db,
// which must be at the head, with a replay folded before the timer starts: its figures are
// per event of the ledger too); each reports events/s,
// the process's CPU per event, and the heap in use after the replay (docs/encoding.md, "The
// fold on the ten-million-event ledger"):
//
//	TALLY_REPLAY_EVENTS=/tmp/h10m-copy/events go test -run '^$' -bench RebuildOfDataDir -benchtime 1x ./projections/
func BenchmarkRebuildOfDataDir(b *testing.B) {
	dir := os.Getenv("TALLY_REPLAY_EVENTS")
	if dir == "" {
		b.Skip("TALLY_REPLAY_EVENTS is not set")
	}
	ctx := context.Background()
	store, err := embedded.Open(ctx, dir)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	report := func(b *testing.B, events int, cpu int64) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(events)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
		b.ReportMetric(float64(processCPU()-cpu)/float64(events*b.N), "cpu-ns/event")
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
	}
	b.Run("rebuild", func(b *testing.B) {
		cpu, events := processCPU(), 0
		for b.Loop() {
			st, err := projections.Rebuild(ctx, store, nil)
			if err != nil {
				b.Fatal(err)
			}
			events = int(st.Events)
		}
		report(b, events, cpu)
	})
	b.Run("verified", func(b *testing.B) {
		cpu, events := processCPU(), 0
		for b.Loop() {
			st, problems, err := projections.RebuildVerified(ctx, store, nil)
			if err != nil {
				b.Fatal(err)
			}
			if len(problems) != 0 {
				b.Fatalf("%d problems, the first: %s", len(problems), problems[0])
			}
			events = int(st.Events)
		}
		report(b, events, cpu)
	})
	b.Run("replaystate", func(b *testing.B) {
		cpu, events := processCPU(), 0
		path := filepath.Join(b.TempDir(), projections.StateFile)
		for b.Loop() {
			st, err := projections.ReplayState(ctx, store, path, projections.ReplayOptions{})
			if err != nil {
				b.Fatal(err)
			}
			events = int(st.Events)
		}
		report(b, events, cpu)
	})
	b.Run("storeddiff", func(b *testing.B) {
		rebuilt, err := projections.Rebuild(ctx, store, nil)
		if err != nil {
			b.Fatal(err)
		}
		path := filepath.Join(dir, "..", projections.StateFile)
		cpu := processCPU()
		b.ResetTimer()
		for b.Loop() {
			stored, err := projections.OpenStoredState(ctx, path)
			if err != nil {
				b.Fatal(err)
			}
			diff, err := stored.Diff(ctx, rebuilt)
			if err != nil {
				b.Fatal(err)
			}
			if len(diff) != 0 {
				b.Fatalf("%d differences, the first: %s", len(diff), diff[0])
			}
			if err := stored.Close(); err != nil {
				b.Fatal(err)
			}
		}
		report(b, int(rebuilt.Events), cpu)
	})
}
