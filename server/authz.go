package server

import (
	"context"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/resname"
)

// methodPermissions says which permission each RPC needs. A method missing
// here is refused (fail closed); health and reflection are open and handled
// before this table is consulted.
var methodPermissions = map[string]caller.Permission{
	mcpauthv1.MCPProviderService_CreateProvider_FullMethodName: caller.ProvidersWrite,
	mcpauthv1.MCPProviderService_GetProvider_FullMethodName:    caller.ProvidersRead,
	mcpauthv1.MCPProviderService_ListProviders_FullMethodName:  caller.ProvidersRead,
	mcpauthv1.MCPProviderService_UpdateProvider_FullMethodName: caller.ProvidersWrite,
	mcpauthv1.MCPProviderService_DeleteProvider_FullMethodName: caller.ProvidersWrite,

	mcpauthv1.OAuthService_StartAuthorization_FullMethodName:        caller.Authorize,
	mcpauthv1.OAuthService_GetAuthorizationStatus_FullMethodName:    caller.ProvidersRead,
	mcpauthv1.OAuthService_GetAccessToken_FullMethodName:            caller.TokensRead,
	mcpauthv1.OAuthService_RevokeAuthorization_FullMethodName:       caller.Authorize,
	mcpauthv1.OAuthService_DiagnoseProvider_FullMethodName:          caller.Authorize,
	mcpauthv1.OAuthService_ExchangeIdentityAssertion_FullMethodName: caller.Authorize,
	mcpauthv1.OAuthService_CompleteAuthorization_FullMethodName:     caller.Authorize,

	mcpauthv1.AuditService_ListAuditEvents_FullMethodName: caller.AuditRead,
	mcpauthv1.AuditService_WatchEvents_FullMethodName:     caller.AuditRead,

	mcpauthv1.WebhookService_CreateWebhookEndpoint_FullMethodName:       caller.ProvidersWrite,
	mcpauthv1.WebhookService_GetWebhookEndpoint_FullMethodName:          caller.ProvidersRead,
	mcpauthv1.WebhookService_ListWebhookEndpoints_FullMethodName:        caller.ProvidersRead,
	mcpauthv1.WebhookService_UpdateWebhookEndpoint_FullMethodName:       caller.ProvidersWrite,
	mcpauthv1.WebhookService_DeleteWebhookEndpoint_FullMethodName:       caller.ProvidersWrite,
	mcpauthv1.WebhookService_RotateWebhookEndpointSecret_FullMethodName: caller.ProvidersWrite,
	mcpauthv1.WebhookService_ListWebhookDeliveries_FullMethodName:       caller.ProvidersRead,
	mcpauthv1.WebhookService_RedeliverWebhookEvent_FullMethodName:       caller.ProvidersWrite,
	mcpauthv1.TokenReadService_ListTokenReads_FullMethodName:            caller.AuditRead,

	mcpauthv1.MCPToolService_RefreshTools_FullMethodName: caller.ToolsCall,
	mcpauthv1.MCPToolService_ListTools_FullMethodName:    caller.ProvidersRead,
	mcpauthv1.MCPToolService_CallTool_FullMethodName:     caller.ToolsCall,
}

// tenantOf extracts the tenant a request addresses from its resource name.
// It is the only place the tenant of a call is decided: services receive
// requests whose tenant the caller has already been checked against.
func tenantOf(req any) (string, error) {
	switch r := req.(type) {
	case *mcpauthv1.ListWebhookDeliveriesRequest:
		t, _, err := resname.ParseWebhookEndpoint("parent", r.GetParent())
		return t, err
	case *mcpauthv1.UpdateWebhookEndpointRequest:
		t, _, err := resname.ParseWebhookEndpoint("webhook_endpoint.name", r.GetWebhookEndpoint().GetName())
		return t, err
	case *mcpauthv1.GetWebhookEndpointRequest, *mcpauthv1.DeleteWebhookEndpointRequest,
		*mcpauthv1.RotateWebhookEndpointSecretRequest, *mcpauthv1.RedeliverWebhookEventRequest:
		t, _, err := resname.ParseWebhookEndpoint("name", r.(interface{ GetName() string }).GetName())
		return t, err
	case interface{ GetParent() string }:
		return resname.ParseTenant("parent", r.GetParent())
	case *mcpauthv1.UpdateProviderRequest:
		t, _, err := resname.ParseProvider("provider.name", r.GetProvider().GetName())
		return t, err
	case interface{ GetName() string }:
		t, _, err := resname.ParseProvider("name", r.GetName())
		return t, err
	default:
		return "", apperr.Invalid("name", "request carries no resource name")
	}
}

// authorize checks that id may call method on the tenant named in req. The
// answer does not depend on whether the resource exists.
func authorize(_ context.Context, id *caller.Identity, method string, req any) (tenant string, perm caller.Permission, err error) {
	perm, ok := methodPermissions[method]
	if !ok {
		return "", "", apperr.PermissionDenied("method is not open to callers")
	}
	tenant, err = tenantOf(req)
	if err != nil {
		return "", perm, err
	}
	if !id.Allows(tenant, perm) {
		return tenant, perm, apperr.PermissionDenied("caller %q lacks permission %q on tenant %q", id.Name, perm, tenant)
	}
	if err := authorizeUser(id, req); err != nil {
		return tenant, perm, err
	}
	return tenant, perm, nil
}
