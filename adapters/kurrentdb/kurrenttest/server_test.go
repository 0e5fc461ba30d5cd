package kurrenttest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"github.com/tallyledger/tally/adapters/kurrentdb/kurrenttest"
)

// These tests drive the server with the unmodified esdb client, checking that the client sees
// what the spec (/work/shared/spec/event-store.md) says a real KurrentDB gives it.

func newClient(t *testing.T, server *kurrenttest.Server) *esdb.Client {
	t.Helper()
	config, err := esdb.ParseConnectionString(server.URL())
	if err != nil {
		t.Fatalf("parse %s: %v", server.URL(), err)
	}
	config.Logger = esdb.NoopLogging()
	client, err := esdb.NewClient(config)
	if err != nil {
		t.Fatalf("new client: %v", err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func jsonEvent(kind string, body string) esdb.EventData {
	return esdb.EventData{EventID: uuid.New(), EventType: kind, ContentType: esdb.ContentTypeJson, Data: []byte(body)}
}

func errorCode(t *testing.T, err error) esdb.ErrorCode {
	t.Helper()
	var esErr *esdb.Error
	if !errors.As(err, &esErr) {
		t.Fatalf("error %v (%T) is not an *esdb.Error", err, err)
	}
	return esErr.Code()
}

func readStream(t *testing.T, client *esdb.Client, stream string, options esdb.ReadStreamOptions, count uint64) ([]*esdb.ResolvedEvent, error) {
	t.Helper()
	read, err := client.ReadStream(context.Background(), stream, options, count)
	if err != nil {
		t.Fatalf("read %s: %v", stream, err)
	}
	defer read.Close()
	var out []*esdb.ResolvedEvent
	for {
		event, err := read.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, event)
	}
}

func TestAppendAssignsConsecutiveRevisionsAndIncreasingPositions(t *testing.T) {
	ctx := context.Background()
	client := newClient(t, kurrenttest.Start(t))

	first, err := client.AppendToStream(ctx, "order-1", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}},
		jsonEvent("Opened", `{"n":1}`), jsonEvent("Changed", `{"n":2}`))
	if err != nil {
		t.Fatalf("append: %v", err)
	}
	if first.NextExpectedVersion != 1 {
		t.Errorf("NextExpectedVersion = %d, want 1", first.NextExpectedVersion)
	}
	second, err := client.AppendToStream(ctx, "order-1", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Revision(1)},
		jsonEvent("Closed", `{"n":3}`))
	if err != nil {
		t.Fatalf("second append: %v", err)
	}
	if second.NextExpectedVersion != 2 || second.CommitPosition <= first.CommitPosition || second.CommitPosition != second.PreparePosition {
		t.Errorf("second result %+v after %+v", second, first)
	}

	events, err := readStream(t, client, "order-1", esdb.ReadStreamOptions{}, 10)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if len(events) != 3 {
		t.Fatalf("read %d events, want 3", len(events))
	}
	var previous uint64
	for i, event := range events {
		recorded := event.Event
		if recorded.EventNumber != uint64(i) {
			t.Errorf("event %d has revision %d", i, recorded.EventNumber)
		}
		if i > 0 && recorded.Position.Commit <= previous {
			t.Errorf("event %d position %d not after %d", i, recorded.Position.Commit, previous)
		}
		previous = recorded.Position.Commit
		if recorded.ContentType != "application/json" || time.Since(recorded.CreatedDate) > time.Minute {
			t.Errorf("event %d: content type %q, created %v", i, recorded.ContentType, recorded.CreatedDate)
		}
	}
	if string(events[2].Event.Data) != `{"n":3}` || events[2].Event.EventType != "Closed" {
		t.Errorf("last event %q %s", events[2].Event.EventType, events[2].Event.Data)
	}

	backwards, err := readStream(t, client, "order-1", esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.End{}}, 2)
	if err != nil {
		t.Fatalf("read backwards: %v", err)
	}
	if len(backwards) != 2 || backwards[0].Event.EventNumber != 2 || backwards[1].Event.EventNumber != 1 {
		t.Errorf("backwards read gave %d events", len(backwards))
	}
}

func TestExpectedRevisionConditions(t *testing.T) {
	ctx := context.Background()
	client := newClient(t, kurrenttest.Start(t))
	if _, err := client.AppendToStream(ctx, "existing", esdb.AppendToStreamOptions{}, jsonEvent("A", `{}`), jsonEvent("B", `{}`)); err != nil {
		t.Fatalf("seed: %v", err)
	}
	cases := []struct {
		name     string
		stream   string
		expected esdb.ExpectedRevision
		ok       bool
	}{
		{"any on missing", "fresh-any", esdb.Any{}, true},
		{"any on existing", "existing", esdb.Any{}, true},
		{"no stream on missing", "fresh-nostream", esdb.NoStream{}, true},
		{"no stream on existing", "existing", esdb.NoStream{}, false},
		{"stream exists on missing", "missing", esdb.StreamExists{}, false},
		{"stream exists on existing", "existing", esdb.StreamExists{}, true},
		{"exact on missing", "missing", esdb.Revision(0), false},
		{"stale exact", "existing", esdb.Revision(0), false},
		{"future exact", "existing", esdb.Revision(9), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := client.AppendToStream(ctx, c.stream, esdb.AppendToStreamOptions{ExpectedRevision: c.expected}, jsonEvent("X", `{}`))
			if c.ok {
				if err != nil {
					t.Fatalf("append: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("append succeeded, want wrong expected version")
			}
			if code := errorCode(t, err); code != esdb.ErrorCodeWrongExpectedVersion {
				t.Fatalf("code %d (%v), want ErrorCodeWrongExpectedVersion", code, err)
			}
		})
	}
	// The seed stream got one Any and one StreamExists append on top of its two events.
	events, err := readStream(t, client, "existing", esdb.ReadStreamOptions{}, 100)
	if err != nil || len(events) != 4 {
		t.Fatalf("existing has %d events (%v), want 4", len(events), err)
	}
}

func TestIdempotentReappendReturnsOriginalPositions(t *testing.T) {
	ctx := context.Background()
	server := kurrenttest.Start(t)
	client := newClient(t, server)
	batch := []esdb.EventData{jsonEvent("A", `{}`), jsonEvent("B", `{}`)}
	for _, expected := range []esdb.ExpectedRevision{esdb.NoStream{}, esdb.Revision(1)} {
		stream := fmt.Sprintf("idem-%T", expected)
		if rev, ok := expected.(esdb.StreamRevision); ok {
			stream = "idem-exact"
			if _, err := client.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{}, jsonEvent("S0", `{}`), jsonEvent("S1", `{}`)); err != nil || rev.Value != 1 {
				t.Fatalf("seed: %v", err)
			}
		}
		first, err := client.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: expected}, batch...)
		if err != nil {
			t.Fatalf("%s: first append: %v", stream, err)
		}
		count := server.EventCount()
		again, err := client.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: expected}, batch...)
		if err != nil {
			t.Fatalf("%s: re-append: %v", stream, err)
		}
		if *again != *first {
			t.Errorf("%s: re-append result %+v, want original %+v", stream, again, first)
		}
		if server.EventCount() != count {
			t.Errorf("%s: re-append wrote events", stream)
		}
		// Different IDs with the same stale condition are a conflict.
		_, err = client.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: expected}, jsonEvent("A", `{}`), jsonEvent("B", `{}`))
		if err == nil || errorCode(t, err) != esdb.ErrorCodeWrongExpectedVersion {
			t.Errorf("%s: new IDs with stale condition: %v", stream, err)
		}
	}
}

func TestReadOfMissingStreamFailsAtRecvWithResourceNotFound(t *testing.T) {
	client := newClient(t, kurrenttest.Start(t))
	read, err := client.ReadStream(context.Background(), "nobody", esdb.ReadStreamOptions{}, 10)
	if err != nil {
		t.Fatalf("ReadStream itself failed: %v", err)
	}
	defer read.Close()
	_, err = read.Recv()
	if err == nil || errorCode(t, err) != esdb.ErrorCodeResourceNotFound {
		t.Fatalf("Recv: %v, want ErrorCodeResourceNotFound", err)
	}
}

func TestOversizedAppendIsRefusedAsUnknown(t *testing.T) {
	ctx := context.Background()
	server := kurrenttest.Start(t)
	client := newClient(t, server)
	big := bytes.Repeat([]byte("x"), kurrenttest.DefaultMaxAppendSize/2)
	_, err := client.AppendToStream(ctx, "big", esdb.AppendToStreamOptions{},
		esdb.EventData{EventID: uuid.New(), EventType: "Big", Data: big},
		esdb.EventData{EventID: uuid.New(), EventType: "Big", Data: big})
	if err == nil {
		t.Fatal("oversized append succeeded")
	}
	if code := errorCode(t, err); code != esdb.ErrorCodeUnknown {
		t.Fatalf("code %d (%v), want ErrorCodeUnknown", code, err)
	}
	if server.EventCount() != 0 {
		t.Fatalf("oversized append wrote %d events", server.EventCount())
	}
	// Just under the limit is accepted.
	if _, err := client.AppendToStream(ctx, "big", esdb.AppendToStreamOptions{}, esdb.EventData{EventID: uuid.New(), EventType: "Big", Data: big}); err != nil {
		t.Fatalf("half-size append: %v", err)
	}
}

func TestReadAllPositionsAreInclusiveForwardsAndExclusiveBackwards(t *testing.T) {
	ctx := context.Background()
	client := newClient(t, kurrenttest.Start(t))
	var positions []uint64
	for i := range 4 {
		result, err := client.AppendToStream(ctx, fmt.Sprintf("s-%d", i%2), esdb.AppendToStreamOptions{}, jsonEvent("E", `{}`))
		if err != nil {
			t.Fatalf("append: %v", err)
		}
		positions = append(positions, result.CommitPosition)
	}
	read := func(options esdb.ReadAllOptions) []uint64 {
		stream, err := client.ReadAll(ctx, options, 10)
		if err != nil {
			t.Fatalf("read all: %v", err)
		}
		defer stream.Close()
		var out []uint64
		for {
			event, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return out
			}
			if err != nil {
				t.Fatalf("recv: %v", err)
			}
			out = append(out, event.Event.Position.Commit)
		}
	}
	from := esdb.Position{Commit: positions[1], Prepare: positions[1]}
	if got := read(esdb.ReadAllOptions{From: from}); fmt.Sprint(got) != fmt.Sprint(positions[1:]) {
		t.Errorf("forwards from %d: %v, want %v", positions[1], got, positions[1:])
	}
	if got := read(esdb.ReadAllOptions{From: from, Direction: esdb.Backwards}); fmt.Sprint(got) != fmt.Sprint([]uint64{positions[0]}) {
		t.Errorf("backwards from %d: %v, want [%d]", positions[1], got, positions[0])
	}
	if got := read(esdb.ReadAllOptions{}); fmt.Sprint(got) != fmt.Sprint(positions) {
		t.Errorf("forwards from start: %v, want %v", got, positions)
	}
}

func TestFilteredSubscriptionCatchesUpGoesLiveAndSendsCheckpoints(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := newClient(t, kurrenttest.Start(t))
	appendTo := func(stream string) uint64 {
		result, err := client.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{}, jsonEvent("E", `{}`))
		if err != nil {
			t.Fatalf("append: %v", err)
		}
		return result.CommitPosition
	}
	skipped := appendTo("product-1")
	want := []uint64{appendTo("product-2")}
	for range 40 {
		appendTo("other-1") // filtered out; enough to pass a checkpoint window
	}
	want = append(want, appendTo("product-1"))

	subscription, err := client.SubscribeToAll(ctx, esdb.SubscribeToAllOptions{
		From:            esdb.Position{Commit: skipped, Prepare: skipped},
		Filter:          &esdb.SubscriptionFilter{Type: esdb.StreamFilterType, Prefixes: []string{"product-"}},
		MaxSearchWindow: 8,
	})
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	defer subscription.Close()

	var got []uint64
	checkpoints := 0
	live := false
	for len(got) < 3 {
		event := subscription.Recv()
		switch {
		case event.EventAppeared != nil:
			got = append(got, event.EventAppeared.Event.Position.Commit)
			if event.EventAppeared.Event.StreamID[:8] != "product-" {
				t.Errorf("filter let through %s", event.EventAppeared.Event.StreamID)
			}
		case event.CheckPointReached != nil:
			checkpoints++
		case event.SubscriptionDropped != nil:
			t.Fatalf("dropped: %v", event.SubscriptionDropped.Error)
		}
		if len(got) == 2 && !live {
			live = true
			want = append(want, appendTo("product-3"))
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("positions %v, want %v", got, want)
	}
	if checkpoints == 0 {
		t.Error("no checkpoint while scanning 40 filtered-out events with a window of 8")
	}
}

func TestDropSubscriptionsEndsThemWithSubscriptionDropped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	server := kurrenttest.Start(t)
	client := newClient(t, server)
	subscription, err := client.SubscribeToAll(ctx, esdb.SubscribeToAllOptions{From: esdb.Start{}})
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	defer subscription.Close()
	if server.LiveSubscriptions() != 1 {
		t.Fatalf("live subscriptions %d, want 1", server.LiveSubscriptions())
	}
	if n := server.DropSubscriptions(); n != 1 {
		t.Fatalf("dropped %d, want 1", n)
	}
	event := subscription.Recv()
	if event.SubscriptionDropped == nil {
		t.Fatalf("got %+v, want SubscriptionDropped", event)
	}
}

func TestInjectedAppendFaults(t *testing.T) {
	ctx := context.Background()
	server := kurrenttest.Start(t)
	client := newClient(t, server)

	server.FailNextAppends(1, nil)
	event := jsonEvent("E", `{}`)
	if _, err := client.AppendToStream(ctx, "f", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, event); err == nil {
		t.Fatal("append succeeded despite FailNextAppends")
	}
	if server.EventCount() != 0 {
		t.Fatal("failed append wrote events")
	}

	server.LoseNextAppendAcks(1, nil)
	if _, err := client.AppendToStream(ctx, "f", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, event); err == nil {
		t.Fatal("append succeeded despite LoseNextAppendAcks")
	}
	if server.EventCount() != 1 {
		t.Fatalf("append with lost ack left %d events, want 1", server.EventCount())
	}
	// The retry with the same ID and condition is idempotent.
	result, err := client.AppendToStream(ctx, "f", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, event)
	if err != nil || result.NextExpectedVersion != 0 || server.EventCount() != 1 {
		t.Fatalf("retry: %+v, %v, %d events", result, err, server.EventCount())
	}
}
