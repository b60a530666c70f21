// Package vault opens and seals what mcpauth keeps encrypted for a
// provider: its server URL, headers and client secret, its token sets and
// its client registrations. Every ciphertext is bound to its tenant,
// provider and field, so the use cases that share these rows (providers,
// authorization flow, grants, tools) cannot forget the associated data.
package vault

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/dpop"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/validate"
)

// Cipher seals and opens field values bound to their tenant, provider and
// field, and computes keyed fingerprints. *keyring.Keyring implements it.
type Cipher interface {
	Seal(s keyring.Scope, plaintext []byte) ([]byte, error)
	Open(s keyring.Scope, ciphertext []byte) ([]byte, error)
	PrimaryID() uint32
	Fingerprint(tenant, purpose string, value []byte) string
	Fingerprints(tenant, purpose string, value []byte) []string
	ShortFingerprint(tenant, purpose string, value []byte) string
}

var _ Cipher = (*keyring.Keyring)(nil)

// Field names used in encryption scopes and fingerprints. Changing one makes
// every stored ciphertext of that field unreadable.
const (
	FieldServerURL    = "provider.server_url"
	FieldHeaders      = "provider.headers"
	FieldClientSecret = "provider.oauth_client.client_secret"
	FieldTokens       = "credential.tokens"
	FieldRegistration = "client_registration"
	PurposeURL        = "provider.server_url.normalized"
	PurposeHeader     = "provider.header_value"
)

// ProviderGetter reads one provider row.
type ProviderGetter interface {
	GetProvider(ctx context.Context, tenant, id string) (*repository.Provider, error)
}

// Provider is a provider with its secrets opened, for the use cases that
// talk to its servers.
type Provider struct {
	Row          *repository.Provider
	URL          *url.URL
	Resource     string // canonical MCP server URI
	Headers      map[string]string
	ClientSecret secret.Secret
	Scopes       []string
	Compat       domain.Compat
	// Kind is how the provider's token is obtained.
	Kind domain.CredentialKind
	// CredConfig is the non-secret credential settings.
	CredConfig domain.CredentialConfig
	// ClientKey signs private_key_jwt client assertions, when set.
	ClientKey *oauthclient.ClientKey
	// StaticAuthorization is a static API-key provider's Authorization value.
	StaticAuthorization secret.Secret
	// IdPClientSecret is mcpauth's client secret at an enterprise-managed
	// provider's identity provider.
	IdPClientSecret secret.Secret
	// IdPClientKey is the private_key_jwt key mcpauth authenticates with at
	// that identity provider instead of a secret, if any.
	IdPClientKey *oauthclient.ClientKey
	// DPoP is the provider's DPoP key pair (RFC 9449), when it has one.
	DPoP *dpop.Key
}

// DPoPFor returns the key a token request to a server advertising
// serverAlgs signs its proofs with: the provider's DPoP key when its mode
// says to use it there, else nil.
func (d *Provider) DPoPFor(serverAlgs []string) *dpop.Key {
	if d.DPoP == nil || !d.CredConfig.DPoPMode.Use(d.DPoP.Algorithm(), serverAlgs) {
		return nil
	}
	return d.DPoP
}

// OpenProvider decrypts a provider row.
func OpenProvider(c Cipher, row *repository.Provider) (*Provider, error) {
	u, err := OpenURL(c, row)
	if err != nil {
		return nil, err
	}
	d := &Provider{Row: row, URL: u, Resource: validate.CanonicalResource(u), Scopes: ParseList(row.Scopes), Compat: ParseCompat(row.Compat)}
	if len(row.Headers) > 0 {
		raw, err := c.Open(scope(row, FieldHeaders), row.Headers)
		if err != nil {
			return nil, apperr.Internal(err, "opening headers")
		}
		if err := json.Unmarshal(raw, &d.Headers); err != nil {
			return nil, apperr.Internal(err, "decoding headers")
		}
	}
	if len(row.ClientSecret) > 0 {
		raw, err := c.Open(scope(row, FieldClientSecret), row.ClientSecret)
		if err != nil {
			return nil, apperr.Internal(err, "opening client secret")
		}
		d.ClientSecret = secret.New(string(raw))
	}
	if err := openCredentials(c, d); err != nil {
		return nil, err
	}
	return d, nil
}

// OpenURL decrypts only a provider's server URL.
func OpenURL(c Cipher, row *repository.Provider) (*url.URL, error) {
	pt, err := c.Open(scope(row, FieldServerURL), row.ServerURL)
	if err != nil {
		return nil, apperr.Internal(err, "opening server url")
	}
	u, err := url.Parse(string(pt))
	if err != nil {
		// url.Error quotes the whole URL, which may hold a secret and must
		// not reach the log line this cause ends up in.
		return nil, apperr.Internal(errors.New("the stored server url does not parse"), "parsing stored server url")
	}
	return u, nil
}

func scope(row *repository.Provider, field string) keyring.Scope {
	return keyring.Scope{Tenant: row.TenantID, Provider: row.ID, Field: field}
}

// ResourceParam is the RFC 8707 resource value to send, after the
// provider's compatibility profile.
func (d *Provider) ResourceParam() string {
	switch d.Compat.ResourceMode {
	case domain.ResourceOmit:
		return ""
	case domain.ResourceOverride:
		return d.Compat.ResourceOverride
	default:
		return d.Resource
	}
}

// Grant is what refreshing and revoking a token set needs besides the
// tokens and the client secret: it is sealed together with the tokens, so a
// token can only ever be sent back to the server that issued it.
type Grant struct {
	Issuer             string                    `json:"i"`
	TokenEndpoint      string                    `json:"te"`
	RevocationEndpoint string                    `json:"re,omitempty"`
	RegMethod          domain.RegistrationMethod `json:"rm"`
	ClientID           string                    `json:"c"`
	AuthMethod         string                    `json:"am,omitempty"`
	Resource           string                    `json:"rs,omitempty"`
	// Server is the provider's normalised server URL when the tokens were
	// granted (sealed with them): tokens are only ever sent to that server.
	Server string `json:"sv,omitempty"`
	// Kind is the credential kind the tokens were obtained with; a kind
	// without a person is renewed by asking again, never by a refresh.
	Kind domain.CredentialKind `json:"k,omitempty"`
	// DPoPJKT is the thumbprint of the DPoP key the tokens are bound to
	// (RFC 9449 section 6), "" for Bearer tokens. Refreshes and MCP
	// requests use that key and no other.
	DPoPJKT string `json:"dj,omitempty"`
}

// GrantedFor reports whether the grant was issued for d's current server.
func (g Grant) GrantedFor(d *Provider) bool {
	return g.Server == validate.NormalizeURL(d.URL)
}

// tokenBlob is the encrypted form of a token set.
type tokenBlob struct {
	Access   string    `json:"a"`
	Refresh  string    `json:"r,omitempty"`
	Type     string    `json:"t,omitempty"`
	IssuedAt time.Time `json:"at"`
	Grant    Grant     `json:"g"`
}

// TokenScope is the encryption scope of a grant's token set: its tenant,
// provider and user (for a per-user grant), so a token ciphertext copied to
// another grant's row never opens.
func TokenScope(ref domain.GrantRef) keyring.Scope {
	return keyring.Scope{Tenant: ref.Tenant, Provider: ref.Provider, Field: FieldTokens, User: ref.User}
}

// SealTokens encrypts a token set with its grant for the grant ref names.
func SealTokens(c Cipher, ref domain.GrantRef, t *oauthclient.Tokens, g Grant, issuedAt time.Time) ([]byte, error) {
	raw, err := json.Marshal(tokenBlob{Access: t.AccessToken.Reveal(), Refresh: t.RefreshToken.Reveal(), Type: t.TokenType, IssuedAt: issuedAt, Grant: g})
	if err != nil {
		return nil, apperr.Internal(err, "encoding tokens")
	}
	ct, err := c.Seal(TokenScope(ref), raw)
	if err != nil {
		return nil, apperr.Internal(err, "sealing tokens")
	}
	return ct, nil
}

// Held is an opened token set.
type Held struct {
	Tokens   *oauthclient.Tokens
	Grant    Grant
	IssuedAt time.Time
}

// OpenTokens decrypts a credential's token set. A credential without
// tokens is the caller's to handle before calling this.
func OpenTokens(c Cipher, cred *repository.Credential) (*Held, error) {
	if len(cred.Tokens) == 0 {
		return nil, apperr.FailedPrecondition(domain.ReasonReauthRequired, "the provider holds no tokens: authorize it again")
	}
	raw, err := c.Open(TokenScope(cred.Ref()), cred.Tokens)
	if err != nil {
		return nil, apperr.Internal(err, "opening tokens")
	}
	var b tokenBlob
	if err := json.Unmarshal(raw, &b); err != nil {
		return nil, apperr.Internal(err, "decoding tokens")
	}
	t := &oauthclient.Tokens{AccessToken: secret.New(b.Access), RefreshToken: secret.New(b.Refresh), TokenType: b.Type, Scopes: ParseList(cred.Scopes)}
	if cred.ExpiresAt != nil {
		t.ExpiresAt = *cred.ExpiresAt
	}
	return &Held{Tokens: t, Grant: b.Grant, IssuedAt: b.IssuedAt}, nil
}

// registrationBlob is the encrypted part of a stored client registration.
type registrationBlob struct {
	Secret     string    `json:"s,omitempty"`
	AuthMethod string    `json:"m,omitempty"`
	ExpiresAt  time.Time `json:"x,omitzero"`
}

// RegistrationScope is the encryption scope of a client registration.
func RegistrationScope(tenant, providerID, issuer string) keyring.Scope {
	return keyring.Scope{Tenant: tenant, Provider: providerID, Field: FieldRegistration + "\x00" + issuer}
}

// SealRegistration encrypts the secret part of a client registration.
func SealRegistration(c Cipher, tenant, providerID, issuer string, r *oauthclient.Registration) ([]byte, error) {
	raw, err := json.Marshal(registrationBlob{Secret: r.ClientSecret.Reveal(), AuthMethod: r.AuthMethod, ExpiresAt: r.ExpiresAt})
	if err != nil {
		return nil, apperr.Internal(err, "encoding registration")
	}
	ct, err := c.Seal(RegistrationScope(tenant, providerID, issuer), raw)
	if err != nil {
		return nil, apperr.Internal(err, "sealing registration")
	}
	return ct, nil
}

// OpenRegistration decrypts a stored client registration.
func OpenRegistration(c Cipher, row *repository.ClientRegistration) (*oauthclient.Registration, error) {
	reg := &oauthclient.Registration{Method: row.Method, ClientID: row.ClientID, RedirectURI: row.RedirectURI}
	if len(row.Secret) == 0 {
		return reg, nil
	}
	raw, err := c.Open(RegistrationScope(row.TenantID, row.ProviderID, row.Issuer), row.Secret)
	if err != nil {
		return nil, apperr.Internal(err, "opening registration")
	}
	var b registrationBlob
	if err := json.Unmarshal(raw, &b); err != nil {
		return nil, apperr.Internal(err, "decoding registration")
	}
	reg.ClientSecret, reg.AuthMethod, reg.ExpiresAt = secret.New(b.Secret), b.AuthMethod, b.ExpiresAt
	return reg, nil
}

// JSONList is the stored form of a string list.
func JSONList(l []string) string {
	if len(l) == 0 {
		return "[]"
	}
	b, _ := json.Marshal(l)
	return string(b)
}

// ParseList reads a stored string list.
func ParseList(s string) []string {
	var l []string
	_ = json.Unmarshal([]byte(s), &l)
	return l
}

// JSONCompat is the stored form of a compatibility profile.
func JSONCompat(c domain.Compat) string {
	b, _ := json.Marshal(c)
	return string(b)
}

// ParseCompat reads a stored compatibility profile.
func ParseCompat(s string) domain.Compat {
	var c domain.Compat
	if s != "" {
		_ = json.Unmarshal([]byte(s), &c)
	}
	return c
}

// ExpiresPtr is the stored form of an expiry: nil when unknown.
func ExpiresPtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}
