package loadgen

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
)

// Report is the outcome of a run.
type Report struct {
	Workload      string `json:"workload"`
	Clients       int    `json:"clients"`
	UploadClients int    `json:"uploadClients,omitempty"`
	NewEntries    int    `json:"newEntriesPerUpload,omitempty"`
	History       int    `json:"historyEntries,omitempty"`
	// UploadBodyBytes is the size of one upload's request body.
	UploadBodyBytes int `json:"uploadBodyBytes,omitempty"`
	// Preparation is the time spent provisioning and writing logs, before the clock started.
	Preparation time.Duration `json:"preparationNs"`
	Elapsed     time.Duration `json:"elapsedNs"`
	Increment   *OpSummary    `json:"increment,omitempty"`
	Upload      *OpSummary    `json:"upload,omitempty"`
	// UploadFresh is the fresh-file uploads of a run comparing them with the history's.
	UploadFresh *OpSummary `json:"uploadFresh,omitempty"`
	// RSA is the raw RSA-2048 decrypt rate of all cores, when measured.
	RSA   *RSARate    `json:"rsa,omitempty"`
	Check DataCheck   `json:"check"`
	Extra []ExtraLine `json:"extra,omitempty"`
	// Cleanup is what a run with Config.RemoveObjects removed.
	Cleanup *Cleanup `json:"cleanup,omitempty"`
}

// Cleanup says what a run removed from the server once it was over.
type Cleanup struct {
	// ProductID is the run's product; products and keys cannot be removed, so it stays.
	ProductID      int64  `json:"productId"`
	ObjectsRemoved int    `json:"objectsRemoved"`
	TokenRevoked   bool   `json:"tokenRevoked"`
	Error          string `json:"error,omitempty"`
}

// ExtraLine is a figure the caller adds to the report (for instance the store's group-commit
// counters of an in-process server).
type ExtraLine struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// OpSummary is one kind of call's throughput and latency.
type OpSummary struct {
	Method      string  `json:"method"`
	OK          int     `json:"ok"`
	Errors      int     `json:"errors"`
	FirstError  string  `json:"firstError,omitempty"`
	RequestsSec float64 `json:"requestsPerSec"`
	EntriesSec  float64 `json:"entriesPerSec"`
	// Latencies of all calls, successful or not.
	P50 time.Duration `json:"p50Ns"`
	P99 time.Duration `json:"p99Ns"`
	Max time.Duration `json:"maxNs"`
}

// RSARate is the measured rate of rsa.DecryptPKCS1v15 with a 2048-bit key on all cores.
type RSARate struct {
	Goroutines int           `json:"goroutines"`
	Duration   time.Duration `json:"durationNs"`
	OpsSec     float64       `json:"opsPerSec"`
}

// DataCheck says whether every acknowledged change is in the final values.
type DataCheck struct {
	OK      bool `json:"ok"`
	Objects int  `json:"objects"`
	// Lost counts objects missing an acknowledged change (or holding more than was sent).
	Lost int `json:"lost"`
	// UnacknowledgedApplied counts failed uploads whose entries were nevertheless all applied
	// (allowed: the answer was lost, not the data).
	UnacknowledgedApplied int      `json:"unacknowledgedApplied"`
	Problems              []string `json:"problems,omitempty"`
}

// recorder collects the latencies and outcomes of one kind of call.
type recorder struct {
	mu        sync.Mutex
	latencies []time.Duration
	errors    int
	firstErr  error
}

func newRecorder() *recorder { return &recorder{} }

func (r *recorder) record(d time.Duration, err error) {
	r.mu.Lock()
	r.latencies = append(r.latencies, d)
	if err != nil {
		r.errors++
		if r.firstErr == nil {
			r.firstErr = err
		}
	}
	r.mu.Unlock()
}

// summary is nil when no call was made; entries is what one successful call carries.
func (r *recorder) summary(method string, elapsed time.Duration, entries int) *OpSummary {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.latencies) == 0 {
		return nil
	}
	l := slices.Clone(r.latencies)
	slices.Sort(l)
	ok := len(l) - r.errors
	s := &OpSummary{
		Method: method, OK: ok, Errors: r.errors,
		RequestsSec: float64(ok) / elapsed.Seconds(),
		EntriesSec:  float64(ok*entries) / elapsed.Seconds(),
		P50:         percentile(l, 0.50), P99: percentile(l, 0.99), Max: l[len(l)-1],
	}
	if r.firstErr != nil {
		s.FirstError = r.firstErr.Error()
	}
	return s
}

// percentile of sorted latencies, nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(float64(len(sorted))*p+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// MeasureRSA runs rsa.DecryptPKCS1v15 with key (nil: a fresh 2048-bit key) on GOMAXPROCS
// goroutines for d and returns the total rate: the ceiling of upload throughput, at one
// private-key operation per new entry.
func MeasureRSA(ctx context.Context, key *rsa.PrivateKey, d time.Duration) (RSARate, error) {
	if key == nil {
		var err error
		if key, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			return RSARate{}, fmt.Errorf("rsa probe: %w", err)
		}
	}
	//lint:ignore SA1019 the usage-log format mandates PKCS#1 v1.5 encryption
	ct, err := rsa.EncryptPKCS1v15(rand.Reader, &key.PublicKey, make([]byte, 16))
	if err != nil {
		return RSARate{}, fmt.Errorf("rsa probe: %w", err)
	}
	n := runtime.GOMAXPROCS(0)
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var ops atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				//lint:ignore SA1019 the usage-log format mandates PKCS#1 v1.5 encryption
				if _, err := rsa.DecryptPKCS1v15(nil, key, ct); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				ops.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := firstErr.Load().(error); err != nil {
		return RSARate{}, fmt.Errorf("rsa probe: %w", err)
	}
	return RSARate{Goroutines: n, Duration: elapsed, OpsSec: float64(ops.Load()) / elapsed.Seconds()}, nil
}

// WriteJSON writes the report as indented JSON.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes the report as a text table.
func (r Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "workload %s, %d clients", r.Workload, r.Clients)
	if r.UploadClients > 0 {
		fmt.Fprintf(tw, " (%d uploading), %d new entries per upload on %d older", r.UploadClients, r.NewEntries, r.History)
	}
	fmt.Fprintf(tw, "; prepared in %s, ran %s\n\n", r.Preparation.Round(time.Millisecond), r.Elapsed.Round(time.Millisecond))
	fmt.Fprintln(tw, "method\tok\terrors\trequests/s\tentries/s\tp50\tp99\tmax")
	for _, s := range []*OpSummary{r.Increment, r.Upload, r.UploadFresh} {
		if s == nil {
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f\t%s\t%s\t%s\n", s.Method, s.OK, s.Errors, s.RequestsSec, s.EntriesSec,
			roundLatency(s.P50), roundLatency(s.P99), roundLatency(s.Max))
	}
	fmt.Fprintln(tw)
	if r.RSA != nil {
		fmt.Fprintf(tw, "raw RSA-2048 decrypt, %d goroutines:\t%.1f ops/s\n", r.RSA.Goroutines, r.RSA.OpsSec)
		if r.Upload != nil && r.UploadFresh == nil && r.RSA.OpsSec > 0 {
			fmt.Fprintf(tw, "upload entries/s as a share of it:\t%.1f%%\n", 100*r.Upload.EntriesSec/r.RSA.OpsSec)
		}
	}
	if r.Upload != nil && r.UploadFresh != nil {
		fmt.Fprintf(tw, "upload on %d older entries vs on a fresh file:\tp50 %.2f×, max %.2f×\n", r.History,
			float64(r.Upload.P50)/float64(r.UploadFresh.P50), float64(r.Upload.Max)/float64(r.UploadFresh.Max))
	}
	if r.UploadBodyBytes > 0 {
		fmt.Fprintf(tw, "upload request body:\t%d bytes\n", r.UploadBodyBytes)
	}
	for _, e := range r.Extra {
		fmt.Fprintf(tw, "%s:\t%s\n", e.Name, e.Value)
	}
	verdict := "ok: every acknowledged change is in the final values"
	if !r.Check.OK {
		verdict = fmt.Sprintf("FAILED: %d objects lost acknowledged changes", r.Check.Lost)
	}
	fmt.Fprintf(tw, "data check (%d objects):\t%s\n", r.Check.Objects, verdict)
	if r.Check.UnacknowledgedApplied > 0 {
		fmt.Fprintf(tw, "failed uploads applied anyway:\t%d\n", r.Check.UnacknowledgedApplied)
	}
	for _, p := range r.Check.Problems {
		fmt.Fprintf(tw, "  %s\n", p)
	}
	if c := r.Cleanup; c != nil {
		fmt.Fprintf(tw, "cleanup:\tremoved %d data objects (their events stay), token revoked: %v; product %d and its keys stay\n",
			c.ObjectsRemoved, c.TokenRevoked, c.ProductID)
		if c.Error != "" {
			fmt.Fprintf(tw, "cleanup error:\t%s\n", c.Error)
		}
	}
	for _, s := range []*OpSummary{r.Increment, r.Upload, r.UploadFresh} {
		if s != nil && s.FirstError != "" {
			fmt.Fprintf(tw, "first %s error:\t%s\n", s.Method, s.FirstError)
		}
	}
	return tw.Flush()
}

func roundLatency(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
