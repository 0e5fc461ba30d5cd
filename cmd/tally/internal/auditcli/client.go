// Package auditcli holds the audit commands of the tally CLI: history, value, usage and
// correct, which ask a running server's audit API with the admin credential; verify, which
// asks the running server to verify itself or, with no server on the data directory (or on
// KurrentDB), opens the store directly and folds its events; readmodels rebuild (in the
// server); and replay, which opens a stopped data directory (or KurrentDB). cmd/tally wires
// them to its global flags.
package auditcli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tallyledger/tally/adapters/auditapi"
	"github.com/tallyledger/tally/projections"
)

// Client says how the client commands reach the server; the functions are called when a
// command runs, after flags are parsed.
type Client struct {
	Server     func() string
	AdminToken func() (string, error)
	// HTTP is the client used (default: one with a 5-minute timeout, as a usage report whose
	// bounds are off the 15-minute grid still replays the whole store).
	HTTP *http.Client
	// NewHTTP, if set and HTTP is not, makes the client when a command runs (after flags such
	// as --ca-cert are parsed).
	NewHTTP func() (*http.Client, error)
	// NewLongHTTP, if set and HTTP is not, makes the client of the audit jobs (verify, rebuild),
	// which take as long as the store is large: no overall timeout.
	NewLongHTTP func() (*http.Client, error)
}

// call sends a request to the audit API and decodes a JSON answer into out (unless nil), or
// returns the server's error.
func (c Client) call(ctx context.Context, method, path string, query url.Values, body any, out any) error {
	token, err := c.AdminToken()
	if err != nil {
		return err
	}
	u, err := url.Parse(strings.TrimRight(c.Server(), "/") + path)
	if err != nil {
		return fmt.Errorf("--server: %w", err)
	}
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil && c.NewHTTP != nil {
		if hc, err = c.NewHTTP(); err != nil {
			return err
		}
	}
	if hc == nil {
		hc = &http.Client{Timeout: 5 * time.Minute}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("ask the server: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<30))
	if err != nil {
		return fmt.Errorf("read the server's answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e auditapi.ErrorBody
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("server: %s (%s)", e.Error, resp.Status)
		}
		return fmt.Errorf("server: %s", resp.Status)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decode the server's answer: %w", err)
	}
	return nil
}

func objectPath(id int64, what string) string {
	return "/v1/dataobjects/" + strconv.FormatInt(id, 10) + "/" + what
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func checkFormat(format string, allowed ...string) error {
	for _, a := range allowed {
		if format == a {
			return nil
		}
	}
	return fmt.Errorf("--format %q: want %s", format, strings.Join(allowed, ", "))
}

// NewHistoryCommand is tally history --object ID.
func NewHistoryCommand(c Client) *cobra.Command {
	var id int64
	var format string
	cmd := &cobra.Command{
		Use:   "history --object ID",
		Short: "Show every event of a data object, with who made it and its upload's status",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format, "table", "json"); err != nil {
				return err
			}
			var h projections.ObjectHistory
			if err := c.call(cmd.Context(), http.MethodGet, objectPath(id, "history"), nil, nil, &h); err != nil {
				return err
			}
			if format == "json" {
				return writeJSON(cmd.OutOrStdout(), h)
			}
			return writeHistoryTable(cmd.OutOrStdout(), &h)
		},
	}
	cmd.Flags().Int64Var(&id, "object", 0, "data object id")
	cmd.Flags().StringVar(&format, "format", "table", "output: table or json")
	_ = cmd.MarkFlagRequired("object")
	return cmd
}

func writeHistoryTable(w io.Writer, h *projections.ObjectHistory) error {
	fmt.Fprintf(w, "data object %d %q, owner %s\n", h.ObjectID, h.Name, h.Owner)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REV\tRECORDED\tTYPE\tAMOUNT\tBEFORE\tAFTER\tTIME\tUPLOAD\tNOTE\tBY\tREQUEST")
	opt := func(v *int32) string {
		if v == nil {
			return ""
		}
		return strconv.FormatInt(int64(*v), 10)
	}
	for _, e := range h.Entries {
		amount := ""
		if e.Amount != 0 {
			amount = fmt.Sprintf("%+d", e.Amount)
		}
		at := e.At.UTC().Format(time.RFC3339)
		upload := ""
		if e.LogTimestamp != nil {
			at = e.LogTimestamp.UTC().Format(time.RFC3339) + " (log)"
			upload = fmt.Sprintf("%s %s layer %.12s", e.UploadStatus, e.UploadID, e.Layer)
		}
		var notes []string
		if e.Correction != "" {
			notes = append(notes, "correction: "+e.Correction)
		}
		if e.Anomaly != "" {
			notes = append(notes, "anomaly: "+e.Anomaly)
		}
		for _, id := range e.IntegrityAnomalies {
			notes = append(notes, "integrity anomaly "+id.String())
		}
		if !e.Counted {
			notes = append(notes, "not counted")
		}
		by := "admin"
		if e.TokenID != nil {
			by = "token " + e.TokenID.String()
		} else if !e.Admin {
			by = "system"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Revision, e.Recorded.UTC().Format(time.RFC3339Nano), e.Type,
			amount, opt(e.Before), opt(e.After), at, upload, strings.Join(notes, "; "), by, e.RequestID)
	}
	return tw.Flush()
}

// NewValueCommand is tally value --object ID --at T.
func NewValueCommand(c Client) *cobra.Command {
	var id int64
	var at, format string
	cmd := &cobra.Command{
		Use:   "value --object ID [--at RFC3339]",
		Short: "Show a data object's value as of a time (default now)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format, "text", "json"); err != nil {
				return err
			}
			q := url.Values{}
			if at != "" {
				if _, err := time.Parse(time.RFC3339Nano, at); err != nil {
					return fmt.Errorf("--at %q: want an RFC 3339 time", at)
				}
				q.Set("at", at)
			}
			var v projections.ValueAsOf
			if err := c.call(cmd.Context(), http.MethodGet, objectPath(id, "value"), q, nil, &v); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch {
			case format == "json":
				return writeJSON(out, v)
			case !v.Exists:
				_, err := fmt.Fprintf(out, "data object %d did not exist at %s\n", v.ObjectID, v.At.Format(time.RFC3339Nano))
				return err
			default:
				removed := ""
				if v.Removed {
					removed = " (removed)"
				}
				_, err := fmt.Fprintf(out, "data object %d at %s: %d%s\n", v.ObjectID, v.At.Format(time.RFC3339Nano), v.IntValue, removed)
				return err
			}
		},
	}
	cmd.Flags().Int64Var(&id, "object", 0, "data object id")
	cmd.Flags().StringVar(&at, "at", "", "the time, RFC 3339 (default now)")
	cmd.Flags().StringVar(&format, "format", "text", "output: text or json")
	_ = cmd.MarkFlagRequired("object")
	return cmd
}

// NewUsageCommand is tally usage --from --to.
func NewUsageCommand(c Client) *cobra.Command {
	var from, to, tz, by, product, key, object, format, axis string
	cmd := &cobra.Command{
		Use:   "usage --from DATE --to DATE",
		Short: "Report usage per key, data object and period, from the events' usage read model",
		Long: `Report usage per license key, data object and hour, day or month, from the server's usage read model
(15-minute buckets folded once from the events; bounds off the 15-minute grid are replayed).
--from and --to are dates (YYYY-MM-DD in --tz; --to is inclusive) or RFC 3339 instants (--to exclusive).
--time usage counts each change when the usage happened (log timestamps for uploads); --time recorded
when the ledger recorded it (for uploads: their commit). See docs/audit.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(format, "table", "csv", "json"); err != nil {
				return err
			}
			q := url.Values{"from": {from}, "to": {to}, "tz": {tz}, "by": {by}, "time": {axis}}
			if product != "" {
				q.Set("product", product)
			}
			if key != "" {
				q.Set("key", key)
			}
			if object != "" {
				q.Set("object", object)
			}
			var rep projections.UsageReport
			if err := c.call(cmd.Context(), http.MethodGet, "/v1/usage", q, nil, &rep); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch format {
			case "json":
				return writeJSON(out, rep)
			case "csv":
				return auditapi.WriteUsageCSV(out, &rep)
			}
			return writeUsageTable(out, &rep)
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "start: YYYY-MM-DD (in --tz) or RFC 3339")
	f.StringVar(&to, "to", "", "end: YYYY-MM-DD (inclusive, in --tz) or RFC 3339 (exclusive)")
	f.StringVar(&tz, "tz", "UTC", "time zone of dates and periods, e.g. Europe/Stockholm")
	f.StringVar(&by, "by", "day", "period: hour, day or month")
	f.StringVar(&product, "product", "", "only objects of this product id")
	f.StringVar(&key, "key", "", "only objects of this license key (id or key string)")
	f.StringVar(&object, "object", "", "only this data object (id)")
	f.StringVar(&axis, "time", "usage", "time axis: usage (when it happened) or recorded (when the ledger recorded it)")
	f.StringVar(&format, "format", "table", "output: table, csv or json")
	_ = cmd.MarkFlagRequired("from")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

func writeUsageTable(w io.Writer, rep *projections.UsageReport) error {
	fmt.Fprintf(w, "usage %s to %s (%s, by %s, %s time)\n", rep.From.Format(time.RFC3339), rep.To.Format(time.RFC3339), rep.TimeZone, rep.By, rep.Axis)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PERIOD\tPRODUCT\tKEY\tOBJECT\tNAME\tOPENING\tINCREMENTS\tDECREMENTS\tCORRECTIONS\tNET\tENTRIES\tSETS\tADJUSTMENTS\tCLOSING\t")
	for _, r := range rep.Rows {
		rec := auditapi.UsageCSVRecord(r)
		key := rec[5]
		if key == "" && r.KeyID != 0 {
			key = rec[4]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", rec[0], rec[3], key, rec[8], rec[9],
			rec[10], rec[11], rec[12], rec[13], rec[14], rec[15], rec[16], rec[17], rec[18])
	}
	return tw.Flush()
}

// NewCorrectCommand is tally correct --object ID --amount N --reason TEXT.
func NewCorrectCommand(c Client) *cobra.Command {
	var id, amount int64
	var reason string
	cmd := &cobra.Command{
		Use:   "correct --object ID --amount N --reason TEXT",
		Short: "Append a compensating change (positive or negative) with its reason",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if strings.TrimSpace(reason) == "" {
				return errors.New("--reason: a correction needs a reason")
			}
			if amount == 0 {
				return errors.New("--amount: a correction changes the value by a non-zero amount")
			}
			var e projections.HistoryEntry
			body := auditapi.CorrectionRequest{Amount: amount, Reason: reason}
			if err := c.call(cmd.Context(), http.MethodPost, objectPath(id, "corrections"), nil, body, &e); err != nil {
				return err
			}
			after := ""
			if e.Before != nil && e.After != nil {
				after = fmt.Sprintf(": %d -> %d", *e.Before, *e.After)
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "corrected data object %d by %+d%s (revision %d, %s)\n", id, e.Amount, after, e.Revision, e.Type)
			return err
		},
	}
	cmd.Flags().Int64Var(&id, "object", 0, "data object id")
	cmd.Flags().Int64Var(&amount, "amount", 0, "change to apply (negative to subtract)")
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded with the event)")
	for _, f := range []string{"object", "amount", "reason"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}
