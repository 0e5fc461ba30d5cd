// Package viewer holds the read-only viewer credentials of the console and the audit API: a
// credential the admin creates for people who must see everything (billing, support) and
// change nothing. Credentials live as events on one stream of the event store, so every
// instance on a shared store (KurrentDB) accepts the same ones; only a hash of the secret is
// recorded, and the secret is shown once, when it is created.
package viewer

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// Stream is the stream holding every viewer credential's events. One stream (not one per
// credential) lets a server check a presented secret with a single stream read.
const Stream = "viewer-credentials"

// Event types of the viewer stream.
const (
	EventCreated = "ViewerCredentialCreated"
	EventRevoked = "ViewerCredentialRevoked"
)

// SecretPrefix starts every viewer secret, so that one pasted in the wrong place is recognised.
const SecretPrefix = "tv_"

// MaxNameLength bounds a credential's name.
const MaxNameLength = 100

// Created records a new viewer credential. The secret itself is never recorded.
type Created struct {
	ID         uuid.UUID  `json:"id"`
	Name       string     `json:"name"`
	SecretHash string     `json:"secretHash"` // hex SHA-256
	Expires    *time.Time `json:"expires,omitempty"`
	At         time.Time  `json:"at"`
}

// Revoked ends a viewer credential's use.
type Revoked struct {
	ID uuid.UUID `json:"id"`
	At time.Time `json:"at"`
}

// Credential is a viewer credential as it stands: never its secret.
type Credential struct {
	ID      uuid.UUID  `json:"id"`
	Name    string     `json:"name"`
	Expires *time.Time `json:"expires,omitempty"`
	Revoked bool       `json:"revoked"`
	Created time.Time  `json:"created"`
	hash    [32]byte
}

// Errors of Authenticate and the admin's commands.
var (
	// ErrUnknown: no credential has this secret (or the secret is not a viewer's).
	ErrUnknown = errors.New("unknown viewer credential")
	// ErrExpired: the credential's expiry has passed.
	ErrExpired = errors.New("the viewer credential has expired")
	// ErrRevoked: the admin revoked the credential.
	ErrRevoked = errors.New("the viewer credential was revoked")
	// ErrInvalid: a bad name or expiry.
	ErrInvalid = errors.New("invalid viewer credential")
	// ErrNotFound: no credential has this id.
	ErrNotFound = errors.New("no such viewer credential")
)

// Store is what the credentials need of the event store.
type Store interface {
	Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error)
	ReadStream(ctx context.Context, stream string, dir eventstore.Direction, from uint64, max int) ([]eventstore.RecordedEvent, error)
}

// Service creates, lists, revokes and checks viewer credentials.
type Service struct {
	store Store
	now   func() time.Time
}

// New returns the service on a store; now defaults to time.Now.
func New(store Store, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{store: store, now: now}
}

// Create records a new credential and returns it with its secret, which is not kept.
// expires is optional (nil: the credential lasts until revoked).
func (s *Service) Create(ctx context.Context, meta domain.Metadata, name string, expires *time.Time) (Credential, string, error) {
	name = strings.TrimSpace(name)
	if name == "" || len(name) > MaxNameLength {
		return Credential{}, "", fmt.Errorf("%w: a name of 1 to %d characters is required", ErrInvalid, MaxNameLength)
	}
	now := s.now().UTC()
	if expires != nil && !expires.After(now) {
		return Credential{}, "", fmt.Errorf("%w: the expiry is in the past", ErrInvalid)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return Credential{}, "", fmt.Errorf("viewer secret: %w", err)
	}
	secret := SecretPrefix + base64.RawURLEncoding.EncodeToString(raw)
	hash := sha256.Sum256([]byte(secret))
	ev := Created{ID: uuid.New(), Name: name, SecretHash: hex.EncodeToString(hash[:]), Expires: expires, At: now}
	if err := s.append(ctx, meta, EventCreated, ev); err != nil {
		return Credential{}, "", err
	}
	return Credential{ID: ev.ID, Name: name, Expires: expires, Created: now, hash: hash}, secret, nil
}

// Revoke ends a credential's use; revoking twice is fine.
func (s *Service) Revoke(ctx context.Context, meta domain.Metadata, id uuid.UUID) (Credential, error) {
	creds, err := s.read(ctx)
	if err != nil {
		return Credential{}, err
	}
	for _, c := range creds {
		if c.ID != id {
			continue
		}
		if !c.Revoked {
			if err := s.append(ctx, meta, EventRevoked, Revoked{ID: id, At: s.now().UTC()}); err != nil {
				return Credential{}, err
			}
			c.Revoked = true
		}
		return c, nil
	}
	return Credential{}, fmt.Errorf("viewer credential %s: %w", id, ErrNotFound)
}

// List returns every credential, oldest first.
func (s *Service) List(ctx context.Context) ([]Credential, error) { return s.read(ctx) }

// Authenticate finds the live credential with this secret. It reads the stream each time, so a
// credential created or revoked on another instance counts at once.
func (s *Service) Authenticate(ctx context.Context, secret string) (Credential, error) {
	if !strings.HasPrefix(secret, SecretPrefix) {
		return Credential{}, ErrUnknown
	}
	creds, err := s.read(ctx)
	if err != nil {
		return Credential{}, err
	}
	hash := sha256.Sum256([]byte(secret))
	for _, c := range creds {
		if subtle.ConstantTimeCompare(hash[:], c.hash[:]) != 1 {
			continue
		}
		switch {
		case c.Revoked:
			return Credential{}, ErrRevoked
		case c.Expires != nil && !s.now().Before(*c.Expires):
			return Credential{}, ErrExpired
		}
		return c, nil
	}
	return Credential{}, ErrUnknown
}

func (s *Service) append(ctx context.Context, meta domain.Metadata, typ string, body any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	md, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	// Creations and revocations are independent facts: any revision will do.
	if _, err := s.store.Append(ctx, Stream, eventstore.Any(), eventstore.EventData{ID: uuid.New(), Type: typ, Data: data, Metadata: md}); err != nil {
		return fmt.Errorf("record %s: %w", typ, err)
	}
	return nil
}

// read folds the viewer stream.
func (s *Service) read(ctx context.Context) ([]Credential, error) {
	var creds []Credential
	index := map[uuid.UUID]int{}
	var from uint64
	for {
		evs, err := s.store.ReadStream(ctx, Stream, eventstore.Forwards, from, 512)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			return creds, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read viewer credentials: %w", err)
		}
		for _, ev := range evs {
			switch ev.Type {
			case EventCreated:
				var e Created
				if err := json.Unmarshal(ev.Data, &e); err != nil {
					return nil, fmt.Errorf("viewer credential event %d: %w", ev.Revision, err)
				}
				c := Credential{ID: e.ID, Name: e.Name, Expires: e.Expires, Created: e.At}
				if b, err := hex.DecodeString(e.SecretHash); err == nil && len(b) == len(c.hash) {
					copy(c.hash[:], b)
				}
				index[e.ID] = len(creds)
				creds = append(creds, c)
			case EventRevoked:
				var e Revoked
				if err := json.Unmarshal(ev.Data, &e); err != nil {
					return nil, fmt.Errorf("viewer credential event %d: %w", ev.Revision, err)
				}
				if i, ok := index[e.ID]; ok {
					creds[i].Revoked = true
				}
			}
		}
		if len(evs) < 512 {
			return creds, nil
		}
		from = evs[len(evs)-1].Revision + 1
	}
}
