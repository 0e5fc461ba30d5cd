package embedded_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
)

// take takes n events from sub.
func take(ctx context.Context, sub eventstore.Subscription, n int) ([]eventstore.RecordedEvent, error) {
	events := make([]eventstore.RecordedEvent, 0, n)
	for len(events) < n {
		ev, err := sub.Next(ctx)
		if err != nil {
			return events, fmt.Errorf("subscription after %d of %d events: %w", len(events), n, err)
		}
		events = append(events, ev)
	}
	return events, nil
}

// collect takes n events from sub or fails the test.
func collect(ctx context.Context, t *testing.T, sub eventstore.Subscription, n int) []eventstore.RecordedEvent {
	t.Helper()
	events, err := take(ctx, sub, n)
	if err != nil {
		t.Fatal(err)
	}
	return events
}

// sameAsReadAll checks that got, delivered by a subscription after position from, is exactly
// what ReadAll returns for that range: every field, generated IDs and recorded times included.
func sameAsReadAll(ctx context.Context, t *testing.T, store *embedded.Store, from eventstore.Position, got []eventstore.RecordedEvent) {
	t.Helper()
	want, err := store.ReadAll(ctx, from, len(got)+1)
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != len(got) {
		t.Fatalf("subscription delivered %d events after %d, ReadAll returns %d", len(got), from, len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Fatalf("event %d after %d:\nsubscription %#v\nReadAll      %#v", i, from, got[i], want[i])
		}
		if got[i].ID == uuid.Nil {
			t.Fatalf("event at %d has no ID", got[i].Position)
		}
	}
}

// variedEvents builds one to three events with every payload shape the tail must reproduce:
// no ID (the store makes one), nil and empty payloads, and payloads of different sizes. Data
// is written into buf, which the caller scribbles over once Append has returned.
func variedEvents(buf []byte, appender, i int) []eventstore.EventData {
	events := make([]eventstore.EventData, 0, 3)
	for k := range 1 + (appender+i)%3 {
		ev := eventstore.EventData{ID: uuid.New(), Type: fmt.Sprintf("Kind%d", (i+k)%4)}
		switch (i + k) % 4 {
		case 0:
			ev.ID = uuid.Nil
		case 1:
			ev.Data, ev.Metadata = []byte{}, []byte(`{"correlationId":"x"}`)
		case 2:
			ev.Data = fmt.Appendf(buf[:0], `{"appender":%d,"i":%d,"k":%d}`, appender, i, k)
		case 3:
			ev.ID = uuid.Nil
			ev.Data = append(buf[:0:0], make([]byte, (i*37)%300)...)
			ev.Metadata = []byte{}
		}
		events = append(events, ev)
	}
	return events
}

// TestTailDeliversWhatReadAllReturns follows concurrent appenders with a subscription served
// from the in-memory tail and checks it delivers exactly what ReadAll returns, across many
// group commits, although the appenders overwrite their payload buffers after each append.
func TestTailDeliversWhatReadAllReturns(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	store := openStore(t, t.TempDir())
	sub, err := store.SubscribeAll(ctx, eventstore.Start)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	const appenders, appends = 8, 40
	total := 0
	for a := range appenders {
		for i := range appends {
			total += len(variedEvents(nil, a, i))
		}
	}
	// The subscriber follows the appenders as they go.
	type delivery struct {
		events []eventstore.RecordedEvent
		err    error
	}
	delivered := make(chan delivery, 1)
	go func() {
		events, err := take(ctx, sub, total)
		delivered <- delivery{events, err}
	}()

	var wg sync.WaitGroup
	errs := make([]error, appenders)
	for a := range appenders {
		wg.Go(func() {
			buf := make([]byte, 0, 128)
			for i := range appends {
				events := variedEvents(buf, a, i)
				if _, err := store.Append(ctx, fmt.Sprintf("tail-%d", a), eventstore.Any(), events...); err != nil {
					errs[a] = err
					return
				}
				// The store must have copied what it keeps: a caller may reuse its buffers.
				full := buf[:cap(buf)]
				for k := range full {
					full[k] = 0xFF
				}
			}
		})
	}
	wg.Wait()
	for a := range appenders {
		if errs[a] != nil {
			t.Fatalf("appender %d: %v", a, errs[a])
		}
	}
	got := <-delivered
	if got.err != nil {
		t.Fatal(got.err)
	}
	sameAsReadAll(ctx, t, store, eventstore.Start, got.events)

	// A second subscription from the start, opened after the fact, is served from the tail as
	// well, since the tail still holds every event.
	late, err := store.SubscribeAll(ctx, eventstore.Start)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	sameAsReadAll(ctx, t, store, eventstore.Start, collect(ctx, t, late, total))

	stats := store.Stats()
	if stats.DatabasePages != 0 || stats.TailPages == 0 {
		t.Fatalf("subscriptions read %d pages from the database and %d from the tail; want all from the tail", stats.DatabasePages, stats.TailPages)
	}
	if stats.Batches < appends {
		t.Fatalf("%d group commits, want at least %d", stats.Batches, appends)
	}
}

// appendOneByOne appends n one-event appends, each its own group commit, to stream.
func appendOneByOne(ctx context.Context, t *testing.T, store eventstore.Store, stream string, n int) {
	t.Helper()
	for i := range n {
		if _, err := store.Append(ctx, stream, eventstore.Any(), benchEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSubscriberBehindTheTailReadsTheDatabase checks that a subscription reads the database
// while it is behind the in-memory tail (events from before Open; a lag longer than the tail)
// and takes events from the tail once it has caught up, without a gap or a repeat.
func TestSubscriberBehindTheTailReadsTheDatabase(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	before, err := embedded.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	appendOneByOne(ctx, t, before, "old", 10)
	if err := before.Close(); err != nil {
		t.Fatal(err)
	}

	const tailEvents = 8
	store := openStore(t, dir, embedded.WithSubscriptionTail(tailEvents, 1<<20), embedded.WithSubscriptionPage(3))
	sub, err := store.SubscribeAll(ctx, eventstore.Start)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var got []eventstore.RecordedEvent
	pages := func() (tail, database uint64) {
		s := store.Stats()
		return s.TailPages, s.DatabasePages
	}

	// The events from before Open are in no tail.
	got = append(got, collect(ctx, t, sub, 10)...)
	if tail, database := pages(); tail != 0 || database == 0 {
		t.Fatalf("catching up on old events: %d tail pages, %d database pages", tail, database)
	}
	// Following live appends, it takes them from the tail.
	_, database0 := pages()
	appendOneByOne(ctx, t, store, "live", 5)
	got = append(got, collect(ctx, t, sub, 5)...)
	if tail, database := pages(); tail == 0 || database != database0 {
		t.Fatalf("following live appends: %d tail pages, %d database pages (was %d)", tail, database, database0)
	}
	// Lagging by more than the tail holds, it reads the database until it reaches the tail.
	tail1, database1 := pages()
	appendOneByOne(ctx, t, store, "burst", 5*tailEvents)
	got = append(got, collect(ctx, t, sub, 5*tailEvents)...)
	tail2, database2 := pages()
	if database2 == database1 || tail2 == tail1 {
		t.Fatalf("after a lag: %d more database pages, %d more tail pages; want both", database2-database1, tail2-tail1)
	}
	// Caught up, it is back on the tail.
	appendOneByOne(ctx, t, store, "live", 3)
	got = append(got, collect(ctx, t, sub, 3)...)
	if tail, database := pages(); tail == tail2 || database != database2 {
		t.Fatalf("back on live appends: %d tail pages (was %d), %d database pages (was %d)", tail, tail2, database, database2)
	}
	sameAsReadAll(ctx, t, store, eventstore.Start, got)
}

// TestLaggingSubscriberUnderConcurrentAppends starts a subscription far behind a small tail
// while appenders keep appending: it reads the database, reaches the tail and finishes there,
// delivering exactly what ReadAll returns.
func TestLaggingSubscriberUnderConcurrentAppends(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// A page (5) shorter than the tail (16): a subscriber reading pages towards a still head
	// cannot step over the tail.
	store := openStore(t, t.TempDir(), embedded.WithSubscriptionTail(16, 1<<20), embedded.WithSubscriptionPage(5))
	const appenders, perPhase = 8, 25
	appendPhase := func() {
		var wg sync.WaitGroup
		errs := make(chan error, appenders)
		for a := range appenders {
			wg.Go(func() {
				for i := range perPhase {
					if _, err := store.Append(ctx, fmt.Sprintf("lag-%d", a), eventstore.Any(), benchEvent(i)); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	appendPhase()
	sub, err := store.SubscribeAll(ctx, eventstore.Start)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	type delivery struct {
		events []eventstore.RecordedEvent
		err    error
	}
	delivered := make(chan delivery, 1)
	go func() {
		events, err := take(ctx, sub, 2*appenders*perPhase)
		delivered <- delivery{events, err}
	}()
	appendPhase()
	got := <-delivered
	if got.err != nil {
		t.Fatal(got.err)
	}
	sameAsReadAll(ctx, t, store, eventstore.Start, got.events)
	if s := store.Stats(); s.DatabasePages == 0 || s.TailPages == 0 {
		t.Fatalf("%d database pages, %d tail pages; want both", s.DatabasePages, s.TailPages)
	}
}

// poisonType is an event type that a trigger, installed by the test, makes every insert of
// fail: a real database error in the middle of a group commit, which rolls the batch back.
// Event rows hold their type as an id (schema version 2): the trigger looks the name up.
const poisonType = "Poison"

func poisonStore(ctx context.Context, t *testing.T, dir string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, embedded.DatabaseFile)+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.type = (SELECT id FROM event_types WHERE name = '`+poisonType+`')
BEGIN SELECT RAISE(ABORT, 'poisoned event'); END`); err != nil {
		t.Fatalf("install trigger: %v", err)
	}
}

// TestSubscriptionsSeeOnlyCommittedEvents mixes good appends with appends that fail the whole
// group commit they land in (a poisoned event after good ones) and with refused appends, from
// concurrent appenders, and checks that a live subscription delivers exactly the acknowledged
// events: nothing of a rolled-back batch or a refused append, and no event twice although a
// rolled-back batch's positions are given out again.
func TestSubscriptionsSeeOnlyCommittedEvents(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	store := openStore(t, dir)
	poisonStore(ctx, t, dir)
	sub, err := store.SubscribeAll(ctx, eventstore.Start)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	// The subscriber follows the appends live, until the sentinel appended last.
	sentinel := benchEvent(-1)
	type delivery struct {
		events []eventstore.RecordedEvent
		err    error
	}
	delivered := make(chan delivery, 1)
	go func() {
		var events []eventstore.RecordedEvent
		for {
			ev, err := sub.Next(ctx)
			if err != nil {
				delivered <- delivery{events, err}
				return
			}
			events = append(events, ev)
			if ev.ID == sentinel.ID {
				delivered <- delivery{events, nil}
				return
			}
		}
	}()

	// One append whose first event is inserted before its second fails the transaction.
	mixed := []eventstore.EventData{benchEvent(0), {ID: uuid.New(), Type: poisonType, Data: []byte(`{}`)}}
	if _, err := store.Append(ctx, "mixed", eventstore.NoStream(), mixed...); err == nil || errors.Is(err, eventstore.ErrWrongExpectedVersion) {
		t.Fatalf("poisoned append: %v, want a commit error", err)
	}

	// Concurrent appenders: good appends, poisoned ones, and refused ones, until some good
	// append has failed for sharing a batch with a poisoned one.
	const appenders, perAppender = 8, 30
	var (
		mu         sync.Mutex
		acked      = map[uuid.UUID]bool{}
		failed     = map[uuid.UUID]bool{}
		goodFailed int
	)
	for round := 0; goodFailed == 0; round++ {
		if round == 20 {
			t.Fatal("no good append ever shared a group commit with a poisoned one")
		}
		var wg sync.WaitGroup
		for a := range appenders {
			wg.Go(func() {
				for i := range perAppender {
					ev := benchEvent(i)
					expected := eventstore.Any()
					poisoned, refused := a == 0 && i%3 == 0, a == 1 && i%4 == 0
					switch {
					case poisoned:
						ev.Type = poisonType
					case refused:
						expected = eventstore.Exact(1 << 40) // refused
					}
					_, err := store.Append(ctx, fmt.Sprintf("committed-%d", a), expected, ev)
					mu.Lock()
					switch {
					case err == nil:
						acked[ev.ID] = true
					case errors.Is(err, eventstore.ErrWrongExpectedVersion) && expected != eventstore.Any():
						failed[ev.ID] = true
					case !errors.Is(err, eventstore.ErrWrongExpectedVersion):
						failed[ev.ID] = true
						if !poisoned && !refused {
							goodFailed++
						}
					default:
						t.Errorf("append with Any refused: %v", err)
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			return
		}
	}

	// The subscription delivered exactly what was acknowledged, in the order ReadAll returns.
	if _, err := store.Append(ctx, "sentinel", eventstore.NoStream(), sentinel); err != nil {
		t.Fatal(err)
	}
	acked[sentinel.ID] = true
	d := <-delivered
	if d.err != nil {
		t.Fatal(d.err)
	}
	got := d.events
	if len(got) != len(acked) {
		t.Fatalf("subscription delivered %d events, %d were acknowledged", len(got), len(acked))
	}
	for _, ev := range got {
		if !acked[ev.ID] {
			t.Fatalf("subscription delivered event %s at %d, which was not acknowledged (failed: %v)", ev.ID, ev.Position, failed[ev.ID])
		}
	}
	sameAsReadAll(ctx, t, store, eventstore.Start, got)
	if s := store.Stats(); s.DatabasePages != 0 || s.Failed == 0 {
		t.Fatalf("stats %+v: want failed appends and every event from the tail", s)
	}
	t.Logf("%d acknowledged, %d failed or refused (%d good appends failed with a poisoned one)", len(acked), len(failed), goodFailed)
}
