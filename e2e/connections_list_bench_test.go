package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/metadata"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/vault"
)

// Sizes of the across-providers listing benchmark.
const (
	clProviders = 1_000   // USER providers in the tenant
	clRows      = 100_000 // connections in all, the measured user's included
	clPerOther  = 10      // connections of each other user
	clTenant    = "acme"
	clUser      = "alice@acme.example"
	clWalks     = 200 // measured full walks per b.Loop iteration
)

// clBenchHeld is a token set as a callback stores it; the listing never
// opens it, but every row is sealed for its own user all the same.
func clBenchHeld() *vault.Held {
	return &vault.Held{
		Tokens: &oauthclient.Tokens{AccessToken: secret.New("bench-access-token"), RefreshToken: secret.New("bench-refresh-token"),
			TokenType: "Bearer", ExpiresAt: time.Now().Add(time.Hour).UTC(), Scopes: []string{"mcp:tools", "offline_access"}},
		Grant: vault.Grant{Issuer: "https://as.bench.example", TokenEndpoint: "https://as.bench.example/token",
			RegMethod: domain.RegDynamic, ClientID: "bench-client", Kind: domain.KindAuthorizationCode},
	}
}

// BenchmarkConnectionsListAcrossProviders (issue 11): "what has alice
// connected?" on PostgreSQL. 1,000 USER providers in one tenant, alice
// connected to every one of them, and 99,000 connections of 9,900 other
// users (10 each) on the same providers: 100,000 rows, each sealed for its
// own user. It walks ListConnections with parent
// tenants/acme/providers/- and user alice through the real gRPC server,
// every page (page size 50: 20 pages), one caller at a time, and reports
// the p50 and p99 of a full walk and of one page. The rows are seeded
// directly through the repository, not through 100,000 authorizations, so
// it runs only with MCPAUTH_BENCH_CONNECTIONS=1:
//
//	MCPAUTH_BENCH_CONNECTIONS=1 go test -run '^$' -bench BenchmarkConnectionsListAcrossProviders -benchtime 1x -timeout 30m ./e2e/
func BenchmarkConnectionsListAcrossProviders(b *testing.B) {
	if os.Getenv("MCPAUTH_BENCH_CONNECTIONS") == "" {
		b.Skip("set MCPAUTH_BENCH_CONNECTIONS=1 to seed 1,000 providers and 100,000 connections")
	}
	s := Start(b, Options{Postgres: true, Env: map[string]string{"MCPAUTH_LOG_LEVEL": "warn"}})
	ctx := context.Background()
	t0 := time.Now()
	list1MLoad(b, s.DSN, s.App.Keys(), clTenant, clProviders)
	if err := s.Store().DB().Exec("UPDATE providers SET grant_scope = ? WHERE tenant_id = ?", domain.ScopeUser, clTenant).Error; err != nil {
		b.Fatal(err)
	}
	others := clRows - clProviders
	cbSeedRefs(b, s, clBenchHeld(), clRows, func(i int) domain.GrantRef {
		if i < clProviders {
			return domain.GrantRef{Tenant: clTenant, Provider: list1MID(i), User: clUser}
		}
		// Other user k holds providers 10k..10k+9 (mod 1,000): every
		// provider has 99 other users' connections.
		j := i - clProviders
		return domain.GrantRef{Tenant: clTenant, Provider: list1MID(j % clProviders), User: fmt.Sprintf("u-%05d", j/clPerOther)}
	})
	if err := s.Store().DB().Exec("VACUUM (ANALYZE) credentials").Error; err != nil {
		b.Fatal(err)
	}
	b.Logf("seeded %d providers and %d connections (%d of %s, %d of %d other users) in %s", clProviders, clRows, clProviders, clUser,
		others, others/clPerOther, time.Since(t0).Round(time.Millisecond))

	clExplain(b, s.DSN)

	kctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+s.AdminKey)
	cc := mcpauthv1.NewConnectionServiceClient(s.Conn)
	parent := "tenants/" + clTenant + "/providers/-"
	var pages []time.Duration
	walk := func() time.Duration {
		start := time.Now()
		token, n, last := "", 0, ""
		for {
			t := time.Now()
			resp, err := cc.ListConnections(kctx, &mcpauthv1.ListConnectionsRequest{Parent: parent, User: clUser, PageToken: token})
			pages = append(pages, time.Since(t))
			if err != nil {
				b.Fatalf("ListConnections after %d: %v", n, err)
			}
			for _, c := range resp.GetConnections() {
				if c.GetUser() != clUser || c.GetName() <= last {
					b.Fatalf("connection %d: %s of %q after %s", n, c.GetName(), c.GetUser(), last)
				}
				last = c.GetName()
				n++
			}
			if token = resp.GetNextPageToken(); token == "" {
				break
			}
		}
		if n != clProviders {
			b.Fatalf("a walk listed %d connections, want %d", n, clProviders)
		}
		return time.Since(start)
	}
	for range 10 {
		walk() // warm the pools and caches, as a running service's are
	}
	pages = pages[:0]
	var walks []time.Duration
	for b.Loop() {
		for range clWalks {
			walks = append(walks, walk())
		}
	}
	b.StopTimer()
	pct := func(ds []time.Duration, p float64) time.Duration {
		slices.Sort(ds)
		return ds[int(p*float64(len(ds)-1))]
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.Logf("alice's %d connections across %d providers (%d rows), page size 50: full walk (%d pages) p50 %.2f ms, p99 %.2f ms over %d walks; one page p50 %.2f ms, p99 %.2f ms over %d pages",
		clProviders, clProviders, clRows, len(pages)/len(walks), ms(pct(walks, 0.5)), ms(pct(walks, 0.99)), len(walks),
		ms(pct(pages, 0.5)), ms(pct(pages, 0.99)), len(pages))
	b.ReportMetric(ms(pct(walks, 0.5)), "walk_p50_ms")
	b.ReportMetric(ms(pct(walks, 0.99)), "walk_p99_ms")
	b.ReportMetric(ms(pct(pages, 0.5)), "page_p50_ms")
	b.ReportMetric(ms(pct(pages, 0.99)), "page_p99_ms")
}

// clExplain logs PostgreSQL's plan (with timing and buffers) of the query
// behind a page in the middle of alice's listing: the repository's
// ListConnections with a user and a position.
func clExplain(b *testing.B, dsn string) {
	b.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	after, cid := list1MID(clProviders/2), domain.ConnectionID(clUser)
	rows, err := conn.Query(ctx, `EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM credentials WHERE tenant_id = $1 AND user_id <> '' AND user_id = $2
		AND (provider_id, connection_id) > ($3, $4) ORDER BY provider_id, connection_id LIMIT 51`,
		clTenant, clUser, after, cid)
	if err != nil {
		b.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		b.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	b.Logf("plan of a page in the middle of alice's listing:\n%s", plan)
	// The position starts the range of alice's index entries; it is not a
	// filter over every entry before it.
	var cond string
	for _, l := range lines {
		if strings.Contains(l, "Index Cond:") {
			cond = l
		}
	}
	if !strings.Contains(plan, "idx_credential_user") || !strings.Contains(cond, "provider_id") {
		b.Fatalf("the page does not start its index range at the position:\n%s", plan)
	}
}
