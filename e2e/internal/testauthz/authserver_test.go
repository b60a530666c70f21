package testauthz

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/e2e/internal/democontrol"
)

const testRedirect = "http://127.0.0.1:9/callback"

// authorizeQuery returns a typical authorization request's parameters.
func authorizeQuery(clientID, challenge, state string) url.Values {
	return url.Values{
		"response_type":         {"code"},
		"client_id":             {clientID},
		"redirect_uri":          {testRedirect},
		"state":                 {state},
		"scope":                 {"mcp.read offline_access"},
		"code_challenge":        {challenge},
		"code_challenge_method": {"S256"},
	}
}

func mustAuthorize(t *testing.T, a *AuthServer, q url.Values) url.Values {
	t.Helper()
	loc, err := FollowAuthorize(a.URL + "/authorize?" + q.Encode())
	if err != nil {
		t.Fatalf("authorize: %v", err)
	}
	if !strings.HasPrefix(loc.String(), testRedirect) {
		t.Fatalf("redirected to %q, not the client's redirect URI", loc.Redacted())
	}
	return loc.Query()
}

func wantTokenError(t *testing.T, err error, code string) {
	t.Helper()
	var te *TokenError
	if !errors.As(err, &te) || te.Code != code {
		t.Fatalf("error = %v, want OAuth error %q", err, code)
	}
}

func TestAuthCodeFlowWithPKCE(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		opt  AuthServerOptions
	}{
		{name: "root issuer without iss", opt: AuthServerOptions{}},
		{name: "path issuer with iss", opt: AuthServerOptions{IssParameter: true, IssuerPath: "/tenant1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := NewAuthServer(t, tt.opt)
			a.RegisterClient("web", "s3cret", []string{testRedirect}, false)
			verifier, challenge := NewPKCE()
			q := authorizeQuery("web", challenge, "state-0123456789")
			q.Set("resource", "http://127.0.0.1:1/mcp")
			got := mustAuthorize(t, a, q)
			if got.Get("state") != "state-0123456789" || got.Get("code") == "" {
				t.Fatalf("redirect query %v lacks code or state", got)
			}
			if tt.opt.IssParameter {
				if got.Get("iss") != a.URL {
					t.Fatalf("iss = %q, want %q", got.Get("iss"), a.URL)
				}
			} else if got.Has("iss") {
				t.Fatalf("iss %q sent although not enabled", got.Get("iss"))
			}

			form := url.Values{
				"grant_type": {"authorization_code"}, "code": {got.Get("code")},
				"redirect_uri": {testRedirect}, "code_verifier": {verifier}, "resource": {"http://127.0.0.1:1/mcp"},
			}
			tok, err := a.TokenRequest(form, "web", "s3cret")
			if err != nil {
				t.Fatalf("code exchange: %v", err)
			}
			if tok.AccessToken == "" || tok.RefreshToken == "" || !strings.EqualFold(tok.TokenType, "bearer") || tok.ExpiresIn <= 0 {
				t.Fatalf("token response %+v incomplete", tok)
			}
			info, err := a.ValidateToken(t.Context(), tok.AccessToken)
			if err != nil {
				t.Fatalf("ValidateToken: %v", err)
			}
			if info.Subject != "alice" || info.ClientID != "web" || info.Resource != "http://127.0.0.1:1/mcp" ||
				!slices.Equal(info.Scopes, []string{"mcp.read", "offline_access"}) {
				t.Fatalf("token info %+v", info)
			}
			if _, ok := a.Validate(tok.RefreshToken); ok {
				t.Fatal("a refresh token validated as an access token")
			}

			// The recording shows what the client actually sent.
			tr := a.RequestsTo(a.Path("/token"))
			if len(tr) != 1 || tr[0].Form.Get("code_verifier") != verifier || tr[0].Form.Get("resource") == "" {
				t.Fatalf("recorded token requests %+v", tr)
			}
			if _, _, ok := (&http.Request{Header: tr[0].Header}).BasicAuth(); !ok {
				t.Fatal("client_secret_basic not recorded")
			}
			if a.Counts(a.Path("/authorize")) != 1 {
				t.Fatalf("Counts(authorize) = %d", a.Counts(a.Path("/authorize")))
			}

			// An authorization code is single use.
			_, err = a.TokenRequest(form, "web", "s3cret")
			wantTokenError(t, err, "invalid_grant")
		})
	}
}

func TestPKCEEnforced(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{})
	a.RegisterClient("app", "", []string{testRedirect}, true)
	exchange := func(verifier string) error {
		_, challenge := NewPKCE()
		code := mustAuthorize(t, a, authorizeQuery("app", challenge, "state-0123456789")).Get("code")
		form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {testRedirect}}
		if verifier != "" {
			form.Set("code_verifier", verifier)
		}
		_, err := a.TokenRequest(form, "app", "")
		return err
	}
	other, _ := NewPKCE()
	wantTokenError(t, exchange(other), "invalid_grant")
	wantTokenError(t, exchange(""), "invalid_grant")

	// plain and a missing challenge are refused at the authorization endpoint.
	q := authorizeQuery("app", "plain-challenge-0123456789012345678901234567890123", "state-0123456789")
	q.Set("code_challenge_method", "plain")
	if got := mustAuthorize(t, a, q); got.Get("error") != "invalid_request" {
		t.Fatalf("plain PKCE: redirect %v, want error=invalid_request", got)
	}
	q = authorizeQuery("app", "", "state-0123456789")
	q.Del("code_challenge")
	q.Del("code_challenge_method")
	if got := mustAuthorize(t, a, q); got.Get("error") != "invalid_request" {
		t.Fatalf("no PKCE: redirect %v, want error=invalid_request", got)
	}
}

func TestMetadataLocations(t *testing.T) {
	t.Parallel()
	paths := func(p string) map[string]string {
		return map[string]string{
			"oauth-insert": "/.well-known/oauth-authorization-server" + p,
			"oidc-insert":  "/.well-known/openid-configuration" + p,
			"oidc-append":  p + "/.well-known/openid-configuration",
			"oauth-root":   "/.well-known/oauth-authorization-server",
			"oidc-root":    "/.well-known/openid-configuration",
		}
	}
	for _, tt := range []struct {
		name  string
		path  string
		loc   MetadataLocation
		serve []string
	}{
		{"all with path", "/t1", MetadataAll, []string{"oauth-insert", "oidc-insert", "oidc-append"}},
		// Without a path the insert and append forms are the root URLs.
		{"all at root", "", MetadataAll, []string{"oauth-insert", "oidc-insert", "oidc-append", "oauth-root", "oidc-root"}},
		{"oauth at root", "", MetadataOAuthPathInsert, []string{"oauth-insert", "oauth-root"}},
		{"oauth path-insert", "/t1", MetadataOAuthPathInsert, []string{"oauth-insert"}},
		{"oidc path-insert", "/t1", MetadataOIDCPathInsert, []string{"oidc-insert"}},
		{"oidc path-append", "/t1", MetadataOIDCPathAppend, []string{"oidc-append"}},
		{"oauth root for path issuer", "/t1", MetadataOAuthRoot, []string{"oauth-root"}},
		{"oidc root for path issuer", "/t1", MetadataOIDCRoot, []string{"oidc-root"}},
		{"none", "/t1", MetadataNone, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := NewAuthServer(t, AuthServerOptions{IssuerPath: tt.path, Metadata: tt.loc})
			for name, p := range paths(tt.path) {
				resp, err := http.Get(a.Origin + p)
				if err != nil {
					t.Fatal(err)
				}
				var doc map[string]any
				_ = json.NewDecoder(resp.Body).Decode(&doc)
				resp.Body.Close()
				want := slices.Contains(tt.serve, name)
				if got := resp.StatusCode == http.StatusOK; got != want {
					t.Errorf("%s (%s): status %d, want served=%v", name, p, resp.StatusCode, want)
				}
				if want && doc["issuer"] != a.URL {
					t.Errorf("%s: issuer %v, want %q", name, doc["issuer"], a.URL)
				}
			}
		})
	}
}

func TestMetadataDocument(t *testing.T) {
	t.Parallel()
	get := func(t *testing.T, a *AuthServer) map[string]any {
		t.Helper()
		resp, err := http.Get(a.MetadataURL())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var doc map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
			t.Fatal(err)
		}
		return doc
	}
	strict := get(t, NewAuthServer(t, AuthServerOptions{IssParameter: true, DCR: true}))
	if m, _ := strict["code_challenge_methods_supported"].([]any); len(m) != 1 || m[0] != "S256" {
		t.Errorf("code_challenge_methods_supported = %v", strict["code_challenge_methods_supported"])
	}
	if strict["authorization_response_iss_parameter_supported"] != true || strict["registration_endpoint"] == nil {
		t.Errorf("iss support or registration_endpoint missing: %v", strict)
	}
	if s, _ := strict["scopes_supported"].([]any); !slices.Contains(s, any("offline_access")) {
		t.Errorf("scopes_supported = %v", strict["scopes_supported"])
	}

	lax := get(t, NewAuthServer(t, AuthServerOptions{OmitPKCEMetadata: true, MetadataIssuer: "https://evil.example"}))
	if _, ok := lax["code_challenge_methods_supported"]; ok {
		t.Error("code_challenge_methods_supported present although omitted")
	}
	if _, ok := lax["authorization_response_iss_parameter_supported"]; ok {
		t.Error("iss support advertised although disabled")
	}
	if _, ok := lax["registration_endpoint"]; ok {
		t.Error("registration_endpoint advertised without DCR")
	}
	if lax["issuer"] != "https://evil.example" {
		t.Errorf("issuer override not applied: %v", lax["issuer"])
	}
}

func TestRefreshRotationAndReuseDetection(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{})
	a.RegisterClient("app", "", []string{testRedirect}, true)
	t0 := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect, Scopes: []string{"mcp.read", "offline_access"}})

	t1, err := a.Refresh(t0.RefreshToken, "app", "")
	if err != nil {
		t.Fatalf("first refresh: %v", err)
	}
	if t1.RefreshToken == "" || t1.RefreshToken == t0.RefreshToken {
		t.Fatal("refresh did not rotate the refresh token")
	}
	if _, ok := a.Validate(t1.AccessToken); !ok {
		t.Fatal("new access token invalid")
	}

	// The old refresh token again: reuse. fosite rejects it and revokes the
	// whole family, so the legitimate holder's new tokens die too.
	_, err = a.Refresh(t0.RefreshToken, "app", "")
	wantTokenError(t, err, "invalid_grant")
	if got := a.ReuseRejections(); got != 1 {
		t.Fatalf("ReuseRejections = %d, want 1", got)
	}
	if _, ok := a.Validate(t1.AccessToken); ok {
		t.Fatal("access token of a revoked family still valid")
	}
	_, err = a.Refresh(t1.RefreshToken, "app", "")
	wantTokenError(t, err, "invalid_grant")
	if got := a.RefreshCount(); got != 3 {
		t.Fatalf("RefreshCount = %d, want 3", got)
	}
}

// TestIssuedRecordsTheChain: Issued lists each successful answer with the
// tokens the client got, the refresh token a refresh presented and the
// expires_in sent; a rejected reuse adds nothing.
func TestIssuedRecordsTheChain(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{})
	a.RegisterClient("app", "", []string{testRedirect}, true)
	t0 := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect, Scopes: []string{"offline_access"}})
	t1, err := a.Refresh(t0.RefreshToken, "app", "")
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	_, err = a.Refresh(t0.RefreshToken, "app", "")
	wantTokenError(t, err, "invalid_grant")

	got := a.Issued()
	if len(got) != 2 {
		t.Fatalf("%d issuances, want 2: %+v", len(got), got)
	}
	for i, want := range []struct {
		grant, presented string
		tok              Tokens
	}{{"authorization_code", "", t0}, {"refresh_token", t0.RefreshToken, t1}} {
		is := got[i]
		if is.Grant != want.grant || is.Presented != want.presented || is.AccessToken != want.tok.AccessToken ||
			is.RefreshToken != want.tok.RefreshToken || is.ExpiresIn != time.Duration(want.tok.ExpiresIn)*time.Second {
			t.Errorf("issuance %d = %+v, want grant %s presenting %q and the tokens the client got %+v", i, is, want.grant, want.presented, want.tok)
		}
		if is.Issued.Before(is.Requested) {
			t.Errorf("issuance %d issued before it was requested", i)
		}
	}
}

func TestNoRefreshRotation(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{NoRefreshRotation: true})
	a.RegisterClient("app", "", []string{testRedirect}, true)
	t0 := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect})
	for i := range 3 {
		t1, err := a.Refresh(t0.RefreshToken, "app", "")
		if err != nil {
			t.Fatalf("refresh #%d with the kept token: %v", i, err)
		}
		if t1.RefreshToken != "" {
			t.Fatalf("refresh #%d returned a refresh token without rotation", i)
		}
		if _, ok := a.Validate(t1.AccessToken); !ok {
			t.Fatalf("refresh #%d: access token invalid", i)
		}
	}
	// Revocation still reaches the kept token.
	if code, err := a.Revoke(t0.RefreshToken, "app", ""); err != nil || code != http.StatusOK {
		t.Fatalf("Revoke = %d, %v", code, err)
	}
	_, err := a.Refresh(t0.RefreshToken, "app", "")
	wantTokenError(t, err, "invalid_grant")
}

func TestRequireOfflineAccess(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{RequireOfflineAccess: true})
	a.RegisterClient("app", "", []string{testRedirect}, true)
	if tok := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect, Scopes: []string{"mcp.read"}}); tok.RefreshToken != "" {
		t.Fatal("refresh token issued without offline_access")
	}
	if tok := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect, Scopes: []string{"offline_access"}}); tok.RefreshToken == "" {
		t.Fatal("no refresh token with offline_access")
	}
}

func TestRevocation(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{})
	a.RegisterClient("web", "pw", []string{testRedirect}, false)
	tok := a.MintTokens(t, FlowParams{ClientID: "web", ClientSecret: "pw", RedirectURI: testRedirect})
	if code, err := a.Revoke(tok.RefreshToken, "web", "pw"); err != nil || code != http.StatusOK {
		t.Fatalf("Revoke refresh token = %d, %v", code, err)
	}
	if a.RevocationCount() != 1 {
		t.Fatalf("RevocationCount = %d", a.RevocationCount())
	}
	_, err := a.Refresh(tok.RefreshToken, "web", "pw")
	wantTokenError(t, err, "invalid_grant")
	if _, ok := a.Validate(tok.AccessToken); ok {
		t.Fatal("access token survived revocation of its refresh token")
	}

	tok = a.MintTokens(t, FlowParams{ClientID: "web", ClientSecret: "pw", RedirectURI: testRedirect})
	if code, err := a.Revoke(tok.AccessToken, "web", "pw"); err != nil || code != http.StatusOK {
		t.Fatalf("Revoke access token = %d, %v", code, err)
	}
	if _, ok := a.Validate(tok.AccessToken); ok {
		t.Fatal("revoked access token still valid")
	}
	// Wrong client credentials are refused.
	if code, _ := a.Revoke(tok.RefreshToken, "web", "wrong"); code != http.StatusUnauthorized {
		t.Fatalf("Revoke with a wrong secret = %d, want 401", code)
	}
}

func TestExpireAndRevokeAll(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{})
	a.RegisterClient("app", "", []string{testRedirect}, true)
	tok := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect})
	a.ExpireRefreshTokens()
	_, err := a.Refresh(tok.RefreshToken, "app", "")
	wantTokenError(t, err, "invalid_grant")
	if _, ok := a.Validate(tok.AccessToken); !ok {
		t.Fatal("ExpireRefreshTokens killed an access token")
	}
	a.RevokeAllTokens()
	if _, ok := a.Validate(tok.AccessToken); ok {
		t.Fatal("access token valid after RevokeAllTokens")
	}
	// New flows still work.
	fresh := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect})
	if _, err := a.Refresh(fresh.RefreshToken, "app", ""); err != nil {
		t.Fatalf("refresh after ExpireRefreshTokens of older tokens: %v", err)
	}
}

func TestAccessTokenExpires(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{AccessTokenLifetime: time.Second})
	a.RegisterClient("app", "", []string{testRedirect}, true)
	tok := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect})
	if _, ok := a.Validate(tok.AccessToken); !ok {
		t.Fatal("fresh token invalid")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := a.Validate(tok.AccessToken); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("access token still valid 5s after a 1s lifetime")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func registerDynamic(t *testing.T, a *AuthServer, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(a.URL+"/register", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestDynamicClientRegistration(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{DCR: true, IssuerPath: "/t"})

	code, pub := registerDynamic(t, a, `{"redirect_uris":["`+testRedirect+`"],"token_endpoint_auth_method":"none","client_name":"mcpauth","application_type":"web"}`)
	if code != http.StatusCreated || pub["client_id"] == "" || pub["client_secret"] != nil || pub["application_type"] != "web" {
		t.Fatalf("public registration: %d %v", code, pub)
	}
	a.MintTokens(t, FlowParams{ClientID: pub["client_id"].(string), RedirectURI: testRedirect})

	code, conf := registerDynamic(t, a, `{"redirect_uris":["`+testRedirect+`"]}`)
	if code != http.StatusCreated || conf["token_endpoint_auth_method"] != "client_secret_basic" {
		t.Fatalf("confidential registration: %d %v", code, conf)
	}
	id, secret := conf["client_id"].(string), conf["client_secret"].(string)
	a.MintTokens(t, FlowParams{ClientID: id, ClientSecret: secret, RedirectURI: testRedirect})

	_, err := a.TokenRequest(url.Values{"grant_type": {"authorization_code"}, "code": {"x"}}, id, "wrong")
	wantTokenError(t, err, "invalid_client")

	// An evicted client is unknown from then on.
	a.DeleteClient(id)
	_, err = a.TokenRequest(url.Values{"grant_type": {"authorization_code"}, "code": {"x"}}, id, secret)
	wantTokenError(t, err, "invalid_client")

	for _, body := range []string{`{}`, `{"redirect_uris":["/relative"]}`, `not json`} {
		if code, out := registerDynamic(t, a, body); code != http.StatusBadRequest {
			t.Errorf("registration %s: %d %v, want 400", body, code, out)
		}
	}
	if a.Counts("/t/register") != 5 {
		t.Errorf("Counts(/t/register) = %d, want 5", a.Counts("/t/register"))
	}
}

func TestRejectResource(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{RejectResource: true})
	a.RegisterClient("app", "", []string{testRedirect}, true)
	verifier, challenge := NewPKCE()
	q := authorizeQuery("app", challenge, "state-0123456789")
	q.Set("resource", "http://127.0.0.1:1/mcp")
	if got := mustAuthorize(t, a, q); got.Get("error") != "invalid_target" {
		t.Fatalf("authorize with resource: %v, want error=invalid_target", got)
	}
	q.Del("resource")
	code := mustAuthorize(t, a, q).Get("code")
	form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {testRedirect},
		"code_verifier": {verifier}, "resource": {"http://127.0.0.1:1/mcp"}}
	_, err := a.TokenRequest(form, "app", "")
	wantTokenError(t, err, "invalid_target")
	form.Del("resource")
	if _, err := a.TokenRequest(form, "app", ""); err != nil {
		t.Fatalf("exchange without resource: %v", err)
	}
}

func TestDenyAndIssOverride(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{IssParameter: true, Deny: true})
	a.RegisterClient("app", "", []string{testRedirect}, true)
	_, challenge := NewPKCE()
	q := authorizeQuery("app", challenge, "state-0123456789")
	got := mustAuthorize(t, a, q)
	if got.Get("error") != "access_denied" || got.Get("iss") != a.URL || got.Get("state") != "state-0123456789" {
		t.Fatalf("denied redirect %v", got)
	}
	a.SetDeny(false)
	a.SetRedirectIss("https://attacker.example")
	if got := mustAuthorize(t, a, q); got.Get("iss") != "https://attacker.example" || got.Get("code") == "" {
		t.Fatalf("iss override: %v", got)
	}
	a.SetRedirectIss("")
	if got := mustAuthorize(t, a, q); got.Has("iss") {
		t.Fatalf("iss sent although overridden to none: %v", got)
	}
}

func TestTokenFaultInjection(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{})
	a.RegisterClient("app", "", []string{testRedirect}, true)
	tok := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect})

	a.SetTokenStatus(http.StatusServiceUnavailable, "3")
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok.RefreshToken}, "client_id": {"app"}}
	resp, err := http.PostForm(a.URL+"/token", form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "3" {
		t.Fatalf("injected status: %d Retry-After=%q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	a.SetTokenStatus(0, "")

	a.SetTokenDelay(time.Minute)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, a.URL+"/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	start := time.Now()
	if _, err := http.DefaultClient.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hanging token endpoint: %v, want deadline exceeded", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatal("client timeout not honoured")
	}
	a.SetTokenDelay(0)
	// Faults never reached fosite: the refresh token is still unused.
	if _, err := a.Refresh(tok.RefreshToken, "app", ""); err != nil {
		t.Fatalf("refresh after faults: %v", err)
	}
	if got := a.RefreshCount(); got != 1 {
		t.Fatalf("RefreshCount = %d, want 1 (faults are not counted)", got)
	}
}

func TestIntrospectionEndpoint(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{})
	a.RegisterClient("rs", "rs-secret", []string{testRedirect}, false)
	tok := a.MintTokens(t, FlowParams{ClientID: "rs", ClientSecret: "rs-secret", RedirectURI: testRedirect, Scopes: []string{"mcp.read"}})
	introspect := func(token string) map[string]any {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, a.URL+"/introspect", strings.NewReader(url.Values{"token": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("rs", "rs-secret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := introspect(tok.AccessToken); got["active"] != true || got["scope"] != "mcp.read" || got["client_id"] != "rs" {
		t.Fatalf("introspection of a valid token: %v", got)
	}
	if got := introspect("bogus"); got["active"] != false {
		t.Fatalf("introspection of a bogus token: %v", got)
	}
}

func TestDynamicClientSecretPost(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{DCR: true})
	code, reg := registerDynamic(t, a, `{"redirect_uris":["`+testRedirect+`"],"token_endpoint_auth_method":"client_secret_post"}`)
	if code != http.StatusCreated {
		t.Fatalf("registration: %d %v", code, reg)
	}
	id, secret := reg["client_id"].(string), reg["client_secret"].(string)
	verifier, challenge := NewPKCE()
	got := mustAuthorize(t, a, authorizeQuery(id, challenge, "state-0123456789"))
	form := url.Values{"grant_type": {"authorization_code"}, "code": {got.Get("code")}, "redirect_uri": {testRedirect},
		"code_verifier": {verifier}, "client_id": {id}, "client_secret": {secret}}
	// TokenRequest with an empty secret sends no Authorization header.
	if _, err := a.TokenRequest(form, id, ""); err != nil {
		t.Fatalf("client_secret_post exchange: %v", err)
	}
	// The same client may not switch to client_secret_basic.
	_, err := a.TokenRequest(url.Values{"grant_type": {"authorization_code"}, "code": {"x"}}, id, secret)
	wantTokenError(t, err, "invalid_client")
}

// TestDemoControls: the demo's HTTP controls kill what their methods kill,
// only when asked with the X-Demo-Control header (a plain POST, which any
// web page could send cross-site, gets 403 and kills nothing), and a
// server without DemoControls does not serve them.
func TestDemoControls(t *testing.T) {
	t.Parallel()
	post := func(a *AuthServer, path string, header bool) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, a.URL+path, strings.NewReader("x=1"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if header {
			req.Header.Set(democontrol.Header, "1")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	plain := NewAuthServer(t, AuthServerOptions{})
	plain.RegisterClient("app", "", []string{testRedirect}, true)
	kept := plain.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect})
	for _, path := range []string{"/demo/revoke-access-tokens", "/demo/expire-refresh-tokens"} {
		if code := post(plain, path, true); code == http.StatusOK {
			t.Errorf("POST %s without DemoControls = %d", path, code)
		}
	}
	if _, ok := plain.Validate(kept.AccessToken); !ok {
		t.Fatal("a server without DemoControls lost its access token")
	}

	a := NewAuthServer(t, AuthServerOptions{DemoControls: true, IssuerPath: "/demo-issuer"})
	a.RegisterClient("app", "", []string{testRedirect}, true)
	tok := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect})
	for _, path := range []string{"/demo/revoke-access-tokens", "/demo/expire-refresh-tokens"} {
		if code := post(a, path, false); code != http.StatusForbidden {
			t.Errorf("POST %s without %s = %d, want 403", path, democontrol.Header, code)
		}
	}
	if _, ok := a.Validate(tok.AccessToken); !ok {
		t.Fatal("a control without its header revoked the access token")
	}
	if code := post(a, "/demo/revoke-access-tokens", true); code != http.StatusOK {
		t.Fatalf("POST revoke-access-tokens = %d", code)
	}
	if _, ok := a.Validate(tok.AccessToken); ok {
		t.Fatal("access token valid after revoke-access-tokens")
	}
	fresh, err := a.Refresh(tok.RefreshToken, "app", "")
	if err != nil {
		t.Fatalf("refresh after revoke-access-tokens (its refresh token was expired by a control without its header?): %v", err)
	}
	if code := post(a, "/demo/expire-refresh-tokens", true); code != http.StatusOK {
		t.Fatalf("POST expire-refresh-tokens = %d", code)
	}
	_, err = a.Refresh(fresh.RefreshToken, "app", "")
	wantTokenError(t, err, "invalid_grant")
}
