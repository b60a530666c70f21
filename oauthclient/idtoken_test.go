package oauthclient

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/mcpauth/mcpauth/secret"
)

// TestCheckIDToken: an ID token is accepted only with the flow's issuer,
// the client in its audience (azp when there are several), an expiry in
// the future and the expected subject; an error never quotes the token.
func TestCheckIDToken(t *testing.T) {
	t.Parallel()
	signer := idTokenSigner(t)
	now := time.Now()
	sign := func(mut func(c map[string]any)) secret.Secret {
		c := map[string]any{"iss": "https://as.example", "aud": "client-1", "sub": "alice-at-as",
			"exp": now.Add(5 * time.Minute).Unix(), "iat": now.Unix()}
		if mut != nil {
			mut(c)
		}
		s, err := jwt.Signed(signer).Claims(c).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return secret.New(s)
	}
	for _, tt := range []struct {
		name    string
		tok     secret.Secret
		ok      bool
		subject bool // the error is ErrIDTokenSubject
	}{
		{name: "valid", tok: sign(nil), ok: true},
		{name: "several audiences with azp", tok: sign(func(c map[string]any) { c["aud"] = []string{"client-1", "other"}; c["azp"] = "client-1" }), ok: true},
		{name: "other subject", tok: sign(func(c map[string]any) { c["sub"] = "mallory" }), subject: true},
		{name: "no subject", tok: sign(func(c map[string]any) { delete(c, "sub") }), subject: true},
		{name: "other issuer", tok: sign(func(c map[string]any) { c["iss"] = "https://evil.example" })},
		{name: "other audience", tok: sign(func(c map[string]any) { c["aud"] = "client-2" })},
		{name: "several audiences without azp", tok: sign(func(c map[string]any) { c["aud"] = []string{"client-1", "other"} })},
		{name: "expired", tok: sign(func(c map[string]any) { c["exp"] = now.Add(-2 * time.Minute).Unix() })},
		{name: "no exp", tok: sign(func(c map[string]any) { delete(c, "exp") })},
		{name: "none", tok: secret.Secret{}},
		{name: "not a JWT", tok: secret.New("opaque-token-value")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := CheckIDToken(tt.tok, "https://as.example", "client-1", "alice-at-as", now)
			if tt.ok != (err == nil) {
				t.Fatalf("CheckIDToken = %v, want ok=%v", err, tt.ok)
			}
			if tt.subject != errors.Is(err, ErrIDTokenSubject) {
				t.Fatalf("CheckIDToken = %v, want subject mismatch=%v", err, tt.subject)
			}
			if err != nil && !tt.tok.IsZero() && strings.Contains(err.Error(), tt.tok.Reveal()[:min(20, len(tt.tok.Reveal()))]) {
				t.Fatal("the error quotes the token")
			}
		})
	}
}

// TestReadIDTokenUnverified: iss and sub are read from any signed ID
// token (the signature is the issuer's to check); a token without them,
// with an oversized or non-printable sub, or unsigned, is refused, and an
// error never quotes the token.
func TestReadIDTokenUnverified(t *testing.T) {
	t.Parallel()
	signer := idTokenSigner(t)
	sign := func(c map[string]any) secret.Secret {
		s, err := jwt.Signed(signer).Claims(c).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return secret.New(s)
	}
	got, err := ReadIDTokenUnverified(sign(map[string]any{"iss": "https://idp.example", "sub": "00u1", "email": "a@example.com"}))
	if err != nil || got.Issuer != "https://idp.example" || got.Subject != "00u1" || got.All["email"] != "a@example.com" {
		t.Fatalf("ReadIDTokenUnverified = %+v, %v", got, err)
	}
	hs, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte("client-secret-of-32-bytes-or-more!!")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	hsTok, err := jwt.Signed(hs).Claims(map[string]any{"iss": "https://idp.example", "sub": "00u2"}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ReadIDTokenUnverified(secret.New(hsTok)); err != nil || got.Subject != "00u2" {
		t.Fatalf("an HS256 ID token (OpenID Connect Core 1.0 section 10.1): %+v, %v", got, err)
	}
	unsigned := "eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIiwic3ViIjoiMDB1MSJ9."
	for name, tok := range map[string]secret.Secret{
		"no sub":          sign(map[string]any{"iss": "https://idp.example"}),
		"no iss":          sign(map[string]any{"sub": "00u1"}),
		"sub not string":  sign(map[string]any{"iss": "https://idp.example", "sub": 7}),
		"sub too long":    sign(map[string]any{"iss": "https://idp.example", "sub": strings.Repeat("a", 256)}),
		"sub with a NUL":  sign(map[string]any{"iss": "https://idp.example", "sub": "a\x00b"}),
		"alg none":        secret.New(unsigned),
		"not a JWT":       secret.New("opaque"),
		"iss with a line": sign(map[string]any{"iss": "https://idp.example\n", "sub": "00u1"}),
	} {
		_, err := ReadIDTokenUnverified(tok)
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if tok.Reveal() != "" && strings.Contains(err.Error(), tok.Reveal()) {
			t.Errorf("%s: error quotes the token", name)
		}
	}
}

// idTokenSigner signs test ID tokens with a fresh ES256 key.
func idTokenSigner(t *testing.T) jose.Signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return signer
}
