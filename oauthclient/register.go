package oauthclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/oauthex"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/secret"
)

// Token endpoint client authentication methods this package implements.
const (
	// AuthClientSecretBasic sends the client credentials in HTTP Basic.
	AuthClientSecretBasic = "client_secret_basic"
	// AuthClientSecretPost sends the client credentials in the form body.
	AuthClientSecretPost = "client_secret_post"
	// AuthNone is a public client: client_id in the body, no secret.
	AuthNone = "none"
)

// Registration is a client identity at one authorization server.
type Registration struct {
	// Method is how the client was obtained.
	Method domain.RegistrationMethod
	// ClientID is the client identifier (for a Client ID Metadata
	// Document, the document's https URL).
	ClientID string
	// ClientSecret is the client secret, zero for public clients.
	ClientSecret secret.Secret
	// AuthMethod is the token endpoint authentication method: one of the
	// Auth constants.
	AuthMethod string
	// RedirectURI is the registered redirect URI.
	RedirectURI string
	// ExpiresAt is when the client secret expires; zero means never.
	ExpiresAt time.Time
	// ClientKey, when set, authenticates the client with private_key_jwt
	// (RFC 7523 section 2.2) instead of a secret.
	ClientKey *ClientKey
}

// RegisterDynamic registers a client with RFC 7591 dynamic client
// registration: client_name, redirect_uris, grant_types
// [authorization_code, refresh_token], response_types [code],
// application_type "web", scope when non-empty, and a
// token_endpoint_auth_method.
//
// The requested method is client_secret_basic when the server supports it
// (an absent list means it does, per RFC 8414), else client_secret_post,
// else none. mcpauth is a server-side broker that can keep a secret, and a
// confidential client's refresh tokens are bound to its credentials (OAuth
// 2.1 section 4.3.1), so a stolen refresh token alone is useless. The
// method and secret the server actually returns are the ones recorded.
//
// The SDK's oauthex.RegisterClient is not used because its errors include
// the upstream response body and error_description; its request and
// response types are.
func (c *Client) RegisterDynamic(ctx context.Context, md *Metadata, clientName, redirectURI string, scopes []string) (*Registration, error) {
	const op = "registration"
	if md == nil || md.RegistrationEndpoint == "" {
		return nil, fmt.Errorf("%s: %w", op, ErrNoRegistrationEndpoint)
	}
	if err := checkEndpoint("registration endpoint", md.RegistrationEndpoint); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if err := checkEndpoint("redirect uri", redirectURI); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if clientName == "" {
		return nil, errors.New("registration: client name is empty")
	}
	want := AuthNone
	switch {
	case supportsAuth(md.TokenEndpointAuthMethods, AuthClientSecretBasic):
		want = AuthClientSecretBasic
	case supportsAuth(md.TokenEndpointAuthMethods, AuthClientSecretPost):
		want = AuthClientSecretPost
	}
	meta := oauthex.ClientRegistrationMetadata{
		ClientName:              clientName,
		RedirectURIs:            []string{redirectURI},
		GrantTypes:              []string{"authorization_code", "refresh_token"},
		ResponseTypes:           []string{"code"},
		TokenEndpointAuthMethod: want,
		ApplicationType:         "web",
		Scope:                   strings.Join(splitScopeList(scopes), " "),
	}
	body, err := json.Marshal(&meta)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, md.RegistrationEndpoint, bytes.NewReader(body))
	if err != nil {
		return nil, errors.New("registration: cannot build request")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	res, err := c.http.Do(req)
	if err != nil {
		return nil, netError(op, err)
	}
	defer res.Body.Close()
	now := c.now()
	if res.StatusCode == http.StatusTooManyRequests || res.StatusCode >= 500 {
		return nil, &TemporaryError{Op: op, Status: res.StatusCode, RetryAfter: retryAfter(res.Header.Get("Retry-After"), now)}
	}
	raw, err := readCapped(res.Body, maxTokenBytes)
	if errors.Is(err, ErrResponseTooLarge) {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if err != nil {
		return nil, netError(op, err)
	}
	if res.StatusCode != http.StatusCreated && res.StatusCode != http.StatusOK {
		var e oauthex.ClientRegistrationError
		if json.Unmarshal(raw, &e) == nil && e.ErrorCode != "" {
			return nil, &OAuthError{Op: op, Status: res.StatusCode, Code: sanitizeCode(e.ErrorCode)}
		}
		return nil, &StatusError{Op: op, Status: res.StatusCode}
	}
	var out oauthex.ClientRegistrationResponse
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, errors.New("registration: invalid json response")
	}
	if out.ClientID == "" {
		return nil, errors.New("registration: response has no client_id")
	}
	reg := &Registration{
		Method:       domain.RegDynamic,
		ClientID:     out.ClientID,
		ClientSecret: secret.New(out.ClientSecret),
		RedirectURI:  redirectURI,
		ExpiresAt:    out.ClientSecretExpiresAt,
	}
	got := out.TokenEndpointAuthMethod
	if got == "" {
		got = want
	}
	switch {
	case out.ClientSecret == "":
		// Whatever the server says, without a secret the client is public.
		reg.AuthMethod = AuthNone
	case got == AuthClientSecretBasic || got == AuthClientSecretPost:
		reg.AuthMethod = got
	case got == AuthNone:
		// A secret was issued but the method is "none": do not send it.
		reg.AuthMethod = AuthNone
		reg.ClientSecret = secret.Secret{}
	default:
		return nil, fmt.Errorf("registration: unsupported token_endpoint_auth_method %q", sanitizeCode(got))
	}
	return reg, nil
}

// supportsAuth reports whether method is in the advertised list, where an
// empty list means the RFC 8414 default, client_secret_basic.
func supportsAuth(advertised []string, method string) bool {
	if len(advertised) == 0 {
		return method == AuthClientSecretBasic
	}
	return contains(advertised, method)
}

// ChooseAuthMethod returns the token endpoint authentication method to
// use for reg at a server advertising the given
// token_endpoint_auth_methods_supported (empty means client_secret_basic,
// per RFC 8414). A client without a secret, or one identified by a Client
// ID Metadata Document, uses "none". A method recorded in reg (the
// registration response, or the operator's choice for a pre-registered
// client) wins when it is basic or post. Otherwise basic is preferred over
// post. A secret-holding client at a server that supports neither is an
// error. A client holding a key (ClientKey) uses private_key_jwt.
func ChooseAuthMethod(reg *Registration, advertised []string) (string, error) {
	if reg == nil {
		return "", errors.New("no registration")
	}
	if reg.ClientKey != nil {
		return AuthPrivateKeyJWT, nil
	}
	if reg.Method == domain.RegCIMD || reg.ClientSecret.IsZero() || reg.AuthMethod == AuthNone {
		return AuthNone, nil
	}
	switch reg.AuthMethod {
	case AuthClientSecretBasic, AuthClientSecretPost:
		return reg.AuthMethod, nil
	case "":
	default:
		return "", fmt.Errorf("unsupported client authentication method %q", sanitizeCode(reg.AuthMethod))
	}
	switch {
	case supportsAuth(advertised, AuthClientSecretBasic):
		return AuthClientSecretBasic, nil
	case supportsAuth(advertised, AuthClientSecretPost):
		return AuthClientSecretPost, nil
	}
	return "", errors.New("server supports no client secret authentication method")
}
