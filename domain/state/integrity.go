package state

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// IntegrityAnomaly is an anomaly as projected: the event, and whether an operator accepted
// the version it saw.
type IntegrityAnomaly struct {
	domain.UploadIntegrityAnomaly
	Acknowledged bool   `json:"acknowledged,omitempty"`
	AckReason    string `json:"ackReason,omitempty"`
}

func (a IntegrityAnomaly) key() string { return AnomalyKey(a.UploadIntegrityAnomaly) }

// AnomalyKey says which anomalies are the same: the same layer seen with the same entry
// bytes, or, when only its whole bytes differ, with the same whole bytes. A log presenting a
// modified layer under newer layers is the same anomaly as that layer presented alone.
func AnomalyKey(a domain.UploadIntegrityAnomaly) string {
	if slices.Contains(a.Differs, domain.DiffersEntryBytes) {
		return a.Layer + "/" + a.SeenDigest
	}
	if slices.Contains(a.Differs, domain.DiffersLayerLength) {
		return a.Layer + "/" + a.SeenDigest + "/" + a.SeenLayerDigest + "/" + strconv.FormatInt(a.SeenLength, 10)
	}
	return a.Layer + "/" + a.SeenDigest + "/" + a.SeenLayerDigest
}

// KnownLayer returns what is known of an applied layer under its identity or, for layers
// applied before identity version 2, its legacy identity; byID says which matched.
func (s *State) KnownLayer(o domain.Owner, id, legacy [32]byte) (info LayerInfo, byID, ok bool) {
	if info, ok := s.Layer(o, id); ok {
		return info, true, true
	}
	info, ok = s.Layer(o, legacy)
	return info, false, ok
}

// IntegrityPolicy returns a product's integrity policy (the default when it never set one).
func (s *State) IntegrityPolicy(productID int64) domain.IntegrityPolicy {
	if p, ok := s.Products[productID]; ok && p.OnTamper != "" {
		return p.OnTamper
	}
	return domain.DefaultIntegrityPolicy
}

// SameAnomaly returns the anomaly recorded that is the same as a (AnomalyKey), if any.
func (s *State) SameAnomaly(o domain.Owner, a domain.UploadIntegrityAnomaly) (IntegrityAnomaly, bool) {
	want := AnomalyKey(a)
	for _, a := range s.Anomalies[o.String()] {
		if a.key() == want {
			return *a, true
		}
	}
	return IntegrityAnomaly{}, false
}

// AnomalyByID returns an anomaly by its id.
func (s *State) AnomalyByID(id uuid.UUID) (IntegrityAnomaly, bool) {
	for _, list := range s.Anomalies {
		for _, a := range list {
			if a.AnomalyID == id {
				return *a, true
			}
		}
	}
	return IntegrityAnomaly{}, false
}

// AllAnomalies returns every anomaly, oldest first.
func (s *State) AllAnomalies() []IntegrityAnomaly {
	var out []IntegrityAnomaly
	for _, list := range s.Anomalies {
		for _, a := range list {
			out = append(out, *a)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].At.Equal(out[j].At) {
			return out[i].At.Before(out[j].At)
		}
		return out[i].AnomalyID.String() < out[j].AnomalyID.String()
	})
	return out
}

// applyIntegrity folds the integrity events; handled reports whether ev was one.
func (s *State) applyIntegrity(ev *eventstore.RecordedEvent) (handled bool, err error) {
	switch ev.Type {
	case domain.EventUploadIntegrityAnomaly:
		var e domain.UploadIntegrityAnomaly
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			return true, err
		}
		owner, ok := domain.ParseUploadStream(ev.Stream)
		if !ok {
			return true, nil
		}
		s.uploadStream(owner, ev.Revision)
		if s.Anomalies == nil {
			s.Anomalies = map[string][]*IntegrityAnomaly{}
		}
		s.Anomalies[owner.String()] = append(s.Anomalies[owner.String()], &IntegrityAnomaly{UploadIntegrityAnomaly: e})
		s.markAnomalies(owner.String())
		if e.Alias != nil {
			// The anomaly recognised a layer applied before identity version 2 under a
			// modified IV: from now on it is known by its wrapped key.
			s.addAlias(s.Uploads[owner.String()], *e.Alias)
		}
	case domain.EventUploadIntegrityAcknowledged:
		var e domain.UploadIntegrityAcknowledged
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			return true, err
		}
		owner, ok := domain.ParseUploadStream(ev.Stream)
		if !ok {
			return true, nil
		}
		s.uploadStream(owner, ev.Revision)
		for _, a := range s.Anomalies[owner.String()] {
			if a.AnomalyID == e.AnomalyID {
				a.Acknowledged, a.AckReason = true, e.Reason
				s.markAnomalies(owner.String())
				return true, nil
			}
		}
		return true, fmt.Errorf("acknowledgement of unknown anomaly %s", e.AnomalyID)
	case domain.EventProductIntegrityPolicySet:
		var e domain.ProductIntegrityPolicySet
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			return true, err
		}
		if p, ok := s.Products[e.ProductID]; ok {
			p.OnTamper = e.Policy
			s.Products[e.ProductID] = p
			s.markProduct(e.ProductID)
		}
	default:
		return false, nil
	}
	return true, nil
}

// HasLayerAtDepth reports whether the owner applied a layer at that depth of a log (of any of
// its logs: an owner may upload several).
func (s *State) HasLayerAtDepth(o domain.Owner, depth int64) bool {
	return s.layers.hasDepth(o.String(), depth)
}

// LayerAtDepth is one identity of an applied layer at a given depth (LayersAt).
type LayerAtDepth struct {
	ID string // hex identity: version 2, or legacy for a layer applied before it
	LayerInfo
}

// LayersAt returns the identities the owner's applied layers at that depth are known by, in
// no particular order. A layer applied before identity version 2 and re-identified since is
// listed under both identities; the legacy one has no Digest (docs/uploads.md, "Tampering").
func (s *State) LayersAt(o domain.Owner, depth int64) []LayerAtDepth {
	var out []LayerAtDepth
	if err := s.layers.eachOf(o.String(), depth, func(id string, info LayerInfo) bool {
		out = append(out, LayerAtDepth{ID: id, LayerInfo: info})
		return true
	}); err != nil {
		s.layers.fail(err)
	}
	return out
}

// rememberLayers records the layers of a committed upload, each whole before it is added (a
// layer set only ever adds): depth, timestamp, skip reason and the digests it was applied
// with, and the identity version 2 of the layer it stopped at when that was known by its
// legacy identity only.
func (s *State) rememberLayers(u *Upload, p *domain.UploadPrepared) {
	owner := s.ownerKey(u.Owner)
	ol := s.layers.owner(owner)
	var skipped map[int]string
	for _, sk := range p.Skipped {
		if sk.Index >= 0 && sk.Index < len(p.Layers) {
			if skipped == nil {
				skipped = map[int]string{}
			}
			skipped[sk.Index] = sk.Reason // the last one for an index wins, as it always did
		}
	}
	if h := u.preparedHashes(); h != nil {
		// From a binary body: every hash is 64 lowercase hex digits and here raw already.
		for i := range p.Layers {
			rec := layerRec{depth: p.BaseDepth + int64(i) + 1}
			if i < len(p.Timestamps) {
				rec.timestamp = p.Timestamps[i]
			}
			if i < len(h.Digests) {
				rec.digest, rec.flags = h.Digests[i], recDigest
			}
			if i == len(p.Layers)-1 {
				rec.length = p.Length
				if h.HasFileDigest {
					ol.putFileDigest(h.Layers[i], h.FileDigest, &rec)
				}
			}
			if reason := skipped[i]; reason != "" {
				ol.putRare(h.Layers[i], rareFields{skipped: reason}, &rec)
			}
			ol.set(&h.Layers[i], rec)
		}
	} else {
		for i, l := range p.Layers {
			info := LayerInfo{Depth: p.BaseDepth + int64(i) + 1}
			if i < len(p.Timestamps) {
				info.Timestamp = p.Timestamps[i]
			}
			info.Skipped = skipped[i]
			if i < len(p.Digests) {
				info.Digest = p.Digests[i]
			}
			if i == len(p.Layers)-1 {
				info.FileDigest, info.Length = p.FileDigest, p.Length
			}
			if raw, ok := ParseHash(l); ok {
				ol.putRaw(raw, info)
			} else {
				s.layers.put(owner, l, info)
			}
		}
	}
	if b := p.Base; b != nil {
		s.addAlias(u, *b)
	}
}

// addAlias records the identity version 2, digest and length of a layer known by its legacy
// identity.
func (s *State) addAlias(u *Upload, a domain.LayerAlias) {
	owner := u.Owner.String()
	if info, ok := s.layers.get(owner, a.Legacy); ok {
		info.Digest, info.Length = a.Digest, a.Length
		s.layers.put(owner, a.Layer, info)
	}
}

// diffIntegrity lists the differences of the integrity state, for Diff.
func diffIntegrity(a, b *State, add func(format string, args ...any)) {
	for id, p := range a.Products {
		if q, ok := b.Products[id]; ok && q.OnTamper != p.OnTamper {
			add("product %d: integrity policy %q vs %q", id, p.OnTamper, q.OnTamper)
		}
	}
	x, y := a.AllAnomalies(), b.AllAnomalies()
	if len(x) != len(y) {
		add("integrity anomalies: %d vs %d", len(x), len(y))
		return
	}
	for i := range x {
		if x[i].AnomalyID != y[i].AnomalyID || x[i].Acknowledged != y[i].Acknowledged || x[i].key() != y[i].key() {
			add("integrity anomaly %s differs", x[i].AnomalyID)
		}
	}
}
