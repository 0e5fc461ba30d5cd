package state

import (
	"fmt"
	"sort"
	"sync"

	"github.com/tallyledger/tally/domain"
)

// LayerStore is where a State finds the applied usage-log layers that a checkpoint persisted,
// so that they need not stay in memory. Owners are Owner.String(), identities the hex strings
// the upload events carry (a layer known by its legacy identity has a record under that one).
// Package projections implements it on the state database; a State without one holds every
// layer in memory (Rebuild, tests).
//
// Layers become known only when an upload commits and are never forgotten, so a store may hold
// layers beyond the state's checkpoint (adding one again is harmless), never fewer.
type LayerStore interface {
	// Layer returns what is known of an owner's layer.
	Layer(owner, id string) (LayerInfo, bool, error)
	// HasDepth reports whether the owner applied a layer at that depth.
	HasDepth(owner string, depth int64) (bool, error)
	// EachLayer calls fn with every layer of the owner, in no particular order, until fn
	// returns false.
	EachLayer(owner string, fn func(id string, info LayerInfo) bool) error
	// EachLayerAt is EachLayer for the layers at one depth (an index probe, not a walk of the
	// owner's layers).
	EachLayerAt(owner string, depth int64, fn func(id string, info LayerInfo) bool) error
}

// LayerRecord is one applied layer with its owner (Owner.String()) and identity.
type LayerRecord struct {
	Owner string
	ID    string
	Info  LayerInfo
}

// layerSet is a State's applied layers: those committed since the last checkpoint in memory
// (fresh), the older ones in store. Lookups consult fresh first. Apply adds to fresh under the
// projection's write lock and readers look up under its read lock; the first error of the store
// is kept (errMu) because readers may meet it concurrently.
type layerSet struct {
	store  LayerStore
	fresh  map[string]map[string]LayerInfo // by owner, then identity
	depths map[string]map[int64]struct{}   // depths of the fresh layers, by owner

	errMu sync.Mutex
	err   error
}

func newLayerSet(store LayerStore) *layerSet {
	return &layerSet{store: store, fresh: map[string]map[string]LayerInfo{}, depths: map[string]map[int64]struct{}{}}
}

// fail keeps the first error of the store.
func (l *layerSet) fail(err error) {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	if l.err == nil {
		l.err = err
	}
}

func (l *layerSet) failure() error {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	return l.err
}

// get returns what is known of a layer. When the store cannot answer, the layer counts as
// known: the answer that can never apply an entry twice. The error is kept, and the projection
// stops on it (LayerError) without persisting anything decided from that answer.
func (l *layerSet) get(owner, id string) (LayerInfo, bool) {
	if info, ok := l.fresh[owner][id]; ok {
		return info, true
	}
	if l.store == nil {
		return LayerInfo{}, false
	}
	info, ok, err := l.store.Layer(owner, id)
	if err != nil {
		l.fail(err)
		return LayerInfo{}, true
	}
	return info, ok
}

func (l *layerSet) put(owner, id string, info LayerInfo) {
	m := l.fresh[owner]
	if m == nil {
		m = map[string]LayerInfo{}
		l.fresh[owner] = m
	}
	m[id] = info
	d := l.depths[owner]
	if d == nil {
		d = map[int64]struct{}{}
		l.depths[owner] = d
	}
	d[info.Depth] = struct{}{}
}

// hasDepth is HasLayerAtDepth; a store error answers true (a suspected replay is only
// flagged, never counted) and stops the projection.
func (l *layerSet) hasDepth(owner string, depth int64) bool {
	if _, ok := l.depths[owner][depth]; ok {
		return true
	}
	if l.store == nil {
		return false
	}
	ok, err := l.store.HasDepth(owner, depth)
	if err != nil {
		l.fail(err)
		return true
	}
	return ok
}

// each calls fn with every layer of the owner once (a fresh record hides a stored one).
func (l *layerSet) each(owner string, fn func(id string, info LayerInfo) bool) error {
	return l.eachOf(owner, -1, fn)
}

// eachOf is each for the layers at one depth, or at every depth when depth is -1.
func (l *layerSet) eachOf(owner string, depth int64, fn func(id string, info LayerInfo) bool) error {
	fresh := l.fresh[owner]
	if l.store != nil {
		stopped := false
		visit := func(id string, info LayerInfo) bool {
			if _, hidden := fresh[id]; hidden {
				return true
			}
			if !fn(id, info) {
				stopped = true
				return false
			}
			return true
		}
		var err error
		if depth < 0 {
			err = l.store.EachLayer(owner, visit)
		} else {
			err = l.store.EachLayerAt(owner, depth, visit)
		}
		if err != nil || stopped {
			return err
		}
	}
	for id, info := range fresh {
		if depth >= 0 && info.Depth != depth {
			continue
		}
		if !fn(id, info) {
			return nil
		}
	}
	return nil
}

// Layers calls fn with every applied layer of the owner, in no particular order, until fn
// returns false.
func (s *State) Layers(o string, fn func(id string, info LayerInfo) bool) error {
	return s.layers.each(o, fn)
}

// LayerError is the first error the layer store returned to a lookup, if any. A projection
// that sees one must stop and must not persist the state: a lookup that failed answered
// "known" (so nothing counts twice), which may be wrong.
func (s *State) LayerError() error { return s.layers.failure() }

// layerInfo returns a layer by its hex identity string.
func (s *State) layerInfo(o domain.Owner, id string) (LayerInfo, bool) {
	return s.layers.get(o.String(), id)
}

// LayersInMemory is the number of applied layers the state holds in memory: all of them
// without a layer store, else those committed since the last checkpoint.
func (s *State) LayersInMemory() int {
	n := 0
	for _, m := range s.layers.fresh {
		n += len(m)
	}
	return n
}

// DetachLayers reads every layer of the layer store into memory and forgets the store, so that
// s no longer needs it (tally verify reads the state database, then closes it).
func (s *State) DetachLayers() error {
	if s.layers.store == nil {
		return nil
	}
	detached := newLayerSet(nil)
	for owner := range s.Uploads {
		if err := s.layers.each(owner, func(id string, info LayerInfo) bool {
			detached.put(owner, id, info)
			return true
		}); err != nil {
			return err
		}
	}
	s.layers = detached
	return nil
}

// FrozenLayers are a state's applied layers as they were at one moment, readable while the
// state moves on.
type FrozenLayers struct {
	owners []string
	set    *layerSet
}

// FreezeLayers copies the layers the state holds in memory; the older ones are read through
// store, which must show the state's layer store as it is now and not move (a read transaction
// begun while the state is held still; nil for a state without a layer store). The caller holds
// the state still while FreezeLayers runs.
func (s *State) FreezeLayers(store LayerStore) *FrozenLayers {
	set := newLayerSet(nil)
	if s.layers.store != nil {
		set.store = store
	}
	for owner, m := range s.layers.fresh {
		for id, info := range m {
			set.put(owner, id, info)
		}
	}
	return &FrozenLayers{owners: s.uploadOwners(), set: set}
}

// uploadOwners lists the owners with an upload stream, in order.
func (s *State) uploadOwners() []string {
	owners := make([]string, 0, len(s.Uploads))
	for owner := range s.Uploads {
		owners = append(owners, owner)
	}
	sort.Strings(owners)
	return owners
}

// DiffLayers lists the differences between frozen layers and a state's, for the owners both
// have an upload stream for (Diff reports the others), one layer at a time.
func DiffLayers(a *FrozenLayers, b *State) []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	for _, owner := range a.owners {
		if _, ok := b.Uploads[owner]; ok {
			diffLayers(a.set, b.layers, owner, add)
		}
	}
	return out
}
