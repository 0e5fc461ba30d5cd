package domain

import "errors"

// ErrorKind classifies a refusal so that inbound adapters can choose a status code.
type ErrorKind uint8

const (
	KindInvalid         ErrorKind = iota + 1 // the request is malformed
	KindUnauthenticated                      // no valid credential
	KindForbidden                            // the credential may not do this
	KindNotFound                             // the thing addressed does not exist (or may not be seen)
	KindRefused                              // valid, but the rules refuse it (limits, bounds)
	KindConflict                             // concurrent changes kept winning; try again
	KindTooLarge                             // the input exceeds a size limit
	KindUnavailable                          // the store or another dependency failed
	KindRateLimited                          // the caller sends faster than it may; slow down
)

// Error is a refusal with the exact message a Cryptolens client expects.
type Error struct {
	Kind    ErrorKind
	Message string
}

func (e *Error) Error() string { return e.Message }

// The refusals of the Cryptolens data-object API. The messages are the ones Cryptolens sends
// (shared/spec/data-object-api.md) where it has one; the rest are Tally's, in the same style.
var (
	ErrUnauthenticated     = &Error{KindUnauthenticated, "Unable to authenticate."}
	ErrAccessDenied        = &Error{KindForbidden, "Access denied."}
	ErrNotEnoughPermission = &Error{KindForbidden, "Not enough permission."}
	ErrProductNotFound     = &Error{KindNotFound, "Not enough permission and/or product not found."}
	ErrKeyNotFound         = &Error{KindNotFound, "Not enough permission and/or key not found."}
	ErrDataEmpty           = &Error{KindInvalid, "Data parameter was empty."}
	ErrDataCorrupted       = &Error{KindInvalid, "Data parameter was corrupted."}
	ErrReferencerType      = &Error{KindInvalid, "Incorrect 'ReferencerType'. It can either be 0 (for a User), 1 (for a Product) and 2 (for a Key)."}
	ErrFeatureLock         = &Error{KindForbidden, "The increment/decrement value not allowed by security settings."}
	ErrInt32Limit          = &Error{KindRefused, "Cannot increment/decrement value since the limit was reached for an int32."}
	ErrTooManyEntries      = &Error{KindTooLarge, "The log has more than 1000 new entries. Upload more often."}
	ErrInvalidInput        = &Error{KindInvalid, "The input parameters were incorrect."}
	ErrDataObjectNotFound  = &Error{KindNotFound, "The data object could not be found."}
	ErrDuplicateName       = &Error{KindRefused, "A data object with this name already exists."}
	ErrBoundReached        = &Error{KindRefused, "The value could not be changed since the bound would be passed."}
	ErrNameTooLong         = &Error{KindInvalid, "The name can be at most 100 characters."}
	ErrStringValueTooLong  = &Error{KindInvalid, "The string value can be at most 10000 characters."}
	ErrConcurrentChange    = &Error{KindConflict, "The data object was changed concurrently too often. Please try again."}
	ErrRequestTooLarge     = &Error{KindTooLarge, "The request is too large."}
	ErrServiceUnavailable  = &Error{KindUnavailable, "The service is temporarily unavailable. Please try again."}
	ErrRateLimited         = &Error{KindRateLimited, "Too many requests. Please slow down."}
)

// AsError returns the domain refusal inside err, if any.
func AsError(err error) (*Error, bool) {
	var de *Error
	if errors.As(err, &de) {
		return de, true
	}
	return nil, false
}
