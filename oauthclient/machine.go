package oauthclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/mcpauth/mcpauth/dpop"
	"github.com/mcpauth/mcpauth/secret"
)

// setClientAssertion adds private_key_jwt client authentication to form:
// client_id, client_assertion_type and a fresh assertion whose audience is
// the authorization server's issuer (RFC 7523 section 3).
func (c *Client) setClientAssertion(form url.Values, md *Metadata, reg *Registration) error {
	if md == nil || md.Issuer == "" {
		return errors.New("client assertion: the authorization server's issuer is unknown")
	}
	a, err := reg.ClientKey.Assertion(reg.ClientID, md.Issuer, c.now())
	if err != nil {
		return err
	}
	form.Set("client_id", reg.ClientID)
	form.Set("client_assertion_type", ClientAssertionType)
	form.Set("client_assertion", a)
	return nil
}

// ClientCredentials asks the token endpoint for a token with the
// client_credentials grant (OAuth 2.1 section 4.2), authenticating with
// reg's secret (basic or post) or key (private_key_jwt): grant_type,
// scope when scopes is not empty, resource when not empty. Nothing is
// retried here. An OAuth error answer is an *OAuthError carrying the
// error code exactly (sanitised); 429, 5xx and network failures are
// *TemporaryError.
func (c *Client) ClientCredentials(ctx context.Context, md *Metadata, reg *Registration, scopes []string, resource string) (*Tokens, error) {
	const op = "client credentials"
	if reg == nil || reg.ClientID == "" {
		return nil, fmt.Errorf("%s: no client id", op)
	}
	if reg.ClientSecret.IsZero() && reg.ClientKey == nil {
		return nil, fmt.Errorf("%s: the client has neither a secret nor a key", op)
	}
	return c.grant(ctx, op, md, reg, url.Values{"grant_type": {GrantClientCredentials}}, scopes, resource)
}

// JWTBearer presents assertion with the JWT bearer grant (RFC 7523
// section 2.1): grant_type, assertion, scope and resource as for
// ClientCredentials. reg may be nil (RFC 7523 section 3.1 makes client
// authentication optional); a client without secret or key sends only its
// client_id. Errors are as for ClientCredentials: invalid_grant,
// invalid_scope and unauthorized_client come back as they are.
func (c *Client) JWTBearer(ctx context.Context, md *Metadata, reg *Registration, assertion secret.Secret, scopes []string, resource string) (*Tokens, error) {
	const op = "jwt bearer grant"
	if assertion.IsZero() {
		return nil, fmt.Errorf("%s: no assertion", op)
	}
	form := url.Values{"grant_type": {GrantJWTBearer}, "assertion": {assertion.Reveal()}}
	return c.grant(ctx, op, md, reg, form, scopes, resource)
}

// grant sends a token request for a grant that needs no user and reads
// the answer. A refresh token in the answer is kept (some servers issue
// one with the JWT bearer grant).
func (c *Client) grant(ctx context.Context, op string, md *Metadata, reg *Registration, form url.Values, scopes []string, resource string) (*Tokens, error) {
	if md == nil || md.TokenEndpoint == "" {
		return nil, fmt.Errorf("%s: no token endpoint", op)
	}
	if err := checkEndpoint("token endpoint", md.TokenEndpoint); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if s := splitScopeList(scopes); len(s) > 0 {
		form.Set("scope", strings.Join(s, " "))
	}
	if resource != "" {
		form.Set("resource", resource)
	}
	var (
		status int
		h      http.Header
		body   []byte
		err    error
	)
	if reg == nil || reg.ClientID == "" {
		// No client authentication (RFC 7523 section 3.1 allows it); a
		// DPoP key still applies.
		status, h, body, err = c.send(ctx, op, md.TokenEndpoint, form, "", "", c.tokenHTTP(reg))
	} else {
		status, h, body, err = c.postForm(ctx, op, md.TokenEndpoint, md, reg, form)
	}
	if err != nil {
		return nil, err
	}
	var proof *dpop.Key
	if reg != nil {
		proof = reg.DPoP
	}
	t, err := c.readTokens(op, status, h, body, proof, c.grantFailure)
	if err != nil {
		return nil, err
	}
	if len(t.Scopes) == 0 {
		// RFC 6749 section 5.1: no scope in the answer means the one asked for.
		t.Scopes = splitScopeList(scopes)
	}
	return t, nil
}

// grantFailure maps a failed grant request: temporary failures as
// everywhere, every OAuth error code as it is (an *OAuthError), so a
// caller can tell invalid_grant from invalid_scope from
// unauthorized_client and never guesses.
func (c *Client) grantFailure(op string, status int, h http.Header, code string) error {
	if status == http.StatusTooManyRequests || status >= 500 || code == "temporarily_unavailable" {
		return &TemporaryError{Op: op, Status: status, RetryAfter: retryAfter(h.Get("Retry-After"), c.now())}
	}
	if code == "" && status == http.StatusUnauthorized {
		code = "invalid_client"
	}
	if code != "" {
		return &OAuthError{Op: op, Status: status, Code: sanitizeCode(code)}
	}
	return &StatusError{Op: op, Status: status}
}
