package oauthclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/mcpauth/mcpauth/secret"
)

// Identifiers of the token exchange that turns an ID token into an identity
// assertion JWT authorization grant (RFC 8693 section 3; the ID-JAG draft,
// draft-ietf-oauth-identity-assertion-authz-grant, section 4.3).
const (
	// GrantTokenExchange is RFC 8693 section 2.1's grant type.
	GrantTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	// TokenTypeIDToken is RFC 8693 section 3's type of an OpenID Connect
	// ID token.
	TokenTypeIDToken = "urn:ietf:params:oauth:token-type:id_token"
	// TokenTypeIDJAG is the ID-JAG draft's token type of an identity
	// assertion JWT authorization grant.
	TokenTypeIDJAG = "urn:ietf:params:oauth:token-type:id-jag"
)

// IDJAG is an identity assertion JWT authorization grant issued by an
// identity provider. It is a bearer credential: present it once, with
// JWTBearer, and drop it.
type IDJAG struct {
	// Assertion is the JWT.
	Assertion secret.Secret
	// Scopes are the scopes the identity provider granted (the requested
	// ones when its answer names none, RFC 8693 section 2.2.1).
	Scopes []string
	// ExpiresAt is when the grant expires; zero when not said.
	ExpiresAt time.Time
}

// IdentityProviderMetadata reads an identity provider's RFC 8414 metadata
// from the well-known locations of issuer (in the order
// AuthServerMetadataURLs gives) and checks that it names issuer. The
// document is cached like the authorization servers' ones.
func (c *Client) IdentityProviderMetadata(ctx context.Context, issuer string, tr *Trace) (*Metadata, error) {
	asm, _, err := c.findMeta(ctx, issuer, tr, validateIdPMeta)
	if err != nil {
		return nil, fmt.Errorf("identity provider: %w", err)
	}
	return metadataFrom(asm), nil
}

// validateIdPMeta checks an identity provider's metadata: the issuer
// (RFC 8414 section 3.3) and the token endpoint. An authorization endpoint
// is not needed for a token exchange (RFC 8414 section 2 lets a server
// without browser grants omit it).
func validateIdPMeta(asm *authServerMeta, issuer string) error {
	if !SameIssuer(asm.Issuer, issuer) {
		return ErrIssuerMismatch
	}
	if asm.TokenEndpoint == "" {
		return errors.New("missing token endpoint")
	}
	return checkEndpoint("token_endpoint", asm.TokenEndpoint)
}

// exchangeResponse is RFC 8693 section 2.2.1's answer.
type exchangeResponse struct {
	AccessToken     string    `json:"access_token"`
	IssuedTokenType string    `json:"issued_token_type"`
	TokenType       string    `json:"token_type"`
	ExpiresIn       expiresIn `json:"expires_in"`
	Scope           string    `json:"scope"`
}

// ExchangeIDToken asks an identity provider for an ID-JAG with an RFC 8693
// token exchange (the ID-JAG draft, section 4.3): grant_type
// token-exchange, requested_token_type id-jag, subject_token the user's ID
// token with subject_token_type id_token, audience the authorization
// server's issuer, resource the MCP server (when not empty) and scope (when
// not empty), authenticating as reg (client_secret_basic unless the
// provider advertises only client_secret_post). idp needs TokenEndpoint
// and, for the choice of authentication, TokenEndpointAuthMethods.
//
// Nothing is retried here. An error answer (RFC 8693 section 2.2.2, RFC
// 6749 section 5.2) is an *OAuthError carrying the code exactly; 429, 5xx
// and network failures are *TemporaryError. An answer whose
// issued_token_type is not the ID-JAG type is an error: it is no grant to
// present.
func (c *Client) ExchangeIDToken(ctx context.Context, idp *Metadata, reg *Registration, idToken secret.Secret, audience, resource string, scopes []string) (*IDJAG, error) {
	const op = "token exchange"
	switch {
	case idToken.IsZero():
		return nil, fmt.Errorf("%s: no ID token", op)
	case audience == "":
		return nil, fmt.Errorf("%s: no audience", op)
	case idp == nil || idp.TokenEndpoint == "":
		return nil, fmt.Errorf("%s: no token endpoint", op)
	}
	if err := checkEndpoint("token endpoint", idp.TokenEndpoint); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	form := url.Values{
		"grant_type":           {GrantTokenExchange},
		"requested_token_type": {TokenTypeIDJAG},
		"subject_token":        {idToken.Reveal()},
		"subject_token_type":   {TokenTypeIDToken},
		"audience":             {audience},
	}
	if resource != "" {
		form.Set("resource", resource)
	}
	if s := splitScopeList(scopes); len(s) > 0 {
		form.Set("scope", strings.Join(s, " "))
	}
	status, h, body, err := c.postForm(ctx, op, idp.TokenEndpoint, idp, reg, form)
	if err != nil {
		return nil, err
	}
	return c.readExchange(op, status, h, body, scopes)
}

// readExchange reads a token exchange answer.
func (c *Client) readExchange(op string, status int, h http.Header, body []byte, scopes []string) (*IDJAG, error) {
	if status < 200 || status > 299 {
		tr, _ := parseTokenResponse(h.Get("Content-Type"), body)
		return nil, c.grantFailure(op, status, h, tr.Error)
	}
	if mt, _, _ := mime.ParseMediaType(h.Get("Content-Type")); mt != "application/json" {
		return nil, fmt.Errorf("%s: response is not json", op)
	}
	var er struct {
		exchangeResponse
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &er); err != nil {
		return nil, fmt.Errorf("%s: invalid json response", op)
	}
	if er.Error != "" {
		return nil, c.grantFailure(op, status, h, er.Error)
	}
	if er.AccessToken == "" {
		return nil, fmt.Errorf("%s: response has no access_token", op)
	}
	if er.IssuedTokenType != TokenTypeIDJAG {
		// RFC 8693 section 2.2.1 makes issued_token_type required; anything
		// else is not the grant asked for.
		return nil, fmt.Errorf("%s: issued_token_type %q is not the identity assertion grant type", op, sanitizeCode(er.IssuedTokenType))
	}
	out := &IDJAG{Assertion: secret.New(er.AccessToken), Scopes: splitScope(er.Scope)}
	if len(out.Scopes) == 0 {
		out.Scopes = splitScopeList(scopes)
	}
	if er.ExpiresIn > 0 {
		out.ExpiresAt = c.now().Add(time.Duration(er.ExpiresIn) * time.Second)
	}
	return out, nil
}
