package domain

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Event types, as stored in the event store.
const (
	EventProductCreated    = "ProductCreated"
	EventKeyCreated        = "KeyCreated"
	EventTokenCreated      = "TokenCreated"
	EventTokenRevoked      = "TokenRevoked"
	EventDataObjectAdded   = "DataObjectAdded"
	EventIntValueSet       = "IntValueSet"
	EventStringValueSet    = "StringValueSet"
	EventIncrementApplied  = "IncrementApplied"
	EventDecrementApplied  = "DecrementApplied"
	EventDataObjectRemoved = "DataObjectRemoved"
	EventUploadPrepared    = "UploadPrepared"
	EventUploadCommitted   = "UploadCommitted"
	EventUploadAborted     = "UploadAborted"
)

// Stream names. A stream's category is the text before its first dash, as in KurrentDB.
const (
	CategoryProduct    = "product"
	CategoryKey        = "key"
	CategoryToken      = "token"
	CategoryDataObject = "dataobject"
	CategoryUpload     = "upload"
	// CategoryViewer holds the console's read-only viewer credentials (package domain/viewer).
	CategoryViewer = "viewer"
)

// StreamCategories lists every category Tally writes, for backends that share a store with
// others and must filter.
var StreamCategories = []string{CategoryProduct, CategoryKey, CategoryToken, CategoryDataObject, CategoryUpload, CategoryViewer}

// ProductStream is the stream of a product.
func ProductStream(id int64) string { return CategoryProduct + "-" + strconv.FormatInt(id, 10) }

// KeyStream is the stream of a license key.
func KeyStream(id int64) string { return CategoryKey + "-" + strconv.FormatInt(id, 10) }

// TokenStream is the stream of an access token.
func TokenStream(id uuid.UUID) string { return CategoryToken + "-" + id.String() }

// DataObjectStream is the stream of a data object.
func DataObjectStream(id int64) string { return CategoryDataObject + "-" + strconv.FormatInt(id, 10) }

// UploadStream is the per-owner stream whose UploadPrepared / UploadCommitted / UploadAborted
// events make a multi-object upload all or nothing (docs/uploads.md).
func UploadStream(o Owner) string {
	return fmt.Sprintf("%s-%d.%d", CategoryUpload, o.Type, o.ID)
}

// ParseDataObjectStream returns the id of a data object's stream.
func ParseDataObjectStream(stream string) (int64, bool) {
	rest, ok := strings.CutPrefix(stream, CategoryDataObject+"-")
	if !ok {
		return 0, false
	}
	// Every event of a replay asks this: the usual short positive id without strconv.
	if len(rest) > 0 && len(rest) < 19 {
		var id int64
		i := 0
		for ; i < len(rest) && rest[i] >= '0' && rest[i] <= '9'; i++ {
			id = id*10 + int64(rest[i]-'0')
		}
		if i == len(rest) {
			return id, true
		}
	}
	id, err := strconv.ParseInt(rest, 10, 64)
	return id, err == nil
}

// ParseUploadStream returns the owner of an upload stream.
func ParseUploadStream(stream string) (Owner, bool) {
	var o Owner
	var t int
	if _, err := fmt.Sscanf(stream, CategoryUpload+"-%d.%d", &t, &o.ID); err != nil {
		return Owner{}, false
	}
	o.Type = OwnerType(t)
	return o, UploadStream(o) == stream
}

// StreamCategory returns the category of a stream name.
func StreamCategory(stream string) string {
	c, _, _ := strings.Cut(stream, "-")
	return c
}

// Metadata says who made a change and from where; it is stored as every event's metadata.
type Metadata struct {
	TokenID    uuid.UUID `json:"tokenId,omitempty"` // uuid.Nil for the admin credential
	Admin      bool      `json:"admin,omitempty"`
	RequestID  string    `json:"requestId,omitempty"`
	ClientAddr string    `json:"clientAddr,omitempty"`
}

// ProductCreated starts a product stream.
type ProductCreated struct {
	ProductID int64     `json:"productId"`
	Name      string    `json:"name"`
	At        time.Time `json:"at"`
}

// KeyCreated starts a license-key stream.
type KeyCreated struct {
	KeyID     int64     `json:"keyId"`
	ProductID int64     `json:"productId"`
	Key       string    `json:"key"`
	At        time.Time `json:"at"`
}

// TokenCreated starts a token stream. The secret itself is never recorded.
type TokenCreated struct {
	TokenID     uuid.UUID `json:"tokenId"`
	Name        string    `json:"name,omitempty"`
	SecretHash  string    `json:"secretHash"` // hex SHA-256
	Methods     []Method  `json:"methods"`
	ProductLock int64     `json:"productLock"`
	KeyLock     int64     `json:"keyLock"`
	FeatureLock int64     `json:"featureLock"`
	At          time.Time `json:"at"`
}

// TokenRevoked ends a token's use.
type TokenRevoked struct {
	TokenID uuid.UUID `json:"tokenId"`
	At      time.Time `json:"at"`
}

// DataObjectAdded starts a data-object stream.
type DataObjectAdded struct {
	ObjectID    int64     `json:"objectId"`
	Owner       Owner     `json:"owner"`
	Name        string    `json:"name"`
	StringValue string    `json:"stringValue"`
	IntValue    int32     `json:"intValue"`
	At          time.Time `json:"at"`
}

// IntValueSet records SetIntValue.
type IntValueSet struct {
	ObjectID int64     `json:"objectId"`
	Before   int32     `json:"before"`
	After    int32     `json:"after"`
	At       time.Time `json:"at"`
}

// StringValueSet records SetStringValue.
type StringValueSet struct {
	ObjectID int64     `json:"objectId"`
	Before   string    `json:"before"`
	After    string    `json:"after"`
	At       time.Time `json:"at"`
}

// UploadSource ties a change to the usage-log layer it came from.
type UploadSource struct {
	UploadID     uuid.UUID `json:"uploadId"`
	Layer        string    `json:"layer"`        // hex layer identity
	LogTimestamp time.Time `json:"logTimestamp"` // when the License Server flushed the layer
	// Anomaly says what was odd about the layer's timestamp ("" when nothing was).
	Anomaly string `json:"anomaly,omitempty"`
	// Entry is the layer's position in its upload's UploadPrepared.Layers, plus one (0 when not
	// recorded). The compact encoding stores Entry instead of Layer, which UploadPrepared holds
	// already (UploadPrepared.EntryLayer; docs/encoding.md).
	Entry int `json:"entry,omitempty"`
}

// ValueChanged is the body of IncrementApplied and DecrementApplied. Amount is positive; the
// event type gives the direction.
type ValueChanged struct {
	ObjectID int64     `json:"objectId"`
	Amount   int64     `json:"amount"`
	Before   int32     `json:"before"`
	After    int32     `json:"after"`
	At       time.Time `json:"at"`
	// Upload is set when the change came from an uploaded usage log. Such a change counts only
	// once its upload is committed.
	Upload *UploadSource `json:"upload,omitempty"`
	// Correction is the reason of a compensating change made by an operator.
	Correction string `json:"correction,omitempty"`
}

// DataObjectRemoved ends a data object.
type DataObjectRemoved struct {
	ObjectID int64     `json:"objectId"`
	At       time.Time `json:"at"`
}

// UploadPrepared opens a multi-object upload on its owner's upload stream. The changes it lists
// then go to the data-object streams; they count once UploadCommitted follows, and never if
// UploadAborted does. Exactly one of the two wins, by expected revision on this stream.
type UploadPrepared struct {
	UploadID uuid.UUID `json:"uploadId"`
	Owner    Owner     `json:"owner"`
	Layers   []string  `json:"layers"` // hex layer identities, oldest first
	// Timestamps are the layers' log timestamps (Unix seconds), in the order of Layers.
	Timestamps []int64 `json:"timestamps"`
	// BaseDepth is the depth of the newest layer already applied when the walk stopped (0 when
	// the whole file was new): Layers[i] sits at depth BaseDepth+i+1.
	BaseDepth int64         `json:"baseDepth"`
	Changes   []PlannedStep `json:"changes"`
	Instance  uuid.UUID     `json:"instance"` // the Tally process that prepared it
	At        time.Time     `json:"at"`
	// Resolution is set when the upload carries out an operator's decision on a refused log
	// (UploadResolutionDecided); Skipped then lists the entries of Layers left out. Skipped
	// layers become known on commit like the others, and count nothing.
	Resolution *uuid.UUID     `json:"resolution,omitempty"`
	Skipped    []SkippedEntry `json:"skipped,omitempty"`

	// Digests are the layers' digests (hex), in the order of Layers; FileDigest is SHA-256 of
	// the whole log uploaded, the whole bytes of its newest layer; Base names the known layer
	// the walk stopped at when it was known by its legacy identity only. All three are absent
	// from events written before identity version 2 (domain/integrity.go).
	Digests    []string    `json:"digests,omitempty"`
	FileDigest string      `json:"fileDigest,omitempty"`
	Base       *LayerAlias `json:"base,omitempty"`
}

// PlannedStep is one data object's share of an upload: how many events it gets, appended after
// revision FromRevision.
type PlannedStep struct {
	ObjectID     int64  `json:"objectId"`
	FromRevision uint64 `json:"fromRevision"`
	Events       int    `json:"events"`
}

// UploadCommitted makes an upload's changes count.
type UploadCommitted struct {
	UploadID uuid.UUID `json:"uploadId"`
	At       time.Time `json:"at"`
}

// UploadAborted discards an upload's changes.
type UploadAborted struct {
	UploadID uuid.UUID `json:"uploadId"`
	Reason   string    `json:"reason"`
	At       time.Time `json:"at"`
}

// Event types of refused uploads and of an operator's resolution of them (docs/uploads.md,
// "Refused logs").
const (
	EventUploadRefused           = "UploadRefused"
	EventUploadRefusalRepeated   = "UploadRefusalRepeated"
	EventUploadResolutionDecided = "UploadResolutionDecided"
)

// Refusal reasons recorded on UploadRefused: each names a rule the log's content broke.
const (
	RefusalCorrupted     = "corrupted"
	RefusalTooManyNew    = "too-many-new-entries"
	RefusalInvalidObject = "invalid-object" // unknown, removed, another owner's, or not the Id asked for
	RefusalFeatureLock   = "feature-lock"
	RefusalInt32Overflow = "int32-overflow"
	RefusalPermission    = "permission" // the token may not change values in the entry's direction
)

// RefusedEntry is the first entry of a refused log that broke a rule. For a layer that could
// not be decrypted, or the first layer past the limit on new entries, only Layer and Depth are
// known.
type RefusedEntry struct {
	Layer string `json:"layer"` // hex layer identity
	// Index is the entry's position among the log's new entries, oldest first (0 based), or
	// -1 when unknown.
	Index     int   `json:"index"`
	ObjectID  int64 `json:"objectId,omitempty"`
	Decrement bool  `json:"decrement,omitempty"`
	Amount    int64 `json:"amount,omitempty"`
}

// UploadRefused records, on the owner's upload stream, an upload refused after authentication
// for its content. Retries of the same log version, and newer versions refused for the same
// reason soon after, are counted by UploadRefusalRepeated, not recorded again.
type UploadRefused struct {
	RefusalID uuid.UUID `json:"refusalId"`
	Reason    string    `json:"reason"`  // one of the Refusal* codes
	Message   string    `json:"message"` // the Cryptolens message the caller got
	// NewestLayer is the hex identity of the log's outermost layer ("" if even its header is
	// unreadable); together with Reason it names the refused log version.
	NewestLayer string `json:"newestLayer"`
	// NewEntries is how many layers of the log were new; for too many new entries, the count
	// at which the decoder stopped (the limit plus one), a lower bound.
	NewEntries int           `json:"newEntries"`
	Offending  *RefusedEntry `json:"offending,omitempty"`
	At         time.Time     `json:"at"`
}

// UploadRefusalRepeated counts further refusals of a recorded refused log for the same reason:
// Repeats more since the last record of it, of the same version or of newer versions of the
// log (which the License Server sends as it grows the file). When one of them was newer, Newest
// describes the newest refused version seen, which the record follows from then on.
type UploadRefusalRepeated struct {
	RefusalID uuid.UUID      `json:"refusalId"`
	Repeats   int64          `json:"repeats"`
	Newest    *UploadRefused `json:"newest,omitempty"`
	At        time.Time      `json:"at"`
}

// Resolution modes an operator can choose for a refused log.
const (
	// ResolveInChunks applies the log's new entries oldest first in all-or-nothing chunks of
	// at most 1000 entries.
	ResolveInChunks = "in-chunks"
	// ResolveSkipEntries applies every new entry except those that break a rule, which are
	// recorded as skipped and never counted or offered again.
	ResolveSkipEntries = "skip-entries"
)

// UploadResolutionDecided records an operator's decision on a refused log. It is carried out
// on the next upload of that log version or a newer one (which the License Server sends by
// itself), by whichever instance receives it, for the entries up to NewestLayer.
type UploadResolutionDecided struct {
	ResolutionID uuid.UUID `json:"resolutionId"`
	RefusalID    uuid.UUID `json:"refusalId"`
	NewestLayer  string    `json:"newestLayer"` // of the refused version
	Mode         string    `json:"mode"`        // ResolveInChunks or ResolveSkipEntries
	Reason       string    `json:"reason"`      // the operator's, required
	DecidedBy    string    `json:"decidedBy"`   // the operator's name as they gave it
	At           time.Time `json:"at"`
}

// SkippedEntry is an entry of a resolved log that an operator's skip-entries decision left
// out: recorded with its layer, so it is known (never offered again) and never counted.
type SkippedEntry struct {
	// Index is the entry's position in UploadPrepared.Layers.
	Index     int    `json:"index"`
	ObjectID  int64  `json:"objectId"`
	Decrement bool   `json:"decrement,omitempty"`
	Amount    int64  `json:"amount"`
	Reason    string `json:"reason"`  // one of the Refusal* codes
	Message   string `json:"message"` // the refusal it would have met
}
