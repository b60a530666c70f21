package oauthclient

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/mcpauth/mcpauth/dpop"
	"github.com/mcpauth/mcpauth/secret"
)

// maxExpiresIn caps expires_in so absurd values cannot overflow time math.
const maxExpiresIn = 10 * 365 * 24 * time.Hour

// Tokens is the result of a code exchange or a refresh.
type Tokens struct {
	// AccessToken is the access token.
	AccessToken secret.Secret
	// RefreshToken is the refresh token: the new one when the server
	// rotated it, else the one the refresh was made with; zero when the
	// server issued none.
	RefreshToken secret.Secret
	// TokenType is "Bearer".
	TokenType string
	// ExpiresAt is the absolute expiry computed from expires_in with the
	// client's clock; zero means unknown.
	ExpiresAt time.Time
	// Scopes is the granted scope from the response. When the response
	// has none, Exchange reports the requested scopes (RFC 6749 section
	// 5.1) and Refresh reports nil, meaning the grant's scope is unchanged.
	Scopes []string
	// IDToken is the OpenID Connect ID token of a code exchange whose grant
	// included openid (OpenID Connect Core 1.0 section 3.1.3.3); zero when
	// the server sent none. It is checked (CheckIDToken), never stored.
	IDToken secret.Secret
}

// Exchange redeems an authorization code at the token endpoint with
// golang.org/x/oauth2: grant_type=authorization_code, the code,
// redirect_uri, code_verifier, resource when non-empty, and client
// authentication per ChooseAuthMethod. The request is made once and never
// retried (an authorization code is single use; x/oauth2's auth-style
// probing, which would re-send the code, is disabled by an explicit
// style). Errors map as for Refresh; callers must not retry the exchange
// even on a *TemporaryError.
func (c *Client) Exchange(ctx context.Context, md *Metadata, reg *Registration, code, verifier secret.Secret, redirectURI, resource string, requestedScopes []string) (*Tokens, error) {
	const op = "token exchange"
	if code.IsZero() || verifier.IsZero() {
		return nil, errors.New("token exchange: code or verifier is empty")
	}
	cfg, err := c.oauth2Config(md, reg, redirectURI)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	opts := []oauth2.AuthCodeOption{oauth2.VerifierOption(verifier.Reveal())}
	if resource != "" {
		opts = append(opts, oauth2.SetAuthURLParam("resource", resource))
	}
	if reg.ClientKey != nil {
		// private_key_jwt: x/oauth2 sends client_id in the body (no
		// secret); the assertion goes with it.
		form := url.Values{}
		if err := c.setClientAssertion(form, md, reg); err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		for k := range form {
			if k != "client_id" {
				opts = append(opts, oauth2.SetAuthURLParam(k, form.Get(k)))
			}
		}
	}
	ctx = context.WithValue(ctx, oauth2.HTTPClient, c.tokenHTTP(reg))
	tok, err := cfg.Exchange(ctx, code.Reveal(), opts...)
	if err != nil {
		return nil, c.mapOAuth2Error(op, err)
	}
	out := &Tokens{
		AccessToken:  secret.New(tok.AccessToken),
		RefreshToken: secret.New(tok.RefreshToken),
		Scopes:       splitScope(stringExtra(tok, "scope")),
		IDToken:      secret.New(stringExtra(tok, "id_token")),
	}
	if out.TokenType, err = tokenType(tok.TokenType, reg.DPoP != nil); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if err := checkBinding(tok.AccessToken, reg.DPoP); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	n := tok.ExpiresIn
	if n == 0 {
		// Form-encoded responses leave ExpiresIn unset.
		n, _ = strconv.ParseInt(stringExtra(tok, "expires_in"), 10, 64)
	}
	if n > 0 {
		out.ExpiresAt = c.now().Add(min(time.Duration(min(n, int64(maxExpiresIn/time.Second)))*time.Second, maxExpiresIn))
	}
	if len(out.Scopes) == 0 {
		out.Scopes = splitScopeList(requestedScopes)
	}
	return out, nil
}

func stringExtra(tok *oauth2.Token, key string) string {
	switch v := tok.Extra(key).(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return ""
}

func (c *Client) oauth2Config(md *Metadata, reg *Registration, redirectURI string) (*oauth2.Config, error) {
	if md == nil || md.TokenEndpoint == "" {
		return nil, errors.New("no token endpoint")
	}
	if err := checkEndpoint("token endpoint", md.TokenEndpoint); err != nil {
		return nil, err
	}
	if reg == nil || reg.ClientID == "" {
		return nil, errors.New("no client id")
	}
	method, err := ChooseAuthMethod(reg, md.TokenEndpointAuthMethods)
	if err != nil {
		return nil, err
	}
	cfg := &oauth2.Config{
		ClientID:    reg.ClientID,
		RedirectURL: redirectURI,
		Endpoint:    oauth2.Endpoint{AuthURL: md.AuthorizationEndpoint, TokenURL: md.TokenEndpoint},
	}
	switch method {
	case AuthClientSecretBasic:
		cfg.ClientSecret = reg.ClientSecret.Reveal()
		cfg.Endpoint.AuthStyle = oauth2.AuthStyleInHeader
	case AuthClientSecretPost:
		cfg.ClientSecret = reg.ClientSecret.Reveal()
		cfg.Endpoint.AuthStyle = oauth2.AuthStyleInParams
	default:
		// Public client: client_id in the body, no secret.
		cfg.Endpoint.AuthStyle = oauth2.AuthStyleInParams
	}
	return cfg, nil
}

// mapOAuth2Error turns an x/oauth2 error into this package's errors,
// dropping oauth2.RetrieveError, whose text carries the upstream body.
func (c *Client) mapOAuth2Error(op string, err error) error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		var ue *url.Error
		if errors.As(err, &ue) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return netError(op, err)
		}
		// A malformed success response; x/oauth2's text may quote it.
		return fmt.Errorf("%s: invalid token response", op)
	}
	status := 0
	var h http.Header
	if re.Response != nil {
		status, h = re.Response.StatusCode, re.Response.Header
	}
	return c.classify(op, status, h, re.ErrorCode)
}

// classify maps a token-endpoint failure to an error.
func (c *Client) classify(op string, status int, h http.Header, code string) error {
	switch code {
	case "invalid_grant":
		return fmt.Errorf("%s: %w", op, ErrInvalidGrant)
	case "invalid_client", "unauthorized_client":
		return fmt.Errorf("%s: %w", op, ErrInvalidClient)
	}
	if status == http.StatusTooManyRequests || status >= 500 || code == "temporarily_unavailable" {
		return &TemporaryError{Op: op, Status: status, RetryAfter: retryAfter(h.Get("Retry-After"), c.now())}
	}
	if code != "" {
		return &OAuthError{Op: op, Status: status, Code: sanitizeCode(code)}
	}
	if status == http.StatusUnauthorized {
		// 401 without a body is how many servers say invalid_client.
		return fmt.Errorf("%s: %w", op, ErrInvalidClient)
	}
	return &StatusError{Op: op, Status: status}
}

// tokenType checks a token response's token_type: Bearer (or none) for a
// plain request; DPoP, and nothing else, when a DPoP proof was sent (RFC
// 9449 section 5: a Bearer answer means the server did not bind the token,
// and mcpauth never falls back to a Bearer token the provider did not ask
// for).
func tokenType(t string, sentProof bool) (string, error) {
	if sentProof {
		if strings.EqualFold(t, dpop.Scheme) {
			return dpop.Scheme, nil
		}
		return "", ErrUnsupportedTokenType
	}
	if t == "" || strings.EqualFold(t, "bearer") {
		return "Bearer", nil
	}
	return "", ErrUnsupportedTokenType
}

// UnboundTokensError is a token endpoint's success answer to a DPoP-proven
// request whose tokens are not bound to the proof's key: token_type Bearer
// (RFC 9449 section 5: the server ignored the proof) or a cnf.jkt naming
// another key. Err is ErrUnsupportedTokenType or ErrWrongBinding. The
// tokens it carries were issued all the same: the access token must never
// be used with another scheme, and the refresh token (zero when none came)
// may be the only one the server still honours. Its message shows neither.
type UnboundTokensError struct {
	Op                        string
	Err                       error
	AccessToken, RefreshToken secret.Secret
}

func (e *UnboundTokensError) Error() string { return e.Op + ": " + e.Err.Error() }
func (e *UnboundTokensError) Unwrap() error { return e.Err }

// ErrWrongBinding reports a JWT access token whose cnf.jkt (RFC 9449
// section 6.1) names another key than the one the request was proven
// with.
var ErrWrongBinding = errors.New("access token is bound to another key")

// checkBinding compares the cnf.jkt of a JWT access token with the key
// the token request was proven with. Opaque tokens, and JWTs without the
// claim, pass: the client cannot see their binding (RFC 9449 section 6.2
// leaves it to introspection). The token's signature is the resource
// server's to check; this only catches a server binding the token to a
// key mcpauth does not hold.
func checkBinding(access string, key *dpop.Key) error {
	if key == nil {
		return nil
	}
	parts := strings.Split(access, ".")
	if len(parts) != 3 {
		return nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil
	}
	var claims struct {
		Cnf struct {
			JKT string `json:"jkt"`
		} `json:"cnf"`
	}
	if json.Unmarshal(raw, &claims) != nil || claims.Cnf.JKT == "" || claims.Cnf.JKT == key.Thumbprint() {
		return nil
	}
	return ErrWrongBinding
}

// tokenResponse is the JSON of RFC 6749 section 5.1 and 5.2.
type tokenResponse struct {
	AccessToken  string    `json:"access_token"`
	TokenType    string    `json:"token_type"`
	ExpiresIn    expiresIn `json:"expires_in"`
	RefreshToken string    `json:"refresh_token"`
	Scope        string    `json:"scope"`
	Error        string    `json:"error"`
}

// expiresIn accepts a JSON number or a numeric string (seen in the wild).
type expiresIn int64

func (e *expiresIn) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		*e = 0
		return nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return errors.New("invalid expires_in")
	}
	if f < 0 {
		f = 0
	}
	if f > float64(maxExpiresIn/time.Second) {
		f = float64(maxExpiresIn / time.Second)
	}
	*e = expiresIn(f)
	return nil
}

// parseTokenResponse reads a token endpoint body, JSON or (as some servers
// send) form-encoded.
func parseTokenResponse(contentType string, body []byte) (tokenResponse, error) {
	var tr tokenResponse
	mt, _, _ := mime.ParseMediaType(contentType)
	if mt == "application/x-www-form-urlencoded" || mt == "text/plain" {
		v, err := url.ParseQuery(string(body))
		if err != nil {
			return tr, errors.New("invalid form response")
		}
		tr.AccessToken, tr.TokenType = v.Get("access_token"), v.Get("token_type")
		tr.RefreshToken, tr.Scope, tr.Error = v.Get("refresh_token"), v.Get("scope"), v.Get("error")
		if s := v.Get("expires_in"); s != "" {
			if err := tr.ExpiresIn.UnmarshalJSON([]byte(s)); err != nil {
				return tr, err
			}
		}
		return tr, nil
	}
	if err := json.Unmarshal(body, &tr); err != nil {
		return tr, errors.New("invalid json response")
	}
	return tr, nil
}

// postForm sends a client-authenticated form POST to endpoint and returns
// the status, headers and capped body. Network failures are
// *TemporaryError.
func (c *Client) postForm(ctx context.Context, op, endpoint string, md *Metadata, reg *Registration, form url.Values) (int, http.Header, []byte, error) {
	if reg == nil || reg.ClientID == "" {
		return 0, nil, nil, fmt.Errorf("%s: no client id", op)
	}
	method, err := ChooseAuthMethod(reg, md.TokenEndpointAuthMethods)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("%s: %w", op, err)
	}
	basic := false
	switch method {
	case AuthClientSecretBasic:
		basic = true
	case AuthClientSecretPost:
		form.Set("client_id", reg.ClientID)
		form.Set("client_secret", reg.ClientSecret.Reveal())
	case AuthPrivateKeyJWT:
		if err := c.setClientAssertion(form, md, reg); err != nil {
			return 0, nil, nil, fmt.Errorf("%s: %w", op, err)
		}
	default:
		form.Set("client_id", reg.ClientID)
	}
	var user, pass string
	if basic {
		// RFC 6749 section 2.3.1: form-encode both parts first.
		user, pass = url.QueryEscape(reg.ClientID), url.QueryEscape(reg.ClientSecret.Reveal())
	}
	return c.send(ctx, op, endpoint, form, user, pass, c.tokenHTTP(reg))
}

// send POSTs form to endpoint with hc, with HTTP Basic when user is not
// empty, and returns the status, headers and capped body. Network
// failures are *TemporaryError.
func (c *Client) send(ctx context.Context, op, endpoint string, form url.Values, user, pass string, hc *http.Client) (int, http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return 0, nil, nil, fmt.Errorf("%s: cannot build request", op)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	res, err := hc.Do(req)
	if err != nil {
		return 0, nil, nil, netError(op, err)
	}
	defer res.Body.Close()
	body, err := readCapped(res.Body, maxTokenBytes)
	if errors.Is(err, ErrResponseTooLarge) {
		return res.StatusCode, res.Header, nil, fmt.Errorf("%s: %w", op, err)
	}
	if err != nil {
		return res.StatusCode, res.Header, nil, netError(op, err)
	}
	return res.StatusCode, res.Header, body, nil
}

// Refresh uses a refresh token (RFC 6749 section 6). It sends the request
// itself because x/oauth2's refresh cannot add "resource": grant_type,
// refresh_token, resource when non-empty, and client authentication; scope
// is not sent, so the grant keeps its scope. When the response carries no
// refresh token the old one is kept. invalid_grant maps to
// ErrInvalidGrant; invalid_client and unauthorized_client to
// ErrInvalidClient; 429, 5xx and network failures to *TemporaryError with
// RetryAfter from the Retry-After header. Nothing is retried here.
func (c *Client) Refresh(ctx context.Context, md *Metadata, reg *Registration, refreshToken secret.Secret, resource string) (*Tokens, error) {
	const op = "refresh"
	if refreshToken.IsZero() {
		return nil, errors.New("refresh: no refresh token")
	}
	if md == nil || md.TokenEndpoint == "" {
		return nil, errors.New("refresh: no token endpoint")
	}
	if err := checkEndpoint("token endpoint", md.TokenEndpoint); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	form := url.Values{
		"grant_type":    {"refresh_token"},
		"refresh_token": {refreshToken.Reveal()},
	}
	if resource != "" {
		form.Set("resource", resource)
	}
	status, h, body, err := c.postForm(ctx, op, md.TokenEndpoint, md, reg, form)
	if err != nil {
		return nil, err
	}
	out, err := c.readTokens(op, status, h, body, reg.DPoP, c.classify)
	if err != nil {
		return nil, err
	}
	if out.RefreshToken.IsZero() {
		out.RefreshToken = refreshToken
	}
	return out, nil
}

// readTokens reads a token endpoint answer (RFC 6749 section 5.1), mapping
// error answers (also those sent with 200, as some servers do) with fail.
// proof is the DPoP key the request was proven with, if any.
func (c *Client) readTokens(op string, status int, h http.Header, body []byte, proof *dpop.Key, fail func(op string, status int, h http.Header, code string) error) (*Tokens, error) {
	if status < 200 || status > 299 {
		tr, _ := parseTokenResponse(h.Get("Content-Type"), body)
		return nil, fail(op, status, h, tr.Error)
	}
	tr, err := parseTokenResponse(h.Get("Content-Type"), body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if tr.Error != "" {
		return nil, fail(op, status, h, tr.Error)
	}
	if tr.AccessToken == "" {
		return nil, fmt.Errorf("%s: response has no access_token", op)
	}
	typ, err := tokenType(tr.TokenType, proof != nil)
	if err == nil {
		err = checkBinding(tr.AccessToken, proof)
	}
	if err != nil {
		if proof == nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		// Issued, but not bound to the key: the caller must neither use nor
		// lose these (a rotating server has spent the refresh token sent).
		return nil, &UnboundTokensError{Op: op, Err: err, AccessToken: secret.New(tr.AccessToken), RefreshToken: secret.New(tr.RefreshToken)}
	}
	out := &Tokens{
		AccessToken:  secret.New(tr.AccessToken),
		RefreshToken: secret.New(tr.RefreshToken),
		TokenType:    typ,
		Scopes:       splitScope(tr.Scope),
	}
	if tr.ExpiresIn > 0 {
		out.ExpiresAt = c.now().Add(time.Duration(tr.ExpiresIn) * time.Second)
	}
	return out, nil
}

// Revoke revokes a token (RFC 7009) with client authentication; hint is
// the token_type_hint ("refresh_token", "access_token" or ""). A 200 is
// success (also for tokens the server no longer knows); 429, 5xx and
// network failures are *TemporaryError; other answers are errors.
func (c *Client) Revoke(ctx context.Context, md *Metadata, reg *Registration, token secret.Secret, hint string) error {
	const op = "revocation"
	if token.IsZero() {
		return errors.New("revocation: no token")
	}
	if md == nil || md.RevocationEndpoint == "" {
		return fmt.Errorf("%s: %w", op, ErrNoRevocationEndpoint)
	}
	if err := checkEndpoint("revocation endpoint", md.RevocationEndpoint); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if reg != nil && reg.DPoP != nil {
		// Revocation (RFC 7009) takes no DPoP proof: the client
		// authenticates as usual.
		plain := *reg
		plain.DPoP = nil
		reg = &plain
	}
	form := url.Values{"token": {token.Reveal()}}
	if hint != "" {
		form.Set("token_type_hint", hint)
	}
	status, h, body, err := c.postForm(ctx, op, md.RevocationEndpoint, md, reg, form)
	if err != nil {
		return err
	}
	if status == http.StatusOK {
		return nil
	}
	tr, _ := parseTokenResponse(h.Get("Content-Type"), body)
	if tr.Error == "invalid_grant" {
		// Not defined for revocation; report it as a plain OAuth error.
		return &OAuthError{Op: op, Status: status, Code: tr.Error}
	}
	return c.classify(op, status, h, tr.Error)
}
