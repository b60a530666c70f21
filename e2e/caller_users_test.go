package e2e

import (
	"testing"

	"google.golang.org/grpc/codes"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// TestCallerLimitedToUsers: a callers-file entry with "users" acts only for
// the users it names. Acting for another user (starting an authorization,
// calling a tool, completing a flow) answers PERMISSION_DENIED with reason
// USER_NOT_ALLOWED before anything happens, and is audited as
// permission.denied naming the user; the named user and tenant-wide calls
// (no user) work. A platform backend without "users" acts for anyone.
func TestCallerLimitedToUsers(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	perms := []caller.Permission{caller.ProvidersRead, caller.ProvidersWrite, caller.Authorize, caller.TokensRead, caller.ToolsCall, caller.AuditRead}
	platform, platformKey := NewCaller(t, "platform", []string{"acme"}, perms...)
	agent, agentKey := NewCaller(t, "alice-agent", []string{"acme"}, caller.Authorize, caller.ToolsCall)
	agent.Users = []string{"alice", "team-a/*"}
	s := Start(t, Options{Env: map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1"},
		Callers: &caller.File{Callers: []caller.FileCaller{platform, agent}}})
	s.AdminKey = platformKey // the audit listing helpers use it
	name := createProvider(t, s, platformKey, "acme", "docs", mcp.URL(), nil)
	pctx, actx := Ctx(t, platformKey), Ctx(t, agentKey)

	for _, user := range []string{"alice", "team-a/carol"} {
		if _, err := s.OAuth().StartAuthorization(actx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: user}); err != nil {
			t.Fatalf("StartAuthorization for %s: %v", user, err)
		}
	}
	_, err := s.OAuth().StartAuthorization(actx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "bob"})
	tlWantReason(t, err, codes.PermissionDenied, "USER_NOT_ALLOWED")
	// The platform backend acts for bob, and authorizes the tenant-wide grant.
	st, err := s.OAuth().StartAuthorization(pctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "bob"})
	if err != nil {
		t.Fatalf("platform StartAuthorization for bob: %v", err)
	}
	if code, body, _ := NewBrowser(t).Open(t, st.GetAuthorizationUrl()); code != 200 {
		t.Fatalf("authorizing: %d %s", code, body)
	}

	_, err = s.Tools().CallTool(actx, &mcpauthv1.CallToolRequest{Name: name, Tool: "whoami", User: "bob"})
	tlWantReason(t, err, codes.PermissionDenied, "USER_NOT_ALLOWED")
	for _, user := range []string{"alice", ""} {
		if _, err := s.Tools().CallTool(actx, &mcpauthv1.CallToolRequest{Name: name, Tool: "whoami", User: user}); err != nil {
			t.Fatalf("CallTool for %q: %v", user, err)
		}
	}
	_, err = s.OAuth().CompleteAuthorization(actx, &mcpauthv1.CompleteAuthorizationRequest{Name: name, User: "bob", CompletionCode: "x"})
	tlWantReason(t, err, codes.PermissionDenied, "USER_NOT_ALLOWED")

	evs := tlWaitEvents(t, s, "acme", "", "permission.denied", 3, func(ev *mcpauthv1.AuditEvent) bool {
		return ev.GetReason() == "USER_NOT_ALLOWED" && ev.GetUser() == "bob" && ev.GetDetails()["user"] == "bob" && ev.GetActor() == "alice-agent" && ev.GetProvider() == name
	})
	methods := map[string]bool{}
	for _, ev := range evs {
		methods[ev.GetDetails()["method"]] = true
	}
	for _, m := range []string{mcpauthv1.OAuthService_StartAuthorization_FullMethodName, mcpauthv1.MCPToolService_CallTool_FullMethodName,
		mcpauthv1.OAuthService_CompleteAuthorization_FullMethodName} {
		if !methods[m] {
			t.Errorf("no USER_NOT_ALLOWED denial audited for %s: %v", m, methods)
		}
	}
}
