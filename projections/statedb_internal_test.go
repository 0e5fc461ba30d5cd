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

// TestOnlyCanonicalHexIsStoredRaw: an identity or digest is stored as 32 bytes only when it
// is what hex.EncodeToString gives back for them; anything else is kept as the text it is, so
// that every layer reads back as it was put, and only canonical identities go into the pages.
func TestOnlyCanonicalHexIsStoredRaw(t *testing.T) {
	ctx := context.Background()
	db, err := OpenStateDB(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var raw [32]byte
	for i := range raw {
		raw[i] = byte(i*37 + 5)
	}
	canonical := hex.EncodeToString(raw[:])
	ids := []string{canonical, strings.ToUpper(canonical), canonical[:63], canonical + "0", canonical[:62] + "g0", "", "legacy-id"}
	var layers []state.LayerRecord
	for i, id := range ids {
		layers = append(layers, state.LayerRecord{Owner: "2-1", ID: id, Info: state.LayerInfo{Depth: int64(i + 1), Digest: id, FileDigest: id, Skipped: id, Length: int64(i)}})
	}
	if err := db.PutLayers(ctx, layers); err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		got, ok, err := db.Layer(l.Owner, l.ID)
		if err != nil || !ok || got != l.Info {
			t.Errorf("%q: %+v %v %v, want %+v", l.ID, got, ok, err, l.Info)
		}
		var inText int
		if err := db.readDB.QueryRow(`SELECT count(*) FROM text_layers WHERE owner = ? AND layer = ?`, l.Owner, l.ID).Scan(&inText); err != nil {
			t.Fatal(err)
		}
		if (inText == 0) != (l.ID == canonical) {
			t.Errorf("%q: stored as text %v", l.ID, inText == 1)
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
	runs, err := createRunFile(path + ".runs")
	if err != nil {
		t.Fatal(err)
	}
	defer runs.remove()
	w := &writtenLayers{db: db, runs: runs}
	first := []state.LayerRecord{rec("2-1", 1, 1), rec("2-1", 2, 2), rec("2-2", 3, 1)}
	second := []state.LayerRecord{rec("2-1", 4, 3), rec("2-3", 5, 1)}
	rawFirst, rawSecond := rawLayers(first), rawLayers(second)
	w.pend(rawFirst)
	w.pend(rawSecond)
	if err := w.write(ctx, rawFirst); err != nil {
		t.Fatal(err)
	}
	// second is pending; write it as a run without dropping it: both at once.
	if err := w.writeRun(ctx, rawSecond); err != nil {
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

// rawLayers is records in the form a replay hands them to its writer (state.AppendFreshLayersRaw).
func rawLayers(records []state.LayerRecord) []state.RawLayer {
	out := make([]state.RawLayer, len(records))
	for i, l := range records {
		r := state.RawLayer{Owner: l.Owner, Depth: l.Info.Depth, Timestamp: l.Info.Timestamp, Length: l.Info.Length, Skipped: l.Info.Skipped}
		if id, ok := state.ParseHash(l.ID); ok {
			r.ID = id
		} else {
			r.TextID, r.IsText = l.ID, true
		}
		if d, ok := state.ParseHash(l.Info.Digest); ok {
			r.Digest, r.DigestRaw = d, true
		} else {
			r.DigestText = l.Info.Digest
		}
		if d, ok := state.ParseHash(l.Info.FileDigest); ok {
			r.FileDigest, r.FileDigestRaw = d, true
		} else {
			r.FileDigestText = l.Info.FileDigest
		}
		out[i] = r
	}
	return out
}
