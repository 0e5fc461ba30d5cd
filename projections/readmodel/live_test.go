package readmodel_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/readmodel"
)

// TestLiveRebuildAnswersThroughoutAndEqualsTheReplay damages the live read model's buckets
// behind its back, then rebuilds it online while corrections are written and reports are asked
// for: every report is answered (none fails because of the rebuild), the damaged file is
// replaced by the rebuilt one, and afterwards the model answers as the replay oracle again.
func TestLiveRebuildAnswersThroughoutAndEqualsTheReplay(t *testing.T) {
	ctx := context.Background()
	store, env, w, _ := seeded(t, 29, 150, "")
	path := filepath.Join(t.TempDir(), "readmodels", "usage.db")
	live, err := readmodel.OpenLive(ctx, store, path, readmodel.Options{BatchEvents: 97})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := live.Close(); err != nil {
			t.Error(err)
		}
	}()
	head, err := live.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := live.WaitFor(ctx, head); err != nil {
		t.Fatal(err)
	}
	year := projections.UsageQuery{From: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), To: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), By: projections.ByMonth}
	// Damage: every monthly bucket counts 1000 more increments than happened.
	damage, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := damage.ExecContext(ctx, `UPDATE b_month SET inc = inc + 1000`); err != nil {
		t.Fatal(err)
	}
	_ = damage.Close()
	wrong, err := live.Usage(ctx, year)
	if err != nil {
		t.Fatal(err)
	}
	oracle, err := projections.Usage(ctx, readUpTo(store, wrong.Position), year)
	if err != nil {
		t.Fatal(err)
	}
	if len(oracle.Rows) == 0 || wrong.Rows[0].Increments != oracle.Rows[0].Increments+1000 {
		t.Fatalf("the damage did not show: %d rows, increments %d", len(oracle.Rows), wrong.Rows[0].Increments)
	}
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}

	// Corrections and reports go on throughout the rebuild.
	stop := make(chan struct{})
	var background sync.WaitGroup
	var answered, corrected atomic.Int64
	background.Add(2)
	go func() {
		defer background.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := live.Usage(ctx, year); err != nil {
				t.Errorf("a report during the rebuild: %v", err)
				return
			}
			answered.Add(1)
		}
	}()
	go func() {
		defer background.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			o := w.Objects[i%len(w.Objects)]
			if o.ID == w.Removed || o.ID == w.Pending {
				continue
			}
			if err := env.Ledger.Correct(ctx, ledger.Caller{Admin: true}, o.ID, 1, "during the rebuild"); err != nil {
				t.Errorf("a correction during the rebuild: %v", err)
				return
			}
			corrected.Add(1)
		}
	}()
	var progressed int
	res, err := live.Rebuild(ctx, func(p readmodel.RebuildProgress) {
		progressed++
		// Deterministically, a report is answered while the fresh model catches up.
		if _, err := live.Usage(ctx, year); err != nil {
			t.Errorf("a report while the fresh model catches up: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	close(stop)
	background.Wait()
	if progressed == 0 || answered.Load() == 0 || corrected.Load() == 0 {
		t.Fatalf("progress %d, reports %d, corrections %d during the rebuild", progressed, answered.Load(), corrected.Load())
	}
	if res.Position < res.Head || res.Events == 0 {
		t.Fatalf("rebuild result %+v", res)
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if os.SameFile(before, after) {
		t.Fatal("the live file was not replaced")
	}
	if _, err := os.Stat(path + ".rebuild"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the rebuild's file is left behind: %v", err)
	}

	// Afterwards: equal to the replay at the same position, in every zone.
	pos, err := live.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := live.WaitFor(ctx, pos); err != nil {
		t.Fatal(err)
	}
	_, n, err := live.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	all := inMemory(t, store)
	if n != int64(len(all)) {
		t.Fatalf("the rebuilt model folded %d events, the store holds %d", n, len(all))
	}
	qs := queries(t, w)
	for i := 0; i < len(qs); i += map[bool]int{false: 3, true: 12}[underRace] {
		want, err := projections.Usage(ctx, all, qs[i])
		if err != nil {
			t.Fatal(err)
		}
		got, err := live.Usage(ctx, qs[i])
		if err != nil {
			t.Fatal(err)
		}
		sameReport(t, want, got, describe(qs[i]))
	}
	// One rebuild at a time.
	blocked := make(chan struct{})
	release := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		_, err := live.Rebuild(ctx, func(readmodel.RebuildProgress) {
			select {
			case <-blocked:
			default:
				close(blocked)
				<-release
			}
		})
		first <- err
	}()
	<-blocked
	if _, err := live.Rebuild(ctx, nil); !errors.Is(err, readmodel.ErrRebuildRunning) {
		t.Errorf("a second rebuild while one runs: %v", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Errorf("the first of two rebuilds: %v", err)
	}
}

// readUpTo is the store up to pos, for the oracle to replay what a report reflects.
func readUpTo(store eventstore.Store, pos eventstore.Position) projections.AllReader {
	return upTo{store, pos}
}

type upTo struct {
	store eventstore.Store
	end   eventstore.Position
}

func (u upTo) ReadAll(ctx context.Context, from eventstore.Position, max int) ([]eventstore.RecordedEvent, error) {
	evs, err := u.store.ReadAll(ctx, from, max)
	for i, ev := range evs {
		if ev.Position > u.end {
			return evs[:i], err
		}
	}
	return evs, err
}
