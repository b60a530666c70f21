// Package keypair makes and reads the asymmetric signing keys mcpauth
// keeps sealed (private_key_jwt client keys, DPoP keys): EC P-256 for
// ES256 and RSA of at least 2048 bits for RS256, stored as PKCS#8 PEM.
// Error messages say what is wrong with a key, never its content.
package keypair

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// The signing algorithms (RFC 7518 section 3.1).
const (
	ES256 = "ES256"
	RS256 = "RS256"
)

// minRSABits is the smallest RSA modulus accepted (RFC 7518 section 3.3).
const minRSABits = 2048

// Generate makes a key for alg (ES256 when empty) and returns it with its
// algorithm and its PKCS#8 PEM form.
func Generate(alg string) (crypto.Signer, string, string, error) {
	var key crypto.Signer
	var err error
	switch alg {
	case "", ES256:
		alg = ES256
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RS256:
		key, err = rsa.GenerateKey(rand.Reader, minRSABits)
	default:
		return nil, "", "", errors.New("algorithm must be ES256 or RS256")
	}
	if err != nil {
		return nil, "", "", fmt.Errorf("generating a key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, "", "", fmt.Errorf("encoding a key: %w", err)
	}
	return key, alg, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), nil
}

// Parse reads one PKCS#8 PEM private key and returns it with the
// algorithm it signs with.
func Parse(pemText string) (crypto.Signer, string, error) {
	block, rest := pem.Decode([]byte(pemText))
	if block == nil || block.Type != "PRIVATE KEY" || len(bytes.TrimSpace(rest)) > 0 {
		return nil, "", errors.New("expected one PKCS#8 PEM block (BEGIN PRIVATE KEY)")
	}
	raw, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, "", errors.New("not a PKCS#8 private key")
	}
	switch p := raw.(type) {
	case *ecdsa.PrivateKey:
		if p.Curve != elliptic.P256() {
			return nil, "", errors.New("EC keys must use P-256 (ES256)")
		}
		return p, ES256, nil
	case *rsa.PrivateKey:
		if p.N.BitLen() < minRSABits {
			return nil, "", fmt.Errorf("RSA keys must have at least %d bits", minRSABits)
		}
		return p, RS256, nil
	}
	return nil, "", errors.New("only EC P-256 and RSA keys are supported")
}
