// Package loadgen is the engine of `tally bench`: it provisions a product, keys, a token and
// data objects on a Tally server through its admin and Cryptolens APIs, drives the server with
// concurrent clients (IncrementIntValueToKey calls, UploadValuesToKey with freshly written usage
// logs, or a mix), measures throughput and latency, and checks at the end that every
// acknowledged change is in the final values. It can also start a server in-process on the
// embedded store (StartEmbedded).
package loadgen

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tallyledger/tally/adapters/httpapi"
)

// Workloads.
const (
	WorkloadIncrement = "increment"
	WorkloadUpload    = "upload"
	WorkloadMix       = "mix"
)

// HistorySeeder makes the server know an applied layer at a depth for a license key, as if an
// earlier upload had applied a file of that many entries. Only an in-process server can do it
// (it writes the events an upload would); it lets a run upload on top of a long history
// without building one (building a real file of n layers costs O(n²) AES).
type HistorySeeder func(ctx context.Context, keyID int64, layer [32]byte, depth int64, timestamp int64) error

// Config describes one run.
type Config struct {
	// URL is the server's base URL (its public listener); AdminToken its admin credential.
	URL        string
	AdminToken string
	// AdminURL is the base URL of the server's admin listener (default URL: a server with
	// both on one handler, such as the in-process one).
	AdminURL string
	// HTTP is the client for provisioning and the final data check (nil: one sized for
	// Clients). The timed phase's calls go through a fasthttp client of their own (timed.go).
	HTTP *http.Client

	// Workload is WorkloadIncrement, WorkloadUpload or WorkloadMix.
	Workload string
	// Clients is the number of concurrent clients (default 64).
	Clients int
	// Duration bounds the timed phase (0: until Requests and the prepared uploads are done).
	Duration time.Duration
	// Requests bounds the number of increment calls (0: until Duration ends).
	Requests int
	// Objects is how many data objects the increment clients share (default: one per client).
	Objects int

	// PublicKey is the server's current RSA public key, for writing usage logs.
	PublicKey *rsa.PublicKey
	// Uploads is the number of usage logs prepared before the clock starts; each goes to a key of
	// its own, so every upload sees the same history (default 2 × upload clients).
	Uploads int
	// NewEntries is the number of new entries in each upload (default 1000).
	NewEntries int
	// History is the number of older entries each uploaded file holds, already applied.
	History int
	// ObjectsPerUpload is how many data objects each upload's entries spread over (default 4).
	ObjectsPerUpload int
	// UploadClients is how many of the clients upload in the mix (default Clients/8, at least 1).
	UploadClients int
	// CompareFresh makes every other upload a fresh file (the same number of new entries, no
	// history), reported apart (Report.UploadFresh): with one client the two kinds alternate,
	// so that both are measured under the same conditions.
	CompareFresh bool
	// SeedHistory, when set, makes the history known without uploading it (see HistorySeeder);
	// otherwise the history is written as real layers and uploaded before the clock starts.
	SeedHistory HistorySeeder
	// AroundTimed, if set, is called as the clock starts; the func it returns is called as the
	// clock stops (for profiling the timed phase only).
	AroundTimed func() (stop func())
	// Progress receives a line about each preparation step (nil: none).
	Progress func(format string, args ...any)
	// RemoveObjects removes the data objects the run created once it is over (their events
	// stay) and revokes its token; Report.Cleanup says what was done. For runs against a
	// server that is not the benchmark's own.
	RemoveObjects bool
}

func (c *Config) defaults() error {
	if c.URL == "" {
		return errors.New("loadgen: no server URL")
	}
	if c.Workload == "" {
		c.Workload = WorkloadIncrement
	}
	switch c.Workload {
	case WorkloadIncrement, WorkloadUpload, WorkloadMix:
	default:
		return fmt.Errorf("loadgen: workload %q: want increment, upload or mix", c.Workload)
	}
	if c.Clients <= 0 {
		c.Clients = 64
	}
	if c.NewEntries <= 0 {
		c.NewEntries = 1000
	}
	if c.ObjectsPerUpload <= 0 {
		c.ObjectsPerUpload = 4
	}
	if c.History < 0 {
		return errors.New("loadgen: negative history")
	}
	switch c.Workload {
	case WorkloadMix:
		if c.Clients < 2 {
			return errors.New("loadgen: a mix needs at least 2 clients")
		}
		if c.UploadClients <= 0 {
			c.UploadClients = max(1, c.Clients/8)
		}
		if c.UploadClients >= c.Clients {
			return errors.New("loadgen: a mix needs fewer upload clients than clients")
		}
	case WorkloadUpload:
		c.UploadClients = c.Clients
	default:
		c.UploadClients = 0
	}
	if c.UploadClients > 0 {
		if c.PublicKey == nil {
			return errors.New("loadgen: uploads need the server's public key")
		}
		if c.Uploads <= 0 {
			c.Uploads = 2 * c.UploadClients
		}
		if c.CompareFresh && (c.History == 0 || c.Uploads < 2) {
			return errors.New("loadgen: comparing with fresh files needs a history and at least 2 uploads")
		}
	}
	if c.Objects <= 0 {
		c.Objects = max(1, c.Clients-c.UploadClients)
	}
	if c.Workload != WorkloadUpload && c.Duration <= 0 && c.Requests <= 0 {
		return errors.New("loadgen: increments need a duration or a number of requests")
	}
	if c.HTTP == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConns = 2 * c.Clients
		tr.MaxIdleConnsPerHost = 2 * c.Clients
		c.HTTP = &http.Client{Transport: tr, Timeout: 5 * time.Minute}
	}
	if c.Progress == nil {
		c.Progress = func(string, ...any) {}
	}
	return nil
}

// Run provisions, prepares, drives the server and checks the data. It returns the report, and
// an error if the run could not be carried out or the data check failed (the report then says
// what was lost).
func Run(ctx context.Context, cfg Config) (rep Report, err error) {
	if err := cfg.defaults(); err != nil {
		return Report{}, err
	}
	api := newAPIClient(cfg.URL, cfg.HTTP)
	adminURL := cfg.AdminURL
	if adminURL == "" {
		adminURL = cfg.URL
	}
	admin := httpapi.NewAdminClient(adminURL, cfg.AdminToken, cfg.HTTP)
	timed, err := newTimedClient(cfg.URL, cfg.Clients)
	if err != nil {
		return Report{}, err
	}
	defer timed.close()

	prepStart := time.Now()
	fx, err := provision(ctx, cfg, admin, api)
	if err != nil {
		return Report{}, err
	}
	if cfg.RemoveObjects {
		defer func() {
			rep.Cleanup = removeCreated(ctx, cfg, fx, admin, api)
			if rep.Cleanup.Error != "" {
				err = errors.Join(err, fmt.Errorf("cleanup: %s", rep.Cleanup.Error))
			}
		}()
	}
	var uploads []*preparedUpload
	if cfg.UploadClients > 0 {
		if uploads, err = prepareUploads(ctx, cfg, fx, admin, api); err != nil {
			return Report{}, err
		}
	}
	rep = Report{
		Workload: cfg.Workload, Clients: cfg.Clients, UploadClients: cfg.UploadClients,
		NewEntries: cfg.NewEntries, History: cfg.History, Preparation: time.Since(prepStart),
	}
	if cfg.UploadClients > 0 {
		rep.UploadBodyBytes = len(uploads[0].body)
	}

	stopTimed := func() {}
	if cfg.AroundTimed != nil {
		stopTimed = cfg.AroundTimed()
	}
	res := drive(ctx, cfg, timed, fx, uploads)
	stopTimed()
	timed.close()
	rep.Elapsed = res.elapsed
	rep.Increment = res.increment.summary("IncrementIntValueToKey", res.elapsed, 1)
	rep.Upload = res.upload.summary("UploadValuesToKey", res.elapsed, cfg.NewEntries)
	rep.UploadFresh = res.uploadFresh.summary("UploadValuesToKey (fresh file)", res.elapsed, cfg.NewEntries)

	check, err := checkData(ctx, api, fx, res, uploads)
	if err != nil {
		return rep, fmt.Errorf("data check: %w", err)
	}
	rep.Check = check
	if !check.OK {
		return rep, fmt.Errorf("data check failed: %d of %d objects lost acknowledged changes", check.Lost, check.Objects)
	}
	return rep, nil
}

// driveResult is what the timed phase did.
type driveResult struct {
	elapsed     time.Duration
	increment   *recorder
	upload      *recorder
	uploadFresh *recorder // with CompareFresh: the uploads of fresh files
	// Per increment object: calls acknowledged, and calls that failed (which may or may not
	// have been applied).
	incAcked, incFailed []int64
}

// drive runs the timed phase: the clients call until the duration ends or the calls are done.
// Calls in flight when the duration ends finish, so that each call's outcome is known; ending
// ctx closes the connections under them.
func drive(ctx context.Context, cfg Config, timed *timedClient, fx *fixture, uploads []*preparedUpload) driveResult {
	res := driveResult{
		increment: newRecorder(), upload: newRecorder(), uploadFresh: newRecorder(),
		incAcked: make([]int64, len(fx.incObjects)), incFailed: make([]int64, len(fx.incObjects)),
	}
	aborted := make(chan struct{})
	stopAbort := context.AfterFunc(ctx, func() {
		timed.close()
		close(aborted)
	})
	defer func() {
		if !stopAbort() {
			<-aborted // it ran: wait until it is done, so that no goroutine outlives drive
		}
	}()
	runCtx := ctx
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	var issued atomic.Int64 // increments handed out, against Requests
	var nextUpload atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for c := 0; c < cfg.Clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c < cfg.UploadClients {
				call := timed.newCall("UploadValuesToKey")
				defer call.release()
				for runCtx.Err() == nil {
					i := int(nextUpload.Add(1)) - 1
					if i >= len(uploads) {
						return
					}
					u := uploads[i]
					t0 := time.Now()
					// In-flight calls finish after the clock stops: only new ones are not started.
					u.result, u.err = call.do(ctx, u.body)
					u.done = true
					rec := res.upload
					if cfg.CompareFresh && u.history == 0 {
						rec = res.uploadFresh
					}
					rec.record(time.Since(t0), u.err)
				}
				return
			}
			obj := (c - cfg.UploadClients) % len(fx.incObjects)
			body := fx.incBodies[obj]
			call := timed.newCall("IncrementIntValueToKey")
			defer call.release()
			for runCtx.Err() == nil {
				if cfg.Requests > 0 && issued.Add(1) > int64(cfg.Requests) {
					return
				}
				t0 := time.Now()
				_, err := call.do(ctx, body)
				res.increment.record(time.Since(t0), err)
				if err != nil {
					atomic.AddInt64(&res.incFailed[obj], 1)
				} else {
					atomic.AddInt64(&res.incAcked[obj], 1)
				}
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}
