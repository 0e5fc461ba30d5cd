package main

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"time"

	"github.com/spf13/cobra"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/cmd/tally/internal/historygen"
	"github.com/tallyledger/tally/cmd/tally/internal/loadgen"
)

// benchConfig is what tally bench is configured with, beyond the load itself.
type benchConfig struct {
	Target    string
	BenchDir  string // the in-process server\'s data directory ("": a temporary one)
	PublicKey string
	Format    string
	RSAProbe  time.Duration
	Quiet     bool
	CPUProf   string
	MemProf   string
	// DecodeWorkers and BusyDecodeWorkers size the in-process server's decode pool.
	DecodeWorkers, BusyDecodeWorkers int
	Events                           int    // --workload history: events to write
	Seed                             uint64 // --workload history
	// AllowTestData lets a run with --target write into a ledger that already holds data.
	AllowTestData bool
}

// workloadHistory is tally bench --workload history: no server, a generated ledger.
const workloadHistory = "history"

func newBenchCommand(g *globalFlags) *cobra.Command {
	var bc benchConfig
	var lc loadgen.Config
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Drive a Tally server with concurrent clients and report throughput, latency and a data check",
		Long: `bench provisions a product, keys, a token and data objects through the admin API, then drives
the server with concurrent clients: IncrementIntValueToKey calls, UploadValuesToKey with usage
logs written before the clock starts, or a mix. It reports requests/s, entries/s and latency
percentiles, and checks at the end that every acknowledged change is in the final values; a
run that lost data exits non-zero.

--workload history writes a realistic year of ledger history (uploads with backdated log
timestamps, direct increments and decrements, corrections, sets, removals; 1,000 keys and 10,000
data objects from a million events on; one hot object with a tenth of the events) straight into
the embedded store of --bench-dir, through its append API in the store's bulk-load mode (no
fsync per commit, the pages written straight into the database file, the stream index built
once at the end, everything synced once at the end), and leaves a data directory that tally serve --data-dir opens as is (admin token in
admin.token); the time reported includes that final sync. It reports events/s. A run that is
interrupted leaves a directory to delete, not one to serve. The usage read model is not built:
tally serve builds it from the events when it starts (see docs/performance.md for how long).

Without --target it starts a server in this process on the embedded store, in a temporary
directory or in --bench-dir when that is given; it then fakes the uploads' history by writing
the events an earlier upload of it would have left (see --history). With --target it drives a
running server; uploads then need its public key (--public-key), and a history is written as
real layers and uploaded first, which costs O(n²) AES in its length. A run with --target
refuses a ledger that already holds products, keys or tokens unless --allow-test-data is
given, and at the end removes the data objects it created and revokes its token (a ledger
keeps every event, so their history stays; the test product and its keys stay too).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(cmd, g, bc, lc)
		},
	}
	f := cmd.Flags()
	f.StringVar(&bc.Target, "target", "", "base URL of a running server's public listener to drive, its admin listener being --server (default: start one in-process)")
	f.StringVar(&bc.PublicKey, "public-key", "", "the target's RSA public key (PEM or XML), for uploads")
	f.StringVar(&bc.BenchDir, "bench-dir", "", "data directory of the in-process server (default: a temporary one; never the server's --data-dir, which the benchmark would fill with test data)")
	f.StringVar(&bc.Format, "format", "table", "report format: table or json")
	f.DurationVar(&bc.RSAProbe, "rsa-probe", time.Second, "measure the raw RSA-2048 decrypt rate of all cores for this long (0: skip)")
	f.BoolVar(&bc.Quiet, "quiet", false, "no progress lines on stderr")
	f.BoolVar(&bc.AllowTestData, "allow-test-data", false, "with --target: write the benchmark's product, keys, token and data objects into a ledger that already holds data")
	f.StringVar(&bc.CPUProf, "cpuprofile", "", "write a CPU profile of the timed phase (server and clients) to this file")
	f.StringVar(&bc.MemProf, "memprofile", "", "write an allocation profile, taken after the timed phase, to this file")
	f.IntVar(&bc.DecodeWorkers, "decode-workers", 0, "in-process server: usage logs decoded at once (0: one per processor)")
	f.IntVar(&bc.BusyDecodeWorkers, "decode-workers-busy", 0, "in-process server: usage logs decoded at once while increments run (0: half the processors)")
	f.StringVar(&lc.Workload, "workload", loadgen.WorkloadIncrement, "increment, upload, mix, or history (write a year of ledger history into --bench-dir, see --events)")
	f.IntVar(&bc.Events, "events", 1000000, "--workload history: about how many events to write")
	f.Uint64Var(&bc.Seed, "seed", 1, "--workload history: seed of the generated history")
	f.IntVar(&lc.Clients, "clients", 64, "concurrent clients (--workload history: concurrent generators, default 8)")
	f.DurationVar(&lc.Duration, "duration", 0, "length of the timed phase (0: until --requests and --uploads are done)")
	f.IntVar(&lc.Requests, "requests", 0, "number of increment calls (0: until --duration ends)")
	f.IntVar(&lc.Objects, "objects", 0, "data objects the increment clients share (default: one per client)")
	f.IntVar(&lc.Uploads, "uploads", 0, "usage logs to upload, each to a key of its own (default: 2 per uploading client)")
	f.IntVar(&lc.NewEntries, "new-entries", 1000, "new entries per upload")
	f.IntVar(&lc.History, "history", 0, "older, already applied entries in each uploaded file")
	f.BoolVar(&lc.CompareFresh, "compare-fresh", false, "make every other upload a fresh file (no history) and report both kinds; use with --clients 1")
	f.IntVar(&lc.ObjectsPerUpload, "objects-per-upload", 4, "data objects each upload's entries spread over")
	f.IntVar(&lc.UploadClients, "upload-clients", 0, "clients that upload in the mix (default: one in eight)")
	return cmd
}

func runBench(cmd *cobra.Command, g *globalFlags, bc benchConfig, lc loadgen.Config) error {
	ctx := cmd.Context()
	if bc.Format != "table" && bc.Format != "json" {
		return fmt.Errorf("--format %q: want table or json", bc.Format)
	}
	if lc.Workload == workloadHistory {
		workers := 0 // the generator's default
		if cmd.Flags().Changed("clients") {
			workers = lc.Clients
		}
		return runHistory(cmd, bc, workers)
	}
	progress := func(format string, args ...any) {
		if !bc.Quiet {
			fmt.Fprintf(cmd.ErrOrStderr(), "bench: "+format+"\n", args...)
		}
	}
	lc.Progress = progress
	var profErr error
	lc.AroundTimed = func() func() {
		stop, err := startProfiles(bc.CPUProf, bc.MemProf)
		if err != nil {
			profErr = err
			return func() {}
		}
		return func() { profErr = stop() }
	}
	var rsaKey *rsa.PrivateKey
	var extra func() []loadgen.ExtraLine
	if bc.Target != "" {
		token, err := g.adminToken()
		if err != nil {
			return err
		}
		// --target names the public listener; the admin listener is --server's.
		lc.URL, lc.AdminURL, lc.AdminToken, lc.RemoveObjects = bc.Target, g.Server, token, true
		if !bc.AllowTestData {
			if err := refuseLedgerWithData(ctx, httpapi.NewAdminClient(g.Server, token, nil)); err != nil {
				return err
			}
		}
		if bc.PublicKey != "" {
			b, err := os.ReadFile(bc.PublicKey)
			if err != nil {
				return fmt.Errorf("--public-key: %w", err)
			}
			if lc.PublicKey, err = usagelog.ParsePublicKey(b); err != nil {
				return fmt.Errorf("--public-key: %w", err)
			}
		}
	} else {
		dir := bc.BenchDir
		if dir == "" {
			tmp, err := os.MkdirTemp("", "tally-bench-")
			if err != nil {
				return fmt.Errorf("bench data directory: %w", err)
			}
			defer os.RemoveAll(tmp)
			dir = tmp
		}
		srv, err := loadgen.StartEmbedded(ctx, loadgen.ServerOptions{Dir: dir, DecodeWorkers: bc.DecodeWorkers, BusyDecodeWorkers: bc.BusyDecodeWorkers})
		if err != nil {
			return err
		}
		defer func() {
			if err := srv.Close(); err != nil {
				progress("stopping the server: %v", err)
			}
		}()
		progress("started a server on the embedded store in %s at %s", dir, srv.URL)
		lc.URL, lc.AdminToken, lc.PublicKey, lc.SeedHistory = srv.URL, srv.AdminToken, srv.Keys.Public(), srv.SeedHistory
		rsaKey = srv.Keys.Current()
		before := srv.Embedded.Stats()
		extra = func() []loadgen.ExtraLine {
			after := srv.Embedded.Stats()
			appends, batches := after.Appends-before.Appends, after.Batches-before.Batches
			mean := 0.0
			if batches > 0 {
				mean = float64(appends) / float64(batches)
			}
			return []loadgen.ExtraLine{{Name: "group commits (whole run)", Value: fmt.Sprintf("%d appends in %d commits, %.1f per commit, largest %d", appends, batches, mean, after.MaxBatchSize)}}
		}
	}
	rep, runErr := loadgen.Run(ctx, lc)
	if runErr != nil && rep.Workload == "" {
		return runErr
	}
	if bc.RSAProbe > 0 {
		progress("measuring the raw RSA-2048 decrypt rate for %s", bc.RSAProbe)
		rate, err := loadgen.MeasureRSA(ctx, rsaKey, bc.RSAProbe)
		if err != nil {
			return err
		}
		rep.RSA = &rate
	}
	if extra != nil {
		rep.Extra = append(rep.Extra, extra()...)
	}
	var werr error
	if bc.Format == "json" {
		werr = rep.WriteJSON(cmd.OutOrStdout())
	} else {
		werr = rep.WriteTable(cmd.OutOrStdout())
	}
	return errors.Join(runErr, werr, profErr)
}

// startProfiles starts a CPU profile to cpuPath (if not empty); the returned func stops it and
// writes the allocation profile to memPath (if not empty).
func startProfiles(cpuPath, memPath string) (func() error, error) {
	var cpu *os.File
	if cpuPath != "" {
		f, err := os.Create(cpuPath)
		if err != nil {
			return nil, fmt.Errorf("--cpuprofile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("--cpuprofile: %w", err)
		}
		cpu = f
	}
	return func() error {
		var errs []error
		if cpu != nil {
			pprof.StopCPUProfile()
			errs = append(errs, cpu.Close())
		}
		if memPath != "" {
			f, err := os.Create(memPath)
			if err != nil {
				return fmt.Errorf("--memprofile: %w", err)
			}
			errs = append(errs, pprof.Lookup("allocs").WriteTo(f, 0), f.Close())
		}
		return errors.Join(errs...)
	}, nil
}

// refuseLedgerWithData refuses a target whose ledger already holds products, keys or tokens:
// the benchmark writes a product, keys, a token and data objects, and a ledger never forgets,
// so pointed at a production server by mistake it would leave test data among the vendor's.
func refuseLedgerWithData(ctx context.Context, admin *httpapi.AdminClient) error {
	products, err := admin.ListProducts(ctx)
	if err != nil {
		return fmt.Errorf("--target: %w", err)
	}
	keys, err := admin.ListKeys(ctx, 0)
	if err != nil {
		return fmt.Errorf("--target: %w", err)
	}
	tokens, err := admin.ListTokens(ctx)
	if err != nil {
		return fmt.Errorf("--target: %w", err)
	}
	if len(products)+len(keys)+len(tokens) > 0 {
		return fmt.Errorf("--target: the ledger already holds data (%d products, %d keys, %d tokens); "+
			"bench writes a test product, keys, a token and data objects, whose events a ledger keeps for good: "+
			"run it against a server of its own, or pass --allow-test-data to write into this one anyway",
			len(products), len(keys), len(tokens))
	}
	return nil
}

// runHistory is tally bench --workload history.
func runHistory(cmd *cobra.Command, bc benchConfig, workers int) error {
	if bc.BenchDir == "" {
		return errors.New("--workload history: --bench-dir names the data directory to write (it must not hold a store yet)")
	}
	if bc.Target != "" {
		return errors.New("--workload history writes a data directory; it drives no server (--target)")
	}
	progress := func(format string, args ...any) {
		if !bc.Quiet {
			fmt.Fprintf(cmd.ErrOrStderr(), "bench: "+format+"\n", args...)
		}
	}
	// The generator's garbage is short-lived and its live heap small (a few hundred MB at 10M
	// events): collecting four times less often took about a tenth off its CPU time at 2M
	// events (docs/performance.md). The command owns the process, so it may set this.
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	stop, err := startProfiles(bc.CPUProf, bc.MemProf)
	if err != nil {
		return err
	}
	res, err := historygen.Generate(cmd.Context(), historygen.Config{Dir: bc.BenchDir, Events: bc.Events, Seed: bc.Seed, Workers: workers, Progress: progress})
	if perr := stop(); err == nil {
		err = perr
	}
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if bc.Format == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			historygen.Result
			EventsPerSecond float64 `json:"eventsPerSecond"`
		}{res, res.EventsPerSecond()})
	}
	_, err = fmt.Fprintf(out, "history: %d events in %s (%.0f events/s, %d commits): %d keys, %d data objects, hot object %d with %d events, %d uploads (%d aborted), %d removed\ndata directory %s (admin token in %s)\n",
		res.Events, res.Took.Round(time.Millisecond), res.EventsPerSecond(), res.Commits, res.Keys, res.Objects, res.HotObject, res.HotEvents, res.Uploads, res.Aborted, res.Removed,
		bc.BenchDir, filepath.Join(bc.BenchDir, historygen.AdminTokenFile))
	return err
}
