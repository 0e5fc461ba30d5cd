package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/gorilla/mux"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/domain/state"
)

// IntegrityLedger is what the integrity endpoints need of the ledger (docs/uploads.md,
// "Tampering").
type IntegrityLedger interface {
	IntegrityAnomalies(owner *domain.Owner) []state.IntegrityAnomaly
	AcknowledgeAnomaly(ctx context.Context, c ledger.Caller, id uuid.UUID, reason string) (state.IntegrityAnomaly, error)
	SetIntegrityPolicy(ctx context.Context, c ledger.Caller, productID int64, policy domain.IntegrityPolicy) (domain.Product, error)
}

var _ IntegrityLedger = (*ledger.Service)(nil)

// AnomalyList is the answer of GET /admin/v1/anomalies.
type AnomalyList struct {
	Anomalies []state.IntegrityAnomaly `json:"anomalies"`
}

// AcknowledgeAnomalyRequest is the body of POST /admin/v1/anomalies/{id}/acknowledge.
type AcknowledgeAnomalyRequest struct {
	Reason string `json:"reason"`
}

// ProductSettingsRequest is the body of POST /admin/v1/products/{id}/settings.
type ProductSettingsRequest struct {
	// OnTamper is "apply" or "refuse" (domain.IntegrityPolicy).
	OnTamper string `json:"onTamper"`
}

func (s *server) integrityRoutes(admin *mux.Router) {
	admin.Handle("/anomalies", s.byMethod(map[string]http.Handler{
		http.MethodGet: s.adminRead("admin.listAnomalies", s.listAnomalies),
	}))
	admin.Handle("/anomalies/{id}/acknowledge", s.byMethod(map[string]http.Handler{
		http.MethodPost: s.adminHandler("admin.acknowledgeAnomaly", s.acknowledgeAnomaly),
	}))
	admin.Handle("/products/{id}/settings", s.byMethod(map[string]http.Handler{
		http.MethodPost: s.adminHandler("admin.setProductSettings", s.setProductSettings),
	}))
}

// integrityLedger returns the ledger's integrity side; every ledger.Service has one.
func (s *server) integrityLedger() (IntegrityLedger, error) {
	l, ok := s.ledger.(IntegrityLedger)
	if !ok {
		return nil, fmt.Errorf("%w: this ledger keeps no integrity records", ledger.ErrNotFound)
	}
	return l, nil
}

// anomalyOwner reads the optional key (id or key string) or productId filter.
func (s *server) anomalyOwner(r *http.Request) (*domain.Owner, error) {
	key, product := strings.TrimSpace(queryValue(r, "key")), strings.TrimSpace(queryValue(r, "productId"))
	switch {
	case key != "" && product != "":
		return nil, fmt.Errorf("%w: give a key or a product, not both", ledger.ErrInvalid)
	case product != "":
		id, err := strconv.ParseInt(product, 10, 64)
		if err != nil || id <= 0 {
			return nil, fmt.Errorf("%w: productId %q is not a positive integer", ledger.ErrInvalid, product)
		}
		return &domain.Owner{Type: domain.OwnerProduct, ID: id}, nil
	case key != "":
		id, idErr := strconv.ParseInt(key, 10, 64)
		for _, k := range s.ledger.Keys(0) {
			if (idErr == nil && k.ID == id) || domain.NormalizeKeyString(k.Key) == domain.NormalizeKeyString(key) {
				return &domain.Owner{Type: domain.OwnerKey, ID: k.ID}, nil
			}
		}
		return nil, fmt.Errorf("key %q: %w", key, ledger.ErrNotFound)
	}
	return nil, nil
}

func (s *server) listAnomalies(r *http.Request, _ ledger.Caller) (int, any, error) {
	l, err := s.integrityLedger()
	if err != nil {
		return 0, nil, err
	}
	owner, err := s.anomalyOwner(r)
	if err != nil {
		return 0, nil, err
	}
	list := l.IntegrityAnomalies(owner)
	if list == nil {
		list = []state.IntegrityAnomaly{}
	}
	return http.StatusOK, AnomalyList{Anomalies: list}, nil
}

func (s *server) acknowledgeAnomaly(r *http.Request, c ledger.Caller) (int, any, error) {
	l, err := s.integrityLedger()
	if err != nil {
		return 0, nil, err
	}
	id, err := uuid.Parse(mux.Vars(r)["id"])
	if err != nil {
		return 0, nil, fmt.Errorf("%w: anomaly id %q is not a UUID", ledger.ErrInvalid, mux.Vars(r)["id"])
	}
	var req AcknowledgeAnomalyRequest
	if err := decodeJSON(r, &req); err != nil {
		return 0, nil, err
	}
	a, err := l.AcknowledgeAnomaly(r.Context(), c, id, req.Reason)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, a, nil
}

func (s *server) setProductSettings(r *http.Request, c ledger.Caller) (int, any, error) {
	l, err := s.integrityLedger()
	if err != nil {
		return 0, nil, err
	}
	id, err := strconv.ParseInt(mux.Vars(r)["id"], 10, 64)
	if err != nil || id <= 0 {
		return 0, nil, fmt.Errorf("%w: product id %q is not a positive integer", ledger.ErrInvalid, mux.Vars(r)["id"])
	}
	var req ProductSettingsRequest
	if err := decodeJSON(r, &req); err != nil {
		return 0, nil, err
	}
	p, err := l.SetIntegrityPolicy(r.Context(), c, id, domain.IntegrityPolicy(req.OnTamper))
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, productOut(p), nil
}

// ListAnomalies lists the integrity anomalies, oldest first: key (id or key string) or
// productId 0 for every owner.
func (c *AdminClient) ListAnomalies(ctx context.Context, key string, productID int64) ([]state.IntegrityAnomaly, error) {
	var out AnomalyList
	err := c.do(ctx, http.MethodGet, ownerQuery("/admin/v1/anomalies", url.Values{}, key, productID), nil, &out)
	return out.Anomalies, err
}

// AcknowledgeAnomaly accepts the version of the layer an anomaly saw.
func (c *AdminClient) AcknowledgeAnomaly(ctx context.Context, id uuid.UUID, reason string) (state.IntegrityAnomaly, error) {
	var a state.IntegrityAnomaly
	err := c.do(ctx, http.MethodPost, "/admin/v1/anomalies/"+id.String()+"/acknowledge", AcknowledgeAnomalyRequest{Reason: reason}, &a)
	return a, err
}

// SetProductSettings sets a product's integrity policy ("apply" or "refuse").
func (c *AdminClient) SetProductSettings(ctx context.Context, productID int64, onTamper string) (Product, error) {
	var p Product
	err := c.do(ctx, http.MethodPost, "/admin/v1/products/"+strconv.FormatInt(productID, 10)+"/settings", ProductSettingsRequest{OnTamper: onTamper}, &p)
	return p, err
}
