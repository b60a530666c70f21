package keyring

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"testing"
)

// The 200-byte field stands for a typical encrypted value: a server URL with
// a query string, or a short OAuth token.
var field200 = bytes.Repeat([]byte("t"), 200)

func BenchmarkSeal200(b *testing.B) {
	k := mustParse(b, specBA)
	mustSeal(b, k, scope, field200) // warm the per-tenant cache
	b.SetBytes(int64(len(field200)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Seal(scope, field200); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen200(b *testing.B) {
	k := mustParse(b, specBA)
	ct := mustSeal(b, k, scope, field200)
	b.SetBytes(int64(len(field200)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Open(scope, ct); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTenantKeySetup measures the one-off cost of a tenant's first use
// (HKDF derivation and GCM setup), which the cache removes from later calls.
func BenchmarkTenantKeySetup(b *testing.B) {
	k := mustParse(b, specBA)
	b.ReportAllocs()
	for b.Loop() {
		dek, err := k.deriveDEK(2, "tenant")
		if err != nil {
			b.Fatal(err)
		}
		block, err := aes.NewCipher(dek)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := cipher.NewGCM(block); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFingerprint(b *testing.B) {
	k := mustParse(b, specBA)
	v := []byte("https://mcp.example.com/mcp")
	b.ReportAllocs()
	for b.Loop() {
		_ = k.Fingerprint("t1", "server_url", v)
	}
}

// The baseline is Dify's scheme for provider credentials: every value gets a
// fresh AES key (Dify: AES-EAX with 16 bytes; GCM here, the closest standard
// library mode), and that key is wrapped with the tenant's RSA-2048 key using
// OAEP with SHA-1 (pycryptodome's PKCS1_OAEP default). Stored value: wrapped
// key | nonce | ciphertext and tag.
type difyCiphertext struct {
	wrappedKey, nonce, sealed []byte
}

func difySeal(pub *rsa.PublicKey, plaintext []byte) (difyCiphertext, error) {
	key := make([]byte, 16)
	if _, err := rand.Read(key); err != nil {
		return difyCiphertext{}, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return difyCiphertext{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return difyCiphertext{}, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return difyCiphertext{}, err
	}
	wrapped, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pub, key, nil)
	if err != nil {
		return difyCiphertext{}, err
	}
	return difyCiphertext{wrapped, nonce, aead.Seal(nil, nonce, plaintext, nil)}, nil
}

func difyOpen(priv *rsa.PrivateKey, c difyCiphertext) ([]byte, error) {
	key, err := rsa.DecryptOAEP(sha1.New(), nil, priv, c.wrappedKey, nil)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return aead.Open(nil, c.nonce, c.sealed, nil)
}

func difyKey(b *testing.B) *rsa.PrivateKey {
	b.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	priv.Precompute()
	return priv
}

func BenchmarkDifySeal200(b *testing.B) {
	priv := difyKey(b)
	b.SetBytes(int64(len(field200)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := difySeal(&priv.PublicKey, field200); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDifyOpen200(b *testing.B) {
	priv := difyKey(b)
	c, err := difySeal(&priv.PublicKey, field200)
	if err != nil {
		b.Fatal(err)
	}
	if pt, err := difyOpen(priv, c); err != nil || !bytes.Equal(pt, field200) {
		b.Fatalf("baseline round trip failed: %v", err)
	}
	b.SetBytes(int64(len(field200)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := difyOpen(priv, c); err != nil {
			b.Fatal(err)
		}
	}
}
