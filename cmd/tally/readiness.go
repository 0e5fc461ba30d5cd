package main

import (
	"errors"
	"sync"
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
