package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tallyledger/tally/cmd/tally/internal/loadgen"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// TestBenchInProcess runs a short mix on an in-process server and reads the JSON report.
func TestBenchInProcess(t *testing.T) {
	out, err := run(t, "bench", "--bench-dir", t.TempDir(), "--workload", "mix", "--clients", "3", "--upload-clients", "1",
		"--requests", "40", "--uploads", "2", "--new-entries", "5", "--history", "1000", "--format", "json", "--rsa-probe", "20ms", "--quiet")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	var rep loadgen.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("report %q: %v", out, err)
	}
	if rep.Increment == nil || rep.Increment.OK != 40 || rep.Upload == nil || rep.Upload.OK != 2 || rep.Upload.EntriesSec <= 0 {
		t.Errorf("report: %s", out)
	}
	if !rep.Check.OK || rep.Check.Objects != 2+2*4 || rep.RSA == nil || rep.RSA.OpsSec <= 0 || len(rep.Extra) != 1 {
		t.Errorf("report: %s", out)
	}
}

// TestBenchTarget drives a server it did not start, with a real history uploaded first.
func TestBenchTarget(t *testing.T) {
	srv, err := loadgen.StartEmbedded(context.Background(), loadgen.ServerOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	der, err := x509.MarshalPKIXPublicKey(srv.Keys.Public())
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "public.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	// The in-process server has both listeners' routes on one: it is --server as well.
	out, err := run(t, "bench", "--target", srv.URL, "--server", srv.URL, "--admin-token", srv.AdminToken, "--public-key", keyFile,
		"--workload", "upload", "--clients", "2", "--uploads", "2", "--history", "3", "--new-entries", "4", "--rsa-probe", "0", "--quiet")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	for _, want := range []string{"UploadValuesToKey  2   0", "data check (8 objects):", "ok: every acknowledged change",
		"removed 8 data objects (their events stay), token revoked: true"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	// The objects are gone from the ledger's state, their events are not, and the token is
	// revoked.
	checkRemoved := func(wantObjects int) {
		t.Helper()
		live, removed := 0, 0
		srv.Projection.Read(func(st *state.State) {
			for _, o := range st.Objects {
				if o.Removed {
					removed++
				} else {
					live++
				}
			}
			for _, tok := range st.Tokens {
				if !tok.Revoked {
					t.Errorf("token %s not revoked", tok.ID)
				}
			}
		})
		if live != 0 || removed != wantObjects {
			t.Errorf("%d live and %d removed objects, want 0 and %d", live, removed, wantObjects)
		}
		events, err := srv.Store.ReadAll(t.Context(), eventstore.Start, 100000)
		if err != nil {
			t.Fatal(err)
		}
		removals := 0
		for _, e := range events {
			if e.Type == domain.EventDataObjectRemoved {
				removals++
			}
		}
		if removals != wantObjects {
			t.Errorf("%d removal events, want %d", removals, wantObjects)
		}
	}
	checkRemoved(8)

	// Now the ledger holds data: a second run is refused and writes nothing, unless
	// --allow-test-data is given.
	head, _ := srv.Store.(eventstore.HeadReader).Head(t.Context())
	args := []string{"bench", "--target", srv.URL, "--server", srv.URL, "--admin-token", srv.AdminToken, "--workload", "increment", "--clients", "2", "--requests", "10", "--rsa-probe", "0", "--quiet"}
	out, err = run(t, args...)
	if err == nil || !strings.Contains(err.Error(), "already holds data (1 products, 2 keys, 1 tokens)") || !strings.Contains(err.Error(), "--allow-test-data") {
		t.Fatalf("bench on a ledger with data: %v\n%s", err, out)
	}
	if after, _ := srv.Store.(eventstore.HeadReader).Head(t.Context()); after != head {
		t.Fatalf("the refused run wrote: head %d -> %d", head, after)
	}
	if out, err := run(t, append(args, "--allow-test-data")...); err != nil || !strings.Contains(out, "removed 2 data objects") {
		t.Fatalf("bench with --allow-test-data: %v\n%s", err, out)
	}
	checkRemoved(10)
}
