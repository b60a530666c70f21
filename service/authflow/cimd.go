package authflow

import (
	"context"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/service/vault"
)

// Per-provider Client ID Metadata Documents.
//
// mcpauth's service-wide document (ClientMetadataDocument) declares a
// public client ("none"): one document cannot name the keys of every
// provider. A provider that authenticates with private_key_jwt but has no
// pre-registered client_id is instead identified by a document of its own
// (draft-ietf-oauth-client-id-metadata-document): its client_id is the
// document's URL, token_endpoint_auth_method is private_key_jwt, and
// jwks_uri is the provider's JWKS, from which the authorization server
// verifies the RFC 7523 client assertions (the draft's section on client
// authentication: it MUST then require them). The draft forbids
// shared-secret methods in such documents, so a key is the only way for
// such a client to be confidential.

// keyedCIMD reports whether the provider is identified by its own Client
// ID Metadata Document: an authorization-code provider with a
// private_key_jwt key and no pre-registered client_id.
func keyedCIMD(d *vault.Provider) bool {
	return d.Kind == domain.KindAuthorizationCode && d.Row.ClientID == "" && d.ClientKey != nil
}

// ProviderClientMetadataDocument is the Client ID Metadata Document of a
// provider identified by its own document (see keyedCIMD), or NOT_FOUND:
// for a provider that does not exist, is not such a provider, or when
// mcpauth serves no per-provider documents (its public URL is not https).
// It holds public facts only: the redirect URI, the grant types, the
// authentication method and where the public key is.
//
// Anyone may ask for it, so it reads the provider's plaintext columns from
// the database and decrypts nothing: not through the shared read cache,
// which made-up names would fill and so empty for everyone, and not the
// secrets, which the document does not need. The stored key's public facts
// (CredentialConfig.KeyAlg, set and cleared with the key) stand for the key.
func (s *Service) ProviderClientMetadataDocument(ctx context.Context, tenant, id string) (map[string]any, error) {
	if s.cfg.ProviderMetadataURL == nil || s.cfg.JWKSURL == nil {
		return nil, apperr.NotFound("client metadata document")
	}
	p, err := s.store.GetProviderPublic(ctx, tenant, id)
	if err != nil {
		return nil, apperr.NotFound("client metadata document")
	}
	cfg := vault.ParseCredentialConfig(p.CredentialConfig)
	if domain.CredentialKind(p.CredentialKind) != domain.KindAuthorizationCode || p.ClientID != "" || cfg.KeyAlg == "" {
		return nil, apperr.NotFound("client metadata document")
	}
	return map[string]any{
		"client_id":                       s.cfg.ProviderMetadataURL(tenant, id),
		"client_name":                     s.cfg.ClientName,
		"redirect_uris":                   []string{s.cfg.CallbackURL},
		"grant_types":                     []string{"authorization_code", "refresh_token"},
		"response_types":                  []string{"code"},
		"token_endpoint_auth_method":      oauthclient.AuthPrivateKeyJWT,
		"token_endpoint_auth_signing_alg": cfg.KeyAlg,
		"jwks_uri":                        s.cfg.JWKSURL(tenant, id),
		"application_type":                "web",
	}, nil
}

// keyedRegistration is the client of a provider identified by its own
// Client ID Metadata Document. Without a per-provider document, or at a
// server that does not fetch such documents or take private_key_jwt, it
// fails: the key says the operator wants a confidential client, and no
// other registration is tried in its place.
func (s *Service) keyedRegistration(d *vault.Provider, md *oauthclient.Metadata) (*oauthclient.Registration, error) {
	if s.cfg.ProviderMetadataURL == nil {
		return nil, apperr.FailedPrecondition(domain.ReasonNoClientRegistration,
			"the provider has a private_key_jwt key but no client_id, and mcpauth serves no Client ID Metadata Documents (its public URL is not https): set oauth_client.client_id")
	}
	if !md.ClientIDMetadataDocumentSupported {
		return nil, apperr.FailedPrecondition(domain.ReasonNoClientRegistration,
			"the provider has a private_key_jwt key but no client_id, and the authorization server does not support Client ID Metadata Documents (client_id_metadata_document_supported): set oauth_client.client_id")
	}
	reg := &oauthclient.Registration{Method: domain.RegCIMD, ClientID: s.cfg.ProviderMetadataURL(d.Row.TenantID, d.Row.ID),
		RedirectURI: s.cfg.CallbackURL, ClientKey: d.ClientKey}
	method, err := oauthclient.ChooseAuthMethod(reg, md.TokenEndpointAuthMethods)
	if err != nil {
		return nil, apperr.FailedPrecondition(domain.ReasonNoUsableAuthMethod,
			"the authorization server does not advertise private_key_jwt, the provider's client authentication (token_endpoint_auth_methods_supported: %s)",
			advertisedMethods(md))
	}
	reg.AuthMethod = method
	return reg, nil
}
