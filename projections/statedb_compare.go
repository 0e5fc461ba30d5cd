package projections

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sort"

	"golang.org/x/sync/errgroup"

	"github.com/tallyledger/tally/domain/state"
)

// StoredState is the persisted state opened for a comparison (tally verify): its records in
// memory, its applied layers left in the state database, read in one pass by Diff instead of
// being loaded whole.
type StoredState struct {
	db *StateDB
	// State is the persisted state; events folded into it (CatchUp) keep their layers in
	// memory, the persisted ones are read from the database.
	State *state.State
}

// OpenStoredState opens the state database at path. A missing file, or one without a
// checkpoint, is an error matching os.ErrNotExist. Close it when done.
func OpenStoredState(ctx context.Context, path string) (*StoredState, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("read projection state: %w", err)
	}
	db, err := OpenStateDB(ctx, path)
	if err != nil {
		return nil, err
	}
	st, ok, err := db.Load(ctx)
	if err == nil && !ok {
		err = fmt.Errorf("read projection state %s: no checkpoint: %w", path, os.ErrNotExist)
	}
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return &StoredState{db: db, State: st}, nil
}

// Close closes the state database; the state's layers are unreadable from then on.
func (s *StoredState) Close() error { return s.db.Close() }

// Diff lists the differences between the stored state and b as state.Diff(s.State, b) does,
// the same lines for the same differences, reading the stored layers in key order in one pass
// over the layers table: per owner, the counts when they differ, then each layer of the stored
// state that b lacks or holds otherwise (at most 100 per owner). b is a state whose layers are
// in memory (a replay).
func (s *StoredState) Diff(ctx context.Context, b *state.State) ([]string, error) {
	a := s.State
	out := state.DiffExceptLayers(a, b)
	fresh, err := freshLayers(a)
	if err != nil {
		return nil, err
	}
	owners := commonOwners(uploadOwners(a), b)
	// Two ranges of owners read at once, on two connections: reading the rows costs more than
	// comparing them, and it spreads over the cores this way.
	halves := [][]string{owners[:len(owners)/2], owners[len(owners)/2:]}
	lines := make([][]string, len(halves))
	g, gctx := errgroup.WithContext(ctx)
	for i, part := range halves {
		g.Go(func() error {
			var err error
			lines[i], err = diffStoredLayers(gctx, s.db.readDB, part, b, fresh)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	for _, l := range lines {
		out = append(out, l...)
	}
	return out, nil
}

// freshLayers are the layers a state folded since its checkpoint, in memory: they hide the
// stored ones.
func freshLayers(a *state.State) (map[string]map[string]state.LayerInfo, error) {
	changes, err := a.Changes(false)
	if err != nil {
		return nil, err
	}
	fresh := map[string]map[string]state.LayerInfo{}
	for _, l := range changes.Layers {
		if fresh[l.Owner] == nil {
			fresh[l.Owner] = map[string]state.LayerInfo{}
		}
		fresh[l.Owner][l.ID] = l.Info
	}
	return fresh, nil
}

// uploadOwners lists the owners with an upload stream of a, in order.
func uploadOwners(a *state.State) []string {
	owners := make([]string, 0, len(a.Uploads))
	for owner := range a.Uploads {
		owners = append(owners, owner)
	}
	sort.Strings(owners)
	return owners
}

// commonOwners keeps the owners (in order) that b has an upload stream for too.
func commonOwners(owners []string, b *state.State) []string {
	var out []string
	for _, owner := range owners {
		if _, ok := b.Uploads[owner]; ok {
			out = append(out, owner)
		}
	}
	return out
}

// FrozenLayers are a live projection's applied layers as they were at one moment (ReadFrozen):
// those since its last checkpoint copied from memory, the older ones in a read transaction of
// the state database; a projection without a state database holds them all in memory (mem).
type FrozenLayers struct {
	owners []string // with an upload stream, in order
	snap   *LayerSnapshot
	fresh  map[string]map[string]state.LayerInfo
	mem    *state.FrozenLayers
}

// freezeLayers takes st's layers as they are; st is held still and snap shows its layer store
// as it is now.
func freezeLayers(st *state.State, snap *LayerSnapshot) (*FrozenLayers, error) {
	fresh, err := freshLayers(st)
	if err != nil {
		return nil, err
	}
	return &FrozenLayers{owners: uploadOwners(st), snap: snap, fresh: fresh}, nil
}

// Diff lists the differences between the frozen layers and b's, as state.DiffLayers does, for
// the owners both have an upload stream for (state.DiffExceptLayers reports the others),
// reading the stored layers in one pass over the snapshot's layer pages.
func (f *FrozenLayers) Diff(ctx context.Context, b *state.State) ([]string, error) {
	if f.mem != nil {
		return state.DiffLayers(f.mem, b), nil
	}
	return diffStoredLayers(ctx, f.snap.tx, commonOwners(f.owners, b), b, f.fresh)
}

// diffStoredLayers compares the layers of owners (in order) stored in the database q reads,
// less those fresh hides, with b's, reading the stored ones in one query over the owners' range
// of the layer pages, in key order, and the few of text identities before.
func diffStoredLayers(ctx context.Context, q querier, owners []string, b *state.State, fresh map[string]map[string]state.LayerInfo) ([]string, error) {
	if len(owners) == 0 {
		return nil, nil
	}
	text := map[string][]state.LayerRecord{}
	var readErr error // a read that failed: the owners not finished are unreadable
	if trows, err := q.QueryContext(ctx, `SELECT owner, layer, record FROM text_layers WHERE owner >= ? AND owner <= ? ORDER BY owner, layer`,
		owners[0], owners[len(owners)-1]); err != nil {
		readErr = fmt.Errorf("state database: layers: %w", err)
	} else {
		for trows.Next() {
			var l state.LayerRecord
			var rec []byte
			if err := trows.Scan(&l.Owner, &l.ID, &rec); err != nil {
				readErr = fmt.Errorf("state database: layers: %w", err)
				break
			}
			if l.Info, err = decodeRecord(rec); err != nil {
				readErr = err
				break
			}
			text[l.Owner] = append(text[l.Owner], l)
		}
		if err := errors.Join(trows.Err(), trows.Close()); err != nil && readErr == nil {
			readErr = fmt.Errorf("state database: layers: %w", err)
		}
	}
	rows, err := q.QueryContext(ctx, `SELECT owner, entries FROM layer_pages WHERE owner >= ? AND owner <= ? ORDER BY owner, first`,
		owners[0], owners[len(owners)-1])
	if err != nil {
		return nil, fmt.Errorf("state database: layers: %w", err)
	}
	defer rows.Close()
	var out []string
	next := 0 // the first owner not finished
	var cur *layerComparison
	newComparison := func(owner string) *layerComparison {
		c := newLayerComparison(owner, b, fresh[owner])
		for _, l := range text[owner] {
			c.stored(nil, l.ID, l.Info)
		}
		return c
	}
	finish := func(before string, all bool) {
		for next < len(owners) && (all || owners[next] < before) {
			c := cur
			if c == nil || c.name != owners[next] {
				c = newComparison(owners[next])
			}
			out = append(out, c.finish(readErr)...)
			cur = nil
			next++
		}
	}
	var (
		owner sql.RawBytes
		blob  sql.RawBytes
	)
	comparePage := func() error {
		p, err := layerPages.parse(blob)
		if err != nil {
			return err
		}
		for i := range p.n {
			info, err := decodeRecord(p.val(i))
			if err != nil {
				return err
			}
			cur.stored(p.key(i), "", info)
		}
		return nil
	}
	for rows.Next() && readErr == nil {
		if err := rows.Scan(&owner, &blob); err != nil {
			readErr = fmt.Errorf("state database: layers: %w", err)
			break
		}
		if cur == nil || cur.name != string(owner) {
			finish(string(owner), false)
			if next == len(owners) {
				break
			}
			if owners[next] != string(owner) {
				continue // an owner b has no upload stream for: DiffExceptLayers reports it
			}
			cur = newComparison(owners[next])
		}
		if err := comparePage(); err != nil {
			readErr = err
		}
	}
	if readErr == nil {
		if err := rows.Err(); err != nil {
			readErr = fmt.Errorf("state database: layers: %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	finish("", true)
	return out, nil
}

// layerComparison compares one owner's layers in the stored state (a) with b's, as state.Diff's
// layer comparison does: the counts, then each layer of a that b lacks or holds otherwise.
type layerComparison struct {
	name   string // the owner's key (Owner.String())
	b      *state.State
	byID   map[string]state.LayerInfo // b's layers of the owner, for identities that are not raw
	fresh  map[string]state.LayerInfo // a's layers of the owner since its checkpoint
	count  int
	lines  []string
	differ int
}

func newLayerComparison(name string, b *state.State, fresh map[string]state.LayerInfo) *layerComparison {
	return &layerComparison{name: name, b: b, fresh: fresh}
}

// stored compares one stored layer, known by its raw identity (32 bytes) or else by text.
func (c *layerComparison) stored(raw []byte, text string, info state.LayerInfo) {
	id := func() string {
		if raw != nil {
			return hex.EncodeToString(raw)
		}
		return text
	}
	if len(c.fresh) > 0 {
		if _, hidden := c.fresh[id()]; hidden {
			return
		}
	}
	c.compare(id, raw, info)
}

// compare counts one layer of a and compares it with b's.
func (c *layerComparison) compare(id func() string, raw []byte, info state.LayerInfo) {
	c.count++
	if c.differ > 100 {
		return
	}
	var other state.LayerInfo
	var ok bool
	if raw != nil {
		other, ok = c.b.LayerOf(c.name, [32]byte(raw))
	} else {
		other, ok = c.lookup(id())
	}
	if !ok || other != info {
		c.lines = append(c.lines, fmt.Sprintf("uploads of owner %s: layer %s differs", c.name, id()))
		if c.differ++; c.differ >= 100 {
			c.lines = append(c.lines, fmt.Sprintf("uploads of owner %s: more layers may differ", c.name))
			c.differ = 101
		}
	}
}

// lookup is b's record of one of the owner's layers by its identity's text, for an identity
// that is not 32 bytes.
func (c *layerComparison) lookup(id string) (state.LayerInfo, bool) {
	if c.byID == nil {
		c.byID = map[string]state.LayerInfo{}
		_ = c.b.Layers(c.name, func(id string, info state.LayerInfo) bool {
			c.byID[id] = info
			return true
		})
	}
	info, ok := c.byID[id]
	return info, ok
}

// finish compares the fresh layers and returns the owner's lines, the counts first.
func (c *layerComparison) finish(readErr error) []string {
	for id, info := range c.fresh {
		var raw []byte
		if b, ok := state.ParseHash(id); ok {
			raw = b[:]
		}
		c.compare(func() string { return id }, raw, info)
	}
	var out []string
	if readErr != nil {
		out = append(out, fmt.Sprintf("uploads of owner %s: layers unreadable: %v", c.name, readErr))
	}
	n := 0
	if err := c.b.Layers(c.name, func(string, state.LayerInfo) bool { n++; return true }); err != nil {
		out = append(out, fmt.Sprintf("uploads of owner %s: layers unreadable: %v", c.name, err))
	}
	if c.count != n {
		out = append(out, fmt.Sprintf("uploads of owner %s: %d vs %d applied layers", c.name, c.count, n))
	}
	return append(out, c.lines...)
}
