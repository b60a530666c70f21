// Package apperr defines the service's error kinds. Packages below the
// transport return these (wrapped with %w as needed); server maps them to
// gRPC status codes in one place. Messages are short, lower-case facts and
// never contain a secret or an upstream response body.
//
// An *Error has two texts, as Gitaly's structerr does: Error is the whole
// chain (message and cause) for the log, so an operator sees the PostgreSQL
// error behind "get credential"; Public is the field and message only, the
// part a client may be shown. A cause is never shown to a client, so it may
// carry driver and network detail, but it must not carry a secret either:
// logs are read by more people than the secrets' owners.
package apperr

import (
	"context"
	"errors"
	"fmt"
	"strings"
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

var kindNames = [...]string{
	KindInternal:           "INTERNAL",
	KindInvalidArgument:    "INVALID_ARGUMENT",
	KindNotFound:           "NOT_FOUND",
	KindAlreadyExists:      "ALREADY_EXISTS",
	KindPermissionDenied:   "PERMISSION_DENIED",
	KindUnauthenticated:    "UNAUTHENTICATED",
	KindFailedPrecondition: "FAILED_PRECONDITION",
	KindAborted:            "ABORTED",
	KindUnavailable:        "UNAVAILABLE",
	KindDeadlineExceeded:   "DEADLINE_EXCEEDED",
	KindResourceExhausted:  "RESOURCE_EXHAUSTED",
	KindUnimplemented:      "UNIMPLEMENTED",
}

// String returns the kind's upper-snake-case name, as the gRPC code it maps
// to is spelled in google.rpc.Code (for example "INVALID_ARGUMENT"), for
// log attributes.
func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return fmt.Sprintf("KIND_%d", int(k))
	}
	return kindNames[k]
}

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

// Error returns the whole chain for the log: the field (for invalid
// arguments), the message and the cause, as in
// "get credential: ERROR: relation \"credentials\" does not exist". Never
// send it to a client; use Public or PublicMessage.
func (e *Error) Error() string {
	msg := e.text()
	switch {
	case e.Err == nil:
		return msg
	case msg == "":
		return e.Err.Error()
	}
	return msg + ": " + e.Err.Error()
}

// Public returns the text a client may be shown: the field (for invalid
// arguments) and the message, never the cause. An error without a message
// gets its kind in words ("unavailable"), not its cause's text. The
// transport shows KindInternal errors as "internal error" whatever their
// message; PublicMessage does the same for any error.
func (e *Error) Public() string {
	if msg := e.text(); msg != "" {
		return msg
	}
	return strings.ToLower(strings.ReplaceAll(e.Kind.String(), "_", " "))
}

func (e *Error) text() string {
	if e.Field != "" {
		return e.Field + ": " + e.Message
	}
	return e.Message
}

// PublicMessage returns the text a client or a browser page may be shown
// for err, wherever it is wrapped: the Public text of the first *Error in
// the chain, "deadline exceeded" or "request canceled" for a bare context
// error, and "internal error" for a KindInternal or unclassified error, whose
// text is for the log only.
func PublicMessage(err error) string {
	e, ok := As(err)
	switch {
	case ok && e.Kind != KindInternal:
		return e.Public()
	case ok:
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline exceeded"
	case errors.Is(err, context.Canceled):
		return "request canceled"
	}
	return "internal error"
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
// errors.Is and the log but never shown to callers.
func Unavailable(cause error, format string, args ...any) *Error {
	return &Error{Kind: KindUnavailable, Reason: "UNAVAILABLE", Message: fmt.Sprintf(format, args...), Err: cause}
}

// Internal wraps an unexpected error; message and cause are logged, and the
// caller sees only "internal error".
func Internal(cause error, format string, args ...any) *Error {
	return &Error{Kind: KindInternal, Reason: "INTERNAL", Message: fmt.Sprintf(format, args...), Err: cause}
}

// WithMeta adds a metadata entry and returns e.
// Clone returns a copy of e with its own metadata map, for adding metadata
// to an error that other goroutines may hold (a result shared by a
// single-flight group, say).
func (e *Error) Clone() *Error {
	c := *e
	if e.Metadata != nil {
		c.Metadata = make(map[string]string, len(e.Metadata))
		for k, v := range e.Metadata {
			c.Metadata[k] = v
		}
	}
	return &c
}

func (e *Error) WithMeta(k, v string) *Error {
	if e.Metadata == nil {
		e.Metadata = map[string]string{}
	}
	e.Metadata[k] = v
	return e
}
