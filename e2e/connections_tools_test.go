package e2e

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// ctSubjects returns the subjects (at the authorization server) of the
// tokens that carried the MCP server's tools/list requests, in order.
func (c *tokCluster) ctSubjects(tb testing.TB, srv *testauthz.MCPServer) []string {
	tb.Helper()
	var out []string
	for _, r := range tlRPCs(srv, "tools/list") {
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		info, err := c.AS.ValidateToken(c.ctx(tb), tok)
		if err != nil {
			tb.Fatalf("a tools/list carried a token the server does not know: %v", err)
		}
		out = append(out, info.Subject)
	}
	return out
}

// ctEvents lists the provider's audit events of one type, newest first
// (one page is enough here).
func (c *tokCluster) ctEvents(tb testing.TB, provider, eventType string) []*mcpauthv1.AuditEvent {
	tb.Helper()
	resp, err := c.Replicas[0].Audit().ListAuditEvents(c.ctx(tb), &mcpauthv1.ListAuditEventsRequest{
		Parent: "tenants/" + c.Tenant, Provider: provider, EventType: eventType, PageSize: 500})
	if err != nil {
		tb.Fatalf("ListAuditEvents: %v", err)
	}
	return resp.GetAuditEvents()
}

// ctToolNames is the names of a listing's tools.
func ctToolNames(list []*mcpauthv1.Tool) []string {
	var out []string
	for _, t := range list {
		out = append(out, t.GetName())
	}
	return out
}

// TestConnectionsSharedToolList (issue 11): "the tool list is cached per
// provider only when it is the same for everyone; otherwise per
// connection". mcpauth cannot know that a server lists the same tools to
// every user, so the operator says so (shared_tool_list, audited). Against
// a real authorization server whose tokens name the user and a real MCP
// server that counts its tools/list requests:
//
//   - shared: alice's RefreshTools fetches the list once, with alice's token;
//     bob (connected) lists it without any tools/list at the server; carol
//     (not connected) gets NOT_AUTHORIZED with an authorization URL from
//     ListTools and RefreshTools, and the server sees nothing; bob's tool
//     call still carries bob's token. Turning the setting off drops the
//     shared list (bob has none of his own).
//   - per connection (the default): bob's list is empty until his own
//     RefreshTools, which fetches again with bob's token; carol is refused
//     as well.
//   - a TENANT provider cannot be given the setting (INVALID_ARGUMENT).
func TestConnectionsSharedToolList(t *testing.T) {
	t.Parallel()
	c := tokStart(t, tokOptions{})
	s := c.Replicas[0]
	ctx := c.ctx(t)
	sharedSrv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: c.AS})
	ownSrv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: c.AS})
	shared := createProvider(t, s, c.Key, c.Tenant, "shared-tools", sharedSrv.URL(), func(p *mcpauthv1.Provider) {
		p.GrantScope = mcpauthv1.GrantScope_GRANT_SCOPE_USER
		p.SharedToolList = true
	})
	own := createProvider(t, s, c.Key, c.Tenant, "own-tools", ownSrv.URL(), func(p *mcpauthv1.Provider) {
		p.GrantScope = mcpauthv1.GrantScope_GRANT_SCOPE_USER
	})
	if got, err := s.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: shared}); err != nil || !got.GetProvider().GetSharedToolList() {
		t.Fatalf("GetProvider of the shared provider: %v %v", got, err)
	}
	if got, err := s.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: own}); err != nil || got.GetProvider().GetSharedToolList() {
		t.Fatalf("GetProvider of the per-connection provider: %v %v", got, err)
	}
	for _, name := range []string{shared, own} {
		c.puConnect(t, 0, name, "alice")
		c.puConnect(t, 0, name, "bob")
	}
	list := func(name, user string) (*mcpauthv1.ListToolsResponse, error) {
		return s.Tools().ListTools(ctx, &mcpauthv1.ListToolsRequest{Name: name, User: user})
	}
	refresh := func(name, user string) *mcpauthv1.RefreshToolsResponse {
		t.Helper()
		r, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name, User: user})
		if err != nil || len(r.GetTools()) == 0 {
			t.Fatalf("%s's RefreshTools of %s: %v %v", user, name, r, err)
		}
		return r
	}
	wantNotConnected := func(err error) {
		t.Helper()
		info := tlWantReason(t, err, codes.FailedPrecondition, "NOT_AUTHORIZED")
		if u := info.GetMetadata()["authorization_url"]; !strings.HasPrefix(u, s.HTTPURL+"/v1/oauth/authorize/") || info.GetMetadata()["user"] != "carol" {
			t.Fatalf("carol's NOT_AUTHORIZED: %v", info.GetMetadata())
		}
	}

	// Shared: one fetch, with alice's token, serves bob.
	fetched := refresh(shared, "alice")
	if got := c.ctSubjects(t, sharedSrv); !slices.Equal(got, []string{"alice"}) {
		t.Fatalf("tools/list at the shared provider's server carried tokens of %v, want alice's once", got)
	}
	bobs, err := list(shared, "bob")
	if err != nil || !slices.Equal(ctToolNames(bobs.GetTools()), ctToolNames(fetched.GetTools())) ||
		!bobs.GetFetchTime().AsTime().Equal(fetched.GetFetchTime().AsTime()) {
		t.Fatalf("bob's ListTools of the shared list: %v %v", bobs, err)
	}
	// Carol has not connected: the shared list is not hers to see.
	_, err = list(shared, "carol")
	wantNotConnected(err)
	_, err = s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: shared, User: "carol"})
	wantNotConnected(err)
	if got := c.ctSubjects(t, sharedSrv); len(got) != 1 {
		t.Fatalf("the shared provider's server saw %d tools/list requests, want 1 (alice's)", len(got))
	}
	// Only the list is shared: bob's call carries bob's token.
	if sub := c.puWhoami(t, 0, shared, "bob"); sub != "bob" {
		t.Fatalf("bob's whoami on the shared provider ran as %q", sub)
	}

	// Turning it off is audited and drops the shared list.
	set := func(on bool) {
		t.Helper()
		if _, err := s.Providers().UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
			Provider:   &mcpauthv1.Provider{Name: shared, SharedToolList: on},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"shared_tool_list"}}}); err != nil {
			t.Fatalf("UpdateProvider shared_tool_list=%v: %v", on, err)
		}
	}
	set(false)
	if r, err := list(shared, "bob"); err != nil || len(r.GetTools()) != 0 || r.GetFetchTime() != nil {
		t.Fatalf("bob's ListTools after the list stopped being shared: %v %v", r, err)
	}
	set(true)
	var values []string
	for _, e := range c.ctEvents(t, shared, "provider.updated") {
		if e.GetDetails()["fields"] == "shared_tool_list" {
			values = append(values, e.GetDetails()["shared_tool_list"])
		}
	}
	if !slices.Equal(values, []string{"true", "false"}) {
		t.Fatalf("audited shared_tool_list changes (newest first): %v", values)
	}
	created := c.ctEvents(t, shared, "provider.created")
	if len(created) != 1 || created[0].GetDetails()["shared_tool_list"] != "true" {
		t.Fatalf("provider.created of the shared provider: %v", created)
	}

	// Per connection: each user's list is fetched with their own token.
	refresh(own, "alice")
	if r, err := list(own, "bob"); err != nil || len(r.GetTools()) != 0 || r.GetFetchTime() != nil {
		t.Fatalf("bob's ListTools before he fetched his own: %v %v", r, err)
	}
	refresh(own, "bob")
	if r, err := list(own, "bob"); err != nil || len(r.GetTools()) == 0 {
		t.Fatalf("bob's ListTools of his own list: %v %v", r, err)
	}
	if got := c.ctSubjects(t, ownSrv); !slices.Equal(got, []string{"alice", "bob"}) {
		t.Fatalf("tools/list at the per-connection provider's server carried tokens of %v, want alice's then bob's", got)
	}
	_, err = list(own, "carol")
	wantNotConnected(err)

	// A tenant-wide provider's one grant already shares its list.
	_, err = s.Providers().CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/" + c.Tenant, ProviderId: "tenant-tools",
		Provider: &mcpauthv1.Provider{DisplayName: "tenant-tools", ServerIdentifier: "tenant-tools", ServerUrl: ownSrv.URL() + "?tenant",
			SharedToolList: true}})
	cnWantField(t, err, "provider.shared_tool_list")
	_, err = s.Providers().UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
		Provider:   &mcpauthv1.Provider{Name: c.Name, SharedToolList: true},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"shared_tool_list"}}})
	cnWantField(t, err, "provider.shared_tool_list")
}
