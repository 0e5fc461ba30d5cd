package projections_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
)

// BenchmarkCheckpoint measures one checkpoint of the current-state projection after `changed`
// data objects moved, on a persisted state of `objects` data objects and `layers` applied
// layers: the cost follows what changed, not the size of the state (docs/performance.md).
func BenchmarkCheckpoint(b *testing.B) {
	for _, size := range []struct{ objects, layers int }{{1000, 10000}, {10000, 100000}, {100000, 1000000}} {
		for _, changed := range []int{10, 100, 1000} {
			b.Run(fmt.Sprintf("objects=%d/layers=%d/changed=%d", size.objects, size.layers, changed), func(b *testing.B) {
				benchCheckpoint(b, size.objects, size.layers, changed, false)
			})
		}
		// What a checkpoint cost before: the whole state as one JSON file, synced.
		b.Run(fmt.Sprintf("objects=%d/layers=%d/whole-json", size.objects, size.layers), func(b *testing.B) {
			benchCheckpoint(b, size.objects, size.layers, 10, true)
		})
	}
}

func benchCheckpoint(b *testing.B, objects, layers, changed int, wholeJSON bool) {
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), projections.StateFile)
	st := state.NewState()
	applier := newStateApplier(b, st)
	apply := applier.apply
	owners := objects / 10
	for i := range objects {
		id := int64(i + 1)
		owner := domain.Owner{Type: domain.OwnerKey, ID: int64(i%owners + 1)}
		apply(domain.DataObjectStream(id), domain.EventDataObjectAdded, domain.DataObjectAdded{ObjectID: id, Owner: owner, Name: "usage"})
	}
	// The layers, in uploads of 100 layers per owner.
	layer := func(n int) string {
		var l [32]byte
		copy(l[:], fmt.Sprintf("%031d", n))
		return hex.EncodeToString(l[:])
	}
	depth := make([]int64, owners)
	for n := 0; n < layers; n += 100 {
		o := (n / 100) % owners
		owner := domain.Owner{Type: domain.OwnerKey, ID: int64(o + 1)}
		p := domain.UploadPrepared{UploadID: uuid.New(), Owner: owner, BaseDepth: depth[o], FileDigest: layer(n)}
		for k := range 100 {
			p.Layers = append(p.Layers, layer(n+k))
			p.Timestamps = append(p.Timestamps, int64(n+k))
			p.Digests = append(p.Digests, layer(-n-k))
		}
		depth[o] += 100
		apply(domain.UploadStream(owner), domain.EventUploadPrepared, p)
		apply(domain.UploadStream(owner), domain.EventUploadCommitted, domain.UploadCommitted{UploadID: p.UploadID})
	}
	if wholeJSON {
		jsonPath := filepath.Join(b.TempDir(), "projection.json")
		for b.Loop() {
			raw, err := state.MarshalState(st)
			if err != nil {
				b.Fatal(err)
			}
			if err := writeSynced(jsonPath, raw); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	if err := projections.SaveSnapshot(path, st); err != nil {
		b.Fatal(err)
	}
	db, err := projections.OpenStateDB(ctx, path)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	st, ok, err := db.Load(ctx)
	if err != nil || !ok {
		b.Fatalf("load: %v %v", ok, err)
	}
	applier.st = st // the changes below go to the loaded state
	next := 0
	for b.Loop() {
		b.StopTimer()
		for range changed {
			id := int64(next%objects + 1)
			next++
			apply(domain.DataObjectStream(id), domain.EventIncrementApplied, domain.ValueChanged{ObjectID: id, Amount: 1})
		}
		b.StartTimer()
		c, err := st.Changes(false)
		if err != nil {
			b.Fatal(err)
		}
		if len(c.Objects) != changed {
			b.Fatalf("%d objects changed, want %d", len(c.Objects), changed)
		}
		if err := db.Checkpoint(ctx, st, c); err != nil {
			b.Fatal(err)
		}
		st.Checkpointed(db)
	}
}

// writeSynced writes b to path and syncs it, as the JSON checkpoint did (without its rename).
func writeSynced(path string, b []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// stateApplier applies events to its state as a store would have recorded them: positions one
// after the other, each stream's revisions from 0, the bodies as JSON. st may be replaced (by
// the state loaded from a checkpoint) and the numbering goes on.
type stateApplier struct {
	tb   testing.TB
	st   *state.State
	pos  eventstore.Position
	revs map[string]uint64
}

func newStateApplier(tb testing.TB, st *state.State) *stateApplier {
	return &stateApplier{tb: tb, st: st, revs: map[string]uint64{}}
}

func (a *stateApplier) apply(stream, typ string, data any) {
	raw, err := json.Marshal(data)
	if err != nil {
		a.tb.Fatal(err)
	}
	a.pos++
	rev, seen := a.revs[stream]
	if seen {
		rev++
	}
	a.revs[stream] = rev
	if err := a.st.Apply(eventstore.RecordedEvent{ID: uuid.New(), Type: typ, Data: raw, Stream: stream, Revision: rev, Position: a.pos}); err != nil {
		a.tb.Fatal(err)
	}
}
