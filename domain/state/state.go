// Package state holds the domain's decision state: the current products, keys, tokens, data
// objects with their values and stream revisions, upload progress and the usage-log layers
// already applied, folded from events by Apply. The ledger's commands decide against it;
// package projections keeps one State up to date from the store and persists it.
package state

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// Object is a data object as projected, with what its stream holds beyond its value.
type Object struct {
	domain.DataObject
	Removed bool `json:"removed,omitempty"`
	// Pending lists changes of an upload that is neither committed nor aborted yet. They do not
	// count in IntValue; commands on the object wait until the upload is decided.
	Pending []PendingChange `json:"pending,omitempty"`
}

// PendingChange is one change of an undecided upload.
type PendingChange struct {
	UploadID uuid.UUID        `json:"uploadId"`
	Dir      domain.Direction `json:"dir"`
	Amount   int64            `json:"amount"`
}

// LayerInfo is what the ledger remembers of an applied usage-log layer: how deep in its file it
// sits (1 for the innermost layer) and its timestamp.
type LayerInfo struct {
	Depth     int64 `json:"depth"`
	Timestamp int64 `json:"timestamp"`
	// Skipped is the refusal reason of an entry an operator's skip-entries decision left out:
	// the layer is known (never offered again) and its entry never counted.
	Skipped string `json:"skipped,omitempty"`
	// Digest is the layer's digest (hex; usagelog.LayerDigest), FileDigest the SHA-256 of its
	// whole bytes when it was the outermost layer of the log it was applied from; both empty
	// for layers applied before identity version 2 (docs/uploads.md, "Tampering").
	Digest     string `json:"digest,omitempty"`
	FileDigest string `json:"fileDigest,omitempty"` // Length is its EncryptedObject's length, recorded for the newest layer of each upload
	// (and a re-identified layer) since lengths were (0 otherwise).
	Length int64 `json:"length,omitempty"`
}

// Upload is the projected state of one owner's upload stream.
type Upload struct {
	Owner domain.Owner `json:"owner"`
	// Revision is the upload stream's last revision (meaningful when Exists).
	Revision uint64 `json:"revision"`
	Exists   bool   `json:"exists"`
	// Prepared is the upload in progress, if any.
	Prepared *domain.UploadPrepared `json:"prepared,omitempty"`
	// The layers of committed uploads are not here but in the State's layer set (layers.go):
	// Layer, KnownLayer, Layers.
	// Refusal is the owner's newest refused log version while none of its uploads has made
	// its newest layer known (refusal.go).
	Refusal *Refusal `json:"refusal,omitempty"`
	// Resolution is an operator's decision on a refused log, until its newest layer is known.
	Resolution *domain.UploadResolutionDecided `json:"resolution,omitempty"`
	// decoded is what setPrepared made Prepared from, with its raw hashes, so that its commit
	// indexes the layers without reading hex back (preparedHashes).
	decoded *preparedUpload
}

// setPrepared makes p (nil: none) the upload in progress.
func (u *Upload) setPrepared(p *preparedUpload) {
	u.decoded = p
	if p == nil {
		u.Prepared = nil
		return
	}
	u.Prepared = &p.prepared
}

// preparedHashes returns the raw hashes of Prepared, if it came from a binary body through
// setPrepared (and was not replaced since).
func (u *Upload) preparedHashes() *domain.PreparedHashes {
	if d := u.decoded; d != nil && u.Prepared == &d.prepared && d.hashes != nil &&
		len(d.hashes.Layers) == len(u.Prepared.Layers) && len(d.hashes.Digests) == len(u.Prepared.Digests) {
		return d.hashes
	}
	return nil
}

// State is the current state folded from events. Its exported fields and its layers are what a
// checkpoint persists; the indexes are derived again after loading.
type State struct {
	Position eventstore.Position `json:"position"`
	// LastEvent locates the event at Position, so that a snapshot can be checked against the
	// store it claims to reflect with a plain stream read.
	LastEvent   EventRef                    `json:"lastEvent"`
	Events      uint64                      `json:"events"`
	Products    map[int64]domain.Product    `json:"products"`
	Keys        map[int64]domain.LicenseKey `json:"keys"`
	Tokens      map[uuid.UUID]domain.Token  `json:"tokens"`
	Objects     map[int64]*Object           `json:"objects"`
	Uploads     map[string]*Upload          `json:"uploads"` // by Owner.String()
	Aborted     map[uuid.UUID]bool          `json:"aborted"` // aborted uploads, to ignore their late events
	keyByString map[string]int64            // normalized key string -> key id
	tokenByHash map[[32]byte]uuid.UUID      // secret hash -> token id
	owned       map[domain.Owner][]int64    // live objects per owner, ascending ids (a slice: a third of a map's bytes)
	maxIDs      map[string]int64            // largest id of products, keys and objects, by stream category
	layers      *layerSet                   // the applied usage-log layers (layers.go)
	marks       *changeMarks                // what changed since the last checkpoint, if tracked (changes.go)
	names       ownerNames                  // upload streams' owners and owners' keys met by Apply

	// Anomalies are the usage-log integrity anomalies by owner (Owner.String()), oldest first.
	Anomalies map[string][]*IntegrityAnomaly `json:"anomalies,omitempty"`
}

// ownerNames remembers the owners of the upload streams Apply met and the owners' keys
// (Owner.String()), so that a replay parses each stream name and formats each key once: fmt's
// Sscanf and Sprintf cost more than the rest of an upload's fold. Only Apply uses them (under
// the projection's write lock); the maps are as many as the owners.
type ownerNames struct {
	byStream map[string]domain.Owner
	keys     map[domain.Owner]string
}

// streamOwner is domain.ParseUploadStream, remembered.
func (s *State) streamOwner(stream string) (domain.Owner, bool) {
	if o, ok := s.names.byStream[stream]; ok {
		return o, true
	}
	o, ok := domain.ParseUploadStream(stream)
	if ok {
		if s.names.byStream == nil {
			s.names.byStream = map[string]domain.Owner{}
		}
		s.names.byStream[stream] = o
	}
	return o, ok
}

// ownerKey is o.String(), remembered.
func (s *State) ownerKey(o domain.Owner) string {
	if k, ok := s.names.keys[o]; ok {
		return k
	}
	k := o.String()
	if s.names.keys == nil {
		s.names.keys = map[domain.Owner]string{}
	}
	s.names.keys[o] = k
	return k
}

// EventRef locates one event.
type EventRef struct {
	Stream   string    `json:"stream,omitempty"`
	Revision uint64    `json:"revision,omitempty"`
	ID       uuid.UUID `json:"id"`
}

// NewState returns an empty state, as before the first event, holding its layers in memory.
func NewState() *State { return NewStateOn(nil) }

// NewStateOn returns an empty state whose layers persisted by a checkpoint are in layers (nil:
// every layer stays in memory). A caller that loads a checkpoint fills the exported fields and
// calls Reindex.
func NewStateOn(layers LayerStore) *State {
	s := &State{
		layers:   newLayerSet(layers),
		Products: map[int64]domain.Product{},
		Keys:     map[int64]domain.LicenseKey{},
		Tokens:   map[uuid.UUID]domain.Token{},
		Objects:  map[int64]*Object{},
		Uploads:  map[string]*Upload{},
		Aborted:  map[uuid.UUID]bool{},
	}
	s.reindex()
	return s
}

// Reindex derives the lookup indexes from the exported fields, after a caller filled them.
func (s *State) Reindex() { s.reindex() }

// reindex derives the lookup indexes from the primary maps.
func (s *State) reindex() {
	s.keyByString = make(map[string]int64, len(s.Keys))
	for id, k := range s.Keys {
		s.keyByString[domain.NormalizeKeyString(k.Key)] = id
	}
	s.tokenByHash = make(map[[32]byte]uuid.UUID, len(s.Tokens))
	for id, t := range s.Tokens {
		s.tokenByHash[t.SecretHash] = id
	}
	s.owned = map[domain.Owner][]int64{}
	s.maxIDs = map[string]int64{}
	for id, o := range s.Objects {
		if !o.Removed {
			s.owned[o.Owner] = append(s.owned[o.Owner], id)
		}
		s.seenID(domain.CategoryDataObject, id)
	}
	for _, ids := range s.owned {
		slices.Sort(ids)
	}
	for id := range s.Products {
		s.seenID(domain.CategoryProduct, id)
	}
	for id := range s.Keys {
		s.seenID(domain.CategoryKey, id)
	}
}

func (s *State) own(o domain.Owner, id int64) {
	ids := s.owned[o]
	if i, found := slices.BinarySearch(ids, id); !found {
		s.owned[o] = slices.Insert(ids, i, id)
	}
}

func (s *State) disown(o domain.Owner, id int64) {
	ids := s.owned[o]
	if i, found := slices.BinarySearch(ids, id); found {
		s.owned[o] = slices.Delete(ids, i, i+1)
	}
}

// stateJSON is a State in JSON with its layers in their uploads, the format of the
// projection.json an earlier build wrote as its checkpoint.
type stateJSON struct {
	*State
	Uploads map[string]uploadJSON `json:"uploads"`
}

type uploadJSON struct {
	*Upload
	Layers map[string]LayerInfo `json:"layers"`
}

// MarshalState encodes a whole state, layers included, as JSON: a deep copy for tests and
// tools, and the format of an earlier build's projection.json.
func MarshalState(s *State) ([]byte, error) {
	w := stateJSON{State: s, Uploads: make(map[string]uploadJSON, len(s.Uploads))}
	for key, u := range s.Uploads {
		layers := map[string]LayerInfo{}
		if err := s.layers.each(key, func(id string, info LayerInfo) bool {
			layers[id] = info
			return true
		}); err != nil {
			return nil, fmt.Errorf("encode projection: %w", err)
		}
		w.Uploads[key] = uploadJSON{Upload: u, Layers: layers}
	}
	return json.Marshal(w)
}

// UnmarshalState decodes what MarshalState wrote (or an earlier build's projection.json) into
// a state holding its layers in memory, and rebuilds its indexes.
func UnmarshalState(b []byte) (*State, error) {
	s := NewState()
	w := stateJSON{State: s}
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("decode projection snapshot: %w", err)
	}
	s.Uploads = make(map[string]*Upload, len(w.Uploads))
	for key, u := range w.Uploads {
		if u.Upload == nil {
			u.Upload = &Upload{}
		}
		s.Uploads[key] = u.Upload
		for id, info := range u.Layers {
			s.layers.put(key, id, info)
		}
	}
	s.reindex()
	return s, nil
}

// Product returns a product by id.
func (s *State) Product(id int64) (domain.Product, bool) {
	p, ok := s.Products[id]
	return p, ok
}

// Key returns a license key by id.
func (s *State) Key(id int64) (domain.LicenseKey, bool) {
	k, ok := s.Keys[id]
	return k, ok
}

// ProductOfKey returns the product a license key belongs to; it is what domain.Token's
// CheckGeneral asks of the state.
func (s *State) ProductOfKey(keyID int64) (int64, bool) {
	k, ok := s.Keys[keyID]
	return k.ProductID, ok
}

// KeyByString returns the key of a product with the given key string.
func (s *State) KeyByString(productID int64, key string) (domain.LicenseKey, bool) {
	id, ok := s.keyByString[domain.NormalizeKeyString(key)]
	if !ok {
		return domain.LicenseKey{}, false
	}
	k := s.Keys[id]
	return k, k.ProductID == productID
}

// TokenBySecretHash returns the token whose secret hashes to h.
func (s *State) TokenBySecretHash(h [32]byte) (domain.Token, bool) {
	id, ok := s.tokenByHash[h]
	if !ok {
		return domain.Token{}, false
	}
	return s.Tokens[id], true
}

// Object returns a data object, removed or not.
func (s *State) Object(id int64) (*Object, bool) {
	o, ok := s.Objects[id]
	return o, ok
}

// ObjectsOf returns the live objects of an owner, by id.
func (s *State) ObjectsOf(o domain.Owner) []*Object {
	ids := s.owned[o]
	out := make([]*Object, len(ids))
	for i, id := range ids {
		out[i] = s.Objects[id]
	}
	return out
}

// AllObjects returns every live object, by id.
func (s *State) AllObjects() []*Object {
	out := make([]*Object, 0, len(s.Objects))
	for _, o := range s.Objects {
		if !o.Removed {
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// ObjectByName returns the live object of an owner with that name (the lowest id if several).
func (s *State) ObjectByName(o domain.Owner, name string) (*Object, bool) {
	for _, id := range s.owned[o] { // ascending: the first match is the lowest id
		if obj := s.Objects[id]; obj.Name == name {
			return obj, true
		}
	}
	return nil, false
}

// Upload returns the state of an owner's upload stream (a zero one if it has none).
func (s *State) Upload(o domain.Owner) *Upload {
	if u, ok := s.Uploads[o.String()]; ok {
		return u
	}
	return &Upload{Owner: o}
}

// Layer returns what is known of an applied layer of an owner.
func (s *State) Layer(o domain.Owner, layer [32]byte) (LayerInfo, bool) {
	return s.LayerOf(o.String(), layer)
}

// LayerOf is Layer for an owner named by its key (Owner.String(), as Uploads and the layer
// store name owners), for a caller that holds the key already.
func (s *State) LayerOf(owner string, layer [32]byte) (LayerInfo, bool) {
	return s.layers.getRaw(owner, layer)
}

// MaxID returns the largest id seen in a stream category.
func (s *State) MaxID(category string) int64 { return s.maxIDs[category] }

// PendingUploads returns the uploads prepared and not yet decided, by owner.
func (s *State) PendingUploads() []domain.UploadPrepared {
	var out []domain.UploadPrepared
	for _, u := range s.Uploads {
		if u.Prepared != nil {
			out = append(out, *u.Prepared)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Owner.String() < out[j].Owner.String() })
	return out
}

// PendingEvents counts the events of an undecided upload that its objects' streams hold.
func (s *State) PendingEvents(p domain.UploadPrepared) int {
	n := 0
	for _, step := range p.Changes {
		o, ok := s.Objects[step.ObjectID]
		if !ok {
			continue
		}
		for _, c := range o.Pending {
			if c.UploadID == p.UploadID {
				n++
			}
		}
	}
	return n
}

// Diff lists the differences between two states (as "what: a vs b" lines), for verify.
func Diff(a, b *State) []string {
	return append(DiffExceptLayers(a, b), DiffLayers(&FrozenLayers{owners: a.uploadOwners(), set: a.layers}, b)...)
}

// DiffExceptLayers is Diff without the applied layers, which may be on disk and take long to
// compare: a caller that holds a live state still compares the rest at once and the layers of a
// FreezeLayers copy afterwards.
func DiffExceptLayers(a, b *State) []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	ids := map[int64]bool{}
	for id := range a.Objects {
		ids[id] = true
	}
	for id := range b.Objects {
		ids[id] = true
	}
	sorted := make([]int64, 0, len(ids))
	for id := range ids {
		sorted = append(sorted, id)
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	for _, id := range sorted {
		x, okx := a.Objects[id]
		y, oky := b.Objects[id]
		switch {
		case !okx:
			add("data object %d: missing vs present", id)
		case !oky:
			add("data object %d: present vs missing", id)
		default:
			if x.IntValue != y.IntValue {
				add("data object %d: intValue %d vs %d", id, x.IntValue, y.IntValue)
			}
			if x.StringValue != y.StringValue {
				add("data object %d: stringValue %q vs %q", id, x.StringValue, y.StringValue)
			}
			if x.Name != y.Name {
				add("data object %d: name %q vs %q", id, x.Name, y.Name)
			}
			if x.Owner != y.Owner {
				add("data object %d: owner %v vs %v", id, x.Owner, y.Owner)
			}
			if x.Revision != y.Revision {
				add("data object %d: revision %d vs %d", id, x.Revision, y.Revision)
			}
			if x.Removed != y.Removed {
				add("data object %d: removed %v vs %v", id, x.Removed, y.Removed)
			}
			if len(x.Pending) != len(y.Pending) {
				add("data object %d: %d vs %d pending changes", id, len(x.Pending), len(y.Pending))
			}
		}
	}
	for id, p := range a.Products {
		if q, ok := b.Products[id]; !ok || q.Name != p.Name {
			add("product %d: %q vs %q", id, p.Name, q.Name)
		}
	}
	for id := range b.Products {
		if _, ok := a.Products[id]; !ok {
			add("product %d: missing vs present", id)
		}
	}
	for id, k := range a.Keys {
		if q, ok := b.Keys[id]; !ok || q.Key != k.Key || q.ProductID != k.ProductID {
			add("key %d: %q vs %q", id, k.Key, q.Key)
		}
	}
	for id := range b.Keys {
		if _, ok := a.Keys[id]; !ok {
			add("key %d: missing vs present", id)
		}
	}
	for id, t := range a.Tokens {
		u, ok := b.Tokens[id]
		if !ok || u.Revoked != t.Revoked || u.SecretHash != t.SecretHash || u.KeyLock != t.KeyLock ||
			u.ProductLock != t.ProductLock || u.FeatureLock != t.FeatureLock ||
			strings.Join(methodNames(t.Methods), ",") != strings.Join(methodNames(u.Methods), ",") {
			add("token %s: differs", id)
		}
	}
	for id := range b.Tokens {
		if _, ok := a.Tokens[id]; !ok {
			add("token %s: missing vs present", id)
		}
	}
	for key, u := range a.Uploads {
		v, ok := b.Uploads[key]
		if !ok {
			add("uploads of owner %s: present vs missing", key)
			continue
		}
		if u.Revision != v.Revision || u.Exists != v.Exists || (u.Prepared == nil) != (v.Prepared == nil) {
			add("uploads of owner %s: revision %d vs %d", key, u.Revision, v.Revision)
		}
		out = append(out, diffRefusals(key, u, v)...)
	}
	for key := range b.Uploads {
		if _, ok := a.Uploads[key]; !ok {
			add("uploads of owner %s: missing vs present", key)
		}
	}
	diffIntegrity(a, b, add)
	return out
}

func methodNames(ms []domain.Method) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = string(m)
	}
	sort.Strings(out)
	return out
}

// diffLayers compares the applied layers of an owner in two states, one layer at a time (a
// state's layers may be on disk and are never all loaded at once).
func diffLayers(a, b *layerSet, owner string, add func(format string, args ...any)) {
	count := func(s *layerSet) int {
		n := 0
		if err := s.each(owner, func(string, LayerInfo) bool { n++; return true }); err != nil {
			add("uploads of owner %s: layers unreadable: %v", owner, err)
		}
		return n
	}
	if x, y := count(a), count(b); x != y {
		add("uploads of owner %s: %d vs %d applied layers", owner, x, y)
	}
	differ := 0
	err := a.each(owner, func(id string, info LayerInfo) bool {
		if other, ok := b.get(owner, id); !ok || other != info {
			add("uploads of owner %s: layer %s differs", owner, id)
			if differ++; differ >= 100 {
				add("uploads of owner %s: more layers may differ", owner)
				return false
			}
		}
		return true
	})
	if err != nil {
		add("uploads of owner %s: layers unreadable: %v", owner, err)
	}
}
