package server

import (
	"context"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/service/providers"
	"github.com/mcpauth/mcpauth/validate"
)

// ProviderUseCases is the provider registry. *providers.Service implements
// it.
type ProviderUseCases interface {
	Create(ctx context.Context, in providers.CreateInput) (*providers.View, error)
	Get(ctx context.Context, tenant, id string) (*providers.View, error)
	List(ctx context.Context, tenant, afterID string, limit int) ([]*providers.View, bool, error)
	Update(ctx context.Context, in providers.UpdateInput) (*providers.View, error)
	Delete(ctx context.Context, tenant, id, etag string) (bool, error)
}

var _ ProviderUseCases = (*providers.Service)(nil)

// providerAPI implements mcpauth.v1.MCPProviderService over the registry.
type providerAPI struct {
	mcpauthv1.UnimplementedMCPProviderServiceServer
	uc ProviderUseCases
}

// NewProviderAPI returns the gRPC provider service.
func NewProviderAPI(uc ProviderUseCases) mcpauthv1.MCPProviderServiceServer {
	return &providerAPI{uc: uc}
}

func (a *providerAPI) CreateProvider(ctx context.Context, req *mcpauthv1.CreateProviderRequest) (*mcpauthv1.CreateProviderResponse, error) {
	tenant, err := resname.ParseTenant("parent", req.GetParent())
	if err != nil {
		return nil, err
	}
	if req.GetProvider() == nil {
		return nil, apperr.Invalid("provider", "is required")
	}
	f, err := providerFields(req.GetProvider())
	if err != nil {
		return nil, err
	}
	v, err := a.uc.Create(ctx, providers.CreateInput{Tenant: tenant, ID: req.GetProviderId(), Fields: *f,
		ValidateConnectivity: req.GetValidateConnectivity()})
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.CreateProviderResponse{Provider: providerProto(v)}, nil
}

func (a *providerAPI) GetProvider(ctx context.Context, req *mcpauthv1.GetProviderRequest) (*mcpauthv1.GetProviderResponse, error) {
	tenant, id, err := resname.ParseProvider("name", req.GetName())
	if err != nil {
		return nil, err
	}
	v, err := a.uc.Get(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.GetProviderResponse{Provider: providerProto(v)}, nil
}

// ListProviders pages by id: the page token holds the last id seen and the
// parent it belongs to, nothing else.
func (a *providerAPI) ListProviders(ctx context.Context, req *mcpauthv1.ListProvidersRequest) (*mcpauthv1.ListProvidersResponse, error) {
	tenant, err := resname.ParseTenant("parent", req.GetParent())
	if err != nil {
		return nil, err
	}
	size, err := validate.PageSize("page_size", req.GetPageSize())
	if err != nil {
		return nil, err
	}
	tok, err := resname.DecodePageToken("page_token", req.GetParent(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	views, more, err := a.uc.List(ctx, tenant, tok.After, size)
	if err != nil {
		return nil, err
	}
	resp := &mcpauthv1.ListProvidersResponse{Providers: make([]*mcpauthv1.Provider, 0, len(views))}
	for _, v := range views {
		resp.Providers = append(resp.Providers, providerProto(v))
	}
	if more && len(views) > 0 {
		resp.NextPageToken = resname.EncodePageToken(resname.PageToken{Parent: req.GetParent(), After: views[len(views)-1].ID})
	}
	return resp, nil
}

func (a *providerAPI) UpdateProvider(ctx context.Context, req *mcpauthv1.UpdateProviderRequest) (*mcpauthv1.UpdateProviderResponse, error) {
	p := req.GetProvider()
	if p == nil {
		return nil, apperr.Invalid("provider", "is required")
	}
	tenant, id, err := resname.ParseProvider("provider.name", p.GetName())
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, path := range req.GetUpdateMask().GetPaths() {
		path = credentialPath(path)
		// name and etag identify and guard the update, they change nothing;
		// the REST gateway infers a PATCH's mask from every field of the
		// body, etag included.
		if path != "name" && path != "etag" && !slices.Contains(paths, path) {
			paths = append(paths, path)
		}
	}
	f, err := providerFields(p)
	if err != nil {
		return nil, err
	}
	v, err := a.uc.Update(ctx, providers.UpdateInput{Tenant: tenant, ID: id, Etag: p.GetEtag(), Fields: *f, Paths: paths})
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.UpdateProviderResponse{Provider: providerProto(v)}, nil
}

func (a *providerAPI) DeleteProvider(ctx context.Context, req *mcpauthv1.DeleteProviderRequest) (*mcpauthv1.DeleteProviderResponse, error) {
	tenant, id, err := resname.ParseProvider("name", req.GetName())
	if err != nil {
		return nil, err
	}
	revoked, err := a.uc.Delete(ctx, tenant, id, req.GetEtag())
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.DeleteProviderResponse{RevokedAtServer: revoked}, nil
}

// resourceModes maps the API's resource parameter modes to the domain's.
var resourceModes = map[mcpauthv1.ResourceParameterMode]domain.ResourceMode{
	mcpauthv1.ResourceParameterMode_RESOURCE_PARAMETER_MODE_UNSPECIFIED: 0,
	mcpauthv1.ResourceParameterMode_RESOURCE_PARAMETER_MODE_CANONICAL:   domain.ResourceCanonical,
	mcpauthv1.ResourceParameterMode_RESOURCE_PARAMETER_MODE_OMIT:        domain.ResourceOmit,
	mcpauthv1.ResourceParameterMode_RESOURCE_PARAMETER_MODE_OVERRIDE:    domain.ResourceOverride,
}

// providerFields converts the settable fields of an API provider.
func providerFields(p *mcpauthv1.Provider) (*providers.Fields, error) {
	f := &providers.Fields{
		DisplayName: p.GetDisplayName(), ServerIdentifier: p.GetServerIdentifier(), ServerURL: p.GetServerUrl(),
		Headers: p.GetHeaders(), Icon: p.GetIcon(),
		OAuthClient: providers.OAuthClient{ClientID: p.GetOauthClient().GetClientId(), ClientSecret: p.GetOauthClient().GetClientSecret(),
			Scopes: p.GetOauthClient().GetScopes()},
	}
	var err error
	if f.Timeout, err = durationOf("provider.timeout", p.GetTimeout()); err != nil {
		return nil, err
	}
	if f.SSEReadTimeout, err = durationOf("provider.sse_read_timeout", p.GetSseReadTimeout()); err != nil {
		return nil, err
	}
	if c := p.GetCompatibility(); c != nil {
		mode, known := resourceModes[c.GetResourceMode()]
		if !known {
			return nil, apperr.Invalid("provider.compatibility.resource_mode", "is not a known mode")
		}
		f.Compat = domain.Compat{ResourceMode: mode, ResourceOverride: c.GetResourceOverride(),
			AllowMissingPKCE: c.GetAllowMissingPkceMetadata(), ExtraParams: c.GetExtraAuthorizationParams(),
			TokenEndpointAuth: c.GetTokenEndpointAuthMethod()}
	}
	if err := credentialFields(p, f); err != nil {
		return nil, err
	}
	scope, known := grantScopes[p.GetGrantScope()]
	if !known {
		return nil, apperr.Invalid("provider.grant_scope", "is not a known grant scope")
	}
	f.GrantScope = scope
	f.SharedToolList = p.GetSharedToolList()
	f.RequireCompletion = p.GetRequireCompletion()
	return f, nil
}

// grantScopes maps the API's grant scopes to the domain's; UNSPECIFIED is
// TENANT.
var grantScopes = map[mcpauthv1.GrantScope]domain.GrantScope{
	mcpauthv1.GrantScope_GRANT_SCOPE_UNSPECIFIED: domain.ScopeTenant,
	mcpauthv1.GrantScope_GRANT_SCOPE_TENANT:      domain.ScopeTenant,
	mcpauthv1.GrantScope_GRANT_SCOPE_USER:        domain.ScopeUser,
}

// grantScopeProto is the API's value of a provider's grant scope: USER, or
// UNSPECIFIED for TENANT (the default), so that tenant-wide providers look
// exactly as they did before grant scopes existed, as credential_kind
// shows UNSPECIFIED for the default kind.
func grantScopeProto(s domain.GrantScope) mcpauthv1.GrantScope {
	if s.PerUser() {
		return mcpauthv1.GrantScope_GRANT_SCOPE_USER
	}
	return mcpauthv1.GrantScope_GRANT_SCOPE_UNSPECIFIED
}

func durationOf(field string, d *durationpb.Duration) (*time.Duration, error) {
	if d == nil {
		return nil, nil
	}
	if err := d.CheckValid(); err != nil {
		return nil, apperr.Invalid(field, "is not a valid duration")
	}
	v := d.AsDuration()
	return &v, nil
}

// authStatuses maps the domain's authorization statuses to the API's.
var authStatuses = map[domain.AuthStatus]mcpauthv1.AuthorizationStatus{
	domain.StatusNotRequired:    mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_NOT_REQUIRED,
	domain.StatusUnauthorized:   mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED,
	domain.StatusPending:        mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_PENDING,
	domain.StatusAuthorized:     mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED,
	domain.StatusExpired:        mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_EXPIRED,
	domain.StatusReauthRequired: mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_REAUTH_REQUIRED,
}

// providerProto builds the API's masked provider.
func providerProto(v *providers.View) *mcpauthv1.Provider {
	p := &mcpauthv1.Provider{
		Name:                resname.ProviderName(v.Tenant, v.ID),
		DisplayName:         v.DisplayName,
		ServerIdentifier:    v.ServerIdentifier,
		MaskedServerUrl:     v.MaskedServerURL,
		Icon:                v.Icon,
		Timeout:             durationpb.New(v.Timeout),
		SseReadTimeout:      durationpb.New(v.SSEReadTimeout),
		AuthorizationStatus: authStatuses[v.Status],
		CreateTime:          timestamppb.New(v.CreateTime),
		UpdateTime:          timestamppb.New(v.UpdateTime),
		Etag:                v.Etag,
	}
	for _, h := range v.Headers {
		p.HeaderInfo = append(p.HeaderInfo, &mcpauthv1.HeaderInfo{Name: h.Name, ValueSet: h.ValueSet, Fingerprint: h.Fingerprint})
	}
	if c := v.OAuthClient; c != nil {
		p.OauthClient = &mcpauthv1.OAuthClient{ClientId: c.ClientID, ClientSecretSet: c.ClientSecretSet, Scopes: c.Scopes}
	}
	if c := v.Compat; !c.IsZero() || c.ResourceMode == domain.ResourceCanonical {
		mode := mcpauthv1.ResourceParameterMode_RESOURCE_PARAMETER_MODE_UNSPECIFIED
		for k, m := range resourceModes {
			if m == c.ResourceMode && m != 0 {
				mode = k
			}
		}
		p.Compatibility = &mcpauthv1.CompatibilityProfile{
			ResourceMode:             mode,
			ResourceOverride:         c.ResourceOverride,
			AllowMissingPkceMetadata: c.AllowMissingPKCE,
			ExtraAuthorizationParams: c.ExtraParams,
			TokenEndpointAuthMethod:  c.TokenEndpointAuth,
		}
	}
	credentialProto(v, p)
	p.GrantScope = grantScopeProto(v.GrantScope)
	p.SharedToolList = v.SharedToolList
	p.RequireCompletion = v.RequireCompletion
	return p
}
