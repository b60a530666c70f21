package oauthclient

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/secret"
)

var idpReg = &Registration{ClientID: "mcpauth", ClientSecret: secret.New("idp-secret")}

// TestExchangeIDToken: the RFC 8693 request as the ID-JAG draft profiles
// it, client_secret_basic, and the ID-JAG read from the answer.
func TestExchangeIDToken(t *testing.T) {
	t.Parallel()
	c, te, md := machineClient(t, http.StatusOK,
		`{"issued_token_type":"`+TokenTypeIDJAG+`","access_token":"h.p.s","token_type":"N_A","expires_in":300,"scope":"a"}`)
	jag, err := c.ExchangeIDToken(context.Background(), md, idpReg, secret.New("id.token.jwt"), "https://as.example", "https://mcp.example/mcp", []string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	if jag.Assertion.Reveal() != "h.p.s" || strings.Join(jag.Scopes, " ") != "a" || jag.ExpiresAt.IsZero() {
		t.Fatalf("jag = %+v", jag)
	}
	f := te.forms[0]
	for k, v := range map[string]string{"grant_type": GrantTokenExchange, "requested_token_type": TokenTypeIDJAG,
		"subject_token": "id.token.jwt", "subject_token_type": TokenTypeIDToken, "audience": "https://as.example",
		"resource": "https://mcp.example/mcp", "scope": "a b"} {
		if f.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, f.Get(k), v)
		}
	}
	if u, p, ok := (&http.Request{Header: te.headers[0]}).BasicAuth(); !ok || u != "mcpauth" || p != "idp-secret" || f.Has("client_secret") {
		t.Errorf("client authentication: basic %v %q, form %v", ok, u, f)
	}
	if strings.Contains(jag.Assertion.String(), "h.p.s") {
		t.Error("the assertion prints")
	}
}

// TestExchangeIDTokenAnswers: error codes come back as they are after one
// request; an answer of another token type, or without one, is no ID-JAG;
// 5xx is temporary.
func TestExchangeIDTokenAnswers(t *testing.T) {
	t.Parallel()
	for _, code := range []string{"invalid_grant", "invalid_target", "invalid_client", "access_denied"} {
		c, te, md := machineClient(t, http.StatusBadRequest, `{"error":"`+code+`","error_description":"the id token says x"}`)
		_, err := c.ExchangeIDToken(context.Background(), md, idpReg, secret.New("a.b.c"), "https://as.example", "", nil)
		var oe *OAuthError
		if !errors.As(err, &oe) || oe.Code != code || strings.Contains(err.Error(), "says") || len(te.forms) != 1 {
			t.Fatalf("%s: err = %v after %d requests", code, err, len(te.forms))
		}
		if te.forms[0].Has("resource") || te.forms[0].Has("scope") {
			t.Fatalf("%s: empty resource or scope sent: %v", code, te.forms[0])
		}
	}
	for name, body := range map[string]string{
		"access token type": `{"issued_token_type":"urn:ietf:params:oauth:token-type:access_token","access_token":"x","token_type":"Bearer"}`,
		"no type":           `{"access_token":"x","token_type":"N_A"}`,
		"no token":          `{"issued_token_type":"` + TokenTypeIDJAG + `","token_type":"N_A"}`,
	} {
		c, _, md := machineClient(t, http.StatusOK, body)
		if _, err := c.ExchangeIDToken(context.Background(), md, idpReg, secret.New("a.b.c"), "https://as.example", "", nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	c, _, md := machineClient(t, http.StatusBadGateway, `{}`)
	var temp *TemporaryError
	if _, err := c.ExchangeIDToken(context.Background(), md, idpReg, secret.New("a.b.c"), "https://as.example", "", nil); !errors.As(err, &temp) {
		t.Fatalf("502: err = %v", err)
	}
}

// TestIdentityProviderMetadata: a token-exchange-only identity provider
// may omit the authorization endpoint (RFC 8414 section 2); a document
// naming another issuer is not used (section 3.3).
func TestIdentityProviderMetadata(t *testing.T) {
	t.Parallel()
	var issuer string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/.well-known/oauth-authorization-server":
			_, _ = w.Write([]byte(`{"issuer":"` + issuer + `","token_endpoint":"` + issuer + `/token","grant_types_supported":["` + GrantTokenExchange + `"]}`))
		case "/other/.well-known/openid-configuration", "/.well-known/openid-configuration/other":
			_, _ = w.Write([]byte(`{"issuer":"https://elsewhere.example","token_endpoint":"https://elsewhere.example/token"}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	issuer = srv.URL
	c, err := New(srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	md, err := c.IdentityProviderMetadata(context.Background(), issuer, nil)
	if err != nil || md.TokenEndpoint != issuer+"/token" || len(md.GrantTypes) != 1 {
		t.Fatalf("metadata %+v, %v", md, err)
	}
	if _, err := c.IdentityProviderMetadata(context.Background(), issuer+"/other", nil); !errors.Is(err, ErrIssuerMismatch) {
		t.Fatalf("other issuer: err = %v, want ErrIssuerMismatch", err)
	}
}
