package projections

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// TestVerifyApplyWalksCommitsInOrder checks an upload's recorded values when its commit is
// folded, in their order per object, for a commit touching a few objects (the list) and one
// touching more than maxListed (the map): one change recording a wrong After is the one
// problem, and an upload that is aborted reports nothing.
func TestVerifyApplyWalksCommitsInOrder(t *testing.T) {
	for _, objects := range []int{3, maxListed + 8} {
		t.Run(fmt.Sprint(objects), func(t *testing.T) {
			owner := domain.Owner{Type: domain.OwnerKey, ID: 1}
			var evs []eventstore.RecordedEvent
			revs := map[string]uint64{}
			add := func(stream, typ string, body any) {
				data, err := domain.EncodeEvent(typ, body)
				if err != nil {
					t.Fatal(err)
				}
				rev, seen := revs[stream]
				if seen {
					rev++
				}
				revs[stream] = rev
				evs = append(evs, eventstore.RecordedEvent{ID: uuid.New(), Stream: stream, Revision: rev, Type: typ, Data: data, Position: eventstore.Position(len(evs) + 1)})
			}
			upload := func(id uuid.UUID, wrong int64, decide string) {
				p := domain.UploadPrepared{UploadID: id, Owner: owner, Layers: []string{strings.Repeat("ab", 32)}, Timestamps: []int64{1}}
				for o := int64(1); o <= int64(objects); o++ {
					p.Changes = append(p.Changes, domain.PlannedStep{ObjectID: o, Events: 2})
				}
				add(domain.UploadStream(owner), domain.EventUploadPrepared, p)
				for o := int64(1); o <= int64(objects); o++ {
					// Two changes per object: +3 then -1, from 10; the second of object
					// wrong records 13 instead of 12.
					add(domain.DataObjectStream(o), domain.EventIncrementApplied, domain.ValueChanged{ObjectID: o, Amount: 3, Before: 10, After: 13,
						Upload: &domain.UploadSource{UploadID: id, Layer: p.Layers[0], Entry: 1}})
					after := int32(12)
					if o == wrong {
						after = 13
					}
					add(domain.DataObjectStream(o), domain.EventDecrementApplied, domain.ValueChanged{ObjectID: o, Amount: 1, Before: 13, After: after,
						Upload: &domain.UploadSource{UploadID: id, Layer: p.Layers[0], Entry: 1}})
				}
				switch decide {
				case domain.EventUploadCommitted:
					add(domain.UploadStream(owner), decide, domain.UploadCommitted{UploadID: id})
				default:
					add(domain.UploadStream(owner), decide, domain.UploadAborted{UploadID: id, Reason: "test"})
				}
			}
			for o := int64(1); o <= int64(objects); o++ {
				add(domain.DataObjectStream(o), domain.EventDataObjectAdded, domain.DataObjectAdded{ObjectID: o, Owner: owner, Name: "n", IntValue: 10})
			}
			wrong := int64(objects)
			upload(uuid.New(), 1, domain.EventUploadAborted) // never counts: nothing to check
			upload(uuid.New(), wrong, domain.EventUploadCommitted)

			st := state.NewState()
			pending := map[uuid.UUID][]recordedAfter{}
			var problems []string
			for _, ev := range evs {
				d := state.Decode(ev)
				problems = verifyApply(st, &d, pending, problems)
			}
			want := fmt.Sprintf("data object %d: DecrementApplied", wrong)
			if len(problems) != 1 || !strings.HasPrefix(problems[0], want) || !strings.Contains(problems[0], "recorded after=13, replay gives 12") {
				t.Fatalf("problems %q, want one starting %q", problems, want)
			}
			if len(pending) != 0 {
				t.Fatalf("%d uploads still pending", len(pending))
			}
		})
	}
}
