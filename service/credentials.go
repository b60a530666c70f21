package service

import (
	"context"
	"encoding/json"
	"net/url"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/validate"
)

// CredentialStore persists tokens and client registrations.
// *repository.Store implements it.
type CredentialStore interface {
	GetProvider(ctx context.Context, tenant, id string) (*repository.Provider, error)
	SetAuthStatus(ctx context.Context, tenant, providerID string, status int32) error
	GetCredential(ctx context.Context, tenant, providerID string) (*repository.Credential, error)
	PutCredential(ctx context.Context, c *repository.Credential, expectedGeneration int64) (int64, error)
	DeleteCredential(ctx context.Context, tenant, providerID string, expectedGeneration int64) error
	GetClientRegistration(ctx context.Context, tenant, providerID, issuer string) (*repository.ClientRegistration, error)
	PutClientRegistration(ctx context.Context, r *repository.ClientRegistration) error
	DeleteClientRegistration(ctx context.Context, tenant, providerID, issuer string) error
}

var _ CredentialStore = (*repository.Store)(nil)

// providerGetter reads one provider row. Every store of this package has it.
type providerGetter interface {
	GetProvider(ctx context.Context, tenant, id string) (*repository.Provider, error)
}

// providerByName parses a provider resource name (request field "name") and
// reads the row: the preamble of every per-provider call.
func providerByName(ctx context.Context, st providerGetter, name string) (*repository.Provider, error) {
	tenant, id, err := resname.ParseProvider("name", name)
	if err != nil {
		return nil, err
	}
	return st.GetProvider(ctx, tenant, id)
}

// providerData is a provider with its secrets opened, for the services that
// talk to its servers.
type providerData struct {
	row          *repository.Provider
	url          *url.URL
	resource     string // canonical MCP server URI
	headers      map[string]string
	clientSecret secret.Secret
	scopes       []string
	compat       compat
}

// openProvider decrypts what the OAuth, token and tool services need.
func openProvider(c Cipher, row *repository.Provider) (*providerData, error) {
	scope := func(f string) keyring.Scope { return keyring.Scope{Tenant: row.TenantID, Provider: row.ID, Field: f} }
	pt, err := c.Open(scope(fieldServerURL), row.ServerURL)
	if err != nil {
		return nil, apperr.Internal(err, "opening server url")
	}
	u, err := url.Parse(string(pt))
	if err != nil {
		return nil, apperr.Internal(err, "parsing stored server url")
	}
	d := &providerData{row: row, url: u, resource: validate.CanonicalResource(u), scopes: parseList(row.Scopes), compat: parseCompat(row.Compat)}
	if len(row.Headers) > 0 {
		raw, err := c.Open(scope(fieldHeaders), row.Headers)
		if err != nil {
			return nil, apperr.Internal(err, "opening headers")
		}
		if err := json.Unmarshal(raw, &d.headers); err != nil {
			return nil, apperr.Internal(err, "decoding headers")
		}
	}
	if len(row.ClientSecret) > 0 {
		raw, err := c.Open(scope(fieldClientSecret), row.ClientSecret)
		if err != nil {
			return nil, apperr.Internal(err, "opening client secret")
		}
		d.clientSecret = secret.New(string(raw))
	}
	return d, nil
}

// resourceParam is the RFC 8707 resource value to send, after the
// provider's compatibility profile.
func (d *providerData) resourceParam() string {
	switch d.compat.ResourceMode {
	case 2: // OMIT
		return ""
	case 3: // OVERRIDE
		return d.compat.ResourceOverride
	default:
		return d.resource
	}
}

// grantInfo is what refreshing and revoking a token set needs besides the
// tokens and the client secret: it is sealed together with the tokens, so a
// token can only ever be sent back to the server that issued it.
type grantInfo struct {
	Issuer             string `json:"i"`
	TokenEndpoint      string `json:"te"`
	RevocationEndpoint string `json:"re,omitempty"`
	RegMethod          string `json:"rm"`
	ClientID           string `json:"c"`
	AuthMethod         string `json:"am,omitempty"`
	Resource           string `json:"rs,omitempty"`
	// Server is the provider's normalised server URL when the tokens were
	// granted (sealed with them): tokens are only ever sent to that server.
	Server string `json:"sv,omitempty"`
}

// tokenBlob is the encrypted form of a token set.
type tokenBlob struct {
	Access   string    `json:"a"`
	Refresh  string    `json:"r,omitempty"`
	Type     string    `json:"t,omitempty"`
	IssuedAt time.Time `json:"at"`
	Grant    grantInfo `json:"g"`
}

func sealTokens(c Cipher, tenant, providerID string, t *oauthclient.Tokens, g grantInfo, issuedAt time.Time) ([]byte, error) {
	raw, err := json.Marshal(tokenBlob{Access: t.AccessToken.Reveal(), Refresh: t.RefreshToken.Reveal(), Type: t.TokenType, IssuedAt: issuedAt, Grant: g})
	if err != nil {
		return nil, apperr.Internal(err, "encoding tokens")
	}
	ct, err := c.Seal(keyring.Scope{Tenant: tenant, Provider: providerID, Field: fieldTokens}, raw)
	if err != nil {
		return nil, apperr.Internal(err, "sealing tokens")
	}
	return ct, nil
}

// heldTokens is an opened credential.
type heldTokens struct {
	tokens   *oauthclient.Tokens
	grant    grantInfo
	issuedAt time.Time
}

func openTokens(c Cipher, cred *repository.Credential) (*heldTokens, error) {
	if len(cred.Tokens) == 0 {
		return nil, apperr.FailedPrecondition("REAUTH_REQUIRED", "the provider holds no tokens: authorize it again")
	}
	raw, err := c.Open(keyring.Scope{Tenant: cred.TenantID, Provider: cred.ProviderID, Field: fieldTokens}, cred.Tokens)
	if err != nil {
		return nil, apperr.Internal(err, "opening tokens")
	}
	var b tokenBlob
	if err := json.Unmarshal(raw, &b); err != nil {
		return nil, apperr.Internal(err, "decoding tokens")
	}
	t := &oauthclient.Tokens{AccessToken: secret.New(b.Access), RefreshToken: secret.New(b.Refresh), TokenType: b.Type, Scopes: parseList(cred.Scopes)}
	if cred.ExpiresAt != nil {
		t.ExpiresAt = *cred.ExpiresAt
	}
	return &heldTokens{tokens: t, grant: b.Grant, issuedAt: b.IssuedAt}, nil
}

// registrationBlob is the encrypted part of a stored client registration.
type registrationBlob struct {
	Secret     string    `json:"s,omitempty"`
	AuthMethod string    `json:"m,omitempty"`
	ExpiresAt  time.Time `json:"x,omitzero"`
}

func sealRegistration(c Cipher, tenant, providerID, issuer string, r *oauthclient.Registration) ([]byte, error) {
	raw, err := json.Marshal(registrationBlob{Secret: r.ClientSecret.Reveal(), AuthMethod: r.AuthMethod, ExpiresAt: r.ExpiresAt})
	if err != nil {
		return nil, apperr.Internal(err, "encoding registration")
	}
	ct, err := c.Seal(keyring.Scope{Tenant: tenant, Provider: providerID, Field: fieldRegistration + "\x00" + issuer}, raw)
	if err != nil {
		return nil, apperr.Internal(err, "sealing registration")
	}
	return ct, nil
}

func openRegistration(c Cipher, row *repository.ClientRegistration) (*oauthclient.Registration, error) {
	reg := &oauthclient.Registration{Method: row.Method, ClientID: row.ClientID, RedirectURI: row.RedirectURI}
	if len(row.Secret) == 0 {
		return reg, nil
	}
	raw, err := c.Open(keyring.Scope{Tenant: row.TenantID, Provider: row.ProviderID, Field: fieldRegistration + "\x00" + row.Issuer}, row.Secret)
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
