package e2e

import (
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestDiagnoseProvider checks the discovery trace: every URL tried with its
// status, the comparisons, what the server supports, the registration path
// that would be used, and the first blocking problem in plain words. It
// starts no flow and registers no client.
func TestDiagnoseProvider(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{Env: map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1"}})

	t.Run("ready with dynamic registration", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t, s.AdminKey)
		as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true, IssuerPath: "/tenant1"})
		mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as, OmitResourceMetadata: true})
		name := createProvider(t, s, s.AdminKey, "diag", "ready", mcp.URL(), nil)
		d, err := s.OAuth().DiagnoseProvider(ctx, &mcpauthv1.DiagnoseProviderRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		if !d.GetReady() || d.GetBlockingProblem() != "" {
			t.Fatalf("not ready: %q", d.GetBlockingProblem())
		}
		if d.GetIssuer() != as.URL || !d.GetPkceS256Supported() || !d.GetDynamicRegistrationSupported() || !d.GetIssuerParameterSupported() {
			t.Errorf("capabilities wrong: %+v", d)
		}
		if d.GetRegistrationMethod() != "dynamic_registration" {
			t.Errorf("registration method %q", d.GetRegistrationMethod())
		}
		if len(d.GetSteps()) < 3 {
			t.Fatalf("only %d steps", len(d.GetSteps()))
		}
		var sawPRM, sawAS bool
		for _, st := range d.GetSteps() {
			if strings.Contains(st.GetUrl(), "/.well-known/oauth-protected-resource") && st.GetOk() {
				sawPRM = true
			}
			if strings.Contains(st.GetUrl(), "/.well-known/") && strings.Contains(st.GetUrl(), "tenant1") && st.GetOk() && st.GetHttpStatus() == 200 {
				sawAS = true
			}
		}
		if !sawPRM || !sawAS {
			t.Errorf("trace lacks the successful PRM or AS metadata step: %v", d.GetSteps())
		}
		if n := as.Counts(as.Path("/register")); n != 0 {
			t.Errorf("diagnose registered a client (%d requests)", n)
		}
		st, err := s.OAuth().GetAuthorizationStatus(ctx, &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
		if err != nil || st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED {
			t.Errorf("diagnose changed the status: %v %v", st, err)
		}
	})

	t.Run("resource mismatch is the blocking problem", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t, s.AdminKey)
		as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
		mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as, PRMResourceOverride: "https://other.example/mcp"})
		name := createProvider(t, s, s.AdminKey, "diag", "mismatch", mcp.URL(), nil)
		d, err := s.OAuth().DiagnoseProvider(ctx, &mcpauthv1.DiagnoseProviderRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		if d.GetReady() || !strings.Contains(d.GetBlockingProblem(), "different resource") {
			t.Fatalf("ready=%v problem=%q", d.GetReady(), d.GetBlockingProblem())
		}
	})

	t.Run("no PKCE metadata is the blocking problem", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t, s.AdminKey)
		as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, OmitPKCEMetadata: true})
		mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
		name := createProvider(t, s, s.AdminKey, "diag", "nopkce", mcp.URL(), nil)
		d, err := s.OAuth().DiagnoseProvider(ctx, &mcpauthv1.DiagnoseProviderRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		if d.GetReady() || d.GetPkceS256Supported() || !strings.Contains(d.GetBlockingProblem(), "PKCE") {
			t.Fatalf("ready=%v problem=%q", d.GetReady(), d.GetBlockingProblem())
		}
	})

	t.Run("open server needs no authorization", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t, s.AdminKey)
		mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{})
		name := createProvider(t, s, s.AdminKey, "diag", "open", mcp.URL(), nil)
		d, err := s.OAuth().DiagnoseProvider(ctx, &mcpauthv1.DiagnoseProviderRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		if !d.GetReady() || d.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_NOT_REQUIRED {
			t.Fatalf("ready=%v status=%v", d.GetReady(), d.GetStatus())
		}
	})
}
