package e2e

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestTokenPreconditionOrder: every per-provider RPC checks existence
// first. A provider (or tenant) that does not exist answers NOT_FOUND from
// each of them, never "call StartAuthorization" (which would answer
// NOT_FOUND itself); a provider whose server asks for no authorization
// answers GetAccessToken with NOT_REQUIRED and says no token is needed.
func TestTokenPreconditionOrder(t *testing.T) {
	t.Parallel()
	s := tlStart(t, nil)
	ctx := Ctx(t, s.AdminKey)
	open := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{})
	resp, err := s.Providers().CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/tp-order", ProviderId: "open",
		Provider: &mcpauthv1.Provider{DisplayName: "open", ServerIdentifier: "open", ServerUrl: open.URL()}})
	if err != nil {
		t.Fatalf("CreateProvider: %v", err)
	}
	name := resp.GetProvider().GetName()

	rpcs := map[string]func(ctx context.Context, name string) error{
		"GetAccessToken": func(ctx context.Context, name string) error {
			_, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name})
			return err
		},
		"StartAuthorization": func(ctx context.Context, name string) error {
			_, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
			return err
		},
		"GetAuthorizationStatus": func(ctx context.Context, name string) error {
			_, err := s.OAuth().GetAuthorizationStatus(ctx, &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
			return err
		},
		"RevokeAuthorization": func(ctx context.Context, name string) error {
			_, err := s.OAuth().RevokeAuthorization(ctx, &mcpauthv1.RevokeAuthorizationRequest{Name: name})
			return err
		},
		"RefreshTools": func(ctx context.Context, name string) error {
			_, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name})
			return err
		},
		"CallTool": func(ctx context.Context, name string) error {
			_, err := tlCall(ctx, s, name, "echo", map[string]any{"text": "x"})
			return err
		},
	}
	for rpc, call := range rpcs {
		for _, missing := range []string{"tenants/tp-order/providers/missing", "tenants/tp-nobody/providers/open"} {
			err := call(ctx, missing)
			if status.Code(err) != codes.NotFound {
				t.Errorf("%s(%s) = %v, want NOT_FOUND", rpc, missing, err)
			}
			if msg := status.Convert(err).Message(); strings.Contains(msg, "StartAuthorization") {
				t.Errorf("%s(%s) sends the caller to StartAuthorization: %q", rpc, missing, msg)
			}
		}
	}

	// The server needs no authorization: StartAuthorization says so, and
	// GetAccessToken tells the truth instead of "call StartAuthorization".
	start, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil || start.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_NOT_REQUIRED {
		t.Fatalf("StartAuthorization on an open server: %v, %v", start.GetStatus(), err)
	}
	_, err = s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name})
	info := tlWantReason(t, err, codes.FailedPrecondition, "NOT_REQUIRED")
	msg := status.Convert(err).Message()
	if strings.Contains(msg, "StartAuthorization") || !strings.Contains(msg, "no access token is needed") {
		t.Errorf("GetAccessToken on an open server: message %q", msg)
	}
	if info.GetMetadata()["provider"] != name || info.GetMetadata()["action"] != "" {
		t.Errorf("GetAccessToken on an open server: metadata %v", info.GetMetadata())
	}
	// The tools work without a token.
	tlMustCall(t, s, name, "echo", map[string]any{"text": "x"})
}
