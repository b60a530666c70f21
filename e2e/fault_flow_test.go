package e2e

import (
	"strings"
	"testing"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// TestFaultRedisRestartLosesFlow (issue 15, case 8): Redis restarts empty
// between StartAuthorization and the browser's visit. The person gets a
// page that says what happened and to start again (not a bare error), and
// starting again completes the authorization.
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
