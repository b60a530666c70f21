package e2e

import (
	"net/http"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestChallengeAuthorizationServerMoves: between two flows the MCP server's
// protected-resource metadata starts naming another authorization server
// (RFC 9728 authorization_servers) and accepts only its tokens. The held
// grant becomes REAUTH_REQUIRED with reason AUTHORIZATION_SERVER_CHANGED
// (audited), and the next authorization re-discovers and registers with the
// new server: the old server's client id and tokens never reach it (MCP
// authorization: clients keep registration state per authorization server).
func TestChallengeAuthorizationServerMoves(t *testing.T) {
	t.Parallel()
	as1 := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, Scopes: []string{"mcp:basic"}})
	as2 := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, Scopes: []string{"mcp:basic"}})
	srv := testauthz.NewSelectiveServer(t, testauthz.SelectiveOptions{Auth: as1, BasicScope: "mcp:basic"})
	s := Start(t, Options{Env: oaAllowEnv()})
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "acme", "moving", srv.URL(), nil)
	challengeFirst(t, s, name)
	authorize := func() {
		t.Helper()
		st, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
		if err != nil {
			t.Fatalf("StartAuthorization: %v", err)
		}
		if p := oaOpen(t, NewBrowser(t), st.GetAuthorizationUrl()); p.Code != http.StatusOK || p.Title != "Authorization complete" {
			t.Fatalf("flow: %d %q %q", p.Code, p.Title, p.Reason)
		}
	}
	authorize()
	if _, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name}); err != nil {
		t.Fatalf("RefreshTools at the first server: %v", err)
	}
	oldClient := as1.RequestsTo("/authorize")[0].Query.Get("client_id")

	srv.SetAuth(as2)
	// The first server's token is refused now (401, refreshed once at the
	// first server, refused again).
	_, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name})
	tlWantReason(t, err, codes.FailedPrecondition, "REAUTH_REQUIRED")
	// Reading the metadata again (DiagnoseProvider) detects the move.
	if _, err := s.OAuth().DiagnoseProvider(ctx, &mcpauthv1.DiagnoseProviderRequest{Name: name}); err != nil {
		t.Fatal(err)
	}
	st := tlStatus(t, s, name)
	if st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_REAUTH_REQUIRED || st.GetReason() != "AUTHORIZATION_SERVER_CHANGED" {
		t.Fatalf("status after the move = %v %q", st.GetStatus(), st.GetReason())
	}
	ev := oaWantEvent(t, s, "acme", "oauth.authorization_server.changed", "AUTHORIZATION_SERVER_CHANGED")
	if ev.GetDetails()["old_issuer"] != as1.URL || ev.GetDetails()["new_issuer"] != as2.URL {
		t.Fatalf("event details %v", ev.GetDetails())
	}

	authorize()
	if n := as2.Counts("/register"); n != 1 {
		t.Fatalf("%d registrations at the new server, want 1", n)
	}
	for _, r := range as2.Requests() {
		if r.Param("client_id") == oldClient || r.Query.Get("client_id") == oldClient {
			t.Fatalf("the old server's client id reached the new server: %s %s", r.Method, r.Path)
		}
	}
	if _, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name}); err != nil {
		t.Fatalf("RefreshTools at the new server: %v", err)
	}
}
