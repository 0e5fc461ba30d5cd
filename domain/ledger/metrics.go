package ledger

import (
	"context"
	"errors"

	"github.com/tallyledger/tally/domain"
)

// Metrics receives counts of what the ledger does, for monitoring. An adapter implements it
// (adapters/prommetrics exports it to Prometheus); Config.Metrics nil counts nothing.
// Implementations must be safe for concurrent use and must not block.
type Metrics interface {
	// UploadFinished is called once per UploadValues call, with how it ended.
	UploadFinished(UploadOutcome)
	// UploadAborted is called for each prepared upload the ledger aborts, with why:
	// AbortConflict, AbortStoreFailure or AbortRecovery.
	UploadAborted(reason string)
	// Conflict is called when an append is refused for its expected revision.
	Conflict()
	// Retry is called when an attempt of a command loses to a concurrent writer or upload:
	// the command then decides again (or, after its last attempt, gives up with
	// ErrConcurrentChange).
	Retry()
}

// How an UploadValues call ended (UploadOutcome.Outcome).
const (
	UploadCommitted = "committed" // new entries were applied
	UploadUnchanged = "unchanged" // the log held no new entry
	UploadRefused   = "refused"   // refused; UploadOutcome.Reason says why
)

// Why a prepared upload was aborted (Metrics.UploadAborted).
const (
	AbortConflict     = "conflict"      // an object changed after the plan; the upload is decided again
	AbortStoreFailure = "store_failure" // an append failed
	AbortRecovery     = "recovery"      // recovery found the upload interrupted before all its events
)

// UploadOutcome is how one UploadValues call ended.
type UploadOutcome struct {
	Outcome string
	// Reason is the kind of refusal (RefusalReason) when Outcome is UploadRefused.
	Reason string
	// Applied and Known are the call's UploadResult.
	Applied int
	Known   int64
}

// RefusalReason names the kind of a refusal, for metrics and logs: the domain error kind
// (invalid, unauthenticated, forbidden, not_found, refused, conflict, too_large, unavailable,
// rate_limited), "canceled" when the caller went away, "internal" for anything else.
func RefusalReason(err error) string {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return "canceled"
	}
	de, ok := domain.AsError(err)
	if !ok {
		return "internal"
	}
	switch de.Kind {
	case domain.KindInvalid:
		return "invalid"
	case domain.KindUnauthenticated:
		return "unauthenticated"
	case domain.KindForbidden:
		return "forbidden"
	case domain.KindNotFound:
		return "not_found"
	case domain.KindRefused:
		return "refused"
	case domain.KindConflict:
		return "conflict"
	case domain.KindTooLarge:
		return "too_large"
	case domain.KindUnavailable:
		return "unavailable"
	case domain.KindRateLimited:
		return "rate_limited"
	}
	return "internal"
}

// outcomeOf is how an UploadValues call that returned res and err ended.
func outcomeOf(res UploadResult, err error) UploadOutcome {
	switch {
	case err != nil:
		return UploadOutcome{Outcome: UploadRefused, Reason: RefusalReason(err)}
	case res.Applied > 0:
		return UploadOutcome{Outcome: UploadCommitted, Applied: res.Applied, Known: res.Known}
	}
	return UploadOutcome{Outcome: UploadUnchanged, Known: res.Known}
}

// noMetrics counts nothing.
type noMetrics struct{}

func (noMetrics) UploadFinished(UploadOutcome) {}
func (noMetrics) UploadAborted(string)         {}
func (noMetrics) Conflict()                    {}
func (noMetrics) Retry()                       {}
