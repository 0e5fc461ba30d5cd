package projections

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// LiveState is the projection an online verification compares with; Current is one. Read
// holds the projection still (it applies no event) while fn runs; appends to the store go on.
type LiveState interface {
	Position() eventstore.Position
	WaitFor(ctx context.Context, pos eventstore.Position) error
	ReadFrozen(ctx context.Context, fn func(*state.State)) (*FrozenLayers, func(), error)
}

var _ LiveState = (*Current)(nil)

// ModelCheckpoint is where another read model says it is: the store position of the last event
// it folded, and how many events it folded up to there (exactly-once folding makes that the
// number of events of the store up to the position).
type ModelCheckpoint struct {
	Name     string
	Position eventstore.Position
	Events   int64
}

// OnlineOptions configure VerifyOnline.
type OnlineOptions struct {
	// Progress, if set, is called after each batch of the replay with the events folded so far
	// and the head the replay goes to.
	Progress func(events int, head eventstore.Position)
	// Models are checkpoints of other read models, read before VerifyOnline is called (so at
	// or before the head it reads): each must be an event of the store, with as many events
	// up to it as the replay counts there.
	Models []ModelCheckpoint
}

// OnlineVerification is the outcome of VerifyOnline.
type OnlineVerification struct {
	// Head is the store's last position when the verification started: the replay's snapshot
	// is every event up to it (events are append-only, positions only grow).
	Head eventstore.Position `json:"head"`
	// Position is where the replay and the live projection were compared (at or after Head:
	// the replay is folded on to where the projection had got).
	Position eventstore.Position `json:"position"`
	Events   uint64              `json:"events"`
	Objects  int                 `json:"objects"`
	// Problems lists every difference, one line each; none means the verification passed.
	Problems []string `json:"problems"`
	// Replay is how long folding up to Head took; Paused how long the live projection was held
	// still for the comparison (its read lock: it applied no event meanwhile).
	Replay time.Duration `json:"-"`
	Paused time.Duration `json:"-"`
	// ReplayEvents is how many events the replay folded up to Head.
	ReplayEvents uint64 `json:"-"`
	// PausedEvents is how many events the replay folded while the projection was held still.
	PausedEvents uint64 `json:"-"`
}

// VerifyOnline checks a live projection while the store takes writes. It reads the store's
// head H, folds every event up to H into a fresh state checking each recorded value-after (as
// RebuildVerified does), folds on without a lock to about where the live projection is, then
// holds the projection still (its read lock), folds the replay on to the projection's exact
// position and compares both with state.Diff. Writers are never blocked: appends do not wait
// for the projection, and the store's reads take no lock they wait on. Only the projection
// pauses, for the last few events and the comparison.
func VerifyOnline(ctx context.Context, store eventstore.Store, live LiveState, opts OnlineOptions) (*OnlineVerification, error) {
	head, err := eventstore.Head(ctx, store, eventstore.Start)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	v := &OnlineVerification{Head: head, Problems: []string{}}
	st := state.NewState()
	pending := map[uuid.UUID][]recordedAfter{}
	models := map[eventstore.Position][]int{}
	seen := make([]bool, len(opts.Models))
	for i, m := range opts.Models {
		if m.Position == eventstore.Start {
			seen[i] = true
			if m.Events != 0 {
				v.Problems = append(v.Problems, fmt.Sprintf("read model %s: %d events folded at the start of the store", m.Name, m.Events))
			}
			continue
		}
		models[m.Position] = append(models[m.Position], i)
	}
	apply := func(d *state.Decoded) {
		v.Problems = verifyApply(st, d, pending, v.Problems)
		for _, i := range models[d.Event.Position] {
			seen[i] = true
			if m := opts.Models[i]; uint64(m.Events) != st.Events {
				v.Problems = append(v.Problems, fmt.Sprintf("read model %s: %d events folded up to position %d, the store holds %d", m.Name, m.Events, m.Position, st.Events))
			}
		}
	}
	var progress func(int)
	if opts.Progress != nil {
		progress = func(n int) { opts.Progress(n, head) }
	}
	started := time.Now()
	if err := fold(ctx, upTo(store, head), st, progress, apply); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	v.Replay, v.ReplayEvents = time.Since(started), st.Events

	// The projection may still be short of the head: it reflects every event up to it soon.
	if err := live.WaitFor(ctx, head); err != nil {
		return nil, fmt.Errorf("verify: wait for the projection to reach %d: %w", head, err)
	}
	// Follow the projection without a lock while it moves on, so that what is left to fold
	// under its lock is a few events.
	for range 4 {
		to := live.Position()
		if to <= st.Position {
			break
		}
		if err := fold(ctx, upTo(store, to), st, nil, apply); err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
	}
	var ferr error
	layers, release, err := live.ReadFrozen(ctx, func(ls *state.State) {
		held := time.Now()
		defer func() { v.Paused = time.Since(held) }()
		if ls.Position < st.Position { // positions only grow; a projection that went back is wrong
			v.Problems = append(v.Problems, fmt.Sprintf("projection: at position %d, behind %d it had reached", ls.Position, st.Position))
			return
		}
		before := st.Events
		if ferr = fold(ctx, upTo(store, ls.Position), st, nil, apply); ferr != nil {
			return
		}
		v.PausedEvents = st.Events - before
		v.Position = ls.Position
		for _, d := range state.DiffExceptLayers(ls, st) {
			v.Problems = append(v.Problems, "projection vs replay: "+d)
		}
		if ls.Events != st.Events {
			v.Problems = append(v.Problems, fmt.Sprintf("projection vs replay: %d vs %d events", ls.Events, st.Events))
		}
	})
	if err != nil {
		return nil, fmt.Errorf("verify: hold the projection: %w", err)
	}
	defer release()
	if ferr != nil {
		return nil, fmt.Errorf("verify: %w", ferr)
	}
	// The applied layers as they were at that position, compared after the projection moved on:
	// they may be millions, on disk.
	diff, err := layers.Diff(ctx, st)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	for _, d := range diff {
		v.Problems = append(v.Problems, "projection vs replay: "+d)
	}
	for i, m := range opts.Models {
		if !seen[i] {
			v.Problems = append(v.Problems, fmt.Sprintf("read model %s: checkpoint %d is not an event of this store (head %d)", m.Name, m.Position, head))
		}
	}
	v.Events, v.Objects = st.Events, len(st.Objects)
	return v, nil
}

// UpTo is r read up to end (inclusive): what a replay of the store sees at that position,
// whatever is appended later (the oracle of a read model that reflects end).
func UpTo(r AllReader, end eventstore.Position) AllReader { return upTo(r, end) }

// upTo is r up to end, keeping the replay's read-ahead (replayReader) when r has it.
func upTo(r AllReader, end eventstore.Position) AllReader {
	if rr, ok := r.(replayReader); ok {
		return replayUpTo{readUpTo{r, end}, rr}
	}
	return readUpTo{r, end}
}

// replayUpTo is readUpTo for a store the replay reads ahead in ranges.
type replayUpTo struct {
	readUpTo
	rr replayReader
}

func (u replayUpTo) Head(ctx context.Context) (eventstore.Position, error) {
	h, err := u.rr.Head(ctx)
	return min(h, u.end), err
}

func (u replayUpTo) ReadRangeForFold(ctx context.Context, after, to eventstore.Position, buf []eventstore.RecordedEvent) ([]eventstore.RecordedEvent, error) {
	return u.rr.ReadRangeForFold(ctx, after, min(to, u.end), buf)
}

// readUpTo reads the store up to end (inclusive): the snapshot of the store at a position it
// held, which later appends cannot change.
type readUpTo struct {
	r   AllReader
	end eventstore.Position
}

func (u readUpTo) ReadAll(ctx context.Context, from eventstore.Position, max int) ([]eventstore.RecordedEvent, error) {
	if from >= u.end {
		return nil, nil
	}
	evs, err := u.r.ReadAll(ctx, from, max)
	if err != nil {
		return nil, err
	}
	for i, ev := range evs {
		if ev.Position > u.end {
			return evs[:i], nil
		}
	}
	return evs, nil
}

var _ replayReader = replayUpTo{}
