package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/tallyledger/tally/domain/eventstore"
)

// readiness is what /readyz reports: not ready while the projection catches up, then ready,
// or failed for good.
type readiness struct {
	mu  sync.Mutex
	err error
}

func newReadiness() *readiness {
	return &readiness{err: errors.New("catching up with the event store")}
}

func (r *readiness) set() {
	r.mu.Lock()
	r.err = nil
	r.mu.Unlock()
}

func (r *readiness) fail(err error) {
	r.mu.Lock()
	r.err = err
	r.mu.Unlock()
}

func (r *readiness) check() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// writeProbeFile is the file the write probe of the embedded store writes, syncs and removes
// in the store's directory.
const writeProbeFile = ".write-probe"

// writeProbeBytes is how much the write probe writes: a page, so that a full disk refuses it.
const writeProbeBytes = 4096

// storeHealth wraps the event store and remembers whether it takes writes, for /readyz. Every
// append tells: success, or a refusal for the expected revision (the store answered), makes it
// healthy; any other failure (disk full, store closed, connection lost) unhealthy with that
// cause; an append whose caller gave up says nothing. A probe (see probe) tells the same
// without waiting for traffic, and is how a store that refused writes is seen to take them
// again while a load balancer, told by /readyz, sends it none.
type storeHealth struct {
	eventstore.Store
	// probeDir, if set, is a directory on the store's disk where the probe writes a file
	// (the embedded store's): an append of no events checks the store but writes nothing.
	probeDir string
	mu       sync.Mutex
	err      error
}

func newStoreHealth(s eventstore.Store, probeDir string) *storeHealth {
	return &storeHealth{Store: s, probeDir: probeDir}
}

// Append appends and records the outcome.
func (h *storeHealth) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	res, err := h.Store.Append(ctx, stream, expected, events...)
	h.record(err)
	return res, err
}

// writer is the store to hand to those who write: h, keeping the wrapped store's fast head
// (eventstore.HeadReader) visible when it has one.
func (h *storeHealth) writer() eventstore.Store {
	if hr, ok := h.Store.(eventstore.HeadReader); ok {
		return healthWithHead{storeHealth: h, head: hr}
	}
	return h
}

// healthWithHead is a storeHealth over a store that knows its head.
type healthWithHead struct {
	*storeHealth
	head eventstore.HeadReader
}

func (s healthWithHead) Head(ctx context.Context) (eventstore.Position, error) {
	return s.head.Head(ctx)
}

func (h *storeHealth) record(err error) {
	switch {
	case err == nil, errors.Is(err, eventstore.ErrWrongExpectedVersion):
		h.set(nil)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// The caller gave up: the store said nothing about itself.
	default:
		h.set(fmt.Errorf("event store refuses writes: %w", err))
	}
}

func (h *storeHealth) set(err error) {
	h.mu.Lock()
	h.err = err
	h.mu.Unlock()
}

// check is nil while the store takes writes, else why it does not.
func (h *storeHealth) check() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// probe checks that the store takes writes now and records the outcome: an append of no events
// to a stream of its own (it reaches the store, through its writer or over the network, and
// writes nothing), then, for the embedded store, a page written and synced to a file beside
// the database (a full or read-only disk refuses it).
func (h *storeHealth) probe(ctx context.Context) error {
	_, err := h.Append(ctx, "tally-write-probe", eventstore.Any())
	if err != nil {
		return err
	}
	if h.probeDir == "" {
		return nil
	}
	if err := writeProbe(filepath.Join(h.probeDir, writeProbeFile)); err != nil {
		err = fmt.Errorf("event store refuses writes: %w", err)
		h.set(err)
		return err
	}
	return nil
}

// writeProbe writes a page to path, syncs it and removes the file.
func writeProbe(path string) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write probe: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("write probe: %w", cerr)
		}
		if rerr := os.Remove(path); err == nil && rerr != nil {
			err = fmt.Errorf("write probe: %w", rerr)
		}
	}()
	if _, err := f.Write(make([]byte, writeProbeBytes)); err != nil {
		return fmt.Errorf("write probe: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write probe: %w", err)
	}
	return nil
}

// runProbes probes the store every interval until ctx ends; onProbe, if set, sees each outcome
// (tests wait on it).
func (h *storeHealth) runProbes(ctx context.Context, interval time.Duration, logger *slog.Logger, onProbe func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var last error
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := h.probe(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil && last == nil:
			logger.Error("the event store refuses writes; /readyz answers 503", "err", err)
		case err == nil && last != nil:
			logger.Info("the event store takes writes again")
		}
		last = err
		if onProbe != nil {
			onProbe(err)
		}
	}
}
