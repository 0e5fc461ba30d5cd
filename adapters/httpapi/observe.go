package httpapi

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
)

// requestMetrics count and time requests by the method they called and how it ended. The
// labels are bounded: method names come from the routes, never from the raw path, and results
// from a fixed set.
type requestMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// refusals counts the refusals of the adapter's own defences, by which: rate_limit (a
	// token over its rate), body_too_slow (a body under the minimum rate), body_too_large.
	refusals *prometheus.CounterVec
}

func newRequestMetrics(reg *prometheus.Registry) (*requestMetrics, error) {
	m := &requestMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_http_requests_total",
			Help: "HTTP requests by API method and result (ok, or the kind of refusal).",
		}, []string{"method", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tally_http_request_duration_seconds",
			Help:    "HTTP request latency by API method and result.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method", "result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_http_defence_refusals_total",
			Help: "Requests refused by the HTTP defences: rate_limit (a token over --rate-limit), body_too_slow (under --min-body-rate), body_too_large (over --max-body-bytes).",
		}, []string{"defence"}),
	}
	for _, d := range []string{defenceRateLimit, defenceBodyTooSlow, defenceBodyTooLarge} {
		m.refusals.WithLabelValues(d)
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.refusals} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("httpapi: register metrics: %w", err)
		}
	}
	return m, nil
}

// The defences whose refusals are counted (requestMetrics.refusals).
const (
	defenceRateLimit    = "rate_limit"
	defenceBodyTooSlow  = "body_too_slow"
	defenceBodyTooLarge = "body_too_large"
)

// refused counts a refusal by one of the defences.
func (s *server) refused(defence string) {
	if s.metrics != nil {
		s.metrics.refusals.WithLabelValues(defence).Inc()
	}
}

// requestInfo travels with a request so that the handlers can tell the outer middleware which
// method they ran and how it ended.
type requestInfo struct {
	requestID string
	method    string // normalised API method name, "unknown" when no route matched
}

type requestInfoKey struct{}

func infoOf(r *http.Request) *requestInfo {
	if ri, ok := r.Context().Value(requestInfoKey{}).(*requestInfo); ok {
		return ri
	}
	return &requestInfo{}
}

// statusRecorder remembers the status code a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// observe gives every request an id (echoed in X-Request-ID) and records its metrics.
func (s *server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ri := &requestInfo{requestID: RequestID(r), method: "unknown"}
		w.Header().Set("X-Request-ID", ri.requestID)
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, ri)))
		if s.metrics == nil {
			return
		}
		result := kindLabel(rec.status)
		s.metrics.requests.WithLabelValues(ri.method, result).Inc()
		s.metrics.duration.WithLabelValues(ri.method, result).Observe(time.Since(start).Seconds())
	})
}

// named marks the request as a call of the named method, for the metrics.
func (s *server) named(name string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		infoOf(r).method = name
		next.ServeHTTP(w, r)
	})
}

// RequestID takes the client's X-Request-ID when it is short and plain (it ends up in logs and
// event metadata), else makes a fresh one. The audit API names its requests the same way.
func RequestID(r *http.Request) string {
	id := r.Header.Get("X-Request-ID")
	if len(id) == 0 || len(id) > 128 {
		return uuid.NewString()
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '-' || c == '_' || c == '.' || c == ':'
		if !ok {
			return uuid.NewString()
		}
	}
	return id
}

// ClientAddr is the host part of the peer's address, as events record it.
func ClientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// kindLabel names how a request ended, from its status, for the metrics: "ok" or the kind of
// refusal the status stands for.
func kindLabel(status int) string {
	switch status {
	case 0, http.StatusOK, http.StatusCreated, http.StatusNoContent:
		return "ok"
	case http.StatusBadRequest:
		return "invalid"
	case http.StatusUnauthorized:
		return "unauthenticated"
	case http.StatusForbidden:
		return "forbidden"
	case http.StatusNotFound:
		return "not_found"
	case http.StatusUnprocessableEntity:
		return "refused"
	case http.StatusConflict:
		return "conflict"
	case http.StatusTooManyRequests:
		return "rate_limited"
	case http.StatusRequestTimeout:
		return "too_slow"
	case http.StatusRequestEntityTooLarge:
		return "too_large"
	case http.StatusServiceUnavailable:
		return "unavailable"
	case http.StatusMethodNotAllowed:
		return "method_not_allowed"
	case http.StatusInternalServerError:
		return "internal"
	}
	return "status_" + strconv.Itoa(status)
}
