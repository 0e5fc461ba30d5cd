package auditcli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tallyledger/tally/adapters/auditapi"
	"github.com/tallyledger/tally/adapters/httpapi"
)

// auditLine is one line of the server's answer to an audit job (httpapi's admin_audit.go).
type auditLine struct {
	Progress *httpapi.AuditProgress `json:"progress"`
	Result   json.RawMessage        `json:"result"`
	Error    string                 `json:"error"`
}

// stream posts to an audit job of the admin API and hands each progress line to onProgress;
// it returns the result line, or the server's refusal or error.
func (c Client) stream(ctx context.Context, path string, onProgress func(httpapi.AuditProgress)) (json.RawMessage, error) {
	token, err := c.AdminToken()
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(strings.TrimRight(c.Server(), "/") + path)
	if err != nil {
		return nil, fmt.Errorf("--server: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	hc := c.HTTP
	if hc == nil && c.NewLongHTTP != nil {
		if hc, err = c.NewLongHTTP(); err != nil {
			return nil, err
		}
	}
	if hc == nil {
		hc = &http.Client{} // the job takes as long as the store is large: no overall timeout
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask the server at %s: %w", c.Server(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var e auditapi.ErrorBody
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("server: %s (%s)", e.Error, resp.Status)
		}
		return nil, fmt.Errorf("server: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 256<<20) // a result lists every difference
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return nil, fmt.Errorf("decode the server's answer: %w", err)
		}
		switch {
		case l.Error != "":
			return nil, fmt.Errorf("server: %s", l.Error)
		case l.Result != nil:
			return l.Result, nil
		case l.Progress != nil && onProgress != nil:
			onProgress(*l.Progress)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read the server's answer: %w", err)
	}
	return nil, errors.New("the server's answer ended without a result (was it stopped?)")
}

// verifyRemote is tally verify run by the server (POST /admin/v1/verify): the way to verify
// while it serves.
func verifyRemote(cmd *cobra.Command, c Client, usage bool) error {
	out := cmd.OutOrStdout()
	tick, done := progress(cmd.ErrOrStderr(), "verifying in the server")
	path := "/admin/v1/verify"
	if usage {
		path += "?usage=true"
	}
	raw, err := c.stream(cmd.Context(), path, func(p httpapi.AuditProgress) {
		if tick != nil {
			tick(int(p.Events))
		}
	})
	done()
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	var r httpapi.VerifyResult
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("verify: decode the server's result: %w", err)
	}
	fmt.Fprintf(out, "verified in the server at %s: the %d events up to position %d (the store's head as it started), replayed in %s (%.0f events/s), then compared with the live projection at position %d (held still %s, %d events folded meanwhile)\n",
		c.Server(), r.ReplayEvents, r.Head, seconds(r.ReplaySeconds), float64(r.ReplayEvents)/max(r.ReplaySeconds, 1e-9), r.Position, seconds(r.PausedSeconds), r.PausedEvents)
	for _, p := range r.Problems {
		fmt.Fprintln(out, p)
	}
	if !r.OK {
		return fmt.Errorf("verify: %d difference(s)", len(r.Problems))
	}
	_, err = fmt.Fprintf(out, "ok: %d events, %d data objects; every recorded value, the live projection and the read model's checkpoint agree with the replay\n", r.Events, r.Objects)
	return err
}

func seconds(s float64) string {
	return (time.Duration(s * float64(time.Second))).Round(time.Millisecond).String()
}

// NewReadModelsCommand is tally readmodels: what an operator does with the read models of a
// running server.
func NewReadModelsCommand(c Client) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "readmodels",
		Short: "Manage the server's read models (usage reports, values as of a time)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "rebuild",
		Short: "Rebuild the usage read model from every event while the server runs, then swap it in",
		Long: "Asks the server at --server (POST /admin/v1/readmodels/rebuild) to fold every event into a fresh read model\n" +
			"beside the live one; the live one goes on answering until the fresh one has caught up and takes its place.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tick, done := progress(cmd.ErrOrStderr(), "rebuilding in the server")
			raw, err := c.stream(cmd.Context(), "/admin/v1/readmodels/rebuild", func(p httpapi.AuditProgress) {
				if tick != nil {
					tick(int(p.Position))
				}
			})
			done()
			if err != nil {
				return fmt.Errorf("readmodels rebuild: %w", err)
			}
			var r httpapi.RebuildResult
			if err := json.Unmarshal(raw, &r); err != nil {
				return fmt.Errorf("readmodels rebuild: decode the server's result: %w", err)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "rebuilt the usage read model in the server at %s: %d events in %s (%.0f events/s); it replaced the live one at position %d (queries waited %s for the swap)\n",
				c.Server(), r.Events, seconds(r.Seconds), float64(r.Events)/max(r.Seconds, 1e-9), r.Position, seconds(r.SwapSeconds))
			return err
		},
	})
	return cmd
}
