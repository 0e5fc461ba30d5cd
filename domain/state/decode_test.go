package state

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// TestDecodeIntoEqualsDecode: DecodeInto, which keeps the upload sources of compact entries in
// batches, decodes every body as Decode does (upload entries and direct changes in the compact
// form, JSON objects, a body that fails, other types), over more entries than one batch; every
// entry keeps its own source after the rest are decoded.
func TestDecodeIntoEqualsDecode(t *testing.T) {
	at := time.Unix(1_700_000_000, 0).UTC()
	var evs []eventstore.RecordedEvent
	add := func(typ string, data []byte) {
		evs = append(evs, eventstore.RecordedEvent{Position: eventstore.Position(len(evs) + 1), Stream: "dataobject-1", Type: typ, Data: data})
	}
	for i := range 3*uploadBatch + 7 {
		v := domain.ValueChanged{ObjectID: 1, Amount: int64(i%5 + 1), Before: 10, After: int32(10 + i%5 + 1), At: at,
			Upload: &domain.UploadSource{UploadID: uuid.New(), LogTimestamp: at, Entry: i%9 + 1}}
		typ := domain.EventIncrementApplied
		switch i % 7 {
		case 3: // direct, compact
			v.Upload = nil
			v.At = at.Add(time.Duration(i) * time.Millisecond)
		case 4: // a JSON object, as written before the compact form
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			add(typ, b)
			continue
		case 5:
			add(typ, []byte(fmt.Sprintf(`[2,1,1,11,%d,"short",1]`, at.Unix())))
			continue
		case 6:
			add(domain.EventIntValueSet, []byte(`{"objectId":1,"before":0,"after":5}`))
			continue
		}
		b, err := domain.EncodeEvent(typ, v)
		if err != nil {
			t.Fatal(err)
		}
		add(typ, b)
	}
	got := DecodeInto(nil, evs)
	for i, ev := range evs {
		want := Decode(ev)
		if !reflect.DeepEqual(got[i], want) {
			t.Fatalf("event %d (%s): DecodeInto gives %+v, Decode %+v", i, ev.Data, got[i], want)
		}
	}
	seen := map[*domain.UploadSource]bool{}
	for i := range got {
		if u := got[i].change.Upload; u != nil {
			if seen[u] {
				t.Fatalf("event %d shares its upload source with another", i)
			}
			seen[u] = true
		}
	}
	if len(seen) < 2*uploadBatch {
		t.Fatalf("only %d upload entries decoded", len(seen))
	}
}
