// Package dpop is the client side of OAuth 2.0 Demonstrating Proof of
// Possession (RFC 9449): a key pair that signs DPoP proofs, the proofs
// themselves (section 4.2), the server nonces a client must echo (sections
// 8 and 9), and an http.RoundTripper that puts a fresh proof on every
// token request and retries once when the authorization server asks for a
// nonce.
//
// The private key never leaves a Key: its String shows only the algorithm
// and the public thumbprint, and PEM is the one way out, for sealing.
package dpop

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/mcpauth/mcpauth/keypair"
	"github.com/mcpauth/mcpauth/secret"
)

// Signing algorithms of DPoP proofs this package makes.
const (
	AlgES256 = "ES256"
	AlgRS256 = "RS256"
)

// Algorithms lists the algorithms a Key can sign with, preferred first.
var Algorithms = []string{AlgES256, AlgRS256}

// ProofType is the typ header of a DPoP proof (RFC 9449 section 4.2).
const ProofType = "dpop+jwt"

// Scheme is the authorization scheme of a DPoP-bound access token (RFC
// 9449 section 7.1) and the token_type a token endpoint answers with
// (section 5).
const Scheme = "DPoP"

// Header names of RFC 9449.
const (
	// HeaderProof carries a proof on a request (section 4.1).
	HeaderProof = "DPoP"
	// HeaderNonce carries a server nonce on a response (section 8.1).
	HeaderNonce = "DPoP-Nonce"
)

// ErrUseNonce is the error code of a server that wants a nonce in the
// proof (RFC 9449 sections 8 and 9).
const ErrUseNonce = "use_dpop_nonce"

// ErrBadKey reports a stored key that cannot sign proofs. The message
// never quotes the key.
var ErrBadKey = errors.New("unusable DPoP key")

// Key is a DPoP key pair. Its String never shows the private part.
type Key struct {
	alg    jose.SignatureAlgorithm
	jkt    string
	pub    crypto.PublicKey
	pem    secret.Secret
	signer jose.Signer
}

// String hides the key.
func (k *Key) String() string { return "dpop.Key(" + string(k.alg) + ", jkt " + k.jkt + ")" }

// Generate makes a new key for alg (ES256 when empty).
func Generate(alg string) (*Key, error) {
	priv, alg, pemText, err := keypair.Generate(alg)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	return newKey(priv, alg, pemText)
}

// Parse reads a key stored by PEM.
func Parse(pemText secret.Secret) (*Key, error) {
	priv, alg, err := keypair.Parse(pemText.Reveal())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	return newKey(priv, alg, pemText.Reveal())
}

func newKey(priv crypto.Signer, alg, pemText string) (*Key, error) {
	tp, err := (&jose.JSONWebKey{Key: priv.Public()}).Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("%w: no thumbprint", ErrBadKey)
	}
	// RFC 9449 section 4.2: the public key goes in the jwk header, and the
	// typ header is dpop+jwt; no kid (the jwk is the identification).
	opts := (&jose.SignerOptions{EmbedJWK: true}).WithType(ProofType)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: priv}, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot sign", ErrBadKey)
	}
	return &Key{alg: jose.SignatureAlgorithm(alg), jkt: base64.RawURLEncoding.EncodeToString(tp),
		pub: priv.Public(), pem: secret.New(pemText), signer: signer}, nil
}

// Algorithm is the key's signing algorithm.
func (k *Key) Algorithm() string { return string(k.alg) }

// Thumbprint is the key's RFC 7638 SHA-256 thumbprint, base64url: the
// jkt a server binds tokens to (RFC 9449 section 6.1).
func (k *Key) Thumbprint() string { return k.jkt }

// PEM is the PKCS#8 PEM private key, for sealing. Nothing else may use it.
func (k *Key) PEM() secret.Secret { return k.pem }

// PublicJWK is the public key as a JWK; it holds no private part.
func (k *Key) PublicJWK() ([]byte, error) {
	return json.Marshal(jose.JSONWebKey{Key: k.pub, Algorithm: string(k.alg), Use: "sig"})
}

// proofClaims are the claims of RFC 9449 section 4.2.
type proofClaims struct {
	ID       string           `json:"jti"`
	Method   string           `json:"htm"`
	URI      string           `json:"htu"`
	IssuedAt *jwt.NumericDate `json:"iat"`
	ATH      string           `json:"ath,omitempty"`
	Nonce    string           `json:"nonce,omitempty"`
}

// Proof signs a DPoP proof (RFC 9449 section 4.2) for one request: a
// random jti, htm the method, htu the target URI without query and
// fragment, iat now, ath the hash of accessToken when one is presented
// (section 4.2, for resource requests) and nonce when the server gave one.
func (k *Key) Proof(method, target string, accessToken secret.Secret, nonce string, now time.Time) (string, error) {
	htu, err := HTU(target)
	if err != nil {
		return "", err
	}
	if method == "" || strings.ContainsAny(method, " \t\r\n") {
		return "", errors.New("dpop proof: invalid method")
	}
	c := proofClaims{ID: rand.Text(), Method: method, URI: htu, IssuedAt: jwt.NewNumericDate(now), Nonce: nonce}
	if !accessToken.IsZero() {
		c.ATH = ATH(accessToken.Reveal())
	}
	s, err := jwt.Signed(k.signer).Claims(c).Serialize()
	if err != nil {
		return "", errors.New("dpop proof: signing failed")
	}
	return s, nil
}

// HTU is the htu claim of a request to target (RFC 9449 section 4.2: the
// target URI without query and fragment parts).
func HTU(target string) (string, error) {
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", errors.New("dpop proof: the target must be an absolute http(s) URL")
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
	u.User = nil
	return u.String(), nil
}

// ATH is the ath claim for an access token: base64url of its SHA-256
// (RFC 9449 section 4.2).
func ATH(accessToken string) string {
	sum := sha256.Sum256([]byte(accessToken))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// Supported picks the algorithm to sign with from an authorization
// server's dpop_signing_alg_values_supported: the first of Algorithms the
// server lists, "" when none.
func Supported(serverAlgs []string) string {
	for _, a := range Algorithms {
		if slices.Contains(serverAlgs, a) {
			return a
		}
	}
	return ""
}
