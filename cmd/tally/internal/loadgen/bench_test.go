package loadgen

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/kurrentdb"
	"github.com/tallyledger/tally/adapters/kurrentdb/kurrenttest"
	"github.com/tallyledger/tally/domain"
)

// BenchmarkIncrementLoad runs the increment load of tally bench (64 clients, one object each,
// b.N calls in all) against an in-process server on the embedded store and on the KurrentDB
// test server (adapters/kurrentdb/kurrenttest, in-memory, in this process), and reports what
// the tool reports. Use a count: -benchtime 20000x.
func BenchmarkIncrementLoad(b *testing.B) {
	for _, backend := range []string{"embedded", "kurrentdb"} {
		b.Run("store="+backend, func(b *testing.B) {
			ctx := context.Background()
			var srv *Server
			var err error
			if backend == "embedded" {
				srv, err = StartEmbedded(ctx, ServerOptions{Dir: b.TempDir()})
			} else {
				prefixes := make([]string, len(domain.StreamCategories))
				for i, c := range domain.StreamCategories {
					prefixes[i] = c + "-"
				}
				var store *kurrentdb.Store
				store, err = kurrentdb.Open(ctx, kurrentdb.Config{URL: kurrenttest.Start(b).URL(), StreamPrefixes: prefixes, Logger: slog.New(slog.DiscardHandler)})
				if err == nil {
					srv, err = StartOn(ctx, store, ServerOptions{Dir: b.TempDir()})
				}
			}
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Close()
			b.ResetTimer()
			rep, err := Run(ctx, Config{URL: srv.URL, AdminToken: srv.AdminToken, Clients: 64, Requests: b.N})
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(rep.Increment.RequestsSec, "req/s")
			b.ReportMetric(float64(rep.Increment.P50)/float64(time.Millisecond), "p50-ms")
			b.ReportMetric(float64(rep.Increment.P99)/float64(time.Millisecond), "p99-ms")
			b.ReportMetric(float64(rep.Increment.Errors), "errors")
		})
	}
}
