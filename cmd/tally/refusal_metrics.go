package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
)

// registerRefusalMetrics adds tally_uploads_refused_total{reason}: uploads refused for their
// content since start, by reason (docs/uploads.md, "Refused logs").
func registerRefusalMetrics(registry *prometheus.Registry, svc *ledger.Service) {
	for _, reason := range []string{
		domain.RefusalCorrupted, domain.RefusalTooManyNew, domain.RefusalInvalidObject,
		domain.RefusalFeatureLock, domain.RefusalInt32Overflow, domain.RefusalPermission,
	} {
		registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "tally_uploads_refused_total",
			Help:        "Uploads refused for their content (recorded on the owner's upload stream), by reason.",
			ConstLabels: prometheus.Labels{"reason": reason},
		}, func() float64 { return float64(svc.RefusalsByReason()[reason]) }))
	}
}
