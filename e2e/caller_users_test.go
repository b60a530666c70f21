package e2e

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/domain"
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

// TestCallerLimitedToUsersConnections: connections are one user's each, so
// a caller limited to users sees and deletes only theirs. Its listing must
// name a user (a listing without one would show every user's connections,
// with their status and enterprise identity): PERMISSION_DENIED
// USER_NOT_ALLOWED, audited. Another user's connection, read or deleted by
// its name (the id is derived from the user id, so anyone can compute it),
// is NOT_FOUND as one that does not exist, is left in place, and the
// attempt is audited as permission.denied naming that user; its own
// connection, also under a prefix pattern, is read and deleted as usual.
func TestCallerLimitedToUsersConnections(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	platform, platformKey := NewCaller(t, "platform", []string{"acme"}, caller.All...)
	agent, agentKey := NewCaller(t, "alice-agent", []string{"acme"}, caller.ProvidersRead, caller.Authorize, caller.ToolsCall)
	agent.Users = []string{"alice", "team-a/*"}
	s := Start(t, Options{Env: map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1"},
		Callers: &caller.File{Callers: []caller.FileCaller{platform, agent}}})
	s.AdminKey = platformKey
	name := createProvider(t, s, platformKey, "acme", "docs", mcp.URL(), func(p *mcpauthv1.Provider) {
		p.GrantScope = mcpauthv1.GrantScope_GRANT_SCOPE_USER
	})
	for _, user := range []string{"alice", "team-a/carol", "bob"} {
		cnAuthorize(t, s, platformKey, name, user)
	}
	conns := mcpauthv1.NewConnectionServiceClient(s.Conn)
	pctx, actx := Ctx(t, platformKey), Ctx(t, agentKey)
	connName := func(user string) string { return name + "/connections/" + domain.ConnectionID(user) }

	_, err := conns.ListConnections(actx, &mcpauthv1.ListConnectionsRequest{Parent: name})
	tlWantReason(t, err, codes.PermissionDenied, "USER_NOT_ALLOWED")
	_, err = conns.ListConnections(actx, &mcpauthv1.ListConnectionsRequest{Parent: "tenants/acme/providers/-"})
	tlWantReason(t, err, codes.PermissionDenied, "USER_NOT_ALLOWED")
	_, err = conns.ListConnections(actx, &mcpauthv1.ListConnectionsRequest{Parent: name, User: "bob"})
	tlWantReason(t, err, codes.PermissionDenied, "USER_NOT_ALLOWED")
	if l, err := conns.ListConnections(actx, &mcpauthv1.ListConnectionsRequest{Parent: name, User: "alice"}); err != nil || len(l.GetConnections()) != 1 {
		t.Fatalf("alice's listing: %v %v", l, err)
	}

	_, err = conns.GetConnection(actx, &mcpauthv1.GetConnectionRequest{Name: connName("bob")})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("bob's connection read by alice's agent: %v, want NOT_FOUND", err)
	}
	_, err = conns.DeleteConnection(actx, &mcpauthv1.DeleteConnectionRequest{Name: connName("bob")})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("bob's connection deleted by alice's agent: %v, want NOT_FOUND", err)
	}
	if c, err := conns.GetConnection(pctx, &mcpauthv1.GetConnectionRequest{Name: connName("bob")}); err != nil ||
		c.GetConnection().GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatalf("bob's connection after the refused delete: %v %v", c, err)
	}
	// A connection nobody has answers the same.
	_, err = conns.GetConnection(actx, &mcpauthv1.GetConnectionRequest{Name: connName("dave")})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("a missing connection: %v, want NOT_FOUND", err)
	}

	for _, user := range []string{"alice", "team-a/carol"} {
		if c, err := conns.GetConnection(actx, &mcpauthv1.GetConnectionRequest{Name: connName(user)}); err != nil || c.GetConnection().GetUser() != user {
			t.Fatalf("%s's connection read by the agent: %v %v", user, c, err)
		}
	}
	if _, err := conns.DeleteConnection(actx, &mcpauthv1.DeleteConnectionRequest{Name: connName("team-a/carol")}); err != nil {
		t.Fatalf("carol's connection deleted by the agent: %v", err)
	}

	tlWaitEvents(t, s, "acme", "", "permission.denied", 2, func(ev *mcpauthv1.AuditEvent) bool {
		return ev.GetReason() == "USER_NOT_ALLOWED" && ev.GetUser() == "bob" && ev.GetActor() == "alice-agent" && ev.GetProvider() == name &&
			(ev.GetDetails()["method"] == mcpauthv1.ConnectionService_GetConnection_FullMethodName ||
				ev.GetDetails()["method"] == mcpauthv1.ConnectionService_DeleteConnection_FullMethodName)
	})
	tlWaitEvents(t, s, "acme", "", "permission.denied", 2, func(ev *mcpauthv1.AuditEvent) bool {
		return ev.GetReason() == "USER_NOT_ALLOWED" && ev.GetActor() == "alice-agent" &&
			ev.GetDetails()["method"] == mcpauthv1.ConnectionService_ListConnections_FullMethodName && ev.GetUser() == ""
	})
}
