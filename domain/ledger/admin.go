package ledger

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// ErrNotFound is returned by admin commands for a product, key or token that does not exist.
var ErrNotFound = errors.New("not found")

// ErrInvalid is returned by admin commands for malformed input.
var ErrInvalid = errors.New("invalid input")

// CreateProduct adds a product and returns it.
func (s *Service) CreateProduct(ctx context.Context, c Caller, name string) (domain.Product, error) {
	name = strings.TrimSpace(name)
	if name == "" || utf8.RuneCountInString(name) > domain.MaxNameLength {
		return domain.Product{}, fmt.Errorf("%w: a product name has 1 to %d characters", ErrInvalid, domain.MaxNameLength)
	}
	id, err := s.claimID(ctx, c, domain.CategoryProduct, domain.ProductStream, func(*state.State) (func(int64) (string, any), error) {
		return func(id int64) (string, any) {
			return domain.EventProductCreated, domain.ProductCreated{ProductID: id, Name: name, At: s.clock().UTC()}
		}, nil
	})
	if err != nil {
		return domain.Product{}, err
	}
	var p domain.Product
	s.view.Read(func(st *state.State) { p, _ = st.Product(id) })
	return p, nil
}

// CreateKey adds a license key with a fresh random key string to a product.
func (s *Service) CreateKey(ctx context.Context, c Caller, productID int64) (domain.LicenseKey, error) {
	var exists bool
	s.view.Read(func(st *state.State) { _, exists = st.Product(productID) })
	if !exists {
		return domain.LicenseKey{}, fmt.Errorf("product %d: %w", productID, ErrNotFound)
	}
	keyString, err := newKeyString()
	if err != nil {
		return domain.LicenseKey{}, err
	}
	id, err := s.claimID(ctx, c, domain.CategoryKey, domain.KeyStream, func(*state.State) (func(int64) (string, any), error) {
		return func(id int64) (string, any) {
			return domain.EventKeyCreated, domain.KeyCreated{KeyID: id, ProductID: productID, Key: keyString, At: s.clock().UTC()}
		}, nil
	})
	if err != nil {
		return domain.LicenseKey{}, err
	}
	var k domain.LicenseKey
	s.view.Read(func(st *state.State) { k, _ = st.Key(id) })
	return k, nil
}

// claimID appends the first event of a new numbered stream, taking the next free id. "No
// stream" as the expected revision makes the claim safe between instances. plan decides on the
// projected state: it refuses, or returns how to build the event for the id claimed. A refusal
// is given only on a projection that holds what the store holds, since what it misses (a key,
// a product) may have been created through another instance a moment ago.
func (s *Service) claimID(ctx context.Context, c Caller, category string, stream func(int64) string, plan func(st *state.State) (build func(id int64) (string, any), err error)) (int64, error) {
	var candidate int64
	synced := false
	for attempt := 0; attempt < s.maxAttempts; attempt++ {
		var build func(int64) (string, any)
		var err error
		s.view.Read(func(st *state.State) {
			if build, err = plan(st); err == nil {
				candidate = s.ids.next(category, candidate, st.MaxID(category))
			}
		})
		if err != nil && !synced {
			synced = true
			if serr := s.syncView(ctx); serr != nil {
				return 0, serr
			}
			attempt--
			continue
		}
		if err != nil {
			return 0, err
		}
		typ, data := build(candidate)
		ev, err := newEvent(uuid.New(), typ, data, c.metadata())
		if err != nil {
			return 0, err
		}
		_, err = s.appendAndWait(ctx, stream(candidate), eventstore.NoStream(), ev)
		if errors.Is(err, eventstore.ErrWrongExpectedVersion) {
			continue
		}
		if err != nil {
			return 0, err
		}
		return candidate, nil
	}
	return 0, domain.ErrConcurrentChange
}

// idClaims hands out candidate ids so that concurrent commands of one process try different
// ones instead of racing for the same; the store's "no stream" check still decides between
// processes. An id whose claim fails is skipped for good: ids are never reused, gaps are fine.
type idClaims struct {
	mu   sync.Mutex
	last map[string]int64
}

// next returns an id above the previous candidate, the largest projected id, and every id this
// process handed out in the category.
func (c *idClaims) next(category string, previous, projectedMax int64) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last == nil {
		c.last = map[string]int64{}
	}
	id := max(previous, projectedMax, c.last[category]) + 1
	c.last[category] = id
	return id
}

// newKeyString makes a Cryptolens-style key: four groups of five capital letters.
func newKeyString() (string, error) {
	const letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	buf := make([]byte, 20)
	if _, err := rand.Read(buf); err != nil {
		return "", fmt.Errorf("random key: %w", err)
	}
	var b strings.Builder
	for i, r := range buf {
		if i > 0 && i%5 == 0 {
			b.WriteByte('-')
		}
		// 256 is not a multiple of 26; the slight bias does not matter for an identifier
		// that is also guarded by the product it belongs to.
		b.WriteByte(letters[int(r)%len(letters)])
	}
	return b.String(), nil
}

// TokenSpec describes a token to create.
type TokenSpec struct {
	Name        string
	Methods     []domain.Method
	ProductLock int64
	KeyLock     int64
	FeatureLock int64
}

// CreateToken adds an access token and returns it with its secret, which is shown only now:
// the ledger keeps only its hash.
func (s *Service) CreateToken(ctx context.Context, c Caller, spec TokenSpec) (domain.Token, string, error) {
	if len(spec.Methods) == 0 {
		return domain.Token{}, "", fmt.Errorf("%w: a token needs at least one method", ErrInvalid)
	}
	if spec.FeatureLock < 0 {
		return domain.Token{}, "", fmt.Errorf("%w: the feature lock is not negative", ErrInvalid)
	}
	if spec.KeyLock < -1 {
		return domain.Token{}, "", fmt.Errorf("%w: key lock %d: a key lock is -1, 0 or a key id", ErrInvalid, spec.KeyLock)
	}
	if spec.ProductLock < 0 {
		return domain.Token{}, "", fmt.Errorf("%w: product lock %d: a product lock is 0 or a product id", ErrInvalid, spec.ProductLock)
	}
	var problem error
	s.view.Read(func(st *state.State) {
		if spec.ProductLock != 0 {
			if _, ok := st.Product(spec.ProductLock); !ok {
				problem = fmt.Errorf("product lock %d: %w", spec.ProductLock, ErrNotFound)
			}
		}
		if spec.KeyLock > 0 {
			if _, ok := st.Key(spec.KeyLock); !ok {
				problem = fmt.Errorf("key lock %d: %w", spec.KeyLock, ErrNotFound)
			}
		}
	})
	if problem != nil {
		return domain.Token{}, "", problem
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return domain.Token{}, "", fmt.Errorf("random token: %w", err)
	}
	secret := base64.RawURLEncoding.EncodeToString(raw)
	hash := domain.HashSecret(secret)
	id := uuid.New()
	methods := append([]domain.Method(nil), spec.Methods...)
	sort.Slice(methods, func(i, j int) bool { return methods[i] < methods[j] })
	ev, err := newEvent(uuid.New(), domain.EventTokenCreated, domain.TokenCreated{
		TokenID: id, Name: spec.Name, SecretHash: hex.EncodeToString(hash[:]), Methods: methods,
		ProductLock: spec.ProductLock, KeyLock: spec.KeyLock, FeatureLock: spec.FeatureLock, At: s.clock().UTC(),
	}, c.metadata())
	if err != nil {
		return domain.Token{}, "", err
	}
	if _, err := s.appendAndWait(ctx, domain.TokenStream(id), eventstore.NoStream(), ev); err != nil {
		return domain.Token{}, "", err
	}
	var tok domain.Token
	s.view.Read(func(st *state.State) { tok = st.Tokens[id] })
	return tok, secret, nil
}

// RevokeToken ends a token's use. Revoking a revoked token changes nothing.
func (s *Service) RevokeToken(ctx context.Context, c Caller, id uuid.UUID) error {
	var tok domain.Token
	var ok bool
	s.view.Read(func(st *state.State) { tok, ok = st.Tokens[id] })
	if !ok {
		return fmt.Errorf("token %s: %w", id, ErrNotFound)
	}
	if tok.Revoked {
		return nil
	}
	ev, err := newEvent(uuid.New(), domain.EventTokenRevoked, domain.TokenRevoked{TokenID: id, At: s.clock().UTC()}, c.metadata())
	if err != nil {
		return err
	}
	_, err = s.appendAndWait(ctx, domain.TokenStream(id), eventstore.StreamExists(), ev)
	return err
}

// Products lists the products by id.
func (s *Service) Products() []domain.Product {
	var out []domain.Product
	s.view.Read(func(st *state.State) {
		for _, p := range st.Products {
			out = append(out, p)
		}
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Keys lists the license keys of a product (0: of every product) by id.
func (s *Service) Keys(productID int64) []domain.LicenseKey {
	var out []domain.LicenseKey
	s.view.Read(func(st *state.State) {
		for _, k := range st.Keys {
			if productID == 0 || k.ProductID == productID {
				out = append(out, k)
			}
		}
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Tokens lists the tokens by creation time.
func (s *Service) Tokens() []domain.Token {
	var out []domain.Token
	s.view.Read(func(st *state.State) {
		for _, t := range st.Tokens {
			out = append(out, t)
		}
	})
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID.String() < out[j].ID.String()
	})
	return out
}
