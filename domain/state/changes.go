package state

import (
	"slices"
	"sort"
	"strings"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
)

// changeMarks records what Apply changed since the last checkpoint, so that a checkpoint writes
// only that (docs/storage.md, "The current-state projection"). States that are never persisted
// incrementally (Rebuild) keep no marks.
type changeMarks struct {
	products  map[int64]struct{}
	keys      map[int64]struct{}
	tokens    map[uuid.UUID]struct{}
	objects   map[int64]struct{}
	uploads   map[string]struct{}
	anomalies map[string]struct{}
	aborted   map[uuid.UUID]struct{}
}

func newChangeMarks() *changeMarks {
	return &changeMarks{
		products: map[int64]struct{}{}, keys: map[int64]struct{}{}, tokens: map[uuid.UUID]struct{}{},
		objects: map[int64]struct{}{}, uploads: map[string]struct{}{}, anomalies: map[string]struct{}{},
		aborted: map[uuid.UUID]struct{}{},
	}
}

func (s *State) markProduct(id int64) {
	if s.marks != nil {
		s.marks.products[id] = struct{}{}
	}
}

func (s *State) markKey(id int64) {
	if s.marks != nil {
		s.marks.keys[id] = struct{}{}
	}
}

func (s *State) markToken(id uuid.UUID) {
	if s.marks != nil {
		s.marks.tokens[id] = struct{}{}
	}
}

func (s *State) markObject(id int64) {
	if s.marks != nil {
		s.marks.objects[id] = struct{}{}
	}
}

func (s *State) markUpload(owner string) {
	if s.marks != nil {
		s.marks.uploads[owner] = struct{}{}
	}
}

func (s *State) markAnomalies(owner string) {
	if s.marks != nil {
		s.marks.anomalies[owner] = struct{}{}
	}
}

func (s *State) markAborted(id uuid.UUID) {
	if s.marks != nil {
		s.marks.aborted[id] = struct{}{}
	}
}

// Changes is what a checkpoint writes: the records that changed (each whole, as it is now) and
// the layers applied since the last checkpoint. Records are never deleted from a State (a
// removed data object is a record with Removed set), so a checkpoint only inserts or replaces.
type Changes struct {
	Products []domain.Product
	Keys     []domain.LicenseKey
	Tokens   []domain.Token
	Objects  []*Object
	Uploads  []*Upload
	// Anomalies holds the whole list of each owner whose list changed.
	Anomalies map[string][]*IntegrityAnomaly
	Aborted   []uuid.UUID
	// Layers are the layers applied since the last checkpoint, in key order. When All is set
	// (Changes(true)) they are not listed, as there may be millions: the writer reads every
	// layer with AllLayers.
	Layers []LayerRecord
	All    bool
}

// Len is the number of records in c.
func (c Changes) Len() int {
	return len(c.Products) + len(c.Keys) + len(c.Tokens) + len(c.Objects) + len(c.Uploads) + len(c.Anomalies) + len(c.Aborted) + len(c.Layers)
}

// TrackChanges makes s record what Apply changes from now on, for Changes(false).
func (s *State) TrackChanges() {
	if s.marks == nil {
		s.marks = newChangeMarks()
	}
}

// Changes returns what changed since the last Checkpointed (all: every record s holds, and
// All set for the layers). The caller must keep Apply away while it uses the result; the
// objects are s's own.
func (s *State) Changes(all bool) (Changes, error) {
	c := Changes{All: all}
	if all || s.marks == nil {
		for _, p := range s.Products {
			c.Products = append(c.Products, p)
		}
		for _, k := range s.Keys {
			c.Keys = append(c.Keys, k)
		}
		for _, t := range s.Tokens {
			c.Tokens = append(c.Tokens, t)
		}
		for _, o := range s.Objects {
			c.Objects = append(c.Objects, o)
		}
		for _, u := range s.Uploads {
			c.Uploads = append(c.Uploads, u)
		}
		c.Anomalies = s.Anomalies
		for id := range s.Aborted {
			c.Aborted = append(c.Aborted, id)
		}
	} else {
		m := s.marks
		for id := range m.products {
			c.Products = append(c.Products, s.Products[id])
		}
		for id := range m.keys {
			c.Keys = append(c.Keys, s.Keys[id])
		}
		for id := range m.tokens {
			c.Tokens = append(c.Tokens, s.Tokens[id])
		}
		for id := range m.objects {
			if o, ok := s.Objects[id]; ok {
				c.Objects = append(c.Objects, o)
			}
		}
		for owner := range m.uploads {
			if u, ok := s.Uploads[owner]; ok {
				c.Uploads = append(c.Uploads, u)
			}
		}
		if len(m.anomalies) > 0 {
			c.Anomalies = map[string][]*IntegrityAnomaly{}
			for owner := range m.anomalies {
				c.Anomalies[owner] = s.Anomalies[owner]
			}
		}
		for id := range m.aborted {
			c.Aborted = append(c.Aborted, id)
		}
	}
	if !all {
		// In key order, which keeps the b-tree writes of a checkpoint local: owner by owner,
		// each owner's sorted alone (a replay hands over hundreds of thousands at a time).
		owners := make([]string, 0, len(s.layers.fresh))
		for owner := range s.layers.fresh {
			owners = append(owners, owner)
		}
		sort.Strings(owners)
		c.Layers = make([]LayerRecord, 0, s.LayersInMemory())
		for _, owner := range owners {
			from := len(c.Layers)
			s.layers.fresh[owner].each(-1, func(id string, info LayerInfo) bool {
				c.Layers = append(c.Layers, LayerRecord{Owner: owner, ID: id, Info: info})
				return true
			})
			sortLayers(c.Layers[from:])
		}
	}
	return c, nil
}

// sortLayers puts layers in key order, which keeps the b-tree writes of a checkpoint local.
func sortLayers(l []LayerRecord) {
	slices.SortFunc(l, func(a, b LayerRecord) int {
		if c := strings.Compare(a.Owner, b.Owner); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}

// AllLayers hands every applied layer to fn, one owner at a time in owner order and each
// owner's in key order, holding one owner's layers at a time; it stops at fn's first error.
func (s *State) AllLayers(fn func(LayerRecord) error) error {
	owners := make([]string, 0, len(s.Uploads))
	for owner := range s.Uploads {
		owners = append(owners, owner)
	}
	sort.Strings(owners)
	for _, owner := range owners {
		var batch []LayerRecord
		if err := s.layers.each(owner, func(id string, info LayerInfo) bool {
			batch = append(batch, LayerRecord{Owner: owner, ID: id, Info: info})
			return true
		}); err != nil {
			return err
		}
		sortLayers(batch)
		for _, l := range batch {
			if err := fn(l); err != nil {
				return err
			}
		}
	}
	return nil
}

// Checkpointed tells s that a checkpoint holding Changes committed to a store that layers (not
// nil) reads: the marks are cleared, and the fresh layers are served from layers from now on.
// The caller must hold s exclusively (no reader, no Apply).
func (s *State) Checkpointed(layers LayerStore) {
	if s.marks != nil {
		s.marks = newChangeMarks()
	}
	s.layers = newLayerSet(layers)
}
