package oauthclient

import (
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// AuthRequest describes an authorization request (RFC 6749 section 4.1.1
// with PKCE, RFC 8707 resource and the MCP scope rules).
type AuthRequest struct {
	// Metadata is the discovered metadata; its AuthorizationEndpoint is
	// used and its PKCE support checked.
	Metadata *Metadata
	// ClientID is the registered client identifier.
	ClientID string
	// RedirectURI is the callback URL registered for the client.
	RedirectURI string
	// State is the value from NewState.
	State string
	// CodeChallenge is the S256 challenge from NewPKCE.
	CodeChallenge string
	// Scopes is the scope list from SelectScopes; empty omits "scope".
	Scopes []string
	// Resource is the canonical MCP server URI; "" omits "resource" (the
	// per-provider override for servers that reject it).
	Resource string
	// Extra holds additional parameters (for example "prompt"). A key that
	// would override a protocol parameter is an error.
	Extra map[string]string
	// PKCEException allows the request although the metadata does not
	// advertise S256. Set it only for a provider that carries an explicit,
	// audited compatibility exception; the request still uses S256.
	PKCEException bool
	// DPoPJKT, when set, is sent as dpop_jkt (RFC 9449 section 10): the
	// code is bound to the DPoP key the exchange will be proven with.
	DPoPJKT string
}

// reservedParams are the parameters Extra may not set (compared ignoring
// case): those the client chooses (RFC 6749 and RFC 7636: response_type,
// client_id, redirect_uri, state, scope, code_challenge,
// code_challenge_method, code_verifier; RFC 8707: resource; OpenID Connect:
// nonce, only worth something fresh per request; RFC 9449: dpop_jkt, which
// binds the code to a key the client does not hold), those that change how
// or where the response is delivered (response_mode of OAuth 2.0 Multiple
// Response Types and JARM: form_post, fragment, jwt...; RFC 9101 request and
// request_uri, whose request object overrides every other parameter), and
// credentials that never belong in a browser URL (client_secret,
// client_assertion, client_assertion_type).
var reservedParams = map[string]bool{
	"response_type": true, "client_id": true, "redirect_uri": true, "state": true,
	"code_challenge": true, "code_challenge_method": true, "resource": true, "scope": true,
	"response_mode": true, "request": true, "request_uri": true, "nonce": true, "dpop_jkt": true,
	"code_verifier": true, "client_secret": true, "client_assertion": true, "client_assertion_type": true,
}

// ReservedParameter reports whether name (in any letter case) is a
// parameter an authorization request's extra parameters may not set.
func ReservedParameter(name string) bool { return reservedParams[strings.ToLower(name)] }

// AuthorizationURL builds the URL the browser is sent to:
// response_type=code, client_id, redirect_uri, state, code_challenge with
// code_challenge_method=S256, resource and scope when set, and the extra
// parameters. Query parameters already in the authorization endpoint are
// kept unless they collide with a protocol parameter. It returns ErrNoPKCE
// when the server does not advertise S256 and no exception is set, and
// ErrReservedParameter when Extra collides with a protocol parameter.
func AuthorizationURL(r AuthRequest) (string, error) {
	if r.Metadata == nil || r.Metadata.AuthorizationEndpoint == "" {
		return "", errors.New("authorization url: no authorization endpoint")
	}
	if !r.Metadata.SupportsS256() && !r.PKCEException {
		return "", fmt.Errorf("authorization url: %w", ErrNoPKCE)
	}
	switch {
	case r.ClientID == "":
		return "", errors.New("authorization url: client id is empty")
	case r.RedirectURI == "":
		return "", errors.New("authorization url: redirect uri is empty")
	case len(r.State) < 43:
		return "", errors.New("authorization url: state is shorter than 256 bits")
	case len(r.CodeChallenge) != 43:
		return "", errors.New("authorization url: code challenge is not an S256 challenge")
	}
	if err := checkEndpoint("authorization endpoint", r.Metadata.AuthorizationEndpoint); err != nil {
		return "", fmt.Errorf("authorization url: %w", err)
	}
	keys := make([]string, 0, len(r.Extra))
	for k := range r.Extra {
		if k == "" {
			return "", errors.New("authorization url: empty extra parameter name")
		}
		if ReservedParameter(k) {
			return "", fmt.Errorf("authorization url: %q: %w", k, ErrReservedParameter)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)

	u, err := url.Parse(r.Metadata.AuthorizationEndpoint)
	if err != nil {
		return "", errors.New("authorization url: invalid authorization endpoint")
	}
	q := u.Query()
	for k := range q {
		if ReservedParameter(k) {
			q.Del(k)
		}
	}
	for _, k := range keys {
		q.Set(k, r.Extra[k])
	}
	q.Set("response_type", "code")
	q.Set("client_id", r.ClientID)
	q.Set("redirect_uri", r.RedirectURI)
	q.Set("state", r.State)
	q.Set("code_challenge", r.CodeChallenge)
	q.Set("code_challenge_method", "S256")
	if r.Resource != "" {
		q.Set("resource", r.Resource)
	}
	if scopes := splitScopeList(r.Scopes); len(scopes) > 0 {
		q.Set("scope", strings.Join(scopes, " "))
	}
	if r.DPoPJKT != "" {
		q.Set("dpop_jkt", r.DPoPJKT)
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// CheckIssuer applies RFC 9207 to an authorization response, before the
// code is used. issuer and supported come from the validated metadata
// recorded when the flow started (Metadata.Issuer and
// Metadata.IssParameterSupported); iss and present describe the response's
// "iss" parameter. The rules: supported and present, compare exactly;
// supported and absent, reject; not supported but present, compare;
// neither, proceed. A failed check returns ErrIssuerMismatch.
func CheckIssuer(issuer string, supported bool, iss string, present bool) error {
	switch {
	case present:
		if issuer == "" || iss != issuer {
			return ErrIssuerMismatch
		}
		return nil
	case supported:
		return fmt.Errorf("%w: iss parameter missing", ErrIssuerMismatch)
	default:
		return nil
	}
}
