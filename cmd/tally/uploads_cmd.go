package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
)

// newUploadsCommand is `tally uploads`: list uploads and refused logs, resolve a refused log.
func newUploadsCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "uploads", Short: "List uploads and refused logs; resolve a stuck log (admin API)"}
	var state, key, format string
	var product int64
	list := &cobra.Command{
		Use:   "list [--state committed|aborted|pending|refused|anomaly] [--key K | --product P] [--format table|json]",
		Short: "List the uploads and refused log versions recorded on the owners' upload streams",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "table" && format != "json" {
				return fmt.Errorf("--format is table or json, not %q", format)
			}
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			recs, err := c.ListUploads(cmd.Context(), state, key, product)
			if err != nil {
				return err
			}
			if format == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(recs)
			}
			return writeUploadTable(cmd, recs)
		},
	}
	lf := list.Flags()
	lf.StringVar(&state, "state", "", "only records in this state: committed, aborted, pending, refused or anomaly")
	lf.StringVar(&key, "key", "", "only the uploads of this license key (id or key string)")
	lf.Int64Var(&product, "product", 0, "only the uploads of this product (as owner)")
	lf.StringVar(&format, "format", "table", "table or json")

	var req httpapi.ResolveUploadRequest
	var inChunks, skipEntries bool
	resolve := &cobra.Command{
		Use:   "resolve [REFUSAL-ID | --key K | --product P] (--in-chunks | --skip-entries) --reason TEXT [--by NAME]",
		Short: "Decide how a refused (stuck) log is applied; carried out on its next upload",
		Long: "Decide how a refused log is applied, with a required reason recorded with the decision.\n\n" +
			"--in-chunks applies the log's new entries oldest first in all-or-nothing chunks of at most\n" +
			"1000 (for a log refused for more than 1000 new entries). --skip-entries applies every new\n" +
			"entry except those that break a rule (an unknown or removed object, the feature lock, the\n" +
			"int32 range, a direction the token may not change), which are recorded as skipped and never\n" +
			"counted. The decision is carried out when the License Server next uploads that log or a\n" +
			"newer version, which it does by itself (docs/uploads.md).",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case inChunks == skipEntries:
				return errors.New("choose one of --in-chunks and --skip-entries")
			case inChunks:
				req.Mode = domain.ResolveInChunks
			default:
				req.Mode = domain.ResolveSkipEntries
			}
			if len(args) == 1 {
				req.RefusalID = args[0]
			}
			if strings.TrimSpace(req.Reason) == "" {
				return errors.New("--reason is required")
			}
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			d, err := c.ResolveUpload(cmd.Context(), req)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "resolution %s: %s of refused log %s (newest layer %s), decided by %s; carried out on the next upload\n",
				d.ResolutionID, d.Mode, d.RefusalID, d.NewestLayer, d.DecidedBy)
			return err
		},
	}
	rf := resolve.Flags()
	rf.BoolVar(&inChunks, "in-chunks", false, "apply the new entries in all-or-nothing chunks of at most 1000")
	rf.BoolVar(&skipEntries, "skip-entries", false, "apply every new entry except the offending ones, recorded as skipped")
	rf.StringVar(&req.Reason, "reason", "", "why (required; recorded with the decision)")
	rf.StringVar(&req.DecidedBy, "by", "", "your name, recorded with the decision (default \"admin\")")
	rf.StringVar(&req.Key, "key", "", "the refused log of this license key (id or key string)")
	rf.Int64Var(&req.ProductID, "product", 0, "the refused log of this product (as owner)")
	cmd.AddCommand(list, resolve)
	return cmd
}

func writeUploadTable(cmd *cobra.Command, recs []ledger.UploadRecord) error {
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "OWNER\tSTATE\tID\tAT\tENTRIES\tDETAIL")
	for _, r := range recs {
		entries := r.Entries
		var detail string
		switch r.State {
		case ledger.UploadStateRefused:
			entries = r.NewEntries
			detail = fmt.Sprintf("%s: %s", r.Reason, r.Message)
			if r.Offending != nil {
				detail += fmt.Sprintf(" first offending: layer %.12s… object %d amount %d", r.Offending.Layer, r.Offending.ObjectID, r.Offending.Amount)
			}
			if r.Repeats > 0 {
				detail += fmt.Sprintf("; refused %d more times", r.Repeats)
			}
			if r.Open {
				detail += "; STUCK"
			} else {
				detail += "; cleared"
			}
			for _, d := range r.Resolutions {
				detail += fmt.Sprintf("; %s decided by %s (%s)", d.Mode, d.DecidedBy, d.Reason)
			}
		case ledger.UploadStateAborted:
			detail = r.AbortReason
		case ledger.UploadStateAnomaly:
			entries = r.NewEntries
			if a := r.Anomaly; a != nil {
				detail = fmt.Sprintf("layer %.12s… differs (%s): applied digest %.12s…, seen %.12s…; policy %s",
					a.Layer, strings.Join(a.Differs, ","), a.AppliedDigest, a.SeenDigest, a.Policy)
			}
			if r.Acknowledged {
				detail += "; acknowledged (" + r.Reason + ")"
			} else {
				detail += "; NOT ACKNOWLEDGED"
			}
		}
		if len(r.Skipped) > 0 {
			detail += fmt.Sprintf("%d entries skipped", len(r.Skipped))
		}
		if r.Resolution != nil {
			detail += " (resolution " + r.Resolution.String() + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", r.Owner, r.State, r.ID, r.At.UTC().Format(time.RFC3339), entries, strings.TrimSpace(detail))
	}
	return tw.Flush()
}
