package projections

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/tallyledger/tally/domain/state"
)

// layerModel is what the layer tables must answer: every owner's layers by identity, as a
// map of the old one-row-per-layer table would hold them (a layer put again replaces it).
type layerModel map[string]map[string]state.LayerInfo

func (m layerModel) put(l state.LayerRecord) {
	if m[l.Owner] == nil {
		m[l.Owner] = map[string]state.LayerInfo{}
	}
	m[l.Owner][l.ID] = l.Info
}

// randomLayers makes layers for a few owners: random identities, some sharing their first
// bytes (neighbours in a page), some legacy text identities; depths with forks (several layers
// at one depth); skip reasons; raw, text and missing digests; file digests and lengths.
type randomLayers struct {
	rng    *rand.Rand
	owners []string
	known  []state.LayerRecord // every layer made, to put again or look up
}

func (r *randomLayers) hash() string {
	var b [32]byte
	for i := range b {
		b[i] = byte(r.rng.UintN(256))
	}
	if r.rng.IntN(4) == 0 {
		b[0], b[1] = 0x42, byte(r.rng.UintN(3)) // crowd a few pages
	}
	return hex.EncodeToString(b[:])
}

func (r *randomLayers) layer() state.LayerRecord {
	l := state.LayerRecord{Owner: r.owners[r.rng.IntN(len(r.owners))]}
	switch r.rng.IntN(20) {
	case 0:
		l.ID = fmt.Sprintf("legacy-%d", r.rng.IntN(1000))
	case 1:
		l.ID = strings.ToUpper(r.hash())
	default:
		l.ID = r.hash()
	}
	if r.rng.IntN(10) == 0 && len(r.known) > 0 { // the same layer put again, changed
		l.ID = r.known[r.rng.IntN(len(r.known))].ID
	}
	l.Info = r.info()
	r.known = append(r.known, l)
	return l
}

func (r *randomLayers) info() state.LayerInfo {
	info := state.LayerInfo{Depth: 1 + r.rng.Int64N(40), Timestamp: 1_700_000_000 + r.rng.Int64N(1e6)}
	switch r.rng.IntN(4) {
	case 0:
	case 1:
		info.Digest = "legacy digest"
	default:
		info.Digest = r.hash()
	}
	if r.rng.IntN(5) == 0 {
		info.FileDigest, info.Length = r.hash(), r.rng.Int64N(5000)
	}
	if r.rng.IntN(15) == 0 {
		info.Skipped = "clock went backwards"
	}
	return info
}

// checkLayerStore compares every answer of store with the model: each layer by identity, some
// identities never put, each owner's listing, and each depth's.
func checkLayerStore(t *testing.T, store state.LayerStore, m layerModel, r *randomLayers) {
	t.Helper()
	for _, owner := range r.owners {
		want := m[owner]
		for id, info := range want {
			got, ok, err := store.Layer(owner, id)
			if err != nil || !ok || got != info {
				t.Fatalf("layer %s of %s: %+v %v %v, want %+v", id, owner, got, ok, err, info)
			}
		}
		for range 5 {
			id := r.hash()
			if _, ok, err := store.Layer(owner, id); ok || err != nil {
				t.Fatalf("layer %s of %s was never put: %v %v", id, owner, ok, err)
			}
		}
		got := map[string]state.LayerInfo{}
		if err := store.EachLayer(owner, func(id string, info state.LayerInfo) bool {
			if _, twice := got[id]; twice {
				t.Errorf("layer %s of %s listed twice", id, owner)
			}
			got[id] = info
			return true
		}); err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(got, want) {
			t.Fatalf("layers of %s: %d listed, want %d", owner, len(got), len(want))
		}
		for depth := int64(0); depth <= 41; depth++ {
			wantAt := map[string]state.LayerInfo{}
			for id, info := range want {
				if info.Depth == depth {
					wantAt[id] = info
				}
			}
			gotAt := map[string]state.LayerInfo{}
			if err := store.EachLayerAt(owner, depth, func(id string, info state.LayerInfo) bool {
				gotAt[id] = info
				return true
			}); err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(gotAt, wantAt) {
				t.Fatalf("layers of %s at depth %d: %v, want %v", owner, depth, slices.Collect(maps.Keys(gotAt)), slices.Collect(maps.Keys(wantAt)))
			}
			has, err := store.HasDepth(owner, depth)
			if err != nil || has != (len(wantAt) > 0) {
				t.Fatalf("depth %d of %s: %v %v, want %v", depth, owner, has, err, len(wantAt) > 0)
			}
		}
	}
}

// checkPages checks the pages of both tables: each page sorted, not empty, its first the
// least key, every key below the next page's first, and no page past twice its target or
// past 4,000 bytes (what SQLite keeps in a b-tree cell of a 16 KiB page, less the key; unless
// it holds one entry); and
// the depth pages hold exactly the layers' (depth, identity) keys.
func checkPages(t *testing.T, q querier) {
	t.Helper()
	ctx := context.Background()
	keys := map[pageTable][]string{}
	for _, table := range []pageTable{layerPages, depthPages} {
		rows, err := q.QueryContext(ctx, `SELECT owner, first, entries FROM `+table.name+` ORDER BY owner, first`)
		if err != nil {
			t.Fatal(err)
		}
		var prevOwner string
		var prevLast []byte
		for rows.Next() {
			var owner string
			var first, b []byte
			if err := rows.Scan(&owner, &first, &b); err != nil {
				t.Fatal(err)
			}
			p, err := table.parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if p.n == 0 || p.n > 2*table.target || (len(b) > 4000 && p.n > 1) || !bytes.Equal(p.key(0), first) {
				t.Fatalf("%s: a page of %s with %d entries in %d bytes, first %x, its key %x", table.name, owner, p.n, len(b), first, p.key(0))
			}
			if owner == prevOwner && bytes.Compare(prevLast, first) >= 0 {
				t.Fatalf("%s: pages of %s overlap", table.name, owner)
			}
			for i := range p.n {
				if i > 0 && bytes.Compare(p.key(i-1), p.key(i)) >= 0 {
					t.Fatalf("%s: a page of %s out of order", table.name, owner)
				}
				k := p.key(i)
				if table == layerPages {
					depth, err := recordDepth(p.val(i))
					if err != nil {
						t.Fatal(err)
					}
					k = depthKey(depth, k)
				}
				keys[table] = append(keys[table], owner+"/"+hex.EncodeToString(k))
			}
			prevOwner, prevLast = owner, p.key(p.n-1)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		_ = rows.Close()
		sort.Strings(keys[table])
	}
	if !slices.Equal(keys[layerPages], keys[depthPages]) {
		t.Fatalf("the depth pages hold %d keys, the layer pages %d layers, not the same", len(keys[depthPages]), len(keys[layerPages]))
	}
}

// TestLayerPagesAnswerAsTheLayerTableDid: layers checkpointed in many steps (new ones, layers
// put again with another depth or record, legacy text identities, removals) into the pages,
// which split as they grow, answer every lookup, listing and depth question as the model of
// the old table does, and the pages stay well formed.
func TestLayerPagesAnswerAsTheLayerTableDid(t *testing.T) {
	ctx := context.Background()
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			db, err := OpenStateDB(ctx, filepath.Join(t.TempDir(), "state.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			r := &randomLayers{rng: rand.New(rand.NewPCG(seed, 99)), owners: []string{"1-1", "1-2", "2-7", "3-0"}}
			m := layerModel{}
			for step := range 40 {
				var batch []state.LayerRecord
				for range 1 + r.rng.IntN(150) {
					l := r.layer()
					batch = append(batch, l)
				}
				// A batch holds each layer once (a checkpoint's changes are a set).
				seen := map[string]int{}
				for i, l := range batch {
					seen[l.Owner+"/"+l.ID] = i
				}
				var set []state.LayerRecord
				for i, l := range batch {
					if seen[l.Owner+"/"+l.ID] == i {
						set = append(set, l)
						m.put(l)
					}
				}
				if err := db.PutLayers(ctx, set); err != nil {
					t.Fatal(err)
				}
				if step%7 == 3 {
					for owner, layers := range m {
						for id := range layers {
							if r.rng.IntN(10) == 0 {
								if err := db.RemoveLayer(ctx, owner, id); err != nil {
									t.Fatal(err)
								}
								delete(layers, id)
							}
						}
					}
				}
				checkPages(t, db.readDB)
				if step%5 == 4 || step == 39 {
					checkLayerStore(t, db, m, r)
				}
			}
			var pages int
			if err := db.readDB.QueryRow(`SELECT count(*) FROM layer_pages`).Scan(&pages); err != nil {
				t.Fatal(err)
			}
			if pages < 2*len(r.owners) {
				t.Fatalf("%d layer pages: the test splits too few", pages)
			}
		})
	}
}

// TestAReplaysRunsMergeIntoThePagesOfTheLayerTable: a replay's layers, written as sorted runs
// (a layer in several runs: the later one's record counts) and answered from them and the
// pending batches meanwhile, merge into pages that answer as the model does.
func TestAReplaysRunsMergeIntoThePagesOfTheLayerTable(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db, err := sql.Open("sqlite", bulkStateDSN(filepath.Join(dir, "state.db")))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, stateSchema); err != nil {
		t.Fatal(err)
	}
	runs, err := createRunFile(filepath.Join(dir, "state.db.runs"))
	if err != nil {
		t.Fatal(err)
	}
	defer runs.remove()
	w := &writtenLayers{db: db, runs: runs}
	r := &randomLayers{rng: rand.New(rand.NewPCG(5, 8)), owners: []string{"1-1", "1-2", "2-7", "3-0", "4-4"}}
	m := layerModel{}
	for batchNo := range 12 {
		byKey := map[string]state.LayerRecord{}
		for range 1 + r.rng.IntN(300) {
			l := r.layer()
			byKey[l.Owner+"/"+l.ID] = l
		}
		batch := slices.Collect(maps.Values(byKey))
		sort.Slice(batch, func(i, j int) bool {
			if batch[i].Owner != batch[j].Owner {
				return batch[i].Owner < batch[j].Owner
			}
			return batch[i].ID < batch[j].ID
		})
		for _, l := range batch {
			m.put(l)
		}
		raw := rawLayers(batch)
		w.pend(raw)
		if batchNo%3 == 1 {
			checkLayerStore(t, w, m, r) // this batch pending, the earlier ones in runs
		}
		if err := w.write(ctx, raw); err != nil {
			t.Fatal(err)
		}
	}
	checkLayerStore(t, w, m, r)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := mergeRuns(ctx, runs, tx); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	checkPages(t, db)
	checkLayerStore(t, layerQueries{db}, m, r)
}

// TestNewStateDatabasesUse16KiBPages: a state database made by OpenStateDB or written whole
// (SaveState, a replay) has 16 KiB pages, which the layer pages are sized for.
func TestNewStateDatabasesUse16KiBPages(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opened, err := OpenStateDB(ctx, filepath.Join(dir, "opened.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer opened.Close()
	saved := filepath.Join(dir, "saved.db")
	if err := SaveState(ctx, saved, state.NewState()); err != nil {
		t.Fatal(err)
	}
	reopened, err := OpenStateDB(ctx, saved)
	if err != nil {
		t.Fatal(err)
	}
	defer reopened.Close()
	for name, db := range map[string]*StateDB{"opened": opened, "saved": reopened} {
		var size int
		var mode string
		if err := db.writeDB.QueryRow(`PRAGMA page_size`).Scan(&size); err != nil {
			t.Fatal(err)
		}
		if err := db.writeDB.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil {
			t.Fatal(err)
		}
		if size != 16384 || mode != "wal" {
			t.Errorf("%s: page size %d, journal mode %s; want 16384 and wal", name, size, mode)
		}
	}
}

// TestARawRecordIsTheRecordOfItsInfo: the record a replay writes from a layer's raw form is
// byte for byte the record of its LayerInfo, for layers of every form (text digests and file
// digests, skip reasons, upper-case identities and digests, negative numbers).
func TestARawRecordIsTheRecordOfItsInfo(t *testing.T) {
	r := &randomLayers{rng: rand.New(rand.NewPCG(3, 9)), owners: []string{"1-1"}}
	var records []state.LayerRecord
	for range 2000 {
		records = append(records, r.layer())
	}
	h := r.hash()
	for _, info := range []state.LayerInfo{
		{Depth: -3, Timestamp: -1, Length: 1 << 40, FileDigest: "short", Digest: strings.ToUpper(h)},
		{FileDigest: h + "0", Skipped: "x"},
		{Digest: h, FileDigest: h},
	} {
		records = append(records, state.LayerRecord{Owner: "1-1", ID: h, Info: info})
	}
	for i, raw := range rawLayers(records) {
		if raw.Info() != records[i].Info {
			t.Fatalf("%+v: Info %+v", records[i], raw.Info())
		}
		if got, want := appendRawRecord(nil, &raw), appendRecord(nil, records[i].Info); !bytes.Equal(got, want) {
			t.Fatalf("%+v: raw record %x, record %x", records[i].Info, got, want)
		}
	}
}

// TestTheBulkWriterSortsDepthKeysOfAnyRange: the depth pages a bulk write makes are in
// (depth, identity) order, and hold every layer, whether the owner's depths lie in a narrow
// range (sorted by counting), in a wide one or across the sign (sorted by comparison), and
// whether the identities come in order or not.
func TestTheBulkWriterSortsDepthKeysOfAnyRange(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	depthsOf := map[string]func(i int) int64{
		"1-narrow": func(i int) int64 { return 1 + rng.Int64N(50) },
		"2-chain":  func(i int) int64 { return int64(1000 + i) },
		"3-wide":   func(i int) int64 { return rng.Int64() - 1<<62 },
		"4-signs":  func(i int) int64 { return []int64{-1 << 63, 1<<63 - 1, 0, -5}[i%4] },
		"5-one":    func(i int) int64 { return -7 },
	}
	db, err := sql.Open("sqlite", bulkStateDSN(filepath.Join(t.TempDir(), "state.db")))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, stateSchema); err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := newLayerWriter(ctx, tx)
	if err != nil {
		t.Fatal(err)
	}
	for _, owner := range slices.Sorted(maps.Keys(depthsOf)) {
		ids := make([][]byte, 300)
		for i := range ids {
			ids[i] = make([]byte, 32)
			for j := range ids[i] {
				ids[i][j] = byte(rng.IntN(256))
			}
		}
		slices.SortFunc(ids, bytes.Compare)
		for i, id := range ids {
			if err := w.addRaw(owner, id, appendRecord(nil, state.LayerInfo{Depth: depthsOf[owner](i)})); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	checkPages(t, db)
}
