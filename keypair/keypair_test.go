package keypair

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
)

func pkcs8(t *testing.T, key any) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func TestGenerateParse(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"": ES256, ES256: ES256, RS256: RS256} {
		key, alg, text, err := Generate(in)
		if err != nil || alg != want {
			t.Fatalf("Generate(%q) = %q, %v", in, alg, err)
		}
		back, alg2, err := Parse(text)
		if err != nil || alg2 != want {
			t.Fatalf("Parse = %q, %v", alg2, err)
		}
		if !back.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
			t.Errorf("%s: parsed another key", want)
		}
	}
	if _, _, _, err := Generate("HS256"); err == nil {
		t.Error("HS256 generated")
	}
}

func TestParseRefuses(t *testing.T) {
	t.Parallel()
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	_, _, text, _ := Generate("")
	for name, in := range map[string]string{
		"not pem":     "hello",
		"two blocks":  text + text,
		"wrong type":  strings.Replace(text, "PRIVATE KEY", "EC PRIVATE KEY", 2),
		"garbage der": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
		"P-384":       pkcs8(t, p384),
		"RSA 1024":    pkcs8(t, small),
	} {
		_, _, err := Parse(in)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), "MII") || strings.Contains(err.Error(), "AAAA") {
			t.Errorf("%s: the error quotes the key: %v", name, err)
		}
	}
}
