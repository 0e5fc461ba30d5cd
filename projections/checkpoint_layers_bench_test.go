package projections_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
)

// BenchmarkCheckpointLayers measures checkpoints that add applied layers to a state database
// holding `layers` of them (random identities, as the ledger's hashes are, over 1,000 owners):
// each checkpoint holds `uploads` uploads of 10 new layers each, for random owners. It reports
// the cost per new layer (docs/performance.md, "The layer pages"). The same benchmark compiles
// against the one-row-per-layer table of format 2.
func BenchmarkCheckpointLayers(b *testing.B) {
	for _, layers := range []int{100_000, 1_000_000} {
		for _, uploads := range []int{1, 100, 10_000} {
			b.Run(fmt.Sprintf("layers=%d/uploads=%d", layers, uploads), func(b *testing.B) {
				benchCheckpointLayers(b, layers, uploads)
			})
		}
	}
}

func benchCheckpointLayers(b *testing.B, layers, uploads int) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	st := state.NewState()
	applier := newStateApplier(b, st)
	apply := applier.apply
	hash := func() string {
		var h [32]byte
		for i := range h {
			h[i] = byte(rng.UintN(256))
		}
		return hex.EncodeToString(h[:])
	}
	const owners = 1000
	depth := make([]int64, owners)
	upload := func(o, n int) {
		owner := domain.Owner{Type: domain.OwnerKey, ID: int64(o + 1)}
		p := domain.UploadPrepared{UploadID: uuid.New(), Owner: owner, BaseDepth: depth[o], FileDigest: hash(), Length: 4096}
		for k := range n {
			p.Layers = append(p.Layers, hash())
			p.Timestamps = append(p.Timestamps, int64(1_700_000_000+k))
			p.Digests = append(p.Digests, hash())
		}
		depth[o] += int64(n)
		apply(domain.UploadStream(owner), domain.EventUploadPrepared, p)
		apply(domain.UploadStream(owner), domain.EventUploadCommitted, domain.UploadCommitted{UploadID: p.UploadID})
	}
	for n := 0; n < layers; n += 100 {
		upload((n/100)%owners, 100)
	}
	path := filepath.Join(b.TempDir(), projections.StateFile)
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
	applier.st = st // the uploads below go to the loaded state
	for b.Loop() {
		b.StopTimer()
		for range uploads {
			upload(rng.IntN(owners), 10)
		}
		b.StartTimer()
		c, err := st.Changes(false)
		if err != nil {
			b.Fatal(err)
		}
		if len(c.Layers) != 10*uploads {
			b.Fatalf("%d new layers, want %d", len(c.Layers), 10*uploads)
		}
		if err := db.Checkpoint(ctx, st, c); err != nil {
			b.Fatal(err)
		}
		st.Checkpointed(db)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*10*uploads), "ns/layer")
}
