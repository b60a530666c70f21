package testauthz

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// FlowParams are the inputs of an authorization-code flow driven by MintTokens.
type FlowParams struct {
	// ClientID is a registered client.
	ClientID string
	// ClientSecret authenticates a confidential client (client_secret_basic);
	// empty for a public client.
	ClientSecret string
	// RedirectURI is one of the client's redirect URIs.
	RedirectURI string
	// Scopes are requested; empty requests none.
	Scopes []string
	// Resource is the RFC 8707 resource indicator, sent on both requests
	// when not empty.
	Resource string
}

// Tokens is a successful token response.
type Tokens struct {
	// AccessToken is the bearer token.
	AccessToken string `json:"access_token"`
	// RefreshToken is empty when the server issued none.
	RefreshToken string `json:"refresh_token"`
	// TokenType is "bearer".
	TokenType string `json:"token_type"`
	// Scope lists the granted scopes, space separated.
	Scope string `json:"scope"`
	// ExpiresIn is the access token's lifetime in seconds.
	ExpiresIn int `json:"expires_in"`
}

// TokenError is an OAuth error response from the token endpoint.
type TokenError struct {
	// Status is the HTTP status code.
	Status int
	// Code is the OAuth error code, such as "invalid_grant".
	Code string `json:"error"`
	// Description is the server's error_description.
	Description string `json:"error_description"`
}

// Error returns the status and OAuth error code, never the description.
func (e *TokenError) Error() string {
	return fmt.Sprintf("token endpoint: HTTP %d %s", e.Status, e.Code)
}

// NewPKCE returns a fresh code verifier and its S256 challenge.
func NewPKCE() (verifier, challenge string) {
	verifier = rand.Text() + rand.Text() // 52 base32 characters, all unreserved
	sum := sha256.Sum256([]byte(verifier))
	return verifier, base64.RawURLEncoding.EncodeToString(sum[:])
}

// MintTokens runs a complete authorization-code flow with PKCE S256 over
// HTTP, exactly as a client would, and returns the tokens. It fails tb on
// any error.
func (a *AuthServer) MintTokens(tb testing.TB, p FlowParams) Tokens {
	tb.Helper()
	verifier, challenge := NewPKCE()
	state := rand.Text()
	q := url.Values{
		"response_type":         {"code"},
		"client_id":             {p.ClientID},
		"redirect_uri":          {p.RedirectURI},
		"state":                 {state},
		"code_challenge":        {challenge},
		"code_challenge_method": {"S256"},
	}
	if len(p.Scopes) > 0 {
		q.Set("scope", strings.Join(p.Scopes, " "))
	}
	if p.Resource != "" {
		q.Set("resource", p.Resource)
	}
	loc, err := FollowAuthorize(a.URL + "/authorize?" + q.Encode())
	if err != nil {
		tb.Fatalf("testauthz: authorize: %v", err)
	}
	if e := loc.Query().Get("error"); e != "" {
		tb.Fatalf("testauthz: authorize answered error %q", e)
	}
	if loc.Query().Get("state") != state {
		tb.Fatal("testauthz: authorize returned another state")
	}
	form := url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {loc.Query().Get("code")},
		"redirect_uri":  {p.RedirectURI},
		"code_verifier": {verifier},
	}
	if p.Resource != "" {
		form.Set("resource", p.Resource)
	}
	tok, err := a.TokenRequest(form, p.ClientID, p.ClientSecret)
	if err != nil {
		tb.Fatalf("testauthz: code exchange: %v", err)
	}
	return tok
}

// noRedirects is an HTTP client that reports redirects instead of following them.
var noRedirects = &http.Client{
	Timeout: 10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// FollowAuthorize requests an authorization URL, as a browser would, and
// returns the redirect it answers with (carrying code, state and iss, or
// error). It fails when the answer is not a redirect.
func FollowAuthorize(authorizeURL string) (*url.URL, error) {
	resp, err := noRedirects.Get(authorizeURL)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode < 300 || resp.StatusCode > 399 {
		return nil, fmt.Errorf("authorize answered HTTP %d, not a redirect", resp.StatusCode)
	}
	return resp.Location()
}

// TokenRequest posts form to the token endpoint, authenticating with
// client_secret_basic when secret is set and sending client_id in the form
// otherwise. An OAuth error answer is returned as *TokenError.
func (a *AuthServer) TokenRequest(form url.Values, clientID, secret string) (Tokens, error) {
	return postToken(a.URL+"/token", form, clientID, secret)
}

func postToken(endpoint string, form url.Values, clientID, secret string) (Tokens, error) {
	form = cloneValues(form)
	if secret == "" {
		form.Set("client_id", clientID)
	}
	req, err := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return Tokens{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if secret != "" {
		req.SetBasicAuth(url.QueryEscape(clientID), url.QueryEscape(secret))
	}
	resp, err := noRedirects.Do(req)
	if err != nil {
		return Tokens{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Tokens{}, err
	}
	if resp.StatusCode != http.StatusOK {
		te := &TokenError{Status: resp.StatusCode}
		_ = json.Unmarshal(body, te)
		return Tokens{}, te
	}
	var tok Tokens
	if err := json.Unmarshal(body, &tok); err != nil {
		return Tokens{}, err
	}
	if tok.AccessToken == "" {
		return Tokens{}, errors.New("token response without access_token")
	}
	return tok, nil
}

// Refresh runs a refresh_token grant.
func (a *AuthServer) Refresh(refreshToken, clientID, secret string) (Tokens, error) {
	return a.TokenRequest(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refreshToken}}, clientID, secret)
}

// Revoke sends an RFC 7009 revocation request and returns the HTTP status.
func (a *AuthServer) Revoke(token, clientID, secret string) (int, error) {
	form := url.Values{"token": {token}}
	if secret == "" {
		form.Set("client_id", clientID)
	}
	req, err := http.NewRequest(http.MethodPost, a.URL+"/revoke", strings.NewReader(form.Encode()))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if secret != "" {
		req.SetBasicAuth(url.QueryEscape(clientID), url.QueryEscape(secret))
	}
	resp, err := noRedirects.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v))
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}
