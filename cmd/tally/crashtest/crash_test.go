package crashtest

import (
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/usagelog"
)

const (
	// base is every object's initial value.
	base = 1 << 29
	// unit is the step of direct calls; uploads add less than unit in total, so a value splits
	// into its direct part (a multiple of unit) and its upload part.
	unit = 1 << 16
	// objectsPerKey are the objects each upload unit changes by the same amount, one layer each:
	// applying part of an upload would leave them unequal.
	objectsPerKey = 3
)

// workload sizes one run.
type workload struct {
	cycles        int           // SIGKILLs
	keys          int           // license keys, each with its own usage-log file
	directClients int           // goroutines sending increments and decrements
	uploadClients int           // goroutines sending versions of the files
	maxUnits      int           // units (objectsPerKey layers each) a file grows to at most
	maxKillDelay  time.Duration // a server lives at most this long after it listens
	maxKillAcks   int           // or until this many more calls were acknowledged
}

func workloadFromEnv() workload {
	if os.Getenv("TALLY_LONG") == "1" {
		return workload{cycles: 100, keys: 6, directClients: 12, uploadClients: 8, maxUnits: 300, maxKillDelay: 4 * time.Second, maxKillAcks: 400}
	}
	return workload{cycles: 20, keys: 3, directClients: 8, uploadClients: 3, maxUnits: 60, maxKillDelay: 2500 * time.Millisecond, maxKillAcks: 200}
}

// keyFile is one license key's usage-log file, as its License Server grows it.
type keyFile struct {
	key     string
	objects [objectsPerKey]int64

	mu       sync.Mutex
	pub      *rsa.PublicKey
	data     []byte
	ts       int64
	layers   []string // layer identities, hex, oldest first
	amounts  []int64  // each layer's increment; layer i targets objects[i%objectsPerKey]
	versions []string // base64 of every version handed out; versions[i] has lengths[i] layers
	lengths  []int
	acked    int // the longest version an upload of which was acknowledged
}

// maxBacklog is how many layers a file may run ahead of its longest acknowledged version
// before its clients send the newest version again instead of growing it: every upload cut by
// a kill leaves its new layers for the next one, and without a bound the new part of each
// upload would grow until none finished between two kills.
const maxBacklog = 12 * objectsPerKey

// backlogged reports whether the file ran too far ahead; if so it returns the newest version.
func (f *keyFile) backlogged() (string, int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.layers)-f.acked <= maxBacklog {
		return "", 0, false
	}
	return f.versions[len(f.versions)-1], f.lengths[len(f.lengths)-1], true
}

func (f *keyFile) ack(layers int) {
	f.mu.Lock()
	f.acked = max(f.acked, layers)
	f.mu.Unlock()
}

// grow wraps the file in units more units and returns the new version.
func (f *keyFile) grow(units int, rng *rand.Rand) (string, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for range units {
		amount := int64(1 + rng.IntN(5))
		for _, obj := range f.objects {
			f.ts += 60
			data, err := usagelog.Record(f.data, f.pub, obj, amount, f.ts, false)
			if err != nil {
				return "", 0, fmt.Errorf("record: %w", err)
			}
			id, err := usagelog.LayerIDOf(data)
			if err != nil {
				return "", 0, err
			}
			f.data = data
			f.layers = append(f.layers, id.String())
			f.amounts = append(f.amounts, amount)
		}
	}
	v := base64.StdEncoding.EncodeToString(f.data)
	f.versions = append(f.versions, v)
	f.lengths = append(f.lengths, len(f.layers))
	return v, len(f.layers), nil
}

// old returns a version handed out before, or false if there is none.
func (f *keyFile) old(rng *rand.Rand) (string, int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.versions) == 0 {
		return "", 0, false
	}
	i := rng.IntN(len(f.versions))
	return f.versions[i], f.lengths[i], true
}

func (f *keyFile) units() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.layers) / objectsPerKey
}

// cluster is where the clients find the server: its URL while one is up, and a generation
// that grows with every start.
type cluster struct {
	mu      sync.Mutex
	url     string
	gen     int
	stopped bool
	changed chan struct{} // closed and replaced on every change
}

func newCluster() *cluster { return &cluster{changed: make(chan struct{})} }

func (c *cluster) update(fn func()) {
	c.mu.Lock()
	fn()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

func (c *cluster) up(url string) { c.update(func() { c.url, c.gen = url, c.gen+1 }) }
func (c *cluster) down()         { c.update(func() { c.url = "" }) }
func (c *cluster) stop()         { c.update(func() { c.stopped = true }) }

// await returns the server of generation minGen or later, once one is up; false once stopped.
func (c *cluster) await(minGen int) (string, int, bool) {
	for {
		c.mu.Lock()
		u, gen, stopped, ch := c.url, c.gen, c.stopped, c.changed
		c.mu.Unlock()
		if stopped {
			return "", 0, false
		}
		if u != "" && gen >= minGen {
			return u, gen, true
		}
		<-ch
	}
}

// directCall is one increment or decrement as its client saw it.
type directCall struct {
	object  int64
	amount  int64 // signed
	poison  bool  // sent with a bound it must pass: always refused
	outcome outcome
}

// uploadCall is one upload as its client saw it.
type uploadCall struct {
	key     int
	layers  int  // the version's length; 0 for a poisoned file
	poison  bool // a separate file whose last layer targets another key's object
	outcome outcome
}

// journal records every call and its outcome.
type journal struct {
	mu       sync.Mutex
	direct   map[string]directCall // by request id
	uploads  []uploadCall
	poisoned map[string]bool // layer identities of poisoned files
	refusals map[string]int  // by message
	// latency sums and bounds the time acknowledged calls took, by kind.
	latency map[string]*latency
	acks    atomic.Int64
	// killAt is the acknowledged count at which the controller kills the server.
	killAt  atomic.Int64
	killNow chan struct{}
}

func (j *journal) acked() {
	if j.acks.Add(1) >= j.killAt.Load() {
		select {
		case j.killNow <- struct{}{}:
		default:
		}
	}
}

// latency is the count, total and longest time of some calls.
type latency struct {
	n          int
	total, max time.Duration
}

func (j *journal) took(kind string, d time.Duration) {
	j.mu.Lock()
	defer j.mu.Unlock()
	l := j.latency[kind]
	if l == nil {
		l = &latency{}
		j.latency[kind] = l
	}
	l.n++
	l.total += d
	l.max = max(l.max, d)
}

func (j *journal) refusal(kind, msg string) {
	j.mu.Lock()
	j.refusals[kind+": "+msg]++
	j.mu.Unlock()
}

// Messages a call may be refused with. The poisoned calls must be refused. "Not found" and
// "unable to authenticate" happen when a call reaches a server whose projection has not yet
// caught up (clients do not wait for readiness); "changed concurrently too often" when a
// direct call kept finding its object held by one upload after another and ran out of
// attempts. Every refusal must change nothing, which the final check proves.
const (
	msgBound     = "The value could not be changed since the bound would be passed."
	msgIncorrect = "The input parameters were incorrect."
)

var allowedRefusals = map[string]bool{
	msgBound:                  true,
	msgIncorrect:              true,
	"Unable to authenticate.": true,
	"Not enough permission and/or key not found.":                           true,
	"Not enough permission and/or product not found.":                       true,
	"The data object could not be found.":                                   true,
	"The service is temporarily unavailable. Please try again.":             true,
	"The data object was changed concurrently too often. Please try again.": true,
}

// TestCrashUnderLoad kills a real tally server with SIGKILL at random moments while many
// clients increment, decrement and upload, restarts it on the same data directory each time,
// and proves from the final events that every acknowledged call counts exactly once, every
// call with an unknown outcome at most once, refused ones not at all, and that no upload is
// applied in part.
func TestCrashUnderLoad(t *testing.T) {
	w := workloadFromEnv()
	bin := buildTally(t)
	h := newHarness(t, bin)
	ctx := t.Context()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d, workload %+v, race-enabled binary %v", seed, w, raceEnabled)
	rng := rand.New(rand.NewPCG(seed, 1))

	// Provision through the CLI and the API of a first server.
	srv := h.start()
	h.waitReady(srv)
	productID := h.cli(srv, "product", "create", "--name", "crash")
	token := h.cli(srv, "token", "create", "--permissions", "all", "--product-lock", "0", "--key-lock", "0", "--feature-lock", "0", "--name", "crash")
	pub, err := usagelog.ParsePublicKey([]byte(h.cli(nil, "rsa", "export", "--format", "pem")))
	if err != nil {
		t.Fatalf("public key: %v", err)
	}
	files := make([]*keyFile, w.keys)
	for k := range files {
		f := &keyFile{key: h.cli(srv, "key", "create", "--product", productID), pub: pub, ts: 1767225600}
		for i := range f.objects {
			a := h.call(ctx, srv.url, "AddDataObjectToKey", url.Values{
				"token": {token}, "ProductId": {productID}, "Key": {f.key},
				"Name": {fmt.Sprintf("o%d", i)}, "IntValue": {strconv.Itoa(base)},
			}, "")
			if a.outcome != acknowledged {
				t.Fatalf("add data object: %+v", a)
			}
			f.objects[i] = a.id
		}
		files[k] = f
	}
	owner := func(k int) url.Values {
		return url.Values{"token": {token}, "ProductId": {productID}, "Key": {files[k].key}}
	}

	j := &journal{direct: map[string]directCall{}, poisoned: map[string]bool{}, refusals: map[string]int{}, latency: map[string]*latency{}, killNow: make(chan struct{}, 1)}
	j.killAt.Store(1 << 62)
	cl := newCluster()
	var clients sync.WaitGroup
	// Should the test stop early, the clients stop before it ends (they report with t.Errorf).
	t.Cleanup(func() {
		cl.stop()
		clients.Wait()
	})

	// Direct clients: increments and decrements in multiples of unit on the upload objects, so
	// they race with the uploads' pending events. One in twenty carries a bound it must pass.
	for c := range w.directClients {
		clients.Add(1)
		crng := rand.New(rand.NewPCG(seed, uint64(100+c)))
		go func() {
			defer clients.Done()
			gen := 0
			for n := 0; ; n++ {
				srvURL, g, ok := cl.await(gen)
				if !ok {
					return
				}
				gen = g
				k := crng.IntN(w.keys)
				obj := files[k].objects[crng.IntN(objectsPerKey)]
				amount := int64(1+crng.IntN(9)) * unit
				method := "IncrementIntValueToKey"
				params := owner(k)
				params.Set("Id", strconv.FormatInt(obj, 10))
				params.Set("IntValue", strconv.FormatInt(amount, 10))
				if crng.IntN(3) == 0 {
					method, amount = "DecrementIntValueToKey", -amount
				}
				poison := crng.IntN(20) == 0
				if poison {
					params.Set("EnableBound", "true")
					params.Set("Bound", "0") // below every value: an increment passes it
					if amount < 0 {
						params.Set("Bound", strconv.Itoa(1<<30)) // above every value
					}
				}
				rid := fmt.Sprintf("crash-d%d-%d", c, n)
				began := time.Now()
				a := h.call(ctx, srvURL, method, params, rid)
				j.mu.Lock()
				j.direct[rid] = directCall{object: obj, amount: amount, poison: poison, outcome: a.outcome}
				j.mu.Unlock()
				switch a.outcome {
				case acknowledged:
					if poison {
						t.Errorf("%s past its bound acknowledged", method)
					}
					j.took("direct", time.Since(began))
					j.acked()
				case refused:
					j.refusal("direct", a.message)
					if poison && a.message != msgBound && !allowedRefusals[a.message] {
						t.Errorf("%s past its bound: %d %q", method, a.status, a.message)
					}
				default:
					gen++ // the server is gone: wait for the next one
				}
			}
		}()
	}

	// Upload clients: new versions of the files, older versions again, and now and then a
	// separate file whose last layer names another key's object (refused as a whole).
	for c := range w.uploadClients {
		clients.Add(1)
		crng := rand.New(rand.NewPCG(seed, uint64(200+c)))
		go func() {
			defer clients.Done()
			gen := 0
			for {
				srvURL, g, ok := cl.await(gen)
				if !ok {
					return
				}
				gen = g
				k := crng.IntN(w.keys)
				f := files[k]
				call := uploadCall{key: k}
				var data string
				newest, newestLen, backlogged := f.backlogged()
				switch r := crng.IntN(10); {
				case backlogged && r != 0:
					data, call.layers = newest, newestLen
				case r == 0 && w.keys > 1:
					call.poison = true
					var err error
					if data, err = j.poisonedFile(f, files[(k+1)%w.keys].objects[0], crng); err != nil {
						t.Error(err)
						return
					}
				case r < 6 && f.units() < w.maxUnits:
					var err error
					if data, call.layers, err = f.grow(1+crng.IntN(3), crng); err != nil {
						t.Error(err)
						return
					}
				default:
					var ok bool
					if data, call.layers, ok = f.old(crng); !ok {
						continue
					}
				}
				params := owner(k)
				params.Set("Data", data)
				began := time.Now()
				a := h.call(ctx, srvURL, "UploadValuesToKey", params, "")
				call.outcome = a.outcome
				j.mu.Lock()
				j.uploads = append(j.uploads, call)
				j.mu.Unlock()
				switch a.outcome {
				case acknowledged:
					if call.poison {
						t.Errorf("poisoned upload acknowledged: %+v", a)
					} else if int64(a.applied)+a.known != int64(call.layers) {
						t.Errorf("upload of %d layers answered applied %d, known %d", call.layers, a.applied, a.known)
					} else {
						f.ack(call.layers)
					}
					kind := "upload applying new entries"
					if a.applied == 0 {
						kind = "upload applying nothing new"
					}
					j.took(kind, time.Since(began))
					j.acked()
				case refused:
					j.refusal("upload", a.message)
					if call.poison && a.message != msgIncorrect && !allowedRefusals[a.message] {
						t.Errorf("poisoned upload: %d %q", a.status, a.message)
					}
				default:
					gen++
				}
			}
		}()
	}

	// The controller: publish the server, kill it after a random number of acknowledged calls
	// or a random delay, start the next one on the same data directory.
	for cycle := range w.cycles {
		cl.up(srv.url)
		j.killAt.Store(j.acks.Load() + 1 + int64(rng.IntN(w.maxKillAcks)))
		select {
		case <-j.killNow:
		default:
		}
		timer := time.NewTimer(time.Duration(rng.Int64N(int64(w.maxKillDelay))))
		select {
		case <-j.killNow:
		case <-timer.C:
		}
		timer.Stop()
		cl.down()
		h.kill(srv)
		if t.Failed() {
			cl.stop()
			clients.Wait()
			t.Fatalf("failed in cycle %d", cycle)
		}
		srv = h.start()
	}
	// A last run without a kill; then stop the clients, whose calls all finish, and stop the
	// server cleanly.
	cl.up(srv.url)
	h.waitReady(srv)
	j.killAt.Store(j.acks.Load() + 50)
	select {
	case <-j.killNow:
	default:
	}
	enough := time.NewTimer(30 * time.Second)
	select {
	case <-j.killNow:
	case <-enough.C:
		t.Errorf("fewer than 50 calls acknowledged in 30 s after the last restart")
	}
	enough.Stop()
	cl.stop()
	clients.Wait()
	h.stop(srv)

	srv = h.start()
	h.waitReady(srv)
	checkFinal(t, h, srv, j, files, owner)
	h.stop(srv)
	out := h.cli(nil, "verify")
	t.Logf("tally verify: %s", out)
}

// poisonedFile is a fresh file of one unit for f's objects and a last layer for a foreign
// object: the upload must be refused as a whole.
func (j *journal) poisonedFile(f *keyFile, foreign int64, rng *rand.Rand) (string, error) {
	var data []byte
	var ids []string
	ts := int64(1767225600)
	for _, obj := range append(f.objects[:], foreign) {
		ts += 60
		var err error
		if data, err = usagelog.Record(data, f.pub, obj, int64(1+rng.IntN(5)), ts, false); err != nil {
			return "", err
		}
		id, err := usagelog.LayerIDOf(data)
		if err != nil {
			return "", err
		}
		ids = append(ids, id.String())
	}
	j.mu.Lock()
	for _, id := range ids {
		j.poisoned[id] = true
	}
	j.mu.Unlock()
	return base64.StdEncoding.EncodeToString(data), nil
}

// historyEntry is what the check reads of the audit history.
type historyEntry struct {
	Type      string `json:"type"`
	Amount    int64  `json:"amount"`
	Layer     string `json:"layer"`
	Counted   bool   `json:"counted"`
	RequestID string `json:"requestId"`
}

// checkFinal reads every object's value and history from a restarted server and holds them
// against the journal.
func checkFinal(t *testing.T, h *harness, srv *server, j *journal, files []*keyFile, owner func(int) url.Values) {
	t.Helper()
	ctx := t.Context()
	counts := map[string]int{}
	for _, c := range j.direct {
		counts["direct "+c.outcome.String()]++
	}
	for _, u := range j.uploads {
		counts["upload "+u.outcome.String()]++
	}
	var appliedEntries, unknownApplied, unknownNot int
	for k, f := range files {
		values := listValues(t, h, srv, owner(k))
		// The counted upload layers of each object, and the direct calls by request id.
		layerIndex := map[string]int{}
		for i, id := range f.layers {
			layerIndex[id] = i
		}
		depth := 0 // how many layers of the file count: the same for every object of the key
		directSeen := map[string]int{}
		for oi, obj := range f.objects {
			var hist struct {
				Entries []historyEntry `json:"entries"`
			}
			h.getJSON(srv, fmt.Sprintf("/v1/dataobjects/%d/history", obj), &hist)
			counted := map[int]bool{}
			var direct, uploaded int64
			for _, e := range hist.Entries {
				if e.Type != "IncrementApplied" && e.Type != "DecrementApplied" || !e.Counted {
					continue
				}
				if e.Layer != "" {
					if j.poisoned[e.Layer] {
						t.Errorf("object %d: a layer of a refused poisoned upload counts", obj)
					}
					i, ok := layerIndex[e.Layer]
					if !ok {
						t.Errorf("object %d: counted layer %s is not in the file", obj, e.Layer)
						continue
					}
					if counted[i] {
						t.Errorf("object %d: layer %d counted twice", obj, i)
					}
					if f.amounts[i] != e.Amount || i%objectsPerKey != oi {
						t.Errorf("object %d: layer %d amount %d; the file says %d for object %d", obj, i, e.Amount, f.amounts[i], f.objects[i%objectsPerKey])
					}
					counted[i] = true
					uploaded += e.Amount
					continue
				}
				c, ok := j.direct[e.RequestID]
				switch {
				case !ok:
					t.Errorf("object %d: a counted change by request %q nobody sent", obj, e.RequestID)
				case c.object != obj || c.amount != e.Amount:
					t.Errorf("object %d: request %s counted %d, sent %d to object %d", obj, e.RequestID, e.Amount, c.amount, c.object)
				}
				directSeen[e.RequestID]++
				direct += e.Amount
			}
			// The counted layers of this object are exactly its layers below some depth, in whole
			// units, the same for every object of the key.
			d := 0
			for i := range counted {
				d = max(d, (i/objectsPerKey+1)*objectsPerKey)
			}
			if oi == 0 {
				depth = d
			} else if d != depth {
				t.Errorf("key %d: object %d has layers up to %d counted, object %d up to %d: an upload applied in part", k, f.objects[0], depth, obj, d)
			}
			for i := oi; i < depth; i += objectsPerKey {
				if !counted[i] {
					t.Errorf("object %d: layer %d of %d is missing: an upload applied in part", obj, i, depth)
				}
			}
			var want int64 = base + direct + uploaded
			if values[obj] != want {
				t.Errorf("object %d = %d; its counted history sums to %d", obj, values[obj], want)
			}
			// The value splits into the direct part and the upload part, equal on every object.
			up := (values[obj] - base) % unit
			if up < 0 {
				up += unit
			}
			if up != uploaded {
				t.Errorf("object %d: upload part %d, history %d", obj, up, uploaded)
			}
		}
		appliedEntries += depth
		// Every acknowledged direct call counts once, every unknown one at most once, the
		// others never.
		for rid, c := range j.direct {
			if !slices.Contains(f.objects[:], c.object) {
				continue
			}
			n := directSeen[rid]
			switch {
			case c.outcome == acknowledged && n != 1:
				t.Errorf("acknowledged %s (%d on %d) counted %d times", rid, c.amount, c.object, n)
			case c.outcome == unknown && n > 1:
				t.Errorf("%s with an unknown outcome counted %d times", rid, n)
			case (c.outcome == refused || c.outcome == undelivered) && n != 0:
				t.Errorf("%s %s but counted %d times", rid, c.outcome, n)
			case c.outcome == unknown && n == 1:
				unknownApplied++
			case c.outcome == unknown:
				unknownNot++
			}
		}
		// The depth is the length of a version whose upload was acknowledged or may have
		// applied, and at least that of every acknowledged one.
		possible := map[int]bool{0: true}
		maxAcked := 0
		for _, u := range j.uploads {
			if u.key != k || u.poison {
				continue
			}
			if u.outcome == acknowledged || u.outcome == unknown {
				possible[u.layers] = true
			}
			if u.outcome == acknowledged {
				maxAcked = max(maxAcked, u.layers)
			}
		}
		if !possible[depth] || depth < maxAcked {
			t.Errorf("key %d: %d layers count; acknowledged up to %d, possible %v", k, depth, maxAcked, possible)
		}
		// The whole file once more: the server says the same depth and applies the rest.
		f.mu.Lock()
		full, total := base64.StdEncoding.EncodeToString(f.data), len(f.layers)
		f.mu.Unlock()
		params := owner(k)
		params.Set("Data", full)
		a := h.call(ctx, srv.url, "UploadValuesToKey", params, "")
		if a.outcome != acknowledged || a.known != int64(depth) || a.applied != total-depth {
			t.Errorf("key %d: the whole file of %d layers: %+v; want known %d", k, total, a, depth)
		}
		after := listValues(t, h, srv, owner(k))
		for oi, obj := range f.objects {
			var rest int64
			for i := depth + oi; i < total; i += objectsPerKey {
				rest += f.amounts[i]
			}
			if after[obj] != values[obj]+rest {
				t.Errorf("object %d after the whole file: %d, want %d + %d", obj, after[obj], values[obj], rest)
			}
		}
		if after[f.objects[0]]%unit != after[f.objects[1]]%unit || after[f.objects[1]]%unit != after[f.objects[2]]%unit {
			t.Errorf("key %d: upload parts differ after the whole file: %v", k, after)
		}
	}
	var layersSent int
	for _, u := range j.uploads {
		layersSent += u.layers
	}
	h.stats.mu.Lock()
	defer h.stats.mu.Unlock()
	t.Logf("calls %v; refusals %v", counts, j.refusals)
	t.Logf("unknown direct calls: %d applied, %d not; layers in the versions sent %d, applied before the last upload %d",
		unknownApplied, unknownNot, layersSent, appliedEntries)
	t.Logf("server logs: %d starts recovered %d interrupted uploads (%d completed, %d discarded); %d warnings, %d errors",
		h.stats.recoveries, h.stats.recovered, h.stats.committed, h.stats.aborted, h.stats.warnings, h.stats.errorCount)
	for kind, l := range j.latency {
		t.Logf("acknowledged %s: %d calls, mean %v, max %v", kind, l.n, l.total/time.Duration(l.n), l.max)
	}
	for _, line := range h.stats.notes {
		t.Logf("server: %s", line)
	}
	for kindMsg, n := range j.refusals {
		if _, msg, _ := strings.Cut(kindMsg, ": "); !allowedRefusals[msg] {
			t.Errorf("%d calls refused with %q", n, kindMsg)
		}
	}
}

// listValues lists a key's objects through the data-object API.
func listValues(t *testing.T, h *harness, srv *server, owner url.Values) map[int64]int64 {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.url+"/api/data/ListDataObjectsToKey", strings.NewReader(owner.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Result      int `json:"result"`
		DataObjects []struct {
			ID       int64 `json:"id"`
			IntValue int64 `json:"intValue"`
		} `json:"dataObjects"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Result != 0 {
		t.Fatalf("list: %v %+v", err, body)
	}
	out := map[int64]int64{}
	for _, o := range body.DataObjects {
		out[o.ID] = o.IntValue
	}
	return out
}
