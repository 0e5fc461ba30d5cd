package readmodel_test

import (
	"context"
	"encoding/json"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/readmodel"
)

// BenchmarkBillingRunOnHistory answers the monthly billing run (last month by month over every
// data object, in UTC and in Asia/Kathmandu) from the read model of a ledger made by tally bench --workload history
// (TALLY_HISTORY_DIR names its data directory; skipped without it), and encodes the report as
// GET /v1/usage does, in this process, without HTTP: the query side's own cost, to profile
// with -cpuprofile and -memprofile. It opens the directory's readmodels/usage.db as serve
// does (catching it up first if it is behind the store; build it with tally serve or
// BenchmarkReadSideOnHistory).
//
//	TALLY_HISTORY_DIR=/tmp/h1m go test -run '^$' -bench BillingRunOnHistory ./projections/readmodel
func BenchmarkBillingRunOnHistory(b *testing.B) {
	ctx := context.Background()
	dir, store := historyStore(ctx, b)
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m, err := readmodel.Open(mctx, store, filepath.Join(dir, readmodel.File), readmodel.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	done := make(chan error, 1)
	go func() { done <- m.Run(mctx) }()
	defer func() { cancel(); <-done }()
	if _, err := m.Wait(ctx); err != nil {
		b.Fatal(err)
	}
	now := time.Now().UTC()
	for _, zone := range []string{"UTC", "Asia/Kathmandu"} {
		loc, err := time.LoadLocation(zone)
		if err != nil {
			b.Fatal(err)
		}
		lastMonth := time.Date(now.Year(), now.Month()-1, 1, 0, 0, 0, 0, loc)
		q := projections.UsageQuery{From: lastMonth, To: lastMonth.AddDate(0, 1, 0), Location: loc, By: projections.ByMonth}
		b.Run(strings.ReplaceAll(zone, "/", "-"), func(b *testing.B) {
			rows := 0
			b.ReportAllocs()
			for b.Loop() {
				rep, err := m.Usage(ctx, q)
				if err != nil {
					b.Fatal(err)
				}
				if err := json.NewEncoder(io.Discard).Encode(rep); err != nil {
					b.Fatal(err)
				}
				rows = len(rep.Rows)
			}
			b.ReportMetric(float64(rows), "rows")
		})
	}
}
