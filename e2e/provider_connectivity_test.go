package e2e

import (
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestProviderConnectivityStatus: a provider created with
// validate_connectivity whose server answered without asking for
// authorization is NOT_REQUIRED; one whose server asked, or created without
// a probe, is UNAUTHORIZED.
func TestProviderConnectivityStatus(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
	protected := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	open := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{RequiredHeader: [2]string{"X-Api-Key", "k1"}})
	s := tlStart(t, nil)
	ctx := Ctx(t, s.AdminKey)
	const (
		notRequired  = mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_NOT_REQUIRED
		unauthorized = mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED
	)
	for _, tt := range []struct {
		id, url  string
		validate bool
		want     mcpauthv1.AuthorizationStatus
	}{
		{"open", open.URL(), true, notRequired},
		{"protected", protected.URL(), true, unauthorized},
		{"open-unprobed", open.URL() + "?unprobed=1", false, unauthorized},
	} {
		resp, err := s.Providers().CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/pc-status", ProviderId: tt.id,
			ValidateConnectivity: tt.validate,
			Provider: &mcpauthv1.Provider{DisplayName: tt.id, ServerIdentifier: tt.id, ServerUrl: tt.url,
				Headers: map[string]string{"X-Api-Key": "k1"}}})
		if err != nil {
			t.Fatalf("%s: CreateProvider: %v", tt.id, err)
		}
		got, err := s.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: resp.GetProvider().GetName()})
		if err != nil {
			t.Fatal(err)
		}
		if created, read := resp.GetProvider().GetAuthorizationStatus(), got.GetProvider().GetAuthorizationStatus(); created != tt.want || read != tt.want {
			t.Errorf("%s: status created %v, read %v; want %v", tt.id, created, read, tt.want)
		}
	}
}

// TestProviderConnectivityEgressAudited: a connectivity probe the egress
// guard blocks is refused before any byte reaches the server, nothing is
// stored, and the block is audited for the tenant (not only logged).
func TestProviderConnectivityEgressAudited(t *testing.T) {
	t.Parallel()
	live := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{})
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(live.Origin(), "http://"))
	s := tlStart(t, map[string]string{"MCPAUTH_EGRESS_ALLOW": ""})
	ctx := Ctx(t, s.AdminKey)
	const name = "tenants/pc-egress/providers/blocked"
	_, err := s.Providers().CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/pc-egress", ProviderId: "blocked",
		ValidateConnectivity: true,
		Provider: &mcpauthv1.Provider{DisplayName: "blocked", ServerIdentifier: "blocked",
			ServerUrl: "http://127.0.0.1:" + port + "/mcp?key=url-secret", Headers: map[string]string{"X-Api-Key": "k1"}}})
	tlWantReason(t, err, codes.FailedPrecondition, "EGRESS_BLOCKED")
	events := tlWaitEvents(t, s, "pc-egress", name, "egress.blocked", 1, func(ev *mcpauthv1.AuditEvent) bool {
		return ev.GetOutcome() == mcpauthv1.AuditOutcome_AUDIT_OUTCOME_DENIED
	})
	for _, ev := range events {
		if j := tlJSON(ev); strings.Contains(j, "/mcp") || strings.Contains(j, "url-secret") || strings.Contains(j, "k1") {
			t.Errorf("audit event carries the path, query or a header value: %v", ev)
		}
	}
	if n := len(live.Received()); n != 0 {
		t.Errorf("the live server on 127.0.0.1 received %d requests", n)
	}
	if _, err := s.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: name}); status.Code(err) != codes.NotFound {
		t.Errorf("GetProvider of the refused provider: %v, want NOT_FOUND", err)
	}
}
