package auditapi_test

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tallyledger/tally/adapters/auditapi"
	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/adapters/httpapi/openapi/openapitest"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/audittest"
	"github.com/tallyledger/tally/projections/readmodel"
)

const adminToken = "admin-secret-for-tests"

type fixture struct {
	srv    *httptest.Server // the API on the read model
	replay *httptest.Server // the API without one: every query replays the store
	env    *audittest.Env
	w      *audittest.Workload
	model  *readmodel.Model
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	store, err := embedded.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	env := audittest.Start(t, store, "")
	w := audittest.Seed(t, env, rand.New(rand.NewPCG(7, 8)), 80)
	ctx, cancel := context.WithCancel(context.Background())
	model, err := readmodel.Open(ctx, store, filepath.Join(t.TempDir(), "usage.db"), readmodel.Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- model.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = model.Close()
	})
	f := &fixture{env: env, w: w, model: model}
	for _, s := range []**httptest.Server{&f.srv, &f.replay} {
		cfg := auditapi.Config{Store: store, Ledger: env.Ledger, AdminToken: adminToken}
		if s == &f.srv {
			cfg.ReadModel = model
		}
		h, err := auditapi.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		*s = httptest.NewServer(h)
		t.Cleanup((*s).Close)
	}
	return f
}

// do sends a request with a bearer credential (the admin's or a token's) or none.
func (f *fixture) do(t *testing.T, method, path, bearer string, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	// Every answer is validated against the OpenAPI document.
	resp, err := openapitest.Client(t, nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func (f *fixture) token(t *testing.T, spec ledger.TokenSpec) string {
	t.Helper()
	_, secret, err := f.env.Ledger.CreateToken(context.Background(), ledger.Caller{Admin: true}, spec)
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

func TestHistoryAndValueAuthorisation(t *testing.T) {
	f := newFixture(t)
	onKey := f.w.Objects[0]     // of product one, through a key
	onProduct := f.w.Objects[3] // of product two
	p2Lister := f.token(t, ledger.TokenSpec{Methods: []domain.Method{domain.MethodListDataObjects}, ProductLock: onProduct.ProductID})
	noList := f.token(t, ledger.TokenSpec{Methods: []domain.Method{domain.MethodIncrementIntValue}})
	hist := "/v1/dataobjects/" + strconv.FormatInt(onProduct.ID, 10) + "/history"
	cases := []struct {
		name, path, bearer string
		want               int
	}{
		{"admin", hist, adminToken, http.StatusOK},
		{"token that may list it", hist, p2Lister, http.StatusOK},
		{"token in the query", hist + "?token=" + url.QueryEscape(p2Lister), "", http.StatusOK},
		{"token locked to another product", "/v1/dataobjects/" + strconv.FormatInt(onKey.ID, 10) + "/history", p2Lister, http.StatusForbidden},
		{"token without ListDataObjects", hist, noList, http.StatusForbidden},
		{"no credential", hist, "", http.StatusUnauthorized},
		{"wrong credential", hist, "nope", http.StatusUnauthorized},
		{"unknown object", "/v1/dataobjects/424242/history", adminToken, http.StatusNotFound},
		{"value, token", "/v1/dataobjects/" + strconv.FormatInt(onProduct.ID, 10) + "/value", p2Lister, http.StatusOK},
		{"value, bad time", "/v1/dataobjects/" + strconv.FormatInt(onProduct.ID, 10) + "/value?at=yesterday", adminToken, http.StatusBadRequest},
	}
	for _, c := range cases {
		if status, body := f.do(t, http.MethodGet, c.path, c.bearer, ""); status != c.want {
			t.Errorf("%s: status %d (%s), want %d", c.name, status, body, c.want)
		}
	}
	status, body := f.do(t, http.MethodGet, hist, adminToken, "")
	var h projections.ObjectHistory
	if err := json.Unmarshal(body, &h); err != nil || status != http.StatusOK {
		t.Fatalf("history: %d %v", status, err)
	}
	ops := 0
	for _, op := range f.w.Ops {
		if op.ObjectID == onProduct.ID {
			ops++
		}
	}
	if h.ObjectID != onProduct.ID || len(h.Entries) != ops {
		t.Errorf("history of %d with %d entries, want %d with %d", h.ObjectID, len(h.Entries), onProduct.ID, ops)
	}
	// The value now is the workload's final value; before the object existed, it did not.
	_, body = f.do(t, http.MethodGet, "/v1/dataobjects/"+strconv.FormatInt(onProduct.ID, 10)+"/value?at="+url.QueryEscape(time.Now().Add(time.Hour).Format(time.RFC3339)), adminToken, "")
	var v projections.ValueAsOf
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatal(err)
	}
	if !v.Exists || int64(v.IntValue) != f.w.Final[onProduct.ID] {
		t.Errorf("value now %+v, want %d", v, f.w.Final[onProduct.ID])
	}
	_, body = f.do(t, http.MethodGet, "/v1/dataobjects/"+strconv.FormatInt(onProduct.ID, 10)+"/value?at=2000-01-01T00:00:00Z", adminToken, "")
	if err := json.Unmarshal(body, &v); err != nil || v.Exists {
		t.Errorf("value in 2000: %+v %v, want not existing", v, err)
	}
}

func TestUsageIsFilteredToWhatTheTokenMayList(t *testing.T) {
	f := newFixture(t)
	productTwo := f.w.Objects[3].ProductID
	lister := f.token(t, ledger.TokenSpec{Methods: []domain.Method{domain.MethodListDataObjects}, ProductLock: productTwo})
	q := "/v1/usage?from=2025-01-01&to=2025-12-31&tz=Europe/Stockholm&by=month"
	var all, mine projections.UsageReport
	status, body := f.do(t, http.MethodGet, q, adminToken, "")
	if status != http.StatusOK || json.Unmarshal(body, &all) != nil {
		t.Fatalf("admin usage: %d %s", status, body)
	}
	status, body = f.do(t, http.MethodGet, q, lister, "")
	if status != http.StatusOK || json.Unmarshal(body, &mine) != nil {
		t.Fatalf("token usage: %d %s", status, body)
	}
	want := 0
	for _, r := range all.Rows {
		if r.ProductID == productTwo {
			want++
		}
	}
	if want == 0 || len(mine.Rows) != want || len(all.Rows) <= want {
		t.Fatalf("token sees %d rows, admin %d, of product two %d", len(mine.Rows), len(all.Rows), want)
	}
	for _, r := range mine.Rows {
		if r.ProductID != productTwo {
			t.Errorf("token sees a row of product %d", r.ProductID)
		}
	}
	// The period bounds follow the zone; to=2025-12-31 includes that day.
	if all.TimeZone != "Europe/Stockholm" || !all.To.Equal(time.Date(2026, 1, 1, 0, 0, 0, 0, mustLoc(t, "Europe/Stockholm"))) {
		t.Errorf("report zone %s, to %v", all.TimeZone, all.To)
	}
	// The product filter gives the same rows as the token's locks.
	var filtered projections.UsageReport
	_, body = f.do(t, http.MethodGet, q+"&product="+strconv.FormatInt(productTwo, 10), adminToken, "")
	if err := json.Unmarshal(body, &filtered); err != nil || len(filtered.Rows) != want {
		t.Errorf("product filter: %d rows (%v), want %d", len(filtered.Rows), err, want)
	}
	// CSV has a header and one record per row.
	status, body = f.do(t, http.MethodGet, q+"&format=csv", adminToken, "")
	recs, err := csv.NewReader(strings.NewReader(string(body))).ReadAll()
	if status != http.StatusOK || err != nil || len(recs) != len(all.Rows)+1 || strings.Join(recs[0], ",") != strings.Join(auditapi.UsageCSVHeader(), ",") {
		t.Errorf("csv: status %d, %d records, err %v", status, len(recs), err)
	}
	for _, bad := range []string{"?from=2025-01-01", "?from=2025-02-01&to=2025-01-01", "?from=2025-01-01&to=2025-02-01&tz=Mars/Olympus", "?from=2025-01-01&to=2025-02-01&by=week", "?from=x&to=2025-02-01", "?from=2025-01-01&to=2025-02-01&format=xml"} {
		if status, _ := f.do(t, http.MethodGet, "/v1/usage"+bad, adminToken, ""); status != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", bad, status)
		}
	}
	noList := f.token(t, ledger.TokenSpec{Methods: []domain.Method{domain.MethodIncrementIntValue}})
	if status, _ := f.do(t, http.MethodGet, q, noList, ""); status != http.StatusForbidden {
		t.Errorf("token without ListDataObjects: %d", status)
	}
}

func TestCorrectionsAreAdminOnlyAndShowInTheHistory(t *testing.T) {
	f := newFixture(t)
	obj := f.w.Objects[1]
	path := "/v1/dataobjects/" + strconv.FormatInt(obj.ID, 10) + "/corrections"
	lister := f.token(t, ledger.TokenSpec{Methods: domain.AllMethods})
	if status, _ := f.do(t, http.MethodPost, path, lister, `{"amount":1,"reason":"x"}`); status != http.StatusForbidden {
		t.Errorf("token correction: %d, want 403", status)
	}
	for _, bad := range []string{`{"amount":1}`, `{"amount":0,"reason":"x"}`, `{"amount":1,"reason":"x","extra":1}`, `nope`,
		`{"amount":1,"amount":5,"reason":"x"}`, `{"Amount":1,"reason":"x"}`, `{"amount":1,"REASON":"x"}`} {
		if status, body := f.do(t, http.MethodPost, path, adminToken, bad); status != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", bad, status, body)
		}
	}
	if status, _ := f.do(t, http.MethodPost, "/v1/dataobjects/424242/corrections", adminToken, `{"amount":1,"reason":"x"}`); status != http.StatusNotFound {
		t.Errorf("unknown object: %d, want 404", status)
	}
	status, body := f.do(t, http.MethodPost, path, adminToken, `{"amount":-3,"reason":"refund of a double-counted run"}`)
	var e projections.HistoryEntry
	if status != http.StatusCreated || json.Unmarshal(body, &e) != nil {
		t.Fatalf("correction: %d %s", status, body)
	}
	if e.Amount != -3 || e.Correction != "refund of a double-counted run" || !e.Admin || e.Type != domain.EventDecrementApplied ||
		int64(*e.After) != f.w.Final[obj.ID]-3 {
		t.Errorf("correction entry %+v (final was %d)", e, f.w.Final[obj.ID])
	}
	_, body = f.do(t, http.MethodGet, "/v1/dataobjects/"+strconv.FormatInt(obj.ID, 10)+"/history", adminToken, "")
	var h projections.ObjectHistory
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatal(err)
	}
	if last := h.Entries[len(h.Entries)-1]; last.EventID != e.EventID {
		t.Errorf("last history entry %+v, want the correction", last)
	}
}

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// TestTokensSeeChangesButNotWhoMadeThem: the history a token reads leaves out the callers'
// token ids, request ids and addresses, which the admin sees; a token that ships inside
// customers' applications (negative key lock) may not run usage reports at all.
func TestTokensSeeChangesButNotWhoMadeThem(t *testing.T) {
	f := newFixture(t)
	obj := f.w.Objects[0]
	lister := f.token(t, ledger.TokenSpec{Methods: []domain.Method{domain.MethodListDataObjects}})
	path := "/v1/dataobjects/" + strconv.FormatInt(obj.ID, 10) + "/history"
	read := func(bearer string) projections.ObjectHistory {
		t.Helper()
		status, body := f.do(t, http.MethodGet, path, bearer, "")
		var h projections.ObjectHistory
		if status != http.StatusOK || json.Unmarshal(body, &h) != nil || len(h.Entries) == 0 {
			t.Fatalf("history: %d %s", status, body)
		}
		return h
	}
	adminSaw, tokenSaw := read(adminToken), read(lister)
	seen := false
	for _, e := range adminSaw.Entries {
		seen = seen || e.ClientAddr != "" || e.RequestID != ""
	}
	if !seen {
		t.Fatal("the admin's history shows no caller at all")
	}
	for _, e := range tokenSaw.Entries {
		if e.ClientAddr != "" || e.RequestID != "" || e.TokenID != nil || e.Admin {
			t.Fatalf("a token's history shows who made a change: %+v", e)
		}
	}
	inApp := f.token(t, ledger.TokenSpec{Methods: []domain.Method{domain.MethodListDataObjects}, KeyLock: -1})
	if status, body := f.do(t, http.MethodGet, "/v1/usage?from=2025-01-01&to=2025-12-31", inApp, ""); status != http.StatusForbidden {
		t.Fatalf("usage for a key-locked token: %d %s", status, body)
	}
}

// get asks srv with the admin credential.
func get(t *testing.T, srv *httptest.Server, path string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func TestTheReadModelAnswersAsTheReplay(t *testing.T) {
	f := newFixture(t)
	for _, q := range []string{
		"?from=2025-01-01&to=2025-12-31&tz=Asia/Kathmandu",
		"?from=2025-01-01&to=2025-12-31&by=month&tz=Pacific/Chatham",
		"?from=" + time.Now().AddDate(0, 0, -2).Format(time.DateOnly) + "&to=" + time.Now().AddDate(0, 0, 2).Format(time.DateOnly) + "&tz=Europe/Stockholm&time=recorded",
		"?from=2025-03-30T00:45:00Z&to=2025-10-26T01:15:00Z&tz=Australia/Lord_Howe",
		"?from=2025-03-30T00:45:07Z&to=2025-10-26T01:15:00Z&tz=Asia/Kolkata", // off the grid: replayed
		"?from=2025-01-01&to=2025-12-31&tz=America/St_Johns&format=csv",
	} {
		s1, got := get(t, f.srv, "/v1/usage"+q)
		s2, want := get(t, f.replay, "/v1/usage"+q)
		if s1 != http.StatusOK || s2 != http.StatusOK {
			t.Fatalf("%s: %d %s / %d %s", q, s1, got, s2, want)
		}
		var a, b projections.UsageReport
		if strings.Contains(q, "csv") {
			if string(got) != string(want) {
				t.Errorf("%s: csv differs", q)
			}
			continue
		}
		if err := json.Unmarshal(got, &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(want, &b); err != nil {
			t.Fatal(err)
		}
		wantSource := readmodel.SourceReadModel
		if strings.Contains(q, ":07Z") {
			wantSource = projections.SourceReplay
		}
		if a.Source != wantSource || b.Source != projections.SourceReplay {
			t.Errorf("%s: sources %q and %q", q, a.Source, b.Source)
		}
		a.Source, b.Source = "", ""
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		if len(b.Rows) == 0 || string(ja) != string(jb) {
			t.Errorf("%s: read model and replay differ (%d and %d rows)", q, len(a.Rows), len(b.Rows))
		}
	}
	for _, o := range f.w.Objects {
		for _, at := range []string{"", "?at=2020-01-01T00:00:00Z"} {
			path := "/v1/dataobjects/" + strconv.FormatInt(o.ID, 10) + "/value" + at
			_, got := get(t, f.srv, path)
			_, want := get(t, f.replay, path)
			var a, b projections.ValueAsOf
			if json.Unmarshal(got, &a) != nil || json.Unmarshal(want, &b) != nil {
				t.Fatalf("%s: %s / %s", path, got, want)
			}
			if a.AsOf == 0 {
				t.Errorf("%s: no asOf from the read model", path)
			}
			a.AsOf = 0
			if at == "" {
				a.At, b.At = time.Time{}, time.Time{}
			}
			if a != b {
				t.Errorf("%s: %+v, replay %+v", path, a, b)
			}
		}
	}
}

// TestBadReportsAreRefusedAndChangeNothing: a zone that is not IANA, from after to, more than
// 10,000 periods, a bad position: 400 with a clear message, and the store is as before.
func TestBadReportsAreRefusedAndChangeNothing(t *testing.T) {
	f := newFixture(t)
	before, err := f.model.Wait(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ query, message string }{
		{"?from=2025-01-01&to=2025-02-01&tz=Local", "IANA time zone"},
		{"?from=2025-01-01&to=2025-02-01&tz=Europe/Nowhere", "not an IANA time zone"},
		{"?from=2025-01-01&to=2025-02-01&tz=%2E%2E%2Fetc", "not an IANA time zone"},
		{"?from=2025-02-01&to=2025-01-01", "from must be before to"},
		{"?from=2025-02-01T00:00:00Z&to=2025-01-31T00:00:00Z", "from must be before to"},
		{"?from=1990-01-01&to=2025-12-31", "10000 periods at most"},
		{"?from=2025-01-01&to=2025-02-01&position=x", "position"},
	} {
		for _, srv := range []*httptest.Server{f.srv, f.replay} {
			if srv == f.replay && strings.Contains(c.query, "position") {
				continue // a replay reflects the whole store: it reads no position
			}
			status, body := get(t, srv, "/v1/usage"+c.query)
			var e auditapi.ErrorBody
			if status != http.StatusBadRequest || json.Unmarshal(body, &e) != nil || !strings.Contains(e.Error, c.message) {
				t.Errorf("%s: %d %s, want 400 saying %q", c.query, status, body, c.message)
			}
		}
	}
	// 10,000 days is the most one report may have.
	if status, body := get(t, f.srv, "/v1/usage?from=2000-01-01&to="+time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, 9999).Format(time.DateOnly)); status != http.StatusOK {
		t.Errorf("10,000 days: %d %s", status, body)
	}
	if after := f.model.Position(); after != before {
		t.Errorf("the store moved from %d to %d", before, after)
	}
}

func TestAQueryWaitsForThePositionItAsksFor(t *testing.T) {
	f := newFixture(t)
	at := f.model.Position()
	path := "/v1/usage?from=2025-01-01&to=2025-12-31&position=" + strconv.FormatUint(uint64(at), 10)
	var rep projections.UsageReport
	if status, body := get(t, f.srv, path); status != http.StatusOK || json.Unmarshal(body, &rep) != nil || rep.Position < at {
		t.Fatalf("%d %s", status, body)
	}
	h, err := auditapi.New(auditapi.Config{Store: f.env.Store, Ledger: f.env.Ledger, AdminToken: adminToken, ReadModel: f.model, ReadModelWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	// A position the store has not reached: the model cannot get there, so 503 says where it is.
	status, body := get(t, srv, "/v1/usage?from=2025-01-01&to=2025-12-31&position="+strconv.FormatUint(uint64(at)+1000, 10))
	if status != http.StatusServiceUnavailable || !strings.Contains(string(body), strconv.FormatUint(uint64(at), 10)) {
		t.Fatalf("ahead of the store: %d %s", status, body)
	}
}
