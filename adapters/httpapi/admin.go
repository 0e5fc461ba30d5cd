package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/mux"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
)

// Product is a product as the admin API shows it.
type Product struct {
	ID      int64     `json:"id"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// OnTamper is the integrity policy the product set (absent: the default, "apply").
	OnTamper string `json:"onTamper,omitempty"`
}

// LicenseKey is a license key as the admin API shows it.
type LicenseKey struct {
	ID        int64     `json:"id"`
	ProductID int64     `json:"productId"`
	Key       string    `json:"key"`
	Created   time.Time `json:"created"`
}

// Token is an access token as the admin API shows it: never its secret nor its hash.
type Token struct {
	ID          uuid.UUID `json:"id"`
	Name        string    `json:"name,omitempty"`
	Methods     []string  `json:"methods"`
	ProductLock int64     `json:"productLock"`
	KeyLock     int64     `json:"keyLock"`
	FeatureLock int64     `json:"featureLock"`
	Revoked     bool      `json:"revoked"`
	Created     time.Time `json:"created"`
}

// NewToken is a token just created, with its secret: the only time the secret is shown.
type NewToken struct {
	Token
	Secret string `json:"secret"`
}

// CreateProductRequest is the body of POST /admin/v1/products.
type CreateProductRequest struct {
	Name string `json:"name"`
}

// CreateKeyRequest is the body of POST /admin/v1/keys.
type CreateKeyRequest struct {
	ProductID int64 `json:"productId"`
}

// CreateTokenRequest is the body of POST /admin/v1/tokens. Methods are data-object method
// names in any case (AddDataObject, …); the locks mean what data-object-api.md says. Every
// lock must be present in the JSON (0 where none is wanted).
type CreateTokenRequest struct {
	Name        string   `json:"name,omitempty"`
	Methods     []string `json:"methods"`
	ProductLock int64    `json:"productLock"`
	KeyLock     int64    `json:"keyLock"`
	FeatureLock int64    `json:"featureLock"`
}

// ProductList is the answer of GET /admin/v1/products.
type ProductList struct {
	Products []Product `json:"products"`
}

// KeyList is the answer of GET /admin/v1/keys.
type KeyList struct {
	Keys []LicenseKey `json:"keys"`
}

// TokenList is the answer of GET /admin/v1/tokens.
type TokenList struct {
	Tokens []Token `json:"tokens"`
}

// adminError is the body of every refused admin request.
type adminError struct {
	Error string `json:"error"`
}

func productOut(p domain.Product) Product {
	return Product{ID: p.ID, Name: p.Name, Created: p.Created, OnTamper: string(p.OnTamper)}
}

func keyOut(k domain.LicenseKey) LicenseKey {
	return LicenseKey{ID: k.ID, ProductID: k.ProductID, Key: k.Key, Created: k.Created}
}

func tokenOut(t domain.Token) Token {
	methods := make([]string, len(t.Methods))
	for i, m := range t.Methods {
		methods[i] = string(m)
	}
	return Token{
		ID: t.ID, Name: t.Name, Methods: methods, ProductLock: t.ProductLock, KeyLock: t.KeyLock,
		FeatureLock: t.FeatureLock, Revoked: t.Revoked, Created: t.Created,
	}
}

// adminFunc handles one admin request and returns the status and body of its success.
type adminFunc func(r *http.Request, c ledger.Caller) (int, any, error)

// adminHandler names an admin endpoint for the metrics, checks the admin credential and runs
// fn as the admin caller.
func (s *server) adminHandler(name string, fn adminFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ri := infoOf(r)
		ri.method = name
		if !s.isAdmin(r) {
			s.signIns.Failed(r, ri.requestID, "admin token", Bearer(r) != "")
			w.Header().Set("WWW-Authenticate", `Bearer realm="tally-admin"`)
			writeAdminJSON(w, http.StatusUnauthorized, adminError{Error: "admin credential missing or wrong"})
			return
		}
		if s.notReady() {
			writeAdminJSON(w, http.StatusServiceUnavailable, adminError{Error: "not ready: catching up with the event store"})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, s.maxBody)
		c := ledger.Caller{Admin: true, RequestID: ri.requestID, ClientAddr: ClientAddr(r)}
		status, body, err := fn(r, c)
		if err != nil {
			status, msg := s.adminRefusal(r, err)
			writeAdminJSON(w, status, adminError{Error: msg})
			return
		}
		writeAdminJSON(w, status, body)
	})
}

// notReady reports whether the readiness check says the service cannot take requests yet.
func (s *server) notReady() bool { return s.ready != nil && s.ready() != nil }

// isAdmin reports whether the request presents the admin token.
func (s *server) isAdmin(r *http.Request) bool { return SameSecret(Bearer(r), s.adminToken) }

// SameSecret reports whether a presented credential is the configured secret, comparing in
// constant time; an empty secret matches nothing, so that an unset credential disables what
// it guards. Hashing both first makes the comparison's time independent of the lengths too.
func SameSecret(presented, secret string) bool {
	if secret == "" {
		return false
	}
	got, want := sha256.Sum256([]byte(presented)), sha256.Sum256([]byte(secret))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

// adminRefusal maps an admin error to a status and a message. A refusal of the domain gets
// the status of its kind, as on every Tally API (StatusOf).
func (s *server) adminRefusal(r *http.Request, err error) (int, string) {
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return http.StatusRequestEntityTooLarge, domain.ErrRequestTooLarge.Message
	case errors.Is(err, ledger.ErrInvalid):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, ledger.ErrNotFound):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, domain.ErrServiceUnavailable.Message
	}
	status, msg := http.StatusInternalServerError, "internal error"
	if de, ok := domain.AsError(err); ok && StatusOf(de.Kind) != http.StatusInternalServerError {
		status, msg = StatusOf(de.Kind), de.Message
	}
	if status >= http.StatusInternalServerError {
		s.logger.Error("admin request failed", "request_id", infoOf(r).requestID, "method", infoOf(r).method, "err", err)
	}
	return status, msg
}

func writeAdminJSON(w http.ResponseWriter, status int, body any) {
	b, err := json.Marshal(body)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"internal error"}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// decodeJSON reads a request body strictly (DecodeStrictJSON): unknown fields, duplicate keys,
// keys in the wrong case and trailing data are refused, so a misspelt field does not silently
// create something else.
func decodeJSON(r *http.Request, into any) error { return DecodeStrictJSON(r.Body, into) }

func (s *server) createProduct(r *http.Request, c ledger.Caller) (int, any, error) {
	var req CreateProductRequest
	if err := decodeJSON(r, &req); err != nil {
		return 0, nil, err
	}
	p, err := s.ledger.CreateProduct(r.Context(), c, req.Name)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, productOut(p), nil
}

func (s *server) listProducts(_ *http.Request, _ ledger.Caller) (int, any, error) {
	out := ProductList{Products: []Product{}}
	for _, p := range s.ledger.Products() {
		out.Products = append(out.Products, productOut(p))
	}
	return http.StatusOK, out, nil
}

func (s *server) createKey(r *http.Request, c ledger.Caller) (int, any, error) {
	var req CreateKeyRequest
	if err := decodeJSON(r, &req); err != nil {
		return 0, nil, err
	}
	if req.ProductID <= 0 {
		return 0, nil, fmt.Errorf("%w: productId is required", ledger.ErrInvalid)
	}
	k, err := s.ledger.CreateKey(r.Context(), c, req.ProductID)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, keyOut(k), nil
}

func (s *server) listKeys(r *http.Request, _ ledger.Caller) (int, any, error) {
	var productID int64
	if v := strings.TrimSpace(queryValue(r, "productId")); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, nil, fmt.Errorf("%w: productId %q is not an integer", ledger.ErrInvalid, v)
		}
		productID = n
	}
	out := KeyList{Keys: []LicenseKey{}}
	for _, k := range s.ledger.Keys(productID) {
		out.Keys = append(out.Keys, keyOut(k))
	}
	return http.StatusOK, out, nil
}

func (s *server) createToken(r *http.Request, c ledger.Caller) (int, any, error) {
	// CreateTokenRequest's fields, each lock a pointer: a token is never unlocked because its
	// JSON left a lock out, as the CLI demands every lock flag.
	var req struct {
		Name        string   `json:"name"`
		Methods     []string `json:"methods"`
		ProductLock *int64   `json:"productLock"`
		KeyLock     *int64   `json:"keyLock"`
		FeatureLock *int64   `json:"featureLock"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return 0, nil, err
	}
	for _, lock := range []struct {
		name  string
		value *int64
		means string
	}{
		{"productLock", req.ProductLock, "0: any product, else a product id"},
		{"keyLock", req.KeyLock, "0: none, -1: key-specific methods only, else a key id"},
		{"featureLock", req.FeatureLock, "0: none, else the largest step of one change"},
	} {
		if lock.value == nil {
			return 0, nil, fmt.Errorf("%w: %s is required (%s): every lock must be given", ledger.ErrInvalid, lock.name, lock.means)
		}
	}
	spec := ledger.TokenSpec{Name: req.Name, ProductLock: *req.ProductLock, KeyLock: *req.KeyLock, FeatureLock: *req.FeatureLock}
	seen := map[domain.Method]bool{}
	for _, name := range req.Methods {
		m, err := domain.ParseMethod(name)
		if err != nil {
			return 0, nil, fmt.Errorf("%w: %v", ledger.ErrInvalid, err)
		}
		if !seen[m] {
			seen[m] = true
			spec.Methods = append(spec.Methods, m)
		}
	}
	tok, secret, err := s.ledger.CreateToken(r.Context(), c, spec)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, NewToken{Token: tokenOut(tok), Secret: secret}, nil
}

func (s *server) listTokens(_ *http.Request, _ ledger.Caller) (int, any, error) {
	out := TokenList{Tokens: []Token{}}
	for _, t := range s.ledger.Tokens() {
		out.Tokens = append(out.Tokens, tokenOut(t))
	}
	return http.StatusOK, out, nil
}

func (s *server) revokeToken(r *http.Request, c ledger.Caller) (int, any, error) {
	id, err := uuid.Parse(mux.Vars(r)["id"])
	if err != nil {
		return 0, nil, fmt.Errorf("%w: token id %q is not a UUID", ledger.ErrInvalid, mux.Vars(r)["id"])
	}
	if err := s.ledger.RevokeToken(r.Context(), c, id); err != nil {
		return 0, nil, err
	}
	for _, t := range s.ledger.Tokens() {
		if t.ID == id {
			return http.StatusOK, tokenOut(t), nil
		}
	}
	return 0, nil, fmt.Errorf("token %s: %w", id, ledger.ErrNotFound)
}

// queryValue returns a query parameter by name in any case.
func queryValue(r *http.Request, name string) string {
	for k, vs := range r.URL.Query() {
		if strings.EqualFold(k, name) && len(vs) > 0 {
			return vs[0]
		}
	}
	return ""
}
