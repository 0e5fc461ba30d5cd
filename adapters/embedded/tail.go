package embedded

import (
	"github.com/tallyledger/tally/domain/eventstore"
)

// tailBatch is the events of one group commit as ReadAll would return them. Its positions are
// dense: events[i].Position == after+1+i, because the single writer numbers a batch's events
// consecutively from the position after the previous commit.
type tailBatch struct {
	after  eventstore.Position // the last committed position before this batch
	events []eventstore.RecordedEvent
	bytes  int
}

// memoryTail holds the last committed batches so that live subscriptions take them from memory
// instead of reading back what the writer has just written. It covers exactly the positions in
// (after, head]: every committed event with a position above after is in it, and nothing else,
// so a subscriber at a position >= after finds there what ReadAll would return, and one further
// behind reads the database. It is guarded by Store.headMu and updated with the head, so a
// subscriber that sees a head also sees its events.
//
// It holds at most maxEvents events and maxBytes bytes of payload (data, metadata, stream and
// type); older batches are dropped first, and a batch larger than either bound is not kept at
// all (the tail then starts after it). Events handed out are shared by every subscriber that
// takes them: nobody may modify them or their payload slices.
type memoryTail struct {
	maxEvents, maxBytes int
	after               eventstore.Position
	batches             []tailBatch // oldest first, contiguous
	events, bytes       int
}

// enabled reports whether the writer should build batches for the tail at all.
func (t *memoryTail) enabled() bool { return t.maxEvents > 0 && t.maxBytes > 0 }

// fits reports whether a batch of that many events and payload bytes can be kept.
func (t *memoryTail) fits(events, bytes int) bool {
	return events <= t.maxEvents && bytes <= t.maxBytes
}

// push adds the batch committed after position after, which brought the head to head. A nil
// events means the batch was not kept (too large, or the tail is off): the tail then restarts
// empty at head, since it must never have a gap.
func (t *memoryTail) push(after, head eventstore.Position, events []eventstore.RecordedEvent, bytes int) {
	contiguous := len(t.batches) == 0 || t.end() == after
	if events == nil || !contiguous || !t.fits(len(events), bytes) {
		t.reset(head)
		return
	}
	if len(t.batches) == 0 {
		t.after = after
	}
	t.batches = append(t.batches, tailBatch{after: after, events: events, bytes: bytes})
	t.events += len(events)
	t.bytes += bytes
	for t.events > t.maxEvents || t.bytes > t.maxBytes {
		oldest := t.batches[0]
		t.batches[0] = tailBatch{} // let the evicted batch go
		t.batches = t.batches[1:]
		t.events -= len(oldest.events)
		t.bytes -= oldest.bytes
		t.after = oldest.after + eventstore.Position(len(oldest.events))
	}
}

// end is the position of the tail's last event (after when empty).
func (t *memoryTail) end() eventstore.Position {
	if len(t.batches) == 0 {
		return t.after
	}
	last := t.batches[len(t.batches)-1]
	return last.after + eventstore.Position(len(last.events))
}

func (t *memoryTail) reset(head eventstore.Position) {
	clear(t.batches)
	t.batches = t.batches[:0]
	t.events, t.bytes = 0, 0
	t.after = head
}

// eventsAfter returns up to max (> 0) of the committed events after position, from one batch
// of the tail; ok is false when position is behind the tail and the caller must read the
// database. The slice is shared and capped so that appending to it cannot write into the tail.
func (t *memoryTail) eventsAfter(position eventstore.Position, max int) (events []eventstore.RecordedEvent, ok bool) {
	if position < t.after {
		return nil, false
	}
	// Subscribers are nearly always in the newest batch or the one before: search from the end.
	for i := len(t.batches) - 1; i >= 0; i-- {
		b := t.batches[i]
		if position < b.after {
			continue
		}
		first := uint64(position - b.after) // index of the first event after position
		if first >= uint64(len(b.events)) {
			return nil, true // at or past the head: nothing committed after position yet
		}
		end := min(uint64(len(b.events)), first+uint64(max))
		return b.events[first:end:end], true
	}
	return nil, true // empty tail starting at position or before it: nothing yet
}
