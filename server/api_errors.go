package server

import (
	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/resname"
)

// withProvider adds to an error about a provider's authorization what the
// caller needs to act on it: the provider's resource name and, when a
// person must authorize, which RPC (and REST path) to call. It works on a
// copy: the same error value can reach several callers at once (waiters of
// one refresh share its result).
func withProvider(err error, tenant, id string) error {
	shared, ok := apperr.As(err)
	if !ok {
		return err
	}
	e := shared.Clone()
	name := resname.ProviderName(tenant, id)
	switch e.Reason {
	case domain.ReasonNotAuthorized, domain.ReasonReauthRequired, domain.ReasonTokenExpired:
		e.WithMeta("provider", name).
			WithMeta("action", "call mcpauth.v1.OAuthService/StartAuthorization").
			WithMeta("start_authorization_path", "/v1/"+name+":startAuthorization")
	case domain.ReasonInsufficientScope:
		e.WithMeta("provider", name).
			WithMeta("action", "call mcpauth.v1.OAuthService/StartAuthorization with additional_scopes = missing_scopes")
	case domain.ReasonInsufficientScopeLoop, domain.ReasonNotRequired:
		e.WithMeta("provider", name)
	default:
		return err
	}
	return e
}
