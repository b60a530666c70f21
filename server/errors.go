package server

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/reqid"
)

// errorDomain is the google.rpc.ErrorInfo domain of every error detail.
const errorDomain = "mcpauth.dev"

var kindCodes = map[apperr.Kind]codes.Code{
	apperr.KindInternal:           codes.Internal,
	apperr.KindInvalidArgument:    codes.InvalidArgument,
	apperr.KindNotFound:           codes.NotFound,
	apperr.KindAlreadyExists:      codes.AlreadyExists,
	apperr.KindPermissionDenied:   codes.PermissionDenied,
	apperr.KindUnauthenticated:    codes.Unauthenticated,
	apperr.KindFailedPrecondition: codes.FailedPrecondition,
	apperr.KindAborted:            codes.Aborted,
	apperr.KindUnavailable:        codes.Unavailable,
	apperr.KindDeadlineExceeded:   codes.DeadlineExceeded,
	apperr.KindResourceExhausted:  codes.ResourceExhausted,
	apperr.KindUnimplemented:      codes.Unimplemented,
}

// toStatus is the one place where errors become gRPC statuses. Classified
// errors send their Public text (field and message, never the cause) and get
// a google.rpc.ErrorInfo (and a BadRequest for invalid fields); anything else
// is answered with a bare INTERNAL so no internal detail, secret or upstream
// body leaks. The log line gets the whole chain, cause included: an internal
// error at error level, any other error that carries a cause at warn level.
func toStatus(ctx context.Context, log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	// The caller went away or ran out of time, and the call failed of it
	// (a store's write cut short, say, whatever its layer called that
	// error): the caller's own outcome, not the service's error. Nobody
	// reads the answer; the metrics and the log must not count it as an
	// internal error.
	//
	// A cancellation is the caller's alone. A deadline error is ambiguous
	// (a detached step with its own timeout, such as storing tokens
	// already obtained, fails the same way), so it is still logged as its
	// classification says.
	if cerr := ctx.Err(); cerr != nil && errors.Is(err, cerr) {
		e, _ := apperr.As(err)
		if errors.Is(cerr, context.Canceled) {
			log.DebugContext(ctx, "call cancelled by its caller", errAttrs(ctx, err, e)...)
			return status.Error(codes.Canceled, cerr.Error())
		}
		switch {
		case e == nil:
		case e.Kind == apperr.KindInternal:
			log.ErrorContext(ctx, "internal error", errAttrs(ctx, err, e)...)
		case e.Err != nil:
			log.WarnContext(ctx, "call failed", errAttrs(ctx, err, e)...)
		}
		return status.Error(codes.DeadlineExceeded, cerr.Error())
	}
	msg := apperr.PublicMessage(err)
	e, ok := apperr.As(err)
	if !ok {
		// The caller still waits (else the branch above answered): an
		// unclassified context error is a step's own deadline or
		// cancellation; a classified error (an upstream timeout mapped to
		// UNAVAILABLE, say) keeps its code even if it wraps one.
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			return status.Error(codes.DeadlineExceeded, msg)
		case errors.Is(err, context.Canceled):
			return status.Error(codes.Canceled, msg)
		}
	}
	code, known := codes.Internal, false
	if ok {
		code, known = kindCodes[e.Kind]
	}
	if !known || code == codes.Internal {
		log.ErrorContext(ctx, "internal error", errAttrs(ctx, err, e)...)
		return status.Error(codes.Internal, "internal error")
	}
	if e.Err != nil {
		what := "call failed"
		if e.Kind == apperr.KindUnavailable {
			what = "dependency unavailable"
		}
		log.WarnContext(ctx, what, errAttrs(ctx, err, e)...)
	}
	st := status.New(code, msg)
	info := &errdetails.ErrorInfo{Reason: e.Reason, Domain: errorDomain, Metadata: e.Metadata}
	var withDetails *status.Status
	var derr error
	if e.Field != "" {
		// The field travels next to the description, which is therefore the
		// public message alone (no field prefix, never the cause).
		br := &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: e.Field, Description: e.Message}}}
		withDetails, derr = st.WithDetails(info, br)
	} else {
		withDetails, derr = st.WithDetails(info)
	}
	if derr != nil {
		return st.Err()
	}
	return withDetails.Err()
}

// errAttrs are the log attributes of a failed call: the whole chain as err,
// and the kind and reason when the error is classified (e may be nil).
func errAttrs(ctx context.Context, err error, e *apperr.Error) []any {
	kind, reason := apperr.KindInternal, ""
	if e != nil {
		kind, reason = e.Kind, e.Reason
	}
	attrs := []any{slog.String("err", err.Error()), slog.String("kind", kind.String())}
	if reason != "" {
		attrs = append(attrs, slog.String("reason", reason))
	}
	if id := reqid.From(ctx); id != "" {
		attrs = append(attrs, slog.String("request_id", id))
	}
	return attrs
}
