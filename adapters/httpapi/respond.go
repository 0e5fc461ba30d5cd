package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/tallyledger/tally/domain"
)

// internalErrorMessage is all a client learns of a failure Tally did not foresee; the cause
// goes to the log with the request id.
const internalErrorMessage = "An internal error occurred."

// basicResult is the body every Cryptolens method answers with. Message is null on success.
type basicResult struct {
	Result  int     `json:"result"`
	Message *string `json:"message"`
}

func success() basicResult { return basicResult{} }

func errorResult(msg string) basicResult { return basicResult{Result: 1, Message: &msg} }

// addResult is AddDataObject's answer.
type addResult struct {
	basicResult
	ID int64 `json:"id"`
}

// listResult is ListDataObjects' answer.
type listResult struct {
	basicResult
	DataObjects []dataObjectJSON `json:"dataObjects"`
}

// dataObjectJSON is a data object as Cryptolens lists it; the owner is shown only with ShowAll.
type dataObjectJSON struct {
	ID             int64  `json:"id"`
	Name           string `json:"name"`
	StringValue    string `json:"stringValue"`
	IntValue       int32  `json:"intValue"`
	ReferencerType *int   `json:"referencerType,omitempty"`
	ReferencerID   *int64 `json:"referencerId,omitempty"`
}

// uploadResult is the answer of UploadValues(ToKey). Applied and Known are Tally's additions;
// the official clients read result and message only.
type uploadResult struct {
	basicResult
	Applied int   `json:"applied"`
	Known   int64 `json:"known"`
}

// writeResult writes a Cryptolens-shaped JSON body. HTML characters are not escaped, so a
// string value comes back exactly as it was stored.
func (s *server) writeResult(w http.ResponseWriter, r *http.Request, status int, body any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(body); err != nil {
		s.logger.Error("encode response", "request_id", infoOf(r).requestID, "err", err)
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"result":1,"message":"` + internalErrorMessage + `"}`)
	}
	out := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(out)
}

// writeError answers a refusal with its message and the status of its kind.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := s.refusal(r, err)
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="tally"`)
	}
	s.writeResult(w, r, status, errorResult(msg))
}

// refusal maps an error to a status and the message the client sees. The official clients
// read the body whatever the status, so the status serves proxies, logs and humans; the
// message is what a Cryptolens client acts on.
func (s *server) refusal(r *http.Request, err error) (int, string) {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return http.StatusServiceUnavailable, domain.ErrServiceUnavailable.Message
	}
	de, ok := domain.AsError(err)
	if !ok {
		s.logger.Error("request failed", "request_id", infoOf(r).requestID, "method", infoOf(r).method, "err", err)
		return http.StatusInternalServerError, internalErrorMessage
	}
	status := StatusOf(de.Kind)
	switch {
	case de.Kind == domain.KindUnavailable:
		// The bare refusal is the not-ready answer of every request during catch-up: debug
		// level, or the log floods; a wrapped one carries a store failure worth an error.
		level := slog.LevelError
		if err == error(domain.ErrServiceUnavailable) {
			level = slog.LevelDebug
		}
		s.logger.Log(r.Context(), level, "request failed: service unavailable", "request_id", infoOf(r).requestID, "method", infoOf(r).method, "err", err)
	case status == http.StatusInternalServerError:
		s.logger.Error("request failed with an unknown refusal kind", "request_id", infoOf(r).requestID, "err", err)
		return status, internalErrorMessage
	}
	return status, de.Message
}

// StatusOf is the HTTP status of a refusal of the given kind, the same on every Tally API.
func StatusOf(kind domain.ErrorKind) int {
	switch kind {
	case domain.KindInvalid:
		return http.StatusBadRequest
	case domain.KindUnauthenticated:
		return http.StatusUnauthorized
	case domain.KindForbidden:
		return http.StatusForbidden
	case domain.KindNotFound:
		return http.StatusNotFound
	case domain.KindRefused:
		return http.StatusUnprocessableEntity
	case domain.KindConflict:
		return http.StatusConflict
	case domain.KindTooLarge:
		return http.StatusRequestEntityTooLarge
	case domain.KindUnavailable:
		return http.StatusServiceUnavailable
	case domain.KindRateLimited:
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}
