package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"testing"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestPublicDocumentsUnauthenticated covers the two routes anyone may
// fetch without credentials, the per-provider Client ID Metadata Document
// (/v1/oauth/client-metadata/{tenant}/{provider}) and JWKS
// (/v1/oauth/jwks/{tenant}/{provider}):
//   - requests for made-up names never enter the shared read cache
//     (repository.CachedReads, emptied whole at 50,000 entries), so they
//     cannot flush the hot paths' cache;
//   - an existing provider's document and JWKS are served from its
//     plaintext columns alone: with every ciphertext of its row unreadable
//     they are still served, and they hold no secret (no header value,
//     no server URL, no private key);
//   - each client IP has its own limit (MCPAUTH_PUBLIC_DOCUMENT_RATE_PER_MINUTE;
//     X-Forwarded-For believed from a trusted proxy only), past which the
//     answer is a bare 429 with Retry-After.
func TestPublicDocumentsUnauthenticated(t *testing.T) {
	t.Parallel()
	const public = "https://auth.mcpauth.test"
	// 1200 a minute: a burst of 300, then 20 a second.
	s := Start(t, Options{Env: oaAllowEnv("MCPAUTH_PUBLIC_URL", public,
		"MCPAUTH_PUBLIC_DOCUMENT_RATE_PER_MINUTE", "1200", "MCPAUTH_TRUSTED_PROXIES", "127.0.0.1/32")})
	const headerSecret, serverURL = "hdr-secret-5b1e", "https://mcp.pubdocs.test/mcp?token=url-secret-77"
	name := createProvider(t, s, s.AdminKey, "pubdocs", "keyed", serverURL, func(p *mcpauthv1.Provider) {
		p.Headers = map[string]string{"X-Api-Key": headerSecret}
		p.OauthClient = &mcpauthv1.OAuthClient{PrivateKeyJwt: &mcpauthv1.ClientKey{Generate: true}}
	})

	get := func(t *testing.T, path, forwardedFor string) (int, http.Header, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, s.HTTPURL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if forwardedFor != "" {
			req.Header.Set("X-Forwarded-For", forwardedFor)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(body)
	}

	// Warm the cache with the provider (GetProvider reads through it).
	if _, err := s.Providers().GetProvider(Ctx(t, s.AdminKey), &mcpauthv1.GetProviderRequest{Name: name}); err != nil {
		t.Fatal(err)
	}
	cache := s.App.CachedReads()
	before := cache.Len()
	if before == 0 {
		t.Fatal("GetProvider left nothing in the read cache")
	}
	const random = 120
	for i := range random {
		b := make([]byte, 6)
		_, _ = rand.Read(b)
		tenant, id := "t"+hex.EncodeToString(b[:3]), "p"+hex.EncodeToString(b[3:])
		if i%3 == 0 {
			tenant = "pubdocs" // an existing tenant, a made-up provider
		}
		for _, path := range []string{"/v1/oauth/client-metadata/", "/v1/oauth/jwks/"} {
			if code, _, _ := get(t, path+tenant+"/"+id, ""); code != http.StatusNotFound {
				t.Fatalf("GET %s%s/%s = %d", path, tenant, id, code)
			}
		}
	}
	if after := cache.Len(); after > before {
		t.Fatalf("%d requests for made-up names grew the shared read cache from %d to %d entries", 2*random, before, after)
	}

	// Every ciphertext of the row unreadable: the documents need none.
	if err := s.Store().DB().Exec(`UPDATE providers SET server_url = ?, headers = ?, credential_secrets = ? WHERE tenant_id = ? AND id = ?`,
		[]byte("garbage"), []byte("garbage"), []byte("garbage"), "pubdocs", "keyed").Error; err != nil {
		t.Fatal(err)
	}
	docCode, _, doc := get(t, "/v1/oauth/client-metadata/pubdocs/keyed", "")
	jwksCode, jwksHeader, jwks := get(t, "/v1/oauth/jwks/pubdocs/keyed", "")
	if docCode != http.StatusOK || !strings.Contains(doc, `"client_id":"`+public+`/v1/oauth/client-metadata/pubdocs/keyed"`) ||
		!strings.Contains(doc, `"token_endpoint_auth_signing_alg":"ES256"`) || !strings.Contains(doc, `"jwks_uri":"`+public+`/v1/oauth/jwks/pubdocs/keyed"`) {
		t.Fatalf("document: %d %s", docCode, doc)
	}
	if jwksCode != http.StatusOK || jwksHeader.Get("Content-Type") != "application/jwk-set+json" || !strings.Contains(jwks, `"kty":"EC"`) {
		t.Fatalf("JWKS: %d %s", jwksCode, jwks)
	}
	for _, body := range []string{doc, jwks} {
		for _, leak := range []string{headerSecret, "url-secret", "mcp.pubdocs.test", "PRIVATE KEY", `"d":`, "X-Api-Key", "client_secret\":\""} {
			if strings.Contains(body, leak) {
				t.Fatalf("a public document holds %q: %s", leak, body)
			}
		}
	}

	// The limit: this address runs out; past it a bare 429 with
	// Retry-After, on both routes. Another client behind the trusted
	// proxy (127.0.0.1) has its own allowance.
	limited := 0
	for range 2000 {
		code, h, body := get(t, "/v1/oauth/jwks/pubdocs/keyed", "")
		if code == http.StatusTooManyRequests {
			if h.Get("Retry-After") == "" || body != "" {
				t.Fatalf("429 with Retry-After %q and body %q", h.Get("Retry-After"), body)
			}
			limited++
			break
		}
		if code != http.StatusOK {
			t.Fatalf("JWKS = %d", code)
		}
	}
	if limited == 0 {
		t.Fatal("2000 requests from one address were never limited")
	}
	if code, h, body := get(t, "/v1/oauth/client-metadata/pubdocs/keyed", ""); code != http.StatusTooManyRequests || h.Get("Retry-After") == "" || body != "" {
		t.Fatalf("document after the limit: %d %q %q", code, h.Get("Retry-After"), body)
	}
	if code, _, _ := get(t, "/v1/oauth/client-metadata/pubdocs/keyed", "203.0.113.9"); code != http.StatusOK {
		t.Fatalf("another client behind the trusted proxy: %d", code)
	}
}
