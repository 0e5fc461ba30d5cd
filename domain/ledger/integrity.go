package ledger

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// integrityNamespace derives anomaly ids (UUIDv5 of the owner, the layer and the digests
// seen), so that the same tampered log retried by its client is one anomaly.
var integrityNamespace = uuid.MustParse("2b0c9f5e-7d4a-4e8b-b1a6-93c3d2f0e4a1")

// MaxAckReasonLength bounds an acknowledgement's reason.
const MaxAckReasonLength = 1000

// layerKnown reports whether the owner applied the layer, under its identity or its legacy one.
func (s *Service) layerKnown(owner domain.Owner, layer LayerRef) bool {
	var ok bool
	s.view.Read(func(st *state.State) { _, _, ok = st.KnownLayer(owner, layer.ID, layer.Legacy) })
	return ok
}

// addDigests completes a plan with what the layers are applied with: each layer's digest, the
// whole log's digest (the newest layer's whole bytes), and, when the walk stopped at a layer
// known by its legacy identity only, that layer's identity and digest, so that from then on it
// is known whatever its IV (docs/uploads.md, "Tampering").
func addDigests(st *state.State, p *plan, decoded *DecodedLog) {
	if len(p.entries) == 0 {
		return
	}
	for _, e := range p.entries {
		p.prepared.Digests = append(p.prepared.Digests, hex.EncodeToString(e.Digest[:]))
	}
	p.prepared.FileDigest = hex.EncodeToString(decoded.FileDigest[:])
	if stop := decoded.Stop; stop != nil && len(p.entries) == len(decoded.Entries) {
		if _, byID, ok := st.KnownLayer(p.owner, stop.ID, stop.Legacy); ok && !byID {
			p.prepared.Base = &domain.LayerAlias{
				Legacy: hex.EncodeToString(stop.Legacy[:]),
				Layer:  hex.EncodeToString(stop.ID[:]),
				Digest: hex.EncodeToString(stop.Digest[:]),
			}
		}
	}
}

// productOfOwner returns the product whose policy governs an owner's uploads (0: none, the
// account's own objects).
func productOfOwner(st *state.State, o domain.Owner) int64 {
	switch o.Type {
	case domain.OwnerProduct:
		return o.ID
	case domain.OwnerKey:
		k, _ := st.Key(o.ID)
		return k.ProductID
	}
	return 0
}

// compareStop compares the known layer a walk stopped at with what was recorded when it was
// applied; it returns the anomaly to record (nil: nothing differs). For a layer applied before
// identity version 2 there is no digest to compare; it flags a suspected replay instead when
// the new layer above it takes a depth the owner already holds.
func compareStop(st *state.State, owner domain.Owner, decoded *DecodedLog, now time.Time) *domain.UploadIntegrityAnomaly {
	stop := decoded.Stop
	if stop == nil {
		return nil
	}
	info, byID, ok := st.KnownLayer(owner, stop.ID, stop.Legacy)
	if !ok {
		return nil
	}
	a := domain.UploadIntegrityAnomaly{Owner: owner, NewEntries: len(decoded.Entries), At: now.UTC()}
	switch {
	case !byID:
		// Applied before identity version 2: no digest to compare. A new layer right above it
		// at a depth the owner already holds may be a modified copy of an old layer.
		if len(decoded.Entries) == 0 || !st.HasLayerAtDepth(owner, info.Depth+1) {
			return nil
		}
		first := decoded.Entries[0]
		if _, _, applied := st.KnownLayer(owner, first.Layer, first.Legacy); applied {
			return nil // a concurrent upload of the same log applied it meanwhile
		}
		a.Layer, a.Depth, a.SeenDigest = hex.EncodeToString(first.Layer[:]), info.Depth+1, hex.EncodeToString(first.Digest[:])
		a.Differs = []string{domain.DiffersSuspectedReplay}
	case info.Digest == "":
		// Re-identified without a digest: nothing to compare.
		return nil
	default:
		a.Layer, a.Depth = hex.EncodeToString(stop.ID[:]), info.Depth
		a.AppliedDigest, a.SeenDigest = info.Digest, hex.EncodeToString(stop.Digest[:])
		if a.AppliedDigest != a.SeenDigest {
			a.Differs = append(a.Differs, domain.DiffersEntryBytes)
		}
		// The whole bytes of a layer are at hand only when it is the log's outermost layer, and
		// were recorded only when it was the outermost of the log it was applied from.
		if decoded.StopDepth == 1 && info.FileDigest != "" {
			a.AppliedLayerDigest, a.SeenLayerDigest = info.FileDigest, hex.EncodeToString(decoded.FileDigest[:])
			if a.AppliedLayerDigest != a.SeenLayerDigest {
				a.Differs = append(a.Differs, domain.DiffersLayerBytes)
			}
		}
	}
	if len(a.Differs) == 0 {
		return nil
	}
	a.Policy = st.IntegrityPolicy(productOfOwner(st, owner))
	var seed [8 + 1]byte
	binary.BigEndian.PutUint64(seed[:], uint64(owner.ID))
	seed[8] = byte(owner.Type)
	a.AnomalyID = uuid.NewSHA1(integrityNamespace, append(seed[:], state.AnomalyKey(a)...))
	return &a
}

// checkIntegrity compares the known layer the walk stopped at with what was applied. When its
// bytes differ it records an UploadIntegrityAnomaly on the owner's upload stream (once per
// version of the layer seen) and, if the owner's product refuses on tampering and no operator
// acknowledged that version, refuses the upload. Nothing else changes: the known layer's entry
// never counts again whatever its bytes.
func (s *Service) checkIntegrity(ctx context.Context, c Caller, owner domain.Owner, decoded *DecodedLog) error {
	for attempt := 0; attempt < s.maxAttempts; attempt++ {
		var (
			a        *domain.UploadIntegrityAnomaly
			recorded state.IntegrityAnomaly
			seen     bool
			pending  bool
			expected eventstore.ExpectedRevision
		)
		s.view.Read(func(st *state.State) {
			a = compareStop(st, owner, decoded, s.clock())
			if a == nil {
				return
			}
			recorded, seen = st.SameAnomaly(owner, *a)
			up := st.Upload(owner)
			pending, expected = up.Prepared != nil, expectedFor(up.Revision, up.Exists)
		})
		if a == nil {
			return nil
		}
		if seen {
			if a.Policy == domain.IntegrityRefuse && !recorded.Acknowledged {
				return domain.ErrIntegrityRefused
			}
			return nil
		}
		if pending {
			// The anomaly must not come between an undecided upload's prepare and its decision.
			if err := s.awaitUploadDecision(ctx, owner); err != nil {
				return err
			}
			continue
		}
		ev, err := newEvent(uuid.NewSHA1(a.AnomalyID, []byte("anomaly")), domain.EventUploadIntegrityAnomaly, *a, c.metadata())
		if err != nil {
			return err
		}
		_, err = s.appendAndWait(ctx, domain.UploadStream(owner), expected, ev)
		if errors.Is(err, eventstore.ErrWrongExpectedVersion) {
			continue
		}
		if err != nil {
			return err
		}
		s.logger.Warn("usage-log integrity anomaly", "owner", owner.String(), "layer", a.Layer,
			"differs", strings.Join(a.Differs, ","), "policy", a.Policy, "anomaly", a.AnomalyID)
		if a.Policy == domain.IntegrityRefuse {
			return domain.ErrIntegrityRefused
		}
		return nil
	}
	return domain.ErrConcurrentChange
}

// IntegrityAnomalies lists the recorded integrity anomalies, oldest first; with owner set,
// that owner's only.
func (s *Service) IntegrityAnomalies(owner *domain.Owner) []state.IntegrityAnomaly {
	var out []state.IntegrityAnomaly
	s.view.Read(func(st *state.State) {
		for _, a := range st.AllAnomalies() {
			if owner == nil || a.Owner == *owner {
				out = append(out, a)
			}
		}
	})
	return out
}

// AnomalyCount is the number of integrity anomalies recorded in the store (all instances,
// since the beginning): it only grows, so it serves as a counter.
func (s *Service) AnomalyCount() int {
	n := 0
	s.view.Read(func(st *state.State) {
		for _, list := range st.Anomalies {
			n += len(list)
		}
	})
	return n
}

// AcknowledgeAnomaly records an operator's acceptance of the version of the layer an anomaly
// saw: a product whose policy is refuse then takes uploads presenting that version again.
// Acknowledging an acknowledged anomaly changes nothing.
func (s *Service) AcknowledgeAnomaly(ctx context.Context, c Caller, id uuid.UUID, reason string) (state.IntegrityAnomaly, error) {
	reason = strings.TrimSpace(reason)
	if reason == "" || len(reason) > MaxAckReasonLength {
		return state.IntegrityAnomaly{}, fmt.Errorf("%w: a reason of 1 to %d characters is required", ErrInvalid, MaxAckReasonLength)
	}
	for attempt := 0; attempt < s.maxAttempts; attempt++ {
		var (
			a        state.IntegrityAnomaly
			ok       bool
			pending  bool
			expected eventstore.ExpectedRevision
		)
		s.view.Read(func(st *state.State) {
			a, ok = st.AnomalyByID(id)
			up := st.Upload(a.Owner)
			pending, expected = up.Prepared != nil, expectedFor(up.Revision, up.Exists)
		})
		if !ok {
			return state.IntegrityAnomaly{}, fmt.Errorf("integrity anomaly %s: %w", id, ErrNotFound)
		}
		if a.Acknowledged {
			return a, nil
		}
		if pending {
			if err := s.awaitUploadDecision(ctx, a.Owner); err != nil {
				return state.IntegrityAnomaly{}, err
			}
			continue
		}
		ev, err := newEvent(uuid.NewSHA1(id, []byte("acknowledged")), domain.EventUploadIntegrityAcknowledged,
			domain.UploadIntegrityAcknowledged{AnomalyID: id, Reason: reason, At: s.clock().UTC()}, c.metadata())
		if err != nil {
			return state.IntegrityAnomaly{}, err
		}
		_, err = s.appendAndWait(ctx, domain.UploadStream(a.Owner), expected, ev)
		if errors.Is(err, eventstore.ErrWrongExpectedVersion) {
			continue
		}
		if err != nil {
			return state.IntegrityAnomaly{}, err
		}
		s.view.Read(func(st *state.State) { a, _ = st.AnomalyByID(id) })
		return a, nil
	}
	return state.IntegrityAnomaly{}, domain.ErrConcurrentChange
}

// SetIntegrityPolicy chooses what uploads of a product's keys (and of the product) do when
// they show an integrity anomaly.
func (s *Service) SetIntegrityPolicy(ctx context.Context, c Caller, productID int64, policy domain.IntegrityPolicy) (domain.Product, error) {
	if _, err := domain.ParseIntegrityPolicy(string(policy)); err != nil {
		return domain.Product{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var ok bool
	s.view.Read(func(st *state.State) { _, ok = st.Product(productID) })
	if !ok {
		return domain.Product{}, fmt.Errorf("product %d: %w", productID, ErrNotFound)
	}
	ev, err := newEvent(uuid.New(), domain.EventProductIntegrityPolicySet,
		domain.ProductIntegrityPolicySet{ProductID: productID, Policy: policy, At: s.clock().UTC()}, c.metadata())
	if err != nil {
		return domain.Product{}, err
	}
	if _, err := s.appendAndWait(ctx, domain.ProductStream(productID), eventstore.StreamExists(), ev); err != nil {
		return domain.Product{}, err
	}
	var p domain.Product
	s.view.Read(func(st *state.State) { p, _ = st.Product(productID) })
	return p, nil
}
