package server

import (
	"context"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/resname"
)

// userOf returns the end user a request acts for: its user field, or ""
// when it names none (a tenant-wide grant, or a request about no grant).
func userOf(req any) string {
	if r, ok := req.(interface{ GetUser() string }); ok {
		return r.GetUser()
	}
	return ""
}

// authorizeUser refuses a caller limited to the users its callers-file
// entry names (a per-user service) when the request acts for another user.
// The answer does not depend on whether the user has a grant.
//
// A listing of connections without a user shows every user's connections
// (their status and enterprise identity): such a caller must name a user
// it may act for. Connections read or deleted by name carry no user field;
// the connections use case checks the user of the row it reads.
func authorizeUser(id *caller.Identity, req any) error {
	if l, ok := req.(*mcpauthv1.ListConnectionsRequest); ok && l.GetUser() == "" && !id.ActsForAnyUser() {
		e := apperr.PermissionDenied("caller %q may act only for some users: name one in user", id.Name)
		e.Reason = domain.ReasonUserNotAllowed
		return e
	}
	if id.AllowsUser(userOf(req)) {
		return nil
	}
	e := apperr.PermissionDenied("caller %q may not act for this user", id.Name)
	e.Reason = domain.ReasonUserNotAllowed
	return e
}

// recordDenial writes the audit event of a refused call: a caller acting
// for a user it may not act for is recorded with that user and the
// provider, any other denial with its method.
func (i *interceptor) recordDenial(ctx context.Context, tenant, method string, req any, err error) {
	if e, ok := apperr.As(err); ok && e.Reason == domain.ReasonUserNotAllowed {
		provider := ""
		if r, ok := req.(interface{ GetName() string }); ok {
			_, provider, _ = resname.ParseProvider("name", r.GetName())
		}
		i.denials.RecordUserDenied(ctx, tenant, provider, method, userOf(req))
		return
	}
	i.denials.RecordDenied(ctx, tenant, method, domain.ReasonPermissionDenied)
}
