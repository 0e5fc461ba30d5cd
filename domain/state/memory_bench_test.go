package state

import (
	"encoding/json"
	"fmt"
	"runtime"
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// BenchmarkObjectMemory reports the heap a State holds per data object: 10,000 objects of 1,000
// license keys, each added and changed a few times as the history generator does, measured
// with runtime.MemStats after a GC (docs/performance.md, "The current-state projection").
func BenchmarkObjectMemory(b *testing.B) {
	const objects, keys = 10000, 1000
	var evs []eventstore.RecordedEvent
	pos := eventstore.Position(0)
	add := func(stream string, rev uint64, typ string, data any) {
		raw, err := json.Marshal(data)
		if err != nil {
			b.Fatal(err)
		}
		pos++
		evs = append(evs, eventstore.RecordedEvent{ID: uuid.New(), Type: typ, Data: raw, Stream: stream, Revision: rev, Position: pos})
	}
	for i := range int64(objects) {
		id := i + 1
		owner := domain.Owner{Type: domain.OwnerKey, ID: id%keys + 1}
		add(domain.DataObjectStream(id), 0, domain.EventDataObjectAdded, domain.DataObjectAdded{ObjectID: id, Owner: owner, Name: fmt.Sprintf("usage-%d", id%7)})
		for r := uint64(1); r <= 3; r++ {
			add(domain.DataObjectStream(id), r, domain.EventIncrementApplied, domain.ValueChanged{ObjectID: id, Amount: 1})
		}
	}
	var perObject float64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		st := NewState()
		st.TrackChanges()
		for _, ev := range evs {
			if err := st.Apply(ev); err != nil {
				b.Fatal(err)
			}
		}
		st.Checkpointed(nil) // as after a checkpoint: no change marks held
		runtime.GC()
		runtime.ReadMemStats(&after)
		perObject = float64(after.HeapAlloc-before.HeapAlloc) / objects
		runtime.KeepAlive(st)
	}
	b.ReportMetric(perObject, "heap-bytes/object")
}
