package e2e

import (
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// cnWantField checks that err is INVALID_ARGUMENT with a BadRequest naming
// field.
func cnWantField(tb testing.TB, err error, field string) {
	tb.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		tb.Fatalf("error %v, want INVALID_ARGUMENT", err)
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetField() == field {
					return
				}
			}
		}
	}
	tb.Fatalf("error %v names no field %q", err, field)
}

// TestConnectionsUserProvider: a provider whose grant_scope is USER holds
// one grant per end user. The authorization started for alice stores
// alice's connection only: her token reads, tool calls and status answer
// for her; bob, who has not connected, gets NOT_AUTHORIZED with a fresh
// authorization URL for him (the caller may authorize); a call without a
// user, or naming a user on a tenant-wide provider, is INVALID_ARGUMENT on
// "user"; the grant scope cannot be changed; audit events name the user;
// revoking alice's connection leaves her UNAUTHORIZED.
func TestConnectionsUserProvider(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, User: "alice-at-as"})
	srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	full, fullKey := NewCaller(t, "console", []string{"cn"}, caller.All...)
	s := Start(t, Options{Callers: &caller.File{Callers: []caller.FileCaller{full}},
		Env: map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1"}})
	ctx := Ctx(t, fullKey)
	name := createProvider(t, s, fullKey, "cn", "notes", srv.URL(), func(p *mcpauthv1.Provider) {
		p.GrantScope = mcpauthv1.GrantScope_GRANT_SCOPE_USER
	})
	got, err := s.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: name})
	if err != nil || got.GetProvider().GetGrantScope() != mcpauthv1.GrantScope_GRANT_SCOPE_USER {
		t.Fatalf("GetProvider: %v %v", got, err)
	}

	start, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if code, body, _ := NewBrowser(t).Open(t, start.GetAuthorizationUrl()); code != 200 || !strings.Contains(body, "Authorization complete") {
		t.Fatalf("alice's authorization: %d %s", code, body)
	}

	// Alice's connection serves her calls.
	tok, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name, User: "alice"})
	if err != nil || tok.GetAccessToken() == "" {
		t.Fatalf("alice's token: %v %v", tok, err)
	}
	if info, err := as.ValidateToken(ctx, tok.GetAccessToken()); err != nil || info.Subject != "alice-at-as" {
		t.Fatalf("alice's token belongs to %+v (%v)", info, err)
	}
	st, err := s.OAuth().GetAuthorizationStatus(ctx, &mcpauthv1.GetAuthorizationStatusRequest{Name: name, User: "alice"})
	if err != nil || st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatalf("alice's status: %v %v", st, err)
	}
	res, err := s.Tools().CallTool(ctx, &mcpauthv1.CallToolRequest{Name: name, Tool: "whoami", User: "alice", Arguments: &structpb.Struct{}})
	if err != nil || res.GetStructuredContent().GetFields()["subject"].GetStringValue() != "alice-at-as" {
		t.Fatalf("alice's whoami: %v %v", res, err)
	}
	if _, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name, User: "alice"}); err != nil {
		t.Fatalf("alice's RefreshTools: %v", err)
	}
	list, err := s.Tools().ListTools(ctx, &mcpauthv1.ListToolsRequest{Name: name, User: "alice"})
	if err != nil || len(list.GetTools()) == 0 {
		t.Fatalf("alice's ListTools: %v %v", list, err)
	}
	// Bob has no connection, so no tool list to read: alice's is hers.
	_, err = s.Tools().ListTools(ctx, &mcpauthv1.ListToolsRequest{Name: name, User: "bob"})
	tlWantReason(t, err, codes.FailedPrecondition, "NOT_AUTHORIZED")

	// Bob has not connected: NOT_AUTHORIZED, with a URL for him.
	for _, call := range []func() error{
		func() error {
			_, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name, User: "bob"})
			return err
		},
		func() error {
			_, err := s.Tools().CallTool(ctx, &mcpauthv1.CallToolRequest{Name: name, Tool: "whoami", User: "bob", Arguments: &structpb.Struct{}})
			return err
		},
	} {
		info := tlWantReason(t, call(), codes.FailedPrecondition, "NOT_AUTHORIZED")
		if u := info.GetMetadata()["authorization_url"]; !strings.HasPrefix(u, s.HTTPURL+"/v1/oauth/authorize/") {
			t.Fatalf("bob's NOT_AUTHORIZED carries no authorization URL: %v", info.GetMetadata())
		}
	}
	if st, err := s.OAuth().GetAuthorizationStatus(ctx, &mcpauthv1.GetAuthorizationStatusRequest{Name: name, User: "bob"}); err != nil ||
		st.GetStatus() == mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatalf("bob's status: %v %v", st, err)
	}

	// No user on a USER provider, a user on a TENANT one: INVALID_ARGUMENT.
	_, err = s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name})
	cnWantField(t, err, "user")
	_, err = s.Tools().CallTool(ctx, &mcpauthv1.CallToolRequest{Name: name, Tool: "whoami", Arguments: &structpb.Struct{}})
	cnWantField(t, err, "user")
	_, err = s.OAuth().GetAuthorizationStatus(ctx, &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
	cnWantField(t, err, "user")
	_, err = s.Tools().ListTools(ctx, &mcpauthv1.ListToolsRequest{Name: name})
	cnWantField(t, err, "user")
	shared := createProvider(t, s, fullKey, "cn", "shared", srv.URL()+"?shared", nil)
	_, err = s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: shared, User: "alice"})
	cnWantField(t, err, "user")
	_, err = s.OAuth().RevokeAuthorization(ctx, &mcpauthv1.RevokeAuthorizationRequest{Name: shared, User: "alice"})
	cnWantField(t, err, "user")

	// The grant scope is immutable.
	_, err = s.Providers().UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
		Provider:   &mcpauthv1.Provider{Name: name, GrantScope: mcpauthv1.GrantScope_GRANT_SCOPE_TENANT},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"grant_scope"}}})
	cnWantField(t, err, "provider.grant_scope")

	// Audit events name the user whose connection they are about.
	events, err := s.Audit().ListAuditEvents(ctx, &mcpauthv1.ListAuditEventsRequest{Parent: "tenants/cn", User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]bool{}
	for _, e := range events.GetAuditEvents() {
		if e.GetUser() != "alice" {
			t.Fatalf("user filter returned %v", e)
		}
		types[e.GetEventType()] = true
	}
	if !types["oauth.callback.succeeded"] || !types["mcp.tool.called"] {
		t.Fatalf("alice's events: %v", types)
	}

	// Revoking alice's connection leaves her unauthorized.
	if _, err := s.OAuth().RevokeAuthorization(ctx, &mcpauthv1.RevokeAuthorizationRequest{Name: name, User: "alice"}); err != nil {
		t.Fatal(err)
	}
	tlWantReason(t, func() error {
		_, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name, User: "alice"})
		return err
	}(), codes.FailedPrecondition, "NOT_AUTHORIZED")
}

// cnAuthorize completes an authorization of the provider for user in a
// fresh browser.
func cnAuthorize(tb testing.TB, s *Service, key, name, user string) {
	tb.Helper()
	start, err := s.OAuth().StartAuthorization(Ctx(tb, key), &mcpauthv1.StartAuthorizationRequest{Name: name, User: user})
	if err != nil {
		tb.Fatal(err)
	}
	if code, body, _ := NewBrowser(tb).Open(tb, start.GetAuthorizationUrl()); code != 200 || !strings.Contains(body, "Authorization complete") {
		tb.Fatalf("%s's authorization: %d %s", user, code, body)
	}
}

// TestConnectionsAsResources: the connections of USER providers are
// resources: listed per provider and, with providers/- and a user, across
// the tenant's providers (paged, the token bound to the user), read by
// name (the id derived from the user), deleted one at a time (revoked at
// the authorization server, the other users' left alone), and revoked and
// deleted with their provider.
func TestConnectionsAsResources(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
	srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	full, fullKey := NewCaller(t, "console", []string{"cr"}, caller.All...)
	s := Start(t, Options{Callers: &caller.File{Callers: []caller.FileCaller{full}},
		Env: map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1"}})
	ctx := Ctx(t, fullKey)
	conns := mcpauthv1.NewConnectionServiceClient(s.Conn)
	perUser := func(p *mcpauthv1.Provider) { p.GrantScope = mcpauthv1.GrantScope_GRANT_SCOPE_USER }
	notes := createProvider(t, s, fullKey, "cr", "notes", srv.URL(), perUser)
	cal := createProvider(t, s, fullKey, "cr", "calendar", srv.URL()+"?calendar", perUser)
	cnAuthorize(t, s, fullKey, notes, "alice")
	cnAuthorize(t, s, fullKey, notes, "Bob Smith")
	cnAuthorize(t, s, fullKey, cal, "alice")

	list, err := conns.ListConnections(ctx, &mcpauthv1.ListConnectionsRequest{Parent: notes})
	if err != nil || len(list.GetConnections()) != 2 {
		t.Fatalf("notes' connections: %v %v", list, err)
	}
	users := map[string]*mcpauthv1.Connection{}
	for _, c := range list.GetConnections() {
		id := c.GetName()[strings.LastIndex(c.GetName(), "/")+1:]
		if !strings.HasPrefix(c.GetName(), notes+"/connections/c") || len(id) != 27 ||
			c.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED || c.GetCreator() != "console" ||
			c.GetCreateTime() == nil || c.GetLastRefreshTime() == nil || c.GetIssuer() == "" || !c.GetHasRefreshToken() {
			t.Fatalf("connection %v", c)
		}
		users[c.GetUser()] = c
	}
	alice, bob := users["alice"], users["Bob Smith"]
	if alice == nil || bob == nil {
		t.Fatalf("connections of %v", users)
	}
	got, err := conns.GetConnection(ctx, &mcpauthv1.GetConnectionRequest{Name: alice.GetName()})
	if err != nil || got.GetConnection().GetUser() != "alice" {
		t.Fatalf("GetConnection: %v %v", got, err)
	}
	if _, err := conns.GetConnection(ctx, &mcpauthv1.GetConnectionRequest{Name: notes + "/connections/c" + strings.Repeat("0", 26)}); status.Code(err) != codes.NotFound {
		t.Fatalf("an unknown connection: %v", err)
	}

	// What has alice connected? Across providers, one page at a time.
	var seen []string
	token := ""
	for {
		page, err := conns.ListConnections(ctx, &mcpauthv1.ListConnectionsRequest{Parent: "tenants/cr/providers/-", User: "alice", PageSize: 1, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range page.GetConnections() {
			if c.GetUser() != "alice" {
				t.Fatalf("user filter returned %v", c)
			}
			seen = append(seen, c.GetName())
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
		// The token belongs to alice's listing only.
		_, err = conns.ListConnections(ctx, &mcpauthv1.ListConnectionsRequest{Parent: "tenants/cr/providers/-", User: "Bob Smith", PageSize: 1, PageToken: token})
		cnWantField(t, err, "page_token")
	}
	if len(seen) != 2 || !strings.HasPrefix(seen[0], cal+"/") || !strings.HasPrefix(seen[1], notes+"/") {
		t.Fatalf("alice's connections: %v", seen)
	}

	// Deleting alice's connection to notes revokes it there, and only it.
	before := as.RevocationCount()
	del, err := conns.DeleteConnection(ctx, &mcpauthv1.DeleteConnectionRequest{Name: alice.GetName()})
	if err != nil || !del.GetRevokedAtServer() || as.RevocationCount() <= before {
		t.Fatalf("DeleteConnection: %v %v (revocations %d -> %d)", del, err, before, as.RevocationCount())
	}
	if _, err := conns.GetConnection(ctx, &mcpauthv1.GetConnectionRequest{Name: alice.GetName()}); status.Code(err) != codes.NotFound {
		t.Fatalf("alice's deleted connection: %v", err)
	}
	tlWantReason(t, func() error {
		_, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: notes, User: "alice"})
		return err
	}(), codes.FailedPrecondition, "NOT_AUTHORIZED")
	for _, c := range []struct{ name, user string }{{notes, "Bob Smith"}, {cal, "alice"}} {
		if _, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: c.name, User: c.user}); err != nil {
			t.Fatalf("%s's token for %s after alice's deletion: %v", c.user, c.name, err)
		}
	}

	// Deleting the provider revokes and deletes bob's connection with it.
	before = as.RevocationCount()
	if _, err := s.Providers().DeleteProvider(ctx, &mcpauthv1.DeleteProviderRequest{Name: notes}); err != nil {
		t.Fatal(err)
	}
	if as.RevocationCount() <= before {
		t.Fatal("deleting the provider revoked no connection")
	}
	left, err := conns.ListConnections(ctx, &mcpauthv1.ListConnectionsRequest{Parent: "tenants/cr/providers/-"})
	if err != nil || len(left.GetConnections()) != 1 || !strings.HasPrefix(left.GetConnections()[0].GetName(), cal+"/") {
		t.Fatalf("connections after deleting notes: %v %v", left, err)
	}

	// REST: the same listing on the gateway.
	code, _, body := provHTTP(t, s, "GET", "/v1/tenants/cr/providers/-/connections?user=alice", fullKey, "", nil)
	var rest mcpauthv1.ListConnectionsResponse
	if code != 200 {
		t.Fatalf("REST listing: %d %s", code, body)
	}
	provDecode(t, body, &rest)
	if len(rest.GetConnections()) != 1 || rest.GetConnections()[0].GetUser() != "alice" {
		t.Fatalf("REST listing: %s", body)
	}
}
