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
)

// UploadList is the answer of GET /admin/v1/uploads.
type UploadList struct {
	Uploads []ledger.UploadRecord `json:"uploads"`
}

// ResolveUploadRequest is the body of POST /admin/v1/uploads/resolve: an operator's decision
// on a refused log, named by its refusal id or by its owner's key (id or key string) or product.
type ResolveUploadRequest struct {
	RefusalID string `json:"refusalId,omitempty"`
	Key       string `json:"key,omitempty"`
	ProductID int64  `json:"productId,omitempty"`
	Mode      string `json:"mode"`   // "in-chunks" or "skip-entries"
	Reason    string `json:"reason"` // required
	DecidedBy string `json:"decidedBy,omitempty"`
}

func (s *server) uploadRoutes(admin *mux.Router) {
	admin.Handle("/uploads", s.byMethod(map[string]http.Handler{
		http.MethodGet: s.adminRead("admin.listUploads", s.listUploads),
	}))
	admin.Handle("/uploads/resolve", s.byMethod(map[string]http.Handler{
		http.MethodPost: s.adminHandler("admin.resolveUpload", s.resolveUpload),
	}))
}

// ownerOf finds the owner a key (id or key string) or a product id names; nil for neither.
func (s *server) ownerOf(key string, productID int64) (*domain.Owner, error) {
	key = strings.TrimSpace(key)
	switch {
	case key != "" && productID != 0:
		return nil, fmt.Errorf("%w: give a key or a product, not both", ledger.ErrInvalid)
	case productID != 0:
		for _, p := range s.ledger.Products() {
			if p.ID == productID {
				return &domain.Owner{Type: domain.OwnerProduct, ID: p.ID}, nil
			}
		}
		return nil, fmt.Errorf("product %d: %w", productID, ledger.ErrNotFound)
	case key == "":
		return nil, nil
	}
	id, idErr := strconv.ParseInt(key, 10, 64)
	for _, k := range s.ledger.Keys(0) {
		if (idErr == nil && k.ID == id) || domain.NormalizeKeyString(k.Key) == domain.NormalizeKeyString(key) {
			return &domain.Owner{Type: domain.OwnerKey, ID: k.ID}, nil
		}
	}
	return nil, fmt.Errorf("key %q: %w", key, ledger.ErrNotFound)
}

func (s *server) listUploads(r *http.Request, _ ledger.Caller) (int, any, error) {
	var productID int64
	if v := strings.TrimSpace(queryValue(r, "productId")); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return 0, nil, fmt.Errorf("%w: productId %q is not a positive integer", ledger.ErrInvalid, v)
		}
		productID = n
	}
	owner, err := s.ownerOf(queryValue(r, "key"), productID)
	if err != nil {
		return 0, nil, err
	}
	recs, err := s.ledger.ListUploads(r.Context(), ledger.UploadFilter{State: strings.ToLower(strings.TrimSpace(queryValue(r, "state"))), Owner: owner})
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, UploadList{Uploads: recs}, nil
}

func (s *server) resolveUpload(r *http.Request, c ledger.Caller) (int, any, error) {
	var req ResolveUploadRequest
	if err := decodeJSON(r, &req); err != nil {
		return 0, nil, err
	}
	cmd := ledger.ResolveUpload{Mode: req.Mode, Reason: req.Reason, DecidedBy: req.DecidedBy}
	owner, err := s.ownerOf(req.Key, req.ProductID)
	if err != nil {
		return 0, nil, err
	}
	switch {
	case req.RefusalID != "" && owner != nil:
		return 0, nil, fmt.Errorf("%w: give a refusal id or an owner, not both", ledger.ErrInvalid)
	case req.RefusalID != "":
		id, err := uuid.Parse(req.RefusalID)
		if err != nil {
			return 0, nil, fmt.Errorf("%w: refusal id %q is not a UUID", ledger.ErrInvalid, req.RefusalID)
		}
		cmd.RefusalID = id
	case owner != nil:
		cmd.Owner = *owner
	default:
		return 0, nil, fmt.Errorf("%w: name the refused log by refusalId, key or productId", ledger.ErrInvalid)
	}
	d, err := s.ledger.ResolveRefusedUpload(r.Context(), c, cmd)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, d, nil
}

// ListUploads lists upload records: state "" for all, key (id or key string) or productId 0
// for every owner.
func (c *AdminClient) ListUploads(ctx context.Context, state, key string, productID int64) ([]ledger.UploadRecord, error) {
	q := url.Values{}
	if state != "" {
		q.Set("state", state)
	}
	var out UploadList
	err := c.do(ctx, http.MethodGet, ownerQuery("/admin/v1/uploads", q, key, productID), nil, &out)
	return out.Uploads, err
}

// ResolveUpload records an operator's decision on a refused log.
func (c *AdminClient) ResolveUpload(ctx context.Context, req ResolveUploadRequest) (domain.UploadResolutionDecided, error) {
	var d domain.UploadResolutionDecided
	err := c.do(ctx, http.MethodPost, "/admin/v1/uploads/resolve", req, &d)
	return d, err
}

// ownerQuery is path with the query q and the owner filter of the list endpoints: key (an id
// or a key string) and productId, each left out when empty or 0.
func ownerQuery(path string, q url.Values, key string, productID int64) string {
	if key != "" {
		q.Set("key", key)
	}
	if productID != 0 {
		q.Set("productId", strconv.FormatInt(productID, 10))
	}
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return path
}
