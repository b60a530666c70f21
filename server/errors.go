package server

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mcpauth/mcpauth/apperr"
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
// errors keep their message and get a google.rpc.ErrorInfo (and a
// BadRequest for invalid fields); anything else is logged and answered with
// a bare INTERNAL so no internal detail, secret or upstream body leaks.
func toStatus(ctx context.Context, log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	e, ok := apperr.As(err)
	if !ok {
		// Only an unclassified context error is the caller's own deadline
		// or cancellation; a classified error (an upstream timeout mapped to
		// UNAVAILABLE, say) keeps its code even if it wraps one.
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			return status.Error(codes.DeadlineExceeded, "deadline exceeded")
		case errors.Is(err, context.Canceled):
			return status.Error(codes.Canceled, "request canceled")
		}
	}
	if !ok || e.Kind == apperr.KindInternal {
		log.ErrorContext(ctx, "internal error", "err", err.Error())
		return status.Error(codes.Internal, "internal error")
	}
	if e.Kind == apperr.KindUnavailable && e.Err != nil {
		log.WarnContext(ctx, "dependency unavailable", "err", e.Err.Error())
	}
	st := status.New(kindCodes[e.Kind], e.Error())
	info := &errdetails.ErrorInfo{Reason: e.Reason, Domain: errorDomain, Metadata: e.Metadata}
	var withDetails *status.Status
	var derr error
	if e.Field != "" {
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
