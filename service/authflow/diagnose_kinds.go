package authflow

import (
	"context"
	"slices"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/service/vault"
)

// diagnoseKind adds what the server advertises for the credential kinds
// and, for a kind without a person, decides readiness itself (PKCE and
// client registration belong to the browser flow). It reports whether it
// decided.
func diagnoseKind(out *Diagnosis, d *vault.Provider, md *oauthclient.Metadata) bool {
	out.GrantTypesSupported = md.GrantTypes
	out.TokenEndpointAuthMethods = md.TokenEndpointAuthMethods
	out.CredentialKind = d.Kind
	out.GrantType = d.Kind.GrantType()
	out.DPoPSigningAlgs = md.DPoPSigningAlgs
	out.DPoPWillBeUsed = d.DPoPFor(md.DPoPSigningAlgs) != nil
	out.GrantProfiles = md.GrantProfiles
	if !d.Kind.Machine() && d.Kind != domain.KindEnterpriseManaged {
		return false
	}
	switch {
	case len(md.GrantTypes) > 0 && !slices.Contains(md.GrantTypes, out.GrantType):
		out.BlockingProblem = "the authorization server does not advertise the " + out.GrantType + " grant type"
		return true
	case d.Kind == domain.KindEnterpriseManaged && md.RefusesIDJAG():
		out.BlockingProblem = "the authorization server's authorization_grant_profiles_supported does not list " + oauthclient.GrantProfileIDJAG +
			": it does not accept identity assertion grants"
		return true
	case d.Row.ClientID == "":
		// A JWT bearer grant without client authentication.
		out.Ready = true
		return true
	}
	reg := &oauthclient.Registration{Method: domain.RegPreRegistered, ClientID: d.Row.ClientID, ClientSecret: d.ClientSecret,
		AuthMethod: d.Compat.TokenEndpointAuth, ClientKey: d.ClientKey}
	method, err := oauthclient.ChooseAuthMethod(reg, md.TokenEndpointAuthMethods)
	if err != nil {
		out.BlockingProblem = "the authorization server advertises no token endpoint authentication mcpauth can use with the provider's client"
		return true
	}
	if method == oauthclient.AuthPrivateKeyJWT && len(md.TokenEndpointAuthMethods) > 0 && !slices.Contains(md.TokenEndpointAuthMethods, method) {
		out.BlockingProblem = "the authorization server does not advertise private_key_jwt"
		return true
	}
	out.TokenEndpointAuthMethod = method
	out.RegistrationMethod = domain.RegPreRegistered
	out.Ready = true
	return true
}

// diagnoseIdP adds, for an enterprise-managed provider, what its identity
// provider advertises (RFC 8414 metadata, when an issuer is configured)
// and the client authentication mcpauth will use there. A problem there
// blocks only a diagnosis the authorization server's side found ready.
func (s *Service) diagnoseIdP(ctx context.Context, out *Diagnosis, d *vault.Provider) {
	idp := d.CredConfig.IdP
	out.IdPIssuer = idp.Issuer
	block := func(why string) {
		if out.Ready {
			out.Ready, out.BlockingProblem = false, why
		}
	}
	var advertised []string
	if idp.Issuer != "" {
		tr := &oauthclient.Trace{}
		md, err := s.proto.IdentityProviderMetadata(ctx, idp.Issuer, tr)
		for _, st := range tr.Steps {
			st.Action = "identity provider metadata"
			out.Steps = append(out.Steps, st)
		}
		switch {
		case err != nil && idp.TokenEndpoint == "":
			block("the identity provider's metadata could not be read, and no token endpoint is configured")
			return
		case err == nil:
			out.IdPGrantTypes, out.IdPAuthMethods, advertised = md.GrantTypes, md.TokenEndpointAuthMethods, md.TokenEndpointAuthMethods
			if len(md.GrantTypes) > 0 && !slices.Contains(md.GrantTypes, oauthclient.GrantTokenExchange) {
				block("the identity provider does not advertise the token exchange grant type")
			}
		}
	}
	reg := &oauthclient.Registration{Method: domain.RegPreRegistered, ClientID: idp.ClientID, ClientSecret: d.IdPClientSecret,
		ClientKey: d.IdPClientKey}
	method, err := oauthclient.ChooseAuthMethod(reg, advertised)
	if err != nil {
		block("the identity provider advertises no token endpoint authentication mcpauth can use with its client secret or key")
		return
	}
	out.IdPAuthMethod = method
}
