package server

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/service/authflow"
	"github.com/mcpauth/mcpauth/service/grants"
	"github.com/mcpauth/mcpauth/validate"
)

// FlowUseCases starts and diagnoses authorizations. *authflow.Service
// implements it.
type FlowUseCases interface {
	Start(ctx context.Context, in authflow.StartInput) (*authflow.Started, error)
	Diagnose(ctx context.Context, tenant, id string) (*authflow.Diagnosis, error)
	// Complete stores a grant parked for the platform's confirmation.
	Complete(ctx context.Context, in authflow.CompleteInput) (*authflow.Completed, error)
}

var _ FlowUseCases = (*authflow.Service)(nil)

// GrantUseCases reads, serves and revokes grants. *grants.Service
// implements it.
type GrantUseCases interface {
	Status(ctx context.Context, ref domain.GrantRef) (*grants.Status, error)
	AccessToken(ctx context.Context, ref domain.GrantRef) (*grants.Token, error)
	Proof(ctx context.Context, ref domain.GrantRef, t *grants.Token, r grants.ProofRequest) (string, error)
	// CheckProofTarget refuses a proof request for anything but the
	// provider's MCP server.
	CheckProofTarget(ctx context.Context, ref domain.GrantRef, r grants.ProofRequest) error
	Revoke(ctx context.Context, ref domain.GrantRef) (bool, error)
	// ExchangeIdentityAssertion obtains an enterprise-managed provider's
	// tokens from a user's ID token.
	ExchangeIdentityAssertion(ctx context.Context, in grants.IdentityAssertion) (*grants.Exchanged, error)
}

var _ GrantUseCases = (*grants.Service)(nil)

// registrationMethods maps the domain's registration methods to the API's.
var registrationMethods = map[domain.RegistrationMethod]mcpauthv1.RegistrationMethod{
	domain.RegPreRegistered: mcpauthv1.RegistrationMethod_REGISTRATION_METHOD_PRE_REGISTERED,
	domain.RegCIMD:          mcpauthv1.RegistrationMethod_REGISTRATION_METHOD_CLIENT_ID_METADATA_DOCUMENT,
	domain.RegDynamic:       mcpauthv1.RegistrationMethod_REGISTRATION_METHOD_DYNAMIC_REGISTRATION,
}

// oauthAPI implements mcpauth.v1.OAuthService.
type oauthAPI struct {
	mcpauthv1.UnimplementedOAuthServiceServer
	flow   FlowUseCases
	grants GrantUseCases
}

// NewOAuthAPI returns the gRPC OAuth service.
func NewOAuthAPI(flow FlowUseCases, g GrantUseCases) mcpauthv1.OAuthServiceServer {
	return &oauthAPI{flow: flow, grants: g}
}

func (a *oauthAPI) StartAuthorization(ctx context.Context, req *mcpauthv1.StartAuthorizationRequest) (*mcpauthv1.StartAuthorizationResponse, error) {
	tenant, id, err := resname.ParseProvider("name", req.GetName())
	if err != nil {
		return nil, err
	}
	st, err := a.flow.Start(ctx, authflow.StartInput{Tenant: tenant, Provider: id, User: req.GetUser(), ReturnURL: req.GetReturnUrl(),
		AdditionalScopes: req.GetAdditionalScopes(), RequireCompletion: req.GetRequireCompletion(), ExpectedSubject: req.GetExpectedSubject()})
	if err != nil {
		return nil, withProvider(err, tenant, id)
	}
	resp := &mcpauthv1.StartAuthorizationResponse{Status: authStatuses[st.Status], AuthorizationUrl: st.AuthorizationURL,
		Scopes: st.Scopes, Issuer: st.Issuer, RegistrationMethod: string(st.RegistrationMethod),
		ClientRegistrationMethod: registrationMethods[st.RegistrationMethod]}
	if !st.ExpiresAt.IsZero() {
		resp.ExpireTime = timestamppb.New(st.ExpiresAt)
	}
	return resp, nil
}

func (a *oauthAPI) GetAuthorizationStatus(ctx context.Context, req *mcpauthv1.GetAuthorizationStatusRequest) (*mcpauthv1.GetAuthorizationStatusResponse, error) {
	tenant, id, err := resname.ParseProvider("name", req.GetName())
	if err != nil {
		return nil, err
	}
	ref, err := grantRef(tenant, id, req.GetUser())
	if err != nil {
		return nil, err
	}
	st, err := a.grants.Status(ctx, ref)
	if err != nil {
		return nil, err
	}
	resp := &mcpauthv1.GetAuthorizationStatusResponse{Status: authStatuses[st.Status], Issuer: st.Issuer, Scopes: st.Scopes,
		HasRefreshToken: st.HasRefresh, Reason: st.Reason}
	if !st.ExpiresAt.IsZero() {
		resp.ExpireTime = timestamppb.New(st.ExpiresAt)
	}
	return resp, nil
}

func (a *oauthAPI) GetAccessToken(ctx context.Context, req *mcpauthv1.GetAccessTokenRequest) (*mcpauthv1.GetAccessTokenResponse, error) {
	tenant, id, err := resname.ParseProvider("name", req.GetName())
	if err != nil {
		return nil, err
	}
	pr := grants.ProofRequest{Method: req.GetDpopMethod(), URL: req.GetDpopUrl(), Nonce: req.GetDpopNonce()}
	if err := grants.ValidateProofRequest(pr); err != nil {
		return nil, err
	}
	ref, err := grantRef(tenant, id, req.GetUser())
	if err != nil {
		return nil, err
	}
	if err := a.grants.CheckProofTarget(ctx, ref, pr); err != nil {
		return nil, err
	}
	tok, err := a.grants.AccessToken(ctx, ref)
	if err != nil {
		return nil, withProvider(err, tenant, id)
	}
	resp := &mcpauthv1.GetAccessTokenResponse{AccessToken: tok.AccessToken.Reveal(), TokenType: tok.TokenType, Scopes: tok.Scopes, Issuer: tok.Issuer}
	if !tok.ExpiresAt.IsZero() {
		resp.ExpireTime = timestamppb.New(tok.ExpiresAt)
	}
	if tok.Grant.DPoPJKT != "" {
		resp.DpopKeyThumbprint = tok.Grant.DPoPJKT
		if !pr.IsZero() {
			if resp.DpopProof, err = a.grants.Proof(ctx, ref, tok, pr); err != nil {
				return nil, withProvider(err, tenant, id)
			}
		}
	}
	return resp, nil
}

func (a *oauthAPI) RevokeAuthorization(ctx context.Context, req *mcpauthv1.RevokeAuthorizationRequest) (*mcpauthv1.RevokeAuthorizationResponse, error) {
	tenant, id, err := resname.ParseProvider("name", req.GetName())
	if err != nil {
		return nil, err
	}
	ref, err := grantRef(tenant, id, req.GetUser())
	if err != nil {
		return nil, err
	}
	revoked, err := a.grants.Revoke(ctx, ref)
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.RevokeAuthorizationResponse{RevokedAtServer: revoked}, nil
}

// grantRef names the grant a request is about: the provider's tenant-wide
// grant, or user's connection. Whether the provider's grant scope expects
// a user is the use case's check (it reads the provider).
func grantRef(tenant, id, user string) (domain.GrantRef, error) {
	if user != "" {
		if err := validate.UserID("user", user); err != nil {
			return domain.GrantRef{}, err
		}
	}
	return domain.GrantRef{Tenant: tenant, Provider: id, User: user}, nil
}

func (a *oauthAPI) DiagnoseProvider(ctx context.Context, req *mcpauthv1.DiagnoseProviderRequest) (*mcpauthv1.DiagnoseProviderResponse, error) {
	tenant, id, err := resname.ParseProvider("name", req.GetName())
	if err != nil {
		return nil, err
	}
	d, err := a.flow.Diagnose(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	resp := &mcpauthv1.DiagnoseProviderResponse{
		Ready:                               d.Ready,
		BlockingProblem:                     d.BlockingProblem,
		ResourceMetadataUrl:                 d.ResourceMetadataURL,
		Issuer:                              d.Issuer,
		PkceS256Supported:                   d.PKCES256Supported,
		ClientIdMetadataDocumentSupported:   d.ClientIDMetadataDocumentSupported,
		DynamicRegistrationSupported:        d.DynamicRegistrationSupported,
		IssuerParameterSupported:            d.IssuerParameterSupported,
		RegistrationMethod:                  string(d.RegistrationMethod),
		ClientRegistrationMethod:            registrationMethods[d.RegistrationMethod],
		Scopes:                              d.Scopes,
		Status:                              authStatuses[d.Status],
		GrantTypesSupported:                 d.GrantTypesSupported,
		TokenEndpointAuthMethodsSupported:   d.TokenEndpointAuthMethods,
		GrantType:                           d.GrantType,
		TokenEndpointAuthMethod:             d.TokenEndpointAuthMethod,
		CredentialKind:                      credentialKindProto(d.CredentialKind),
		IdentityProviderIssuer:              d.IdPIssuer,
		IdentityProviderGrantTypesSupported: d.IdPGrantTypes,
		IdentityProviderTokenEndpointAuthMethodsSupported: d.IdPAuthMethods,
		IdentityProviderTokenEndpointAuthMethod:           d.IdPAuthMethod,
		DpopSigningAlgValuesSupported:                     d.DPoPSigningAlgs,
		DpopWillBeUsed:                                    d.DPoPWillBeUsed,
		AuthorizationGrantProfilesSupported:               d.GrantProfiles,
	}
	for _, st := range d.Steps {
		resp.Steps = append(resp.Steps, &mcpauthv1.DiagnosticStep{Action: st.Action, Url: st.URL, HttpStatus: int32(st.HTTPStatus),
			ContentType: st.ContentType, Ok: st.OK, Detail: st.Detail})
	}
	return resp, nil
}
