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
	"github.com/mcpauth/mcpauth/dpop"
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
	// DPoP, when set, sender-constrains the tokens (RFC 9449): every token
	// request carries a proof signed with it, and only a DPoP token_type
	// is accepted in the answer.
	DPoP *dpop.Key
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
	want, err := RegistrationAuthMethod(md.TokenEndpointAuthMethods)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
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

// ErrNoUsableAuthMethod is returned when the authorization server
// advertises (token_endpoint_auth_methods_supported) no token endpoint
// authentication method this client can use.
var ErrNoUsableAuthMethod = errors.New("the authorization server advertises no token endpoint authentication method mcpauth can use with this client")

// supportsAuth reports whether method is usable at a server advertising
// the given token_endpoint_auth_methods_supported. An empty list means the
// RFC 8414 default, client_secret_basic; "none" is accepted too, because a
// public client cannot authenticate at all and servers that publish no
// metadata (2025-03-26 default endpoints) or omit the list do register
// public clients.
func supportsAuth(advertised []string, method string) bool {
	if len(advertised) == 0 {
		return method == AuthClientSecretBasic || method == AuthNone
	}
	return contains(advertised, method)
}

// The token endpoint authentication methods a client holding a secret can
// use, in order of preference. This and ChooseAuthMethod are the one place
// where methods are chosen: a new method (private_key_jwt for a client
// holding a key) is added to the list here and to the switch of
// ChooseAuthMethod, and is then used by registration, code exchange,
// refresh and revocation alike.
var secretMethods = []string{AuthClientSecretBasic, AuthClientSecretPost}

// RegistrationAuthMethod returns the token_endpoint_auth_method to ask for
// in a dynamic registration at a server advertising the given methods:
// client_secret_basic, else client_secret_post (mcpauth is a server-side
// broker that can keep a secret, and a confidential client's refresh
// tokens are bound to its credentials, OAuth 2.1 section 4.3.1), else
// none. When the server advertises none of them (only private_key_jwt,
// say) it is ErrNoUsableAuthMethod, before any request is made.
func RegistrationAuthMethod(advertised []string) (string, error) {
	for _, m := range secretMethods {
		if supportsAuth(advertised, m) {
			return m, nil
		}
	}
	if supportsAuth(advertised, AuthNone) {
		return AuthNone, nil
	}
	return "", ErrNoUsableAuthMethod
}

// ChooseAuthMethod returns the token endpoint authentication method to use
// for reg at a server advertising the given
// token_endpoint_auth_methods_supported (see supportsAuth for an empty
// list). A method recorded in reg (the registration response, or the
// operator's choice for the provider) wins. Otherwise a client holding a
// secret uses the first advertised of secretMethods, and a client without
// one (a public client, or one identified by a Client ID Metadata
// Document) uses "none" when the server accepts it. Anything else is
// ErrNoUsableAuthMethod: the server would reject the client at the token
// endpoint, after the person consented. A client holding a key
// (ClientKey) uses private_key_jwt unless the server advertises a list
// without it.
func ChooseAuthMethod(reg *Registration, advertised []string) (string, error) {
	if reg == nil {
		return "", errors.New("no registration")
	}
	if reg.ClientKey != nil {
		if len(advertised) > 0 && !contains(advertised, AuthPrivateKeyJWT) {
			return "", ErrNoUsableAuthMethod
		}
		return AuthPrivateKeyJWT, nil
	}
	switch reg.AuthMethod {
	case AuthNone:
		return AuthNone, nil
	case AuthClientSecretBasic, AuthClientSecretPost:
		if reg.Method != domain.RegCIMD && !reg.ClientSecret.IsZero() {
			return reg.AuthMethod, nil
		}
	case "":
	default:
		return "", fmt.Errorf("unsupported client authentication method %q", sanitizeCode(reg.AuthMethod))
	}
	if reg.Method != domain.RegCIMD && !reg.ClientSecret.IsZero() {
		for _, m := range secretMethods {
			if supportsAuth(advertised, m) {
				return m, nil
			}
		}
		return "", ErrNoUsableAuthMethod
	}
	if supportsAuth(advertised, AuthNone) {
		return AuthNone, nil
	}
	return "", ErrNoUsableAuthMethod
}
