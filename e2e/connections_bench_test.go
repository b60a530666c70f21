package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/grants"
	"github.com/mcpauth/mcpauth/service/vault"
)

// cbConnections is how many connections the benchmark seeds on one provider.
const cbConnections = 100_000

// cbSeed writes n connections of provider for users named by user(i),
// each with the tokens and grant of held sealed under its own grant's
// associated data (as the service seals them), in batches.
func cbSeed(tb testing.TB, s *Service, tenant, provider string, held *vault.Held, n int, user func(i int) string) {
	tb.Helper()
	cbSeedRefs(tb, s, held, n, func(i int) domain.GrantRef {
		return domain.GrantRef{Tenant: tenant, Provider: provider, User: user(i)}
	})
}

// cbSeedRefs writes the n connections ref(i) (each naming a user), sealed
// as cbSeed seals them, with the connection id the service derives from
// the user.
func cbSeedRefs(tb testing.TB, s *Service, held *vault.Held, n int, ref func(i int) domain.GrantRef) {
	tb.Helper()
	keys := s.App.Keys()
	now := time.Now().UTC()
	batch := make([]repository.Credential, 0, 1000)
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if err := s.Store().DB().CreateInBatches(batch, len(batch)).Error; err != nil {
			tb.Fatalf("seeding connections: %v", err)
		}
		batch = batch[:0]
	}
	for i := range n {
		g := ref(i)
		ct, err := vault.SealTokens(keys, g, held.Tokens, held.Grant, now)
		if err != nil {
			tb.Fatal(err)
		}
		exp := held.Tokens.ExpiresAt
		batch = append(batch, repository.Credential{TenantID: g.Tenant, ProviderID: g.Provider, UserID: g.User,
			ConnectionID: domain.ConnectionID(g.User), Tokens: ct,
			Issuer: held.Grant.Issuer, Scopes: vault.JSONList(held.Tokens.Scopes), ExpiresAt: &exp, HasRefresh: true,
			Generation: 1, Status: domain.StatusAuthorized, LastRefreshAt: &now, KeyID: keys.PrimaryID(),
			CreatedBy: "benchmark", CreatedAt: now, UpdatedAt: now})
		if len(batch) == cap(batch) {
			flush()
		}
	}
	flush()
}

// BenchmarkConnections100k (issue 11): 100,000 connections on one USER
// provider in PostgreSQL, each sealed for its own user. It reports
// GetAccessToken for a random user against grpc.health.v1 Health/Check at
// 64 concurrent callers (ratio, p50, p99), and the background refresher's
// cost over them: one pass when none is idle, and the idle-connection
// query when all are. Seeding takes a while, so it runs only with
// MCPAUTH_BENCH_CONNECTIONS=1.
func BenchmarkConnections100k(b *testing.B) {
	if os.Getenv("MCPAUTH_BENCH_CONNECTIONS") == "" {
		b.Skip("set MCPAUTH_BENCH_CONNECTIONS=1 to seed 100,000 connections")
	}
	c := tokStart(b, tokOptions{Env: map[string]string{"MCPAUTH_LOG_LEVEL": "warn"}, DefaultPool: true})
	s := c.Replicas[0]
	srv := testauthz.NewMCPServer(b, testauthz.MCPServerOptions{Auth: c.AS})
	people := createProvider(b, s, c.Key, c.Tenant, "people", srv.URL(), func(p *mcpauthv1.Provider) {
		p.GrantScope = mcpauthv1.GrantScope_GRANT_SCOPE_USER
	})
	c.puConnect(b, 0, people, "u-0")
	ctx := context.Background()
	cred, err := s.Store().GetCredential(ctx, domain.GrantRef{Tenant: c.Tenant, Provider: "people", User: "u-0"})
	if err != nil {
		b.Fatal(err)
	}
	held, err := vault.OpenTokens(s.App.Keys(), cred)
	if err != nil {
		b.Fatal(err)
	}
	user := func(i int) string { return fmt.Sprintf("u-%d", i) }
	t0 := time.Now()
	cbSeed(b, s, c.Tenant, "people", held, cbConnections-1, func(i int) string { return user(i + 1) })
	b.Logf("seeded %d connections in %s", cbConnections, time.Since(t0).Round(time.Millisecond))
	if err := s.Store().DB().Exec("ANALYZE credentials").Error; err != nil {
		b.Fatal(err)
	}

	kctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.Key)
	oc := s.OAuth()
	for b.Loop() {
		compare(b, s, 64, loadDuration(), "GetAccessToken", func(context.Context) error {
			_, err := oc.GetAccessToken(kctx, &mcpauthv1.GetAccessTokenRequest{Name: people, User: user(rand.IntN(cbConnections))})
			return err
		})
	}

	// The refresher over 100,000 connections refreshed moments ago: a pass
	// finds none idle.
	r := grants.NewRefresherWith(s.Store(), s.App.Tokens(), slog.New(slog.NewTextHandler(io.Discard, nil)), grants.RefresherConfig{})
	var passes []time.Duration
	for range 20 {
		t := time.Now()
		if n := r.Pass(ctx); n != 0 {
			b.Fatalf("a pass refreshed %d fresh connections", n)
		}
		passes = append(passes, time.Since(t))
	}
	slices.Sort(passes)
	b.Logf("refresher pass, 100,000 fresh connections: p50 %s, max %s", passes[len(passes)/2], passes[len(passes)-1])
	b.ReportMetric(float64(passes[len(passes)/2].Microseconds())/1000, "pass_fresh_p50_ms")

	// All idle: the query that picks a pass's batch of 500.
	if err := s.Store().DB().Exec("UPDATE credentials SET last_refresh_at = now() - interval '1 day' WHERE provider_id = 'people'").Error; err != nil {
		b.Fatal(err)
	}
	var picks []time.Duration
	for range 20 {
		t := time.Now()
		rows, err := s.Store().CredentialsIdleSince(ctx, time.Now().Add(-12*time.Hour), 500)
		if err != nil || len(rows) != 500 {
			b.Fatalf("idle query: %d rows, %v", len(rows), err)
		}
		picks = append(picks, time.Since(t))
	}
	slices.Sort(picks)
	b.Logf("idle query (batch of 500) over 100,000 idle connections: p50 %s, max %s", picks[len(picks)/2], picks[len(picks)-1])
	b.ReportMetric(float64(picks[len(picks)/2].Microseconds())/1000, "idle_query_p50_ms")
}
