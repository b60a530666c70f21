package testauthz

import (
	"encoding/json"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// jarClient is a browser: a cookie jar, redirects reported, not followed.
func jarClient(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// codeAs runs the authorization request in browser b and redeems the code.
func codeAs(t *testing.T, a *AuthServer, b *http.Client, scope string) Tokens {
	t.Helper()
	verifier, challenge := NewPKCE()
	q := authorizeQuery("web", challenge, "state-0123456789")
	q.Set("scope", scope)
	resp, err := b.Get(a.URL + "/authorize?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil || loc.Query().Get("code") == "" {
		t.Fatalf("authorize: %d %v, want a redirect with a code", resp.StatusCode, err)
	}
	tok, err := a.TokenRequest(url.Values{"grant_type": {"authorization_code"}, "code": {loc.Query().Get("code")},
		"redirect_uri": {testRedirect}, "code_verifier": {verifier}}, "web", "s3cret")
	if err != nil {
		t.Fatalf("code exchange: %v", err)
	}
	return tok
}

// introspectSub asks the introspection endpoint (RFC 7662 section 2.2)
// for the token's sub.
func introspectSub(t *testing.T, a *AuthServer, token string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, a.URL+"/introspect", strings.NewReader(url.Values{"token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("web", "s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Active bool   `json:"active"`
		Sub    string `json:"sub"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || !out.Active {
		t.Fatalf("introspection: active=%v %v", out.Active, err)
	}
	return out.Sub
}

// TestSignInNamesTheSubject: a browser signed in at the server's login as
// bob gets tokens whose subject is bob (introspection and the in-process
// check agree), another signed in as carol gets carol's, and a browser
// that never signed in acts as the default user.
func TestSignInNamesTheSubject(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{})
	a.RegisterClient("web", "s3cret", []string{testRedirect}, false)
	bob, carol, anon := jarClient(t), jarClient(t), jarClient(t)
	for b, user := range map[*http.Client]string{bob: "bob", carol: "carol@example.com"} {
		if err := a.SignIn(b, user); err != nil {
			t.Fatalf("sign in %s: %v", user, err)
		}
	}
	for b, want := range map[*http.Client]string{bob: "bob", carol: "carol@example.com", anon: "alice"} {
		tok := codeAs(t, a, b, "mcp.read offline_access")
		if got := introspectSub(t, a, tok.AccessToken); got != want {
			t.Errorf("introspected sub %q, want %q", got, want)
		}
		if info, err := a.ValidateToken(t.Context(), tok.AccessToken); err != nil || info.Subject != want {
			t.Errorf("ValidateToken subject %q (%v), want %q", info.Subject, err, want)
		}
		// A refresh keeps the subject.
		next, err := a.Refresh(tok.RefreshToken, "web", "s3cret")
		if err != nil {
			t.Fatalf("refresh: %v", err)
		}
		if got := introspectSub(t, a, next.AccessToken); got != want {
			t.Errorf("after refresh sub %q, want %q", got, want)
		}
	}
}

// TestSignInRefusals: an empty user is refused, and return_to sends the
// browser only to a path on the server (never to another origin).
func TestSignInRefusals(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{})
	b := jarClient(t)
	if err := a.SignIn(b, ""); err == nil {
		t.Fatal("an empty user signed in")
	}
	for to, want := range map[string]string{"/authorize?x=1": "/authorize?x=1", "//evil.example/": "", "https://evil.example/": ""} {
		resp, err := b.PostForm(a.URL+"/login", url.Values{"user": {"bob"}, "return_to": {to}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Location"); got != want {
			t.Errorf("return_to %q: Location %q, want %q", to, got, want)
		}
	}
}

// TestIDTokenNamesTheSignedInUser: with IDTokens, the code exchange of a
// grant with openid carries an ID token (OpenID Connect Core 1.0 section
// 3.1.3.3) whose signature verifies under the server's JWKS and whose iss,
// aud and sub are the issuer, the client and the signed-in user; a grant
// without openid gets none, and so does a refresh.
func TestIDTokenNamesTheSignedInUser(t *testing.T) {
	t.Parallel()
	a := NewAuthServer(t, AuthServerOptions{IDTokens: true, Scopes: []string{"openid", "mcp.read", "offline_access"}})
	a.RegisterClient("web", "s3cret", []string{testRedirect}, false)
	b := jarClient(t)
	if err := a.SignIn(b, "bob"); err != nil {
		t.Fatal(err)
	}
	raw := func(scope string) string {
		t.Helper()
		verifier, challenge := NewPKCE()
		q := authorizeQuery("web", challenge, "state-0123456789")
		q.Set("scope", scope)
		resp, err := b.Get(a.URL + "/authorize?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, _ := resp.Location()
		form := url.Values{"grant_type": {"authorization_code"}, "code": {loc.Query().Get("code")},
			"redirect_uri": {testRedirect}, "code_verifier": {verifier}}
		req, _ := http.NewRequest(http.MethodPost, a.URL+"/token", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("web", "s3cret")
		tr, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(tr.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
		s, _ := out["id_token"].(string)
		return s
	}
	if got := raw("mcp.read"); got != "" {
		t.Fatal("an ID token without the openid scope")
	}
	idt := raw("openid mcp.read")
	resp, err := http.Get(a.URL + "/jwks")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("jwks: %d keys, %v", len(set.Keys), err)
	}
	parsed, err := jwt.ParseSigned(idt, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("id token: %v", err)
	}
	var c jwt.Claims
	if err := parsed.Claims(set.Keys[0].Key, &c); err != nil {
		t.Fatalf("id token signature: %v", err)
	}
	if c.Subject != "bob" || c.Issuer != a.URL || !c.Audience.Contains("web") || c.Expiry == nil {
		t.Fatalf("id token claims %+v", c)
	}
}
