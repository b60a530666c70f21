package oauthclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/mcpauth/mcpauth/secret"
)

func pkcs8(tb testing.TB, key any) string {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func TestParseClientKey(t *testing.T) {
	t.Parallel()
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	pkcs1 := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsa2048)}))
	for _, tc := range []struct {
		name, pem, alg, want string
	}{
		{"p256", pkcs8(t, p256), "", AlgES256},
		{"p256 named", pkcs8(t, p256), AlgES256, AlgES256},
		{"rsa2048", pkcs8(t, rsa2048), "", AlgRS256},
		{"p384 refused", pkcs8(t, p384), "", ""},
		{"rsa1024 refused", pkcs8(t, rsa1024), "", ""},
		{"pkcs1 refused", pkcs1, "", ""},
		{"wrong alg", pkcs8(t, p256), AlgRS256, ""},
		{"garbage", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "", ""},
		{"two blocks", pkcs8(t, p256) + pkcs8(t, p256), "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseClientKey(tc.pem, tc.alg)
			if tc.want == "" {
				if !errors.Is(err, ErrBadClientKey) {
					t.Fatalf("err = %v, want ErrBadClientKey", err)
				}
				if body := strings.Split(tc.pem, "\n")[1]; strings.Contains(err.Error(), body) {
					t.Fatal("the error quotes the key")
				}
				return
			}
			if err != nil || k.Algorithm() != tc.want || k.KeyID() == "" {
				t.Fatalf("ParseClientKey = %v, %v", k, err)
			}
			if strings.Contains(k.String(), "PRIVATE") {
				t.Fatal("String shows key material")
			}
		})
	}
}

// TestClientAssertion checks RFC 7523 section 3's claims and that the
// public JWK verifies the signature and holds no private part.
func TestClientAssertion(t *testing.T) {
	t.Parallel()
	for _, alg := range []string{AlgES256, AlgRS256} {
		k, pemText, err := GenerateClientKey(alg)
		if err != nil {
			t.Fatal(err)
		}
		if again, err := ParseClientKey(pemText, alg); err != nil || again.KeyID() != k.KeyID() {
			t.Fatalf("the generated PEM does not parse back to the same key: %v", err)
		}
		raw, _ := k.PublicJWK()
		var pub jose.JSONWebKey
		if err := json.Unmarshal(raw, &pub); err != nil || !pub.IsPublic() || pub.KeyID != k.KeyID() {
			t.Fatalf("public JWK %s: %v", raw, err)
		}
		now := time.Now()
		var jtis []string
		for range 2 {
			a, err := k.Assertion("client-1", "https://as.example", now)
			if err != nil {
				t.Fatal(err)
			}
			tok, err := jwt.ParseSigned(a, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
			if err != nil {
				t.Fatal(err)
			}
			if tok.Headers[0].KeyID != k.KeyID() {
				t.Errorf("kid = %q", tok.Headers[0].KeyID)
			}
			var c jwt.Claims
			if err := tok.Claims(pub, &c); err != nil {
				t.Fatalf("%s: signature: %v", alg, err)
			}
			if err := c.ValidateWithLeeway(jwt.Expected{Issuer: "client-1", Subject: "client-1", AnyAudience: jwt.Audience{"https://as.example"}, Time: now}, 0); err != nil {
				t.Fatalf("claims: %v", err)
			}
			if c.Expiry.Time().Sub(c.IssuedAt.Time()) != assertionLifetime || c.ID == "" {
				t.Fatalf("exp %v iat %v jti %q", c.Expiry, c.IssuedAt, c.ID)
			}
			jtis = append(jtis, c.ID)
		}
		if jtis[0] == jtis[1] {
			t.Fatal("jti repeated")
		}
	}
}

// tokenEndpoint answers every request with status and body and records
// the forms and headers.
type tokenEndpoint struct {
	mu      sync.Mutex
	forms   []url.Values
	headers []http.Header
	status  int
	body    string
}

func (e *tokenEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	e.mu.Lock()
	e.forms, e.headers = append(e.forms, r.PostForm), append(e.headers, r.Header.Clone())
	status, body := e.status, e.body
	e.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

func machineClient(t *testing.T, status int, body string) (*Client, *tokenEndpoint, *Metadata) {
	t.Helper()
	te := &tokenEndpoint{status: status, body: body}
	srv := httptest.NewServer(te)
	t.Cleanup(srv.Close)
	c, err := New(srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	return c, te, &Metadata{Issuer: srv.URL, TokenEndpoint: srv.URL + "/token", RevocationEndpoint: srv.URL + "/revoke"}
}

// TestGrantErrorsAsTheyAre: every OAuth error of a grant without a person
// comes back with its own code, after one request; 5xx is temporary.
func TestGrantErrorsAsTheyAre(t *testing.T) {
	t.Parallel()
	for _, code := range []string{"invalid_grant", "invalid_scope", "unauthorized_client", "invalid_client", "unsupported_grant_type"} {
		c, te, md := machineClient(t, http.StatusBadRequest, `{"error":"`+code+`","error_description":"secret detail"}`)
		_, err := c.JWTBearer(context.Background(), md, nil, secret.New("a.b.c"), []string{"s"}, "https://mcp.example/")
		var oe *OAuthError
		if !errors.As(err, &oe) || oe.Code != code || strings.Contains(err.Error(), "secret detail") {
			t.Fatalf("%s: err = %v", code, err)
		}
		if len(te.forms) != 1 || te.forms[0].Get("grant_type") != GrantJWTBearer || te.forms[0].Get("assertion") != "a.b.c" ||
			te.forms[0].Get("scope") != "s" || te.forms[0].Get("resource") != "https://mcp.example/" {
			t.Fatalf("%s: forms = %v", code, te.forms)
		}
		if te.forms[0].Has("client_id") || te.headers[0].Get("Authorization") != "" {
			t.Fatalf("%s: a grant without a client sent client authentication", code)
		}
	}
	c, _, md := machineClient(t, http.StatusServiceUnavailable, `{"error":"temporarily_unavailable"}`)
	_, err := c.ClientCredentials(context.Background(), md, &Registration{ClientID: "c", ClientSecret: secret.New("s")}, nil, "")
	var temp *TemporaryError
	if !errors.As(err, &temp) {
		t.Fatalf("503: err = %v, want *TemporaryError", err)
	}
}

// TestPrivateKeyJWTOnRefreshAndCredentials: a client with a key
// authenticates with an assertion (aud = the issuer) on client
// credentials and on refresh, never with a secret.
func TestPrivateKeyJWTOnRefreshAndCredentials(t *testing.T) {
	t.Parallel()
	c, te, md := machineClient(t, http.StatusOK, `{"access_token":"at","token_type":"Bearer","expires_in":60}`)
	k, _, err := GenerateClientKey(AlgES256)
	if err != nil {
		t.Fatal(err)
	}
	reg := &Registration{ClientID: "c1", ClientKey: k}
	if _, err := c.ClientCredentials(context.Background(), md, reg, []string{"a", "b"}, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Refresh(context.Background(), md, reg, secret.New("rt"), ""); err != nil {
		t.Fatal(err)
	}
	raw, _ := k.PublicJWK()
	var pub jose.JSONWebKey
	_ = json.Unmarshal(raw, &pub)
	for i, f := range te.forms {
		if f.Get("client_assertion_type") != ClientAssertionType || f.Get("client_id") != "c1" || f.Has("client_secret") || te.headers[i].Get("Authorization") != "" {
			t.Fatalf("request %d: form %v", i, f)
		}
		tok, err := jwt.ParseSigned(f.Get("client_assertion"), []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			t.Fatal(err)
		}
		var cl jwt.Claims
		if err := tok.Claims(pub, &cl); err != nil || len(cl.Audience) != 1 || cl.Audience[0] != md.Issuer {
			t.Fatalf("request %d: aud %v, %v", i, cl.Audience, err)
		}
	}
	if g := te.forms[0].Get("grant_type"); g != GrantClientCredentials || te.forms[0].Get("scope") != "a b" {
		t.Fatalf("grant_type %q scope %q", g, te.forms[0].Get("scope"))
	}
}

// TestPrivateKeyJWTOnCodeExchange: an authorization-code client holding
// a key authenticates the code exchange with an assertion, not a secret.
func TestPrivateKeyJWTOnCodeExchange(t *testing.T) {
	t.Parallel()
	c, te, md := machineClient(t, http.StatusOK, `{"access_token":"at","token_type":"Bearer","expires_in":60,"refresh_token":"rt"}`)
	k, _, err := GenerateClientKey(AlgRS256)
	if err != nil {
		t.Fatal(err)
	}
	reg := &Registration{ClientID: "web", ClientKey: k, RedirectURI: "https://mcpauth.example/cb"}
	if _, err := c.Exchange(context.Background(), md, reg, secret.New("code"), secret.New("verifier"), reg.RedirectURI, "", nil); err != nil {
		t.Fatal(err)
	}
	f := te.forms[0]
	if f.Get("grant_type") != "authorization_code" || f.Get("client_assertion_type") != ClientAssertionType || f.Get("client_assertion") == "" ||
		f.Has("client_secret") || te.headers[0].Get("Authorization") != "" || f.Get("client_id") != "web" {
		t.Fatalf("exchange form %v, Authorization %q", f, te.headers[0].Get("Authorization"))
	}
	raw, _ := k.PublicJWK()
	var pub jose.JSONWebKey
	_ = json.Unmarshal(raw, &pub)
	tok, err := jwt.ParseSigned(f.Get("client_assertion"), []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	var cl jwt.Claims
	if err := tok.Claims(pub, &cl); err != nil || cl.Issuer != "web" || cl.Audience[0] != md.Issuer {
		t.Fatalf("assertion claims %+v: %v", cl, err)
	}
}
