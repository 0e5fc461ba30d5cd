package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/readmodel"
)

// onlineAudit runs tally verify and the read models' rebuild inside tally serve, on the live
// store and projections (POST /admin/v1/verify, POST /admin/v1/readmodels/rebuild): the server
// holds the embedded store's directory lock, so it is the one process that can read the store
// while it takes writes.
type onlineAudit struct {
	store     eventstore.Store
	proj      *projections.Current
	model     *readmodel.Live
	logger    *slog.Logger
	verifying sync.Mutex // one verification at a time: each holds a whole replayed state
}

// verify replays the store up to its head and compares with the live projection and the read
// model's checkpoint (projections.VerifyOnline).
func (o *onlineAudit) verify(ctx context.Context, opts httpapi.VerifyOptions, progress func(httpapi.AuditProgress)) (httpapi.VerifyResult, error) {
	if !o.verifying.TryLock() {
		return httpapi.VerifyResult{}, fmt.Errorf("verify: a verification is %w", httpapi.ErrAuditRunning)
	}
	defer o.verifying.Unlock()
	started := time.Now()
	var models []projections.ModelCheckpoint
	var problems []string
	// The read model's checkpoint, read before the head: the replay passes through it.
	pos, events, err := o.model.Checkpoint(ctx)
	if err != nil {
		problems = append(problems, fmt.Sprintf("read model usage: %v", err))
	} else {
		models = append(models, projections.ModelCheckpoint{Name: "usage", Position: pos, Events: events})
	}
	last := time.Time{}
	v, err := projections.VerifyOnline(ctx, o.store, o.proj, projections.OnlineOptions{
		Models: models,
		Progress: func(n int, head eventstore.Position) {
			if progress != nil && time.Since(last) >= 200*time.Millisecond {
				last = time.Now()
				progress(httpapi.AuditProgress{Phase: "replay", Events: int64(n), Head: uint64(head)})
			}
		},
	})
	if err != nil {
		return httpapi.VerifyResult{}, err
	}
	problems = append(problems, v.Problems...)
	if opts.Usage {
		more, err := o.compareUsage(ctx, progress)
		if err != nil {
			return httpapi.VerifyResult{}, err
		}
		problems = append(problems, more...)
	}
	res := httpapi.VerifyResult{
		OK: len(problems) == 0, Head: uint64(v.Head), Position: uint64(v.Position), Events: v.Events, Objects: v.Objects,
		Problems: problems, Seconds: time.Since(started).Seconds(), ReplaySeconds: v.Replay.Seconds(), PausedSeconds: v.Paused.Seconds(),
		PausedEvents: v.PausedEvents, ReplayEvents: v.ReplayEvents,
	}
	if res.Problems == nil {
		res.Problems = []string{}
	}
	o.logger.Info("verify", "ok", res.OK, "problems", len(res.Problems), "head", v.Head, "position", v.Position, "events", v.Events,
		"took", time.Since(started).String(), "paused", v.Paused.String(), "paused_events", v.PausedEvents)
	return res, nil
}

// rebuild builds the usage read model again beside the live one and swaps it in
// (readmodel.Live.Rebuild).
func (o *onlineAudit) rebuild(ctx context.Context, progress func(httpapi.AuditProgress)) (httpapi.RebuildResult, error) {
	var report func(readmodel.RebuildProgress)
	if progress != nil {
		report = func(p readmodel.RebuildProgress) {
			progress(httpapi.AuditProgress{Phase: "catch-up", Position: uint64(p.Position), Head: uint64(p.Head)})
		}
	}
	r, err := o.model.Rebuild(ctx, report)
	if err != nil {
		if err == readmodel.ErrRebuildRunning {
			return httpapi.RebuildResult{}, fmt.Errorf("rebuild: a rebuild of the read models is %w", httpapi.ErrAuditRunning)
		}
		return httpapi.RebuildResult{}, err
	}
	o.logger.Info("read models rebuilt", "head", r.Head, "position", r.Position, "events", r.Events, "took", r.Took.String(), "swap", r.Swap.String())
	return httpapi.RebuildResult{Head: uint64(r.Head), Position: uint64(r.Position), Events: r.Events, Seconds: r.Took.Seconds(), SwapSeconds: r.Swap.Seconds()}, nil
}

// compareUsage compares a usage report of the read model (every object by month, UTC, on the
// usage axis, over 2000 to 2100) with a replay of the store up to the report's position, row by
// row: one more replay of the store.
func (o *onlineAudit) compareUsage(ctx context.Context, progress func(httpapi.AuditProgress)) ([]string, error) {
	q := projections.UsageQuery{From: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), To: time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC), By: projections.ByMonth}
	got, err := o.model.Usage(ctx, q)
	if err != nil {
		return []string{fmt.Sprintf("read model usage: report: %v", err)}, nil
	}
	if progress != nil {
		progress(httpapi.AuditProgress{Phase: "usage", Position: uint64(got.Position), Head: uint64(got.Position)})
	}
	want, err := projections.Usage(ctx, projections.UpTo(o.store, got.Position), q)
	if err != nil {
		return nil, fmt.Errorf("verify: usage replay: %w", err)
	}
	var problems []string
	if len(got.Rows) != len(want.Rows) {
		problems = append(problems, fmt.Sprintf("read model usage vs replay at position %d: %d vs %d rows", got.Position, len(got.Rows), len(want.Rows)))
	}
	for i := range min(len(got.Rows), len(want.Rows)) {
		a, _ := json.Marshal(got.Rows[i])
		b, _ := json.Marshal(want.Rows[i])
		if !bytes.Equal(a, b) {
			problems = append(problems, fmt.Sprintf("read model usage vs replay at position %d: data object %d, %s: %s vs %s", got.Position, got.Rows[i].ObjectID, got.Rows[i].Period, a, b))
			if len(problems) >= 20 {
				problems = append(problems, "read model usage vs replay: more rows differ (the first 20 are shown)")
				break
			}
		}
	}
	return problems, nil
}
