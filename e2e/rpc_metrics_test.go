package e2e

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestRPCAndPoolMetrics: /metrics counts each RPC by service, method and
// final code (including calls refused before the handler, over gRPC and
// through the REST gateway), times them in a histogram, exports the
// database pool, and names no tenant, resource or key.
func TestRPCAndPoolMetrics(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{})
	ctx := Ctx(t, s.AdminKey)
	for range 2 {
		if _, err := s.Providers().ListProviders(ctx, &mcpauthv1.ListProvidersRequest{Parent: "tenants/tenant-x9"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Providers().ListProviders(context.Background(), &mcpauthv1.ListProvidersRequest{Parent: "tenants/tenant-x9"}); err == nil {
		t.Fatal("a call without a key succeeded")
	}
	req, _ := http.NewRequest(http.MethodGet, s.HTTPURL+"/v1/tenants/tenant-x9/providers/prov-y7", nil)
	req.Header.Set("Authorization", "Bearer "+s.AdminKey)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("REST get of a missing provider: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	resp, err := http.Get(s.HTTPURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	body := string(raw)
	const list = `grpc_method="ListProviders",grpc_service="mcpauth.v1.MCPProviderService",grpc_type="unary"`
	for _, want := range []string{
		`grpc_server_handled_total{grpc_code="OK",` + list + `} 2`,
		`grpc_server_handled_total{grpc_code="Unauthenticated",` + list + `} 1`,
		`grpc_server_handled_total{grpc_code="NotFound",grpc_method="GetProvider",grpc_service="mcpauth.v1.MCPProviderService",grpc_type="unary"} 1`,
		`grpc_server_started_total{` + list + `} 3`,
		`grpc_server_handling_seconds_count{` + list + `} 3`,
		`go_sql_max_open_connections{db_name="mcpauth"} 1`,
		`go_sql_open_connections{db_name="mcpauth"}`,
		`go_sql_wait_count_total{db_name="mcpauth"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !regexp.MustCompile(`grpc_server_handling_seconds_bucket\{` + regexp.QuoteMeta(list) + `,le="0.001"\} \d`).MatchString(body) {
		t.Error("/metrics lacks the handling-time histogram buckets")
	}
	for _, secret := range []string{"tenant-x9", "prov-y7", s.AdminKey} {
		if strings.Contains(body, secret) {
			t.Errorf("/metrics names %q", secret)
		}
	}
}
