package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/gorilla/mux"
)

// ErrAuditRunning is returned by Config.Verify or Config.RebuildReadModels while the same job
// runs already; the admin API answers it with 409.
var ErrAuditRunning = errors.New("already running")

// VerifyOptions are the parameters of POST /admin/v1/verify.
type VerifyOptions struct {
	// Usage also compares a usage report of the read model (every object, by month, UTC, usage
	// axis, 2000 to 2100) with a replay of the store at the report's position: one more replay.
	Usage bool
}

// AuditProgress is one progress line of POST /admin/v1/verify or /admin/v1/readmodels/rebuild:
// the phase, and how far it is (a position or a count of events) towards the store's head as
// the job started.
type AuditProgress struct {
	Phase    string `json:"phase"`
	Events   int64  `json:"events,omitempty"`
	Position uint64 `json:"position,omitempty"`
	Head     uint64 `json:"head"`
}

// VerifyResult is the outcome of a verification in the server (tally verify on a live server).
type VerifyResult struct {
	// OK is true when nothing differs: every recorded value-after equals the replay's, the live
	// projection equals the replay at Position, and the read model's checkpoint fits the store.
	OK bool `json:"ok"`
	// Head is the store's head when the verification started: the replay folded every event up
	// to it (the consistent snapshot), then on to Position, where the live projection was.
	Head     uint64 `json:"head"`
	Position uint64 `json:"position"`
	Events   uint64 `json:"events"`
	Objects  int    `json:"objects"`
	// Problems lists each difference, one line each.
	Problems []string `json:"problems"`
	// Seconds is the whole verification; ReplaySeconds the replay up to Head; PausedSeconds how
	// long the live projection was held still for the comparison.
	Seconds       float64 `json:"seconds"`
	ReplaySeconds float64 `json:"replaySeconds"`
	PausedSeconds float64 `json:"pausedSeconds"`
	// ReplayEvents is how many events the replay folded up to Head (in ReplaySeconds).
	ReplayEvents uint64 `json:"replayEvents"`
	// PausedEvents is how many events the replay folded on while the projection was held
	// still (the rest of the pause is the comparison).
	PausedEvents uint64 `json:"pausedEvents"`
}

// RebuildResult is the outcome of an online rebuild of the read models.
type RebuildResult struct {
	// Head is the store's head when the rebuild started; Position and Events the rebuilt
	// model's checkpoint once it took the live one's place.
	Head     uint64  `json:"head"`
	Position uint64  `json:"position"`
	Events   int64   `json:"events"`
	Seconds  float64 `json:"seconds"`
	// SwapSeconds is how long queries waited while the rebuilt model took the old one's place.
	SwapSeconds float64 `json:"swapSeconds"`
}

// auditLine is one line of an audit job's answer: progress, the result (last), or the error
// that ended the job after the answer had started.
type auditLine struct {
	Progress *AuditProgress `json:"progress,omitempty"`
	Result   any            `json:"result,omitempty"`
	Error    string         `json:"error,omitempty"`
}

// auditJob runs a long audit job for an admin and streams its answer as JSON lines
// (application/x-ndjson): progress lines while it runs, then one line with the result. A job
// refused before its first progress line is answered as a plain JSON error with its status; an
// error afterwards ends the stream with an error line (the status is sent already).
func (s *server) auditJob(name string, missing string, params func(url.Values) error, run func(ctx context.Context, q url.Values, progress func(AuditProgress)) (any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ri := infoOf(r)
		ri.method = name
		if !s.isAdmin(r) && !s.viewerAllowed(w, r, false) {
			return
		}
		if run == nil {
			writeAdminJSON(w, http.StatusNotImplemented, adminError{Error: missing})
			return
		}
		if s.notReady() {
			writeAdminJSON(w, http.StatusServiceUnavailable, adminError{Error: "not ready: catching up with the event store"})
			return
		}
		q := r.URL.Query()
		if err := params(q); err != nil {
			writeAdminJSON(w, http.StatusBadRequest, adminError{Error: err.Error()})
			return
		}
		// A long replay takes longer than the server's write timeout.
		rc := http.NewResponseController(w)
		_ = rc.SetWriteDeadline(time.Time{})
		started := false
		enc := json.NewEncoder(w)
		send := func(l auditLine) {
			if !started {
				started = true
				w.Header().Set("Content-Type", "application/x-ndjson")
				w.WriteHeader(http.StatusOK)
			}
			_ = enc.Encode(l)
			_ = rc.Flush()
		}
		result, err := run(r.Context(), q, func(p AuditProgress) { send(auditLine{Progress: &p}) })
		switch {
		case err == nil:
			send(auditLine{Result: result})
		case !started:
			status, msg := http.StatusInternalServerError, name+" failed"
			switch {
			case errors.Is(err, ErrAuditRunning):
				status, msg = http.StatusConflict, err.Error()
			case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
				status, msg = http.StatusServiceUnavailable, name+" cancelled"
			}
			s.logger.Error(name+" failed", "request_id", ri.requestID, "err", err)
			writeAdminJSON(w, status, adminError{Error: msg})
		default:
			s.logger.Error(name+" failed", "request_id", ri.requestID, "err", err)
			send(auditLine{Error: err.Error()})
		}
	})
}

// auditRoutes are the admin API's audit jobs: POST /admin/v1/verify and
// POST /admin/v1/readmodels/rebuild (docs/audit.md, "Verify and rebuild on a live server").
func (s *server) auditRoutes(admin *mux.Router) {
	var verify, rebuild func(ctx context.Context, q url.Values, progress func(AuditProgress)) (any, error)
	if s.verifyFn != nil {
		verify = func(ctx context.Context, q url.Values, progress func(AuditProgress)) (any, error) {
			return s.verifyFn(ctx, VerifyOptions{Usage: q.Get("usage") == "true"}, progress)
		}
	}
	if s.rebuildFn != nil {
		rebuild = func(ctx context.Context, _ url.Values, progress func(AuditProgress)) (any, error) {
			return s.rebuildFn(ctx, progress)
		}
	}
	verifyParams := func(q url.Values) error {
		for k, vs := range q {
			if k != "usage" || len(vs) != 1 || (vs[0] != "true" && vs[0] != "false") {
				return fmt.Errorf("parameter %q: the only parameter is usage=true or usage=false", k)
			}
		}
		return nil
	}
	noParams := func(q url.Values) error {
		if len(q) > 0 {
			return errors.New("this endpoint takes no parameters")
		}
		return nil
	}
	admin.Handle("/verify", s.byMethod(map[string]http.Handler{
		http.MethodPost: s.auditJob("admin.verify", "this server cannot verify online", verifyParams, verify),
	}))
	admin.Handle("/readmodels/rebuild", s.byMethod(map[string]http.Handler{
		http.MethodPost: s.auditJob("admin.rebuildReadModels", "this server keeps no read models to rebuild", noParams, rebuild),
	}))
}
