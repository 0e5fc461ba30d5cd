package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/eventstore/storetest"
)

// failEverything fails every append.
func failEverything(stream string, _ []eventstore.EventData) error {
	return fmt.Errorf("append to %s: %w", stream, storetest.ErrInjected)
}

// TestStoreHealthFollowsWrites checks the write health on a real embedded store: appends that
// fail (injected at the commit boundary) make it unhealthy with their cause, a refusal for the
// expected revision does not, a probe sees a store that refuses writes and one that takes them
// again, a disk that refuses the probe's file, and a closed store.
func TestStoreHealthFollowsWrites(t *testing.T) {
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "events")
	inner, err := embedded.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := newStoreHealth(inner, dir).writer().(eventstore.HeadReader); !ok {
		t.Fatal("the wrapper hides the embedded store's head")
	}
	faulty := storetest.NewFaulty(inner)
	h := newStoreHealth(faulty, dir)
	w := h.writer()
	if err := h.probe(ctx); err != nil || h.check() != nil {
		t.Fatalf("probe of a healthy store: %v, %v", err, h.check())
	}
	ev := eventstore.EventData{Type: "t", Data: []byte(`{}`)}
	if _, err := w.Append(ctx, "s-1", eventstore.NoStream(), ev); err != nil {
		t.Fatal(err)
	}
	// A refusal for the expected revision: the store answered, it is healthy.
	if _, err := w.Append(ctx, "s-1", eventstore.NoStream(), ev); !errors.Is(err, eventstore.ErrWrongExpectedVersion) {
		t.Fatalf("append on a stream that exists: %v", err)
	}
	if err := h.check(); err != nil {
		t.Fatalf("after a conflict: %v", err)
	}
	// The store refuses writes: a real append and the probe both see it.
	faulty.FailAppends(failEverything)
	if _, err := w.Append(ctx, "s-3", eventstore.Any(), ev); err == nil {
		t.Fatal("an injected failure did not fail")
	}
	if err := h.check(); err == nil || !strings.Contains(err.Error(), "event store refuses writes") || !errors.Is(err, storetest.ErrInjected) {
		t.Fatalf("after a failed append: %v", err)
	}
	// A caller that gave up says nothing about the store, either way.
	h.record(fmt.Errorf("append: %w", context.Canceled))
	if !errors.Is(h.check(), storetest.ErrInjected) {
		t.Fatalf("a cancelled append changed the health: %v", h.check())
	}
	faulty.FailAppends(nil)
	if _, err := w.Append(ctx, "s-3", eventstore.Any(), ev); err != nil || h.check() != nil {
		t.Fatalf("a successful append does not make it healthy again: %v, %v", err, h.check())
	}
	faulty.FailAppends(failEverything)
	if err := h.probe(ctx); err == nil || !errors.Is(h.check(), storetest.ErrInjected) {
		t.Fatalf("probe of a store that refuses writes: %v, %v", err, h.check())
	}
	faulty.FailAppends(nil)
	if err := h.probe(ctx); err != nil || h.check() != nil {
		t.Fatalf("probe once writes succeed again: %v, %v", err, h.check())
	}

	// A disk that refuses the probe's file (a directory in its place refuses it even to root).
	if err := os.Mkdir(filepath.Join(dir, writeProbeFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := h.probe(ctx); err == nil || !strings.Contains(fmt.Sprint(h.check()), "write probe") {
		t.Fatalf("probe where the disk refuses the file: %v, %v", err, h.check())
	}
	if err := os.Remove(filepath.Join(dir, writeProbeFile)); err != nil {
		t.Fatal(err)
	}
	if err := h.probe(ctx); err != nil || h.check() != nil {
		t.Fatalf("probe once the disk takes the file again: %v, %v", err, h.check())
	}
	if _, err := os.Stat(filepath.Join(dir, writeProbeFile)); !os.IsNotExist(err) {
		t.Fatalf("the probe left its file: %v", err)
	}

	// A closed store.
	if err := faulty.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.probe(ctx); !errors.Is(err, eventstore.ErrClosed) || !errors.Is(h.check(), eventstore.ErrClosed) {
		t.Fatalf("probe of a closed store: %v, %v", err, h.check())
	}
}

// TestReadyzTellsTheTruth runs the real server on a store whose appends can be made to fail.
// With probes far apart, a failed increment turns /readyz to 503 with the reason at once, and
// the next successful one back to 200. With frequent probes, /readyz turns 503 while the store
// refuses writes without any traffic, and 200 again once a probe sees writes succeed.
func TestReadyzTellsTheTruth(t *testing.T) {
	for _, probes := range []string{"far apart", "frequent"} {
		t.Run(probes, func(t *testing.T) {
			dataDir := privateTempDir(t)
			g := &globalFlags{DataDir: dataDir}
			var faulty *storetest.Faulty
			probed := make(chan error, 1)
			cfg := serveConfig{Store: "embedded", MaxBodyBytes: 1 << 20, UploadLease: time.Minute, WriteProbe: time.Hour,
				wrapStore: func(s eventstore.Store) eventstore.Store { faulty = storetest.NewFaulty(s); return faulty }}
			if probes == "frequent" {
				cfg.WriteProbe = 5 * time.Millisecond
				cfg.onWriteProbe = func(err error) {
					select {
					case probed <- err:
					default: // nobody waits: drop it
					}
				}
			}
			urls, stop := startServe(t, g, cfg, &syncBuffer{})
			t.Cleanup(func() {
				if err := stop(); err != nil {
					t.Errorf("serve: %v", err)
				}
			})
			readyz := func() (int, string) {
				t.Helper()
				resp, err := http.Get(urls.Public + "/readyz")
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}
			// waitProbe waits for a probe whose outcome failed or not, as asked.
			waitProbe := func(failed bool) {
				t.Helper()
				for err := range probed {
					if (err != nil) == failed {
						return
					}
				}
			}
			product := mustRun(t, "--server", urls.Admin, "--data-dir", dataDir, "product", "create", "--name", "App")
			key := mustRun(t, "--server", urls.Admin, "--data-dir", dataDir, "key", "create", "--product", product)
			token := mustRun(t, "--server", urls.Admin, "--data-dir", dataDir, "token", "create", "--permissions", "all", "--product-lock", "0", "--key-lock", "0", "--feature-lock", "0")
			owner := url.Values{"token": {token}, "ProductId": {product}, "Key": {key}}
			if r := call(t, urls.Public, "AddDataObjectToKey", with(owner, "Name", "seats", "IntValue", "1")); r["result"] != float64(0) {
				t.Fatalf("AddDataObjectToKey: %v", r)
			}
			increment := func() map[string]any {
				return call(t, urls.Public, "IncrementIntValueToKey", with(owner, "Name", "seats", "IntValue", "1"))
			}

			faulty.FailAppends(failEverything)
			if probes == "far apart" {
				if r := increment(); r["result"] != float64(1) || !strings.Contains(fmt.Sprint(r["message"]), "temporarily unavailable") {
					t.Fatalf("increment while the store refuses writes: %v", r)
				}
			} else {
				waitProbe(true)
			}
			if status, body := readyz(); status != http.StatusServiceUnavailable || !strings.Contains(body, "event store refuses writes") || !strings.Contains(body, "injected store failure") {
				t.Fatalf("/readyz while the store refuses writes: %d %q", status, body)
			}

			faulty.FailAppends(nil)
			if probes == "far apart" {
				if r := increment(); r["result"] != float64(0) {
					t.Fatalf("increment once the store takes writes again: %v", r)
				}
			} else {
				waitProbe(false)
			}
			if status, body := readyz(); status != http.StatusOK {
				t.Fatalf("/readyz once the store takes writes again: %d %q", status, body)
			}
			if r := increment(); r["result"] != float64(0) {
				t.Fatalf("increment once ready again: %v", r)
			}
		})
	}
}

// mustRun runs a tally command and returns its standard output, trimmed.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	root := newRootCommand()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		t.Fatalf("tally %v: %v\n%s", args, err, errOut.String())
	}
	return strings.TrimSpace(out.String())
}
