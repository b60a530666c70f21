package authflow

import (
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
	if !d.Kind.Machine() {
		return false
	}
	switch {
	case len(md.GrantTypes) > 0 && !slices.Contains(md.GrantTypes, out.GrantType):
		out.BlockingProblem = "the authorization server does not advertise the " + out.GrantType + " grant type"
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
