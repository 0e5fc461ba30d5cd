package httpapi

import (
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"golang.org/x/time/rate"
)

// maxLoggedPath bounds the path an access-log line carries: the path is the client's to choose.
const maxLoggedPath = 256

// AccessLog logs one line per request once it is answered: method, path, status, duration,
// bytes written, request id and client address. It never logs a query string, a form value or
// a header other than the request id, so no secret reaches the log (tokens travel in those).
// It gives the request its id first (X-Request-ID, see RequestID, also set on the answer), so
// that every handler behind it, and every log line and event of the request, carries the same
// one.
func AccessLog(logger *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := RequestID(r)
		if r.Header.Get("X-Request-ID") != id {
			r = r.Clone(r.Context())
			r.Header.Set("X-Request-ID", id)
		}
		w.Header().Set("X-Request-ID", id)
		rec := &countingWriter{ResponseWriter: w}
		defer func() {
			status := rec.status
			if status == 0 {
				status = http.StatusOK
			}
			logger.LogAttrs(r.Context(), slog.LevelInfo, "request",
				slog.String("method", r.Method),
				slog.String("path", loggedPath(r.URL.Path)),
				slog.Int("status", status),
				slog.Duration("duration", time.Since(start)),
				slog.Int64("bytes", rec.bytes),
				slog.String("request_id", id),
				slog.String("client_addr", ClientAddr(r)),
			)
		}()
		next.ServeHTTP(rec, r)
	})
}

// loggedPath is the path as logged: cut to maxLoggedPath bytes on a rune boundary.
func loggedPath(p string) string {
	if len(p) <= maxLoggedPath {
		return p
	}
	cut := maxLoggedPath
	for cut > 0 && !utf8.RuneStart(p[cut]) {
		cut--
	}
	return p[:cut] + "…"
}

// countingWriter remembers the status and counts the bytes of the body written.
type countingWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *countingWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// SignInLog logs refused credentials with the client's address, at most a few lines a second
// (each line says how many were left out before it), so that a flood of bad tokens cannot
// flood the log. It never logs the credential presented.
type SignInLog struct {
	logger  *slog.Logger
	limiter *rate.Limiter
	now     func() time.Time
	dropped atomic.Int64
}

// NewSignInLog logs at most perSecond lines a second on average, burst at once.
func NewSignInLog(logger *slog.Logger, perSecond float64, burst int) *SignInLog {
	return &SignInLog{logger: logger, limiter: rate.NewLimiter(rate.Limit(perSecond), burst), now: time.Now}
}

// Failed logs a refused sign-in: credential says which kind ("admin token", "access token"),
// presented whether the request carried one at all.
func (l *SignInLog) Failed(r *http.Request, requestID, credential string, presented bool) {
	if l == nil {
		return
	}
	if !l.limiter.AllowN(l.now(), 1) {
		l.dropped.Add(1)
		return
	}
	reason := "wrong"
	if !presented {
		reason = "missing"
	}
	l.logger.LogAttrs(r.Context(), slog.LevelWarn, "sign-in refused",
		slog.String("credential", credential),
		slog.String("reason", reason),
		slog.String("client_addr", ClientAddr(r)),
		slog.String("path", loggedPath(r.URL.Path)),
		slog.String("request_id", requestID),
		slog.Int64("not_logged_before", l.dropped.Swap(0)),
	)
}
