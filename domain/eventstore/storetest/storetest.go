// Package storetest holds the contract every eventstore.Store backend must pass. A backend's test
// hands Run a constructor; each subtest opens its own store through it.
//
// The suite relies only on the port's documented semantics and on KurrentDB's guarantees, so it
// runs unchanged against a KurrentDB server: every subtest writes to streams with a fresh random
// prefix and looks at global reads only through those streams, since a server also holds
// system events and other tests' streams. It never waits on timing.
package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain/eventstore"
)

// Run runs the contract suite. open must return a ready store for the subtest and arrange its
// cleanup (t.Cleanup); the Close subtest closes its store itself, so cleanup must tolerate a
// store that is already closed.
func Run(t *testing.T, open func(t *testing.T) eventstore.Store) {
	tests := []struct {
		name string
		test func(t *testing.T, e *env)
	}{
		{"ExpectedRevisionOnNewStream", testExpectedRevisionOnNewStream},
		{"ExpectedRevisionOnExistingStream", testExpectedRevisionOnExistingStream},
		{"MultiEventAppendIsAtomic", testMultiEventAppend},
		{"ConcurrentMultiEventAppendsAreContiguous", testConcurrentMultiEventAppendsContiguous},
		{"AppendOfNoEvents", testAppendNoEvents},
		{"IdempotentReappend", testIdempotentReappend},
		{"PartialIdempotentMatchIsRefused", testPartialIdempotentMatch},
		{"ReadStream", testReadStream},
		{"ReadStreamNotFound", testReadStreamNotFound},
		{"ReadAllInGlobalOrderWithPaging", testReadAll},
		{"EventRoundTrip", testRoundTrip},
		{"SubscribeAllFromStart", testSubscribeFromStart},
		{"SubscribeAllFromPosition", testSubscribeFromPosition},
		{"SubscriptionResumesFromCheckpointUnderConcurrentAppends", testSubscriptionResume},
		{"ConcurrentExactAppendsHaveOneWinnerPerRevision", testConcurrentExact},
		{"SubscriptionCloseAndContext", testSubscriptionClose},
		{"Close", testClose},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := open(t)
			// A backend that loses an event must fail the subtest, not hang it.
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			tc.test(t, &env{t: t, store: store, ctx: ctx, prefix: "st" + strings.ReplaceAll(uuid.NewString(), "-", "")[:12]})
		})
	}
}

// env is a subtest's store and the prefix of the streams it owns.
type env struct {
	t      *testing.T
	store  eventstore.Store
	ctx    context.Context
	prefix string
}

func (e *env) stream(name string) string { return e.prefix + "-" + name }

func (e *env) ours(ev eventstore.RecordedEvent) bool {
	return strings.HasPrefix(ev.Stream, e.prefix+"-")
}

// newEvents makes n events with fresh IDs and distinct JSON payloads.
func newEvents(n int, label string) []eventstore.EventData {
	events := make([]eventstore.EventData, n)
	for i := range events {
		events[i] = eventstore.EventData{
			ID:   uuid.New(),
			Type: "StoreTest" + label,
			Data: fmt.Appendf(nil, `{"label":%q,"i":%d}`, label, i),
		}
	}
	return events
}

func (e *env) append(stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) eventstore.AppendResult {
	e.t.Helper()
	result, err := e.store.Append(e.ctx, stream, expected, events...)
	if err != nil {
		e.t.Fatalf("append %d events to %s expecting %v: %v", len(events), stream, expected, err)
	}
	return result
}

func (e *env) readStream(stream string, dir eventstore.Direction, from uint64, max int) []eventstore.RecordedEvent {
	e.t.Helper()
	events, err := e.store.ReadStream(e.ctx, stream, dir, from, max)
	if err != nil {
		e.t.Fatalf("read %s %v from %d max %d: %v", stream, dir, from, max, err)
	}
	return events
}

// readAll pages through ReadAll after from with pages of page events and returns this
// subtest's events (all events when everything is true).
func (e *env) readAll(from eventstore.Position, page int, everything bool) []eventstore.RecordedEvent {
	e.t.Helper()
	var out []eventstore.RecordedEvent
	for {
		events, err := e.store.ReadAll(e.ctx, from, page)
		if err != nil {
			e.t.Fatalf("read all after %d: %v", from, err)
		}
		for _, ev := range events {
			if ev.Position <= from {
				e.t.Fatalf("read all after %d returned position %d", from, ev.Position)
			}
			from = ev.Position
			if everything || e.ours(ev) {
				out = append(out, ev)
			}
		}
		if len(events) < page {
			return out
		}
	}
}

// marker appends one event to a stream of its own and returns its position: reads "after the
// marker" see only what the subtest writes next, however full the store is.
func (e *env) marker() eventstore.Position {
	e.t.Helper()
	return e.append(e.stream("marker-"+uuid.NewString()[:8]), eventstore.NoStream(), newEvents(1, "Marker")...).Position
}

func ids(events []eventstore.RecordedEvent) []uuid.UUID {
	out := make([]uuid.UUID, len(events))
	for i, ev := range events {
		out[i] = ev.ID
	}
	return out
}

func dataIDs(events []eventstore.EventData) []uuid.UUID {
	out := make([]uuid.UUID, len(events))
	for i, ev := range events {
		out[i] = ev.ID
	}
	return out
}

// checkStream asserts the stream holds exactly want, at revisions 0..n-1 with increasing positions.
func (e *env) checkStream(stream string, want []eventstore.EventData) {
	e.t.Helper()
	got := e.readStream(stream, eventstore.Forwards, 0, len(want)+10)
	if !slices.Equal(ids(got), dataIDs(want)) {
		e.t.Fatalf("stream %s holds %v, want %v", stream, ids(got), dataIDs(want))
	}
	for i, ev := range got {
		if ev.Revision != uint64(i) || ev.Stream != stream {
			e.t.Fatalf("event %d of %s: stream %s revision %d", i, stream, ev.Stream, ev.Revision)
		}
		if i > 0 && ev.Position <= got[i-1].Position {
			e.t.Fatalf("%s: position %d after %d", stream, ev.Position, got[i-1].Position)
		}
	}
}

func (e *env) checkNotFound(stream string) {
	e.t.Helper()
	_, err := e.store.ReadStream(e.ctx, stream, eventstore.Forwards, 0, 10)
	if !errors.Is(err, eventstore.ErrStreamNotFound) {
		e.t.Fatalf("read of %s: got %v, want ErrStreamNotFound", stream, err)
	}
}

type expectationCase struct {
	name     string
	expected eventstore.ExpectedRevision
	ok       bool
}

func testExpectedRevisionOnNewStream(t *testing.T, e *env) {
	for _, tc := range []expectationCase{
		{"Any", eventstore.Any(), true},
		{"NoStream", eventstore.NoStream(), true},
		{"StreamExists", eventstore.StreamExists(), false},
		{"Exact0", eventstore.Exact(0), false},
		{"Exact5", eventstore.Exact(5), false},
	} {
		stream := e.stream("new-" + tc.name)
		events := newEvents(2, tc.name)
		result, err := e.store.Append(e.ctx, stream, tc.expected, events...)
		if !tc.ok {
			if !errors.Is(err, eventstore.ErrWrongExpectedVersion) {
				t.Fatalf("%s on a new stream: got %v, want ErrWrongExpectedVersion", tc.name, err)
			}
			e.checkNotFound(stream)
			continue
		}
		if err != nil {
			t.Fatalf("%s on a new stream: %v", tc.name, err)
		}
		if result.NextExpectedRevision != 1 {
			t.Fatalf("%s on a new stream: next expected revision %d, want 1", tc.name, result.NextExpectedRevision)
		}
		e.checkStream(stream, events)
	}
}

func testExpectedRevisionOnExistingStream(t *testing.T, e *env) {
	for _, tc := range []expectationCase{
		{"Any", eventstore.Any(), true},
		{"NoStream", eventstore.NoStream(), false},
		{"StreamExists", eventstore.StreamExists(), true},
		{"ExactLast", eventstore.Exact(1), true},
		{"ExactBehind", eventstore.Exact(0), false},
		{"ExactAhead", eventstore.Exact(2), false},
	} {
		stream := e.stream("existing-" + tc.name)
		first := newEvents(2, "First")
		e.append(stream, eventstore.NoStream(), first...)
		events := newEvents(2, tc.name)
		result, err := e.store.Append(e.ctx, stream, tc.expected, events...)
		if !tc.ok {
			if !errors.Is(err, eventstore.ErrWrongExpectedVersion) {
				t.Fatalf("%s on an existing stream: got %v, want ErrWrongExpectedVersion", tc.name, err)
			}
			e.checkStream(stream, first)
			continue
		}
		if err != nil {
			t.Fatalf("%s on an existing stream: %v", tc.name, err)
		}
		if result.NextExpectedRevision != 3 {
			t.Fatalf("%s on an existing stream: next expected revision %d, want 3", tc.name, result.NextExpectedRevision)
		}
		e.checkStream(stream, append(first, events...))
	}
}

func testMultiEventAppend(t *testing.T, e *env) {
	stream := e.stream("multi")
	first := newEvents(3, "A")
	result := e.append(stream, eventstore.NoStream(), first...)
	second := newEvents(4, "B")
	result2 := e.append(stream, eventstore.Exact(result.NextExpectedRevision), second...)
	if result.NextExpectedRevision != 2 || result2.NextExpectedRevision != 6 {
		t.Fatalf("next expected revisions %d, %d; want 2, 6", result.NextExpectedRevision, result2.NextExpectedRevision)
	}
	all := append(first, second...)
	e.checkStream(stream, all)
	got := e.readStream(stream, eventstore.Forwards, 0, 100)
	if got[2].Position != result.Position || got[6].Position != result2.Position {
		t.Fatalf("append results give positions %d, %d; the last events are at %d, %d",
			result.Position, result2.Position, got[2].Position, got[6].Position)
	}
	// A refused multi-event append leaves nothing behind.
	if _, err := e.store.Append(e.ctx, stream, eventstore.Exact(2), newEvents(3, "Refused")...); !errors.Is(err, eventstore.ErrWrongExpectedVersion) {
		t.Fatalf("stale multi-event append: got %v, want ErrWrongExpectedVersion", err)
	}
	e.checkStream(stream, all)
}

func testConcurrentMultiEventAppendsContiguous(t *testing.T, e *env) {
	const writers, appends, size = 6, 5, 4
	from := e.marker()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			stream := e.stream(fmt.Sprintf("contig-%d", w))
			expected := eventstore.NoStream()
			for range appends {
				result, err := e.store.Append(e.ctx, stream, expected, newEvents(size, "Contig")...)
				if err != nil {
					errs <- err
					return
				}
				expected = eventstore.Exact(result.NextExpectedRevision)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent append: %v", err)
	}
	// In the full global order (foreign events included) each append's events are adjacent and
	// in revision order.
	all := e.readAll(from, 7, true)
	count := 0
	for i, ev := range all {
		if !e.ours(ev) {
			continue
		}
		count++
		if ev.Revision%size == 0 {
			continue
		}
		if i == 0 || all[i-1].Stream != ev.Stream || all[i-1].Revision != ev.Revision-1 {
			t.Fatalf("event %s/%d does not directly follow its append's previous event", ev.Stream, ev.Revision)
		}
	}
	if count != writers*appends*size {
		t.Fatalf("read %d events, want %d", count, writers*appends*size)
	}
}

func testAppendNoEvents(t *testing.T, e *env) {
	stream := e.stream("empty")
	if _, err := e.store.Append(e.ctx, stream, eventstore.StreamExists()); !errors.Is(err, eventstore.ErrWrongExpectedVersion) {
		t.Fatalf("no events, StreamExists, new stream: got %v, want ErrWrongExpectedVersion", err)
	}
	if _, err := e.store.Append(e.ctx, stream, eventstore.NoStream()); err != nil {
		t.Fatalf("no events, NoStream, new stream: %v", err)
	}
	e.checkNotFound(stream)

	events := newEvents(2, "E")
	from := e.marker()
	e.append(stream, eventstore.NoStream(), events...)
	result, err := e.store.Append(e.ctx, stream, eventstore.Exact(1))
	if err != nil {
		t.Fatalf("no events, exact current revision: %v", err)
	}
	if result.NextExpectedRevision != 1 {
		t.Fatalf("no events: next expected revision %d, want 1", result.NextExpectedRevision)
	}
	if _, err := e.store.Append(e.ctx, stream, eventstore.Exact(0)); !errors.Is(err, eventstore.ErrWrongExpectedVersion) {
		t.Fatalf("no events, stale revision: got %v, want ErrWrongExpectedVersion", err)
	}
	if _, err := e.store.Append(e.ctx, stream, eventstore.NoStream()); !errors.Is(err, eventstore.ErrWrongExpectedVersion) {
		t.Fatalf("no events, NoStream, existing stream: got %v, want ErrWrongExpectedVersion", err)
	}
	e.checkStream(stream, events)
	if got := e.readAll(from, 100, false); len(got) != 2 {
		t.Fatalf("after appends of no events the store holds %d new events, want 2", len(got))
	}
}

func testIdempotentReappend(t *testing.T, e *env) {
	stream := e.stream("idem")
	from := e.marker()
	a := newEvents(2, "A")
	ra := e.append(stream, eventstore.NoStream(), a...)
	if again := e.append(stream, eventstore.NoStream(), a...); again != ra {
		t.Fatalf("re-append with NoStream: %+v, want the original %+v", again, ra)
	}
	b := newEvents(3, "B")
	rb := e.append(stream, eventstore.Exact(1), b...)
	if again := e.append(stream, eventstore.Exact(1), b...); again != rb {
		t.Fatalf("re-append with exact revision: %+v, want the original %+v", again, rb)
	}
	c := newEvents(1, "C")
	e.append(stream, eventstore.Exact(4), c...)
	// Older appends stay idempotent after the stream moved on.
	if again := e.append(stream, eventstore.Exact(1), b...); again != rb {
		t.Fatalf("late re-append with exact revision: %+v, want the original %+v", again, rb)
	}
	if again := e.append(stream, eventstore.NoStream(), a...); again != ra {
		t.Fatalf("late re-append with NoStream: %+v, want the original %+v", again, ra)
	}
	want := append(append(append([]eventstore.EventData{}, a...), b...), c...)
	e.checkStream(stream, want)
	if got := e.readAll(from, 100, false); len(got) != len(want) {
		t.Fatalf("store holds %d events after re-appends, want %d", len(got), len(want))
	}
}

func testPartialIdempotentMatch(t *testing.T, e *env) {
	stream := e.stream("partial")
	a := newEvents(2, "A")
	e.append(stream, eventstore.NoStream(), a...)
	b := newEvents(2, "B")
	e.append(stream, eventstore.Exact(1), b...)
	fresh := newEvents(1, "Fresh")[0]
	for _, tc := range []struct {
		name     string
		expected eventstore.ExpectedRevision
		events   []eventstore.EventData
	}{
		{"first matches, second new", eventstore.NoStream(), []eventstore.EventData{a[0], fresh}},
		{"first new, second matches", eventstore.NoStream(), []eventstore.EventData{fresh, a[1]}},
		{"one more than was written", eventstore.Exact(1), []eventstore.EventData{b[0], b[1], fresh}},
		{"right ids, wrong revision", eventstore.Exact(0), b},
	} {
		if _, err := e.store.Append(e.ctx, stream, tc.expected, tc.events...); !errors.Is(err, eventstore.ErrWrongExpectedVersion) {
			t.Fatalf("%s: got %v, want ErrWrongExpectedVersion", tc.name, err)
		}
	}
	e.checkStream(stream, append(a, b...))
}

func testReadStream(t *testing.T, e *env) {
	stream := e.stream("read")
	var events []eventstore.EventData
	expected := eventstore.NoStream()
	for _, n := range []int{3, 1, 6} {
		batch := newEvents(n, "R")
		events = append(events, batch...)
		expected = eventstore.Exact(e.append(stream, expected, batch...).NextExpectedRevision)
	}
	for _, tc := range []struct {
		dir       eventstore.Direction
		from      uint64
		max       int
		revisions []uint64
	}{
		{eventstore.Forwards, 0, 100, []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}},
		{eventstore.Forwards, 3, 4, []uint64{3, 4, 5, 6}},
		{eventstore.Forwards, 8, 5, []uint64{8, 9}},
		{eventstore.Forwards, 10, 5, nil},
		{eventstore.Backwards, eventstore.End, 3, []uint64{9, 8, 7}},
		{eventstore.Backwards, eventstore.End, 100, []uint64{9, 8, 7, 6, 5, 4, 3, 2, 1, 0}},
		{eventstore.Backwards, 5, 3, []uint64{5, 4, 3}},
		{eventstore.Backwards, 1, 5, []uint64{1, 0}},
	} {
		got := e.readStream(stream, tc.dir, tc.from, tc.max)
		if len(got) != len(tc.revisions) {
			t.Fatalf("read %v from %d max %d: %d events, want revisions %v", tc.dir, tc.from, tc.max, len(got), tc.revisions)
		}
		for i, ev := range got {
			r := tc.revisions[i]
			if ev.Revision != r || ev.ID != events[r].ID || ev.Stream != stream {
				t.Fatalf("read %v from %d max %d: event %d is %s/%d %s, want revision %d %s",
					tc.dir, tc.from, tc.max, i, ev.Stream, ev.Revision, ev.ID, r, events[r].ID)
			}
		}
	}
}

func testReadStreamNotFound(t *testing.T, e *env) {
	stream := e.stream("missing")
	for _, dir := range []eventstore.Direction{eventstore.Forwards, eventstore.Backwards} {
		from := uint64(0)
		if dir == eventstore.Backwards {
			from = eventstore.End
		}
		if _, err := e.store.ReadStream(e.ctx, stream, dir, from, 10); !errors.Is(err, eventstore.ErrStreamNotFound) {
			t.Fatalf("read %v of a missing stream: got %v, want ErrStreamNotFound", dir, err)
		}
	}
}

func testReadAll(t *testing.T, e *env) {
	from := e.marker()
	var want []eventstore.EventData
	expected := map[string]eventstore.ExpectedRevision{}
	for i := range 15 {
		stream := e.stream(fmt.Sprintf("all-%d", i%3))
		if _, ok := expected[stream]; !ok {
			expected[stream] = eventstore.NoStream()
		}
		batch := newEvents(1+i%2, "All")
		result := e.append(stream, expected[stream], batch...)
		expected[stream] = eventstore.Exact(result.NextExpectedRevision)
		want = append(want, batch...)
	}
	for _, page := range []int{1, 4, 1000} {
		got := e.readAll(from, page, false)
		if !slices.Equal(ids(got), dataIDs(want)) {
			t.Fatalf("read all in pages of %d: %v, want %v", page, ids(got), dataIDs(want))
		}
		for i := 1; i < len(got); i++ {
			if got[i].Position <= got[i-1].Position {
				t.Fatalf("read all: position %d follows %d", got[i].Position, got[i-1].Position)
			}
		}
	}
	// Reads are exclusive of their start: after the fifth event comes the sixth.
	got := e.readAll(from, 100, false)
	if rest := e.readAll(got[4].Position, 100, false); !slices.Equal(ids(rest), ids(got[5:])) {
		t.Fatalf("read all after the fifth event: %v, want %v", ids(rest), ids(got[5:]))
	}
	// From Start everything is there, and no event sits at Start itself.
	fromStart := e.readAll(eventstore.Start, 1000, false)
	if len(fromStart) < len(want)+1 {
		t.Fatalf("read all from Start: %d events of this test, want at least %d", len(fromStart), len(want)+1)
	}
	first, err := e.store.ReadAll(e.ctx, eventstore.Start, 10)
	if err != nil {
		t.Fatalf("read all from Start: %v", err)
	}
	for _, ev := range first {
		if ev.Position == eventstore.Start {
			t.Fatalf("an event (%s/%d) sits at position Start", ev.Stream, ev.Revision)
		}
	}
}

func testRoundTrip(t *testing.T, e *env) {
	stream := e.stream("roundtrip")
	before := time.Now()
	events := []eventstore.EventData{
		{ID: uuid.New(), Type: "RoundTrip", Data: []byte("{ \"a\" : 1,\n\t\"s\":\"caf\u00e9 \\u00e9 \\\"q\\\" \U0001F600\" ,\"n\":1.50e3 }"), Metadata: []byte(`{"correlation":"x",  "k":[1, 2]}`)},
		{ID: uuid.New(), Type: "RoundTrip.Other", Data: []byte(`{}`)},
		{ID: uuid.New(), Type: "RoundTrip", Data: []byte(`{"big":"` + strings.Repeat("0123456789", 6000) + `"}`)},
	}
	from := e.marker()
	e.append(stream, eventstore.NoStream(), events...)
	got := e.readStream(stream, eventstore.Forwards, 0, 10)
	if len(got) != len(events) {
		t.Fatalf("read %d events, want %d", len(got), len(events))
	}
	for i, ev := range got {
		want := events[i]
		if ev.ID != want.ID || ev.Type != want.Type || !bytes.Equal(ev.Data, want.Data) || !bytes.Equal(ev.Metadata, want.Metadata) {
			t.Fatalf("event %d: got %s %q %q %q, want %s %q %q %q", i, ev.ID, ev.Type, ev.Data, ev.Metadata, want.ID, want.Type, want.Data, want.Metadata)
		}
		if !json.Valid(ev.Data) {
			t.Fatalf("event %d: data is no longer JSON", i)
		}
		// Generous bounds: a server's clock need not match ours to the second.
		if ev.Recorded.IsZero() || ev.Recorded.Before(before.Add(-time.Hour)) || ev.Recorded.After(time.Now().Add(time.Hour)) {
			t.Fatalf("event %d recorded at %v, test ran at %v", i, ev.Recorded, before)
		}
	}
	// From a real event's position: a KurrentDB server may refuse a position no event has.
	all := e.readAll(from, 10, false)
	if len(all) == 0 || !bytes.Equal(all[0].Data, events[0].Data) || !bytes.Equal(all[0].Metadata, events[0].Metadata) || all[0].Recorded.IsZero() {
		t.Fatalf("read all does not give the event back as written")
	}
}

// next reads the subscription's next event of this subtest, skipping others.
func (e *env) next(sub eventstore.Subscription) eventstore.RecordedEvent {
	e.t.Helper()
	for {
		ev, err := sub.Next(e.ctx)
		if err != nil {
			e.t.Fatalf("subscription: %v", err)
		}
		if e.ours(ev) {
			return ev
		}
	}
}

func testSubscribeFromStart(t *testing.T, e *env) {
	stream := e.stream("sub")
	stored := newEvents(3, "Stored")
	e.append(stream, eventstore.NoStream(), stored...)
	sub, err := e.store.SubscribeAll(e.ctx, eventstore.Start)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	defer sub.Close()
	var last eventstore.Position
	check := func(want eventstore.EventData) {
		t.Helper()
		ev := e.next(sub)
		if ev.ID != want.ID || ev.Position <= last {
			t.Fatalf("subscription gave %s at %d after %d, want %s", ev.ID, ev.Position, last, want.ID)
		}
		last = ev.Position
	}
	for _, want := range stored {
		check(want)
	}
	live := newEvents(2, "Live")
	e.append(stream, eventstore.Exact(2), live[0])
	check(live[0])
	e.append(stream, eventstore.Exact(3), live[1])
	check(live[1])
}

func testSubscribeFromPosition(t *testing.T, e *env) {
	stream := e.stream("subpos")
	stored := newEvents(5, "Stored")
	e.append(stream, eventstore.NoStream(), stored[:2]...)
	e.append(stream, eventstore.Exact(1), stored[2:]...)
	events := e.readStream(stream, eventstore.Forwards, 0, 10)
	sub, err := e.store.SubscribeAll(e.ctx, events[1].Position)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	defer sub.Close()
	for _, want := range stored[2:] {
		if ev := e.next(sub); ev.ID != want.ID {
			t.Fatalf("subscription after revision 1 gave %s/%d, want %s", ev.Stream, ev.Revision, want.ID)
		}
	}
	live := newEvents(1, "Live")
	e.append(e.stream("subpos-other"), eventstore.Any(), live...)
	if ev := e.next(sub); ev.ID != live[0].ID {
		t.Fatalf("subscription gave %s, want the live event %s", ev.ID, live[0].ID)
	}
}

func testSubscriptionResume(t *testing.T, e *env) {
	const writers, appends = 8, 25
	from := e.marker()
	total := 0
	sizes := make([][]int, writers)
	for w := range writers {
		for i := range appends {
			n := 1 + (w+i)%3
			sizes[w] = append(sizes[w], n)
			total += n
		}
	}
	ctx := e.ctx
	appendErrs := make(chan error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			own := e.stream(fmt.Sprintf("resume-own-%d", w))
			shared := e.stream(fmt.Sprintf("resume-shared-%d", w%3))
			expected := eventstore.NoStream()
			for i, n := range sizes[w] {
				if i%2 == 0 {
					if _, err := e.store.Append(ctx, shared, eventstore.Any(), newEvents(n, "Shared")...); err != nil {
						appendErrs <- err
						return
					}
					continue
				}
				result, err := e.store.Append(ctx, own, expected, newEvents(n, "Own")...)
				if err != nil {
					appendErrs <- err
					return
				}
				expected = eventstore.Exact(result.NextExpectedRevision)
			}
		})
	}
	// The consumer checkpoints after every event and drops its subscription after a varying
	// number of events, resuming from the checkpoint, while the writers run.
	var seen []eventstore.RecordedEvent
	checkpoint := from
	for resubscribe := 0; len(seen) < total; resubscribe++ {
		sub, err := e.store.SubscribeAll(ctx, checkpoint)
		if err != nil {
			t.Fatalf("subscribe from %d: %v", checkpoint, err)
		}
		for range 1 + resubscribe%13 {
			ev, err := sub.Next(ctx)
			if err != nil {
				t.Fatalf("subscription from %d after %d of %d events: %v", checkpoint, len(seen), total, err)
			}
			if ev.Position <= checkpoint {
				t.Fatalf("subscription from %d gave position %d", checkpoint, ev.Position)
			}
			checkpoint = ev.Position
			if e.ours(ev) {
				seen = append(seen, ev)
			}
			if len(seen) == total {
				break
			}
		}
		sub.Close()
	}
	wg.Wait()
	close(appendErrs)
	for err := range appendErrs {
		t.Fatalf("append: %v", err)
	}
	truth := e.readAll(from, 1000, false)
	if len(truth) != total || len(seen) != total {
		t.Fatalf("store holds %d events, subscription saw %d, %d were appended", len(truth), len(seen), total)
	}
	for i := range truth {
		if truth[i].ID != seen[i].ID || truth[i].Position != seen[i].Position {
			t.Fatalf("event %d: subscription saw %s at %d, store holds %s at %d", i, seen[i].ID, seen[i].Position, truth[i].ID, truth[i].Position)
		}
	}
}

func testConcurrentExact(t *testing.T, e *env) {
	const rounds, contenders = 10, 8
	stream := e.stream("race")
	var winners []eventstore.EventData
	for round := range rounds {
		expected := eventstore.NoStream()
		if round > 0 {
			expected = eventstore.Exact(uint64(round - 1))
		}
		start := make(chan struct{})
		results := make([]error, contenders)
		events := newEvents(contenders, "Race")
		var wg sync.WaitGroup
		for c := range contenders {
			wg.Go(func() {
				<-start
				_, results[c] = e.store.Append(e.ctx, stream, expected, events[c])
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for c, err := range results {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("round %d: contenders %d and %d both won", round, winner, c)
			case err == nil:
				winner = c
			case !errors.Is(err, eventstore.ErrWrongExpectedVersion):
				t.Fatalf("round %d: contender %d: %v", round, c, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: nobody won", round)
		}
		winners = append(winners, events[winner])
	}
	e.checkStream(stream, winners)
}

func testSubscriptionClose(t *testing.T, e *env) {
	e.append(e.stream("subclose"), eventstore.NoStream(), newEvents(1, "X")...)
	sub, err := e.store.SubscribeAll(e.ctx, e.marker())
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	if _, err := sub.Next(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("next with a cancelled context: got %v, want context.Canceled", err)
	}
	if err := sub.Close(); err != nil {
		t.Fatalf("close subscription: %v", err)
	}
	if _, err := sub.Next(e.ctx); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("next on a closed subscription: got %v, want ErrClosed", err)
	}
}

func testClose(t *testing.T, e *env) {
	stream := e.stream("close")
	e.append(stream, eventstore.NoStream(), newEvents(1, "X")...)
	sub, err := e.store.SubscribeAll(e.ctx, e.marker())
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	// Next waits for an event that never comes; Close must end it.
	nextErr := make(chan error, 1)
	go func() {
		_, err := sub.Next(e.ctx)
		nextErr <- err
	}()
	if err := e.store.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := <-nextErr; !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("next across Close: got %v, want ErrClosed", err)
	}
	if _, err := e.store.Append(e.ctx, stream, eventstore.Any(), newEvents(1, "Late")...); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("append after Close: got %v, want ErrClosed", err)
	}
	if _, err := e.store.ReadStream(e.ctx, stream, eventstore.Forwards, 0, 10); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("read stream after Close: got %v, want ErrClosed", err)
	}
	if _, err := e.store.ReadAll(e.ctx, eventstore.Start, 10); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("read all after Close: got %v, want ErrClosed", err)
	}
	// A backend may refuse the subscription or hand one out that fails at once.
	if late, err := e.store.SubscribeAll(e.ctx, eventstore.Start); !errors.Is(err, eventstore.ErrClosed) {
		if err != nil {
			t.Fatalf("subscribe after Close: got %v, want ErrClosed", err)
		}
		if _, err := late.Next(e.ctx); !errors.Is(err, eventstore.ErrClosed) {
			t.Fatalf("next on a subscription made after Close: got %v, want ErrClosed", err)
		}
	}
}
