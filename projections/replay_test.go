package projections_test

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/audittest"
)

// pagedOnly hides the embedded store's range reads: Rebuild then reads page after page with
// ReadAll, as it does on KurrentDB and as it did before the read-ahead.
type pagedOnly struct{ r projections.AllReader }

func (p pagedOnly) ReadAll(ctx context.Context, from eventstore.Position, max int) ([]eventstore.RecordedEvent, error) {
	return p.r.ReadAll(ctx, from, max)
}

// sameState fails unless two replays agree on every object, upload and layer, and stop at the
// same event.
func sameState(t *testing.T, got, want *state.State) {
	t.Helper()
	if d := state.Diff(got, want); len(d) > 0 {
		t.Fatalf("the read-ahead replay differs from the paged one: %v", d)
	}
	if got.Position != want.Position || got.LastEvent != want.LastEvent || got.Events != want.Events {
		t.Fatalf("read-ahead replay ends at %d %+v after %d events, paged at %d %+v after %d",
			got.Position, got.LastEvent, got.Events, want.Position, want.LastEvent, want.Events)
	}
	a, _ := state.MarshalState(got)
	b, _ := state.MarshalState(want)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("the read-ahead replay's snapshot differs from the paged one's")
	}
}

// TestRebuildReadAheadEqualsPagedReplay: on a store of more events than one read-ahead range
// (direct changes, corrections, committed, aborted and undecided uploads, in the compact
// encoding), Rebuild and RebuildVerified with parallel range reads give exactly the state of
// the plain paged replay, with the same progress and no problems.
func TestRebuildReadAheadEqualsPagedReplay(t *testing.T) {
	ctx := context.Background()
	store, head := storeBeyondOneRange(t, 13, 14)

	var progress []int
	ahead, err := projections.Rebuild(ctx, store, func(n int) { progress = append(progress, n) })
	if err != nil {
		t.Fatal(err)
	}
	paged, err := projections.Rebuild(ctx, pagedOnly{store}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, ahead, paged)
	if ahead.Position != head || len(progress) == 0 || progress[len(progress)-1] != int(head) {
		t.Fatalf("replayed to %d of %d, progress %v", ahead.Position, head, progress)
	}

	verified, problems, err := projections.RebuildVerified(ctx, store, nil)
	if err != nil || len(problems) > 0 {
		t.Fatalf("verify: %v, %v", problems, err)
	}
	sameState(t, verified, paged)
}

// TestFoldEndsAtEveryRangeWithTheCheckpointID: the read-ahead fold reads the event ids of the
// range ends only (ReadRangeForFold); replays that stop anywhere (inside a range, at its last
// event, one after it, at the head) and a fold in chunks (as ReplayState catches up) end at
// the same event, with its id, and the same state as the paged replay, which reads every id.
func TestFoldEndsAtEveryRangeWithTheCheckpointID(t *testing.T) {
	ctx := context.Background()
	store, head := storeBeyondOneRange(t, 15, 16)
	for _, end := range []eventstore.Position{1, 2, 4095, 4096, 4097, head - 1, head} {
		ahead, err := projections.Rebuild(ctx, projections.UpTo(store, end), nil)
		if err != nil {
			t.Fatal(err)
		}
		paged, err := projections.Rebuild(ctx, pagedOnly{projections.UpTo(store, end)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if paged.Position != end || paged.LastEvent.ID == (uuid.UUID{}) {
			t.Fatalf("the paged replay up to %d ends at %d %+v", end, paged.Position, paged.LastEvent)
		}
		sameState(t, ahead, paged)
	}
	chunked := state.NewState()
	for to := eventstore.Position(0); to < head; {
		to = min(to+1000, head)
		if err := projections.CatchUp(ctx, projections.UpTo(store, to), chunked); err != nil {
			t.Fatal(err)
		}
	}
	paged, err := projections.Rebuild(ctx, pagedOnly{store}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, chunked, paged)
}

// TestRebuildOfAStoreWrittenAsJSON: a store written by Tally before the compact encoding (the
// fixture of TestStoreWrittenBeforeIdentityV2, every event a JSON object) replays to the state
// it held: object 1 at 150 from two committed uploads, both readers alike.
func TestRebuildOfAStoreWrittenAsJSON(t *testing.T) {
	ctx := context.Background()
	b, err := os.ReadFile(filepath.Join("..", "adapters", "httpapi", "testdata", "legacy-992cfab", "store", "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, embedded.DatabaseFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := embedded.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	evs, err := store.ReadAll(ctx, eventstore.Start, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if len(ev.Data) == 0 || ev.Data[0] != '{' {
			t.Fatalf("the fixture holds a body that is not a JSON object: %s %q", ev.Type, ev.Data)
		}
	}
	st, err := projections.Rebuild(ctx, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, st, must(projections.Rebuild(ctx, pagedOnly{store}, nil)))
	o, ok := st.Object(1)
	if !ok || o.IntValue != 150 || len(o.Pending) != 0 {
		t.Fatalf("object 1: %+v, %v; want 150 with nothing pending", o, ok)
	}
	if st.Position != evs[len(evs)-1].Position {
		t.Fatalf("replayed to %d, the store ends at %d", st.Position, evs[len(evs)-1].Position)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// storeBeyondOneRange is an embedded store seeded (audittest.Seed, from the seeds given) with
// more events than one read-ahead range and one more, and its head. It closes with the test.
func storeBeyondOneRange(t *testing.T, seed1, seed2 uint64) (*embedded.Store, eventstore.Position) {
	t.Helper()
	ctx := context.Background()
	store, err := embedded.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	env := audittest.Start(t, store, "")
	audittest.Seed(t, env, rand.New(rand.NewPCG(seed1, seed2)), 3000)
	env.Stop()
	head, err := store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if head <= 4097 {
		t.Fatalf("only %d events: the tests need more than one read-ahead range", head)
	}
	return store, head
}
