package oauthclient

import (
	"crypto"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/mcpauth/mcpauth/keypair"
)

// Client authentication with a key (RFC 7523 section 2.2) and the grant
// types this package sends besides the authorization code and refresh.
const (
	// AuthPrivateKeyJWT authenticates the client with a signed JWT
	// assertion (RFC 7523 section 2.2, OpenID Connect Core section 9).
	AuthPrivateKeyJWT = "private_key_jwt"
	// ClientAssertionType is the client_assertion_type of a JWT assertion.
	ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	// GrantClientCredentials is OAuth 2.1's client_credentials grant.
	GrantClientCredentials = "client_credentials"
	// GrantJWTBearer is the JWT bearer authorization grant (RFC 7523
	// section 2.1).
	GrantJWTBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"
)

// Signing algorithms of client assertions.
const (
	AlgES256 = "ES256"
	AlgRS256 = "RS256"
)

// assertionLifetime is how long a client assertion is valid: long enough
// for one request, short enough that a copy is soon useless (RFC 7523
// section 3 asks for an expiry; a minute is what most servers accept).
const assertionLifetime = 60 * time.Second

// ErrBadClientKey reports a private key that cannot sign client
// assertions: not PKCS#8 PEM, another key type or curve, too small, or an
// algorithm that does not fit it. The message never quotes the key.
var ErrBadClientKey = errors.New("unusable private key")

// ClientKey is a private key that signs client assertions. Its String
// never shows key material.
type ClientKey struct {
	priv   crypto.Signer
	alg    jose.SignatureAlgorithm
	kid    string
	signer jose.Signer
}

// String hides the key.
func (k *ClientKey) String() string { return "ClientKey(" + string(k.alg) + ", kid " + k.kid + ")" }

// ParseClientKey reads a PKCS#8 PEM private key: EC P-256 signs with
// ES256, RSA of at least 2048 bits with RS256. alg, when not empty, must
// name the key's algorithm.
func ParseClientKey(pemText, alg string) (*ClientKey, error) {
	key, want, err := keypair.Parse(pemText)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadClientKey, err)
	}
	if alg != "" && alg != want {
		return nil, fmt.Errorf("%w: the key signs with %s, not %s", ErrBadClientKey, want, alg)
	}
	return newClientKey(key, want)
}

// GenerateClientKey makes a new key for alg (ES256 when empty) and returns
// it with its PKCS#8 PEM form, for storing encrypted.
func GenerateClientKey(alg string) (*ClientKey, string, error) {
	key, alg, pemText, err := keypair.Generate(alg)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrBadClientKey, err)
	}
	k, err := newClientKey(key, alg)
	if err != nil {
		return nil, "", err
	}
	return k, pemText, nil
}

func newClientKey(key crypto.Signer, alg string) (*ClientKey, error) {
	pub := jose.JSONWebKey{Key: key.Public()}
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("%w: no thumbprint", ErrBadClientKey)
	}
	// The key id is the RFC 7638 thumbprint: stable for the key, and
	// derived from nothing but public data.
	kid := base64.RawURLEncoding.EncodeToString(tp)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("%w: cannot sign", ErrBadClientKey)
	}
	return &ClientKey{priv: key, alg: jose.SignatureAlgorithm(alg), kid: kid, signer: signer}, nil
}

// Algorithm is the key's signing algorithm, ES256 or RS256.
func (k *ClientKey) Algorithm() string { return string(k.alg) }

// KeyID is the key's RFC 7638 SHA-256 thumbprint, base64url.
func (k *ClientKey) KeyID() string { return k.kid }

// PublicJWK returns the public key as a JWK (RFC 7517) with kid, alg and
// use "sig", for a JWKS document. It holds no private part.
func (k *ClientKey) PublicJWK() ([]byte, error) {
	return json.Marshal(jose.JSONWebKey{Key: k.priv.Public(), KeyID: k.kid, Algorithm: string(k.alg), Use: "sig"})
}

// assertionClaims are the claims of RFC 7523 section 3.
type assertionClaims struct {
	jwt.Claims
}

// Assertion signs a client assertion (RFC 7523 sections 2.2 and 3): iss
// and sub the client id, aud the authorization server's issuer, iat now,
// exp a minute later, and a random jti so the server can refuse replays.
func (k *ClientKey) Assertion(clientID, audience string, now time.Time) (string, error) {
	if clientID == "" || audience == "" {
		return "", errors.New("client assertion: client id and audience are required")
	}
	c := jwt.Claims{
		Issuer:   clientID,
		Subject:  clientID,
		Audience: jwt.Audience{audience},
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(assertionLifetime)),
		ID:       rand.Text(),
	}
	s, err := jwt.Signed(k.signer).Claims(assertionClaims{c}).Serialize()
	if err != nil {
		return "", errors.New("client assertion: signing failed")
	}
	return s, nil
}
