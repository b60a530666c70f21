package server

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/grants"
)

// ExchangeIdentityAssertion turns a user's ID token into an
// enterprise-managed provider's tokens. The response carries no token, and
// the ID token goes no further than the use case.
func (a *oauthAPI) ExchangeIdentityAssertion(ctx context.Context, req *mcpauthv1.ExchangeIdentityAssertionRequest) (*mcpauthv1.ExchangeIdentityAssertionResponse, error) {
	tenant, id, err := resname.ParseProvider("name", req.GetName())
	if err != nil {
		return nil, err
	}
	tok, err := a.grants.ExchangeIdentityAssertion(ctx, grants.IdentityAssertion{Tenant: tenant, Provider: id, User: req.GetUser(),
		IDToken: secret.New(req.GetIdToken())})
	if err != nil {
		return nil, withProvider(err, tenant, id)
	}
	resp := &mcpauthv1.ExchangeIdentityAssertionResponse{Status: authStatuses[domain.StatusAuthorized], Issuer: tok.Issuer,
		Scopes: tok.Scopes, HasRefreshToken: tok.HasRefresh}
	if !tok.ExpiresAt.IsZero() {
		resp.ExpireTime = timestamppb.New(tok.ExpiresAt)
	}
	return resp, nil
}
