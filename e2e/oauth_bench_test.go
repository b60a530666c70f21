package e2e

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// oaBenchCtx is a caller context without deadline (load rounds may run
// longer than Ctx's 30 seconds).
func oaBenchCtx(key string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+key)
}

// BenchmarkLoadStartAuthorization compares StartAuthorization with cached
// discovery metadata (and a stored registration) against grpc.health.v1
// Check, at 64 concurrent callers over a real socket, PostgreSQL and Redis
// behind. Every call still probes the MCP server, stores a flow in Redis,
// marks the provider pending and writes an audit event.
//
//	go test -run '^$' -bench BenchmarkLoadStartAuthorization -benchtime 1x ./e2e/
func BenchmarkLoadStartAuthorization(b *testing.B) {
	redisURL, _, _ := oaRedis(b)
	as := testauthz.NewAuthServer(b, testauthz.AuthServerOptions{DCR: true, IssParameter: true})
	mcp := testauthz.NewMCPServer(b, testauthz.MCPServerOptions{Auth: as})
	s := Start(b, Options{Postgres: true, RedisURL: redisURL, Env: oaAllowEnv("MCPAUTH_LOG_LEVEL", "warn")})
	name := createProvider(b, s, s.AdminKey, "bench", "docs", mcp.URL(), nil)
	ctx := oaBenchCtx(s.AdminKey)
	oc := s.OAuth()
	req := &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"}
	// The first call discovers, registers and fills the metadata cache.
	if _, err := oc.StartAuthorization(ctx, req); err != nil {
		b.Fatal(err)
	}
	metaBefore := len(wellKnownPaths(mcp.Received())) + len(wellKnownPaths(as.Requests()))
	for b.Loop() {
		compare(b, s, 64, loadDuration(), "StartAuth", func(context.Context) error {
			_, err := oc.StartAuthorization(ctx, req)
			return err
		})
	}
	if n := len(wellKnownPaths(mcp.Received())) + len(wellKnownPaths(as.Requests())) - metaBefore; n != 0 {
		b.Errorf("%d metadata requests during the load: the cache was not used", n)
	}
	if n := as.Counts("/register"); n != 1 {
		b.Errorf("%d registrations", n)
	}
}

// timedAS puts a real authorization server (testauthz, in process) behind
// an origin of its own that also plays the MCP server, and measures how
// long the authorization server's own handling of each token request
// takes, so the callback's own work can be told apart from it.
type timedAS struct {
	as       *testauthz.AuthServer
	URL      string
	lastTook atomic.Int64 // nanoseconds of the last token request
}

func newTimedAS(tb testing.TB) *timedAS {
	tb.Helper()
	t := &timedAS{as: testauthz.NewAuthServer(tb, testauthz.AuthServerOptions{DCR: true})}
	srv := httptest.NewServer(http.HandlerFunc(t.serve))
	tb.Cleanup(srv.Close)
	t.URL = srv.URL
	return t
}

func (t *timedAS) serve(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/mcp":
		w.Header().Set("WWW-Authenticate", `Bearer resource_metadata="`+t.URL+`/prm"`)
		w.WriteHeader(http.StatusUnauthorized)
	case "/prm":
		oaJSON(w, map[string]any{"resource": t.URL + "/mcp", "authorization_servers": []string{t.URL}})
	case "/.well-known/oauth-authorization-server":
		// The real server's document, rebased on this origin.
		rec := httptest.NewRecorder()
		t.as.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, r.URL.Path, nil))
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, strings.ReplaceAll(rec.Body.String(), t.as.URL, t.URL))
	case "/token":
		start := time.Now()
		t.as.ServeHTTP(w, r)
		t.lastTook.Store(int64(time.Since(start)))
	default:
		t.as.ServeHTTP(w, r)
	}
}

// BenchmarkCallback measures the callback's own work: the time of the
// browser's GET of the callback URL of a prepared flow (state consumed,
// browser and iss checked, code exchanged, tokens encrypted and stored,
// audit written, page rendered) minus the authorization server's own
// handling of the token request. PostgreSQL and Redis are behind.
//
//	go test -run '^$' -bench BenchmarkCallback -benchtime 200x ./e2e/
func BenchmarkCallback(b *testing.B) {
	redisURL, _, _ := oaRedis(b)
	ta := newTimedAS(b)
	s := Start(b, Options{Postgres: true, RedisURL: redisURL, Env: oaAllowEnv("MCPAUTH_LOG_LEVEL", "warn")})
	name := createProvider(b, s, s.AdminKey, "bench", "docs", ta.URL+"/mcp", nil)
	ctx := oaBenchCtx(s.AdminKey)
	req := &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"}
	var own, total, asTook []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		start, err := s.OAuth().StartAuthorization(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		br := NewBrowser(b)
		cb := oaToCallback(b, br, start.GetAuthorizationUrl())
		ta.lastTook.Store(0)
		b.StartTimer()
		t0 := time.Now()
		resp, err := br.Client.Get(cb.String())
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		d := time.Since(t0)
		b.StopTimer()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "Authorization complete") {
			b.Fatalf("callback: %d %s", resp.StatusCode, body)
		}
		a := time.Duration(ta.lastTook.Load())
		if a == 0 {
			b.Fatal("no token request was timed")
		}
		own, total, asTook = append(own, d-a), append(total, d), append(asTook, a)
		b.StartTimer()
	}
	b.StopTimer()
	p := func(ds []time.Duration, q float64) time.Duration {
		ds = slices.Clone(ds)
		slices.Sort(ds)
		return ds[int(float64(len(ds)-1)*q)]
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(p(own, 0.5)), "own_p50_ms")
	b.ReportMetric(ms(p(own, 0.99)), "own_p99_ms")
	b.ReportMetric(ms(p(total, 0.5)), "total_p50_ms")
	b.ReportMetric(ms(p(asTook, 0.5)), "as_token_p50_ms")
	b.Logf("%d callbacks: own work p50 %s p99 %s; whole GET p50 %s; authorization server's token handling p50 %s",
		len(own), p(own, 0.5), p(own, 0.99), p(total, 0.5), p(asTook, 0.5))
}
