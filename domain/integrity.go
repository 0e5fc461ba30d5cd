package domain

import (
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Events of usage-log integrity (docs/uploads.md, "Tampering").
const (
	// EventUploadIntegrityAnomaly is appended to an owner's upload stream when an upload
	// presents a layer already applied with bytes that differ from the applied ones.
	EventUploadIntegrityAnomaly = "UploadIntegrityAnomaly"
	// EventUploadIntegrityAcknowledged records an operator's decision to accept the version of
	// a layer an anomaly saw, so that a product refusing on tampering takes that log again.
	EventUploadIntegrityAcknowledged = "UploadIntegrityAcknowledged"
	// EventProductIntegrityPolicySet is appended to a product's stream to choose what an
	// upload that shows an anomaly does.
	EventProductIntegrityPolicySet = "ProductIntegrityPolicySet"
)

// IntegrityPolicy is what Tally does with an upload that shows an integrity anomaly.
type IntegrityPolicy string

const (
	// IntegrityApply records the anomaly and applies the upload's new entries (the entries of
	// the known layer never count again, whatever their bytes). The default.
	IntegrityApply IntegrityPolicy = "apply"
	// IntegrityRefuse records the anomaly and refuses the upload until an operator
	// acknowledges the anomaly.
	IntegrityRefuse IntegrityPolicy = "refuse"
)

// DefaultIntegrityPolicy is the policy of a product that never set one.
const DefaultIntegrityPolicy = IntegrityApply

// ParseIntegrityPolicy accepts "apply" and "refuse".
func ParseIntegrityPolicy(s string) (IntegrityPolicy, error) {
	switch p := IntegrityPolicy(s); p {
	case IntegrityApply, IntegrityRefuse:
		return p, nil
	}
	return "", fmt.Errorf("integrity policy %q: want apply or refuse", s)
}

// ErrIntegrityRefused refuses an upload that presents a modified version of a layer already
// applied, for a product whose policy is refuse, until an operator acknowledges the anomaly.
var ErrIntegrityRefused = &Error{KindRefused, "The log does not match the entries already uploaded. Contact the vendor."}

// What an anomaly found different (UploadIntegrityAnomaly.Differs).
const (
	// DiffersEntryBytes: the IV, EncryptedKey or first bytes of the EncryptedObject differ,
	// so the layer may decrypt to another entry.
	DiffersEntryBytes = "entry-bytes"
	// DiffersLayerBytes: the layer's whole bytes (the log, when the layer is its outermost)
	// differ from the whole bytes it had when applied.
	DiffersLayerBytes = "layer-bytes"
	// DiffersSuspectedReplay: the walk stopped at a layer applied before identity version 2
	// (known by its IV and wrapped key only), the new layer above it takes a depth at which the
	// owner already has an applied layer before version 2, and the owner has other layers at
	// the stop layer's depth (several logs), so the fork rule cannot say more: a copy of an old
	// layer re-encrypted with another entry, which Tally cannot recognise, or a layer of a
	// second log. The new entries are new to Tally; the anomaly is the evidence
	// (docs/uploads.md, "Forks").
	DiffersSuspectedReplay = "suspected-replay"
	// DiffersFork: the upload's oldest new layer sits directly on a known layer that already
	// has a different known layer above it. A log is linear (each layer wraps exactly the
	// previous file), so one log never holds two layers on the same layer: the log was forked
	// (an old version continued elsewhere, restored from a backup, or layers fabricated on
	// it). Layer is the new layer, Successor the known one (docs/uploads.md, "Tampering").
	DiffersFork = "fork"
	// DiffersLayerLength: the layer's ciphertext (EncryptedObject) has another length than
	// when it was applied: the layer was truncated or extended, which its digest cannot show
	// when the walk stops at it under new layers (it reads the first bytes only).
	DiffersLayerLength = "layer-length"
)

// How an anomaly recognised a new-looking layer as a known one applied before identity
// version 2 (UploadIntegrityAnomaly.Recognised).
const (
	// RecognisedByIV: the layer's legacy identity, recomputed with the IV that makes its
	// first block decrypt to the entry recorded when the layer was applied, is the recorded
	// one. Only the IV was changed in the bytes the entry decrypts from: a proof.
	RecognisedByIV = "original-iv"
	// RecognisedByEntry: the layer decrypts to the entry and log timestamp recorded for the
	// only known layer on the same known layer: a re-encryption of it with another IV.
	RecognisedByEntry = "same-entry"
)

// UploadIntegrityAnomaly records that an upload presented a known layer whose bytes differ
// from the ones applied. Digests are lower-case hex SHA-256; "Applied" ones are those recorded
// when the layer was applied, "Seen" ones those of this upload.
type UploadIntegrityAnomaly struct {
	AnomalyID uuid.UUID `json:"anomalyId"`
	Owner     Owner     `json:"owner"`
	// Layer is the known layer's identity (SHA-256 of its EncryptedKey).
	Layer string `json:"layer"`
	// Depth is the layer's depth in its log (1 for the innermost).
	Depth int64 `json:"depth"`
	// Differs lists what differs (DiffersEntryBytes, DiffersLayerBytes).
	Differs []string `json:"differs"`
	// AppliedDigest and SeenDigest are the layer digests (IV, EncryptedKey, first bytes of
	// the EncryptedObject).
	AppliedDigest string `json:"appliedDigest"`
	SeenDigest    string `json:"seenDigest"`
	// AppliedLayerDigest and SeenLayerDigest are SHA-256 of the layer's whole bytes, set when
	// both are known (the layer was the outermost of its log when applied and now).
	AppliedLayerDigest string `json:"appliedLayerDigest,omitempty"`
	SeenLayerDigest    string `json:"seenLayerDigest,omitempty"`
	// NewEntries is how many new entries the upload held above the layer.
	NewEntries int `json:"newEntries"`
	// Policy is what Tally did with the upload.
	Policy IntegrityPolicy `json:"policy"`
	At     time.Time       `json:"at"`
	// Alias, when set, recognised the layer as one applied before identity version 2 (known
	// by its legacy identity only), how Recognised says: from this event on it is known by
	// its identity too, and its entry never counts again (docs/uploads.md, "Tampering").
	Alias      *LayerAlias `json:"alias,omitempty"`
	Recognised string      `json:"recognised,omitempty"`
	// Successor is, for a fork, the identity of the known layer the new one competes with.
	Successor string `json:"successor,omitempty"`
	// AppliedLength and SeenLength are the layer's EncryptedObject lengths, set when they
	// differ (DiffersLayerLength).
	AppliedLength int64 `json:"appliedLength,omitempty"`
	SeenLength    int64 `json:"seenLength,omitempty"`
}

// UploadIntegrityAcknowledged accepts the version of the layer an anomaly saw.
type UploadIntegrityAcknowledged struct {
	AnomalyID uuid.UUID `json:"anomalyId"`
	Reason    string    `json:"reason"`
	At        time.Time `json:"at"`
}

// ProductIntegrityPolicySet chooses a product's integrity policy.
type ProductIntegrityPolicySet struct {
	ProductID int64           `json:"productId"`
	Policy    IntegrityPolicy `json:"policy"`
	At        time.Time       `json:"at"`
}

// LayerAlias gives the identity and digest of a layer applied before identity version 2,
// which its events name by the legacy identity only (docs/uploads.md, "Tampering").
type LayerAlias struct {
	Legacy string `json:"legacy"`
	Layer  string `json:"layer"`
	Digest string `json:"digest"`
	// Length is the layer's EncryptedObject length (0: not recorded).
	Length int64 `json:"length,omitempty"`
}
