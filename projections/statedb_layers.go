package projections

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"

	"github.com/tallyledger/tally/domain/state"
)

// layerQueries answers state.LayerStore's questions from the layer pages through q: the
// database's pool of read connections, one read transaction (a snapshot), or a replay's new
// file.
type layerQueries struct {
	q querier
}

// Layer implements state.LayerStore.
func (l layerQueries) Layer(owner, id string) (state.LayerInfo, bool, error) {
	ctx := context.Background()
	raw, ok := state.ParseHash(id)
	if !ok {
		return textLayer(ctx, l.q, owner, id)
	}
	v, ok, err := layerPages.lookup(ctx, l.q, owner, raw[:])
	if !ok || err != nil {
		return state.LayerInfo{}, false, err
	}
	info, err := decodeRecord(v)
	if err != nil {
		return state.LayerInfo{}, false, err
	}
	return info, true, nil
}

// HasDepth implements state.LayerStore.
func (l layerQueries) HasDepth(owner string, depth int64) (bool, error) {
	found := false
	err := l.EachLayerAt(owner, depth, func(string, state.LayerInfo) bool { found = true; return false })
	return found, err
}

// EachLayer implements state.LayerStore.
func (l layerQueries) EachLayer(owner string, fn func(id string, info state.LayerInfo) bool) error {
	ctx := context.Background()
	stopped := false
	var err error
	if perr := layerPages.eachPage(ctx, l.q, owner, nil, nil, func(p page) bool {
		for i := range p.n {
			var info state.LayerInfo
			if info, err = decodeRecord(p.val(i)); err != nil {
				return false
			}
			if !fn(hex.EncodeToString(p.key(i)), info) {
				stopped = true
				return false
			}
		}
		return true
	}); perr != nil || err != nil || stopped {
		return errors.Join(perr, err)
	}
	return eachTextLayer(ctx, l.q, owner, nil, fn)
}

// EachLayerAt implements state.LayerStore: the identities at depth from the depth pages, then
// each layer's record from its page.
func (l layerQueries) EachLayerAt(owner string, depth int64, fn func(id string, info state.LayerInfo) bool) error {
	ctx := context.Background()
	ids, err := idsAtDepth(ctx, l.q, owner, depth)
	if err != nil {
		return err
	}
	for _, id := range ids {
		v, ok, err := layerPages.lookup(ctx, l.q, owner, id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("state database: layer %x of %s at depth %d has no record", id, owner, depth)
		}
		info, err := decodeRecord(v)
		if err != nil {
			return err
		}
		if !fn(hex.EncodeToString(id), info) {
			return nil
		}
	}
	return eachTextLayer(ctx, l.q, owner, &depth, fn)
}

// idsAtDepth lists the raw identities of owner's layers at depth, read from the depth pages
// (and the rows closed) before any is looked up: a replay's file has one connection.
func idsAtDepth(ctx context.Context, q querier, owner string, depth int64) ([][]byte, error) {
	var zero, ones [32]byte
	for i := range ones {
		ones[i] = 0xff
	}
	from, to := depthKey(depth, zero[:]), depthKey(depth, ones[:])
	var ids [][]byte
	err := depthPages.eachPage(ctx, q, owner, from, to, func(p page) bool {
		i, _ := p.search(from)
		for ; i < p.n; i++ {
			k := p.key(i)
			if bytes.Compare(k, to) > 0 {
				return false
			}
			ids = append(ids, bytes.Clone(k[8:]))
		}
		return true
	})
	return ids, err
}

func textLayer(ctx context.Context, q querier, owner, id string) (state.LayerInfo, bool, error) {
	var b []byte
	err := q.QueryRowContext(ctx, `SELECT record FROM text_layers WHERE owner = ? AND layer = ?`, owner, id).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return state.LayerInfo{}, false, nil
	}
	if err != nil {
		return state.LayerInfo{}, false, fmt.Errorf("state database: layer: %w", err)
	}
	info, err := decodeRecord(b)
	if err != nil {
		return state.LayerInfo{}, false, err
	}
	return info, true, nil
}

// eachTextLayer calls fn with owner's layers of text identities (at depth, if not nil).
func eachTextLayer(ctx context.Context, q querier, owner string, depth *int64, fn func(id string, info state.LayerInfo) bool) error {
	var rows *sql.Rows
	var err error
	if depth == nil {
		rows, err = q.QueryContext(ctx, `SELECT layer, record FROM text_layers WHERE owner = ? ORDER BY layer`, owner)
	} else {
		rows, err = q.QueryContext(ctx, `SELECT layer, record FROM text_layers WHERE owner = ? AND depth = ? ORDER BY layer`, owner, *depth)
	}
	if err != nil {
		return fmt.Errorf("state database: layers: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var b []byte
		if err := rows.Scan(&id, &b); err != nil {
			return fmt.Errorf("state database: layers: %w", err)
		}
		info, err := decodeRecord(b)
		if err != nil {
			return err
		}
		if !fn(id, info) {
			return nil
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("state database: layers: %w", err)
	}
	return nil
}

// putLayers writes layers (sorted by owner, then identity; a layer already stored is
// replaced) into the tables through x, rewriting only the pages they fall in.
func putLayers(ctx context.Context, tx *sql.Tx, layers []state.LayerRecord) error {
	s := newTxStmts(tx)
	return errors.Join(putLayersWith(ctx, s, layers), s.close())
}

func putLayersWith(ctx context.Context, x *txStmts, layers []state.LayerRecord) error {
	for len(layers) > 0 {
		n := 1
		for n < len(layers) && layers[n].Owner == layers[0].Owner {
			n++
		}
		if err := putOwnerLayers(ctx, x, layers[0].Owner, layers[:n]); err != nil {
			return err
		}
		layers = layers[n:]
	}
	return nil
}

// putOwnerLayers writes one owner's layers, the records into the layer pages and the keys
// into the depth pages (a replaced layer whose depth changed leaves its old depth).
func putOwnerLayers(ctx context.Context, x *txStmts, owner string, layers []state.LayerRecord) error {
	adds := make([]pageEntry, 0, len(layers))
	for _, l := range layers {
		raw, ok := state.ParseHash(l.ID)
		if !ok {
			if _, err := x.tx.ExecContext(ctx, `INSERT OR REPLACE INTO text_layers (owner, layer, depth, record) VALUES (?, ?, ?, ?)`,
				owner, l.ID, l.Info.Depth, appendRecord(nil, l.Info)); err != nil {
				return fmt.Errorf("state database: layers: %w", err)
			}
			continue
		}
		adds = append(adds, pageEntry{key: raw[:], val: appendRecord(nil, l.Info)})
	}
	sort.SliceStable(adds, func(i, j int) bool { return bytes.Compare(adds[i].key, adds[j].key) < 0 })
	adds = lastOfEach(adds)
	depthAdds := make([]pageEntry, len(adds))
	for i, a := range adds {
		depth, _ := recordDepth(a.val)
		depthAdds[i] = pageEntry{key: depthKey(depth, a.key)}
	}
	var depthRemoves [][]byte
	err := layerPages.merge(ctx, x, owner, adds, nil, func(key, old []byte) {
		i := sort.Search(len(adds), func(i int) bool { return bytes.Compare(adds[i].key, key) >= 0 })
		oldDepth, err := recordDepth(old)
		newDepth, _ := recordDepth(adds[i].val)
		if err == nil && oldDepth != newDepth {
			depthRemoves = append(depthRemoves, depthKey(oldDepth, key))
		}
	})
	if err != nil {
		return err
	}
	sort.Slice(depthAdds, func(i, j int) bool { return bytes.Compare(depthAdds[i].key, depthAdds[j].key) < 0 })
	sort.Slice(depthRemoves, func(i, j int) bool { return bytes.Compare(depthRemoves[i], depthRemoves[j]) < 0 })
	return depthPages.merge(ctx, x, owner, depthAdds, depthRemoves, nil)
}

// lastOfEach keeps the last of each run of entries with equal keys (sorted stably).
func lastOfEach(entries []pageEntry) []pageEntry {
	out := entries[:0]
	for i, e := range entries {
		if i+1 < len(entries) && bytes.Equal(e.key, entries[i+1].key) {
			continue
		}
		out = append(out, e)
	}
	return out
}

// removeLayer deletes one layer of owner (tests and repairs: the service never forgets one).
func removeLayer(ctx context.Context, tx *sql.Tx, owner, id string) error {
	raw, ok := state.ParseHash(id)
	if !ok {
		_, err := tx.ExecContext(ctx, `DELETE FROM text_layers WHERE owner = ? AND layer = ?`, owner, id)
		return err
	}
	v, found, err := layerPages.lookup(ctx, tx, owner, raw[:])
	if err != nil || !found {
		return err
	}
	depth, err := recordDepth(v)
	if err != nil {
		return err
	}
	x := newTxStmts(tx)
	defer x.close()
	if err := layerPages.merge(ctx, x, owner, nil, [][]byte{raw[:]}, nil); err != nil {
		return err
	}
	return depthPages.merge(ctx, x, owner, nil, [][]byte{depthKey(depth, raw[:])}, nil)
}

// PutLayers writes layers into the state database in one transaction, as a checkpoint writes
// its new ones (a layer already stored is replaced): for tools and tests that change what the
// database holds.
func (d *StateDB) PutLayers(ctx context.Context, layers []state.LayerRecord) error {
	sorted := append([]state.LayerRecord(nil), layers...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Owner < sorted[j].Owner })
	return d.inTx(ctx, func(tx *sql.Tx) error { return putLayers(ctx, tx, sorted) })
}

// RemoveLayer deletes one layer from the state database (tools and tests: the service itself
// never forgets a layer).
func (d *StateDB) RemoveLayer(ctx context.Context, owner, id string) error {
	return d.inTx(ctx, func(tx *sql.Tx) error { return removeLayer(ctx, tx, owner, id) })
}

// LayerOwners lists the owners the state database holds layers of, in order.
func (d *StateDB) LayerOwners(ctx context.Context) ([]string, error) {
	rows, err := d.readDB.QueryContext(ctx, `SELECT DISTINCT owner FROM layer_pages UNION SELECT DISTINCT owner FROM text_layers ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("state database: layers: %w", err)
	}
	defer rows.Close()
	var owners []string
	for rows.Next() {
		var o string
		if err := rows.Scan(&o); err != nil {
			return nil, fmt.Errorf("state database: layers: %w", err)
		}
		owners = append(owners, o)
	}
	return owners, rows.Err()
}

func (d *StateDB) inTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := d.writeDB.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("state database: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("state database: %w", err)
	}
	return nil
}
