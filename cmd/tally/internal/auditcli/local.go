package auditcli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
)

// SnapshotFile is the current-state projection's persisted state (the state database) in the
// data directory, as tally serve keeps it.
const SnapshotFile = projections.StateFile

// LegacySnapshotFile is the JSON snapshot earlier builds kept instead; tally serve reads it
// once when the state database has no checkpoint yet, then removes it.
const LegacySnapshotFile = "projection.json"

// Local says how replay and verify reach the data directly.
type Local struct {
	DataDir func() string
	// Open opens the event store of the given kind ("embedded": in the data directory, which
	// a running server holds locked; "kurrentdb": at kurrentURL).
	Open func(ctx context.Context, kind, kurrentURL string) (eventstore.Store, error)
	// InUse reports whether an error of Open says that another process (a running server)
	// holds the embedded store.
	InUse func(error) bool
}

type storeFlags struct {
	kind, kurrentURL string
}

func (s *storeFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&s.kind, "store", "embedded", "event store: embedded (in --data-dir) or kurrentdb (TALLY_STORE)")
	cmd.Flags().StringVar(&s.kurrentURL, "kurrentdb-url", "", "KurrentDB connection string, esdb://… (TALLY_KURRENTDB_URL)")
}

// inUse reports whether err says a running server holds the embedded store.
func (l Local) inUse(sf storeFlags, err error) bool {
	return sf.kind == "embedded" && l.InUse != nil && l.InUse(err)
}

// progress shows a progress bar on w when it is a terminal, and nothing otherwise.
func progress(w io.Writer, what string) (func(int), func()) {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil, func() {}
	}
	bar := progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("events"),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
	return func(n int) { _ = bar.Set64(int64(n)) }, func() { _ = bar.Finish() }
}

// NewReplayCommand is tally replay: rebuild the current-state projection from every event and
// write it as the new snapshot.
func NewReplayCommand(l Local) *cobra.Command {
	var sf storeFlags
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Rebuild the projection from the events into a fresh state and save it as the snapshot",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			store, err := l.Open(ctx, sf.kind, sf.kurrentURL)
			if l.inUse(sf, err) {
				// The running server keeps this snapshot itself and overwrites it.
				return fmt.Errorf("%w: tally replay writes the projection snapshot the running server keeps, so it runs on a stopped data directory; on a running server, tally verify checks the projection and tally readmodels rebuild rebuilds the read models", err)
			}
			if err != nil {
				return err
			}
			defer store.Close()
			tick, done := progress(cmd.ErrOrStderr(), "replaying")
			started := time.Now()
			path := filepath.Join(l.DataDir(), SnapshotFile)
			// The fold writes the applied layers into the new file as it goes, so that they
			// are never all in memory (docs/performance.md).
			st, err := projections.ReplayState(ctx, store, path, projections.ReplayOptions{Progress: tick})
			done()
			if err != nil {
				return err
			}
			took := time.Since(started)
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "replayed %d events in %s (%.0f events/s); %d data objects; snapshot at position %d written to %s\n",
				st.Events, took.Round(time.Millisecond), float64(st.Events)/took.Seconds(), len(st.Objects), st.Position, path)
			return err
		},
	}
	sf.register(cmd)
	return cmd
}

// NewVerifyCommand is tally verify: rebuild from the events, check every recorded value-after,
// and compare with the live projection. On a data directory a server holds (or with --online),
// the server runs it on a snapshot of its store while it serves (POST /admin/v1/verify);
// otherwise the store is opened here and compared with the persisted projection caught up to
// the store's head.
func NewVerifyCommand(l Local, c Client) *cobra.Command {
	var sf storeFlags
	var online, usage bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Rebuild from the events and compare with the live projection and each event's recorded value",
		Long: "Replays every event, checks each recorded value, and compares the replay with the projection.\n" +
			"While a server runs on --data-dir (or with --online), the server at --server does it on a consistent\n" +
			"snapshot of its store without stopping (docs/audit.md); otherwise the store is opened directly.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			if online {
				return verifyRemote(cmd, c, usage)
			}
			store, err := l.Open(ctx, sf.kind, sf.kurrentURL)
			if l.inUse(sf, err) {
				fmt.Fprintf(cmd.ErrOrStderr(), "a running server holds %s: asking it to verify (%s)\n", l.DataDir(), c.Server())
				return verifyRemote(cmd, c, usage)
			}
			if err != nil {
				return err
			}
			defer store.Close()
			if usage {
				return errors.New("--usage compares the running server's read model: it needs a running server (--online)")
			}
			tick, done := progress(cmd.ErrOrStderr(), "verifying")
			rebuilt, problems, err := projections.RebuildVerified(ctx, store, tick)
			done()
			if err != nil {
				return err
			}
			path := filepath.Join(l.DataDir(), SnapshotFile)
			live, err := projections.OpenStoredState(ctx, path)
			switch {
			case errors.Is(err, os.ErrNotExist):
				fmt.Fprintf(out, "no projection snapshot at %s: checked the events only\n", path)
			case err != nil:
				problems = append(problems, fmt.Sprintf("projection snapshot %s: %v", path, err))
			default:
				more, err := compareLive(ctx, store, live, rebuilt)
				err = errors.Join(err, live.Close())
				if err != nil {
					return err
				}
				problems = append(problems, more...)
			}
			for _, p := range problems {
				fmt.Fprintln(out, p)
			}
			if len(problems) > 0 {
				return fmt.Errorf("verify: %d difference(s)", len(problems))
			}
			_, err = fmt.Fprintf(out, "ok: %d events, %d data objects; every recorded value and the projection agree with the replay\n", rebuilt.Events, len(rebuilt.Objects))
			return err
		},
	}
	sf.register(cmd)
	cmd.Flags().BoolVar(&usage, "usage", false, "on a running server, also compare the usage read model's report (every object by month) with a replay of the store: one more replay")
	cmd.Flags().BoolVar(&online, "online", false, "ask the server at --server to verify itself while it serves (the default when a server holds --data-dir)")
	return cmd
}

// compareLive catches the persisted projection up with the store, as tally serve would on
// start, and lists how it differs from the replay ("live vs replay"). Its applied layers stay
// in the state database and are compared in one pass over it.
func compareLive(ctx context.Context, store eventstore.Store, live *projections.StoredState, rebuilt *state.State) ([]string, error) {
	ok, err := projections.CheckpointInStore(ctx, store, live.State)
	if err != nil {
		return nil, err
	}
	if !ok {
		return []string{fmt.Sprintf("projection: checkpoint %d is not an event of this store", live.State.Position)}, nil
	}
	if err := projections.CatchUp(ctx, store, live.State); err != nil {
		return nil, err
	}
	if err := live.State.LayerError(); err != nil {
		return nil, fmt.Errorf("projection snapshot: applied-layer index: %w", err)
	}
	diff, err := live.Diff(ctx, rebuilt)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(diff))
	for _, d := range diff {
		out = append(out, "projection vs replay: "+d)
	}
	return out, nil
}
