package oauthclient

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/dpop"
	"github.com/mcpauth/mcpauth/secret"
)

// dpopTokenServer answers token requests with tokenType and revocations
// with 200, recording the DPoP header of each request by path.
type dpopTokenServer struct {
	mu        sync.Mutex
	tokenType string
	access    string // "at" when empty
	proofs    map[string][]string
}

func (s *dpopTokenServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	s.mu.Lock()
	s.proofs[r.URL.Path] = append(s.proofs[r.URL.Path], r.Header.Get("DPoP"))
	typ, access := s.tokenType, s.access
	s.mu.Unlock()
	if access == "" {
		access = "at"
	}
	w.Header().Set("Content-Type", "application/json")
	if r.URL.Path == "/revoke" {
		return
	}
	_, _ = io.WriteString(w, `{"access_token":"`+access+`","refresh_token":"rt","token_type":"`+typ+`","expires_in":60}`)
}

// TestDPoPTokenRequests: with a DPoP key, every grant's token request
// carries a proof for the token endpoint, only a DPoP token_type is
// accepted (no Bearer fallback, RFC 9449 section 5), and revocation
// carries none.
func TestDPoPTokenRequests(t *testing.T) {
	t.Parallel()
	srv := &dpopTokenServer{tokenType: "DPoP", proofs: map[string][]string{}}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	c := newTestClient(t)
	key, err := dpop.Generate("")
	if err != nil {
		t.Fatal(err)
	}
	md := &Metadata{Issuer: ts.URL, TokenEndpoint: ts.URL + "/token", RevocationEndpoint: ts.URL + "/revoke"}
	reg := &Registration{Method: domain.RegPreRegistered, ClientID: "c", ClientSecret: secret.New("s"), AuthMethod: AuthClientSecretBasic, DPoP: key}
	ctx := context.Background()
	calls := map[string]func() (*Tokens, error){
		"client_credentials": func() (*Tokens, error) { return c.ClientCredentials(ctx, md, reg, nil, "") },
		"jwt_bearer": func() (*Tokens, error) {
			return c.JWTBearer(ctx, md, &Registration{DPoP: key}, secret.New("assertion"), nil, "")
		},
		"refresh": func() (*Tokens, error) { return c.Refresh(ctx, md, reg, secret.New("rt0"), "") },
		"exchange": func() (*Tokens, error) {
			return c.Exchange(ctx, md, reg, secret.New("code"), secret.New("verifier"), "https://cb.example/cb", "", nil)
		},
	}
	for name, call := range calls {
		before := len(srv.proofs["/token"])
		tok, err := call()
		if err != nil || tok.TokenType != dpop.Scheme {
			t.Fatalf("%s: %v, %+v", name, err, tok)
		}
		got := srv.proofs["/token"]
		if len(got) != before+1 || got[before] == "" {
			t.Fatalf("%s: token request without a proof", name)
		}
		jt, err := jwt.ParseSigned(got[before], []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			t.Fatal(err)
		}
		var cl struct {
			HTM string `json:"htm"`
			HTU string `json:"htu"`
		}
		if err := jt.Claims(jt.Headers[0].JSONWebKey.Key, &cl); err != nil || cl.HTM != "POST" || cl.HTU != md.TokenEndpoint {
			t.Errorf("%s: proof claims %+v, %v", name, cl, err)
		}
	}
	srv.mu.Lock()
	srv.tokenType = "Bearer"
	srv.mu.Unlock()
	for name, call := range calls {
		if _, err := call(); !errors.Is(err, ErrUnsupportedTokenType) {
			t.Errorf("%s: a Bearer answer to a DPoP request: %v, want ErrUnsupportedTokenType", name, err)
		}
	}
	// A JWT access token whose cnf.jkt names another key is refused; one
	// naming this key is taken (RFC 9449 section 6.1).
	jwtWith := func(jkt string) string {
		enc := base64.RawURLEncoding.EncodeToString
		return enc([]byte(`{"alg":"none"}`)) + "." + enc([]byte(`{"sub":"s","cnf":{"jkt":"`+jkt+`"}}`)) + ".sig"
	}
	other, _ := dpop.Generate("")
	for jkt, want := range map[string]error{other.Thumbprint(): ErrWrongBinding, key.Thumbprint(): nil} {
		srv.mu.Lock()
		srv.tokenType, srv.access = "DPoP", jwtWith(jkt)
		srv.mu.Unlock()
		for name, call := range calls {
			if _, err := call(); !errors.Is(err, want) {
				t.Errorf("%s with cnf.jkt %s: %v, want %v", name, jkt, err, want)
			}
		}
	}
	if err := c.Revoke(ctx, md, reg, secret.New("rt"), "refresh_token"); err != nil {
		t.Fatal(err)
	}
	if p := srv.proofs["/revoke"]; len(p) != 1 || p[0] != "" {
		t.Errorf("revocation proofs %q, want none", p)
	}
}
