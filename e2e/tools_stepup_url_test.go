package e2e

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestToolsStepUpCarriesAuthorizationURL: when CallTool names the person it
// acts for and the caller may authorize, the INSUFFICIENT_SCOPE answer
// carries a fresh authorization URL requesting the missing scopes; opening
// it in a browser completes the step-up. A caller without the authorize
// permission gets the structured answer without a URL.
func TestToolsStepUpCarriesAuthorizationURL(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true,
		Scopes: []string{"mcp.read", "mcp.write", "offline_access", "mcp.admin"}})
	srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as, PRMScopes: []string{"mcp.read", "mcp.write"},
		ScopedTool: "admin_tool", RequiredScope: "mcp.admin"})
	full, fullKey := NewCaller(t, "console", []string{"su"}, caller.All...)
	toolsOnly, toolsKey := NewCaller(t, "agent", []string{"su"}, caller.ToolsCall, caller.ProvidersRead)
	s := Start(t, Options{Callers: &caller.File{Callers: []caller.FileCaller{full, toolsOnly}},
		Env: map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1"}})
	name := createProvider(t, s, fullKey, "su", "docs", srv.URL(), nil)
	start, err := s.OAuth().StartAuthorization(Ctx(t, fullKey), &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if code, body, _ := NewBrowser(t).Open(t, start.GetAuthorizationUrl()); code != 200 || !strings.Contains(body, "Authorization complete") {
		t.Fatalf("first authorization: %d %s", code, body)
	}
	call := func(key, user string) error {
		_, err := s.Tools().CallTool(Ctx(t, key), &mcpauthv1.CallToolRequest{Name: name, Tool: "admin_tool", User: user,
			Arguments: &structpb.Struct{}})
		return err
	}

	// A caller that may only call tools: no URL, but the structured answer.
	info := tlWantReason(t, call(toolsKey, "alice"), codes.FailedPrecondition, "INSUFFICIENT_SCOPE")
	if _, ok := info.GetMetadata()["authorization_url"]; ok {
		t.Fatal("a caller without the authorize permission got an authorization URL")
	}
	// Without a user there is nobody to send the URL to.
	info = tlWantReason(t, call(fullKey, ""), codes.FailedPrecondition, "INSUFFICIENT_SCOPE")
	if _, ok := info.GetMetadata()["authorization_url"]; ok {
		t.Fatal("an authorization URL was minted without a user")
	}

	info = tlWantReason(t, call(fullKey, "alice"), codes.FailedPrecondition, "INSUFFICIENT_SCOPE")
	u := info.GetMetadata()["authorization_url"]
	if !strings.HasPrefix(u, s.HTTPURL+"/v1/oauth/authorize/") || info.GetMetadata()["authorization_expire_time"] == "" {
		t.Fatalf("step-up metadata %v", info.GetMetadata())
	}
	if code, body, _ := NewBrowser(t).Open(t, u); code != 200 || !strings.Contains(body, "Authorization complete") {
		t.Fatalf("step-up authorization: %d %s", code, body)
	}
	last := as.RequestsTo("/authorize")
	if scope := strings.Fields(last[len(last)-1].Query.Get("scope")); !slices.Contains(scope, "mcp.admin") {
		t.Fatalf("step-up authorization requested %v", scope)
	}
	if err := call(fullKey, "alice"); err != nil {
		t.Fatalf("admin_tool after step-up: %v", err)
	}
}
