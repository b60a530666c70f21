package e2e

import (
	"net/url"
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// TestPublicURLFollowsHTTPAddr: with MCPAUTH_HTTP_ADDR=:9999 and no
// MCPAUTH_PUBLIC_URL, the authorization URL StartAuthorization hands out and
// the redirect_uri mcpauth sends to the authorization server (in dynamic
// registration and in the authorization request) are on port 9999. (The
// harness serves on its own listener; only the configured address counts
// here. The README walk-through test completes a whole flow this way.)
func TestPublicURLFollowsHTTPAddr(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	s := Start(t, Options{Env: oaAllowEnv("MCPAUTH_HTTP_ADDR", ":9999", "MCPAUTH_PUBLIC_URL", "")})
	f := &oaFlow{S: s, Ctx: Ctx(t, s.AdminKey)}
	f.Name = createProvider(t, s, s.AdminKey, "acme", "docs", mcp.URL(), nil)
	start := f.Start(t)
	if !strings.HasPrefix(start.GetAuthorizationUrl(), "http://localhost:9999/v1/oauth/authorize/") {
		t.Fatalf("authorization URL %q is not on the HTTP address's port", start.GetAuthorizationUrl())
	}
	const want = "http://localhost:9999" + callbackPath
	regs := as.RequestsTo("/register")
	if len(regs) != 1 || !strings.Contains(string(regs[0].Body), `"`+want+`"`) {
		t.Fatalf("registration requests %d, want one with redirect_uris [%q]", len(regs), want)
	}
	// Follow the handed-out URL on the port the harness really listens on.
	u, err := url.Parse(start.GetAuthorizationUrl())
	if err != nil {
		t.Fatal(err)
	}
	loc := oaToCallback(t, NewBrowser(t), s.HTTPURL+u.Path)
	if got := loc.Scheme + "://" + loc.Host + loc.Path; got != want {
		t.Fatalf("authorization server redirected to %q, want %q", got, want)
	}
	if auth := as.RequestsTo("/authorize"); len(auth) != 1 || auth[0].Param("redirect_uri") != want {
		t.Fatalf("authorization request's redirect_uri: %v", auth)
	}
}
