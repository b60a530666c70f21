package e2e

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// TestCompletionRequiredByProvider: a provider with require_completion
// makes every StartAuthorization behave as if it asked for it. Without a
// return URL a start is INVALID_ARGUMENT naming return_url; with one (and
// without asking for completion) alice's callback stores nothing and sends
// her browser back to the platform with a completion code, and her grant
// is stored only by CompleteAuthorization with alice. NOT_AUTHORIZED
// answers carry no authorization URL (it would have no return URL). The
// setting is audited on create and update; turned off, starts without a
// return URL work again and NOT_AUTHORIZED carries a URL.
func TestCompletionRequiredByProvider(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	platform := cmNewPlatform(t)
	s := Start(t, Options{Env: map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1", "MCPAUTH_RETURN_ORIGINS": platform.srv.URL}})
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "acme", "people", mcp.URL(), func(p *mcpauthv1.Provider) {
		p.GrantScope = mcpauthv1.GrantScope_GRANT_SCOPE_USER
		p.RequireCompletion = true
	})
	if got, err := s.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: name}); err != nil || !got.GetProvider().GetRequireCompletion() {
		t.Fatalf("GetProvider: %v %v", got, err)
	}
	start := func(user, returnURL string) (*mcpauthv1.StartAuthorizationResponse, error) {
		return s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: user, ReturnUrl: returnURL})
	}

	_, err := start("alice", "")
	cnWantField(t, err, "return_url")

	st, err := start("alice", platform.srv.URL+"/connections/done")
	if err != nil {
		t.Fatalf("StartAuthorization with a return URL: %v", err)
	}
	code, body, final := cmBrowserAs(t, as, "alice").Open(t, st.GetAuthorizationUrl())
	if code != 200 || body != "back on the platform" || final.Path != "/connections/done" {
		t.Fatalf("alice's browser ended at %s: %d %q", final.Redacted(), code, body)
	}
	q := platform.last(t)
	if q.Get("mcpauth_status") != "completion_required" || q.Get("mcpauth_completion") == "" {
		t.Fatalf("return query %v", q)
	}
	_, err = s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name, User: "alice"})
	tlWantReason(t, err, codes.FailedPrecondition, "NOT_AUTHORIZED")
	done, err := s.OAuth().CompleteAuthorization(ctx, &mcpauthv1.CompleteAuthorizationRequest{Name: name, User: "alice",
		CompletionCode: q.Get("mcpauth_completion")})
	if err != nil || done.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatalf("CompleteAuthorization for alice: %v %v", done, err)
	}
	res, err := s.Tools().CallTool(ctx, &mcpauthv1.CallToolRequest{Name: name, Tool: "whoami", User: "alice"})
	if err != nil || res.GetStructuredContent().GetFields()["subject"].GetStringValue() != "alice" {
		t.Fatalf("alice's whoami: %v %v", res, err)
	}

	// Bob has not connected: told so, without a link that would skip the
	// completion.
	_, err = s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name, User: "bob"})
	if info := tlWantReason(t, err, codes.FailedPrecondition, "NOT_AUTHORIZED"); info.GetMetadata()["authorization_url"] != "" {
		t.Fatalf("NOT_AUTHORIZED carries an authorization URL on a provider that requires completion: %v", info.GetMetadata())
	}

	created := tlEvents(t, s, "acme", name, "provider.created")
	if len(created) != 1 || created[0].GetDetails()["require_completion"] != "true" {
		t.Fatalf("provider.created: %v", created)
	}
	if _, err := s.Providers().UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
		Provider:   &mcpauthv1.Provider{Name: name},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"require_completion"}}}); err != nil {
		t.Fatalf("UpdateProvider require_completion=false: %v", err)
	}
	updated := tlEvents(t, s, "acme", name, "provider.updated")
	if len(updated) != 1 || updated[0].GetDetails()["require_completion"] != "false" {
		t.Fatalf("provider.updated: %v", updated)
	}
	if st, err := start("bob", ""); err != nil || st.GetAuthorizationUrl() == "" {
		t.Fatalf("StartAuthorization without a return URL once completion is not required: %v %v", st, err)
	}
	_, err = s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name, User: "carol"})
	if info := tlWantReason(t, err, codes.FailedPrecondition, "NOT_AUTHORIZED"); !strings.HasPrefix(info.GetMetadata()["authorization_url"], s.HTTPURL) {
		t.Fatalf("NOT_AUTHORIZED without an authorization URL: %v", info.GetMetadata())
	}
}
