package state

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
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
//
// A replay holds millions of fresh layers, so they are kept compact (docs/encoding.md,
// "Replay"): per owner, a slice of fixed-size records without pointers (the garbage collector
// never scans it) with the identity's 32 raw bytes, and a map from the identity's first eight
// bytes to the record, instead of maps keyed by 64-character hex strings. What does not fit
// that form (an identity or digest that is not 64 lowercase hex digits, a skip reason) is kept
// beside it as it came, so every LayerInfo reads back exactly as it was put.
type layerSet struct {
	store LayerStore
	fresh map[string]*ownerLayers // by owner

	errMu sync.Mutex
	err   error
}

// ownerLayers are one owner's fresh layers.
type ownerLayers struct {
	// The records by raw identity: entries in the order they came, index from the identity's
	// first eight bytes (prefix) to the entry, and clash for the identities whose first eight
	// bytes an earlier one has (layer identities are SHA-256 digests: in practice never).
	// A map slot of 16 bytes instead of the 96 of a map by the whole identity: a replay inserts
	// millions of layers, each a few cache misses into the map, and grows it as it goes. The
	// entries are kept in blocks of entryBlock (the first one grows up to that), so that an
	// owner of hundreds of thousands of layers is never copied whole to grow.
	entries entryBlocks
	index   map[uint64]int
	clash   map[[32]byte]int
	// Beside the entries, for the records whose flags say so.
	fileDigests map[[32]byte][32]byte
	rare        map[[32]byte]rareFields
	// odd holds the layers whose identity is not 64 lowercase hex digits, as put.
	odd map[string]LayerInfo
}

// layerEntry is a record with its raw identity.
type layerEntry struct {
	id  [32]byte
	rec layerRec
}

// entryBlock is the size of a block of entryBlocks but the first.
const entryBlock = 1024

// entryBlocks is a list of layer entries in blocks: entry i is blocks[i/entryBlock][i%entryBlock].
type entryBlocks struct {
	blocks [][]layerEntry
	n      int
}

func (b *entryBlocks) at(i int) *layerEntry { return &b.blocks[i/entryBlock][i%entryBlock] }

// add appends e and returns its place.
func (b *entryBlocks) add(e layerEntry) int {
	i := b.n
	if i%entryBlock == 0 && (i > 0 || len(b.blocks) == 0) {
		var block []layerEntry
		if i > 0 {
			block = make([]layerEntry, 0, entryBlock)
		}
		b.blocks = append(b.blocks, block)
	}
	last := &b.blocks[len(b.blocks)-1]
	*last = append(*last, e)
	b.n++
	return i
}

func (b *entryBlocks) clone() entryBlocks {
	c := entryBlocks{blocks: make([][]layerEntry, len(b.blocks)), n: b.n}
	for i, block := range b.blocks {
		c.blocks[i] = slices.Clone(block)
	}
	return c
}

// prefix is the key of index: the identity's first eight bytes.
func prefix(id *[32]byte) uint64 { return binary.LittleEndian.Uint64(id[:8]) }

// find returns the place in entries of a layer, if it is there.
func (ol *ownerLayers) find(id *[32]byte) (int, bool) {
	i, ok := ol.index[prefix(id)]
	if !ok {
		return 0, false // no identity with this prefix: none in clash either
	}
	if ol.entries.at(i).id == *id {
		return i, true
	}
	i, ok = ol.clash[*id]
	return i, ok
}

// rec returns the record of a layer, if it is there.
func (ol *ownerLayers) rec(id *[32]byte) (layerRec, bool) {
	if i, ok := ol.find(id); ok {
		return ol.entries.at(i).rec, true
	}
	return layerRec{}, false
}

// set adds or replaces the record of a layer.
func (ol *ownerLayers) set(id *[32]byte, rec layerRec) {
	p := prefix(id)
	i, ok := ol.index[p]
	switch {
	case !ok:
		ol.index[p] = ol.entries.add(layerEntry{id: *id, rec: rec})
	case ol.entries.at(i).id == *id:
		ol.entries.at(i).rec = rec
	default:
		if j, ok := ol.clash[*id]; ok {
			ol.entries.at(j).rec = rec
			return
		}
		if ol.clash == nil {
			ol.clash = map[[32]byte]int{}
		}
		ol.clash[*id] = ol.entries.add(layerEntry{id: *id, rec: rec})
	}
}

// layerRec is a LayerInfo in fixed size: its digest raw, its file digest and rare fields
// beside it (ownerLayers) when the flags say so.
type layerRec struct {
	digest    [32]byte
	depth     int64
	timestamp int64
	length    int64
	flags     uint8
}

const (
	recDigest     = 1 << iota // digest holds LayerInfo.Digest
	recFileDigest             // fileDigests holds LayerInfo.FileDigest
	recRare                   // rare holds the fields below
)

// rareFields are the parts of a LayerInfo the record cannot hold: a skip reason, and a digest
// or file digest that is not 64 lowercase hex digits.
type rareFields struct {
	skipped, digest, fileDigest string
}

func newLayerSet(store LayerStore) *layerSet {
	return &layerSet{store: store, fresh: map[string]*ownerLayers{}}
}

// owner returns an owner's fresh layers, made on first use.
func (l *layerSet) owner(owner string) *ownerLayers {
	ol := l.fresh[owner]
	if ol == nil {
		ol = &ownerLayers{index: map[uint64]int{}}
		l.fresh[owner] = ol
	}
	return ol
}

// ParseHash reads a layer identity or digest written as 64 lowercase hex digits (the codec's
// form) into its 32 bytes, and reports whether s was one: only then does hex.EncodeToString
// give s back. Anything else is kept as the string it is, by the state and its database.
func ParseHash(s string) (h [32]byte, ok bool) {
	if len(s) != 64 {
		return h, false
	}
	for i := range h {
		hi, lo := hexDigit(s[2*i]), hexDigit(s[2*i+1])
		if hi > 15 || lo > 15 {
			return h, false
		}
		h[i] = hi<<4 | lo
	}
	return h, true
}

// hexDigit is the value of a lowercase hex digit, 255 for any other byte: a table lookup,
// since a replay parses two hashes per layer.
func hexDigit(c byte) byte { return hexDigits[c] }

// hexDigits is hexDigit's table.
const hexDigits = "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff" +
	"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff" +
	"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff" +
	"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff" +
	"\xff\x0a\x0b\x0c\x0d\x0e\x0f\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff" +
	"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff" +
	"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff" +
	"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff" +
	"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff" +
	"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff" +
	"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"

// putRaw adds or replaces a layer under its raw identity.
func (ol *ownerLayers) putRaw(id [32]byte, info LayerInfo) {
	rec := layerRec{depth: info.Depth, timestamp: info.Timestamp, length: info.Length}
	var rare rareFields
	if info.Digest != "" {
		if d, ok := ParseHash(info.Digest); ok {
			rec.digest, rec.flags = d, rec.flags|recDigest
		} else {
			rare.digest = info.Digest
		}
	}
	if info.FileDigest != "" {
		if d, ok := ParseHash(info.FileDigest); ok {
			ol.putFileDigest(id, d, &rec)
		} else {
			rare.fileDigest = info.FileDigest
		}
	}
	rare.skipped = info.Skipped
	if rare != (rareFields{}) {
		ol.putRare(id, rare, &rec)
	}
	// A replaced record's entries beside it stay, unread: its flags no longer point at them.
	ol.set(&id, rec)
}

// putFileDigest keeps the file digest of the layer id whose record rec is.
func (ol *ownerLayers) putFileDigest(id, digest [32]byte, rec *layerRec) {
	if ol.fileDigests == nil {
		ol.fileDigests = map[[32]byte][32]byte{}
	}
	ol.fileDigests[id] = digest
	rec.flags |= recFileDigest
}

// putRare keeps the rare fields of the layer id whose record rec is.
func (ol *ownerLayers) putRare(id [32]byte, rare rareFields, rec *layerRec) {
	if ol.rare == nil {
		ol.rare = map[[32]byte]rareFields{}
	}
	ol.rare[id] = rare
	rec.flags |= recRare
}

// info rebuilds the LayerInfo of a record.
func (ol *ownerLayers) info(id [32]byte, rec layerRec) LayerInfo {
	info := LayerInfo{Depth: rec.depth, Timestamp: rec.timestamp, Length: rec.length}
	if rec.flags&recDigest != 0 {
		info.Digest = hex.EncodeToString(rec.digest[:])
	}
	if rec.flags&recFileDigest != 0 {
		d := ol.fileDigests[id]
		info.FileDigest = hex.EncodeToString(d[:])
	}
	if rec.flags&recRare != 0 {
		r := ol.rare[id]
		info.Skipped = r.skipped
		if r.digest != "" {
			info.Digest = r.digest
		}
		if r.fileDigest != "" {
			info.FileDigest = r.fileDigest
		}
	}
	return info
}

// lookup returns a fresh layer by its identity as a string.
func (ol *ownerLayers) lookup(id string) (LayerInfo, bool) {
	if ol == nil {
		return LayerInfo{}, false
	}
	if raw, ok := ParseHash(id); ok {
		rec, ok := ol.rec(&raw)
		if !ok {
			return LayerInfo{}, false
		}
		return ol.info(raw, rec), true
	}
	info, ok := ol.odd[id]
	return info, ok
}

func (ol *ownerLayers) len() int { return ol.entries.n + len(ol.odd) }

// each calls fn with every layer of ol at depth (every depth when depth is -1) until fn
// returns false, and reports whether it stopped.
func (ol *ownerLayers) each(depth int64, fn func(id string, info LayerInfo) bool) bool {
	if ol == nil {
		return false
	}
	for _, block := range ol.entries.blocks {
		for i := range block {
			id, rec := block[i].id, block[i].rec
			if depth >= 0 && rec.depth != depth {
				continue
			}
			if !fn(hex.EncodeToString(id[:]), ol.info(id, rec)) {
				return true
			}
		}
	}
	for id, info := range ol.odd {
		if depth >= 0 && info.Depth != depth {
			continue
		}
		if !fn(id, info) {
			return true
		}
	}
	return false
}

// clone copies ol.
func (ol *ownerLayers) clone() *ownerLayers {
	return &ownerLayers{entries: ol.entries.clone(), index: maps.Clone(ol.index), clash: maps.Clone(ol.clash), fileDigests: maps.Clone(ol.fileDigests), rare: maps.Clone(ol.rare), odd: maps.Clone(ol.odd)}
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
	if info, ok := l.fresh[owner].lookup(id); ok {
		return info, true
	}
	return l.stored(owner, id)
}

// getRaw is get for an identity as raw bytes.
func (l *layerSet) getRaw(owner string, id [32]byte) (LayerInfo, bool) {
	if ol := l.fresh[owner]; ol != nil {
		if rec, ok := ol.rec(&id); ok {
			return ol.info(id, rec), true
		}
	}
	if l.store == nil {
		return LayerInfo{}, false
	}
	return l.stored(owner, hex.EncodeToString(id[:]))
}

// stored asks the store for a layer that is not fresh.
func (l *layerSet) stored(owner, id string) (LayerInfo, bool) {
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
	ol := l.owner(owner)
	if raw, ok := ParseHash(id); ok {
		ol.putRaw(raw, info)
		return
	}
	if ol.odd == nil {
		ol.odd = map[string]LayerInfo{}
	}
	ol.odd[id] = info
}

// hasDepth is HasLayerAtDepth; a store error answers true (a suspected replay is only
// flagged, never counted) and stops the projection. The fresh layers are walked: no command
// asks this on a hot path, and an index of depths would cost every replay a map insert per
// layer.
func (l *layerSet) hasDepth(owner string, depth int64) bool {
	if l.fresh[owner].each(depth, func(string, LayerInfo) bool { return false }) {
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
			if _, hidden := fresh.lookup(id); hidden {
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
	fresh.each(depth, fn)
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
	for _, ol := range s.layers.fresh {
		n += ol.len()
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
	for owner, ol := range s.layers.fresh {
		set.fresh[owner] = ol.clone()
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
