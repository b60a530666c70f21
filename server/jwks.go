package server

import (
	"context"
	"net/http"

	"github.com/mcpauth/mcpauth/resname"
)

// JWKSPathPrefix is where a provider's public private_key_jwt key is
// served: JWKSPathPrefix + "{tenant}/{provider}". Authorization servers
// fetch it without credentials to verify mcpauth's client assertions.
const JWKSPathPrefix = "/v1/oauth/jwks/"

// JWKSSource returns a provider's public JWKS document.
// *providers.Service implements it.
type JWKSSource interface {
	JWKS(ctx context.Context, tenant, id string) ([]byte, error)
}

// JWKSURL returns the JWKS URL of a provider under publicURL.
func JWKSURL(publicURL string) func(tenant, id string) string {
	if publicURL == "" {
		return nil
	}
	return func(tenant, id string) string { return publicURL + JWKSPathPrefix + tenant + "/" + id }
}

// jwksHandler serves JWKS documents. It holds public keys only; a tenant
// or provider that does not exist, or has no key, is one and the same 404.
func jwksHandler(src JWKSSource) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tenant, id := r.PathValue("tenant"), r.PathValue("provider")
		if _, _, err := resname.ParseProvider("name", resname.ProviderName(tenant, id)); err != nil {
			http.NotFound(w, r)
			return
		}
		doc, err := src.JWKS(r.Context(), tenant, id)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Header().Set("Cache-Control", "public, max-age=300")
		_, _ = w.Write(doc)
	})
}
