package e2e

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// TestCompletionRequiredAfterStart: an authorization URL handed out before
// the provider came to require completion (an operator turning it on
// because links are being forwarded) is not honoured afterwards: its
// callback stores nothing (PROVIDER_CHANGED, audited), where it would
// otherwise have stored the grant without the platform's completion step.
func TestCompletionRequiredAfterStart(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	s := Start(t, Options{Env: map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1"}})
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "acme", "people", mcp.URL(), func(p *mcpauthv1.Provider) {
		p.GrantScope = mcpauthv1.GrantScope_GRANT_SCOPE_USER
	})
	st, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Providers().UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
		Provider:   &mcpauthv1.Provider{Name: name, RequireCompletion: true},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"require_completion"}}}); err != nil {
		t.Fatalf("UpdateProvider require_completion=true: %v", err)
	}
	if code, body, _ := NewBrowser(t).Open(t, st.GetAuthorizationUrl()); code == 200 {
		t.Fatalf("the callback of a flow started before completion was required succeeded: %d %s", code, body)
	}
	_, err = s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name, User: "alice"})
	tlWantReason(t, err, codes.FailedPrecondition, "NOT_AUTHORIZED")
	tlWaitEvents(t, s, "acme", name, "oauth.callback.failed", 1, func(ev *mcpauthv1.AuditEvent) bool {
		return ev.GetReason() == "PROVIDER_CHANGED" && ev.GetUser() == "alice"
	})
}
