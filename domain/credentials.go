package domain

// CredentialKind is how mcpauth obtains a provider's access token. The
// values are stored (providers.credential_kind); never change them.
type CredentialKind string

// The credential kinds.
const (
	// KindAuthorizationCode (or the empty value) is the authorization code
	// flow in a person's browser.
	KindAuthorizationCode CredentialKind = ""
	// KindClientCredentials is OAuth 2.1's client_credentials grant with
	// the provider's client secret or private key; no browser.
	KindClientCredentials CredentialKind = "client_credentials"
	// KindJWTBearer is the RFC 7523 JWT bearer grant with a workload's
	// identity token read from a file each time.
	KindJWTBearer CredentialKind = "jwt_bearer"
	// KindStaticAuthorization is a fixed Authorization header value (an API
	// key); no OAuth at all.
	KindStaticAuthorization CredentialKind = "static_authorization"
	// KindEnterpriseManaged is the MCP enterprise-managed authorization
	// extension (cross-app access): the end user's ID token from the
	// enterprise identity provider, supplied by the calling platform, is
	// exchanged there for an identity assertion JWT authorization grant
	// (ID-JAG, RFC 8693 token exchange), which the MCP server's
	// authorization server turns into tokens with the RFC 7523 JWT bearer
	// grant. mcpauth cannot start it alone: it needs a fresh ID token each
	// time the tokens run out.
	KindEnterpriseManaged CredentialKind = "enterprise_managed"
)

// Machine reports whether tokens of this kind are obtained by asking the
// authorization server again, without a person.
func (k CredentialKind) Machine() bool {
	return k == KindClientCredentials || k == KindJWTBearer
}

// GrantType is the OAuth grant type the kind uses at the token endpoint,
// "" for a kind without one.
func (k CredentialKind) GrantType() string {
	switch k {
	case KindAuthorizationCode:
		return "authorization_code"
	case KindClientCredentials:
		return "client_credentials"
	case KindJWTBearer, KindEnterpriseManaged:
		return "urn:ietf:params:oauth:grant-type:jwt-bearer"
	}
	return ""
}

// CredentialConfig is the non-secret part of a provider's credential
// settings, stored as JSON (providers.credential_config). The secret part
// (private key, static authorization value) is sealed separately.
type CredentialConfig struct {
	// KeyAlg is the client assertion algorithm (ES256 or RS256) when the
	// provider's client authenticates with private_key_jwt; "" otherwise.
	KeyAlg string `json:"ka,omitempty"`
	// KeyID is the key's RFC 7638 thumbprint.
	KeyID string `json:"kid,omitempty"`
	// KeyGenerated is true when mcpauth generated the key.
	KeyGenerated bool `json:"kg,omitempty"`
	// PublicJWK is the public key as a JWK, served in the provider's JWKS.
	PublicJWK string `json:"jwk,omitempty"`
	// StaticSet is true when a static Authorization value is stored.
	StaticSet bool `json:"ss,omitempty"`
	// AssertionFile is where the workload identity token is read from.
	AssertionFile string `json:"af,omitempty"`
	// IdP is the enterprise identity provider of KindEnterpriseManaged.
	IdP EnterpriseIdP `json:"idp,omitzero"`
	// DPoPMode is when tokens are sender-constrained with DPoP.
	DPoPMode DPoPMode `json:"dm,omitempty"`
	// DPoPAlg is the algorithm of the provider's DPoP key (ES256 or
	// RS256); "" when it holds none.
	DPoPAlg string `json:"da,omitempty"`
	// DPoPJKT is the RFC 7638 thumbprint of the DPoP key: the jkt its
	// tokens are bound to.
	DPoPJKT string `json:"dj,omitempty"`
}

// DPoPMode says when a provider's tokens are sender-constrained with DPoP
// (RFC 9449). The values are stored; never change them.
type DPoPMode string

// The DPoP modes.
const (
	// DPoPDisabled (the empty value) never uses DPoP: Bearer tokens.
	DPoPDisabled DPoPMode = ""
	// DPoPAuto uses DPoP when the authorization server's metadata lists
	// the key's algorithm in dpop_signing_alg_values_supported.
	DPoPAuto DPoPMode = "auto"
	// DPoPRequired always uses DPoP, whatever the metadata says, and never
	// accepts a Bearer token.
	DPoPRequired DPoPMode = "required"
)

// Use reports whether a token request to a server that advertises
// serverAlgs carries a DPoP proof signed with keyAlg.
func (m DPoPMode) Use(keyAlg string, serverAlgs []string) bool {
	switch m {
	case DPoPRequired:
		return keyAlg != ""
	case DPoPAuto:
		for _, a := range serverAlgs {
			if keyAlg != "" && a == keyAlg {
				return true
			}
		}
	}
	return false
}

// EnterpriseIdP is the non-secret configuration of the enterprise identity
// provider mcpauth exchanges ID tokens at (its client secret is sealed
// with the other credential secrets).
type EnterpriseIdP struct {
	// Issuer is the IdP's issuer identifier; its RFC 8414 metadata names
	// the token endpoint. Empty when TokenEndpoint is configured alone.
	Issuer string `json:"iss,omitempty"`
	// TokenEndpoint is the IdP's token endpoint; when empty it is
	// discovered from Issuer.
	TokenEndpoint string `json:"te,omitempty"`
	// ClientID is mcpauth's client at the IdP.
	ClientID string `json:"cid,omitempty"`
	// SecretSet is true when a client secret for the IdP is stored.
	SecretSet bool `json:"ss,omitempty"`
	// KeyAlg, KeyID, KeyGenerated and PublicJWK describe the private_key_jwt
	// key mcpauth authenticates with at the IdP instead of a secret (its
	// private part is sealed with the other credential secrets).
	KeyAlg       string `json:"ka,omitempty"`
	KeyID        string `json:"kid,omitempty"`
	KeyGenerated bool   `json:"kg,omitempty"`
	PublicJWK    string `json:"jwk,omitempty"`
	// UserClaim names the ID token claim whose value must equal the user
	// an exchange is made for; "" for no such check.
	UserClaim string `json:"uc,omitempty"`
}

// IsZero reports whether nothing is configured.
func (e EnterpriseIdP) IsZero() bool { return e == EnterpriseIdP{} }
