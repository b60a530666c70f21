// Package apperr defines the service's error kinds. Packages below the
// transport return these (wrapped with %w as needed); server maps them to
// gRPC status codes in one place. Messages are short, lower-case facts and
// never contain a secret or an upstream response body.
package apperr

import (
	"errors"
	"fmt"
)

// Kind classifies an error for the transport.
type Kind int

// The kinds, each mapped to one gRPC code by the server package.
const (
	KindInternal Kind = iota
	KindInvalidArgument
	KindNotFound
	KindAlreadyExists
	KindPermissionDenied
	KindUnauthenticated
	KindFailedPrecondition
	KindAborted
	KindUnavailable
	KindDeadlineExceeded
	KindResourceExhausted
	KindUnimplemented
)

// Error is a classified error. Reason is a stable, upper-snake-case code
// callers can branch on (sent as google.rpc.ErrorInfo.reason); Metadata holds
// non-secret facts (for example a field name or an authorization URL).
type Error struct {
	Kind     Kind
	Reason   string
	Message  string
	Field    string
	Metadata map[string]string
	Err      error
}

// Error returns the message, prefixed with the field for invalid arguments.
func (e *Error) Error() string {
	msg := e.Message
	if e.Field != "" {
		msg = e.Field + ": " + msg
	}
	if e.Err != nil && msg == "" {
		return e.Err.Error()
	}
	return msg
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the kind of the first *Error in err's chain, or
// KindInternal.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

// As returns the first *Error in err's chain.
func As(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// Invalid reports a bad request field: the field path (as in the proto, for
// example "provider.server_url") and the rule it breaks.
func Invalid(field, format string, args ...any) *Error {
	return &Error{Kind: KindInvalidArgument, Reason: "INVALID_ARGUMENT", Field: field, Message: fmt.Sprintf(format, args...)}
}

// NotFound reports a missing resource. Use the same message whether the
// resource is absent or belongs to another tenant.
func NotFound(what string) *Error {
	return &Error{Kind: KindNotFound, Reason: "NOT_FOUND", Message: what + " not found"}
}

// AlreadyExists reports a uniqueness conflict on field.
func AlreadyExists(field, format string, args ...any) *Error {
	return &Error{Kind: KindAlreadyExists, Reason: "ALREADY_EXISTS", Field: field, Message: fmt.Sprintf(format, args...)}
}

// PermissionDenied reports a refused call.
func PermissionDenied(format string, args ...any) *Error {
	return &Error{Kind: KindPermissionDenied, Reason: "PERMISSION_DENIED", Message: fmt.Sprintf(format, args...)}
}

// Unauthenticated reports a call without valid credentials.
func Unauthenticated(format string, args ...any) *Error {
	return &Error{Kind: KindUnauthenticated, Reason: "UNAUTHENTICATED", Message: fmt.Sprintf(format, args...)}
}

// FailedPrecondition reports a state that forbids the call; reason is a
// stable code such as "REAUTH_REQUIRED".
func FailedPrecondition(reason, format string, args ...any) *Error {
	return &Error{Kind: KindFailedPrecondition, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// Aborted reports a concurrency conflict (etag or generation mismatch).
func Aborted(format string, args ...any) *Error {
	return &Error{Kind: KindAborted, Reason: "ABORTED", Message: fmt.Sprintf(format, args...)}
}

// Unavailable reports a dependency that cannot be reached; cause is kept for
// errors.Is but never shown to callers.
func Unavailable(cause error, format string, args ...any) *Error {
	return &Error{Kind: KindUnavailable, Reason: "UNAVAILABLE", Message: fmt.Sprintf(format, args...), Err: cause}
}

// Internal wraps an unexpected error; its text is logged, not returned.
func Internal(cause error, format string, args ...any) *Error {
	return &Error{Kind: KindInternal, Reason: "INTERNAL", Message: fmt.Sprintf(format, args...), Err: cause}
}

// WithMeta adds a metadata entry and returns e.
func (e *Error) WithMeta(k, v string) *Error {
	if e.Metadata == nil {
		e.Metadata = map[string]string{}
	}
	e.Metadata[k] = v
	return e
}
