package auditapi

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/projections"
)

// uploadHistory is GET /v1/uploads/history?keyId=K (or productId=P): every event of the
// owner's upload stream, refusals and operators' decisions among them. For the admin only:
// it says who uploaded from where.
func (a *api) uploadHistory(w http.ResponseWriter, r *http.Request) {
	p, err := a.authenticate(r)
	if err != nil {
		a.fail(w, err)
		return
	}
	if !p.admin {
		a.fail(w, domain.ErrAccessDenied)
		return
	}
	q := r.URL.Query()
	var owner domain.Owner
	switch {
	case q.Get("keyId") != "" && q.Get("productId") == "":
		owner.Type = domain.OwnerKey
		owner.ID, err = strconv.ParseInt(q.Get("keyId"), 10, 64)
	case q.Get("productId") != "" && q.Get("keyId") == "":
		owner.Type = domain.OwnerProduct
		owner.ID, err = strconv.ParseInt(q.Get("productId"), 10, 64)
	default:
		err = fmt.Errorf("give keyId or productId")
	}
	if err != nil || owner.ID <= 0 {
		a.fail(w, fmt.Errorf("%w: the owner is keyId=K or productId=P, a positive integer", ledger.ErrInvalid))
		return
	}
	h, err := projections.UploadStreamHistory(r.Context(), a.store, owner)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, h)
}
