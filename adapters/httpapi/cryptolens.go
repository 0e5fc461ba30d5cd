package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
)

// invoke runs a parsed call on the ledger and returns its result body.
type invoke func(ctx context.Context, l Ledger, c ledger.Caller, sc ledger.Scope) (any, error)

// dataMethod is one path of the data-object API.
type dataMethod struct {
	name        string // as Cryptolens spells it; the path is its lower-case form
	keySpecific bool   // the …ToKey form (ProductId, Key) rather than (ReferencerType, ReferencerId)
	// needs lists the permissions of which the token must hold at least one.
	needs []domain.Method
	// parse reads the parameters beyond the owner and returns the call to make.
	parse func(p *parser) invoke
}

// dataMethods lists the whole data-object API: each method in its general and key-specific
// form.
func dataMethods() []dataMethod {
	var out []dataMethod
	both := func(name string, needs []domain.Method, parse func(p *parser, keySpecific bool) invoke) {
		out = append(out,
			dataMethod{name: name, needs: needs, parse: func(p *parser) invoke { return parse(p, false) }},
			dataMethod{name: name + "ToKey", keySpecific: true, needs: needs, parse: func(p *parser) invoke { return parse(p, true) }},
		)
	}
	both("AddDataObject", []domain.Method{domain.MethodAddDataObject}, parseAdd)
	both("ListDataObjects", []domain.Method{domain.MethodListDataObjects}, parseList)
	both("SetIntValue", []domain.Method{domain.MethodSetIntValue}, parseSetInt)
	both("SetStringValue", []domain.Method{domain.MethodSetStringValue}, parseSetString)
	both("IncrementIntValue", []domain.Method{domain.MethodIncrementIntValue}, parseChange(domain.Increment))
	both("DecrementIntValue", []domain.Method{domain.MethodDecrementIntValue}, parseChange(domain.Decrement))
	both("RemoveDataObject", []domain.Method{domain.MethodRemoveDataObject}, parseRemove)
	upload := []domain.Method{domain.MethodIncrementIntValue, domain.MethodDecrementIntValue}
	out = append(out,
		dataMethod{name: "UploadValues", needs: upload, parse: parseUpload},
		dataMethod{name: "UploadValuesToKey", keySpecific: true, needs: upload, parse: parseUpload},
	)
	return out
}

// dataHandler serves one data-object method. The order of refusals is the spec's: the token,
// then the permission, then the owner, then everything else; a malformed parameter is reported
// at its place in that order, not when it is read.
func (s *server) dataHandler(m dataMethod) http.Handler {
	return dataRoute(func(w http.ResponseWriter, r *http.Request) {
		ri := infoOf(r)
		ri.method = m.name
		if r.Method != http.MethodGet && r.Method != http.MethodPost {
			s.methodNotAllowed(w, r)
			return
		}
		if s.notReady() {
			// While the projection catches up it may not yet hold the token, key or value a
			// request needs: answering from it would refuse or decide wrongly.
			s.writeError(w, r, domain.ErrServiceUnavailable)
			return
		}
		release, err := s.bodies.admit(r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		defer release()
		values, malformed, err := s.readParams(w, r)
		if errors.Is(err, errBodyTooSlow) {
			s.refused(defenceBodyTooSlow)
			s.writeResult(w, r, http.StatusRequestTimeout, errorResult(bodyTooSlowMessage))
			return
		}
		if errors.Is(err, domain.ErrRequestTooLarge) {
			s.refused(defenceBodyTooLarge)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		secret := values["token"]
		if secret == "" {
			secret = Bearer(r)
		}
		tok, err := s.ledger.Authenticate(r.Context(), secret)
		if err != nil {
			if errors.Is(err, domain.ErrUnauthenticated) {
				s.signIns.Failed(r, ri.requestID, "access token", secret != "")
			}
			s.writeError(w, r, err)
			return
		}
		if s.limiter != nil && !s.limiter.allow(tok.ID, time.Now()) {
			s.refused(defenceRateLimit)
			s.writeError(w, r, domain.ErrRateLimited)
			return
		}
		c := ledger.Caller{Token: tok, RequestID: ri.requestID, ClientAddr: ClientAddr(r)}
		p := &parser{values: values}
		sc := parseScope(p, m.keySpecific)
		call := m.parse(p)
		if malformed {
			p.fail(domain.ErrInvalidInput)
		}
		if p.scopeErr != nil || p.err != nil {
			s.writeError(w, r, s.firstRefusal(tok, c, m, sc, p))
			return
		}
		res, err := call(r.Context(), s.ledger, c, sc)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		s.writeResult(w, r, http.StatusOK, res)
	})
}

// dataRoute is a data-object method's handler; it checks the HTTP method itself (so that a
// refusal is counted under the API method's name) and says which it takes.
type dataRoute func(w http.ResponseWriter, r *http.Request)

func (h dataRoute) ServeHTTP(w http.ResponseWriter, r *http.Request) { h(w, r) }

// AllowedMethods lists the HTTP methods a data-object method takes.
func (dataRoute) AllowedMethods() []string { return []string{http.MethodGet, http.MethodPost} }

// firstRefusal decides which refusal a request with a malformed parameter gets: a missing
// permission or a refused owner comes before the malformed parameter.
func (s *server) firstRefusal(tok domain.Token, c ledger.Caller, m dataMethod, sc ledger.Scope, p *parser) error {
	if !tok.AllowsAny(m.needs...) {
		return domain.ErrAccessDenied
	}
	if p.scopeErr != nil {
		return p.scopeErr
	}
	if err := s.ledger.CheckScope(c, sc); err != nil {
		return err
	}
	return p.err
}

// parseScope reads the owner: ProductId and Key for the key-specific form, ReferencerType and
// ReferencerId for the general one.
func parseScope(p *parser, keySpecific bool) ledger.Scope {
	if keySpecific {
		if !p.has("productid") {
			p.scopeErr = domain.ErrInvalidInput
			return ledger.Scope{KeySpecific: true}
		}
		pid, err := parseInt(p.str("productid"), 64)
		if err != nil {
			p.scopeErr = domain.ErrInvalidInput
		}
		return ledger.Scope{KeySpecific: true, ProductID: pid, Key: strings.TrimSpace(p.str("key"))}
	}
	rt, err := parseInt(p.str("referencertype"), 64)
	if err != nil {
		p.scopeErr = domain.ErrInvalidInput
		return ledger.Scope{}
	}
	typ, err := domain.ParseOwnerType(rt)
	if err != nil {
		p.scopeErr = err
		return ledger.Scope{}
	}
	rid, err := parseInt(p.str("referencerid"), 64)
	if err != nil {
		p.scopeErr = domain.ErrInvalidInput
	}
	return ledger.Scope{Referencer: domain.Owner{Type: typ, ID: rid}}
}

// objectRef reads Id (when present and not 0) or else Name.
func objectRef(p *parser) ledger.ObjectRef {
	return ledger.ObjectRef{ID: p.int64("id"), Name: p.str("name")}
}

func parseAdd(p *parser, _ bool) invoke {
	cmd := ledger.AddDataObject{
		Name: p.str("name"), StringValue: p.str("stringvalue"), IntValue: p.int32("intvalue"),
		CheckForDuplicates: p.bool("checkforduplicates"),
	}
	return func(ctx context.Context, l Ledger, c ledger.Caller, sc ledger.Scope) (any, error) {
		cmd.Scope = sc
		id, err := l.AddDataObject(ctx, c, cmd)
		if err != nil {
			return nil, err
		}
		return addResult{basicResult: success(), ID: id}, nil
	}
}

func parseList(p *parser, keySpecific bool) invoke {
	q := ledger.ListDataObjects{Contains: p.str("contains")}
	if !keySpecific {
		q.ShowAll = p.bool("showall")
		if q.ShowAll {
			// Every object the token may see, whoever owns it: the owner parameters do not
			// matter, malformed or not.
			p.scopeErr = nil
		}
	}
	return func(ctx context.Context, l Ledger, c ledger.Caller, sc ledger.Scope) (any, error) {
		q.Scope = sc
		objs, err := l.ListDataObjects(ctx, c, q)
		if err != nil {
			return nil, err
		}
		res := listResult{basicResult: success(), DataObjects: make([]dataObjectJSON, 0, len(objs))}
		for _, o := range objs {
			j := dataObjectJSON{ID: o.ID, Name: o.Name, StringValue: o.StringValue, IntValue: o.IntValue}
			if q.ShowAll {
				typ, id := int(o.Owner.Type), o.Owner.ID
				j.ReferencerType, j.ReferencerID = &typ, &id
			}
			res.DataObjects = append(res.DataObjects, j)
		}
		return res, nil
	}
}

func parseSetInt(p *parser, _ bool) invoke {
	cmd := ledger.SetIntValue{Object: objectRef(p), IntValue: p.int32("intvalue")}
	return func(ctx context.Context, l Ledger, c ledger.Caller, sc ledger.Scope) (any, error) {
		cmd.Scope = sc
		return success(), l.SetIntValue(ctx, c, cmd)
	}
}

func parseSetString(p *parser, _ bool) invoke {
	cmd := ledger.SetStringValue{Object: objectRef(p), StringValue: p.str("stringvalue")}
	return func(ctx context.Context, l Ledger, c ledger.Caller, sc ledger.Scope) (any, error) {
		cmd.Scope = sc
		return success(), l.SetStringValue(ctx, c, cmd)
	}
}

func parseChange(dir domain.Direction) func(p *parser, _ bool) invoke {
	return func(p *parser, _ bool) invoke {
		cmd := ledger.ChangeIntValue{
			Object: objectRef(p), Amount: int64(p.int32("intvalue")),
			EnableBound: p.bool("enablebound"), Bound: p.int64("bound"),
		}
		return func(ctx context.Context, l Ledger, c ledger.Caller, sc ledger.Scope) (any, error) {
			cmd.Scope = sc
			if dir == domain.Decrement {
				return success(), l.DecrementIntValue(ctx, c, cmd)
			}
			return success(), l.IncrementIntValue(ctx, c, cmd)
		}
	}
}

func parseRemove(p *parser, _ bool) invoke {
	cmd := ledger.RemoveDataObject{Object: objectRef(p)}
	return func(ctx context.Context, l Ledger, c ledger.Caller, sc ledger.Scope) (any, error) {
		cmd.Scope = sc
		return success(), l.RemoveDataObject(ctx, c, cmd)
	}
}

func parseUpload(p *parser) invoke {
	// Base64 never holds a space: a space is a '+' that a client left unescaped in a query
	// string, and form decoding turned into a space.
	cmd := ledger.UploadValues{ObjectID: p.int64("id"), Data: strings.ReplaceAll(strings.TrimSpace(p.str("data")), " ", "+")}
	return func(ctx context.Context, l Ledger, c ledger.Caller, sc ledger.Scope) (any, error) {
		cmd.Scope = sc
		res, err := l.UploadValues(ctx, c, cmd)
		if err != nil {
			return nil, err
		}
		return uploadResult{basicResult: success(), Applied: res.Applied, Known: res.Known}, nil
	}
}
