package state

import (
	"encoding/hex"
	"encoding/json"
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// history builds recorded events with consecutive positions and per-stream revisions.
type history struct {
	t    *testing.T
	pos  eventstore.Position
	revs map[string]uint64
	evs  []eventstore.RecordedEvent
}

func newHistory(t *testing.T) *history { return &history{t: t, revs: map[string]uint64{}} }

func (h *history) add(stream, typ string, data any) eventstore.RecordedEvent {
	h.t.Helper()
	b, err := json.Marshal(data)
	if err != nil {
		h.t.Fatal(err)
	}
	rev, seen := h.revs[stream]
	if seen {
		rev++
	}
	h.revs[stream] = rev
	h.pos++
	ev := eventstore.RecordedEvent{ID: uuid.New(), Type: typ, Data: b, Stream: stream, Revision: rev, Position: h.pos}
	h.evs = append(h.evs, ev)
	return ev
}

func (h *history) fold() *State {
	h.t.Helper()
	st := NewState()
	for _, ev := range h.evs {
		if err := st.Apply(ev); err != nil {
			h.t.Fatal(err)
		}
	}
	return st
}

func TestUploadEventsCountOnlyOnceCommitted(t *testing.T) {
	owner := domain.Owner{Type: domain.OwnerKey, ID: 7}
	h := newHistory(t)
	h.add(domain.DataObjectStream(1), domain.EventDataObjectAdded, domain.DataObjectAdded{ObjectID: 1, Owner: owner, Name: "a", IntValue: 10})
	h.add(domain.DataObjectStream(2), domain.EventDataObjectAdded, domain.DataObjectAdded{ObjectID: 2, Owner: owner, Name: "b"})

	committed, aborted := uuid.New(), uuid.New()
	layer := func(b byte) string { return string(rune('a'+b)) + "0" }
	prepare := func(id uuid.UUID, layers ...string) {
		h.add(domain.UploadStream(owner), domain.EventUploadPrepared, domain.UploadPrepared{
			UploadID: id, Owner: owner, Layers: layers, Timestamps: make([]int64, len(layers)),
			Changes: []domain.PlannedStep{{ObjectID: 1, Events: 1}, {ObjectID: 2, Events: 1}},
		})
	}
	change := func(obj int64, typ string, amount int64, id uuid.UUID, l string) {
		h.add(domain.DataObjectStream(obj), typ, domain.ValueChanged{ObjectID: obj, Amount: amount, Upload: &domain.UploadSource{UploadID: id, Layer: l}})
	}

	prepare(committed, layer(0), layer(1))
	change(1, domain.EventIncrementApplied, 5, committed, layer(0))
	change(2, domain.EventDecrementApplied, 3, committed, layer(1))
	st := h.fold()
	if got := st.Objects[1].IntValue; got != 10 {
		t.Fatalf("value before commit = %d, want 10 (pending changes must not count)", got)
	}
	if len(st.Objects[1].Pending) != 1 || st.Upload(owner).Prepared == nil {
		t.Fatalf("pending = %v, prepared = %v", st.Objects[1].Pending, st.Upload(owner).Prepared)
	}

	h.add(domain.UploadStream(owner), domain.EventUploadCommitted, domain.UploadCommitted{UploadID: committed})
	st = h.fold()
	if a, b := st.Objects[1].IntValue, st.Objects[2].IntValue; a != 15 || b != -3 {
		t.Fatalf("values after commit = %d, %d; want 15, -3", a, b)
	}
	if info, ok := layersOf(t, st, owner)[layer(1)]; !ok || info.Depth != 2 {
		t.Fatalf("layer 1 = %+v, %v; want depth 2", info, ok)
	}

	prepare(aborted, layer(2), layer(3))
	change(1, domain.EventIncrementApplied, 100, aborted, layer(2))
	h.add(domain.UploadStream(owner), domain.EventUploadAborted, domain.UploadAborted{UploadID: aborted})
	change(2, domain.EventIncrementApplied, 100, aborted, layer(3)) // late event of the aborted upload
	st = h.fold()
	if a, b := st.Objects[1].IntValue, st.Objects[2].IntValue; a != 15 || b != -3 {
		t.Fatalf("values after abort = %d, %d; want 15, -3", a, b)
	}
	if len(st.Objects[1].Pending)+len(st.Objects[2].Pending) != 0 || st.Upload(owner).Prepared != nil {
		t.Fatal("an aborted upload left pending changes")
	}
	if _, ok := st.Layer(owner, [32]byte{}); ok {
		t.Fatal("unexpected layer")
	}
	if n := len(layersOf(t, st, owner)); n != 2 {
		t.Fatalf("%d applied layers, want 2 (aborted layers are not applied)", n)
	}
	if st.Objects[2].Revision != 2 {
		t.Fatalf("revision = %d, want 2 (every event moves it)", st.Objects[2].Revision)
	}
}

func TestSnapshotRoundTripKeepsEverything(t *testing.T) {
	h := newHistory(t)
	tokenID := uuid.New()
	hash := domain.HashSecret("s3cret")
	h.add(domain.ProductStream(1), domain.EventProductCreated, domain.ProductCreated{ProductID: 1, Name: "P"})
	h.add(domain.KeyStream(3), domain.EventKeyCreated, domain.KeyCreated{KeyID: 3, ProductID: 1, Key: "ABCDE-FGHIJ-KLMNO-PQRST"})
	h.add(domain.TokenStream(tokenID), domain.EventTokenCreated, domain.TokenCreated{
		TokenID: tokenID, SecretHash: hexOf(hash), Methods: []domain.Method{domain.MethodIncrementIntValue}, KeyLock: -1,
	})
	owner := domain.Owner{Type: domain.OwnerKey, ID: 3}
	h.add(domain.DataObjectStream(9), domain.EventDataObjectAdded, domain.DataObjectAdded{ObjectID: 9, Owner: owner, Name: "n", StringValue: "s"})
	h.add(domain.DataObjectStream(9), domain.EventIntValueSet, domain.IntValueSet{ObjectID: 9, After: 42})
	st := h.fold()

	b, err := MarshalState(st)
	if err != nil {
		t.Fatal(err)
	}
	back, err := UnmarshalState(b)
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(st, back); len(d) != 0 {
		t.Fatalf("snapshot changed the state: %v", d)
	}
	if tok, ok := back.TokenBySecretHash(hash); !ok || tok.ID != tokenID || tok.KeyLock != -1 {
		t.Fatalf("token by hash after reload = %+v, %v", tok, ok)
	}
	if k, ok := back.KeyByString(1, "abcde-fghij-klmno-pqrst"); !ok || k.ID != 3 {
		t.Fatalf("key by string after reload = %+v, %v", k, ok)
	}
	if o, ok := back.ObjectByName(owner, "n"); !ok || o.IntValue != 42 {
		t.Fatalf("object by name after reload = %+v, %v", o, ok)
	}
	if back.Position != 5 {
		t.Fatalf("position = %d, want 5", back.Position)
	}
	for category, want := range map[string]int64{domain.CategoryProduct: 1, domain.CategoryKey: 3, domain.CategoryDataObject: 9} {
		if got := back.MaxID(category); got != want {
			t.Fatalf("largest %s id after reload = %d, want %d", category, got, want)
		}
	}

	back.Objects[9].IntValue = 41
	if d := Diff(st, back); len(d) != 1 {
		t.Fatalf("diff of a tampered value = %v, want one line", d)
	}
}

func hexOf(h [32]byte) string { return hex.EncodeToString(h[:]) }
