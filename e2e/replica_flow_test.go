package e2e

import (
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
	"github.com/mcpauth/mcpauth/keyring"
)

// TestFlowCrossesReplicas starts a flow on replica A, binds the browser on
// replica B (the authorize route), and completes the callback on replica A
// again: the flow state lives in Redis and the rows in PostgreSQL, so any
// replica can serve any step.
func TestFlowCrossesReplicas(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	env := map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1", "MCPAUTH_MASTER_KEYS": testMasterKeys(t)}
	a := Start(t, Options{Postgres: true, Redis: true, Env: env})
	b := Start(t, Options{DSN: a.DSN, RedisURL: redisURLOf(t, a), Env: env, DataDir: t.TempDir()})
	name := createProvider(t, a, a.AdminKey, "acme", "shared", mcp.URL(), nil)
	start, err := a.OAuth().StartAuthorization(Ctx(t, a.AdminKey), &mcpauthv1.StartAuthorizationRequest{Name: name, User: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	onB := strings.Replace(start.GetAuthorizationUrl(), a.HTTPURL, b.HTTPURL, 1)
	if onB == start.GetAuthorizationUrl() {
		t.Fatal("could not point the authorization URL at replica B")
	}
	br := NewBrowser(t)
	code, body, final := br.Open(t, onB)
	if code != 200 || !strings.Contains(body, "Authorization complete") {
		t.Fatalf("final page %s: %d %s", final, code, body)
	}
	if !strings.HasPrefix(final.String(), a.HTTPURL+"/v1/oauth/callback") {
		t.Fatalf("callback served by %s, want replica A", final)
	}
	// Replica B sees the authorization too (same database).
	st, err := b.OAuth().GetAuthorizationStatus(Ctx(t, b.AdminKey), &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
	if err != nil || st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatalf("replica B status %v %v", st, err)
	}
}

// testMasterKeys returns a fresh key spec for replicas that must share keys.
func testMasterKeys(tb testing.TB) string {
	tb.Helper()
	spec, err := keyring.GenerateSpec(1)
	if err != nil {
		tb.Fatal(err)
	}
	return spec
}

func redisURLOf(tb testing.TB, s *Service) string {
	tb.Helper()
	if s.RedisURL == "" {
		tb.Fatal("service runs without Redis")
	}
	return s.RedisURL
}
