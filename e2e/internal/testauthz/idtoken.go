package testauthz

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/ory/fosite"
)

// idTokenSigner signs the ID tokens of an authorization server with
// AuthServerOptions.IDTokens: OpenID Connect Core 1.0 section 3.1.3.3, the
// token response of the authorization code flow carries an id_token when
// the openid scope was granted. Its claims (section 2) are iss (the
// issuer), sub (the signed-in user, login.go), aud (the client), exp and
// iat; it is signed with ES256 under a key served at {issuer}/jwks.
type idTokenSigner struct {
	key *ecdsa.PrivateKey
	kid string
}

func newIDTokenSigner() (*idTokenSigner, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &idTokenSigner{key: key, kid: rand.Text()[:12]}, nil
}

// jwks is the RFC 7517 key set of the signer's public key.
func (s *idTokenSigner) jwks() jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &s.key.PublicKey, KeyID: s.kid, Algorithm: "ES256", Use: "sig"}}}
}

// sign returns an ID token for subject, issued by issuer to clientID.
func (s *idTokenSigner) sign(issuer, subject, clientID string) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: s.key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", s.kid))
	if err != nil {
		return "", err
	}
	now := time.Now()
	return jwt.Signed(signer).Claims(map[string]any{"iss": issuer, "sub": subject, "aud": clientID,
		"iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix()}).Serialize()
}

// addIDToken adds an id_token to the response of an authorization code
// exchange whose grant includes openid, when the server issues ID tokens.
func (a *AuthServer) addIDToken(ar fosite.AccessRequester, resp fosite.AccessResponder) error {
	if a.idTokens == nil || !ar.GetGrantTypes().ExactOne("authorization_code") || !ar.GetGrantedScopes().Has("openid") {
		return nil
	}
	var subject string
	if s, ok := ar.GetSession().(*fosite.DefaultSession); ok {
		subject = s.Subject
	}
	tok, err := a.idTokens.sign(a.URL, subject, ar.GetClient().GetID())
	if err != nil {
		return err
	}
	resp.SetExtra("id_token", tok)
	return nil
}
