package kurrentdb_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"github.com/tallyledger/tally/adapters/kurrentdb"
	"github.com/tallyledger/tally/adapters/kurrentdb/kurrenttest"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/eventstore/storetest"
)

// realServerEnv names a real KurrentDB to run the contract suite against as well.
const realServerEnv = "TALLY_KURRENTDB_URL"

func openStore(t *testing.T, cfg kurrentdb.Config) *kurrentdb.Store {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	store, err := kurrentdb.Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("open %s: %v", cfg.URL, err)
	}
	t.Cleanup(func() { _ = store.Close() })
	return store
}

func TestContractOnTestServer(t *testing.T) {
	t.Run("LogPositions", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) eventstore.Store {
			return openStore(t, kurrentdb.Config{URL: kurrenttest.Start(t).URL()})
		})
	})
	// Consecutive positions catch off-by-one errors in the position mapping.
	t.Run("DensePositions", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) eventstore.Store {
			return openStore(t, kurrentdb.Config{URL: kurrenttest.Start(t, kurrenttest.WithDensePositions()).URL()})
		})
	})
}

func TestContractOnRealServer(t *testing.T) {
	url := os.Getenv(realServerEnv)
	if url == "" {
		t.Skipf("%s is not set: no real KurrentDB to run the contract suite against (docs/kurrentdb.md)", realServerEnv)
	}
	storetest.Run(t, func(t *testing.T) eventstore.Store {
		return openStore(t, kurrentdb.Config{URL: url})
	})
}

func newEvents(n int, kind string) []eventstore.EventData {
	events := make([]eventstore.EventData, n)
	for i := range events {
		events[i] = eventstore.EventData{ID: uuid.New(), Type: kind, Data: fmt.Appendf(nil, `{"i":%d}`, i), Metadata: []byte(`{"m":true}`)}
	}
	return events
}

// syncBuffer is a bytes.Buffer safe for the client's goroutines and the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestSubscriptionSurvivesServerDropsWithoutSkipOrRepeat(t *testing.T) {
	const appends = 240
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // a bug must fail, not hang
	defer cancel()
	server := kurrenttest.Start(t)
	var logs syncBuffer
	store := openStore(t, kurrentdb.Config{
		URL:            server.URL(),
		StreamPrefixes: []string{"keep-"},
		Logger:         slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	sub, err := store.SubscribeAll(ctx, eventstore.Start)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	defer sub.Close()

	// The writer appends while the reader reads and the server drops the subscription; half of
	// the appends go to streams outside the prefix filter.
	wanted := 0
	writerErr := make(chan error, 1)
	for i := range appends {
		if i%2 == 0 {
			wanted += 1 + i%3
		}
	}
	go func() {
		defer close(writerErr)
		for i := range appends {
			stream := fmt.Sprintf("keep-%d", i%5)
			if i%2 == 1 {
				stream = fmt.Sprintf("skip-%d", i%3)
			}
			if _, err := store.Append(ctx, stream, eventstore.Any(), newEvents(1+i%3, "E")...); err != nil {
				writerErr <- err
				return
			}
		}
	}()

	var seen []eventstore.RecordedEvent
	drops := 0
	for len(seen) < wanted {
		event, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("next after %d of %d events: %v", len(seen), wanted, err)
		}
		seen = append(seen, event)
		if len(seen)%25 == 0 {
			drops += server.DropSubscriptions()
		}
	}
	if err := <-writerErr; err != nil {
		t.Fatalf("append: %v", err)
	}

	truth, err := store.ReadAll(ctx, eventstore.Start, 10_000)
	if err != nil {
		t.Fatalf("read all: %v", err)
	}
	if len(truth) != wanted {
		t.Fatalf("read all gave %d events, want %d", len(truth), wanted)
	}
	for i := range truth {
		if !strings.HasPrefix(seen[i].Stream, "keep-") || seen[i].ID != truth[i].ID || seen[i].Position != truth[i].Position {
			t.Fatalf("event %d: subscription gave %s/%d %s at %d, store holds %s/%d %s at %d", i,
				seen[i].Stream, seen[i].Revision, seen[i].ID, seen[i].Position,
				truth[i].Stream, truth[i].Revision, truth[i].ID, truth[i].Position)
		}
	}
	if drops == 0 {
		t.Fatal("the server dropped no subscription: the test did not exercise resuming")
	}
	if started := server.SubscriptionsStarted(); started < drops {
		t.Fatalf("%d drops but only %d subscriptions started: the adapter did not resubscribe", drops, started)
	}
	if !strings.Contains(logs.String(), "subscription dropped; resubscribing") {
		t.Fatalf("no resubscribe warning in the log:\n%s", logs.String())
	}
	// Nothing more than what was appended arrives.
	short, cancelShort := context.WithCancel(ctx)
	cancelShort()
	if event, err := sub.Next(short); !errors.Is(err, context.Canceled) {
		t.Fatalf("extra event %s/%d after all appends (err %v)", event.Stream, event.Revision, err)
	}
}

func TestRetryAfterLostAcknowledgementIsIdempotent(t *testing.T) {
	ctx := t.Context()
	server := kurrenttest.Start(t)
	store := openStore(t, kurrentdb.Config{URL: server.URL()})

	first := newEvents(2, "A")
	server.LoseNextAppendAcks(1, nil)
	if _, err := store.Append(ctx, "lost-1", eventstore.NoStream(), first...); err == nil || errors.Is(err, eventstore.ErrWrongExpectedVersion) {
		t.Fatalf("append with lost acknowledgement: got %v, want a transport error", err)
	}
	retry, err := store.Append(ctx, "lost-1", eventstore.NoStream(), first...)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	second := newEvents(1, "B")
	server.LoseNextAppendAcks(1, nil)
	if _, err := store.Append(ctx, "lost-1", eventstore.Exact(1), second...); err == nil {
		t.Fatal("second append with lost acknowledgement succeeded")
	}
	retry2, err := store.Append(ctx, "lost-1", eventstore.Exact(1), second...)
	if err != nil {
		t.Fatalf("second retry: %v", err)
	}

	events, err := store.ReadStream(ctx, "lost-1", eventstore.Forwards, 0, 10)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if len(events) != 3 || events[0].ID != first[0].ID || events[2].ID != second[0].ID {
		t.Fatalf("stream holds %d events after retries, want each of 3 once", len(events))
	}
	if retry.NextExpectedRevision != 1 || retry.Position != events[1].Position || retry2.NextExpectedRevision != 2 || retry2.Position != events[2].Position {
		t.Fatalf("retries returned %+v and %+v, events are at %d and %d", retry, retry2, events[1].Position, events[2].Position)
	}

	server.FailNextAppends(1, nil)
	if _, err := store.Append(ctx, "lost-2", eventstore.NoStream(), newEvents(1, "C")...); err == nil {
		t.Fatal("append succeeded despite an injected failure")
	}
	if _, err := store.ReadStream(ctx, "lost-2", eventstore.Forwards, 0, 10); !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Fatalf("failed append left a stream behind: %v", err)
	}
}

func TestReadAllAndSubscriptionKeepToPrefixesAndSkipSystemEvents(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	server := kurrenttest.Start(t)
	store := openStore(t, kurrentdb.Config{URL: server.URL(), StreamPrefixes: []string{"product-", "key-"}})

	// A raw client writes what a server holds besides Tally's events: stream metadata (a
	// "$$" stream) and an event of a "$" type.
	config, err := esdb.ParseConnectionString(server.URL())
	if err != nil {
		t.Fatal(err)
	}
	config.Logger = esdb.NoopLogging()
	raw, err := esdb.NewClient(config)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()

	var want []uuid.UUID
	keep := func(stream string) {
		event := newEvents(1, "Kept")
		if _, err := store.Append(ctx, stream, eventstore.Any(), event...); err != nil {
			t.Fatalf("append: %v", err)
		}
		want = append(want, event[0].ID)
	}
	keep("product-1")
	for i := range 150 { // more than a read batch of other streams between two wanted events
		if _, err := store.Append(ctx, fmt.Sprintf("upload-%d", i%4), eventstore.Any(), newEvents(1, "Other")...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := raw.SetStreamMetadata(ctx, "product-1", esdb.AppendToStreamOptions{}, esdb.StreamMetadata{}); err != nil {
		t.Fatalf("set stream metadata: %v", err)
	}
	if _, err := raw.AppendToStream(ctx, "key-9", esdb.AppendToStreamOptions{}, esdb.EventData{EventID: uuid.New(), EventType: "$system", ContentType: esdb.ContentTypeJson, Data: []byte(`{}`)}); err != nil {
		t.Fatalf("append system event: %v", err)
	}
	keep("key-1")
	keep("product-2")

	for _, page := range []int{1, 2, 100} {
		var got []uuid.UUID
		from := eventstore.Start
		for {
			events, err := store.ReadAll(ctx, from, page)
			if err != nil {
				t.Fatalf("read all: %v", err)
			}
			for _, event := range events {
				got = append(got, event.ID)
				from = event.Position
			}
			if len(events) < page {
				break
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("read all in pages of %d: %v, want %v", page, got, want)
		}
	}

	sub, err := store.SubscribeAll(ctx, eventstore.Start)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	defer sub.Close()
	keep("product-3")
	for i, id := range want {
		event, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("next: %v", err)
		}
		if event.ID != id {
			t.Fatalf("subscription event %d is %s/%s %s, want %s", i, event.Stream, event.Type, event.ID, id)
		}
	}
}

func TestWrongExpectedVersionAndOversizedAppend(t *testing.T) {
	ctx := t.Context()
	store := openStore(t, kurrentdb.Config{URL: kurrenttest.Start(t).URL()})
	if _, err := store.Append(ctx, "wev", eventstore.NoStream(), newEvents(1, "A")...); err != nil {
		t.Fatal(err)
	}
	_, err := store.Append(ctx, "wev", eventstore.Exact(7), newEvents(1, "B")...)
	var wrong *eventstore.WrongExpectedVersionError
	if !errors.As(err, &wrong) || !errors.Is(err, eventstore.ErrWrongExpectedVersion) {
		t.Fatalf("stale append: got %v, want a *WrongExpectedVersionError", err)
	}
	if wrong.Stream != "wev" || wrong.Expected != eventstore.Exact(7) || wrong.ActualKnown {
		t.Fatalf("wrong expected version details %+v", wrong)
	}

	big := newEvents(2, "Big")
	for i := range big {
		big[i].Data = []byte(`"` + strings.Repeat("x", kurrenttest.DefaultMaxAppendSize/2) + `"`)
	}
	_, err = store.Append(ctx, "big", eventstore.NoStream(), big...)
	if err == nil || errors.Is(err, eventstore.ErrWrongExpectedVersion) {
		t.Fatalf("append over the 1 MiB limit: got %v, want a refusal", err)
	}
	if _, err := store.ReadStream(ctx, "big", eventstore.Forwards, 0, 1); !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Fatalf("oversized append left events: %v", err)
	}
}

func TestOpenFailsWhenServerIsUnreachable(t *testing.T) {
	server := kurrenttest.Start(t)
	// With credentials in the URL: the error must not repeat the password.
	url := strings.Replace(server.URL(), "esdb://", "esdb://admin:s3cret-pw@", 1) + "&maxDiscoverAttempts=2&discoveryInterval=10"
	server.Close()
	store, err := kurrentdb.Open(t.Context(), kurrentdb.Config{URL: url, Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		_ = store.Close()
		t.Fatal("open of a closed server succeeded")
	}
	if strings.Contains(err.Error(), "s3cret-pw") {
		t.Fatalf("the error shows the password: %v", err)
	}
	if _, err := kurrentdb.Open(t.Context(), kurrentdb.Config{URL: "http://localhost:2113"}); err == nil {
		t.Fatal("open with an http URL succeeded")
	}
}

func TestStoreAndSubscriptionRecoverAfterServerRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	server := kurrenttest.Start(t)
	store := openStore(t, kurrentdb.Config{
		// Few, quick discovery attempts, so that the client gives up (and closes itself) fast.
		URL:                 server.URL() + "&maxDiscoverAttempts=2&discoveryInterval=10",
		ResubscribeMaxDelay: 20 * time.Millisecond,
		ResubscribeAttempts: 10_000,
		CallTimeout:         time.Second, // a call left unanswered by a client that gave up is abandoned soon
	})
	before := newEvents(1, "Before")
	if _, err := store.Append(ctx, "restart-1", eventstore.NoStream(), before...); err != nil {
		t.Fatal(err)
	}
	sub, err := store.SubscribeAll(ctx, eventstore.Start)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if event, err := sub.Next(ctx); err != nil || event.ID != before[0].ID {
		t.Fatalf("first event: %v, %v", event.ID, err)
	}

	server.Stop()
	// While the node is down appends fail; the client's failed rediscovery closes it for good.
	after := newEvents(1, "After")
	for range 3 {
		if _, err := store.Append(ctx, "restart-1", eventstore.Exact(0), after...); err == nil {
			t.Fatal("append succeeded while the server was stopped")
		}
	}
	server.Restart(t)
	// The store replaces the closed client, so appends work again after a few attempts.
	for attempt := 1; ; attempt++ {
		_, err := store.Append(ctx, "restart-1", eventstore.Exact(0), after...)
		if err == nil {
			break
		}
		if attempt == 20 {
			t.Fatalf("append still failing %d attempts after the restart: %v", attempt, err)
		}
	}
	// The subscription resubscribed after the restart and carries on without a gap.
	if event, err := sub.Next(ctx); err != nil || event.ID != after[0].ID {
		t.Fatalf("event after restart: %v, %v; want %s", event.ID, err, after[0].ID)
	}
}
