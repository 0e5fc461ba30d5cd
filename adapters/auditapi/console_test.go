package auditapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/auditapi"
	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/domain/viewer"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/audittest"
)

// consoleFixture is the audit API with the console's endpoints: the current-state projection
// and viewer credentials on a clock the test moves.
type consoleFixture struct {
	*fixture
	viewers *viewer.Service
	clock   *atomic.Int64 // Unix seconds of the viewers' clock
}

func newConsoleFixture(t *testing.T, seed bool) *consoleFixture {
	t.Helper()
	store, err := embedded.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	env := audittest.Start(t, store, "")
	var w *audittest.Workload
	if seed {
		w = audittest.Seed(t, env, rand.New(rand.NewPCG(7, 8)), 80)
	}
	clock := &atomic.Int64{}
	clock.Store(time.Now().Unix())
	viewers := viewer.New(store, func() time.Time { return time.Unix(clock.Load(), 0) })
	h, err := auditapi.New(auditapi.Config{Store: store, Ledger: env.Ledger, AdminToken: adminToken, Viewers: viewers, View: env.Proj})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &consoleFixture{fixture: &fixture{srv: srv, env: env, w: w}, viewers: viewers, clock: clock}
}

func (f *consoleFixture) viewer(t *testing.T, expires *time.Time) string {
	t.Helper()
	_, secret, err := f.viewers.Create(context.Background(), domain.Metadata{Admin: true}, "billing", expires)
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

// getJSON sends a GET with a credential and decodes a 200 answer into out.
func (f *consoleFixture) getJSON(t *testing.T, path, bearer string, out any) (int, string) {
	t.Helper()
	code, body := f.do(t, http.MethodGet, path, bearer, "")
	if code == http.StatusOK && out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("GET %s: %v\n%s", path, err, body)
		}
	}
	return code, string(body)
}

// TestConsoleReadsAcceptAdminAndViewer calls every read endpoint the console uses with the
// admin token, a viewer credential, an expired and a revoked one, a Cryptolens token and
// nothing; and posts a correction as a viewer, which is refused with 403 and changes nothing.
func TestConsoleReadsAcceptAdminAndViewer(t *testing.T) {
	f := newConsoleFixture(t, true)
	obj := f.w.Objects[0].ID
	live := f.viewer(t, nil)
	soon := time.Unix(f.clock.Load(), 0).Add(time.Hour)
	expiring := f.viewer(t, &soon)
	revoked := f.viewer(t, nil)
	creds, err := f.viewers.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.viewers.Revoke(context.Background(), domain.Metadata{Admin: true}, creds[2].ID); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(3600) // the second credential expires now
	lister := f.token(t, ledger.TokenSpec{Methods: []domain.Method{domain.MethodListDataObjects}})

	usage := "from=2025-01-01&to=2025-12-31&tz=Europe/Stockholm"
	everything := []string{
		"/v1/whoami", "/v1/status", "/v1/overview", "/v1/dataobjects", "/v1/limits", "/v1/uploads",
		"/v1/usage?" + usage, "/v1/usage/series?" + usage, "/v1/usage/top-keys?" + usage,
		fmt.Sprintf("/v1/dataobjects/%d/history", obj), fmt.Sprintf("/v1/dataobjects/%d/value", obj),
	}
	// Summaries of everything are for the admin and viewers only, not for Cryptolens tokens.
	adminOnly := map[string]bool{"/v1/status": true, "/v1/overview": true, "/v1/dataobjects": true, "/v1/limits": true, "/v1/uploads": true}
	for _, path := range everything {
		for _, c := range []struct {
			who, bearer string
			want        int
			msg         string
		}{
			{"admin", adminToken, http.StatusOK, ""},
			{"viewer", live, http.StatusOK, ""},
			{"expired viewer", expiring, http.StatusUnauthorized, "expired"},
			{"revoked viewer", revoked, http.StatusUnauthorized, "revoked"},
			{"unknown viewer", "tv_nobody", http.StatusUnauthorized, "unknown viewer credential"},
			{"nobody", "", http.StatusUnauthorized, "Unable to authenticate."},
		} {
			code, body := f.getJSON(t, path, c.bearer, nil)
			if code != c.want || !strings.Contains(body, c.msg) {
				t.Errorf("%s GET %s: %d %s", c.who, path, code, body)
			}
		}
		want := http.StatusOK
		if adminOnly[path] {
			want = http.StatusForbidden
		}
		if code, body := f.getJSON(t, path, lister, nil); code != want && !(code == http.StatusForbidden && strings.Contains(path, "/dataobjects/")) {
			t.Errorf("token GET %s: %d %s", path, code, body)
		}
	}
	var who auditapi.WhoAmI
	if f.getJSON(t, "/v1/whoami", live, &who); who.Role != "viewer" || who.CanWrite {
		t.Errorf("whoami as a viewer: %+v", who)
	}
	if f.getJSON(t, "/v1/whoami", adminToken, &who); who.Role != "admin" || !who.CanWrite {
		t.Errorf("whoami as the admin: %+v", who)
	}

	// A token asking for the usage of an object it may not see: 403, whether it exists or not.
	other := int64(1) // the seeded workload's products are 1 and 2
	if f.w.Objects[0].ProductID == 1 {
		other = 2
	}
	elsewhere := f.token(t, ledger.TokenSpec{Methods: []domain.Method{domain.MethodListDataObjects}, ProductLock: other})
	for _, id := range []int64{obj, 99999} {
		if code, _ := f.getJSON(t, fmt.Sprintf("/v1/usage/series?%s&object=%d", usage, id), elsewhere, nil); code != http.StatusForbidden {
			t.Errorf("a token locked to another product, series of object %d: %d", id, code)
		}
	}
	if code, _ := f.getJSON(t, fmt.Sprintf("/v1/usage/series?%s&object=%d", usage, obj), lister, nil); code != http.StatusOK {
		t.Errorf("a token that may list object %d, its series: %d", obj, code)
	}
	// A viewer reads what the admin reads.
	for _, path := range []string{"/v1/usage?" + usage, "/v1/dataobjects", "/v1/limits", "/v1/uploads"} {
		_, asAdmin := f.getJSON(t, path, adminToken, nil)
		if _, asViewer := f.getJSON(t, path, live, nil); asViewer != asAdmin || !strings.HasPrefix(asAdmin, "{") {
			t.Errorf("GET %s: the viewer's answer differs from the admin's", path)
		}
	}
	// A viewer sees who made each change, as the admin does.
	var h projections.ObjectHistory
	f.getJSON(t, fmt.Sprintf("/v1/dataobjects/%d/history", obj), live, &h)
	var withWho int
	for _, e := range h.Entries {
		if e.RequestID != "" {
			withWho++
		}
	}
	if withWho == 0 {
		t.Error("the viewer's history hides who made the changes")
	}

	// A viewer's correction: 403, read-only, nothing appended.
	code, body := f.do(t, http.MethodPost, fmt.Sprintf("/v1/dataobjects/%d/corrections", obj), live, `{"amount":5,"reason":"sneaky"}`)
	if code != http.StatusForbidden || !strings.Contains(string(body), "read-only") {
		t.Errorf("viewer correction: %d %s", code, body)
	}
	var after projections.ObjectHistory
	f.getJSON(t, fmt.Sprintf("/v1/dataobjects/%d/history", obj), adminToken, &after)
	if len(after.Entries) != len(h.Entries) {
		t.Errorf("a refused correction changed the history: %d entries, then %d", len(h.Entries), len(after.Entries))
	}
	// The admin's goes through.
	if code, body := f.do(t, http.MethodPost, fmt.Sprintf("/v1/dataobjects/%d/corrections", obj), adminToken, `{"amount":5,"reason":"refund"}`); code != http.StatusCreated {
		t.Errorf("admin correction: %d %s", code, body)
	}
}

// periodNames lists the periods of [from, to) in loc by hour, day or month, computed here with
// nothing but the time package.
func periodNames(from, to time.Time, loc *time.Location, by string) []string {
	var out []string
	switch by {
	case "hour":
		for t := from; t.Before(to); t = t.Add(time.Hour) {
			out = append(out, t.In(loc).Format("2006-01-02T15:04Z07:00"))
		}
	case "day":
		for d := from.In(loc); d.Before(to); d = d.AddDate(0, 0, 1) {
			out = append(out, d.Format(time.DateOnly))
		}
	case "month":
		for d := from.In(loc); d.Before(to); d = d.AddDate(0, 1, 0) {
			out = append(out, d.Format("2006-01"))
		}
	}
	return out
}

// TestUsageSeriesEqualsTheUsageReport checks the chart's series against /v1/usage for the same
// query: one point per period of the range (gap-filled, named as the report names them, 23 and
// 25-hour days and the doubled autumn hour included), each point the sum of the report's rows
// of that period, closing the sum of each object's last closing so far.
func TestUsageSeriesEqualsTheUsageReport(t *testing.T) {
	f := newConsoleFixture(t, true)
	stockholm := mustLoc(t, "Europe/Stockholm")
	obj := f.w.Objects[1]
	cases := []struct {
		name     string
		q        url.Values
		from, to time.Time
		loc      *time.Location
	}{
		{"year by day in Stockholm", url.Values{"from": {"2025-01-01"}, "to": {"2025-12-31"}, "tz": {"Europe/Stockholm"}, "by": {"day"}},
			time.Date(2025, 1, 1, 0, 0, 0, 0, stockholm), time.Date(2026, 1, 1, 0, 0, 0, 0, stockholm), stockholm},
		{"year by month in UTC", url.Values{"from": {"2025-01-01"}, "to": {"2025-12-31"}, "by": {"month"}},
			time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.UTC},
		{"autumn change by hour, one product", url.Values{"from": {"2025-10-25"}, "to": {"2025-10-27"}, "tz": {"Europe/Stockholm"}, "by": {"hour"}, "product": {fmt.Sprint(obj.ProductID)}},
			time.Date(2025, 10, 25, 0, 0, 0, 0, stockholm), time.Date(2025, 10, 28, 0, 0, 0, 0, stockholm), stockholm},
		{"everything by month, recorded axis", url.Values{"from": {"2025-01-01"}, "to": {"2030-01-01"}, "by": {"month"}, "time": {"recorded"}},
			time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2030, 1, 2, 0, 0, 0, 0, time.UTC), time.UTC},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var rep projections.UsageReport
			if code, body := f.getJSON(t, "/v1/usage?"+c.q.Encode(), adminToken, &rep); code != http.StatusOK {
				t.Fatalf("usage: %d %s", code, body)
			}
			var s auditapi.Series
			if code, body := f.getJSON(t, "/v1/usage/series?"+c.q.Encode(), adminToken, &s); code != http.StatusOK {
				t.Fatalf("series: %d %s", code, body)
			}
			names := periodNames(c.from, c.to, c.loc, c.q.Get("by"))
			if len(s.Points) != len(names) {
				t.Fatalf("%d points, want %d periods", len(s.Points), len(names))
			}
			if c.name == "autumn change by hour, one product" && len(names) != 73 {
				t.Fatalf("three days around the autumn change have %d hours, want 73", len(names))
			}
			want := map[string]auditapi.SeriesPoint{}
			closing := map[int64]int64{}
			rowsByPeriod := map[string][]projections.UsageRow{}
			for _, r := range rep.Rows {
				rowsByPeriod[r.Period] = append(rowsByPeriod[r.Period], r)
			}
			openings := map[int64]int64{}
			for _, r := range rep.Rows {
				if _, ok := openings[r.ObjectID]; !ok {
					openings[r.ObjectID] = r.Opening // rows are in period order per object
				}
			}
			for id, v := range openings {
				closing[id] = v
			}
			for _, name := range names {
				p := want[name]
				for _, r := range rowsByPeriod[name] {
					p.Increments += r.Increments
					p.Decrements += r.Decrements
					p.Corrections += r.Corrections
					p.Net += r.Net
					p.Entries += r.Entries
					closing[r.ObjectID] = r.Closing
				}
				for _, v := range closing {
					p.Closing += v
				}
				want[name] = p
			}
			var rowsTotal int
			for i, pt := range s.Points {
				if pt.Name != names[i] {
					t.Fatalf("point %d is %s, want %s", i, pt.Name, names[i])
				}
				w := want[pt.Name]
				if pt.Increments != w.Increments || pt.Decrements != w.Decrements || pt.Corrections != w.Corrections || pt.Net != w.Net || pt.Entries != w.Entries || pt.Closing != w.Closing {
					t.Errorf("point %s: %+v, the report sums to %+v", pt.Name, pt, w)
				}
				rowsTotal += len(rowsByPeriod[pt.Name])
			}
			if rowsTotal != len(rep.Rows) || len(rep.Rows) == 0 {
				t.Errorf("the points cover %d of the report's %d rows", rowsTotal, len(rep.Rows))
			}
			if s.Position != rep.Position || s.TimeZone != rep.TimeZone {
				t.Errorf("series at %d in %s, report at %d in %s", s.Position, s.TimeZone, rep.Position, rep.TimeZone)
			}
		})
	}

	// One data object: its rows only.
	var s auditapi.Series
	q := url.Values{"from": {"2025-01-01"}, "to": {"2025-12-31"}, "by": {"month"}, "object": {fmt.Sprint(obj.ID)}}
	if code, body := f.getJSON(t, "/v1/usage/series?"+q.Encode(), adminToken, &s); code != http.StatusOK || s.Objects > 1 {
		t.Fatalf("series of one object: %d %s", code, body)
	}
	var rep projections.UsageReport
	if code, body := f.getJSON(t, "/v1/usage?"+q.Encode(), adminToken, &rep); code != http.StatusOK || len(rep.Rows) == 0 || len(rep.Rows) != len(s.Rows) {
		t.Fatalf("usage of one object: %d %s", code, body)
	}
	for i, r := range s.Rows {
		if r.ObjectID != obj.ID || rep.Rows[i] != r {
			t.Errorf("series of object %d: row %+v, /v1/usage's %+v", obj.ID, r, rep.Rows[i])
		}
	}
}

// TestUsageBadInput: unknown zones, ranges of more than 10,000 periods, unknown objects and
// bad limits are 4xx with a message that says what is wrong.
func TestUsageBadInput(t *testing.T) {
	f := newConsoleFixture(t, true)
	// 10,000 hours from 2025-01-01T00:00Z end at 2026-02-21T16:00Z.
	last := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(10000 * time.Hour)
	for _, c := range []struct {
		path string
		want int
		msg  string
	}{
		{"/v1/usage/series?from=2025-01-01&to=2025-01-02&tz=Mars/Olympus_Mons", 400, "not an IANA time zone"},
		{"/v1/usage?from=2025-01-01&to=2025-01-02&tz=Mars/Olympus_Mons", 400, "not an IANA time zone"},
		{"/v1/overview?tz=Not/AZone", 400, "not a time zone"},
		{"/v1/usage/series?from=2025-01-01T00:00:00Z&to=" + last.Format(time.RFC3339) + "&by=hour", 200, ""},
		{"/v1/usage/series?from=2025-01-01T00:00:00Z&to=" + last.Add(time.Second).Format(time.RFC3339) + "&by=hour", 400, "10000 periods at most"},
		{"/v1/usage?from=2020-01-01&to=2025-12-31&by=hour", 400, "10000 periods at most"},
		{"/v1/usage/top-keys?from=2020-01-01&to=2025-12-31&by=hour", 400, "10000 periods at most"},
		{"/v1/usage/series?from=2025-01-01&to=2025-01-02&by=week", 400, "want hour, day or month"},
		{"/v1/usage/series?from=2025-01-02&to=2025-01-01", 400, "from must be before to"},
		{"/v1/usage/series?from=2025-01-01&to=2025-01-02&object=99999", 404, "could not be found"},
		{"/v1/usage/series?from=2025-01-01&to=2025-01-02&object=x", 400, "want a data object id"},
		{"/v1/dataobjects/99999/history", 404, "could not be found"},
		{"/v1/dataobjects/99999/value", 404, "could not be found"},
		{"/v1/usage/top-keys?from=2025-01-01&to=2025-01-02&limit=101", 400, "from 1 to 100"},
		{"/v1/usage/top-keys?from=2025-01-01&to=2025-01-02&limit=0", 400, "from 1 to 100"},
		{"/v1/limits?near=2", 400, "ratio"},
		{"/v1/uploads?limit=-1", 400, "limit"},
	} {
		code, body := f.getJSON(t, c.path, adminToken, nil)
		if code != c.want || !strings.Contains(body, c.msg) {
			t.Errorf("GET %s: %d %s, want %d with %q", c.path, code, body, c.want, c.msg)
		}
	}
}

// TestTopKeys ranks keys by the increments of their objects in /v1/usage's rows, ties by net
// then key id, 10 by default and at most the limit.
func TestTopKeys(t *testing.T) {
	f := newConsoleFixture(t, true)
	q := "from=2025-01-01&to=2025-12-31&tz=Europe/Stockholm"
	var rep projections.UsageReport
	f.getJSON(t, "/v1/usage?"+q, adminToken, &rep)
	sums := map[int64]*auditapi.KeyUsage{}
	for _, r := range rep.Rows {
		if r.KeyID == 0 {
			continue
		}
		k := sums[r.KeyID]
		if k == nil {
			k = &auditapi.KeyUsage{KeyID: r.KeyID, Key: r.Key, ProductID: r.ProductID}
			sums[r.KeyID] = k
		}
		k.Increments += r.Increments
		k.Net += r.Net
	}
	var want []auditapi.KeyUsage
	for _, k := range sums {
		want = append(want, *k)
	}
	sort.Slice(want, func(i, j int) bool {
		if want[i].Increments != want[j].Increments {
			return want[i].Increments > want[j].Increments
		}
		if want[i].Net != want[j].Net {
			return want[i].Net > want[j].Net
		}
		return want[i].KeyID < want[j].KeyID
	})
	if len(want) < 2 {
		t.Fatalf("the workload has %d keys with usage", len(want))
	}
	for _, limit := range []string{"", "1", "100"} {
		var top auditapi.TopKeys
		if code, body := f.getJSON(t, "/v1/usage/top-keys?"+q+"&limit="+limit, adminToken, &top); code != http.StatusOK {
			t.Fatalf("top keys: %d %s", code, body)
		}
		n := map[string]int{"": 10, "1": 1, "100": 100}[limit]
		if n > len(want) {
			n = len(want)
		}
		if len(top.Keys) != n {
			t.Fatalf("limit %q: %d keys, want %d", limit, len(top.Keys), n)
		}
		for i, k := range top.Keys {
			if k.KeyID != want[i].KeyID || k.Increments != want[i].Increments || k.Net != want[i].Net || k.Key != want[i].Key {
				t.Errorf("limit %q: rank %d is %+v, want %+v", limit, i+1, k, want[i])
			}
		}
	}
}

// TestOverviewAndUploads compares the overview and the upload list with the projection and
// with the objects' histories: every upload id in a history is listed once, with its status and
// its number of entries.
func TestOverviewAndUploads(t *testing.T) {
	f := newConsoleFixture(t, true)
	var ov auditapi.Overview
	if code, body := f.getJSON(t, "/v1/overview?tz=Europe/Stockholm", adminToken, &ov); code != http.StatusOK {
		t.Fatalf("overview: %d %s", code, body)
	}
	var st struct{ products, keys, live, removed int }
	f.env.Proj.Read(func(s *state.State) {
		st.products, st.keys = len(s.Products), len(s.Keys)
		for _, o := range s.Objects {
			if o.Removed {
				st.removed++
			} else {
				st.live++
			}
		}
	})
	if ov.Products != st.products || ov.Keys != st.keys || ov.DataObjects != st.live || ov.RemovedDataObjects != st.removed || ov.TimeZone != "Europe/Stockholm" {
		t.Errorf("overview %+v, projection %+v", ov, st)
	}

	// Every upload as the histories show it.
	type upload struct {
		status  projections.UploadStatus
		entries int
	}
	fromHistory := map[uuid.UUID]*upload{}
	for _, o := range f.w.Objects {
		var h projections.ObjectHistory
		f.getJSON(t, fmt.Sprintf("/v1/dataobjects/%d/history", o.ID), adminToken, &h)
		for _, e := range h.Entries {
			if e.UploadID == nil {
				continue
			}
			u := fromHistory[*e.UploadID]
			if u == nil {
				u = &upload{status: e.UploadStatus}
				fromHistory[*e.UploadID] = u
			}
			u.entries++
		}
	}
	var list auditapi.UploadList
	if code, body := f.getJSON(t, "/v1/uploads?limit=10000", adminToken, &list); code != http.StatusOK {
		t.Fatalf("uploads: %d %s", code, body)
	}
	counts := map[string]int{}
	entries := 0
	for _, u := range list.Uploads {
		counts[u.Status]++
		h := fromHistory[u.ID]
		if h == nil {
			t.Errorf("upload %s (%s) is in no history", u.ID, u.Status)
			continue
		}
		if string(h.status) != u.Status || h.entries != u.Entries {
			t.Errorf("upload %s: %s with %d entries, the histories say %s with %d", u.ID, u.Status, u.Entries, h.status, h.entries)
		}
		if u.Status == "committed" {
			entries += u.Entries
		}
		delete(fromHistory, u.ID)
	}
	if len(fromHistory) != 0 {
		t.Errorf("%d uploads of the histories are not listed", len(fromHistory))
	}
	if counts["committed"] == 0 || counts["aborted"] == 0 || counts["pending"] != 1 {
		t.Errorf("the workload's uploads by status: %v", counts)
	}
	if ov.UploadsCommitted != counts["committed"] || ov.UploadsAborted != counts["aborted"] || ov.UploadsPending != counts["pending"] || ov.EntriesApplied != entries {
		t.Errorf("overview %+v, uploads %v with %d entries applied", ov, counts, entries)
	}
	for i := 1; i < len(list.Uploads); i++ {
		if list.Uploads[i].Prepared.After(list.Uploads[i-1].Prepared) {
			t.Fatal("uploads are not newest first")
		}
	}
}

// TestLimits lists the live objects whose value is near or over the smallest feature lock of
// the live tokens that may increment or decrement them, by the general or the key-specific
// methods.
func TestLimits(t *testing.T) {
	f := newConsoleFixture(t, false)
	ctx := context.Background()
	admin := ledger.Caller{Admin: true}
	l := f.env.Ledger
	p1, _ := l.CreateProduct(ctx, admin, "One")
	p2, _ := l.CreateProduct(ctx, admin, "Two")
	k1, _ := l.CreateKey(ctx, admin, p1.ID)
	k2, _ := l.CreateKey(ctx, admin, p1.ID)
	k3, _ := l.CreateKey(ctx, admin, p2.ID)
	tok := func(spec ledger.TokenSpec) domain.Token {
		t.Helper()
		tk, _, err := l.CreateToken(ctx, admin, spec)
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
	setup := tok(ledger.TokenSpec{Name: "setup", Methods: domain.AllMethods})
	inc := []domain.Method{domain.MethodIncrementIntValue}
	tok(ledger.TokenSpec{Name: "app", Methods: inc, ProductLock: p1.ID, KeyLock: -1, FeatureLock: 10})                               // key-specific, product one
	tok(ledger.TokenSpec{Name: "two", Methods: []domain.Method{domain.MethodDecrementIntValue}, ProductLock: p2.ID, FeatureLock: 4}) // general, product two
	tok(ledger.TokenSpec{Name: "k2", Methods: inc, KeyLock: k2.ID, FeatureLock: 20})                                                 // general, key two
	tok(ledger.TokenSpec{Name: "reader", Methods: []domain.Method{domain.MethodListDataObjects}, FeatureLock: 1})                    // changes nothing
	revoked := tok(ledger.TokenSpec{Name: "old", Methods: inc, FeatureLock: 1})                                                      // revoked below
	if err := l.RevokeToken(ctx, admin, revoked.ID); err != nil {
		t.Fatal(err)
	}
	add := func(owner domain.Owner, name string, v int32) int64 {
		t.Helper()
		id, err := l.AddDataObject(ctx, ledger.Caller{Token: setup}, ledger.AddDataObject{Scope: ledger.Scope{Referencer: owner}, Name: name, IntValue: v})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	a := add(domain.Owner{Type: domain.OwnerKey, ID: k1.ID}, "a", 9)        // lock 10: 90%
	add(domain.Owner{Type: domain.OwnerKey, ID: k1.ID}, "b", 7)             // 70%: not listed
	c := add(domain.Owner{Type: domain.OwnerKey, ID: k2.ID}, "c", 10)       // locks 10 and 20: over
	d := add(domain.Owner{Type: domain.OwnerProduct, ID: p2.ID}, "d", 3)    // lock 4: 75%
	e := add(domain.Owner{Type: domain.OwnerKey, ID: k3.ID}, "e", 5)        // lock 4 (general, product two): over
	add(domain.Owner{Type: domain.OwnerUser}, "f", 100)                     // no live token reaches it
	gone := add(domain.Owner{Type: domain.OwnerKey, ID: k1.ID}, "gone", 50) // removed
	if err := l.RemoveDataObject(ctx, ledger.Caller{Token: setup}, ledger.RemoveDataObject{Scope: ledger.Scope{Referencer: domain.Owner{Type: domain.OwnerKey, ID: k1.ID}}, Object: ledger.ObjectRef{ID: gone}}); err != nil {
		t.Fatal(err)
	}

	check := func(query string, want []int64, locks map[int64][2]int64) {
		t.Helper()
		var lim auditapi.LimitList
		if code, body := f.getJSON(t, "/v1/limits"+query, adminToken, &lim); code != http.StatusOK {
			t.Fatalf("limits: %d %s", code, body)
		}
		var got []int64
		for _, x := range lim.Limits {
			got = append(got, x.ObjectID)
			if l, ok := locks[x.ObjectID]; ok && (x.FeatureLock != l[0] || int64(x.Tokens) != l[1]) {
				t.Errorf("object %d: lock %d of %d tokens, want %d of %d", x.ObjectID, x.FeatureLock, x.Tokens, l[0], l[1])
			}
			if x.Over != (int64(x.IntValue) >= x.FeatureLock) {
				t.Errorf("object %d: over %v at %d of %d", x.ObjectID, x.Over, x.IntValue, x.FeatureLock)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("limits%s: objects %v, want %v", query, got, want)
		}
	}
	locks := map[int64][2]int64{a: {10, 1}, c: {10, 2}, d: {4, 1}, e: {4, 1}}
	check("", []int64{e, c, a}, locks)
	check("?near=0.75", []int64{e, c, a, d}, locks)
}

// TestUploadsListRefusals appends refused-upload records to an owner's upload stream as the
// ledger records them (UploadRefused with its repeats counted by UploadRefusalRepeated) and
// finds them in the upload list, with their reason and repeats, and in the overview's count.
func TestUploadsListRefusals(t *testing.T) {
	f := newConsoleFixture(t, true)
	var owner domain.Owner
	f.env.Proj.Read(func(s *state.State) {
		for _, u := range s.Uploads {
			owner = u.Owner
			break
		}
	})
	refusal := uuid.New()
	appendEvent := func(typ string, body any) {
		t.Helper()
		data, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		md, _ := json.Marshal(domain.Metadata{RequestID: "refused-upload"})
		if _, err := f.env.Store.Append(context.Background(), domain.UploadStream(owner), eventstore.Any(), eventstore.EventData{ID: uuid.New(), Type: typ, Data: data, Metadata: md}); err != nil {
			t.Fatal(err)
		}
	}
	appendEvent("UploadRefused", map[string]any{"refusalId": refusal, "reason": "feature-lock", "message": "The increment/decrement value not allowed by security settings.", "newEntries": 3, "newestLayer": "ab", "at": time.Now()})
	appendEvent("UploadRefusalRepeated", map[string]any{"refusalId": refusal, "repeats": 4, "at": time.Now()})

	var list auditapi.UploadList
	if code, body := f.getJSON(t, "/v1/uploads?limit=10000", adminToken, &list); code != http.StatusOK {
		t.Fatalf("uploads: %d %s", code, body)
	}
	var found *auditapi.Upload
	for i, u := range list.Uploads {
		if u.Status == "refused" {
			if found != nil {
				t.Fatalf("two refused uploads: %+v and %+v", *found, u)
			}
			found = &list.Uploads[i]
		}
	}
	if found == nil || found.ID != refusal || found.Repeats != 4 || found.Entries != 3 || found.Owner != owner ||
		!strings.Contains(found.Reason, "feature-lock") || !strings.Contains(found.Reason, "security settings") || found.RequestID != "refused-upload" {
		t.Fatalf("the refused upload: %+v", found)
	}
	if list.Uploads[0].ID != refusal {
		t.Errorf("the newest upload is %+v, not the refusal", list.Uploads[0])
	}
	var ov auditapi.Overview
	if f.getJSON(t, "/v1/overview", adminToken, &ov); !ov.RefusalsRecorded || ov.UploadsRefused != 5 {
		t.Errorf("overview: %d refused (recorded %v), want 5", ov.UploadsRefused, ov.RefusalsRecorded)
	}
}
