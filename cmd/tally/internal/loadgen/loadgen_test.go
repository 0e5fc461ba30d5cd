package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/domain/state"
)

func httpapiAdmin(cfg Config) *httpapi.AdminClient {
	return httpapi.NewAdminClient(cfg.URL, cfg.AdminToken, cfg.HTTP)
}

// startServer runs an in-process server on a temporary directory for one test.
func startServer(t *testing.T) *Server {
	t.Helper()
	srv, err := StartEmbedded(context.Background(), ServerOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("close server: %v", err)
		}
	})
	return srv
}

// TestMixRun drives a short mix of increments and uploads (each upload on top of a seeded
// history) and checks the report against what the server holds.
func TestMixRun(t *testing.T) {
	srv := startServer(t)
	const clients, requests, uploads, newEntries, history = 6, 300, 3, 20, 5000
	rep, err := Run(context.Background(), Config{
		URL: srv.URL, AdminToken: srv.AdminToken, PublicKey: srv.Keys.Public(), SeedHistory: srv.SeedHistory,
		Workload: WorkloadMix, Clients: clients, UploadClients: 2, Requests: requests,
		Uploads: uploads, NewEntries: newEntries, History: history, ObjectsPerUpload: 3,
	})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if rep.Increment == nil || rep.Increment.OK != requests || rep.Increment.Errors != 0 {
		t.Fatalf("increments: %+v, want %d ok", rep.Increment, requests)
	}
	if rep.Upload == nil || rep.Upload.OK != uploads || rep.Upload.Errors != 0 {
		t.Fatalf("uploads: %+v, want %d ok", rep.Upload, uploads)
	}
	if rep.Upload.EntriesSec <= 0 || rep.Increment.P50 <= 0 || rep.Increment.P99 < rep.Increment.P50 || rep.Increment.Max < rep.Increment.P99 {
		t.Errorf("implausible figures: %+v %+v", rep.Increment, rep.Upload)
	}
	// 4 increment clients on 4 objects, 3 uploads on 3 objects each.
	if !rep.Check.OK || rep.Check.Objects != 4+uploads*3 || rep.Check.Lost != 0 {
		t.Errorf("check: %+v", rep.Check)
	}
	var sum int64
	srv.Projection.Read(func(st *state.State) {
		for _, o := range st.AllObjects() {
			sum += int64(o.IntValue)
		}
	})
	if want := int64(requests + uploads*newEntries); sum != want {
		t.Errorf("the server's values add up to %d, want %d", sum, want)
	}

	var table, js bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"IncrementIntValueToKey", "UploadValuesToKey", "data check (13 objects):", "ok: every acknowledged"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || back.Upload.OK != uploads || !back.Check.OK {
		t.Errorf("JSON report %s: %v", js.String(), err)
	}
}

// TestCheckFindsLoss changes a value behind the tool's back: the check must fail the run.
func TestCheckFindsLoss(t *testing.T) {
	srv := startServer(t)
	cfg := Config{URL: srv.URL, AdminToken: srv.AdminToken, Clients: 2, Requests: 10,
		AroundTimed: func() func() { return func() {} }}
	if err := cfg.defaults(); err != nil {
		t.Fatal(err)
	}
	api := newAPIClient(cfg.URL, cfg.HTTP)
	fx, err := provision(context.Background(), cfg, httpapiAdmin(cfg), api)
	if err != nil {
		t.Fatal(err)
	}
	timed, err := newTimedClient(cfg.URL, cfg.Clients)
	if err != nil {
		t.Fatal(err)
	}
	defer timed.close()
	res := drive(context.Background(), cfg, timed, fx, nil)
	check, err := checkData(context.Background(), api, fx, res, nil)
	if err != nil || !check.OK {
		t.Fatalf("check before the loss: %+v, %v", check, err)
	}
	// A decrement the tool never acknowledged makes one object hold less than acknowledged.
	if err := api.call(context.Background(), "DecrementIntValueToKey", form("token", fx.secret, "ProductId", itoa(fx.productID), "Key", fx.incKey.Key, "Id", itoa(fx.incObjects[0]), "IntValue", "1")); err != nil {
		t.Fatal(err)
	}
	check, err = checkData(context.Background(), api, fx, res, nil)
	if err != nil || check.OK || check.Lost != 1 || len(check.Problems) != 1 {
		t.Fatalf("check after the loss: %+v, %v", check, err)
	}
}

// TestMeasureRSA runs the probe briefly.
func TestMeasureRSA(t *testing.T) {
	srv := startServer(t)
	rate, err := MeasureRSA(context.Background(), srv.Keys.Current(), 50*time.Millisecond)
	if err != nil || rate.OpsSec <= 0 || rate.Goroutines < 1 {
		t.Fatalf("%+v, %v", rate, err)
	}
}

// TestCompareFresh alternates uploads on a seeded history with uploads of fresh files and
// reports them apart.
func TestCompareFresh(t *testing.T) {
	srv := startServer(t)
	rep, err := Run(context.Background(), Config{
		URL: srv.URL, AdminToken: srv.AdminToken, PublicKey: srv.Keys.Public(), SeedHistory: srv.SeedHistory,
		Workload: WorkloadUpload, Clients: 1, Uploads: 4, NewEntries: 3, History: 2000, CompareFresh: true,
	})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if rep.Upload == nil || rep.Upload.OK != 2 || rep.UploadFresh == nil || rep.UploadFresh.OK != 2 || !rep.Check.OK {
		t.Fatalf("report: %+v %+v %+v", rep.Upload, rep.UploadFresh, rep.Check)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "upload on 2000 older entries vs on a fresh file:") {
		t.Errorf("table:\n%s", table.String())
	}
}
