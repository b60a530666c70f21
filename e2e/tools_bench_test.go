package e2e

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/grpc/metadata"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// tlBearerTransport adds the bearer token to every request, as a client
// holding the raw token itself would.
type tlBearerTransport struct {
	base  http.RoundTripper
	token string
}

func (t *tlBearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+t.token)
	return t.base.RoundTrip(r)
}

// BenchmarkCallToolEchoBrokered measures what brokering costs: calling
// "echo" on an authorized MCP server (a) through mcpauth's CallTool over
// gRPC (PostgreSQL and Redis behind it) and (b) directly with the go-sdk
// client holding the token, one session reused, at 16 concurrent callers,
// in the same run, alternating two rounds of each. It reports the added
// p50 latency (goal ≤ 2 ms) and the throughput ratio brokered/direct (goal
// ≥ 0.5). Each b.Loop iteration is one full comparison.
//
//	go test -run '^$' -bench BenchmarkCallToolEchoBrokered -benchtime 1x ./e2e/
func BenchmarkCallToolEchoBrokered(b *testing.B) {
	const conc = 16
	as := testauthz.NewAuthServer(b, testauthz.AuthServerOptions{DCR: true})
	srv := testauthz.NewMCPServer(b, testauthz.MCPServerOptions{Auth: as})
	s := tlStart(b, map[string]string{"MCPAUTH_LOG_LEVEL": "warn"})
	name := createProvider(b, s, s.AdminKey, "tl-bench", "echo", srv.URL(), nil)
	tlAuthorize(b, s, name)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+s.AdminKey)
	tok, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name})
	if err != nil {
		b.Fatal(err)
	}

	// The direct client: the same SDK, the token in hand, a connection pool
	// large enough for the concurrency (more generous than mcpauth's own).
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.MaxIdleConnsPerHost = 2 * conc
	hc := &http.Client{Transport: &tlBearerTransport{base: base, token: tok.GetAccessToken()}}
	cl := mcp.NewClient(&mcp.Implementation{Name: "bench-direct", Version: "1.0.0"}, nil)
	sess, err := cl.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: srv.URL(), HTTPClient: hc}, nil)
	if err != nil {
		b.Fatalf("direct connect: %v", err)
	}
	b.Cleanup(func() { _ = sess.Close() })
	args := map[string]any{"text": "bench"}
	direct := func(ctx context.Context) error {
		res, err := sess.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: args})
		if err == nil && res.IsError {
			err = errors.New("tool error")
		}
		return err
	}
	brokered := func(context.Context) error {
		res, err := tlCall(ctx, s, name, "echo", args)
		if err == nil && res.GetIsError() {
			err = errors.New("tool error")
		}
		return err
	}
	for _, f := range []func(context.Context) error{direct, brokered} {
		for range 50 { // warm: sessions, connections, token cache
			if err := f(context.Background()); err != nil {
				b.Fatalf("warm-up: %v", err)
			}
		}
	}

	d := loadDuration()
	for b.Loop() {
		// At 16 callers (the goal's setting) and at 1, where nothing queues
		// and the added p50 is the broker's own latency.
		for _, c := range []int{conc, 1} {
			tlCompareEcho(b, c, d, direct, brokered)
		}
	}
}

// tlCompareEcho runs the direct and the brokered load alternately, two
// rounds each at concurrency conc, and reports both and their ratio. The
// metrics of concurrency 1 carry the suffix "_c1".
func tlCompareEcho(b *testing.B, conc int, d time.Duration, direct, brokered func(context.Context) error) {
	b.Helper()
	var dr, br []loadResult
	for range 2 {
		dr = append(dr, runLoad(context.Background(), conc, d, direct))
		br = append(br, runLoad(context.Background(), conc, d, brokered))
	}
	avg := func(rs []loadResult) (rps float64, p50, p99 time.Duration, errs int64) {
		for _, r := range rs {
			rps += r.RPS() / float64(len(rs))
			p50 += r.P50 / time.Duration(len(rs))
			p99 += r.P99 / time.Duration(len(rs))
			errs += r.Errors
		}
		return
	}
	drps, dp50, dp99, derr := avg(dr)
	brps, bp50, bp99, berr := avg(br)
	added := bp50 - dp50
	ratio := brps / drps
	b.Logf("echo at concurrency %d, %s per round, 2 rounds each, alternating", conc, d)
	b.Logf("  direct (go-sdk, token in hand): %.0f calls/s, p50 %s, p99 %s, %d errors", drps, dp50, dp99, derr)
	b.Logf("  brokered (mcpauth CallTool)   : %.0f calls/s, p50 %s, p99 %s, %d errors", brps, bp50, bp99, berr)
	b.Logf("  added p50 %s (goal <= 2ms), throughput ratio brokered/direct %.2f (goal >= 0.5)", added, ratio)
	suffix := ""
	if conc == 1 {
		suffix = "_c1"
	}
	b.ReportMetric(drps, "direct_rps"+suffix)
	b.ReportMetric(brps, "brokered_rps"+suffix)
	b.ReportMetric(ratio, "ratio"+suffix)
	b.ReportMetric(float64(dp50.Microseconds())/1000, "direct_p50_ms"+suffix)
	b.ReportMetric(float64(bp50.Microseconds())/1000, "brokered_p50_ms"+suffix)
	b.ReportMetric(float64(added.Microseconds())/1000, "added_p50_ms"+suffix)
	if derr+berr > 0 {
		b.Errorf("%d direct and %d brokered errors during the load at concurrency %d", derr, berr, conc)
	}
}
