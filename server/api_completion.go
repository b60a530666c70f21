package server

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/service/authflow"
)

// CompleteAuthorization stores a grant its callback parked, when the user
// the platform names is the flow's user. The response carries no token.
func (a *oauthAPI) CompleteAuthorization(ctx context.Context, req *mcpauthv1.CompleteAuthorizationRequest) (*mcpauthv1.CompleteAuthorizationResponse, error) {
	tenant, id, err := resname.ParseProvider("name", req.GetName())
	if err != nil {
		return nil, err
	}
	done, err := a.flow.Complete(ctx, authflow.CompleteInput{Tenant: tenant, Provider: id, User: req.GetUser(), Code: req.GetCompletionCode()})
	if err != nil {
		return nil, withProvider(err, tenant, id)
	}
	resp := &mcpauthv1.CompleteAuthorizationResponse{Status: authStatuses[domain.StatusAuthorized], Issuer: done.Issuer,
		Scopes: done.Scopes, HasRefreshToken: done.HasRefresh}
	if !done.ExpiresAt.IsZero() {
		resp.ExpireTime = timestamppb.New(done.ExpiresAt)
	}
	return resp, nil
}
