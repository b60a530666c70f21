package e2e

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestChallengeOnListAfterOpenInitialize: a go-sdk server lets initialize
// through and challenges tools/list (401 scope="mcp:basic" with
// resource_metadata) and tools/call of "write" (403 insufficient_scope
// scope="mcp:basic mcp:write"). The unauthenticated probe alone says
// NOT_REQUIRED; the first challenge flips the status, StartAuthorization
// uses the challenge's scope, and the step-up after the 403 asks for the
// union. Every request is made through mcpauth's API and a browser.
func TestChallengeOnListAfterOpenInitialize(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, Scopes: []string{"mcp:basic", "mcp:write", "offline_access"}})
	srv := testauthz.NewSelectiveServer(t, testauthz.SelectiveOptions{Auth: as, BasicScope: "mcp:basic", WriteTool: "write", WriteScope: "mcp:write"})
	s := Start(t, Options{Env: oaAllowEnv()})
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "acme", "sel", srv.URL(), nil)

	// The probe (initialize) succeeds without a token: a first guess.
	st, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil || st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_NOT_REQUIRED {
		t.Fatalf("first StartAuthorization = %v, %v; want NOT_REQUIRED from the open initialize", st.GetStatus(), err)
	}
	if n := as.Counts("/authorize") + as.Counts("/register"); n != 0 {
		t.Fatalf("the authorization server saw %d requests before any challenge", n)
	}

	// tools/list is challenged: the status flips at once.
	_, err = s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name})
	tlWantReason(t, err, codes.FailedPrecondition, "NOT_AUTHORIZED")
	if got := oaStatusOf(t, s, ctx, name); got != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED {
		t.Fatalf("status after the 401 = %v, want UNAUTHORIZED", got)
	}
	if ev := oaWantEvent(t, s, "acme", "mcp.challenge.recorded", "AUTHORIZATION_REQUIRED"); ev.GetDetails()["status"] != "401" {
		t.Fatalf("challenge event %v", ev)
	}
	if d, err := s.OAuth().DiagnoseProvider(ctx, &mcpauthv1.DiagnoseProviderRequest{Name: name}); err != nil || !d.GetReady() ||
		d.GetStatus() == mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_NOT_REQUIRED {
		t.Fatalf("DiagnoseProvider after the challenge = %v, %v", d, err)
	}

	// StartAuthorization now starts a flow with the challenge's scope.
	st, err = s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil || st.GetAuthorizationUrl() == "" {
		t.Fatalf("StartAuthorization after the challenge = %v, %v", st, err)
	}
	if p := oaOpen(t, NewBrowser(t), st.GetAuthorizationUrl()); p.Code != http.StatusOK || p.Title != "Authorization complete" {
		t.Fatalf("flow: %d %q %q", p.Code, p.Title, p.Reason)
	}
	first := as.RequestsTo("/authorize")[0]
	if sc := strings.Fields(first.Query.Get("scope")); !slices.Contains(sc, "mcp:basic") || slices.Contains(sc, "mcp:write") {
		t.Fatalf("first authorization asked for %v, want the challenge's mcp:basic (and not mcp:write)", sc)
	}
	if first.Query.Get("resource") != srv.URL() || first.Query.Get("code_challenge_method") != "S256" {
		t.Fatalf("first authorization query %v", first.Query)
	}
	if _, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name}); err != nil {
		t.Fatalf("RefreshTools after authorizing: %v", err)
	}

	// tools/call of "write" answers 403 insufficient_scope: step-up with the union.
	_, err = s.Tools().CallTool(ctx, &mcpauthv1.CallToolRequest{Name: name, Tool: "write", User: "alice", Arguments: &structpb.Struct{}})
	info := tlWantReason(t, err, codes.FailedPrecondition, "INSUFFICIENT_SCOPE")
	u := info.GetMetadata()["authorization_url"]
	if u == "" || info.GetMetadata()["missing_scopes"] != "mcp:write" {
		t.Fatalf("step-up metadata %v", info.GetMetadata())
	}
	if p := oaOpen(t, NewBrowser(t), u); p.Code != http.StatusOK || p.Title != "Authorization complete" {
		t.Fatalf("step-up flow: %d %q %q", p.Code, p.Title, p.Reason)
	}
	auths := as.RequestsTo("/authorize")
	if sc := strings.Fields(auths[len(auths)-1].Query.Get("scope")); !slices.Contains(sc, "mcp:basic") || !slices.Contains(sc, "mcp:write") {
		t.Fatalf("step-up asked for %v, want the union mcp:basic mcp:write", sc)
	}
	res, err := s.Tools().CallTool(ctx, &mcpauthv1.CallToolRequest{Name: name, Tool: "write", Arguments: &structpb.Struct{}})
	if err != nil || res.GetIsError() {
		t.Fatalf("write after step-up = %v, %v", res, err)
	}

	// What went over the wire to the MCP server, in order (the probe's
	// initialize, then sessions: initialize open, challenged methods).
	methods := srv.Methods()
	if !slices.Contains(methods, "tools/list") || !slices.Contains(methods, "tools/list+token") ||
		!slices.Contains(methods, "tools/call+token") || slices.Contains(methods, "tools/call") {
		t.Fatalf("MCP server saw %v", methods)
	}
	if n := as.Counts("/register"); n != 1 {
		t.Fatalf("%d dynamic registrations, want 1", n)
	}
}

// TestChallengeUnknownToolKeepsItsMeaning: a JSON-RPC error from the
// server (unknown tool) is INVALID_ARGUMENT with the server's message, not
// UNAVAILABLE.
func TestChallengeUnknownToolKeepsItsMeaning(t *testing.T) {
	t.Parallel()
	srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{})
	s := Start(t, Options{Env: oaAllowEnv()})
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "acme", "open", srv.URL(), nil)
	_, err := s.Tools().CallTool(ctx, &mcpauthv1.CallToolRequest{Name: name, Tool: "no_such_tool", Arguments: &structpb.Struct{}})
	info := tlWantReason(t, err, codes.InvalidArgument, "UPSTREAM_INVALID_PARAMS")
	if info.GetMetadata()["rpc_code"] != "-32602" || !strings.Contains(err.Error(), "no_such_tool") {
		t.Fatalf("error %v, metadata %v", err, info.GetMetadata())
	}
	// A successful call without a token proves the server needs none.
	if _, err := s.Tools().CallTool(ctx, &mcpauthv1.CallToolRequest{Name: name, Tool: "echo",
		Arguments: &structpb.Struct{Fields: map[string]*structpb.Value{"text": structpb.NewStringValue("hi")}}}); err != nil {
		t.Fatal(err)
	}
	if got := oaStatusOf(t, s, ctx, name); got != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_NOT_REQUIRED {
		t.Fatalf("status after an unauthenticated success = %v", got)
	}
}

// TestChallengeStepUpIsBounded: a server that answers every authenticated
// request 403 insufficient_scope with a scope the token lacks gets at most
// three step-up authorizations, then a clear STEP_UP_EXHAUSTED.
func TestChallengeStepUpIsBounded(t *testing.T) {
	t.Parallel()
	scopes := []string{"mcp:basic", "offline_access"}
	for i := range 12 {
		scopes = append(scopes, "more"+strconv.Itoa(i))
	}
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, Scopes: scopes})
	srv := testauthz.NewSelectiveServer(t, testauthz.SelectiveOptions{Auth: as, BasicScope: "mcp:basic", Insatiable: true})
	s := Start(t, Options{Env: oaAllowEnv()})
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "acme", "greedy", srv.URL(), nil)
	challengeFirst(t, s, name)
	st, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if p := oaOpen(t, NewBrowser(t), st.GetAuthorizationUrl()); p.Title != "Authorization complete" {
		t.Fatalf("first flow: %q %q", p.Title, p.Reason)
	}
	for i := range 3 {
		_, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name, User: "alice"})
		info := tlWantReason(t, err, codes.FailedPrecondition, "INSUFFICIENT_SCOPE")
		u := info.GetMetadata()["authorization_url"]
		if u == "" {
			t.Fatalf("step-up %d without a URL: %v", i, info.GetMetadata())
		}
		if p := oaOpen(t, NewBrowser(t), u); p.Title != "Authorization complete" {
			t.Fatalf("step-up %d: %q %q", i, p.Title, p.Reason)
		}
	}
	_, err = s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name, User: "alice"})
	tlWantReason(t, err, codes.FailedPrecondition, "STEP_UP_EXHAUSTED")
	_, err = s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	oaWantErr(t, err, codes.FailedPrecondition, "STEP_UP_EXHAUSTED")
	if n := as.Counts("/authorize"); n != 4 {
		t.Fatalf("%d authorization requests, want 1 + 3 step-ups", n)
	}
}
