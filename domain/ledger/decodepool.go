package ledger

import (
	"context"
	"runtime"
	"sync/atomic"
	"time"
)

// directCallLinger is how long after its last direct call the ledger still counts as busy with
// them: a client in a loop is between two calls for a moment, and the pool must not widen and
// narrow again at every such moment.
const directCallLinger = 20 * time.Millisecond

// decodePool bounds the decoding of usage logs, which is nearly all RSA (docs/performance.md):
// at most workers logs are decoded at once, and while direct calls (the data-object commands)
// run, at most busyWorkers of them go on, so that uploads cannot take every core from direct
// calls. The limit is applied between layers (one RSA operation, under a millisecond apart), so
// it follows the direct calls within a layer; between layers a decoder also yields to any
// goroutine waiting for a processor.
type decodePool struct {
	workers     chan struct{} // one token per log being decoded
	busyWorkers chan struct{} // one token per decoder going on while direct calls run
	// direct counts the direct calls in flight; lastDirect is when the last one ended
	// (UnixNano).
	direct     atomic.Int64
	lastDirect atomic.Int64
	now        func() time.Time
	// onWait, if set, is called when a decoder starts waiting for a busy token (tests).
	onWait func()
}

// DefaultDecodeWorkers is the default number of logs decoded at once: one per processor.
func DefaultDecodeWorkers() int { return runtime.GOMAXPROCS(0) }

// DefaultBusyDecodeWorkers is the default number of logs decoded at once while direct calls
// run: half the processors (at least one), leaving the other half to the direct calls.
func DefaultBusyDecodeWorkers() int { return max(1, runtime.GOMAXPROCS(0)/2) }

func newDecodePool(workers, busy int) *decodePool {
	if workers <= 0 {
		workers = DefaultDecodeWorkers()
	}
	if busy <= 0 {
		busy = DefaultBusyDecodeWorkers()
	}
	busy = min(busy, workers)
	return &decodePool{
		workers: make(chan struct{}, workers), busyWorkers: make(chan struct{}, busy), now: time.Now,
	}
}

// directCall marks a direct call in flight; the returned func marks its end.
func (p *decodePool) directCall() func() {
	p.direct.Add(1)
	return func() {
		p.lastDirect.Store(p.now().UnixNano())
		p.direct.Add(-1)
	}
}

// busy reports whether direct calls run or ran a moment ago.
func (p *decodePool) busy() bool {
	return p.direct.Load() > 0 || p.now().UnixNano()-p.lastDirect.Load() < int64(directCallLinger)
}

// decoding is one log's turn in the pool.
type decoding struct {
	pool     *decodePool
	holdsCPU bool // holds a busyWorkers token
}

// start waits for a worker; end must be called when the decode is over.
func (p *decodePool) start(ctx context.Context) (*decoding, error) {
	select {
	case p.workers <- struct{}{}:
		return &decoding{pool: p}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// layer is called before each layer's RSA operation: while direct calls run, it waits for one
// of the busy workers' tokens (and keeps it until they stop); otherwise it gives its token back.
// It gives way to any runnable goroutine first. A decode whose ctx ends goes on (the decoder
// checks ctx itself before each layer).
func (d *decoding) layer(ctx context.Context) {
	runtime.Gosched()
	if !d.pool.busy() {
		d.releaseCPU()
		return
	}
	if d.holdsCPU {
		return
	}
	if d.pool.onWait != nil {
		d.pool.onWait()
	}
	select {
	case d.pool.busyWorkers <- struct{}{}:
		d.holdsCPU = true
	case <-ctx.Done():
	}
}

func (d *decoding) releaseCPU() {
	if d.holdsCPU {
		<-d.pool.busyWorkers
		d.holdsCPU = false
	}
}

// end gives the worker back.
func (d *decoding) end() {
	d.releaseCPU()
	<-d.pool.workers
}
