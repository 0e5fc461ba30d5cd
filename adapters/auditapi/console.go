package auditapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/mux"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/domain/viewer"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/readmodel"
)

// Viewers checks read-only viewer credentials; *viewer.Service is one.
type Viewers interface {
	Authenticate(ctx context.Context, secret string) (viewer.Credential, error)
}

// View is the current-state projection; *projections.Current is one.
type View interface {
	Read(fn func(*state.State))
}

// authError is a refused credential with a message that says why.
type authError struct{ msg string }

func (e authError) Error() string { return e.msg }

// viewerAuthError says why a viewer secret was refused: expired and revoked credentials are
// told apart from unknown ones, so that the person holding one knows to ask for a new one.
func viewerAuthError(err error) error {
	switch {
	case errors.Is(err, viewer.ErrExpired), errors.Is(err, viewer.ErrRevoked), errors.Is(err, viewer.ErrUnknown):
		return authError{msg: err.Error()}
	}
	return err
}

// errReadOnly refuses a write to a viewer.
var errReadOnly = errors.New("the viewer credential is read-only: this change needs the admin token")

// refuseWrite is the refusal of a write by a caller that is not the admin.
func refuseWrite(p principal) error {
	if p.viewer {
		return errReadOnly
	}
	return domain.ErrAccessDenied
}

// consoleRoutes adds the read endpoints the web console's views use.
func (a *api) consoleRoutes(r *mux.Router) {
	r.HandleFunc("/v1/whoami", a.whoami).Methods(http.MethodGet)
	r.HandleFunc("/v1/usage/series", a.usageSeries).Methods(http.MethodGet)
	r.HandleFunc("/v1/usage/top-keys", a.topKeys).Methods(http.MethodGet)
	if a.view == nil {
		return
	}
	r.HandleFunc("/v1/status", a.status).Methods(http.MethodGet)
	r.HandleFunc("/v1/overview", a.overview).Methods(http.MethodGet)
	r.HandleFunc("/v1/dataobjects", a.dataObjects).Methods(http.MethodGet)
	r.HandleFunc("/v1/limits", a.limits).Methods(http.MethodGet)
	r.HandleFunc("/v1/uploads", a.uploads).Methods(http.MethodGet)
}

// readAll authenticates a caller that must see everything: the admin or a viewer.
func (a *api) readAll(w http.ResponseWriter, r *http.Request) bool {
	p, err := a.authenticate(r)
	if err != nil {
		a.fail(w, err)
		return false
	}
	if !p.readsAll() {
		a.fail(w, domain.ErrAccessDenied)
		return false
	}
	return true
}

// WhoAmI is the answer of GET /v1/whoami: what the presented credential may do.
type WhoAmI struct {
	// Role is admin, viewer or token.
	Role string `json:"role"`
	// CanWrite says whether corrections and admin changes are allowed.
	CanWrite bool `json:"canWrite"`
}

func (a *api) whoami(w http.ResponseWriter, r *http.Request) {
	p, err := a.authenticate(r)
	if err != nil {
		a.fail(w, err)
		return
	}
	switch {
	case p.admin:
		writeJSON(w, http.StatusOK, WhoAmI{Role: "admin", CanWrite: true})
	case p.viewer:
		writeJSON(w, http.StatusOK, WhoAmI{Role: "viewer"})
	default:
		writeJSON(w, http.StatusOK, WhoAmI{Role: "token"})
	}
}

// Status is the answer of GET /v1/status: the event-store position the projection reflects.
type Status struct {
	Position eventstore.Position `json:"position"`
	// Events is how many events the projection folded.
	Events uint64 `json:"events"`
	// LastEventRecorded is when the store recorded the event at Position (absent for an empty
	// store).
	LastEventRecorded *time.Time `json:"lastEventRecorded,omitempty"`
}

func (a *api) status(w http.ResponseWriter, r *http.Request) {
	if !a.readAll(w, r) {
		return
	}
	var st Status
	var last state.EventRef
	a.view.Read(func(s *state.State) { st.Position, st.Events, last = s.Position, s.Events, s.LastEvent })
	if last.Stream != "" {
		evs, err := a.store.ReadStream(r.Context(), last.Stream, eventstore.Forwards, last.Revision, 1)
		if err != nil {
			a.fail(w, err)
			return
		}
		if len(evs) == 1 {
			st.LastEventRecorded = &evs[0].Recorded
		}
	}
	writeJSON(w, http.StatusOK, st)
}

// DataObject is a data object as the console lists it.
type DataObject struct {
	projections.UsageObject
	IntValue    int32  `json:"intValue"`
	StringValue string `json:"stringValue"`
	Removed     bool   `json:"removed,omitempty"`
}

// DataObjectList is the answer of GET /v1/dataobjects.
type DataObjectList struct {
	Position    eventstore.Position `json:"position"`
	DataObjects []DataObject        `json:"dataObjects"`
}

func usageObjectOf(s *state.State, o *state.Object) projections.UsageObject {
	u := projections.UsageObject{ObjectID: o.ID, Name: o.Name, Owner: o.Owner}
	switch o.Owner.Type {
	case domain.OwnerProduct:
		u.ProductID = o.Owner.ID
	case domain.OwnerKey:
		k := s.Keys[o.Owner.ID]
		u.ProductID, u.KeyID, u.Key = k.ProductID, k.ID, k.Key
	}
	return u
}

func (a *api) dataObjects(w http.ResponseWriter, r *http.Request) {
	if !a.readAll(w, r) {
		return
	}
	out := DataObjectList{DataObjects: []DataObject{}}
	a.view.Read(func(s *state.State) {
		out.Position = s.Position
		for _, o := range s.Objects {
			out.DataObjects = append(out.DataObjects, DataObject{UsageObject: usageObjectOf(s, o), IntValue: o.IntValue, StringValue: o.StringValue, Removed: o.Removed})
		}
	})
	sort.Slice(out.DataObjects, func(i, j int) bool { return out.DataObjects[i].ObjectID < out.DataObjects[j].ObjectID })
	writeJSON(w, http.StatusOK, out)
}

// Overview is the answer of GET /v1/overview.
type Overview struct {
	Position    eventstore.Position `json:"position"`
	TimeZone    string              `json:"timeZone"`
	Products    int                 `json:"products"`
	Keys        int                 `json:"keys"`
	Tokens      int                 `json:"tokens"` // live (not revoked) access tokens
	DataObjects int                 `json:"dataObjects"`
	// RemovedDataObjects are kept with their history.
	RemovedDataObjects int `json:"removedDataObjects"`
	// UploadsToday and UploadsThisMonth count committed uploads by the time their commit was
	// recorded, in TimeZone.
	UploadsToday     int `json:"uploadsToday"`
	UploadsThisMonth int `json:"uploadsThisMonth"`
	UploadsCommitted int `json:"uploadsCommitted"`
	UploadsAborted   int `json:"uploadsAborted"`
	UploadsPending   int `json:"uploadsPending"`
	// EntriesApplied counts the usage-log entries of committed uploads.
	EntriesApplied int `json:"entriesApplied"`
	// UploadsRefused counts refused uploads with their repeats, where the store records them
	// (UploadRefused events); RefusalsRecorded says whether this store has any such record.
	UploadsRefused   int64 `json:"uploadsRefused"`
	RefusalsRecorded bool  `json:"refusalsRecorded"`
}

func (a *api) overview(w http.ResponseWriter, r *http.Request) {
	if !a.readAll(w, r) {
		return
	}
	loc, err := location(r.URL.Query().Get("tz"))
	if err != nil {
		a.fail(w, err)
		return
	}
	ov := Overview{TimeZone: loc.String()}
	var owners []domain.Owner
	a.view.Read(func(s *state.State) {
		ov.Position, ov.Products, ov.Keys = s.Position, len(s.Products), len(s.Keys)
		for _, t := range s.Tokens {
			if !t.Revoked {
				ov.Tokens++
			}
		}
		for _, o := range s.Objects {
			if o.Removed {
				ov.RemovedDataObjects++
			} else {
				ov.DataObjects++
			}
		}
		owners = uploadOwners(s)
	})
	ups, err := a.readUploads(r.Context(), owners)
	if err != nil {
		a.fail(w, err)
		return
	}
	now := a.now().In(loc)
	today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, loc)
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, loc)
	for _, u := range ups {
		switch u.Status {
		case "committed":
			ov.UploadsCommitted++
			ov.EntriesApplied += u.Entries
			if !u.Decided.Before(today) {
				ov.UploadsToday++
			}
			if !u.Decided.Before(month) {
				ov.UploadsThisMonth++
			}
		case "aborted":
			ov.UploadsAborted++
		case "pending":
			ov.UploadsPending++
		case "refused":
			ov.RefusalsRecorded = true
			ov.UploadsRefused += 1 + u.Repeats
		}
	}
	writeJSON(w, http.StatusOK, ov)
}

func location(tz string) (*time.Location, error) {
	if tz == "" {
		return time.UTC, nil
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return nil, fmt.Errorf("%w: tz %q is not a time zone (use an IANA name such as Europe/Stockholm)", ledger.ErrInvalid, tz)
	}
	return loc, nil
}

func uploadOwners(s *state.State) []domain.Owner {
	owners := make([]domain.Owner, 0, len(s.Uploads))
	for _, u := range s.Uploads {
		owners = append(owners, u.Owner)
	}
	return owners
}

// Upload is one upload as the console lists it: committed, aborted, pending or refused.
type Upload struct {
	ID     uuid.UUID    `json:"id"`
	Owner  domain.Owner `json:"owner"`
	Status string       `json:"status"` // committed, aborted, pending or refused
	// Reason says why an upload was aborted or refused.
	Reason string `json:"reason,omitempty"`
	// Entries is how many new entries (layers) the upload carried; Known how many of its file
	// had been applied before.
	Entries int   `json:"entries"`
	Known   int64 `json:"known"`
	// Objects is how many data objects its entries change.
	Objects int `json:"objects"`
	// Prepared is when the upload was prepared (or refused); Decided when it was committed or
	// aborted.
	Prepared time.Time `json:"prepared"`
	Decided  time.Time `json:"decided,omitzero"`
	// Repeats counts further refusals of the same refused log.
	Repeats int64 `json:"repeats,omitempty"`
	// TokenID and RequestID say who sent it.
	TokenID   *uuid.UUID `json:"tokenId,omitempty"`
	RequestID string     `json:"requestId,omitempty"`
}

// UploadList is the answer of GET /v1/uploads, newest first.
type UploadList struct {
	Position eventstore.Position `json:"position"`
	Uploads  []Upload            `json:"uploads"`
}

// readUploads reads the upload streams of the owners and lists every upload on them.
func (a *api) readUploads(ctx context.Context, owners []domain.Owner) ([]Upload, error) {
	var out []Upload
	for _, owner := range owners {
		byID := map[uuid.UUID]int{}
		var from uint64
		for {
			evs, err := a.store.ReadStream(ctx, domain.UploadStream(owner), eventstore.Forwards, from, 1024)
			if errors.Is(err, eventstore.ErrStreamNotFound) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("read uploads of %v: %w", owner, err)
			}
			for _, ev := range evs {
				if err := foldUpload(ev, owner, byID, &out); err != nil {
					return nil, fmt.Errorf("upload event %d@%s: %w", ev.Revision, ev.Stream, err)
				}
			}
			if len(evs) < 1024 {
				break
			}
			from = evs[len(evs)-1].Revision + 1
		}
	}
	return out, nil
}

func foldUpload(ev eventstore.RecordedEvent, owner domain.Owner, byID map[uuid.UUID]int, out *[]Upload) error {
	var md domain.Metadata
	_ = json.Unmarshal(ev.Metadata, &md)
	who := func(u *Upload) {
		if md.TokenID != uuid.Nil {
			id := md.TokenID
			u.TokenID = &id
		}
		u.RequestID = md.RequestID
	}
	switch ev.Type {
	case domain.EventUploadPrepared:
		e, err := domain.DecodeUploadPrepared(ev.Data)
		if err != nil {
			return err
		}
		u := Upload{ID: e.UploadID, Owner: owner, Status: "pending", Entries: len(e.Layers), Known: e.BaseDepth, Objects: len(e.Changes), Prepared: ev.Recorded}
		who(&u)
		byID[e.UploadID] = len(*out)
		*out = append(*out, u)
	case domain.EventUploadCommitted, domain.EventUploadAborted:
		var e domain.UploadAborted
		var err error
		if e.UploadID, e.Reason, err = domain.DecodeUploadDecision(ev.Type, ev.Data); err != nil {
			return err
		}
		i, ok := byID[e.UploadID]
		if !ok || (*out)[i].Status != "pending" {
			return nil // the first decision wins
		}
		u := &(*out)[i]
		u.Decided = ev.Recorded
		if ev.Type == domain.EventUploadCommitted {
			u.Status = "committed"
		} else {
			u.Status, u.Reason = "aborted", e.Reason
		}
	case domain.EventUploadRefused:
		var e domain.UploadRefused
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			return err
		}
		reason := e.Reason
		if e.Message != "" {
			reason += ": " + e.Message
		}
		u := Upload{ID: e.RefusalID, Owner: owner, Status: "refused", Reason: reason, Entries: e.NewEntries, Prepared: ev.Recorded}
		who(&u)
		byID[e.RefusalID] = len(*out)
		*out = append(*out, u)
	case domain.EventUploadRefusalRepeated:
		var e domain.UploadRefusalRepeated
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			return err
		}
		if i, ok := byID[e.RefusalID]; ok {
			(*out)[i].Repeats += e.Repeats
		}
	}
	return nil
}

func (a *api) uploads(w http.ResponseWriter, r *http.Request) {
	if !a.readAll(w, r) {
		return
	}
	limit, err := intParam(r, "limit", 200, 1, 10000)
	if err != nil {
		a.fail(w, err)
		return
	}
	var owners []domain.Owner
	var pos eventstore.Position
	a.view.Read(func(s *state.State) { owners, pos = uploadOwners(s), s.Position })
	ups, err := a.readUploads(r.Context(), owners)
	if err != nil {
		a.fail(w, err)
		return
	}
	sort.SliceStable(ups, func(i, j int) bool { return ups[i].Prepared.After(ups[j].Prepared) })
	if len(ups) > limit {
		ups = ups[:limit]
	}
	if ups == nil {
		ups = []Upload{}
	}
	writeJSON(w, http.StatusOK, UploadList{Position: pos, Uploads: ups})
}

// intParam reads an optional integer query parameter within [min, max].
func intParam(r *http.Request, name string, def, min, max int) (int, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < min || n > max {
		return 0, fmt.Errorf("%w: %s %q: want an integer from %d to %d", ledger.ErrInvalid, name, s, min, max)
	}
	return n, nil
}

// Limit is a data object near or over the feature lock of a token that may change it.
type Limit struct {
	DataObject
	// FeatureLock is the smallest feature lock among the live tokens that may increment or
	// decrement the object; Tokens counts those tokens.
	FeatureLock int64 `json:"featureLock"`
	Tokens      int   `json:"tokens"`
	// Ratio is the value over the feature lock (1 or more: over).
	Ratio float64 `json:"ratio"`
	Over  bool    `json:"over"`
}

// LimitList is the answer of GET /v1/limits.
type LimitList struct {
	Position eventstore.Position `json:"position"`
	// Near is the ratio from which an object is listed.
	Near   float64 `json:"near"`
	Limits []Limit `json:"limits"`
}

// mayChange reports whether a token may increment or decrement an object of owner o, through
// the general methods or the key-specific ones (key-owned objects only).
func mayChange(t domain.Token, o domain.Owner, productOf func(int64) (int64, bool)) bool {
	if t.Revoked {
		return false
	}
	if !t.AllowsAny(domain.MethodIncrementIntValue, domain.MethodDecrementIntValue) {
		return false
	}
	if t.CheckGeneral(o, productOf) == nil {
		return true
	}
	// The key-specific methods (…ToKey) reach a key's objects under the product lock.
	if o.Type != domain.OwnerKey || t.CheckKeySpecific() != nil {
		return false
	}
	pid, ok := productOf(o.ID)
	return ok && t.CheckProduct(pid) == nil
}

func (a *api) limits(w http.ResponseWriter, r *http.Request) {
	if !a.readAll(w, r) {
		return
	}
	near := 0.8
	if s := r.URL.Query().Get("near"); s != "" {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || f <= 0 || f > 1 {
			a.fail(w, fmt.Errorf("%w: near %q: want a ratio above 0, at most 1", ledger.ErrInvalid, s))
			return
		}
		near = f
	}
	out := LimitList{Near: near, Limits: []Limit{}}
	a.view.Read(func(s *state.State) {
		out.Position = s.Position
		for _, o := range s.Objects {
			if o.Removed {
				continue
			}
			l := Limit{DataObject: DataObject{UsageObject: usageObjectOf(s, o), IntValue: o.IntValue, StringValue: o.StringValue}}
			for _, t := range s.Tokens {
				if t.FeatureLock <= 0 || !mayChange(t, o.Owner, s.ProductOfKey) {
					continue
				}
				l.Tokens++
				if l.FeatureLock == 0 || t.FeatureLock < l.FeatureLock {
					l.FeatureLock = t.FeatureLock
				}
			}
			if l.FeatureLock == 0 {
				continue
			}
			l.Ratio = float64(o.IntValue) / float64(l.FeatureLock)
			l.Over = int64(o.IntValue) >= l.FeatureLock
			if l.Ratio >= near {
				out.Limits = append(out.Limits, l)
			}
		}
	})
	sort.Slice(out.Limits, func(i, j int) bool {
		if out.Limits[i].Ratio != out.Limits[j].Ratio {
			return out.Limits[i].Ratio > out.Limits[j].Ratio
		}
		return out.Limits[i].ObjectID < out.Limits[j].ObjectID
	})
	writeJSON(w, http.StatusOK, out)
}

// usageRequest authenticates a usage read and parses its query, narrowed to what the caller may
// see and to one data object when object= is given.
func (a *api) usageRequest(w http.ResponseWriter, r *http.Request) (projections.UsageQuery, bool) {
	p, err := a.authenticate(r)
	if err != nil {
		a.fail(w, err)
		return projections.UsageQuery{}, false
	}
	// A report replays the whole store, so it is not for tokens that ship inside customers'
	// applications (a negative key lock): only the admin, viewers and the vendor's own tokens.
	if !p.readsAll() && (!p.token.Allows(domain.MethodListDataObjects) || p.token.KeyLock < 0) {
		a.fail(w, domain.ErrAccessDenied)
		return projections.UsageQuery{}, false
	}
	q := r.URL.Query()
	uq, err := ParseUsageQuery(q.Get("from"), q.Get("to"), q.Get("tz"), q.Get("by"), q.Get("time"), q.Get("product"), q.Get("key"))
	if err != nil {
		a.fail(w, err)
		return projections.UsageQuery{}, false
	}
	var objectID int64
	if s := q.Get("object"); s != "" {
		if objectID, err = strconv.ParseInt(s, 10, 64); err != nil || objectID <= 0 {
			a.fail(w, fmt.Errorf("%w: object %q: want a data object id", ledger.ErrInvalid, s))
			return projections.UsageQuery{}, false
		}
		// As for an object's history: a token that may not see the object is refused whether
		// or not it exists, so that it learns nothing of other customers' objects.
		if !a.may(p, objectID) {
			a.fail(w, domain.ErrAccessDenied)
			return projections.UsageQuery{}, false
		}
		if _, err := a.store.ReadStream(r.Context(), domain.DataObjectStream(objectID), eventstore.Forwards, 0, 1); err != nil {
			if errors.Is(err, eventstore.ErrStreamNotFound) {
				err = projections.ErrNoSuchObject
			}
			a.fail(w, err)
			return projections.UsageQuery{}, false
		}
	}
	filter := uq.Include
	// The fold asks once per change; the answer per object is remembered.
	allowed := map[int64]bool{}
	uq.Include = func(o projections.UsageObject) bool {
		ok, seen := allowed[o.ObjectID]
		if !seen {
			ok = (filter == nil || filter(o)) && (objectID == 0 || o.ObjectID == objectID) && a.may(p, o.ObjectID)
			allowed[o.ObjectID] = ok
		}
		return ok
	}
	return uq, true
}

// usageReport is the report GET /v1/usage answers with for the same query (from the read
// model, or by replaying the store for bounds off its 15-minute grid): the series and the top
// keys are sums of it, so they show the same numbers. It answers every failure itself.
func (a *api) usageReport(w http.ResponseWriter, r *http.Request, uq projections.UsageQuery) (*projections.UsageReport, bool) {
	var rep *projections.UsageReport
	var err error
	if a.model != nil {
		if !a.waitModel(w, r) {
			return nil, false
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
		return nil, false
	}
	return rep, true
}

// UsageSums are sums of usage rows.
type UsageSums struct {
	Increments  int64 `json:"increments"`
	Decrements  int64 `json:"decrements"`
	Corrections int64 `json:"corrections"`
	Net         int64 `json:"net"`
	Entries     int   `json:"entries"`
	Adjustments int64 `json:"adjustments"`
}

func (s *UsageSums) add(r projections.UsageRow) {
	s.Increments += r.Increments
	s.Decrements += r.Decrements
	s.Corrections += r.Corrections
	s.Net += r.Net
	s.Entries += r.Entries
	s.Adjustments += r.Adjustments
}

// SeriesPoint is one period of a usage series: the sums over the selected objects of the
// report's rows in that period (zero where no row is).
type SeriesPoint struct {
	// Name names the period as the report's rows do; Start and End bound it, cut by the range.
	Name  string    `json:"period"`
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	UsageSums
	// Closing sums the objects' closing values at the period's end.
	Closing int64 `json:"closing"`
}

// Series is the answer of GET /v1/usage/series: a usage report summed per period and
// gap-filled, one point per period of the range, with the report's rows and their totals.
type Series struct {
	From     time.Time               `json:"from"`
	To       time.Time               `json:"to"`
	TimeZone string                  `json:"timeZone"`
	By       projections.Granularity `json:"by"`
	Axis     projections.TimeAxis    `json:"time"`
	Position eventstore.Position     `json:"position"`
	// Objects counts the data objects with at least one row.
	Objects int                    `json:"objects"`
	Points  []SeriesPoint          `json:"points"`
	Rows    []projections.UsageRow `json:"rows"`
	Totals  UsageSums              `json:"totals"`
}

func (a *api) usageSeries(w http.ResponseWriter, r *http.Request) {
	uq, ok := a.usageRequest(w, r)
	if !ok {
		return
	}
	rep, ok := a.usageReport(w, r, uq)
	if !ok {
		return
	}
	s := Series{From: rep.From, To: rep.To, TimeZone: rep.TimeZone, By: rep.By, Axis: rep.Axis, Position: rep.Position, Rows: rep.Rows}
	nq, err := projections.NormalizeUsageQuery(uq)
	if err != nil {
		a.fail(w, err)
		return
	}
	periods, err := projections.Periods(nq)
	if err != nil {
		a.fail(w, err)
		return
	}
	s.Points = make([]SeriesPoint, len(periods))
	index := make(map[string]int, len(periods))
	for i, p := range periods {
		s.Points[i].Name, s.Points[i].Start, s.Points[i].End = p.Name, p.Start, p.End
		index[p.Name] = i
	}
	for _, row := range rep.Rows {
		i, ok := index[row.Period]
		if !ok {
			continue
		}
		s.Points[i].add(row)
		s.Totals.add(row)
	}
	// Closing per point: each object's closing of its latest row at or before the point,
	// or its opening before its first row.
	byObject := map[int64][]projections.UsageRow{}
	for _, row := range rep.Rows {
		byObject[row.ObjectID] = append(byObject[row.ObjectID], row)
	}
	s.Objects = len(byObject)
	for _, rows := range byObject {
		j := 0
		value := rows[0].Opening
		for i := range s.Points {
			for j < len(rows) && index[rows[j].Period] <= i {
				value = rows[j].Closing
				j++
			}
			s.Points[i].Closing += value
		}
	}
	writeJSON(w, http.StatusOK, s)
}

// KeyUsage is one license key's usage in a period.
type KeyUsage struct {
	KeyID       int64  `json:"keyId"`
	Key         string `json:"key"`
	ProductID   int64  `json:"productId"`
	Increments  int64  `json:"increments"`
	Decrements  int64  `json:"decrements"`
	Corrections int64  `json:"corrections"`
	Net         int64  `json:"net"`
	Entries     int    `json:"entries"`
	Objects     int    `json:"objects"`
}

// TopKeys is the answer of GET /v1/usage/top-keys.
type TopKeys struct {
	From     time.Time           `json:"from"`
	To       time.Time           `json:"to"`
	TimeZone string              `json:"timeZone"`
	Position eventstore.Position `json:"position"`
	Keys     []KeyUsage          `json:"keys"`
}

// topKeys ranks license keys by the usage of their objects in the range: the sum of the
// report's increments (what was used), ties by net, then key id.
func (a *api) topKeys(w http.ResponseWriter, r *http.Request) {
	uq, ok := a.usageRequest(w, r)
	if !ok {
		return
	}
	limit, err := intParam(r, "limit", 10, 1, 100)
	if err != nil {
		a.fail(w, err)
		return
	}
	rep, ok := a.usageReport(w, r, uq)
	if !ok {
		return
	}
	byKey := map[int64]*KeyUsage{}
	objects := map[int64]map[int64]bool{}
	for _, row := range rep.Rows {
		if row.KeyID == 0 {
			continue
		}
		k := byKey[row.KeyID]
		if k == nil {
			k = &KeyUsage{KeyID: row.KeyID, Key: row.Key, ProductID: row.ProductID}
			byKey[row.KeyID] = k
			objects[row.KeyID] = map[int64]bool{}
		}
		k.Increments += row.Increments
		k.Decrements += row.Decrements
		k.Corrections += row.Corrections
		k.Net += row.Net
		k.Entries += row.Entries
		objects[row.KeyID][row.ObjectID] = true
	}
	out := TopKeys{From: rep.From, To: rep.To, TimeZone: rep.TimeZone, Position: rep.Position, Keys: []KeyUsage{}}
	for id, k := range byKey {
		k.Objects = len(objects[id])
		out.Keys = append(out.Keys, *k)
	}
	sort.Slice(out.Keys, func(i, j int) bool {
		a, b := out.Keys[i], out.Keys[j]
		if a.Increments != b.Increments {
			return a.Increments > b.Increments
		}
		if a.Net != b.Net {
			return a.Net > b.Net
		}
		return a.KeyID < b.KeyID
	})
	if len(out.Keys) > limit {
		out.Keys = out.Keys[:limit]
	}
	writeJSON(w, http.StatusOK, out)
}
