package main

import (
	"context"
	"io/fs"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/adapters/prommetrics"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/projections"
)

// registerServeMetrics registers on reg what tally serve exports beyond the HTTP and ledger
// metrics: the process, the RSA operations, the store's size and events, the projection's
// position and lag (docs/api.md, "Metrics").
func registerServeMetrics(reg *prometheus.Registry, store eventstore.Store, proj *projections.Current, keys *usagelog.KeyRing, dataDir string) error {
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tally_rsa_operations_total",
			Help: "RSA private-key operations performed to decode uploaded usage logs (one per new layer and key tried).",
		}, func() float64 { return float64(keys.Decryptions()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tally_projection_position",
			Help: "Global position of the last event in the current-state projection.",
		}, func() float64 { return float64(proj.Position()) }),
	)
	if es, ok := store.(*embedded.Store); ok {
		dir := filepath.Join(dataDir, "events")
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "tally_store_size_bytes",
				Help: "Bytes of the embedded store's files (database, write-ahead log and index).",
			}, func() float64 { return float64(dirSize(dir)) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "tally_store_events",
				Help: "Events in the embedded store (its head position: positions are 1, 2, 3, … without gaps).",
			}, func() float64 {
				head, _ := es.Head(context.Background()) // read from memory: it cannot block
				return float64(head)
			}),
		)
	}
	return prommetrics.RegisterProjectionLag(reg, store, proj)
}

// dirSize is the total size of the regular files under dir (0 when it cannot be read).
func dirSize(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil && fi.Mode().IsRegular() {
			total += fi.Size()
		}
		return nil
	})
	return total
}
