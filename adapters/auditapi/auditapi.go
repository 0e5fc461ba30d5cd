// Package auditapi holds Tally's audit HTTP API: an object's event history, its value as of a
// time, usage reports for billing, all computed from the events, and the admin's corrections.
// It authenticates with the admin credential (Authorization: Bearer) or a Cryptolens access
// token (the token query parameter or Bearer) that may list the objects it reads.
package auditapi

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/readmodel"
)

// Store is what the audit API reads from the event store.
type Store interface {
	projections.StreamReader
	projections.AllReader
}

// Ledger is what the audit API needs of the ledger's use cases.
type Ledger interface {
	// Authenticate finds the live token with this secret.
	Authenticate(ctx context.Context, secret string) (domain.Token, error)
	// CanList reports whether a token may see a data object.
	CanList(tok domain.Token, objectID int64) bool
	// Correct appends a compensating change to a data object.
	Correct(ctx context.Context, c ledger.Caller, objectID int64, amount int64, reason string) error
}

// ReadModel answers usage reports and values as of a time from persisted read models that
// follow the store (readmodel.Model is one).
type ReadModel interface {
	// Position is the store position the read model reflects.
	Position() eventstore.Position
	// Head is the store's last position.
	Head(ctx context.Context) (eventstore.Position, error)
	// WaitFor blocks until the read model reflects every event up to pos.
	WaitFor(ctx context.Context, pos eventstore.Position) error
	// Usage answers a report, or readmodel.ErrNotAligned for one it cannot answer exactly.
	Usage(ctx context.Context, q projections.UsageQuery) (*projections.UsageReport, error)
	ValueAt(ctx context.Context, objectID int64, at time.Time) (*projections.ValueAsOf, error)
}

// Config wires the audit API.
type Config struct {
	Store  Store
	Ledger Ledger
	// ReadModel, if set, answers /v1/usage and /v1/dataobjects/{id}/value; without it they
	// replay the store.
	ReadModel ReadModel
	// ReadModelWait bounds how long a query waits for the read model to reach the store's
	// head (or the position the caller asks for) before it is refused with 503 (default 10 s).
	ReadModelWait time.Duration
	// AdminToken is the vendor's admin credential; empty accepts tokens only.
	AdminToken string
	// Now gives the default time of a value query (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
	// SignIns logs refused credentials, rate-limited (nil: not logged).
	SignIns *httpapi.SignInLog
}

// MaxReasonLength bounds a correction's reason.
const MaxReasonLength = 1000

type api struct {
	model     ReadModel
	modelWait time.Duration
	store     Store
	ledger    Ledger
	admin     string
	now       func() time.Time
	logger    *slog.Logger
	signIns   *httpapi.SignInLog
}

// New returns the handler of the audit API. It serves absolute paths under /v1/, so it can be
// mounted at /v1/ beside the Cryptolens API.
func New(cfg Config) (http.Handler, error) {
	if cfg.Store == nil {
		return nil, errors.New("auditapi: nil store")
	}
	if cfg.Ledger == nil {
		return nil, errors.New("auditapi: nil ledger")
	}
	a := &api{store: cfg.Store, ledger: cfg.Ledger, admin: cfg.AdminToken, now: cfg.Now, logger: cfg.Logger, signIns: cfg.SignIns,
		model: cfg.ReadModel, modelWait: cfg.ReadModelWait}
	if a.modelWait <= 0 {
		a.modelWait = 10 * time.Second
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.logger == nil {
		a.logger = slog.New(slog.DiscardHandler)
	}
	r := mux.NewRouter()
	r.HandleFunc("/v1/dataobjects/{id:-?[0-9]+}/history", a.history).Methods(http.MethodGet)
	r.HandleFunc("/v1/dataobjects/{id:-?[0-9]+}/value", a.value).Methods(http.MethodGet)
	r.HandleFunc("/v1/dataobjects/{id:-?[0-9]+}/corrections", a.correct).Methods(http.MethodPost)
	r.HandleFunc("/v1/usage", a.usage).Methods(http.MethodGet)
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusNotFound, "not found")
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusMethodNotAllowed, "method not allowed")
	})
	return r, nil
}

// principal is who is calling: the admin, or a token.
type principal struct {
	admin bool
	token domain.Token
}

// may reports whether the caller may read an object.
func (a *api) may(p principal, objectID int64) bool {
	return p.admin || a.ledger.CanList(p.token, objectID)
}

func (a *api) authenticate(r *http.Request) (principal, error) {
	bearer := httpapi.Bearer(r)
	if httpapi.SameSecret(bearer, a.admin) {
		return principal{admin: true}, nil
	}
	secret := r.URL.Query().Get("token")
	if secret == "" {
		secret = bearer
	}
	tok, err := a.ledger.Authenticate(r.Context(), secret)
	if err != nil {
		if errors.Is(err, domain.ErrUnauthenticated) {
			a.signIns.Failed(r, httpapi.RequestID(r), "admin or access token", secret != "")
		}
		return principal{}, domain.ErrUnauthenticated
	}
	return principal{token: tok}, nil
}

func objectID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(mux.Vars(r)["id"], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: bad data object id", ledger.ErrInvalid)
	}
	return id, nil
}

// objectRequest authenticates and authorises a read of one object, and returns the object's
// id and who asked.
func (a *api) objectRequest(w http.ResponseWriter, r *http.Request) (int64, principal, bool) {
	p, err := a.authenticate(r)
	if err != nil {
		a.fail(w, err)
		return 0, principal{}, false
	}
	id, err := objectID(r)
	if err != nil {
		a.fail(w, err)
		return 0, principal{}, false
	}
	if !a.may(p, id) {
		a.fail(w, domain.ErrAccessDenied)
		return 0, principal{}, false
	}
	return id, p, true
}

func (a *api) history(w http.ResponseWriter, r *http.Request) {
	id, p, ok := a.objectRequest(w, r)
	if !ok {
		return
	}
	h, err := projections.History(r.Context(), a.store, id)
	if err != nil {
		a.fail(w, err)
		return
	}
	if !p.admin {
		// Who made each change and from where (other customers' addresses among them) is for
		// the vendor's eyes only.
		for i := range h.Entries {
			e := &h.Entries[i]
			e.TokenID, e.Admin, e.RequestID, e.ClientAddr = nil, false, "", ""
		}
	}
	writeJSON(w, http.StatusOK, h)
}

func (a *api) value(w http.ResponseWriter, r *http.Request) {
	id, _, ok := a.objectRequest(w, r)
	if !ok {
		return
	}
	at := a.now()
	if s := r.URL.Query().Get("at"); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			a.fail(w, fmt.Errorf("%w: at: want an RFC 3339 time", ledger.ErrInvalid))
			return
		}
		at = t
	}
	var v *projections.ValueAsOf
	var err error
	if a.model != nil {
		if !a.waitModel(w, r) {
			return
		}
		v, err = a.model.ValueAt(r.Context(), id, at)
	} else {
		v, err = projections.ValueAt(r.Context(), a.store, id, at)
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// waitModel waits until the read model reflects the position the caller asks for (the
// position parameter) or, by default, the store's head as the request arrived, so that a caller
// reads its own writes. It answers 503 if the model is not there within ReadModelWait.
func (a *api) waitModel(w http.ResponseWriter, r *http.Request) bool {
	var want eventstore.Position
	if s := r.URL.Query().Get("position"); s != "" {
		p, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			a.fail(w, fmt.Errorf("%w: position: want a store position (an unsigned integer)", ledger.ErrInvalid))
			return false
		}
		want = eventstore.Position(p)
	} else {
		head, err := a.model.Head(r.Context())
		if err != nil {
			a.fail(w, err)
			return false
		}
		want = head
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.modelWait)
	defer cancel()
	if err := a.model.WaitFor(ctx, want); err != nil {
		if r.Context().Err() == nil {
			a.logger.Warn("read model behind", "want", want, "at", a.model.Position(), "err", err)
			writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("the read model is at position %d, not yet at %d; try again", a.model.Position(), want))
		}
		return false
	}
	return true
}

// CorrectionRequest is the body of POST /v1/dataobjects/{id}/corrections.
type CorrectionRequest struct {
	// Amount is added to the value (negative: subtracted).
	Amount int64  `json:"amount"`
	Reason string `json:"reason"`
}

func (a *api) correct(w http.ResponseWriter, r *http.Request) {
	p, err := a.authenticate(r)
	if err != nil {
		a.fail(w, err)
		return
	}
	if !p.admin {
		a.fail(w, domain.ErrAccessDenied)
		return
	}
	id, err := objectID(r)
	if err != nil {
		a.fail(w, err)
		return
	}
	var req CorrectionRequest
	if err := httpapi.DecodeStrictJSON(io.LimitReader(r.Body, 64<<10), &req); err != nil {
		a.fail(w, err)
		return
	}
	if len(req.Reason) > MaxReasonLength {
		a.fail(w, fmt.Errorf("%w: the reason has at most %d bytes", ledger.ErrInvalid, MaxReasonLength))
		return
	}
	requestID := httpapi.RequestID(r)
	c := ledger.Caller{Admin: true, RequestID: requestID, ClientAddr: httpapi.ClientAddr(r)}
	if err := a.ledger.Correct(r.Context(), c, id, req.Amount, req.Reason); err != nil {
		a.fail(w, err)
		return
	}
	// Answer with the correction as the history shows it.
	h, err := projections.History(r.Context(), a.store, id)
	if err != nil {
		a.fail(w, err)
		return
	}
	for i := len(h.Entries) - 1; i >= 0; i-- {
		if e := h.Entries[i]; e.RequestID == requestID && e.Correction != "" {
			writeJSON(w, http.StatusCreated, e)
			return
		}
	}
	a.fail(w, errors.New("the correction was appended but is not in the object's history"))
}

func (a *api) usage(w http.ResponseWriter, r *http.Request) {
	p, err := a.authenticate(r)
	if err != nil {
		a.fail(w, err)
		return
	}
	// A report spans many objects and may replay the whole store (bounds off the 15-minute
	// grid), so it is not for tokens that ship inside customers' applications (a negative key
	// lock): only the admin and the vendor's own tokens.
	if !p.admin && (!p.token.Allows(domain.MethodListDataObjects) || p.token.KeyLock < 0) {
		a.fail(w, domain.ErrAccessDenied)
		return
	}
	q := r.URL.Query()
	uq, err := ParseUsageQuery(q.Get("from"), q.Get("to"), q.Get("tz"), q.Get("by"), q.Get("time"), q.Get("product"), q.Get("key"))
	if err != nil {
		a.fail(w, err)
		return
	}
	filter := uq.Include
	// The fold asks once per change; the answer per object is remembered.
	allowed := map[int64]bool{}
	uq.Include = func(o projections.UsageObject) bool {
		ok, seen := allowed[o.ObjectID]
		if !seen {
			ok = (filter == nil || filter(o)) && a.may(p, o.ObjectID)
			allowed[o.ObjectID] = ok
		}
		return ok
	}
	var rep *projections.UsageReport
	if a.model != nil {
		if !a.waitModel(w, r) {
			return
		}
		rep, err = a.model.Usage(r.Context(), uq)
	}
	if a.model == nil || errors.Is(err, readmodel.ErrNotAligned) {
		// Bounds off the 15-minute grid (an RFC 3339 instant like 10:07) cannot be answered
		// from the buckets: replay.
		rep, err = projections.Usage(r.Context(), a.store, uq)
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	switch q.Get("format") {
	case "", "json":
		writeJSON(w, http.StatusOK, rep)
	case "csv":
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		if err := WriteUsageCSV(w, rep); err != nil {
			a.logger.Warn("write usage csv", "err", err)
		}
	default:
		a.fail(w, fmt.Errorf("%w: format: want json or csv", ledger.ErrInvalid))
	}
}

// ParseUsageQuery reads the parameters of a usage report. from and to are dates (YYYY-MM-DD,
// in tz; to is inclusive: the report ends at the midnight after it) or RFC 3339 instants (to
// exclusive). tz defaults to UTC, by to day, axis to usage. product is a product id; key a
// license key's id or its key string.
func ParseUsageQuery(from, to, tz, by, axis, product, key string) (projections.UsageQuery, error) {
	var q projections.UsageQuery
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ledger.ErrInvalid, fmt.Sprintf(format, args...))
	}
	q.Location = time.UTC
	if tz != "" {
		loc, err := LoadZone(tz)
		if err != nil {
			return q, invalid("%v", err)
		}
		q.Location = loc
	}
	var err error
	if q.From, err = parseBound(from, q.Location, false); err != nil {
		return q, invalid("from: %v", err)
	}
	if q.To, err = parseBound(to, q.Location, true); err != nil {
		return q, invalid("to: %v", err)
	}
	if !q.From.Before(q.To) {
		return q, invalid("from must be before to")
	}
	switch projections.Granularity(by) {
	case "", projections.ByDay:
		q.By = projections.ByDay
	case projections.ByMonth:
		q.By = projections.ByMonth
	default:
		return q, invalid("by %q: want day or month", by)
	}
	switch projections.TimeAxis(axis) {
	case "", projections.AxisUsage:
		q.Axis = projections.AxisUsage
	case projections.AxisRecorded:
		q.Axis = projections.AxisRecorded
	default:
		return q, invalid("time %q: want usage or recorded", axis)
	}
	if _, err := projections.Periods(q); err != nil {
		return q, invalid("%d periods at most in one report; ask for a shorter range or months", projections.MaxPeriods)
	}
	var productID, keyID int64
	if product != "" {
		if productID, err = strconv.ParseInt(product, 10, 64); err != nil || productID <= 0 {
			return q, invalid("product %q: want a product id", product)
		}
	}
	keyString := ""
	if key != "" {
		if id, err := strconv.ParseInt(key, 10, 64); err == nil && id > 0 {
			keyID = id
		} else {
			keyString = domain.NormalizeKeyString(key)
		}
	}
	if productID != 0 || keyID != 0 || keyString != "" {
		q.Include = func(o projections.UsageObject) bool {
			return (productID == 0 || o.ProductID == productID) &&
				(keyID == 0 || o.KeyID == keyID) &&
				(keyString == "" || (o.KeyID != 0 && domain.NormalizeKeyString(o.Key) == keyString))
		}
	}
	return q, nil
}

// LoadZone loads an IANA time zone by name ("UTC", "Asia/Kathmandu"). "Local" (the server's
// own zone, which differs between machines) and anything that is not a zone are refused.
func LoadZone(name string) (*time.Location, error) {
	if name == "" || name == "Local" {
		return nil, fmt.Errorf("tz %q: want an IANA time zone such as UTC or Europe/Stockholm", name)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("tz %q: not an IANA time zone", name)
	}
	return loc, nil
}

// parseBound reads a date in loc (the start of that day, or with inclusive the start of the
// next) or an RFC 3339 instant.
func parseBound(s string, loc *time.Location, inclusive bool) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("missing (YYYY-MM-DD or RFC 3339)")
	}
	if d, err := time.ParseInLocation(time.DateOnly, s, loc); err == nil {
		if inclusive {
			d = d.AddDate(0, 0, 1)
		}
		return d, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q: want YYYY-MM-DD or RFC 3339", s)
	}
	return t.In(loc), nil
}

// UsageCSVHeader returns the header row of a usage report in CSV.
func UsageCSVHeader() []string {
	return []string{
		"period", "start", "end", "product_id", "key_id", "key", "owner_type", "owner_id", "object_id", "object_name",
		"opening", "increments", "decrements", "corrections", "net", "entries", "sets", "adjustments", "closing",
	}
}

// UsageCSVRecord renders one row of a usage report as CSV fields, in UsageCSVHeader's order.
func UsageCSVRecord(r projections.UsageRow) []string {
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	return []string{
		r.Period, r.Start.Format(time.RFC3339), r.End.Format(time.RFC3339), i(r.ProductID), i(r.KeyID), r.Key,
		strconv.Itoa(int(r.Owner.Type)), i(r.Owner.ID), i(r.ObjectID), r.Name,
		i(r.Opening), i(r.Increments), i(r.Decrements), i(r.Corrections), i(r.Net), strconv.Itoa(r.Entries),
		strconv.Itoa(r.Sets), i(r.Adjustments), i(r.Closing),
	}
}

// WriteUsageCSV writes a usage report as CSV with a header row.
func WriteUsageCSV(w io.Writer, rep *projections.UsageReport) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(UsageCSVHeader()); err != nil {
		return err
	}
	for _, r := range rep.Rows {
		if err := cw.Write(UsageCSVRecord(r)); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// ErrorBody is the JSON body of every refusal.
type ErrorBody struct {
	Error string `json:"error"`
}

func (a *api) fail(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	msg := "internal error"
	if de, ok := domain.AsError(err); ok {
		msg, status = de.Message, httpapi.StatusOf(de.Kind)
	}
	switch {
	case errors.Is(err, ledger.ErrInvalid):
		status, msg = http.StatusBadRequest, err.Error()
	case errors.Is(err, projections.ErrNoSuchObject):
		status, msg = http.StatusNotFound, domain.ErrDataObjectNotFound.Message
	}
	if status >= 500 {
		a.logger.Error("audit request failed", "err", err)
	}
	writeError(w, status, msg)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, ErrorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
