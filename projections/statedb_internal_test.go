package projections

import (
	"context"
	"database/sql"
	"encoding/hex"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/state"
)

// TestALayerIndexThatFailsAnswersKnownAndIsNeverPersisted: when the state database cannot be
// read, a layer lookup answers "known" (the answer that never counts an entry twice), the
// state reports the error, and a projection refuses to write a checkpoint from it.
func TestALayerIndexThatFailsAnswersKnownAndIsNeverPersisted(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), StateFile)
	owner := domain.Owner{Type: domain.OwnerKey, ID: 1}
	st := state.NewState()
	st.Position = 1
	st.LastEvent = state.EventRef{Stream: "s", ID: uuid.New()}
	st.Uploads[owner.String()] = &state.Upload{Owner: owner, Exists: true}
	if err := SaveSnapshot(path, st); err != nil {
		t.Fatal(err)
	}
	db, err := OpenStateDB(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	loaded, ok, err := db.Load(ctx)
	if err != nil || !ok {
		t.Fatalf("load: %v %v", ok, err)
	}
	var id [32]byte
	if _, known := loaded.Layer(owner, id); known || loaded.LayerError() != nil {
		t.Fatalf("an unknown layer on a healthy database: known %v, err %v", known, loaded.LayerError())
	}
	if err := db.Close(); err != nil { // every lookup fails from now on
		t.Fatal(err)
	}
	if _, known := loaded.Layer(owner, id); !known {
		t.Fatal("a failed lookup answered unknown")
	}
	if loaded.LayerError() == nil {
		t.Fatal("a failed lookup left no error")
	}
	if !loaded.HasLayerAtDepth(owner, 99) {
		t.Fatal("a failed depth lookup answered no")
	}
	c := &Current{db: &StateDB{}, state: loaded}
	loaded.Position = 2
	if err := c.Save(); err == nil {
		t.Fatal("a state whose layer lookups failed was persisted")
	}
	if err := c.Err(); err == nil {
		t.Fatal("the projection does not report the failed lookup")
	}
}

// TestPackIDKeepsOnlyCanonicalHexAsBytes: an identity is stored as 32 bytes only when it is
// what hex.EncodeToString gives back for them, so that unpackID returns it unchanged.
func TestPackIDKeepsOnlyCanonicalHexAsBytes(t *testing.T) {
	var raw [32]byte
	for i := range raw {
		raw[i] = byte(i*37 + 5)
	}
	canonical := hex.EncodeToString(raw[:])
	for _, id := range []string{canonical, strings.ToUpper(canonical), canonical[:63], canonical + "0", canonical[:62] + "g0", "", "legacy-id"} {
		packed := packID(id)
		if got := unpackID(packed); got != id {
			t.Errorf("%q: packed and unpacked gives %q", id, got)
		}
		if _, isBytes := packed.([]byte); isBytes != (id == canonical) {
			t.Errorf("%q: stored as bytes %v", id, isBytes)
		}
	}
}

// TestAReplaysLayerStoreFindsPendingAndWrittenLayers: while a replay writes its layers, a
// lookup finds a layer whether its batch is still pending or committed, and a listing gives
// each layer once, even for a batch that is both (committed, not yet dropped from pending).
func TestAReplaysLayerStoreFindsPendingAndWrittenLayers(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := sql.Open("sqlite", bulkStateDSN(path))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, stateSchema); err != nil {
		t.Fatal(err)
	}
	rec := func(owner string, n int, depth int64) state.LayerRecord {
		var id [32]byte
		id[0] = byte(n)
		return state.LayerRecord{Owner: owner, ID: hex.EncodeToString(id[:]), Info: state.LayerInfo{Depth: depth, Timestamp: int64(n)}}
	}
	w := &writtenLayers{db: db}
	first := []state.LayerRecord{rec("2-1", 1, 1), rec("2-1", 2, 2), rec("2-2", 3, 1)}
	second := []state.LayerRecord{rec("2-1", 4, 3), rec("2-3", 5, 1)}
	w.pend(first)
	w.pend(second)
	if err := w.write(ctx, first); err != nil {
		t.Fatal(err)
	}
	// second is pending; write it to the file without dropping it: both at once.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range second {
		if _, err := tx.Exec(insertLayer, layerArgs(l)...); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	for _, l := range append(append([]state.LayerRecord{}, first...), second...) {
		info, ok, err := w.Layer(l.Owner, l.ID)
		if err != nil || !ok || info != l.Info {
			t.Errorf("layer %s of %s: %+v %v %v", l.ID, l.Owner, info, ok, err)
		}
		if ok, err := w.HasDepth(l.Owner, l.Info.Depth); err != nil || !ok {
			t.Errorf("depth %d of %s: %v %v", l.Info.Depth, l.Owner, ok, err)
		}
	}
	if _, ok, err := w.Layer("2-1", rec("2-1", 9, 1).ID); ok || err != nil {
		t.Errorf("an unknown layer: %v %v", ok, err)
	}
	if ok, err := w.HasDepth("2-2", 2); ok || err != nil {
		t.Errorf("an unknown depth: %v %v", ok, err)
	}
	seen := map[string]int{}
	if err := w.EachLayer("2-1", func(id string, _ state.LayerInfo) bool { seen[id]++; return true }); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 3 || seen[first[0].ID] != 1 || seen[first[1].ID] != 1 || seen[second[0].ID] != 1 {
		t.Errorf("layers of 2-1 listed %v, want three once each", seen)
	}
	n := 0
	if err := w.EachLayerAt("2-1", 3, func(id string, info state.LayerInfo) bool { n++; return info.Depth == 3 && id == second[0].ID }); err != nil || n != 1 {
		t.Errorf("layers of 2-1 at depth 3: %d, %v", n, err)
	}
}
