package projections

import (
	"context"
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
