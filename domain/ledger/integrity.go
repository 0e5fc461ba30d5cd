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
	p.prepared.Length = int64(p.entries[len(p.entries)-1].Length)
	p.prepared.FileDigest = hex.EncodeToString(decoded.FileDigest[:])
	if stop := decoded.Stop; stop != nil && len(p.entries) == len(decoded.Entries) {
		if _, byID, ok := st.KnownLayer(p.owner, stop.ID, stop.Legacy); ok && !byID {
			p.prepared.Base = &domain.LayerAlias{
				Legacy: hex.EncodeToString(stop.Legacy[:]),
				Layer:  hex.EncodeToString(stop.ID[:]),
				Digest: hex.EncodeToString(stop.Digest[:]),
				Length: int64(stop.Length),
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
// applied; it returns the anomaly to record (nil: nothing differs).
func compareStop(st *state.State, owner domain.Owner, decoded *DecodedLog, now time.Time) *domain.UploadIntegrityAnomaly {
	stop := decoded.Stop
	if stop == nil {
		return nil
	}
	info, byID, ok := st.KnownLayer(owner, stop.ID, stop.Legacy)
	if !ok || !byID {
		// Applied before identity version 2 and not re-identified: nothing to compare (a new
		// layer on it is examined by examineFork).
		return nil
	}
	if info.Digest == "" {
		// Recognised by its entry (examineFork), whose original digest cannot be recovered:
		// nothing to compare, but the version that was recognised stays the anomaly it was,
		// so that a product refusing on tampering keeps refusing it until it is acknowledged.
		probe := domain.UploadIntegrityAnomaly{Layer: hex.EncodeToString(stop.ID[:]), SeenDigest: hex.EncodeToString(stop.Digest[:]),
			Differs: []string{domain.DiffersEntryBytes}}
		if rec, seen := st.SameAnomaly(owner, probe); seen && rec.Recognised != "" {
			return finishAnomaly(st, owner, rec.UploadIntegrityAnomaly)
		}
		return nil
	}
	a := domain.UploadIntegrityAnomaly{Owner: owner, NewEntries: len(decoded.Entries), At: now.UTC()}
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
	// The ciphertext's length, recorded since layer lengths were (0: applied before), tells a
	// truncated or extended layer, which its digest cannot when the walk stops under new layers.
	if info.Length != 0 && stop.Length != 0 && info.Length != int64(stop.Length) {
		a.AppliedLength, a.SeenLength = info.Length, int64(stop.Length)
		a.Differs = append(a.Differs, domain.DiffersLayerLength)
	}
	if len(a.Differs) == 0 {
		return nil
	}
	return finishAnomaly(st, owner, a)
}

// finishAnomaly sets an anomaly's policy and id.
func finishAnomaly(st *state.State, owner domain.Owner, a domain.UploadIntegrityAnomaly) *domain.UploadIntegrityAnomaly {
	a.Policy = st.IntegrityPolicy(productOfOwner(st, owner))
	var seed [8 + 1]byte
	binary.BigEndian.PutUint64(seed[:], uint64(owner.ID))
	seed[8] = byte(owner.Type)
	a.AnomalyID = uuid.NewSHA1(integrityNamespace, append(seed[:], state.AnomalyKey(a)...))
	return &a
}

// checkIntegrity compares the known layer the walk stopped at with what was applied, and the
// oldest new layer with the known layers on the same known layer (examineFork). For each
// anomaly found it records an UploadIntegrityAnomaly on the owner's upload stream (once per
// version of the layer seen) and, if the owner's product refuses on tampering and no operator
// acknowledged that version, refuses the upload. Nothing else changes: a known layer's entry
// never counts again whatever its bytes, and a layer recognised as a known one becomes known.
func (s *Service) checkIntegrity(ctx context.Context, c Caller, owner domain.Owner, decoded *DecodedLog) error {
	fork, err := s.examineFork(ctx, owner, decoded)
	if err != nil {
		return err
	}
	refuse, err := s.recordAnomaly(ctx, c, owner, func(st *state.State) *domain.UploadIntegrityAnomaly {
		return compareStop(st, owner, decoded, s.clock())
	})
	if err != nil {
		return err
	}
	if fork != nil {
		refuseFork, err := s.recordAnomaly(ctx, c, owner, func(st *state.State) *domain.UploadIntegrityAnomaly {
			return fork.anomaly(st, owner, decoded, s.clock())
		})
		if err != nil {
			return err
		}
		refuse = refuse || refuseFork
	}
	if refuse {
		return domain.ErrIntegrityRefused
	}
	return nil
}

// recordAnomaly appends the anomaly find returns on the projected state, unless the same one
// is recorded; refuse says whether the owner's product refuses the upload for it.
func (s *Service) recordAnomaly(ctx context.Context, c Caller, owner domain.Owner, find func(*state.State) *domain.UploadIntegrityAnomaly) (refuse bool, err error) {
	for attempt := 0; attempt < s.maxAttempts; attempt++ {
		var (
			a        *domain.UploadIntegrityAnomaly
			recorded state.IntegrityAnomaly
			seen     bool
			pending  bool
			expected eventstore.ExpectedRevision
		)
		s.view.Read(func(st *state.State) {
			a = find(st)
			if a == nil {
				return
			}
			recorded, seen = st.SameAnomaly(owner, *a)
			up := st.Upload(owner)
			pending, expected = up.Prepared != nil, expectedFor(up.Revision, up.Exists)
		})
		if a == nil {
			return false, nil
		}
		if seen {
			return a.Policy == domain.IntegrityRefuse && !recorded.Acknowledged, nil
		}
		if pending {
			// The anomaly must not come between an undecided upload's prepare and its decision.
			if err := s.awaitUploadDecision(ctx, owner); err != nil {
				return false, err
			}
			continue
		}
		ev, err := newEvent(uuid.NewSHA1(a.AnomalyID, []byte("anomaly")), domain.EventUploadIntegrityAnomaly, *a, c.metadata())
		if err != nil {
			return false, err
		}
		_, err = s.appendAndWait(ctx, domain.UploadStream(owner), expected, ev)
		if errors.Is(err, eventstore.ErrWrongExpectedVersion) {
			continue
		}
		if err != nil {
			return false, err
		}
		s.logger.Warn("usage-log integrity anomaly", "owner", owner.String(), "layer", a.Layer,
			"differs", strings.Join(a.Differs, ","), "policy", a.Policy, "anomaly", a.AnomalyID)
		return a.Policy == domain.IntegrityRefuse, nil
	}
	return false, domain.ErrConcurrentChange
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
