package domain

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// OwnerType is a Cryptolens "referencer type": who a data object belongs to.
type OwnerType int

const (
	OwnerUser    OwnerType = 0 // the vendor's account
	OwnerProduct OwnerType = 1
	OwnerKey     OwnerType = 2 // a license key, by its numeric key id
)

// ParseOwnerType accepts the three referencer types Cryptolens knows.
func ParseOwnerType(v int64) (OwnerType, error) {
	switch OwnerType(v) {
	case OwnerUser, OwnerProduct, OwnerKey:
		return OwnerType(v), nil
	}
	return 0, ErrReferencerType
}

// Owner identifies who a data object belongs to. The user owner has ID 0: one Tally serves one
// vendor account.
type Owner struct {
	Type OwnerType `json:"type"`
	ID   int64     `json:"id"`
}

func (o Owner) String() string { return fmt.Sprintf("%d-%d", o.Type, o.ID) }

// Limits of a data object's fields, as Cryptolens sets them.
const (
	MaxNameLength        = 100
	MaxStringValueLength = 10000
)

// Product is something the vendor licenses.
type Product struct {
	ID      int64     `json:"id"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// OnTamper is what an upload showing an integrity anomaly does ("" is the default,
	// DefaultIntegrityPolicy).
	OnTamper IntegrityPolicy `json:"onTamper,omitempty"`
}

// LicenseKey is one customer's license of a product. Key is the Cryptolens-style key string
// (ABCDE-FGHIJ-KLMNO-PQRST); ID is its numeric key id.
type LicenseKey struct {
	ID        int64     `json:"id"`
	ProductID int64     `json:"productId"`
	Key       string    `json:"key"`
	Created   time.Time `json:"created"`
}

// NormalizeKeyString makes key strings compare as Cryptolens compares them: case and
// surrounding space do not matter.
func NormalizeKeyString(key string) string { return strings.ToUpper(strings.TrimSpace(key)) }

// DataObject is a named value that counts something for its owner.
type DataObject struct {
	ID          int64  `json:"id"`
	Owner       Owner  `json:"owner"`
	Name        string `json:"name"`
	StringValue string `json:"stringValue"`
	IntValue    int32  `json:"intValue"`
	// Revision is the revision of the object's stream as last projected.
	Revision uint64 `json:"revision"`
}

// ValidateName checks a data object name against Cryptolens's limit.
func ValidateName(name string) error {
	if utf8.RuneCountInString(name) > MaxNameLength {
		return ErrNameTooLong
	}
	return nil
}

// ValidateStringValue checks a string value against Cryptolens's limit.
func ValidateStringValue(v string) error {
	if utf8.RuneCountInString(v) > MaxStringValueLength {
		return ErrStringValueTooLong
	}
	return nil
}

// Direction of a change to an int value.
type Direction int

const (
	Increment Direction = 1
	Decrement Direction = -1
)

func (d Direction) String() string {
	if d == Decrement {
		return "decrement"
	}
	return "increment"
}

// EventType is the type of the event that records a change in direction d.
func (d Direction) EventType() string {
	if d == Decrement {
		return EventDecrementApplied
	}
	return EventIncrementApplied
}

// Method is the data-object method that changes a value in direction d.
func (d Direction) Method() Method {
	if d == Decrement {
		return MethodDecrementIntValue
	}
	return MethodIncrementIntValue
}

// DirectionOf is the direction of an IncrementApplied or DecrementApplied event: its
// ValueChanged.Amount is positive, the event type gives the sign.
func DirectionOf(eventType string) Direction {
	if eventType == EventDecrementApplied {
		return Decrement
	}
	return Increment
}

// Method is a data-object method a token may be allowed to call.
type Method string

const (
	MethodAddDataObject     Method = "AddDataObject"
	MethodListDataObjects   Method = "ListDataObjects"
	MethodSetIntValue       Method = "SetIntValue"
	MethodSetStringValue    Method = "SetStringValue"
	MethodIncrementIntValue Method = "IncrementIntValue"
	MethodDecrementIntValue Method = "DecrementIntValue"
	MethodRemoveDataObject  Method = "RemoveDataObject"
)

// AllMethods lists every method a token can be granted, in Cryptolens's order.
var AllMethods = []Method{
	MethodAddDataObject, MethodListDataObjects, MethodSetIntValue, MethodSetStringValue,
	MethodIncrementIntValue, MethodDecrementIntValue, MethodRemoveDataObject,
}

// ParseMethod accepts a method name in any case.
func ParseMethod(s string) (Method, error) {
	for _, m := range AllMethods {
		if strings.EqualFold(string(m), strings.TrimSpace(s)) {
			return m, nil
		}
	}
	return "", fmt.Errorf("unknown method %q", s)
}

// Token is an access token. Only a hash of its secret is ever kept.
type Token struct {
	ID          uuid.UUID `json:"id"`
	Name        string    `json:"name,omitempty"`
	SecretHash  [32]byte  `json:"secretHash"`
	Methods     []Method  `json:"methods"`
	ProductLock int64     `json:"productLock"` // 0: any product
	KeyLock     int64     `json:"keyLock"`     // 0: none; <0: key-specific methods only; >0: that key id only
	FeatureLock int64     `json:"featureLock"` // 0: none; else the largest amount of one change
	Revoked     bool      `json:"revoked"`
	Created     time.Time `json:"created"`
}

// HashSecret is how token secrets are kept at rest.
func HashSecret(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }

// SecretMatches compares a presented secret with the stored hash in constant time.
func (t Token) SecretMatches(secret string) bool {
	h := HashSecret(secret)
	return subtle.ConstantTimeCompare(h[:], t.SecretHash[:]) == 1
}

// Allows reports whether the token may call m.
func (t Token) Allows(m Method) bool {
	for _, have := range t.Methods {
		if have == m {
			return true
		}
	}
	return false
}

// AllowsAny reports whether the token may call at least one of ms.
func (t Token) AllowsAny(ms ...Method) bool {
	for _, m := range ms {
		if t.Allows(m) {
			return true
		}
	}
	return false
}

// CheckAmount applies the feature lock to the amount of one increment or decrement.
func (t Token) CheckAmount(amount int64) error {
	if t.FeatureLock != 0 && amount > t.FeatureLock {
		return ErrFeatureLock
	}
	return nil
}

// CheckProduct applies the product lock.
func (t Token) CheckProduct(productID int64) error {
	if t.ProductLock != 0 && t.ProductLock != productID {
		return ErrProductNotFound
	}
	return nil
}

// CheckKeySpecific decides whether the token may use a key-specific (…ToKey) method: a positive
// key lock names one key for other APIs and is refused here, as Cryptolens does.
func (t Token) CheckKeySpecific() error {
	if t.KeyLock > 0 {
		return ErrKeyNotFound
	}
	return nil
}

// CheckGeneral decides whether the token may address an owner through the general methods
// (ReferencerType, ReferencerId). A negative key lock confines the token to key-specific
// methods, so it can never reach another customer's objects.
func (t Token) CheckGeneral(o Owner, productOf func(keyID int64) (int64, bool)) error {
	if t.KeyLock < 0 {
		return ErrAccessDenied
	}
	switch o.Type {
	case OwnerUser:
		if t.ProductLock != 0 || t.KeyLock != 0 {
			return ErrAccessDenied
		}
	case OwnerProduct:
		if err := t.CheckProduct(o.ID); err != nil {
			return err
		}
		if t.KeyLock != 0 {
			return ErrAccessDenied
		}
	case OwnerKey:
		if t.KeyLock > 0 && t.KeyLock != o.ID {
			return ErrKeyNotFound
		}
		pid, ok := productOf(o.ID)
		if !ok {
			return ErrKeyNotFound
		}
		if err := t.CheckProduct(pid); err != nil {
			return err
		}
	}
	return nil
}

// ApplyChange computes the value after adding amount in direction d, refusing a result outside
// int32 and, when bounded, a result past the bound (an upper bound for increments, a lower one
// for decrements; both inclusive).
func ApplyChange(current int32, d Direction, amount int64, bounded bool, bound int64) (int32, error) {
	next := int64(current) + int64(d)*amount
	if next > math.MaxInt32 || next < math.MinInt32 {
		return current, ErrInt32Limit
	}
	if bounded && ((d == Increment && next > bound) || (d == Decrement && next < bound)) {
		return current, ErrBoundReached
	}
	return int32(next), nil
}
