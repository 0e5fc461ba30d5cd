package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/readmodel"
)

// liveServer is a real tally serve on a private data directory, with an RSA key the test
// writes usage logs for, a product, a key and an all-permissions token.
type liveServer struct {
	base    served
	dataDir string
	key     *usagelog.KeyRing
	owner   url.Values
	admin   string
	stop    func() error
}

func startLiveServer(t *testing.T, cfg serveConfig) *liveServer {
	t.Helper()
	dataDir := privateTempDir(t)
	ring, err := usagelog.LoadOrCreateKeyRing(dataDir) // what the server does on first start
	if err != nil {
		t.Fatal(err)
	}
	g := &globalFlags{DataDir: dataDir}
	base, stop := startServe(t, g, cfg, &syncBuffer{})
	s := &liveServer{base: base, dataDir: dataDir, key: ring, stop: stop}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = stop()
		}
	})
	s.stop = func() error { stopped = true; return stop() }
	if s.admin, err = g.adminToken(); err != nil {
		t.Fatal(err)
	}
	product := s.cli(t, "product", "create", "--name", "App")
	key := s.cli(t, "key", "create", "--product", product)
	token := s.cli(t, "token", "create", "--permissions", "all", "--product-lock", "0", "--key-lock", "0", "--feature-lock", "0")
	s.owner = url.Values{"token": {token}, "ProductId": {product}, "Key": {key}}
	return s
}

// cli runs a tally command against the server and returns its standard output; it fails the
// test if the command fails.
func (s *liveServer) cli(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := s.try(args...)
	if err != nil {
		t.Fatalf("tally %v: %v\n%s%s", args, err, out, errOut)
	}
	return strings.TrimSpace(out)
}

func (s *liveServer) try(args ...string) (string, string, error) {
	root := newRootCommand()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"--server", s.base.Admin, "--data-dir", s.dataDir}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

func (s *liveServer) addObject(t *testing.T, name string) string {
	t.Helper()
	add := call(t, s.base.Public, "AddDataObjectToKey", with(s.owner, "Name", name, "IntValue", "0"))
	if add["result"] != float64(0) {
		t.Fatalf("AddDataObjectToKey: %v", add)
	}
	return fmt.Sprint(add["id"])
}

// increment sends one IncrementIntValueToKey; it may run on any goroutine.
func (s *liveServer) increment(id string) error {
	r, err := http.PostForm(s.base.Public+"/api/data/IncrementIntValueToKey", with(s.owner, "Id", id, "IntValue", "1"))
	if err != nil {
		return err
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	if r.StatusCode != http.StatusOK || !bytes.Contains(b, []byte(`"result":0`)) {
		return fmt.Errorf("increment: %d %s", r.StatusCode, b)
	}
	return nil
}

// get asks the admin listener with the admin token and decodes a JSON answer.
func (s *liveServer) get(path string, out any) error {
	req, err := http.NewRequest(http.MethodGet, s.base.Admin+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+s.admin)
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	if r.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", path, r.StatusCode, b)
	}
	return json.Unmarshal(b, out)
}

// TestVerifyOnALiveServerWhileIncrementsRun is issue #13's must-show: eight clients keep
// incrementing while tally verify runs against the live server (the data directory is locked
// by it, so the command asks the server) and while an upload is applied; verify passes, and no
// increment is refused. Then tally readmodels rebuild runs while the increments go on and
// /v1/usage keeps answering; afterwards the read model answers as a replay of the store, and
// every acknowledged increment is in the values.
func TestVerifyOnALiveServerWhileIncrementsRun(t *testing.T) {
	s := startLiveServer(t, testServeConfig())
	const writers = 8
	ids := make([]string, writers)
	for i := range ids {
		ids[i] = s.addObject(t, fmt.Sprintf("o%d", i))
	}
	uploaded := s.addObject(t, "uploaded")

	ctx, stopWriting := context.WithCancel(t.Context())
	var acked atomic.Int64
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := s.increment(ids[i]); err != nil {
					t.Errorf("an increment while verifying: %v", err) // refused or failed: the must-show fails
					return
				}
				acked.Add(1)
			}
		}()
	}
	waitAcked := func(n int64) {
		for acked.Load() < n && !t.Failed() {
			call(t, s.base.Public, "ListDataObjectsToKey", s.owner)
		}
	}
	waitAcked(50)

	// An upload of a usage log with three layers, sent while verify runs.
	var logData []byte
	now := time.Now().Unix()
	for i, amount := range []int64{3, 4, 5} {
		var err error
		if logData, err = usagelog.Record(logData, &s.key.Current().PublicKey, mustInt(t, uploaded), amount, now-int64(3-i)*3600, false); err != nil {
			t.Fatal(err)
		}
	}
	uploadDone := make(chan error, 1)
	go func() {
		r, err := http.PostForm(s.base.Public+"/api/data/UploadValuesToKey", with(s.owner, "Data", base64.StdEncoding.EncodeToString(logData)))
		if err == nil {
			b, _ := io.ReadAll(r.Body)
			r.Body.Close()
			if !bytes.Contains(b, []byte(`"result":0`)) {
				err = fmt.Errorf("upload: %d %s", r.StatusCode, b)
			}
		}
		uploadDone <- err
	}()

	before := acked.Load()
	out, errOut, err := s.try("verify")
	if err != nil {
		t.Fatalf("verify on the live server: %v\n%s%s", err, out, errOut)
	}
	if !strings.Contains(errOut, "a running server holds "+s.dataDir) || !strings.Contains(out, "verified in the server at "+s.base.Admin) ||
		!strings.Contains(out, "\nok: ") {
		t.Fatalf("verify said:\n%s%s", out, errOut)
	}
	if err := <-uploadDone; err != nil {
		t.Fatal(err)
	}
	// --online asks the server whatever holds the data directory.
	if out := s.cli(t, "verify", "--online"); !strings.Contains(out, "ok: ") {
		t.Fatalf("verify --online said:\n%s", out)
	}
	waitAcked(acked.Load() + 50)
	t.Logf("%d increments acknowledged before the first verify, %d by now", before, acked.Load())

	// The read models, rebuilt while increments go on and reports are asked for.
	usagePath := "/v1/usage?from=2020-01-01&to=2030-12-31&by=month"
	var reports atomic.Int64
	reportsDone := make(chan struct{})
	go func() {
		defer close(reportsDone)
		for ctx.Err() == nil {
			var rep projections.UsageReport
			if err := s.get(usagePath, &rep); err != nil {
				if ctx.Err() == nil {
					t.Errorf("a report during the rebuild: %v", err)
				}
				return
			}
			if rep.Source != "readmodel" {
				t.Errorf("a report during the rebuild came from %q", rep.Source)
				return
			}
			reports.Add(1)
		}
	}()
	if out := s.cli(t, "readmodels", "rebuild"); !strings.Contains(out, "rebuilt the usage read model in the server") {
		t.Fatalf("readmodels rebuild said:\n%s", out)
	}
	waitAcked(acked.Load() + 20)
	stopWriting()
	wg.Wait()
	<-reportsDone
	if reports.Load() == 0 {
		t.Fatal("no report was answered during the rebuild")
	}

	var final projections.UsageReport
	if err := s.get(usagePath, &final); err != nil {
		t.Fatal(err)
	}
	list := call(t, s.base.Public, "ListDataObjectsToKey", s.owner)
	var sum int64
	for _, o := range list["dataObjects"].([]any) {
		obj := o.(map[string]any)
		if fmt.Sprint(obj["id"]) != uploaded {
			sum += int64(obj["intValue"].(float64))
		} else if obj["intValue"] != float64(12) {
			t.Errorf("the uploaded object holds %v, want 12", obj["intValue"])
		}
	}
	if sum != acked.Load() {
		t.Errorf("the objects hold %d increments, %d were acknowledged", sum, acked.Load())
	}
	// With --usage, the read model's report is compared with a replay too.
	if out := s.cli(t, "verify", "--usage"); !strings.Contains(out, "ok: ") {
		t.Fatalf("verify --usage after the rebuild said:\n%s", out)
	}
	must(t, s.stop())

	// The oracle: a replay of the stopped store answers as the rebuilt read model did.
	store, err := embedded.Open(context.Background(), embeddedStoreDir(s.dataDir))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	want, err := projections.Usage(context.Background(), store, projections.UsageQuery{
		From: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), To: time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC), By: projections.ByMonth,
	})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(want.Rows)
	b, _ := json.Marshal(final.Rows)
	if want.Position != final.Position || !bytes.Equal(a, b) || len(want.Rows) == 0 {
		t.Fatalf("the rebuilt read model (position %d) vs the replay (position %d):\n%s\n%s", final.Position, want.Position, b, a)
	}
}

// TestVerifyOnALiveServerFindsADifference runs a server whose projection misses one increment
// (its subscription drops the event, as a lost update would; the store keeps it): tally verify
// against the live server names the object and fails.
func TestVerifyOnALiveServerFindsADifference(t *testing.T) {
	var armed atomic.Bool
	cfg := testServeConfig()
	cfg.wrapStore = func(s eventstore.Store) eventstore.Store { return droppingStore{Store: s, armed: &armed} }
	s := startLiveServer(t, cfg)
	id := s.addObject(t, "seats")
	if err := s.increment(id); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	// The projection never sees this increment: the call waits until a later event moves the
	// projection past it.
	incremented := make(chan error, 1)
	go func() { incremented <- s.increment(id) }()
	for {
		s.cli(t, "product", "create", "--name", "later")
		select {
		case err := <-incremented:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(100 * time.Millisecond):
			continue
		}
		break
	}
	out, _, err := s.try("verify")
	if err == nil || !strings.Contains(err.Error(), "difference") {
		t.Fatalf("verify of a projection that missed an event: %v\n%s", err, out)
	}
	for _, want := range []string{
		fmt.Sprintf("projection vs replay: data object %s: intValue 1 vs 2", id),
		fmt.Sprintf("projection vs replay: data object %s: revision", id),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("verify did not say %q:\n%s", want, out)
		}
	}

	// A read model whose buckets were damaged behind its back: verify --usage compares its
	// report with a replay and names the rows.
	damage, err := sql.Open("sqlite", "file:"+filepath.Join(s.dataDir, readmodel.File)+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := damage.Exec(`UPDATE b_month SET inc = inc + 1000`); err != nil {
		t.Fatal(err)
	}
	must(t, damage.Close())
	out, _, err = s.try("verify", "--usage")
	if err == nil || !strings.Contains(out, "read model usage vs replay at position") || !strings.Contains(out, `"increments":1`) {
		t.Fatalf("verify --usage of a damaged read model: %v\n%s", err, out)
	}

	// Bad requests: a wrong token, a parameter, another method.
	if _, _, err := s.try("--admin-token", "wrong-"+strings.Repeat("x1", 20), "verify", "--online"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("verify with a wrong token: %v", err)
	}
	// A viewer credential reads; it may not start a verification or a rebuild.
	viewerSecret := s.cli(t, "viewer", "create", "--name", "auditor")
	for _, c := range []struct {
		method, path string
		credential   string
		status       int
	}{
		{http.MethodPost, "/admin/v1/verify?full=1", s.admin, http.StatusBadRequest},
		{http.MethodPost, "/admin/v1/verify?usage=yes", s.admin, http.StatusBadRequest},
		{http.MethodPost, "/admin/v1/readmodels/rebuild?usage=true", s.admin, http.StatusBadRequest},
		{http.MethodGet, "/admin/v1/verify", s.admin, http.StatusMethodNotAllowed},
		{http.MethodGet, "/admin/v1/readmodels/rebuild", s.admin, http.StatusMethodNotAllowed},
		{http.MethodPost, "/admin/v1/verify", viewerSecret, http.StatusForbidden},
		{http.MethodPost, "/admin/v1/readmodels/rebuild", viewerSecret, http.StatusForbidden},
	} {
		req, _ := http.NewRequest(c.method, s.base.Admin+c.path, nil)
		req.Header.Set("Authorization", "Bearer "+c.credential)
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != c.status || !bytes.Contains(b, []byte(`"error"`)) {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, r.StatusCode, b, c.status)
		}
	}
}

// droppingStore hides from each subscription the first IncrementApplied it would deliver once
// armed: the projection following it misses that event, while reads of the store hold it.
type droppingStore struct {
	eventstore.Store
	armed *atomic.Bool
}

func (d droppingStore) SubscribeAll(ctx context.Context, from eventstore.Position) (eventstore.Subscription, error) {
	sub, err := d.Store.SubscribeAll(ctx, from)
	if err != nil {
		return nil, err
	}
	return &droppingSubscription{Subscription: sub, armed: d.armed}, nil
}

type droppingSubscription struct {
	eventstore.Subscription
	armed   *atomic.Bool
	dropped bool
}

func (s *droppingSubscription) Next(ctx context.Context) (eventstore.RecordedEvent, error) {
	for {
		ev, err := s.Subscription.Next(ctx)
		if err == nil && !s.dropped && s.armed.Load() && ev.Type == domain.EventIncrementApplied {
			s.dropped = true
			continue
		}
		return ev, err
	}
}
