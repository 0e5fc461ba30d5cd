package httpapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/tallyledger/tally/domain/ledger"
)

// ErrBackupRunning is returned by a Config.Backup that refuses to start a second backup while
// one runs; the admin API answers it with 409.
var ErrBackupRunning = errors.New("a backup is already running")

// backup serves GET /admin/v1/backup: the archive Config.Backup writes, streamed as it is made.
// Until the first byte the refusal is a JSON error with its status; after it, an error aborts
// the connection, so the client sees a cut-short answer (and the archive's missing manifest),
// never a short archive that looks whole.
func (s *server) backup(w http.ResponseWriter, r *http.Request) {
	infoOf(r).method = "admin.backup"
	if r.Method != http.MethodGet { // byMethod lets HEAD through as GET: it would copy the store for nothing
		s.methodNotAllowed(w, r)
		return
	}
	if !s.isAdmin(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="tally-admin"`)
		writeAdminJSON(w, http.StatusUnauthorized, adminError{Error: "admin credential missing or wrong"})
		return
	}
	if s.backupFn == nil {
		writeAdminJSON(w, http.StatusNotImplemented, adminError{Error: "backup covers the embedded store only: back up KurrentDB with its own tools"})
		return
	}
	if s.notReady() {
		writeAdminJSON(w, http.StatusServiceUnavailable, adminError{Error: "not ready: catching up with the event store"})
		return
	}
	// A large store takes longer than the server's write timeout to send.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	out := &lazyArchiveWriter{w: w}
	err := s.backupFn(r.Context(), out)
	switch {
	case err == nil && !out.started:
		out.start() // an empty archive cannot happen, but answer properly if it did
	case err == nil:
	case !out.started:
		status, msg := http.StatusInternalServerError, "backup failed"
		switch {
		case errors.Is(err, ErrBackupRunning):
			status, msg = http.StatusConflict, ErrBackupRunning.Error()
		case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			status, msg = http.StatusServiceUnavailable, "backup cancelled"
		case errors.Is(err, ledger.ErrInvalid):
			status, msg = http.StatusBadRequest, err.Error()
		}
		s.logger.Error("backup failed", "request_id", infoOf(r).requestID, "err", err)
		writeAdminJSON(w, status, adminError{Error: msg})
	default:
		s.logger.Error("backup failed while sending", "request_id", infoOf(r).requestID, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// lazyArchiveWriter sends the success header with the first byte of the archive.
type lazyArchiveWriter struct {
	w       http.ResponseWriter
	started bool
}

func (l *lazyArchiveWriter) start() {
	l.started = true
	l.w.Header().Set("Content-Type", "application/gzip")
	l.w.Header().Set("Content-Disposition", `attachment; filename="tally-backup.tar.gz"`)
	l.w.WriteHeader(http.StatusOK)
}

func (l *lazyArchiveWriter) Write(p []byte) (int, error) {
	if !l.started {
		l.start()
	}
	return l.w.Write(p)
}

var _ io.Writer = (*lazyArchiveWriter)(nil)
