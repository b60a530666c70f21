package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/validate"
)

// Sizes of the 1M listing benchmark.
const (
	list1MRows      = 1_000_000 // providers in tenant list1MTenant
	list1MOtherRows = 10_000    // providers in list1MOther, same ids
	list1MPage      = 50
	list1MPages     = 2_000 // measured pages per b.Loop iteration
	list1MWalk      = 5     // pages walked from each random position
	list1MTenant    = "t1"
	list1MOther     = "t2" // sorts right after t1 in the primary key
	// list1MPurposeURL is the fingerprint purpose of the normalised server
	// URL (service/deps.go purposeURL); the uniqueness check below proves
	// the bulk rows use it.
	list1MPurposeURL = "provider.server_url.normalized"
)

// BenchmarkListProvidersAPI1M measures the real gRPC ListProviders (page
// size 50, authenticated, over a socket, every row's URL and headers
// decrypted into the masked view) with 1,000,000 providers in one tenant
// and 10,000 with the same ids in a neighbouring tenant, on PostgreSQL.
// The rows are sealed with the service's own keyring exactly as
// CreateProvider seals them and bulk-loaded with COPY, then the table is
// vacuumed and analysed. Each iteration fetches 2,000 pages, one caller at
// a time, walking 5 pages from random positions, and reports the p50 and
// p99 page latency (design bar: p50 ≤ 5 ms). Set MCPAUTH_BENCH_1M=1 to run
// it:
//
//	MCPAUTH_BENCH_1M=1 go test -run '^$' -bench BenchmarkListProvidersAPI1M -benchtime 1x -timeout 30m ./e2e/
func BenchmarkListProvidersAPI1M(b *testing.B) {
	if os.Getenv("MCPAUTH_BENCH_1M") != "1" {
		b.Skip("SKIPPING BenchmarkListProvidersAPI1M: set MCPAUTH_BENCH_1M=1 to run it " +
			"(loads 1,010,000 encrypted providers into PostgreSQL, takes about a minute)")
	}
	s := Start(b, Options{Postgres: true, Env: map[string]string{"MCPAUTH_LOG_LEVEL": "info"}})
	keys := s.App.Keys()
	ctx := context.Background()

	start := time.Now()
	list1MLoad(b, s.DSN, keys, list1MTenant, list1MRows)
	list1MLoad(b, s.DSN, keys, list1MOther, list1MOtherRows)
	copied := time.Since(start)
	conn, err := pgx.Connect(ctx, s.DSN)
	if err != nil {
		b.Fatalf("pgx connect: %v", err)
	}
	defer conn.Close(ctx)
	// Every tenth provider holds a grant, so the status join that provider
	// reads make finds rows on both of its paths.
	if _, err := conn.Exec(ctx, `INSERT INTO credentials (tenant_id, provider_id, tokens, generation, status, reason, key_id, updated_at)
		SELECT tenant_id, id, ''::bytea, 1, 4, '', key_id, updated_at FROM providers WHERE right(id, 1) = '0'`); err != nil {
		b.Fatalf("grants: %v", err)
	}
	// A running service's tables are vacuumed: hint bits set, statistics
	// current.
	for _, table := range []string{"providers", "credentials"} {
		if _, err := conn.Exec(ctx, "VACUUM (ANALYZE) "+table); err != nil {
			b.Fatalf("vacuum analyze: %v", err)
		}
	}
	b.Logf("loaded %d providers in %v (COPY %v, VACUUM ANALYZE %v)", list1MRows+list1MOtherRows,
		time.Since(start).Round(time.Millisecond), copied.Round(time.Millisecond),
		(time.Since(start) - copied).Round(time.Millisecond))
	var n int64
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM providers WHERE tenant_id = $1", list1MTenant).Scan(&n); err != nil {
		b.Fatal(err)
	}
	if n != list1MRows {
		b.Fatalf("tenant %s has %d rows, want %d", list1MTenant, n, list1MRows)
	}

	// The page must be an index range scan on the primary key, not a sort.
	plan, err := conn.Query(ctx, "EXPLAIN SELECT * FROM providers WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT 51",
		list1MTenant, list1MID(list1MRows/2))
	if err != nil {
		b.Fatalf("explain: %v", err)
	}
	lines, err := pgx.CollectRows(plan, pgx.RowTo[string])
	if err != nil {
		b.Fatalf("explain: %v", err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "Index Scan using providers_pkey") {
		b.Fatalf("page query does not use the primary key:\n%s", strings.Join(lines, "\n"))
	}

	auth := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+s.AdminKey)
	pc := s.Providers()
	list := func(parent, token string) (*mcpauthv1.ListProvidersResponse, time.Duration) {
		b.Helper()
		cctx, cancel := context.WithTimeout(auth, 30*time.Second)
		defer cancel()
		t0 := time.Now()
		resp, err := pc.ListProviders(cctx, &mcpauthv1.ListProvidersRequest{Parent: parent, PageSize: list1MPage, PageToken: token})
		d := time.Since(t0)
		if err != nil {
			b.Fatalf("ListProviders(%s, %q): %v", parent, token, err)
		}
		return resp, d
	}
	after := func(tenant string, i int) string {
		return resname.EncodePageToken(resname.PageToken{Parent: resname.TenantName(tenant), After: list1MID(i)})
	}

	// The bulk rows are what the service would have written: the URL
	// uniqueness check finds them by fingerprint.
	cctx, cancel := context.WithTimeout(auth, 30*time.Second)
	_, err = pc.CreateProvider(cctx, &mcpauthv1.CreateProviderRequest{Parent: resname.TenantName(list1MTenant), ProviderId: "dup",
		Provider: &mcpauthv1.Provider{DisplayName: "dup", ServerIdentifier: "dup", ServerUrl: list1MURL(list1MTenant, 424242)}})
	cancel()
	provStatus(b, err, codes.AlreadyExists)

	// Tenant scoping: t1's first and last pages, and all of t2, whose rows
	// follow t1's in the index and share their ids.
	resp, _ := list(resname.TenantName(list1MTenant), "")
	list1MCheckPage(b, resp, list1MTenant, 0, list1MPage, true)
	resp, _ = list(resname.TenantName(list1MTenant), after(list1MTenant, list1MRows-21))
	list1MCheckPage(b, resp, list1MTenant, list1MRows-20, 20, false)
	token, seen := "", 0
	for {
		resp, _ := list(resname.TenantName(list1MOther), token)
		more := seen+list1MPage < list1MOtherRows
		list1MCheckPage(b, resp, list1MOther, seen, list1MPage, more)
		seen += len(resp.GetProviders())
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if seen != list1MOtherRows {
		b.Fatalf("tenant %s listed %d providers, want %d", list1MOther, seen, list1MOtherRows)
	}

	rng := rand.New(rand.NewPCG(1, 1_000_000))
	walk := func(record func(time.Duration)) {
		// after is the last id before the walk; every page is full.
		first := rng.IntN(list1MRows-list1MWalk*list1MPage) - 1
		token := ""
		if first >= 0 {
			token = after(list1MTenant, first)
		}
		for p := range list1MWalk {
			resp, d := list(resname.TenantName(list1MTenant), token)
			record(d)
			list1MCheckPage(b, resp, list1MTenant, first+1+p*list1MPage, list1MPage, true)
			token = resp.GetNextPageToken()
		}
	}
	// Warm the connection pools and caches as a running service would be.
	for range 20 {
		walk(func(time.Duration) {})
	}

	var lat []time.Duration
	for b.Loop() {
		for range list1MPages / list1MWalk {
			walk(func(d time.Duration) { lat = append(lat, d) })
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(pct(0.50)), "p50-ms")
	b.ReportMetric(ms(pct(0.99)), "p99-ms")
	b.Logf("ListProviders page_size=%d over %d providers, %d pages, 1 caller: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms",
		list1MPage, list1MRows, len(lat), ms(pct(0.50)), ms(pct(0.90)), ms(pct(0.99)), ms(lat[len(lat)-1]))
	if p50 := pct(0.50); p50 > 5*time.Millisecond {
		b.Logf("WARNING: p50 %v is above the 5 ms design bar", p50)
	}
}

// list1MID is the id of the i-th bulk provider; ids sort as their numbers.
func list1MID(i int) string { return fmt.Sprintf("p%07d", i) }

// list1MURL is the server URL of the i-th bulk provider of tenant. Its path
// and query are masked in views.
func list1MURL(tenant string, i int) string {
	return fmt.Sprintf("https://mcp-%07d.%s.bench.example/mcp?key=url-secret-%d", i, tenant, i)
}

func list1MMasked(tenant string, i int) string {
	return fmt.Sprintf("https://mcp-%07d.%s.bench.example/******", i, tenant)
}

// list1MCheckPage checks resp holds providers first..first+n-1 of tenant in
// order, decrypted into masked views, and has a next page token iff more.
func list1MCheckPage(b *testing.B, resp *mcpauthv1.ListProvidersResponse, tenant string, first, n int, more bool) {
	b.Helper()
	ps := resp.GetProviders()
	if len(ps) != n {
		b.Fatalf("page after %s/%s has %d providers, want %d", tenant, list1MID(first-1), len(ps), n)
	}
	if (resp.GetNextPageToken() != "") != more {
		b.Fatalf("page after %s/%s: next page token %q, want one: %v", tenant, list1MID(first-1), resp.GetNextPageToken(), more)
	}
	for j, p := range ps {
		i := first + j
		if want := resname.ProviderName(tenant, list1MID(i)); p.GetName() != want {
			b.Fatalf("provider %d of page = %s, want %s", j, p.GetName(), want)
		}
		if want := list1MMasked(tenant, i); p.GetMaskedServerUrl() != want {
			b.Fatalf("%s: masked url %q, want %q", p.GetName(), p.GetMaskedServerUrl(), want)
		}
		h := p.GetHeaderInfo()
		if len(h) != 1 || h[0].GetName() != "X-Api-Key" || !h[0].GetValueSet() || len(h[0].GetFingerprint()) != 8 {
			b.Fatalf("%s: header info %v, want one set X-Api-Key", p.GetName(), h)
		}
		if p.GetEtag() != `"v1"` || p.GetDisplayName() != "Provider "+list1MID(i) {
			b.Fatalf("%s: etag %s, display name %q", p.GetName(), p.GetEtag(), p.GetDisplayName())
		}
	}
}

// list1MLoad inserts providers 0..rows-1 of tenant with COPY over a few
// connections, each generating its share of rows as CreateProvider would:
// URL and headers sealed under the service's primary key and scoped to the
// row, URL fingerprinted for the uniqueness index.
func list1MLoad(b *testing.B, dsn string, keys *keyring.Keyring, tenant string, rows int) {
	b.Helper()
	columns := []string{"tenant_id", "id", "display_name", "server_identifier", "url_hash", "server_url", "headers",
		"icon", "timeout_ms", "sse_read_timeout_ms", "client_id", "client_secret", "scopes", "compat",
		"key_id", "version", "cred_generation", "created_at", "updated_at"}
	now := time.Now().UTC().Truncate(time.Microsecond)
	kid := int64(keys.PrimaryID())
	streams := min(max(runtime.GOMAXPROCS(0), 2), 4)
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for w := range streams {
		lo, hi := rows*w/streams, rows*(w+1)/streams
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(ctx)
			i := lo
			next := func() ([]any, error) {
				if i >= hi {
					return nil, nil
				}
				id := list1MID(i)
				u, err := validate.ServerURL("server_url", list1MURL(tenant, i))
				if err != nil {
					return nil, err
				}
				urlCT, err := keys.Seal(keyring.Scope{Tenant: tenant, Provider: id, Field: provFieldServerURL}, []byte(u.String()))
				if err != nil {
					return nil, err
				}
				raw, err := json.Marshal(map[string]string{"X-Api-Key": fmt.Sprintf("hdr-secret-%d", i)})
				if err != nil {
					return nil, err
				}
				hdrCT, err := keys.Seal(keyring.Scope{Tenant: tenant, Provider: id, Field: provFieldHeaders}, raw)
				if err != nil {
					return nil, err
				}
				hash := keys.Fingerprint(tenant, list1MPurposeURL, []byte(validate.NormalizeURL(u)))
				i++
				return []any{tenant, id, "Provider " + id, "server-" + id, hash, urlCT, hdrCT,
					"", int64(30_000), int64(300_000), "", nil, "[]", "{}",
					kid, int64(1), int64(0), now, now}, nil
			}
			src := pgx.CopyFromFunc(next)
			n, err := conn.CopyFrom(ctx, pgx.Identifier{"providers"}, columns, src)
			if err == nil && n != int64(hi-lo) {
				err = fmt.Errorf("copied %d rows, want %d", n, hi-lo)
			}
			if err != nil {
				errs <- fmt.Errorf("copy %s rows %d..%d: %w", tenant, lo, hi, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}
