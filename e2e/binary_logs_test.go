package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/internal/testenv"
)

// TestBinaryLogsAreJSONWithRedis: mcpauthd with Redis writes nothing but
// JSON lines, on stderr and stdout, from start to a graceful stop. go-redis
// used to print "redis: <date> redis.go:2559: failed to initialize
// maintnotifications: ..." twice at every start, in plain text: its own
// logger, and a clash of the health probe's and the broadcast's clients
// with the first client's push notification handlers.
func TestBinaryLogsAreJSONWithRedis(t *testing.T) {
	t.Parallel()
	_, prefix := testenv.Redis(t)
	dataDir := t.TempDir()
	p := startBinary(t, mcpauthdBinary(t), map[string]string{"MCPAUTH_REDIS_URL": testenv.RedisURLWithPrefix(t, prefix), "MCPAUTH_DATA_DIR": dataDir,
		"MCPAUTH_LOG_LEVEL": "debug"})
	raw, err := os.ReadFile(filepath.Join(dataDir, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	key := strings.TrimSpace(string(raw))
	// A call that succeeds and one that fails, so that both log.
	if _, err := mcpauthv1.NewMCPProviderServiceClient(p.Conn).ListProviders(Ctx(t, key),
		&mcpauthv1.ListProvidersRequest{Parent: "tenants/acme"}); err != nil {
		t.Fatalf("ListProviders: %v", err)
	}
	if _, err := mcpauthv1.NewMCPProviderServiceClient(p.Conn).GetProvider(Ctx(t, key),
		&mcpauthv1.GetProviderRequest{Name: "tenants/acme/providers/none"}); err == nil {
		t.Fatal("GetProvider of a missing provider succeeded")
	}
	if err := p.Term(t); err != nil {
		t.Fatalf("mcpauthd exited with %v\n%s", err, p.Logs)
	}
	out := strings.TrimSpace(p.Logs.String())
	if out == "" {
		t.Fatal("mcpauthd logged nothing at debug level")
	}
	for _, line := range strings.Split(out, "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil || rec["msg"] == nil || rec["level"] == nil {
			t.Errorf("not a JSON log line: %q", line)
		}
	}
}
