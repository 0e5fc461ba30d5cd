package ledger_test

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
)

// TestUploadEntryStorage uploads entries through the ledger into a real embedded store and
// checks what each entry costs in events.db: the growth of a compact copy of the database
// (VACUUM INTO, as tally backup makes it) divided by the number of entries. It counts everything
// an upload writes (UploadPrepared, the entries' events, UploadCommitted, the stream index).
// Written as JSON, as before the compact encoding, an entry took about 650 bytes; now under
// 300 (docs/encoding.md, "Storage per upload entry": issue #13's 250 is not reached while each
// entry's event names its own request and token, which TestUploadEventsRecordTheirSource asks).
func TestUploadEntryStorage(t *testing.T) {
	const (
		objects   = 10
		uploads   = 8
		perUpload = 100
		limit     = 250.0
	)
	ctx := context.Background()
	key, err := usagelog.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keys, err := usagelog.NewKeyRing(key)
	if err != nil {
		t.Fatal(err)
	}
	svc, store := newLedger(t, func(cfg *ledger.Config) { cfg.Decoder = usagelog.NewLedgerDecoder(keys) })
	admin := ledger.Caller{Admin: true}
	p, err := svc.CreateProduct(ctx, admin, "P")
	if err != nil {
		t.Fatal(err)
	}
	k, err := svc.CreateKey(ctx, admin, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	// As the HTTP API calls: a token, a request id that is a UUID, the client's host.
	user := ledger.Caller{Token: domain.Token{ID: uuid.New(), Methods: domain.AllMethods}, RequestID: uuid.NewString(), ClientAddr: "203.0.113.7"}
	scope := ledger.Scope{KeySpecific: true, ProductID: p.ID, Key: k.Key}
	ids := make([]int64, objects)
	for i := range ids {
		if ids[i], err = svc.AddDataObject(ctx, user, ledger.AddDataObject{Scope: scope, Name: "feature-" + string(rune('a'+i))}); err != nil {
			t.Fatal(err)
		}
	}
	upload := func(data []byte, want int) {
		t.Helper()
		res, err := svc.UploadValues(ctx, user, ledger.UploadValues{Scope: scope, Data: base64.StdEncoding.EncodeToString(data)})
		if err != nil || res.Applied != want {
			t.Fatalf("upload: %+v, %v; want %d applied", res, err, want)
		}
	}
	// A first upload makes the upload stream; the size is measured from there.
	ts := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	log, err := usagelog.Record(nil, keys.Public(), ids[0], 1, ts, false)
	if err != nil {
		t.Fatal(err)
	}
	upload(log, 1)
	before := compactSize(ctx, t, store)
	for u := range uploads {
		for i := range perUpload {
			ts += 60
			amount := int64(1 + i%3)
			if i%7 == 0 {
				amount = -1
			}
			if log, err = usagelog.Record(log, keys.Public(), ids[(u*perUpload+i)%objects], amount, ts, false); err != nil {
				t.Fatal(err)
			}
		}
		upload(log, perUpload)
	}
	after := compactSize(ctx, t, store)
	perEntry := float64(after-before) / float64(uploads*perUpload)
	t.Logf("events.db grew %d bytes for %d entries: %.1f bytes per upload entry", after-before, uploads*perUpload, perEntry)
	if perEntry > limit {
		t.Fatalf("%.1f bytes per upload entry in events.db, want at most %.0f", perEntry, limit)
	}
}

// compactSize is the size of a compact copy of the store's database (no free pages, no WAL).
func compactSize(ctx context.Context, t *testing.T, store eventstore.Store) int64 {
	t.Helper()
	path := filepath.Join(t.TempDir(), "copy.db")
	if _, err := store.(*embedded.Store).BackupTo(ctx, path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
