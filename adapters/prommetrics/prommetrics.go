// Package prommetrics exports Tally's own metrics to Prometheus: the ledger's counts (it
// implements ledger.Metrics) and the projection's lag behind the event store, registered on a
// registry the composition root owns. The HTTP metrics live with the HTTP adapter.
package prommetrics

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
)

// Ledger counts what the ledger reports; it implements ledger.Metrics.
type Ledger struct {
	uploads   *prometheus.CounterVec
	aborted   *prometheus.CounterVec
	applied   prometheus.Counter
	known     prometheus.Counter
	conflicts prometheus.Counter
	retries   prometheus.Counter
}

var _ ledger.Metrics = (*Ledger)(nil)

// NewLedger registers the ledger's metrics on reg.
func NewLedger(reg prometheus.Registerer) (*Ledger, error) {
	m := &Ledger{
		uploads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_uploads_total",
			Help: "UploadValues calls by outcome (committed, unchanged, refused) and, for refusals, the kind of refusal.",
		}, []string{"outcome", "reason"}),
		aborted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_uploads_aborted_total",
			Help: "Prepared uploads aborted, by reason (conflict: decided again; store_failure; recovery).",
		}, []string{"reason"}),
		applied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_upload_entries_applied_total",
			Help: "Usage-log entries applied by uploads.",
		}),
		known: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_upload_entries_known_total",
			Help: "Usage-log entries uploaded again that were already applied (summed over successful uploads).",
		}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_ledger_conflicts_total",
			Help: "Appends refused for their expected revision (another writer got there first).",
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_ledger_retries_total",
			Help: "Attempts of a command that lost to a concurrent writer or upload (decided again, or given up after the last).",
		}),
	}
	for _, c := range []prometheus.Collector{m.uploads, m.aborted, m.applied, m.known, m.conflicts, m.retries} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("prommetrics: register: %w", err)
		}
	}
	// The usual series exist from the start, at 0, so that rates and alerts see them.
	m.uploads.WithLabelValues(ledger.UploadCommitted, "")
	m.uploads.WithLabelValues(ledger.UploadUnchanged, "")
	for _, r := range []string{ledger.AbortConflict, ledger.AbortStoreFailure, ledger.AbortRecovery} {
		m.aborted.WithLabelValues(r)
	}
	return m, nil
}

// UploadFinished implements ledger.Metrics.
func (m *Ledger) UploadFinished(o ledger.UploadOutcome) {
	m.uploads.WithLabelValues(o.Outcome, o.Reason).Inc()
	m.applied.Add(float64(o.Applied))
	m.known.Add(float64(o.Known))
}

// UploadAborted implements ledger.Metrics.
func (m *Ledger) UploadAborted(reason string) { m.aborted.WithLabelValues(reason).Inc() }

// Conflict implements ledger.Metrics.
func (m *Ledger) Conflict() { m.conflicts.Inc() }

// Retry implements ledger.Metrics.
func (m *Ledger) Retry() { m.retries.Inc() }

// Positioned is a read model that knows the last event it reflects.
type Positioned interface {
	Position() eventstore.Position
}

// maxLagCount bounds the events counted per scrape: a lag this large is reported as this.
const maxLagCount = 100_000

// projectionLag reports, at each scrape, how far the projection is behind the store: the
// events stored after its position and how long ago the oldest of them was recorded.
type projectionLag struct {
	store  eventstore.Store
	proj   Positioned
	now    func() time.Time
	events *prometheus.Desc
	age    *prometheus.Desc
	failed *prometheus.Desc
}

// RegisterProjectionLag registers tally_projection_lag_events and tally_projection_lag_seconds
// on reg, read from store and proj at each scrape.
func RegisterProjectionLag(reg prometheus.Registerer, store eventstore.Store, proj Positioned) error {
	c := &projectionLag{
		store: store, proj: proj, now: time.Now,
		events: prometheus.NewDesc("tally_projection_lag_events",
			"Events in the store that the current-state projection does not reflect yet (counted up to 100,000).", nil, nil),
		age: prometheus.NewDesc("tally_projection_lag_seconds",
			"How long ago the oldest event the projection does not reflect yet was recorded (0: none).", nil, nil),
		failed: prometheus.NewDesc("tally_projection_lag_read_errors",
			"1 when the store could not be read to measure the lag at this scrape.", nil, nil),
	}
	if err := reg.Register(c); err != nil {
		return fmt.Errorf("prommetrics: register projection lag: %w", err)
	}
	return nil
}

func (c *projectionLag) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.events
	ch <- c.age
	ch <- c.failed
}

func (c *projectionLag) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	events, age, err := c.measure(ctx)
	failed := 0.0
	if err != nil {
		failed = 1
	} else {
		ch <- prometheus.MustNewConstMetric(c.events, prometheus.GaugeValue, float64(events))
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age.Seconds())
	}
	ch <- prometheus.MustNewConstMetric(c.failed, prometheus.GaugeValue, failed)
}

func (c *projectionLag) measure(ctx context.Context) (int, time.Duration, error) {
	from := c.proj.Position()
	var age time.Duration
	n := 0
	for n < maxLagCount {
		evs, err := c.store.ReadAll(ctx, from, 1000)
		if err != nil {
			return 0, 0, err
		}
		if len(evs) == 0 {
			break
		}
		if n == 0 {
			age = max(0, c.now().Sub(evs[0].Recorded))
		}
		n += len(evs)
		from = evs[len(evs)-1].Position
	}
	return min(n, maxLagCount), age, nil
}
