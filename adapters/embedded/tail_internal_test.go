package embedded

import (
	"testing"

	"github.com/tallyledger/tally/domain/eventstore"
)

// batchAfter builds n events with dense positions after position after.
func batchAfter(after eventstore.Position, n int) []eventstore.RecordedEvent {
	events := make([]eventstore.RecordedEvent, n)
	for i := range events {
		events[i].Position = after + 1 + eventstore.Position(i)
	}
	return events
}

// TestMemoryTailStaysWithinItsBounds pushes batches into a small tail and checks after each that
// it holds no more than its bounds, covers exactly the positions after its start up to the head,
// and sends a subscriber behind it to the database.
func TestMemoryTailStaysWithinItsBounds(t *testing.T) {
	tail := memoryTail{maxEvents: 10, maxBytes: 1000}
	tail.reset(100)
	head := eventstore.Position(100)
	for round, size := range []int{3, 4, 2, 5, 1, 11, 2, 10, 1} {
		bytes := 60 * size
		after := head
		head += eventstore.Position(size)
		tail.push(after, head, batchAfter(after, size), bytes)
		if tail.events > tail.maxEvents || tail.bytes > tail.maxBytes {
			t.Fatalf("round %d: tail holds %d events, %d bytes", round, tail.events, tail.bytes)
		}
		if tail.end() != head {
			t.Fatalf("round %d: tail ends at %d, head is %d", round, tail.end(), head)
		}
		if held := int(head - tail.after); held != tail.events {
			t.Fatalf("round %d: tail covers (%d, %d] but holds %d events", round, tail.after, head, tail.events)
		}
		if _, ok := tail.eventsAfter(tail.after-1, 100); ok {
			t.Fatalf("round %d: position %d, behind the tail starting after %d, was served from it", round, tail.after-1, tail.after)
		}
		// From every position the tail covers, it hands out the events right after it.
		for p := tail.after; p < head; p++ {
			events, ok := tail.eventsAfter(p, 2)
			if !ok || len(events) == 0 || len(events) > 2 || events[0].Position != p+1 || cap(events) != len(events) {
				t.Fatalf("round %d: after %d got %d events (ok %v)", round, p, len(events), ok)
			}
		}
		if events, ok := tail.eventsAfter(head, 2); !ok || len(events) != 0 {
			t.Fatalf("round %d: after the head got %d events (ok %v)", round, len(events), ok)
		}
	}
	// A batch over the byte bound is not kept: the tail restarts empty at the new head.
	tail.push(head, head+1, batchAfter(head, 1), 1001)
	if tail.events != 0 || tail.after != head+1 {
		t.Fatalf("after an oversized batch: %d events, starting after %d", tail.events, tail.after)
	}
}
