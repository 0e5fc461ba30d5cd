package ledger

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// TestDecodePoolGivesWayToDirectCalls checks the pool's two limits: at most workers decodes
// at once, and while a direct call runs (and for a moment after) at most busyWorkers of them go
// past a layer; once direct calls stop, the waiting decoder goes on.
func TestDecodePoolGivesWayToDirectCalls(t *testing.T) {
	ctx := context.Background()
	var now atomic.Int64 // the pool's clock, UnixNano
	now.Store(time.Unix(1_000_000, 0).UnixNano())
	p := newDecodePool(2, 1)
	p.now = func() time.Time { return time.Unix(0, now.Load()) }
	p.lastDirect.Store(now.Load() - int64(time.Hour))
	waiting := make(chan struct{}, 1)

	d1, err := p.start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := p.start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// No direct call: both decode, neither holds a busy token.
	d1.layer(ctx)
	d2.layer(ctx)
	if d1.holdsCPU || d2.holdsCPU {
		t.Fatal("a decoder took a busy token with no direct call running")
	}

	// A third log waits for a worker until one decode ends.
	var firstEnded atomic.Bool
	third := make(chan bool)
	go func() {
		d3, err := p.start(ctx)
		if err == nil {
			d3.end()
		}
		third <- firstEnded.Load()
	}()

	endDirect := p.directCall()
	d1.layer(ctx)
	if !d1.holdsCPU {
		t.Fatal("the first decoder did not take the busy token")
	}
	var released atomic.Bool
	second := make(chan bool)
	p.onWait = func() { waiting <- struct{}{} }
	go func() {
		d2.layer(ctx) // waits: the only busy token is d1's
		second <- released.Load()
	}()
	<-waiting
	endDirect()
	now.Add(int64(directCallLinger)) // the direct calls have stopped for long enough
	released.Store(true)
	d1.layer(ctx) // gives its token back
	if d1.holdsCPU {
		t.Fatal("the first decoder kept the busy token after direct calls stopped")
	}
	if !<-second {
		t.Fatal("the second decoder went past a layer while a direct call ran and the busy token was taken")
	}
	if !d2.holdsCPU {
		t.Fatal("the second decoder went on without the busy token")
	}
	firstEnded.Store(true)
	d1.end()
	if !<-third {
		t.Fatal("a third log was decoded while two decodes held both workers")
	}
	d2.end()
	if len(p.workers) != 0 || len(p.busyWorkers) != 0 {
		t.Fatalf("tokens left after every decode ended: %d workers, %d busy", len(p.workers), len(p.busyWorkers))
	}
}

// TestDecodePoolDefaults: one decode per processor, half of them while direct calls run.
func TestDecodePoolDefaults(t *testing.T) {
	p := newDecodePool(0, 0)
	if cap(p.workers) != DefaultDecodeWorkers() || cap(p.busyWorkers) != DefaultBusyDecodeWorkers() {
		t.Fatalf("workers %d, busy %d", cap(p.workers), cap(p.busyWorkers))
	}
	if DefaultBusyDecodeWorkers() < 1 || DefaultBusyDecodeWorkers() > DefaultDecodeWorkers() {
		t.Fatalf("busy workers %d of %d", DefaultBusyDecodeWorkers(), DefaultDecodeWorkers())
	}
	if p := newDecodePool(1, 4); cap(p.busyWorkers) != 1 {
		t.Fatalf("busy workers %d above the 1 worker", cap(p.busyWorkers))
	}
}
