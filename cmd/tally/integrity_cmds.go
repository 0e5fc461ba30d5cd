package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
)

// newProductSetCommand is `tally product set ID --on-tamper apply|refuse`.
func newProductSetCommand(g *globalFlags) *cobra.Command {
	var onTamper string
	cmd := &cobra.Command{
		Use:   "set ID --on-tamper apply|refuse",
		Short: "Change a product's settings: what an upload showing tampering does (docs/uploads.md)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil || id <= 0 {
				return fmt.Errorf("product id %q is not a positive integer", args[0])
			}
			if _, err := domain.ParseIntegrityPolicy(onTamper); err != nil {
				return fmt.Errorf("--on-tamper: %w", err)
			}
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			p, err := c.SetProductSettings(cmd.Context(), id, onTamper)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "product %d: on tamper %s\n", p.ID, p.OnTamper)
			return err
		},
	}
	cmd.Flags().StringVar(&onTamper, "on-tamper", "", "apply (record the anomaly, apply the new entries; the default) or refuse (record it, refuse until acknowledged)")
	_ = cmd.MarkFlagRequired("on-tamper")
	return cmd
}

// newAnomaliesCommand is `tally anomalies`: list and acknowledge usage-log integrity anomalies.
func newAnomaliesCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "anomalies", Short: "Usage-log integrity anomalies: tampered logs (admin API; docs/uploads.md)"}
	var key, format string
	var product int64
	list := &cobra.Command{
		Use:   "list [--key K | --product P] [--format table|json]",
		Short: "List the integrity anomalies, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "table" && format != "json" {
				return fmt.Errorf("--format %q: want table or json", format)
			}
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			as, err := c.ListAnomalies(cmd.Context(), key, product)
			if err != nil {
				return err
			}
			if format == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(as)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tAT\tOWNER\tLAYER\tDEPTH\tDIFFERS\tAPPLIED\tSEEN\tPOLICY\tACKNOWLEDGED")
			for _, a := range as {
				ack := "no"
				if a.Acknowledged {
					ack = "yes: " + a.AckReason
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%.12s\t%d\t%s\t%.12s\t%.12s\t%s\t%s\n", a.AnomalyID, a.At.UTC().Format(time.RFC3339),
					a.Owner.String(), a.Layer, a.Depth, strings.Join(a.Differs, ","), a.AppliedDigest, a.SeenDigest, a.Policy, ack)
			}
			return tw.Flush()
		},
	}
	list.Flags().StringVar(&key, "key", "", "only this license key's (id or key string)")
	list.Flags().Int64Var(&product, "product", 0, "only the product's own uploads")
	list.Flags().StringVar(&format, "format", "table", "table or json (json has every digest in full)")
	var reason string
	ack := &cobra.Command{
		Use:   "acknowledge ID --reason R",
		Short: "Accept the version of the layer an anomaly saw (a product that refuses on tampering then takes it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := uuid.Parse(args[0])
			if err != nil {
				return fmt.Errorf("anomaly id %q is not a UUID", args[0])
			}
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			a, err := c.AcknowledgeAnomaly(cmd.Context(), id, reason)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "anomaly %s acknowledged: %s\n", a.AnomalyID, a.AckReason)
			return err
		},
	}
	ack.Flags().StringVar(&reason, "reason", "", "why the version is accepted (required)")
	_ = ack.MarkFlagRequired("reason")
	cmd.AddCommand(list, ack)
	return cmd
}

// registerIntegrityMetrics adds tally_upload_integrity_anomalies_total: the integrity
// anomalies recorded in the store (by every instance, since the beginning; the events are
// never removed, so it only grows), and the unacknowledged ones of them as a gauge.
func registerIntegrityMetrics(registry *prometheus.Registry, svc *ledger.Service) {
	registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tally_upload_integrity_anomalies_total",
			Help: "Usage-log integrity anomalies recorded: uploads presenting a known layer with other bytes (docs/uploads.md).",
		}, func() float64 { return float64(svc.AnomalyCount()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tally_upload_integrity_anomalies_unacknowledged",
			Help: "Usage-log integrity anomalies no operator has acknowledged yet.",
		}, func() float64 {
			n := 0
			for _, a := range svc.IntegrityAnomalies(nil) {
				if !a.Acknowledged {
					n++
				}
			}
			return float64(n)
		}),
	)
}
