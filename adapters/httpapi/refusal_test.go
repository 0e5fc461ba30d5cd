package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/auditapi"
	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/eventstore/storetest"
	"github.com/tallyledger/tally/domain/ledger"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
)

const (
	msgIncorrect = "The input parameters were incorrect."
	msgFeature   = "The increment/decrement value not allowed by security settings."
	msgInt32     = "Cannot increment/decrement value since the limit was reached for an int32."
	msgTooMany   = "The log has more than 1000 new entries. Upload more often."
)

// uploadsOf lists the upload records of the fixture's key in a state ("" for all), through
// the admin API.
func (u *uploadEnv) uploadsOf(t *testing.T, st string) []ledger.UploadRecord {
	t.Helper()
	recs, err := u.env.Admin.ListUploads(context.Background(), st, strconv.FormatInt(u.key.ID, 10), 0)
	if err != nil {
		t.Fatalf("list uploads: %v", err)
	}
	return recs
}

// openRefusal is the key's one stuck refused log version; it fails the test if there is not
// exactly one.
func (u *uploadEnv) openRefusal(t *testing.T) ledger.UploadRecord {
	t.Helper()
	var open []ledger.UploadRecord
	for _, r := range u.uploadsOf(t, ledger.UploadStateRefused) {
		if r.Open {
			open = append(open, r)
		}
	}
	if len(open) != 1 {
		t.Fatalf("%d open refusals, want 1: %+v", len(open), open)
	}
	return open[0]
}

// resolve asks the admin API for a decision; it returns the refusal's HTTP status, 201 on
// success.
func (u *uploadEnv) resolve(t *testing.T, req httpapi.ResolveUploadRequest) (domain.UploadResolutionDecided, int) {
	t.Helper()
	d, err := u.env.Admin.ResolveUpload(context.Background(), req)
	var ae *httpapi.AdminError
	switch {
	case err == nil:
		return d, 201
	case errors.As(err, &ae):
		return d, ae.Status
	}
	t.Fatalf("resolve: %v", err)
	return d, 0
}

// layerHex is the identity of a log's i-th layer (oldest first) as events record it.
func layerHex(t *testing.T, keys *usagelog.KeyRing, data []byte, i int) string {
	t.Helper()
	entries, err := (&usagelog.Decoder{Keys: keys, MaxNewLayers: math.MaxInt}).DecodeRaw(context.Background(), data, usagelog.OldestFirst, nil)
	if err != nil {
		t.Fatal(err)
	}
	return entries[i].Layer.String()
}

// assertVerifyAgrees rebuilds the state from the store, as `tally verify` does, and compares
// it with the live projection.
func assertVerifyAgrees(t *testing.T, env *apitest.Env) {
	t.Helper()
	rebuilt, problems, err := projections.RebuildVerified(context.Background(), env.Store.(projections.AllReader), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("verify: %v", problems)
	}
	var diff []string
	env.Projection.Read(func(st *state.State) { diff = state.Diff(st, rebuilt) })
	if len(diff) > 0 {
		t.Fatalf("live projection and rebuild differ: %v", diff)
	}
}

// TestRemovedObjectWedgeIsRecordedAndResolvedBySkipping is the first wedge of issue 16: v1 is
// applied, x is removed, v5 (a layer naming x, then three +1 on y) and v8 (three more) are
// refused for ever, until an operator skips the entry naming x.
func TestRemovedObjectWedgeIsRecordedAndResolvedBySkipping(t *testing.T) {
	clock, advance := testClock()
	u := newUploadEnvWith(t, apitest.Options{Clock: clock, RefusalRepeatInterval: time.Minute})
	owner := u.toKey(u.token)
	x := u.add(t, owner, "AddDataObjectToKey", "x", 0)
	y := u.add(t, owner, "AddDataObjectToKey", "y", 0)
	l := u.log(t).add(x, 1)
	if applied, _ := uploadBody(t, u.upload(l.base64())); applied != 1 {
		t.Fatalf("v1 applied %d", applied)
	}
	ok(t, u.env.Call("RemoveDataObjectToKey", with(owner, "Id", strconv.FormatInt(x, 10))))
	l.add(x, 1).add(y, 1).add(y, 1).add(y, 1)
	v5 := l.base64()
	for range 3 { // the License Server retries; the same version is one record
		refused(t, u.upload(v5), 400, msgIncorrect)
	}
	recs := u.uploadsOf(t, ledger.UploadStateRefused)
	if len(recs) != 1 {
		t.Fatalf("%d refusal records after three refusals of one version, want 1: %+v", len(recs), recs)
	}
	r := recs[0]
	if r.Reason != domain.RefusalInvalidObject || r.Message != msgIncorrect || r.NewEntries != 4 || !r.Open ||
		r.NewestLayer != layerHex(t, u.keys, l.data, 4) || r.Offending == nil ||
		r.Offending.Layer != layerHex(t, u.keys, l.data, 1) || r.Offending.Index != 0 || r.Offending.ObjectID != x || r.Offending.Amount != 1 {
		t.Fatalf("refusal record %+v (offending %+v)", r, r.Offending)
	}
	// v8, refused soon after for the same reason, is counted on the same record, which follows
	// it once the repeats are written (at most once per interval).
	l.add(y, 1).add(y, 1).add(y, 1)
	refused(t, u.upload(l.base64()), 400, msgIncorrect)
	advance(2 * time.Minute)
	refused(t, u.upload(l.base64()), 400, msgIncorrect)
	recs = u.uploadsOf(t, ledger.UploadStateRefused)
	if len(recs) != 1 {
		t.Fatalf("%d refusal records after a newer version, want 1", len(recs))
	}
	open := u.openRefusal(t)
	if open.ID != r.ID || open.NewEntries != 7 || open.NewestLayer != layerHex(t, u.keys, l.data, 7) || open.Repeats != 4 ||
		open.Offending == nil || open.Offending.ObjectID != x {
		t.Fatalf("the record after v8: %+v", open)
	}

	// Bad decisions are refused clearly and change nothing.
	before := len(u.uploadsOf(t, ""))
	if _, status := u.resolve(t, httpapi.ResolveUploadRequest{RefusalID: open.ID.String(), Mode: domain.ResolveInChunks, Reason: "try chunks"}); status != 400 {
		t.Fatalf("in-chunks on a removed-object refusal: status %d, want 400", status)
	}
	if _, status := u.resolve(t, httpapi.ResolveUploadRequest{RefusalID: open.ID.String(), Mode: domain.ResolveSkipEntries, Reason: "  "}); status != 400 {
		t.Fatalf("empty reason: status %d, want 400", status)
	}
	if _, status := u.resolve(t, httpapi.ResolveUploadRequest{RefusalID: uuid.NewString(), Mode: domain.ResolveSkipEntries, Reason: "r"}); status != 404 {
		t.Fatalf("unknown refusal: status %d, want 404", status)
	}
	if _, status := u.resolve(t, httpapi.ResolveUploadRequest{Key: u.other.Key, Mode: domain.ResolveSkipEntries, Reason: "r"}); status != 400 {
		t.Fatalf("a key with nothing refused: status %d, want 400", status)
	}
	if after := len(u.uploadsOf(t, "")); after != before {
		t.Fatalf("refused decisions changed the records: %d then %d", before, after)
	}
	if got := u.openRefusal(t); len(got.Resolutions) != 0 {
		t.Fatalf("refused decisions were recorded: %+v", got.Resolutions)
	}

	d, status := u.resolve(t, httpapi.ResolveUploadRequest{Key: u.key.Key, Mode: domain.ResolveSkipEntries, Reason: "x was retired", DecidedBy: "alice"})
	if status != 201 || d.RefusalID != open.ID || d.DecidedBy != "alice" || d.Reason != "x was retired" {
		t.Fatalf("resolve: status %d, decision %+v", status, d)
	}
	if got := u.openRefusal(t); len(got.Resolutions) != 1 || got.Resolutions[0].ResolutionID != d.ResolutionID {
		t.Fatalf("the decision is not shown with its refusal: %+v", got.Resolutions)
	}
	// The next upload of v8 carries the decision out: six +1 on y count, the entry on x is
	// skipped.
	if applied, _ := uploadBody(t, u.upload(l.base64())); applied != 6 {
		t.Fatalf("v8 after the decision applied %d, want 6", applied)
	}
	if vy := u.value(t, y); vy != 6 {
		t.Fatalf("y = %d, want 6", vy)
	}
	for _, r := range u.uploadsOf(t, ledger.UploadStateRefused) {
		if r.Open {
			t.Fatalf("refusal %s still open after the resolution", r.ID)
		}
	}
	committed := u.uploadsOf(t, ledger.UploadStateCommitted)
	last := committed[len(committed)-1]
	if last.Resolution == nil || *last.Resolution != d.ResolutionID || len(last.Skipped) != 1 ||
		last.Skipped[0].ObjectID != x || last.Skipped[0].Reason != domain.RefusalInvalidObject || last.Entries != 7 {
		t.Fatalf("the resolving upload's record: %+v", last)
	}
	// The same version and a newer one flow normally, each entry once.
	if applied, _ := uploadBody(t, u.upload(l.base64())); applied != 0 {
		t.Fatalf("v8 again applied %d", applied)
	}
	l.add(y, 1)
	if applied, _ := uploadBody(t, u.upload(l.base64())); applied != 1 {
		t.Fatalf("v9 applied %d", applied)
	}
	if vy := u.value(t, y); vy != 7 {
		t.Fatalf("y = %d, want 7", vy)
	}
	// The audit history of the key's upload stream shows the refusals, their repeat and the
	// decision with who made it and why.
	h := uploadHistory(t, u)
	var types []string
	for _, e := range h.Entries {
		types = append(types, e.Type)
		if e.Type == domain.EventUploadResolutionDecided {
			var got domain.UploadResolutionDecided
			mustUnmarshal(t, e.Event, &got)
			if !e.Admin || got.Reason != "x was retired" || got.DecidedBy != "alice" || got.Mode != domain.ResolveSkipEntries {
				t.Fatalf("history shows the decision as %+v (admin %v)", got, e.Admin)
			}
		}
	}
	if want := "UploadPrepared UploadCommitted UploadRefused UploadRefusalRepeated UploadResolutionDecided UploadPrepared UploadCommitted UploadPrepared UploadCommitted"; strings.Join(types, " ") != want {
		t.Fatalf("upload history %v, want %s", types, want)
	}
	// A second decision on a cleared refusal is refused.
	if _, status := u.resolve(t, httpapi.ResolveUploadRequest{RefusalID: open.ID.String(), Mode: domain.ResolveSkipEntries, Reason: "again"}); status != 404 {
		t.Fatalf("resolving a cleared refusal: status %d, want 404", status)
	}
	assertVerifyAgrees(t, u.env)
}

// TestFeatureLockAndInt32WedgesAreResolvedBySkipping: a layer above the token's feature lock,
// one that would pass the int32 limit, and a decrement the token may not make, wedge a log the
// same way. Chunks cannot clear them (refused clearly, nothing changes); skipping the entry can.
func TestFeatureLockAndInt32WedgesAreResolvedBySkipping(t *testing.T) {
	for _, tc := range []struct {
		name   string
		start  int32
		token  func(u *uploadEnv) string
		wedge  int64 // the offending entry's delta
		newer  int64 // the delta of a newer version's entry
		status int
		msg    string
		reason string
	}{
		{"feature lock", 0, func(u *uploadEnv) string {
			return u.env.Token(ledger.TokenSpec{Methods: domain.AllMethods, FeatureLock: 5})
		}, 6, -1, 403, msgFeature, domain.RefusalFeatureLock},
		{"int32 overflow", math.MaxInt32 - 10, func(u *uploadEnv) string { return u.token }, 20, -1, 422, msgInt32, domain.RefusalInt32Overflow},
		{"a decrement without its permission", 100, func(u *uploadEnv) string {
			return u.env.Token(ledger.TokenSpec{Methods: []domain.Method{domain.MethodIncrementIntValue}})
		}, -7, 1, 403, "Not enough permission.", domain.RefusalPermission},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUploadEnv(t, nil)
			owner := u.toKey(u.token)
			a := u.add(t, owner, "AddDataObjectToKey", "a", tc.start)
			tok := tc.token(u)
			up := func(data string) apitest.Response {
				return u.env.Call("UploadValuesToKey", with(u.toKey(tok), "Data", data))
			}
			l := u.log(t).add(a, 1)
			if applied, _ := uploadBody(t, up(l.base64())); applied != 1 {
				t.Fatalf("v1 applied %d", applied)
			}
			l.add(a, tc.wedge).add(a, 1).add(a, 2)
			refused(t, up(l.base64()), tc.status, tc.msg)
			refused(t, up(l.base64()), tc.status, tc.msg)
			open := u.openRefusal(t)
			if open.Reason != tc.reason || open.Offending == nil || open.Offending.Amount != max(tc.wedge, -tc.wedge) ||
				open.Offending.Decrement != (tc.wedge < 0) || open.Offending.Index != 0 {
				t.Fatalf("refusal record %+v offending %+v", open, open.Offending)
			}
			// A chunk would still overflow (or pass the lock): refused, nothing changes.
			if _, status := u.resolve(t, httpapi.ResolveUploadRequest{RefusalID: open.ID.String(), Mode: domain.ResolveInChunks, Reason: "chunks"}); status != 400 {
				t.Fatalf("in-chunks: status %d, want 400", status)
			}
			refused(t, up(l.base64()), tc.status, tc.msg)
			if _, status := u.resolve(t, httpapi.ResolveUploadRequest{RefusalID: open.ID.String(), Mode: domain.ResolveSkipEntries, Reason: "bad entry"}); status != 201 {
				t.Fatalf("skip-entries: status %d", status)
			}
			if applied, _ := uploadBody(t, up(l.base64())); applied != 2 {
				t.Fatalf("after the decision applied %d, want 2", applied)
			}
			if v := u.value(t, a); v != tc.start+1+3 {
				t.Fatalf("a = %d, want %d", v, tc.start+4)
			}
			if applied, _ := uploadBody(t, up(l.base64())); applied != 0 {
				t.Fatalf("the same version again applied %d", applied)
			}
			l.add(a, tc.newer)
			if applied, _ := uploadBody(t, up(l.base64())); applied != 1 {
				t.Fatalf("a newer version applied %d", applied)
			}
			if v := u.value(t, a); v != tc.start+4+int32(tc.newer) {
				t.Fatalf("a = %d, want %d", v, tc.start+4+int32(tc.newer))
			}
			assertVerifyAgrees(t, u.env)
		})
	}
}

// TestTooManyEntriesWedgeIsResolvedInChunksOrBySkipping: 1001 new layers are refused, the next
// version has 1002; "upload more often" can never work. Either decision applies them in
// chunks of at most 1000, each entry once. The in-chunks case runs at the real limit; the
// skip-entries case (the same chunks, nothing to skip) at a limit of 10, to stay quick.
func TestTooManyEntriesWedgeIsResolvedInChunksOrBySkipping(t *testing.T) {
	for _, tc := range []struct {
		mode  string
		limit int
	}{{domain.ResolveInChunks, ledger.MaxNewEntries}, {domain.ResolveSkipEntries, 10}} {
		t.Run(tc.mode, func(t *testing.T) {
			u := newUploadEnvWith(t, apitest.Options{MaxNewEntries: tc.limit})
			owner := u.toKey(u.token)
			a := u.add(t, owner, "AddDataObjectToKey", "a", 0)
			l := u.log(t)
			for range tc.limit + 1 {
				l.add(a, 1)
			}
			refused(t, u.upload(l.base64()), 413, msgTooMany)
			first := u.openRefusal(t)
			if first.Reason != domain.RefusalTooManyNew || first.NewEntries != tc.limit+1 || first.Offending == nil ||
				first.NewestLayer != layerHex(t, u.keys, l.data, tc.limit) {
				t.Fatalf("refusal record %+v", first)
			}
			// The next version, refused a moment later for the same reason, is a repeat of the
			// record (written at most once per interval); the decision on the recorded version
			// is carried out by it, and its newer entry applied after.
			l.add(a, 1)
			refused(t, u.upload(l.base64()), 413, msgTooMany)
			if open := u.openRefusal(t); open.ID != first.ID {
				t.Fatalf("the version with one more entry made a new record %+v", open)
			}
			if _, status := u.resolve(t, httpapi.ResolveUploadRequest{Key: u.key.Key, Mode: tc.mode, Reason: "backlog after an outage"}); status != 201 {
				t.Fatalf("resolve: status %d", status)
			}
			n := tc.limit + 2
			applied, known := uploadBody(t, u.upload(l.base64()))
			if applied != n || known != 0 {
				t.Fatalf("after the decision applied %d known %d, want %d and 0", applied, known, n)
			}
			if v := u.value(t, a); v != int32(n) {
				t.Fatalf("a = %d, want %d", v, n)
			}
			var chunks []string
			for _, r := range u.uploadsOf(t, ledger.UploadStateCommitted) {
				chunks = append(chunks, fmt.Sprintf("%d resolution=%v", r.Entries, r.Resolution != nil))
			}
			if want := fmt.Sprintf("[%d resolution=true 1 resolution=true 1 resolution=false]", tc.limit); fmt.Sprint(chunks) != want {
				t.Fatalf("uploads %v, want %s", chunks, want)
			}
			if applied, _ := uploadBody(t, u.upload(l.base64())); applied != 0 {
				t.Fatalf("the same version again applied %d", applied)
			}
			l.add(a, 5)
			if applied, known := uploadBody(t, u.upload(l.base64())); applied != 1 || known != int64(n) {
				t.Fatalf("a newer version applied %d known %d", applied, known)
			}
			if v := u.value(t, a); v != int32(n+5) {
				t.Fatalf("a = %d, want %d", v, n+5)
			}
			assertVerifyAgrees(t, u.env)
		})
	}
}

// TestInChunksRefusesAVersionWithAnOffendingEntryBeforeAnyChunk: a log over the limit that
// also names a removed object. Carrying out an in-chunks decision checks the whole version
// first: nothing is applied, the new reason is recorded, and skipping then clears it.
func TestInChunksRefusesAVersionWithAnOffendingEntryBeforeAnyChunk(t *testing.T) {
	const limit = 10
	u := newUploadEnvWith(t, apitest.Options{MaxNewEntries: limit})
	owner := u.toKey(u.token)
	a := u.add(t, owner, "AddDataObjectToKey", "a", 0)
	x := u.add(t, owner, "AddDataObjectToKey", "x", 0)
	ok(t, u.env.Call("RemoveDataObjectToKey", with(owner, "Id", strconv.FormatInt(x, 10))))
	l := u.log(t)
	for i := range limit + 5 {
		if i == limit+2 {
			l.add(x, 1)
			continue
		}
		l.add(a, 1)
	}
	refused(t, u.upload(l.base64()), 413, msgTooMany)
	if _, status := u.resolve(t, httpapi.ResolveUploadRequest{Key: u.key.Key, Mode: domain.ResolveInChunks, Reason: "backlog"}); status != 201 {
		t.Fatalf("resolve: status %d", status)
	}
	before := snapshot(u.env)
	refused(t, u.upload(l.base64()), 400, msgIncorrect)
	assertUnchanged(t, u.env, before)
	open := u.openRefusal(t)
	if open.Reason != domain.RefusalInvalidObject || open.Offending == nil || open.Offending.ObjectID != x || open.Offending.Index != limit+2 {
		t.Fatalf("refusal record %+v offending %+v", open, open.Offending)
	}
	if _, status := u.resolve(t, httpapi.ResolveUploadRequest{RefusalID: open.ID.String(), Mode: domain.ResolveSkipEntries, Reason: "x is gone"}); status != 201 {
		t.Fatalf("resolve: status %d", status)
	}
	if applied, _ := uploadBody(t, u.upload(l.base64())); applied != limit+4 {
		t.Fatalf("applied %d, want %d", applied, limit+4)
	}
	if v := u.value(t, a); v != limit+4 {
		t.Fatalf("a = %d, want %d", v, limit+4)
	}
	assertVerifyAgrees(t, u.env)
}

// TestRefusalRepeatsAreCountedAtMostOncePerInterval: retries of one refused version add no
// record; their count is written at most once per interval, and summed.
func TestRefusalRepeatsAreCountedAtMostOncePerInterval(t *testing.T) {
	clock, advance := testClock()
	u := newUploadEnvWith(t, apitest.Options{Clock: clock, RefusalRepeatInterval: time.Minute})
	owner := u.toKey(u.token)
	a := u.add(t, owner, "AddDataObjectToKey", "a", 0)
	bad := u.log(t).add(a, 1).add(9999, 1).base64()
	events := func() int {
		evs, err := u.env.Store.ReadStream(context.Background(), domain.UploadStream(domain.Owner{Type: domain.OwnerKey, ID: u.key.ID}), eventstore.Forwards, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		return len(evs)
	}
	refused(t, u.upload(bad), 400, msgIncorrect)
	for range 5 {
		refused(t, u.upload(bad), 400, msgIncorrect)
	}
	if n := events(); n != 1 {
		t.Fatalf("%d events on the upload stream after six refusals of one version within the interval, want 1", n)
	}
	advance(2 * time.Minute)
	refused(t, u.upload(bad), 400, msgIncorrect)
	if n := events(); n != 2 {
		t.Fatalf("%d events after the interval, want 2", n)
	}
	r := u.openRefusal(t)
	if r.Repeats != 6 {
		t.Fatalf("repeats %d, want 6", r.Repeats)
	}
	var live state.Refusal
	u.env.Projection.Read(func(st *state.State) {
		live, _ = st.OpenRefusal(domain.Owner{Type: domain.OwnerKey, ID: u.key.ID})
	})
	if live.Repeats != 6 {
		t.Fatalf("projected repeats %d, want 6", live.Repeats)
	}
	// A newer version within the interval is a repeat too; the record follows it once written.
	l := u.log(t).add(a, 1).add(9999, 1).add(a, 1)
	refused(t, u.upload(l.base64()), 400, msgIncorrect)
	advance(2 * time.Minute)
	refused(t, u.upload(l.base64()), 400, msgIncorrect)
	r = u.openRefusal(t)
	if r.Repeats != 8 || r.NewEntries != 3 || r.NewestLayer != layerHex(t, u.keys, l.data, 2) {
		t.Fatalf("the record after a newer version: %+v", r)
	}
	// Past the interval since the record was last written, a newer version is a new record.
	advance(2 * time.Minute)
	l.add(a, 1)
	refused(t, u.upload(l.base64()), 400, msgIncorrect)
	if recs := u.uploadsOf(t, ledger.UploadStateRefused); len(recs) != 2 || recs[1].NewEntries != 4 || !recs[1].Open || recs[0].Open {
		t.Fatalf("refusal records %+v", recs)
	}
	// The counter by reason counts every refusal, written or not.
	if got := u.env.Ledger.RefusalsByReason()[domain.RefusalInvalidObject]; got != 10 {
		t.Fatalf("refusals by reason %d, want 10", got)
	}
	// An accepted upload after the refusals is not hindered by them.
	if applied, _ := uploadBody(t, u.upload(u.log(t).add(a, 3).base64())); applied != 1 {
		t.Fatalf("a good log applied %d", applied)
	}
	assertVerifyAgrees(t, u.env)
}

// TestAChunkedResolutionInterruptedByAStoreFailureResumes: the store fails (as a dying
// process would stop writing) in the second of three chunks, at its commit or between its
// objects' events. The first chunk stays applied, the second is all or nothing, and the next
// upload resumes the rest, each entry once. It runs at a limit of 10 entries per chunk;
// TALLY_LONG=1 runs it at the real 1000.
func TestAChunkedResolutionInterruptedByAStoreFailureResumes(t *testing.T) {
	limit, n := 10, 25
	if os.Getenv("TALLY_LONG") != "" {
		limit, n = ledger.MaxNewEntries, 2*ledger.MaxNewEntries+500
	}
	var faulty *storetest.Faulty
	u := newUploadEnvWith(t, apitest.Options{MaxNewEntries: limit, Open: func(t testing.TB) eventstore.Store {
		faulty = storetest.NewFaulty(apitest.OpenEmbedded(t))
		return faulty
	}, Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelError + 1}))})
	owner := u.toKey(u.token)
	a := u.add(t, owner, "AddDataObjectToKey", "a", 0)
	b := u.add(t, owner, "AddDataObjectToKey", "b", 0)
	l := u.log(t)
	for i := range n {
		l.add([]int64{a, b}[i%2], 1)
	}
	refused(t, u.upload(l.base64()), 413, msgTooMany)
	if _, status := u.resolve(t, httpapi.ResolveUploadRequest{Key: u.key.Key, Mode: domain.ResolveInChunks, Reason: "backlog"}); status != 201 {
		t.Fatalf("resolve: status %d", status)
	}
	for _, cut := range []string{"the commit", "the second object's events"} {
		t.Run(cut, func(t *testing.T) {
			base := u.value(t, a) + u.value(t, b)
			// From the second chunk's cut on, every append fails: nothing more is written.
			var mu sync.Mutex
			dead, commits, objectAppends := false, 0, 0
			faulty.FailAppends(func(stream string, evs []eventstore.EventData) error {
				mu.Lock()
				defer mu.Unlock()
				if !dead {
					switch {
					case evs[0].Type == domain.EventUploadCommitted:
						commits++
						dead = cut == "the commit" && commits == 2
					case strings.HasPrefix(stream, domain.CategoryDataObject+"-"):
						objectAppends++
						dead = cut != "the commit" && objectAppends == 4 // chunk 2's second object
					}
				}
				if dead {
					return storetest.ErrInjected
				}
				return nil
			})
			r := u.upload(l.base64())
			faulty.FailAppends(nil)
			if r.Status == 200 {
				t.Fatalf("the upload succeeded through a dead store: %s", r.Body)
			}
			// As a restart would: once the projection holds everything the store holds,
			// recovery decides the interrupted chunk.
			if err := u.env.Projection.WaitFor(context.Background(), lastPosition(t, u.env.Store)); err != nil {
				t.Fatal(err)
			}
			if _, err := u.env.Ledger.RecoverUploads(context.Background(), true); err != nil {
				t.Fatal(err)
			}
			got := u.value(t, a) + u.value(t, b)
			// Cut at its commit, the second chunk had every event written: recovery commits
			// it. Cut between its objects' events, it had not: recovery aborts it.
			want := base + int32(limit)
			if cut == "the commit" {
				want = base + int32(2*limit)
			}
			if got != want {
				t.Fatalf("after the crash the values sum to %d, want %d", got, want)
			}
			if applied, _ := uploadBody(t, u.upload(l.base64())); int32(applied) != base+int32(n)-got {
				t.Fatalf("the retry applied %d, want %d", applied, base+int32(n)-got)
			}
			if va, vb := u.value(t, a), u.value(t, b); va+vb != base+int32(n) {
				t.Fatalf("a = %d, b = %d; want a sum of %d", va, vb, base+int32(n))
			}
			assertVerifyAgrees(t, u.env)
			// Set up the next case: a fresh wedge of n entries on the same log.
			for i := range n {
				l.add([]int64{a, b}[i%2], 1)
			}
			refused(t, u.upload(l.base64()), 413, msgTooMany)
			if _, status := u.resolve(t, httpapi.ResolveUploadRequest{Key: u.key.Key, Mode: domain.ResolveInChunks, Reason: "backlog again"}); status != 201 {
				t.Fatalf("resolve: status %d", status)
			}
		})
	}
}

// uploadHistory reads the key's upload-stream history from the audit API, as the admin.
func uploadHistory(t *testing.T, u *uploadEnv) projections.UploadHistory {
	t.Helper()
	audit, err := auditapi.New(auditapi.Config{Store: u.env.Store.(auditapi.Store), Ledger: u.env.Ledger, AdminToken: apitest.AdminToken})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(audit)
	defer srv.Close()
	req, err := http.NewRequest(http.MethodGet, srv.URL+"/v1/uploads/history?keyId="+strconv.FormatInt(u.key.ID, 10), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+apitest.AdminToken)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("upload history: status %d", resp.StatusCode)
	}
	var h projections.UploadHistory
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	return h
}

// TestAnyInstanceCarriesOutADecision: with two instances on one store (each backend), a
// decision taken through one is carried out by uploads sent to both at once, each entry once.
func TestAnyInstanceCarriesOutADecision(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open func(testing.TB) eventstore.Store) {
		const limit = 10
		u := newUploadEnvWith(t, apitest.Options{Open: open, MaxNewEntries: limit})
		other := u.env.AnotherInstance()
		owner := u.toKey(u.token)
		a := u.add(t, owner, "AddDataObjectToKey", "a", 0)
		l := u.log(t)
		for range 3*limit + 4 {
			l.add(a, 1)
		}
		refused(t, u.upload(l.base64()), 413, msgTooMany)
		if _, status := u.resolve(t, httpapi.ResolveUploadRequest{Key: u.key.Key, Mode: domain.ResolveInChunks, Reason: "backlog"}); status != 201 {
			t.Fatalf("resolve: status %d", status)
		}
		// The other instance carries out the decision once its projection holds it; until then
		// it refuses as before (and the client's next retry carries it out). Wait for that here,
		// so that both instances take part.
		if err := other.Projection.WaitFor(context.Background(), u.env.Projection.Position()); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		answers := make([]apitest.Response, 4)
		for i := range answers {
			env := []*apitest.Env{u.env, other}[i%2]
			wg.Add(1)
			go func() {
				defer wg.Done()
				answers[i] = env.Call("UploadValuesToKey", with(owner, "Data", l.base64()))
			}()
		}
		wg.Wait()
		// Two calls that plan the same chunk at the same revision write the same events (same
		// ids, same expected revisions), which the store takes as one write: both may answer
		// for it, so the answers' counts are not summed; the value says what counted.
		for _, r := range answers {
			if applied, _ := uploadBody(t, r); applied > 3*limit+4 {
				t.Fatalf("an upload applied %d", applied)
			}
		}
		if v := u.value(t, a); v != 3*limit+4 {
			t.Fatalf("a = %d, want %d", v, 3*limit+4)
		}
		assertVerifyAgrees(t, u.env)
	})
}

// testClock is a clock that moves only when told.
func testClock() (func() time.Time, func(time.Duration)) {
	var mu sync.Mutex
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	return func() time.Time { mu.Lock(); defer mu.Unlock(); return now },
		func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
}

// TestRefusedUploadsDoNotStarveAcceptedOnes: while clients retry a refused log of an owner, the
// owner's accepted uploads (another log file, growing) all succeed, and the refusals add one
// record to the upload stream, not one per retry.
func TestRefusedUploadsDoNotStarveAcceptedOnes(t *testing.T) {
	u := newUploadEnv(t, nil)
	owner := u.toKey(u.token)
	a := u.add(t, owner, "AddDataObjectToKey", "a", 0)
	bad := u.log(t).add(a, 1).add(9999, 1).base64()
	good := u.log(t)
	var versions []string
	for range 16 {
		good.add(a, 1)
		versions = append(versions, good.base64())
	}
	var wg sync.WaitGroup
	refusedAnswers := make([]apitest.Response, 32)
	for i := range refusedAnswers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			refusedAnswers[i] = u.upload(bad)
		}()
	}
	accepted := make([]apitest.Response, len(versions))
	for i, v := range versions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			accepted[i] = u.upload(v)
		}()
	}
	wg.Wait()
	for _, r := range refusedAnswers {
		refused(t, r, 400, msgIncorrect)
	}
	for _, r := range accepted {
		uploadBody(t, r)
	}
	if v := u.value(t, a); v != int32(len(versions)) {
		t.Fatalf("a = %d, want %d", v, len(versions))
	}
	if recs := u.uploadsOf(t, ledger.UploadStateRefused); len(recs) != 1 {
		t.Fatalf("%d refusal records for one refused log retried 32 times, want 1", len(recs))
	}
	assertVerifyAgrees(t, u.env)
}
