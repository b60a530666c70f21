package oauthclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/secret"
)

const testRedirect = "https://console.example/v1/oauth/callback"

// flow holds what one successful authorization produced.
type flow struct {
	c      *Client
	ts     *testServer
	md     *Metadata
	reg    *Registration
	tokens *Tokens
	scopes []string
	forms  []url.Values // token endpoint forms seen by the server, under ts.mu
}

// form returns the i-th token request form the server saw; negative i
// counts from the end.
func (f *flow) form(i int) url.Values {
	f.ts.mu.Lock()
	defer f.ts.mu.Unlock()
	if i < 0 {
		i += len(f.forms)
	}
	return f.forms[i]
}

// authorize runs probe, discovery, registration, the authorization request
// (against the test server's approving /authorize), the iss check and the
// code exchange.
func authorize(tb testing.TB, ts *testServer, c *Client, resource string) *flow {
	tb.Helper()
	f := &flow{c: c, ts: ts}
	ts.config(func(ts *testServer) {
		ts.tokenHook = func(v url.Values) { f.forms = append(f.forms, v) }
	})
	ctx := context.Background()
	pr, err := c.Probe(ctx, ts.resource(), nil, nil)
	if err != nil {
		tb.Fatalf("Probe: %v", err)
	}
	f.md, err = c.Discover(ctx, ts.resource(), ts.resource(), pr, nil)
	if err != nil {
		tb.Fatalf("Discover: %v", err)
	}
	f.scopes = SelectScopes(pr.Scopes, f.md.ScopesSupported, f.md.ASScopesSupported, nil)
	f.reg, err = c.RegisterDynamic(ctx, f.md, "mcpauth test", testRedirect, f.scopes)
	if err != nil {
		tb.Fatalf("RegisterDynamic: %v", err)
	}
	verifier, challenge, err := NewPKCE()
	if err != nil {
		tb.Fatal(err)
	}
	state, err := NewState()
	if err != nil {
		tb.Fatal(err)
	}
	authURL, err := AuthorizationURL(AuthRequest{
		Metadata: f.md, ClientID: f.reg.ClientID, RedirectURI: testRedirect, State: state,
		CodeChallenge: challenge, Scopes: f.scopes, Resource: resource,
	})
	if err != nil {
		tb.Fatalf("AuthorizationURL: %v", err)
	}
	cb := followAuthorize(tb, authURL)
	if cb.Get("state") != state {
		tb.Fatalf("state not returned")
	}
	if err := CheckIssuer(f.md.Issuer, f.md.IssParameterSupported, cb.Get("iss"), cb.Has("iss")); err != nil {
		tb.Fatalf("CheckIssuer: %v", err)
	}
	f.tokens, err = c.Exchange(ctx, f.md, f.reg, secret.New(cb.Get("code")), verifier, testRedirect, resource, f.scopes)
	if err != nil {
		tb.Fatalf("Exchange: %v", err)
	}
	return f
}

// followAuthorize plays the browser: GET the authorization URL and return
// the callback's query.
func followAuthorize(tb testing.TB, authURL string) url.Values {
	tb.Helper()
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := hc.Get(authURL)
	if err != nil {
		tb.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusFound {
		tb.Fatalf("authorize status %d", res.StatusCode)
	}
	loc, err := url.Parse(res.Header.Get("Location"))
	if err != nil {
		tb.Fatal(err)
	}
	return loc.Query()
}

// callMCP sends an authenticated initialize and returns the status.
func callMCP(tb testing.TB, ts *testServer, token secret.Secret) int {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodPost, ts.resource(), strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"initialize"}`))
	req.Header.Set("Authorization", "Bearer "+token.Reveal())
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("MCP-Protocol-Version", ProtocolVersion)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

func TestFullFlow(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).modern().config(func(ts *testServer) {
		ts.challenge = func() string { return `Bearer scope="tools:read"` }
		ts.asScopes = []string{"tools:read", "tools:write", OfflineAccess}
		ts.issSupported = true
	})
	clock := &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	c := newTestClient(t, WithClock(clock.Now))
	f := authorize(t, ts, c, ts.resource())

	if f.reg.Method != domain.RegDynamic || f.reg.AuthMethod != AuthClientSecretBasic || f.reg.ClientSecret.IsZero() {
		t.Errorf("registration = %+v", f.reg)
	}
	if !equalStrings(f.scopes, []string{"tools:read", OfflineAccess}) {
		t.Errorf("scopes = %q", f.scopes)
	}
	// Asserted at the server: the exchange carried the verifier (the
	// server checked it against the challenge), resource and redirect_uri.
	ex := f.form(0)
	if ex.Get("grant_type") != "authorization_code" || ex.Get("code_verifier") == "" ||
		ex.Get("resource") != ts.resource() || ex.Get("redirect_uri") != testRedirect {
		t.Errorf("exchange form = %v", ex)
	}
	if ex.Has("client_secret") {
		t.Error("client_secret sent in the body with client_secret_basic")
	}
	tok := f.tokens
	if tok.AccessToken.IsZero() || tok.RefreshToken.IsZero() || tok.TokenType != "Bearer" {
		t.Fatalf("tokens = %+v", tok)
	}
	if want := clock.Now().Add(time.Hour); !tok.ExpiresAt.Equal(want) {
		t.Errorf("ExpiresAt = %v, want %v", tok.ExpiresAt, want)
	}
	if !equalStrings(tok.Scopes, []string{"tools:read", OfflineAccess}) {
		t.Errorf("granted scopes = %q", tok.Scopes)
	}
	if got := callMCP(t, ts, tok.AccessToken); got != http.StatusOK {
		t.Fatalf("MCP call with access token: %d", got)
	}

	// Refresh with rotation: new refresh token, resource sent, scope not.
	ctx := context.Background()
	clock.Advance(30 * time.Minute)
	r1, err := c.Refresh(ctx, f.md, f.reg, tok.RefreshToken, ts.resource())
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	rf := f.form(-1)
	if rf.Get("grant_type") != "refresh_token" || rf.Get("resource") != ts.resource() || rf.Has("scope") {
		t.Errorf("refresh form = %v", rf)
	}
	if r1.RefreshToken.Reveal() == tok.RefreshToken.Reveal() {
		t.Error("rotated refresh token not returned")
	}
	if want := clock.Now().Add(time.Hour); !r1.ExpiresAt.Equal(want) {
		t.Errorf("refreshed ExpiresAt = %v, want %v", r1.ExpiresAt, want)
	}
	if got := callMCP(t, ts, r1.AccessToken); got != http.StatusOK {
		t.Fatalf("MCP call with refreshed token: %d", got)
	}
	// The rotated-out refresh token is dead.
	if _, err := c.Refresh(ctx, f.md, f.reg, tok.RefreshToken, ts.resource()); !errors.Is(err, ErrInvalidGrant) {
		t.Fatalf("reused refresh token: err = %v, want ErrInvalidGrant", err)
	}

	// Revocation kills the current refresh token.
	if err := c.Revoke(ctx, f.md, f.reg, r1.RefreshToken, "refresh_token"); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if _, err := c.Refresh(ctx, f.md, f.reg, r1.RefreshToken, ts.resource()); !errors.Is(err, ErrInvalidGrant) {
		t.Fatalf("revoked refresh token: err = %v, want ErrInvalidGrant", err)
	}
}

func TestExchangeWithoutResourceAndPublicClient(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).modern().config(func(ts *testServer) {
		ts.authMethods = []string{AuthNone}
	})
	c := newTestClient(t)
	f := authorize(t, ts, c, "")
	if f.reg.AuthMethod != AuthNone || !f.reg.ClientSecret.IsZero() {
		t.Fatalf("registration = %+v", f.reg)
	}
	ex := f.form(0)
	if ex.Has("resource") || ex.Has("client_secret") || ex.Get("client_id") != f.reg.ClientID {
		t.Errorf("exchange form = %v", ex)
	}
	if f.tokens.Scopes != nil {
		t.Errorf("scopes = %q, want none", f.tokens.Scopes)
	}
}

func TestExchangeClientSecretPost(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).modern().config(func(ts *testServer) {
		ts.authMethods = []string{AuthClientSecretPost}
	})
	c := newTestClient(t)
	f := authorize(t, ts, c, ts.resource())
	if f.reg.AuthMethod != AuthClientSecretPost {
		t.Fatalf("AuthMethod = %q", f.reg.AuthMethod)
	}
	if ex := f.form(0); ex.Get("client_secret") != f.reg.ClientSecret.Reveal() {
		t.Error("client_secret not in the body with client_secret_post")
	}
	if _, err := c.Refresh(context.Background(), f.md, f.reg, f.tokens.RefreshToken, ts.resource()); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
}

func TestExchangeWrongVerifier(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).modern()
	c := newTestClient(t)
	ctx := context.Background()
	md, err := c.Discover(ctx, ts.resource(), ts.resource(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := c.RegisterDynamic(ctx, md, "t", testRedirect, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, challenge, _ := NewPKCE()
	other, _, _ := NewPKCE()
	state, _ := NewState()
	u, err := AuthorizationURL(AuthRequest{Metadata: md, ClientID: reg.ClientID, RedirectURI: testRedirect, State: state, CodeChallenge: challenge, Resource: ts.resource()})
	if err != nil {
		t.Fatal(err)
	}
	cb := followAuthorize(t, u)
	_, err = c.Exchange(ctx, md, reg, secret.New(cb.Get("code")), other, testRedirect, ts.resource(), nil)
	if !errors.Is(err, ErrInvalidGrant) {
		t.Fatalf("err = %v, want ErrInvalidGrant", err)
	}
	if strings.Contains(err.Error(), "SECRET-DESCRIPTION") || strings.Contains(err.Error(), cb.Get("code")) {
		t.Errorf("error leaks upstream text or the code: %q", err)
	}
}

func TestRefreshKeepsOldRefreshToken(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).modern().config(func(ts *testServer) { ts.rotate = false })
	c := newTestClient(t)
	f := authorize(t, ts, c, ts.resource())
	r1, err := c.Refresh(context.Background(), f.md, f.reg, f.tokens.RefreshToken, ts.resource())
	if err != nil {
		t.Fatal(err)
	}
	if r1.RefreshToken.Reveal() != f.tokens.RefreshToken.Reveal() {
		t.Fatal("old refresh token not kept when the response has none")
	}
	if _, err := c.Refresh(context.Background(), f.md, f.reg, r1.RefreshToken, ts.resource()); err != nil {
		t.Fatalf("second refresh with the kept token: %v", err)
	}
}

func TestRefreshErrors(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	tests := []struct {
		name  string
		fail  tokenFailure
		check func(t *testing.T, err error)
	}{
		{"invalid_grant", tokenFailure{status: 400, body: `{"error":"invalid_grant","error_description":"SECRET-DESCRIPTION"}`},
			func(t *testing.T, err error) {
				if !errors.Is(err, ErrInvalidGrant) {
					t.Errorf("err = %v, want ErrInvalidGrant", err)
				}
			}},
		{"invalid_client", tokenFailure{status: 401, body: `{"error":"invalid_client"}`},
			func(t *testing.T, err error) {
				if !errors.Is(err, ErrInvalidClient) {
					t.Errorf("err = %v, want ErrInvalidClient", err)
				}
			}},
		{"unauthorized_client", tokenFailure{status: 400, body: `{"error":"unauthorized_client"}`},
			func(t *testing.T, err error) {
				if !errors.Is(err, ErrInvalidClient) {
					t.Errorf("err = %v, want ErrInvalidClient", err)
				}
			}},
		{"503 retry-after seconds", tokenFailure{status: 503, retryAfter: "7", body: "<html>SECRET-DESCRIPTION</html>"},
			func(t *testing.T, err error) {
				var te *TemporaryError
				if !errors.As(err, &te) || te.Status != 503 || te.RetryAfter != 7*time.Second {
					t.Errorf("err = %#v, want TemporaryError 503 7s", err)
				}
			}},
		{"429 retry-after date", tokenFailure{status: 429, retryAfter: clock.Now().Add(90 * time.Second).Format(http.TimeFormat)},
			func(t *testing.T, err error) {
				var te *TemporaryError
				if !errors.As(err, &te) || te.Status != 429 || te.RetryAfter != 90*time.Second {
					t.Errorf("err = %#v, want TemporaryError 429 90s", err)
				}
			}},
		{"other oauth error", tokenFailure{status: 400, body: `{"error":"invalid_scope\"<script>"}`},
			func(t *testing.T, err error) {
				var oe *OAuthError
				if !errors.As(err, &oe) || oe.Code != "unrecognised" {
					t.Errorf("err = %#v, want sanitised OAuthError", err)
				}
			}},
		{"200 without access token", tokenFailure{status: 200, body: `{"token_type":"Bearer"}`},
			func(t *testing.T, err error) {
				if err == nil {
					t.Error("accepted a response without access_token")
				}
			}},
		{"dpop token type", tokenFailure{status: 200, body: `{"access_token":"a","token_type":"DPoP"}`},
			func(t *testing.T, err error) {
				if !errors.Is(err, ErrUnsupportedTokenType) {
					t.Errorf("err = %v, want ErrUnsupportedTokenType", err)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t).modern()
			c := newTestClient(t, WithClock(clock.Now))
			f := authorize(t, ts, c, ts.resource())
			fail := tt.fail
			ts.config(func(ts *testServer) { ts.tokenFail = &fail })
			_, err := c.Refresh(context.Background(), f.md, f.reg, f.tokens.RefreshToken, ts.resource())
			tt.check(t, err)
			if err != nil {
				if msg := err.Error(); strings.Contains(msg, "SECRET") || strings.Contains(msg, f.tokens.RefreshToken.Reveal()) {
					t.Errorf("error message leaks: %q", msg)
				}
			}
		})
	}
}

func TestRefreshNetworkErrorIsTemporary(t *testing.T) {
	t.Parallel()
	srv := newRawServer(t, http.NotFoundHandler())
	c := newTestClient(t)
	md := &Metadata{TokenEndpoint: srv + "/token"}
	reg := &Registration{ClientID: "c"}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.Refresh(ctx, md, reg, secret.New("rt"), "")
	var te *TemporaryError
	if !errors.As(err, &te) || te.Status != 0 || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want TemporaryError wrapping context.Canceled", err)
	}
}

func TestPostRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	var hitTarget atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
	})
	mux.HandleFunc("/elsewhere", func(w http.ResponseWriter, r *http.Request) { hitTarget.Store(true) })
	srv := newRawServer(t, mux)
	c := newTestClient(t)
	_, err := c.Refresh(context.Background(), &Metadata{TokenEndpoint: srv + "/token"}, &Registration{ClientID: "c"}, secret.New("rt"), "")
	var se *StatusError
	if !errors.As(err, &se) || se.Status != http.StatusTemporaryRedirect {
		t.Fatalf("err = %v, want StatusError 307", err)
	}
	if hitTarget.Load() {
		t.Fatal("redirect of a token POST was followed")
	}
}

func TestRevoke(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).modern()
	c := newTestClient(t)
	f := authorize(t, ts, c, ts.resource())
	ctx := context.Background()
	if err := c.Revoke(ctx, f.md, f.reg, f.tokens.AccessToken, "access_token"); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if got := callMCP(t, ts, f.tokens.AccessToken); got != http.StatusUnauthorized {
		t.Fatalf("revoked access token still works: %d", got)
	}
	ts.config(func(ts *testServer) { ts.revokeStatus = http.StatusServiceUnavailable })
	err := c.Revoke(ctx, f.md, f.reg, f.tokens.RefreshToken, "refresh_token")
	var te *TemporaryError
	if !errors.As(err, &te) || te.Status != 503 || te.RetryAfter != 3*time.Second {
		t.Fatalf("err = %v, want TemporaryError 503", err)
	}
	noRev := *f.md
	noRev.RevocationEndpoint = ""
	if err := c.Revoke(ctx, &noRev, f.reg, f.tokens.RefreshToken, ""); !errors.Is(err, ErrNoRevocationEndpoint) {
		t.Fatalf("err = %v, want ErrNoRevocationEndpoint", err)
	}
}

func TestRegisterDynamicRequest(t *testing.T) {
	t.Parallel()
	var got map[string]any
	ts := newTestServer(t).modern().config(func(ts *testServer) {
		ts.registerHook = func(m map[string]any) { got = m }
	})
	c := newTestClient(t)
	ctx := context.Background()
	md, err := c.Discover(ctx, ts.resource(), ts.resource(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := c.RegisterDynamic(ctx, md, "mcpauth", testRedirect, []string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if got["application_type"] != "web" || got["client_name"] != "mcpauth" || got["scope"] != "a b" ||
		got["token_endpoint_auth_method"] != AuthClientSecretBasic {
		t.Errorf("registration request = %v", got)
	}
	uris, _ := got["redirect_uris"].([]any)
	if len(uris) != 1 || uris[0] != testRedirect {
		t.Errorf("redirect_uris = %v", got["redirect_uris"])
	}
	gt, _ := got["grant_types"].([]any)
	rt, _ := got["response_types"].([]any)
	if len(gt) != 2 || gt[0] != "authorization_code" || gt[1] != "refresh_token" || len(rt) != 1 || rt[0] != "code" {
		t.Errorf("grant_types = %v response_types = %v", gt, rt)
	}
	if reg.RedirectURI != testRedirect || reg.ClientID == "" || !reg.ExpiresAt.IsZero() {
		t.Errorf("registration = %+v", reg)
	}
}

func TestRegisterDynamicErrors(t *testing.T) {
	t.Parallel()
	c := newTestClient(t)
	ctx := context.Background()
	if _, err := c.RegisterDynamic(ctx, &Metadata{}, "n", testRedirect, nil); !errors.Is(err, ErrNoRegistrationEndpoint) {
		t.Errorf("err = %v, want ErrNoRegistrationEndpoint", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/register", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_redirect_uri", "error_description": "SECRET-DESCRIPTION"})
	})
	srv := newRawServer(t, mux)
	_, err := c.RegisterDynamic(ctx, &Metadata{RegistrationEndpoint: srv + "/register"}, "n", testRedirect, nil)
	var oe *OAuthError
	if !errors.As(err, &oe) || oe.Code != "invalid_redirect_uri" || strings.Contains(err.Error(), "SECRET") {
		t.Errorf("err = %v, want OAuthError invalid_redirect_uri without description", err)
	}
}

func TestChooseAuthMethod(t *testing.T) {
	t.Parallel()
	withSecret := func(m domain.RegistrationMethod, am string) *Registration {
		return &Registration{Method: m, ClientID: "c", ClientSecret: secret.New("s"), AuthMethod: am}
	}
	tests := []struct {
		name       string
		reg        *Registration
		advertised []string
		want       string
		wantErr    bool
	}{
		{"public client", &Registration{Method: domain.RegDynamic, ClientID: "c"}, nil, AuthNone, false},
		{"cimd", withSecret(domain.RegCIMD, ""), nil, AuthNone, false},
		{"default basic", withSecret(domain.RegPreRegistered, ""), nil, AuthClientSecretBasic, false},
		{"post only", withSecret(domain.RegPreRegistered, ""), []string{"client_secret_post", "none"}, AuthClientSecretPost, false},
		{"basic preferred", withSecret(domain.RegPreRegistered, ""), []string{"client_secret_post", "client_secret_basic"}, AuthClientSecretBasic, false},
		{"recorded wins", withSecret(domain.RegDynamic, AuthClientSecretPost), []string{"client_secret_basic"}, AuthClientSecretPost, false},
		{"none only with secret", withSecret(domain.RegPreRegistered, ""), []string{"none", "private_key_jwt"}, "", true},
		{"unknown recorded", withSecret(domain.RegPreRegistered, "private_key_jwt"), nil, "", true},
	}
	for _, tt := range tests {
		got, err := ChooseAuthMethod(tt.reg, tt.advertised)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("%s: ChooseAuthMethod = %q, %v; want %q, err %v", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	t.Parallel()
	reg := Registration{ClientID: "c", ClientSecret: secret.New("client-secret-value")}
	tok := Tokens{AccessToken: secret.New("access-value"), RefreshToken: secret.New("refresh-value")}
	var buf bytes.Buffer
	for _, v := range []any{reg, &reg, tok, &tok} {
		buf.Reset()
		for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
			buf.WriteString(fmt.Sprintf(format, v))
		}
		for _, s := range []string{"client-secret-value", "access-value", "refresh-value"} {
			if strings.Contains(buf.String(), s) {
				t.Errorf("%T prints %q", v, s)
			}
		}
	}
}

// countingTransport counts the requests that went through it, per path.
type countingTransport struct {
	mu    sync.Mutex
	paths map[string]int
}

func (ct *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ct.mu.Lock()
	ct.paths[r.URL.Path]++
	ct.mu.Unlock()
	return http.DefaultTransport.RoundTrip(r)
}

func TestAllRequestsUseTheGivenClient(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).modern()
	ct := &countingTransport{paths: map[string]int{}}
	c, err := New(&http.Client{Transport: ct})
	if err != nil {
		t.Fatal(err)
	}
	f := authorize(t, ts, c, ts.resource())
	ctx := context.Background()
	r, err := c.Refresh(ctx, f.md, f.reg, f.tokens.RefreshToken, ts.resource())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Revoke(ctx, f.md, f.reg, r.RefreshToken, "refresh_token"); err != nil {
		t.Fatal(err)
	}
	ct.mu.Lock()
	defer ct.mu.Unlock()
	for _, p := range []string{
		"/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-authorization-server",
		"/register", "/token", "/revoke",
	} {
		if got, want := ct.paths[p], ts.hitCount(p); got == 0 || got != want {
			t.Errorf("%s: %d requests through the given client, %d at the server", p, got, want)
		}
	}
	if ct.paths["/token"] != 2 {
		t.Errorf("token requests = %d, want 2 (exchange through x/oauth2, refresh)", ct.paths["/token"])
	}
}

func TestRefreshOversizedResponse(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).modern()
	c := newTestClient(t)
	f := authorize(t, ts, c, ts.resource())
	ts.config(func(ts *testServer) {
		ts.tokenFail = &tokenFailure{status: 200, body: `{"access_token":"` + strings.Repeat("a", maxTokenBytes) + `"}`}
	})
	_, err := c.Refresh(context.Background(), f.md, f.reg, f.tokens.RefreshToken, ts.resource())
	if !errors.Is(err, ErrResponseTooLarge) {
		t.Fatalf("err = %v, want ErrResponseTooLarge", err)
	}
}

func TestExchangeIsSentOnce(t *testing.T) {
	t.Parallel()
	for _, fail := range []tokenFailure{
		{status: 503, retryAfter: "2", body: `{"error":"temporarily_unavailable"}`},
		{status: 401, body: `{"error":"invalid_client","error_description":"SECRET-DESCRIPTION"}`},
		{status: 200, body: `not json SECRET-DESCRIPTION`},
	} {
		ts := newTestServer(t).modern()
		c := newTestClient(t)
		ctx := context.Background()
		md, err := c.Discover(ctx, ts.resource(), ts.resource(), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		reg, err := c.RegisterDynamic(ctx, md, "t", testRedirect, nil)
		if err != nil {
			t.Fatal(err)
		}
		verifier, challenge, _ := NewPKCE()
		state, _ := NewState()
		u, err := AuthorizationURL(AuthRequest{Metadata: md, ClientID: reg.ClientID, RedirectURI: testRedirect, State: state, CodeChallenge: challenge})
		if err != nil {
			t.Fatal(err)
		}
		cb := followAuthorize(t, u)
		ts.config(func(ts *testServer) { ts.tokenFail = &fail })
		_, err = c.Exchange(ctx, md, reg, secret.New(cb.Get("code")), verifier, testRedirect, "", nil)
		if err == nil {
			t.Fatalf("status %d: exchange succeeded", fail.status)
		}
		if n := ts.hitCount("/token"); n != 1 {
			t.Errorf("status %d: %d token requests, want exactly 1", fail.status, n)
		}
		if strings.Contains(err.Error(), "SECRET") {
			t.Errorf("error leaks the upstream body: %q", err)
		}
		var te *TemporaryError
		switch fail.status {
		case 503:
			if !errors.As(err, &te) || te.RetryAfter != 2*time.Second {
				t.Errorf("err = %v, want TemporaryError", err)
			}
		case 401:
			if !errors.Is(err, ErrInvalidClient) {
				t.Errorf("err = %v, want ErrInvalidClient", err)
			}
		}
	}
}
