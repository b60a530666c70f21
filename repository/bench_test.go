package repository

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/internal/testenv"
)

// BenchmarkListProvidersPage50_1M measures a keyset page of 50 providers in a
// tenant holding 1,000,000 providers on PostgreSQL (design bar: p50 ≤ 5 ms).
// Set MCPAUTH_BENCH_1M=1 to run it; loading the rows takes a minute or so:
//
//	MCPAUTH_BENCH_1M=1 go test -run '^$' -bench BenchmarkListProvidersPage50_1M -benchtime 5000x ./repository/
func BenchmarkListProvidersPage50_1M(b *testing.B) {
	if os.Getenv("MCPAUTH_BENCH_1M") != "1" {
		b.Skip("set MCPAUTH_BENCH_1M=1 to run (loads 1,000,000 rows into PostgreSQL)")
	}
	const (
		rows   = 1_000_000
		batch  = 100_000
		tenant = "bench"
		page   = 50
	)
	ctx := context.Background()
	s := openStore(b, testenv.PostgresDSN(b))
	db := s.DB().WithContext(ctx)

	load := time.Now()
	insert := `INSERT INTO providers (tenant_id, id, display_name, server_identifier, url_hash,
			server_url, headers, icon, timeout_ms, sse_read_timeout_ms, client_id, client_secret,
			scopes, compat, key_id, version, cred_generation, created_at, updated_at)
		SELECT ?, 'p' || lpad(i::text, 7, '0'), 'name-' || i, 'sid-' || i, 'k1:' || md5(i::text),
			decode(repeat(md5(i::text), 3), 'hex'), decode(repeat(md5((i + 1)::text), 4), 'hex'),
			'', 30000, 300000, '', NULL, '["read"]', '{}', 1, 1, 0, now(), now()
		FROM generate_series(?::bigint, ?::bigint) AS i`
	for lo := 0; lo < rows; lo += batch {
		if err := db.Exec(insert, tenant, lo, lo+batch-1).Error; err != nil {
			b.Fatalf("bulk insert: %v", err)
		}
	}
	// Neighbouring tenants so the tenant condition has work to do.
	for _, other := range []string{"a", "z"} {
		if err := db.Exec(insert, other, 0, 9_999).Error; err != nil {
			b.Fatalf("bulk insert: %v", err)
		}
	}
	if err := db.Exec("ANALYZE providers").Error; err != nil {
		b.Fatalf("analyze: %v", err)
	}
	b.Logf("loaded %d providers in %v", rows+20_000, time.Since(load).Round(time.Millisecond))

	// The page must be an index range scan on the primary key, not a sort.
	var plan []string
	if err := db.Raw(`EXPLAIN SELECT * FROM providers WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT 50`,
		tenant, "p0500000").Scan(&plan).Error; err != nil {
		b.Fatalf("explain: %v", err)
	}
	if !strings.Contains(strings.Join(plan, "\n"), "Index Scan using providers_pkey") {
		b.Fatalf("page query does not use the primary key:\n%s", strings.Join(plan, "\n"))
	}

	// Warm the pool and the cache the way a running service would be.
	for range 200 {
		if _, err := s.ListProviders(ctx, tenant, fmt.Sprintf("p%07d", rand.IntN(rows)), page); err != nil {
			b.Fatal(err)
		}
	}

	var lat []time.Duration
	b.ResetTimer()
	for b.Loop() {
		after := fmt.Sprintf("p%07d", rand.IntN(rows))
		start := time.Now()
		out, err := s.ListProviders(ctx, tenant, after, page)
		lat = append(lat, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		if len(out) == 0 && after < fmt.Sprintf("p%07d", rows-1) {
			b.Fatalf("empty page after %s", after)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
