package kurrentdb_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/kurrentdb"
	"github.com/tallyledger/tally/adapters/kurrentdb/kurrenttest"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// TestCompactEventsCarryTheirContentType: the binary bodies of UploadPrepared and
// UploadCommitted go to KurrentDB as application/octet-stream, the JSON ones (a compact
// ValueChanged array included) as application/json, and all read back byte for byte and decode.
func TestCompactEventsCarryTheirContentType(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	server := kurrenttest.Start(t)
	store := openStore(t, kurrentdb.Config{URL: server.URL()})

	uploadID := uuid.New()
	at := time.Unix(1767225600, 0).UTC()
	bodies := []struct {
		typ  string
		body any
		want string // as KurrentDB reports it
	}{
		{domain.EventUploadPrepared, domain.UploadPrepared{UploadID: uploadID, Owner: domain.Owner{Type: domain.OwnerKey, ID: 1},
			Layers: []string{"a3f1c2d4e5b60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"}, Timestamps: []int64{at.Unix()}, Instance: uuid.New(), At: at}, "application/octet-stream"},
		{domain.EventIncrementApplied, domain.ValueChanged{ObjectID: 1, Amount: 2, Before: 0, After: 2, At: at,
			Upload: &domain.UploadSource{UploadID: uploadID, LogTimestamp: at, Entry: 1}}, "application/json"},
		{domain.EventUploadCommitted, domain.UploadCommitted{UploadID: uploadID, At: at}, "application/octet-stream"},
		{domain.EventUploadAborted, domain.UploadAborted{UploadID: uploadID, Reason: "test", At: at}, "application/json"},
	}
	var events []eventstore.EventData
	for _, b := range bodies {
		data, err := domain.EncodeEvent(b.typ, b.body)
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, eventstore.EventData{ID: uuid.New(), Type: b.typ, Data: data, Metadata: []byte(`{}`)})
	}
	if _, err := store.Append(ctx, "upload-2.1", eventstore.NoStream(), events...); err != nil {
		t.Fatal(err)
	}

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
	read, err := raw.ReadStream(ctx, "upload-2.1", esdb.ReadStreamOptions{}, 10)
	if err != nil {
		t.Fatal(err)
	}
	defer read.Close()
	for i := 0; ; i++ {
		ev, err := read.Recv()
		if errors.Is(err, io.EOF) {
			if i != len(bodies) {
				t.Fatalf("read %d events, wrote %d", i, len(bodies))
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got := ev.Event
		if got.ContentType != bodies[i].want || !bytes.Equal(got.Data, events[i].Data) {
			t.Errorf("event %d (%s): content type %q, data %q; want %q, %q", i, got.EventType, got.ContentType, got.Data, bodies[i].want, events[i].Data)
		}
	}

	back, err := store.ReadStream(ctx, "upload-2.1", eventstore.Forwards, 0, 10)
	if err != nil || len(back) != len(bodies) {
		t.Fatalf("read back %d events, %v", len(back), err)
	}
	if p, err := domain.DecodeUploadPrepared(back[0].Data); err != nil || p.UploadID != uploadID {
		t.Fatalf("UploadPrepared read back as %+v, %v", p, err)
	}
	if v, err := domain.DecodeValueChanged(back[1].Data); err != nil || v.Upload == nil || v.Upload.UploadID != uploadID || v.After != 2 {
		t.Fatalf("IncrementApplied read back as %+v, %v", v, err)
	}
	if c, err := domain.DecodeUploadCommitted(back[2].Data); err != nil || c.UploadID != uploadID {
		t.Fatalf("UploadCommitted read back as %+v, %v", c, err)
	}
}
