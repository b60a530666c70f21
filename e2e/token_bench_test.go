package e2e

import (
	"context"
	"testing"

	"google.golang.org/grpc/metadata"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// BenchmarkLoadGetAccessToken compares GetAccessToken for a valid token
// (an authorized provider holding a one-hour token, PostgreSQL and Redis
// behind) with grpc.health.v1 Check at 64 concurrent callers over a real
// socket. Goal (DESIGN.md section 6): ratio >= 0.5, p99 <= 10 ms.
//
//	go test -run '^$' -bench BenchmarkLoadGetAccessToken -benchtime 1x ./e2e/
func BenchmarkLoadGetAccessToken(b *testing.B) {
	c := tokStart(b, tokOptions{Env: map[string]string{"MCPAUTH_LOG_LEVEL": "warn"}, DefaultPool: true})
	s := c.Replicas[0]
	// No deadline: the rounds run as long as MCPAUTH_LOAD_DURATION says.
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+c.Key)
	oc := s.OAuth()
	req := &mcpauthv1.GetAccessTokenRequest{Name: c.Name}
	if _, err := oc.GetAccessToken(ctx, req); err != nil {
		b.Fatal(err)
	}
	check := tokCounters(c.AS)
	for b.Loop() {
		compare(b, s, 64, loadDuration(), "GetAccessToken", func(context.Context) error {
			_, err := oc.GetAccessToken(ctx, req)
			return err
		})
	}
	// A valid token is served from the database: no refresh under load.
	check.want(b, 0)
}
