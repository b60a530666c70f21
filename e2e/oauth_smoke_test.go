package e2e

import (
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestOAuthHappyPath authorizes a provider end to end: a real fosite
// authorization server, a real go-sdk MCP server that requires its tokens,
// the real mcpauth over sockets, and a user agent following the redirects.
func TestOAuthHappyPath(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	s := Start(t, Options{Env: map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1"}})
	name := createProvider(t, s, s.AdminKey, "acme", "docs", mcp.URL(), nil)
	ctx := Ctx(t, s.AdminKey)
	start, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatalf("StartAuthorization: %v", err)
	}
	if !strings.HasPrefix(start.GetAuthorizationUrl(), s.HTTPURL+"/v1/oauth/authorize/") {
		t.Fatalf("authorization url %q is not on the gateway", start.GetAuthorizationUrl())
	}
	b := NewBrowser(t)
	code, body, final := b.Open(t, start.GetAuthorizationUrl())
	if code != 200 || !strings.Contains(body, "Authorization complete") {
		t.Fatalf("final page %s: %d %s", final, code, body)
	}
	st, err := s.OAuth().GetAuthorizationStatus(ctx, &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
	if err != nil || st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatalf("status %v, %v", st, err)
	}
	tok, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name})
	if err != nil {
		t.Fatalf("GetAccessToken: %v", err)
	}
	if _, ok := as.Validate(tok.GetAccessToken()); !ok {
		t.Fatal("the authorization server does not know the token mcpauth returned")
	}
	authz := as.RequestsTo("/authorize")
	if len(authz) != 1 {
		t.Fatalf("%d authorization requests", len(authz))
	}
	q := authz[0].Query
	for _, k := range []string{"state", "code_challenge", "resource", "client_id", "redirect_uri"} {
		if q.Get(k) == "" {
			t.Errorf("authorization request lacks %s", k)
		}
	}
	if q.Get("code_challenge_method") != "S256" {
		t.Errorf("code_challenge_method = %q", q.Get("code_challenge_method"))
	}
	// The callback URL cannot be replayed.
	cb := b.Visited[len(b.Visited)-1]
	code, body, _ = b.Open(t, cb.String())
	if code == 200 || !strings.Contains(body, "start the authorization again") {
		t.Fatalf("replayed callback: %d %s", code, body)
	}
}
