package state

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// BenchmarkFoldUploads measures the fold alone (ApplyDecoded on events Decode decoded before
// the timer, as a replay's readers do), in events/s, on a history shaped like the generator's:
// 1,000 owners with 10 data objects each; uploads of 4 new layers (identities, digests and a
// file digest, in the binary form the ledger writes) with 4 entries each; 6 direct increments
// per upload: a third of a layer per event (the 10M ledger has 0.39). The timed part starts on
// a state that already holds 320,000 layers, so that the layer maps grow as on a long replay.
func BenchmarkFoldUploads(b *testing.B) {
	const owners, objectsPerOwner, uploads, warm = 1000, 10, 20000, 80000
	hash := func(parts ...int) string {
		var buf []byte
		for _, p := range parts {
			buf = binary.AppendVarint(buf, int64(p))
		}
		h := sha256.Sum256(buf)
		return hex.EncodeToString(h[:])
	}
	var evs []eventstore.RecordedEvent
	revs := map[string]uint64{}
	add := func(stream, typ string, body any) {
		data, err := domain.EncodeEvent(typ, body)
		if err != nil {
			b.Fatal(err)
		}
		rev, seen := revs[stream]
		if seen {
			rev++
		}
		revs[stream] = rev
		evs = append(evs, eventstore.RecordedEvent{ID: uuid.New(), Stream: stream, Revision: rev, Type: typ, Data: data, Position: eventstore.Position(len(evs) + 1)})
	}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	values := map[int64]int32{}
	for o := range owners * objectsPerOwner {
		id := int64(o + 1)
		add(domain.DataObjectStream(id), domain.EventDataObjectAdded, domain.DataObjectAdded{ObjectID: id, Owner: domain.Owner{Type: domain.OwnerKey, ID: int64(o/objectsPerOwner + 1)}, Name: "usage", At: at})
	}
	depth := map[int]int64{}
	upload := func(u int) {
		ownerNo := u % owners
		owner := domain.Owner{Type: domain.OwnerKey, ID: int64(ownerNo + 1)}
		p := domain.UploadPrepared{UploadID: uuid.New(), Owner: owner, BaseDepth: depth[ownerNo], Instance: uuid.New(), At: at}
		for l := range 4 {
			p.Layers = append(p.Layers, hash(u, l))
			p.Digests = append(p.Digests, hash(u, l, 1))
			p.Timestamps = append(p.Timestamps, at.Unix()+int64(u))
		}
		p.FileDigest, p.Length = hash(u, 9), 1024
		object := int64(ownerNo*objectsPerOwner + u%objectsPerOwner + 1)
		p.Changes = []domain.PlannedStep{{ObjectID: object, FromRevision: revs[domain.DataObjectStream(object)], Events: 4}}
		depth[ownerNo] += 4
		add(domain.UploadStream(owner), domain.EventUploadPrepared, p)
		for l := range 4 {
			before := values[object]
			values[object]++
			add(domain.DataObjectStream(object), domain.EventIncrementApplied, domain.ValueChanged{ObjectID: object, Amount: 1, Before: before, After: before + 1, At: at,
				Upload: &domain.UploadSource{UploadID: p.UploadID, Layer: p.Layers[l], LogTimestamp: at, Entry: l + 1}})
		}
		add(domain.UploadStream(owner), domain.EventUploadCommitted, domain.UploadCommitted{UploadID: p.UploadID, At: at})
	}
	for u := range warm {
		upload(u)
	}
	warmEvents := len(evs)
	for u := range uploads {
		upload(warm + u)
		for d := range 6 {
			object := int64((u*7+d)%(owners*objectsPerOwner) + 1)
			before := values[object]
			values[object]++
			add(domain.DataObjectStream(object), domain.EventIncrementApplied, domain.ValueChanged{ObjectID: object, Amount: 1, Before: before, After: before + 1, At: at})
		}
	}
	decoded := DecodeInto(nil, evs)
	timed := decoded[warmEvents:]
	for b.Loop() {
		b.StopTimer()
		st := NewState()
		for i := range decoded[:warmEvents] {
			if err := st.ApplyDecoded(&decoded[i]); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		for i := range timed {
			if err := st.ApplyDecoded(&timed[i]); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(len(timed))*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
