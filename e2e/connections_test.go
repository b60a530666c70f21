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
	// Bob's list is his own: he never fetched one.
	if list, err := s.Tools().ListTools(ctx, &mcpauthv1.ListToolsRequest{Name: name, User: "bob"}); err != nil || len(list.GetTools()) != 0 {
		t.Fatalf("bob's ListTools: %v %v", list, err)
	}

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
