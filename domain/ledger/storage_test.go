package ledger_test

import (
	"context"
	"database/sql"
	"encoding/base64"
	"maps"
	"os"
	"path/filepath"
	"slices"
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
// Written as JSON, as before the compact encoding, an entry took about 650 bytes; with the
// compact encoding about 292; with the store's schema version 2 (stream and type ids, the
// metadata of an append stored once) about 200 (docs/encoding.md, "Storage per upload entry",
// which the per-structure growth logged here breaks down).
func TestUploadEntryStorage(t *testing.T) {
	const (
		objects   = 10
		uploads   = 8
		perUpload = 100
		limit     = 250.0
	)
	ctx := context.Background()
	keys := newKeyRing(t)
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
	before, beforeBy := compactSize(ctx, t, store)
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
	after, afterBy := compactSize(ctx, t, store)
	perEntry := float64(after-before) / float64(uploads*perUpload)
	t.Logf("events.db grew %d bytes for %d entries: %.1f bytes per upload entry", after-before, uploads*perUpload, perEntry)
	names := slices.Sorted(maps.Keys(afterBy))
	for _, name := range names {
		grown := afterBy[name].minus(beforeBy[name])
		if grown.pages != 0 {
			t.Logf("  %-24s %6.1f bytes per entry in pages, %6.1f of them payload", name, float64(grown.pages)/float64(uploads*perUpload), float64(grown.payload)/float64(uploads*perUpload))
		}
	}
	if perEntry > limit {
		t.Fatalf("%.1f bytes per upload entry in events.db, want at most %.0f", perEntry, limit)
	}
}

// structureSize is what one table or index takes in a database file: its pages' bytes, and the
// bytes of its records in them.
type structureSize struct{ pages, payload int64 }

func (s structureSize) minus(o structureSize) structureSize {
	return structureSize{s.pages - o.pages, s.payload - o.payload}
}

// compactSize is the size of a compact copy of the store's database (no free pages, no WAL),
// and what each table and index takes in it (SQLite's dbstat table).
func compactSize(ctx context.Context, t *testing.T, store eventstore.Store) (int64, map[string]structureSize) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "copy.db")
	if _, err := store.(*embedded.Store).BackupTo(ctx, path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT name, sum(pgsize), sum(payload) FROM dbstat GROUP BY name`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	by := map[string]structureSize{}
	for rows.Next() {
		var name string
		var size structureSize
		if err := rows.Scan(&name, &size.pages, &size.payload); err != nil {
			t.Fatal(err)
		}
		by[name] = size
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return fi.Size(), by
}
