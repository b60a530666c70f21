package e2e

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	"github.com/mcpauth/mcpauth/service/grants"
)

// TestFaultRedisRestartLosesFlow (issue 15, case 8): Redis restarts empty
// between StartAuthorization and the browser's visit. The person gets a
// page that says what happened and to start again (not a bare error), and
// starting again completes the authorization. Meanwhile the provider is
// PENDING, and the sweep of abandoned flows (case 9) returns it to
// UNAUTHORIZED.
func TestFaultRedisRestartLosesFlow(t *testing.T) {
	t.Parallel()
	c, rd, _ := faultCluster(t, 1, "")
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: c.AS})
	s := c.Replicas[0]
	name := createProvider(t, s, c.Key, c.Tenant, "wiki", mcp.URL(), nil)
	start, err := s.OAuth().StartAuthorization(c.ctx(t), &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	rd.Restart()
	code, body, _ := NewBrowser(t).Open(t, start.GetAuthorizationUrl())
	if code != 400 || !strings.Contains(body, "start the authorization again") || !strings.Contains(body, "lost") {
		t.Fatalf("lost flow page: %d %s", code, body)
	}
	// Case 9: the lost flow leaves the provider PENDING until the sweep
	// (run here with a 1 s age instead of the flow TTL + 1 min) returns it
	// to UNAUTHORIZED, saying why.
	statusOf := func() *mcpauthv1.GetAuthorizationStatusResponse {
		st, err := s.OAuth().GetAuthorizationStatus(c.ctx(t), &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := statusOf(); st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_PENDING {
		t.Fatalf("status after the lost flow: %v, want PENDING", st.GetStatus())
	}
	time.Sleep(1100 * time.Millisecond) // the flow is now older than the sweep's age
	sweep := grants.NewRefresherWith(s.Store(), s.App.Tokens(), slog.New(slog.DiscardHandler),
		grants.RefresherConfig{PendingTTL: time.Second})
	sweep.Pass(c.ctx(t))
	if st := statusOf(); st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED ||
		st.GetReason() != "FLOW_EXPIRED_OR_USED" {
		t.Fatalf("status after the sweep: %v (%s), want UNAUTHORIZED (FLOW_EXPIRED_OR_USED)", st.GetStatus(), st.GetReason())
	}
	start, err = s.OAuth().StartAuthorization(c.ctx(t), &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	code, body, _ = NewBrowser(t).Open(t, start.GetAuthorizationUrl())
	if code != 200 || !strings.Contains(body, "Authorization complete") {
		t.Fatalf("starting again: %d %s", code, body)
	}
	st, err := s.OAuth().GetAuthorizationStatus(c.ctx(t), &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
	if err != nil || st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatalf("status after starting again: %v %v", st, err)
	}
}
