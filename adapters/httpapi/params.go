package httpapi

import (
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/tallyledger/tally/domain"
)

// readParams collects the query and form parameters of a request under lower-cased names,
// since Cryptolens clients spell them in any case (productId, ProductId). A value in the body
// wins over the query; among spellings of one name in the same place, the first in byte order
// wins, so the choice does not depend on map order. The body is read through a size limit, at
// the minimum rate (errBodyTooSlow), and parsed as it arrives (readForm).
// A malformed query or body (a stray '%', a ';') is not refused here: malformed reports it, and
// the handler refuses it in the API's order of checks, after the token and the owner.
func (s *server) readParams(w http.ResponseWriter, r *http.Request) (values map[string]string, malformed bool, err error) {
	if readsBody(r) {
		body := s.bodies.wrap(w, r)
		form, err := readForm(http.MaxBytesReader(w, body, s.maxBody), r.ContentLength)
		body.finish()
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			return nil, false, domain.ErrRequestTooLarge
		case errors.Is(err, errBodyTooSlow):
			return nil, false, errBodyTooSlow
		case err != nil:
			malformed = true // form holds what could be read
		}
		r.PostForm = form // so that ParseForm reads the query only
	}
	if err := r.ParseForm(); err != nil {
		malformed = true // r.Form holds what could be read
	}
	// ParseForm has parsed the query too: r.Form holds each name's body values before its
	// query values, so vs[0] is the body's value whenever the body has the name.
	inBody := func(name string) bool { return len(r.PostForm[name]) > 0 }
	// wins reports whether spelling a of a name is chosen over spelling b.
	wins := func(a, b string) bool {
		if inBody(a) != inBody(b) {
			return inBody(a)
		}
		return a < b
	}
	values = make(map[string]string, len(r.Form))
	spelling := make(map[string]string, len(r.Form)) // the name each value was taken under
	for name, vs := range r.Form {
		lower := strings.ToLower(name)
		if prev, seen := spelling[lower]; len(vs) == 0 || seen && wins(prev, name) {
			continue
		}
		spelling[lower], values[lower] = name, vs[0]
	}
	return values, malformed, nil
}

// Bearer returns the credential of an Authorization: Bearer header, or "". The audit API
// reads its credentials the same way.
func Bearer(r *http.Request) string {
	scheme, cred, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(cred)
}

// parser reads typed parameters, remembering the first malformed one. Owner parameters are
// kept apart from the others because they are reported at a different point in the order of
// checks.
type parser struct {
	values   map[string]string
	scopeErr error // a malformed or missing owner parameter
	err      error // the first other malformed parameter
}

func (p *parser) fail(err error) {
	if p.err == nil {
		p.err = err
	}
}

// has reports whether a parameter was sent with a value.
func (p *parser) has(name string) bool { return strings.TrimSpace(p.values[name]) != "" }

// str returns a parameter as sent ("" when missing).
func (p *parser) str(name string) string { return p.values[name] }

// int64 parses an integer parameter; missing means 0, as in Cryptolens's model binding.
func (p *parser) int64(name string) int64 {
	n, err := parseInt(p.values[name], 64)
	if err != nil {
		p.fail(domain.ErrInvalidInput)
	}
	return n
}

// int32 parses an int32 parameter; a value outside int32 is malformed.
func (p *parser) int32(name string) int32 {
	n, err := parseInt(p.values[name], 32)
	if err != nil {
		p.fail(domain.ErrInvalidInput)
		return 0
	}
	return int32(n)
}

// bool parses a boolean as the SDKs send it: True/False (.NET, Python), true/false (C, Java),
// 1/0; missing means false.
func (p *parser) bool(name string) bool {
	b, err := parseBool(p.values[name])
	if err != nil {
		p.fail(domain.ErrInvalidInput)
	}
	return b
}

func parseInt(v string, bits int) (int64, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, bits)
	if err != nil {
		return 0, err
	}
	if bits == 32 && (n < math.MinInt32 || n > math.MaxInt32) {
		return 0, strconv.ErrRange
	}
	return n, nil
}

func parseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "", "false", "0":
		return false, nil
	case "true", "1":
		return true, nil
	}
	return false, strconv.ErrSyntax
}
