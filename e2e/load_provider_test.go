package e2e

import (
	"context"
	"testing"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// BenchmarkLoadGetProvider compares GetProvider with grpc.health.v1 Check
// at 64 concurrent callers over a real socket, Postgres and Redis behind.
//
//	go test -run '^$' -bench BenchmarkLoadGetProvider -benchtime 1x ./e2e/
func BenchmarkLoadGetProvider(b *testing.B) {
	s := Start(b, Options{Postgres: true, Redis: true, Env: map[string]string{"MCPAUTH_LOG_LEVEL": "warn"}})
	ctx := Ctx(b, s.AdminKey)
	resp, err := s.Providers().CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/bench", ProviderId: "p1",
		Provider: &mcpauthv1.Provider{DisplayName: "bench", ServerIdentifier: "bench", ServerUrl: "https://mcp.bench.example/mcp",
			Headers: map[string]string{"X-Key": "v"}}})
	if err != nil {
		b.Fatal(err)
	}
	pc := s.Providers()
	for b.Loop() {
		compare(b, s, 64, loadDuration(), "GetProvider", func(context.Context) error {
			_, err := pc.GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: resp.GetProvider().GetName()})
			return err
		})
	}
}
