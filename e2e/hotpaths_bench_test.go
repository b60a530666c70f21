package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// BenchmarkHotPathsBinaries runs the mcpauthd binaries named by
// MCPAUTH_BENCH_BINARIES ("label=path,label=path"; default: this tree's,
// labelled "this") one at a time as real processes on one PostgreSQL schema
// and one Redis, and measures GetAccessToken (a valid token),
// StartAuthorization (cached metadata, stored registration) and GetProvider,
// each right after grpc.health.v1.Health/Check on the same process, at 64
// concurrent callers over one connection. Binaries and methods are
// interleaved over MCPAUTH_BENCH_ROUNDS rounds (default 2); the table at
// the end gives the median throughput ratio to Health/Check and p99 per
// binary and method, with their range. Goals (DESIGN.md section 6): GetAccessToken >= 0.5
// with p99 <= 10 ms, StartAuthorization >= 0.3, GetProvider >= 0.4.
//
//	go build -o /tmp/mcpauthd-main ./cmd/mcpauthd   # on the baseline commit
//	MCPAUTH_BENCH_BINARIES=main=/tmp/mcpauthd-main,this= go test -run '^$' -bench BenchmarkHotPathsBinaries -benchtime 1x -timeout 30m ./e2e/
//
// (An empty path is this tree's binary.) With MCPAUTH_BENCH_GHZ naming a
// ghz binary (go install github.com/bojand/ghz/cmd/ghz@latest), ghz
// generates the load instead of this test's own loop (over one connection,
// like the loop). MCPAUTH_BENCH_METHODS picks some of the methods
// (comma-separated). With MCPAUTH_BENCH_PPROF_DIR set, each binary serves
// its profiles on an admin port (MCPAUTH_PPROF) and a CPU profile of every
// method's load is written there as <label>-<method>-<round>.pprof
// (MCPAUTH_BENCH_PPROF=allocs writes the allocations made meanwhile
// instead):
//
//	go tool pprof -top <dir>/this-StartAuthorization-1.pprof
func BenchmarkHotPathsBinaries(b *testing.B) {
	type bin struct{ label, path string }
	var bins []bin
	spec := getenv("MCPAUTH_BENCH_BINARIES", "this=")
	for _, part := range strings.Split(spec, ",") {
		label, path, ok := strings.Cut(part, "=")
		if !ok || label == "" {
			b.Fatalf("MCPAUTH_BENCH_BINARIES: %q is not label=path", part)
		}
		if path == "" {
			path = mcpauthdBinary(b)
		}
		bins = append(bins, bin{label, path})
	}
	ghz := os.Getenv("MCPAUTH_BENCH_GHZ")
	rounds := 2
	if r := os.Getenv("MCPAUTH_BENCH_ROUNDS"); r != "" {
		if _, err := fmt.Sscan(r, &rounds); err != nil || rounds < 1 {
			b.Fatalf("MCPAUTH_BENCH_ROUNDS: %q", r)
		}
	}
	c := tokStart(b, tokOptions{Env: map[string]string{"MCPAUTH_LOG_LEVEL": "warn"}, DefaultPool: true})
	for _, r := range c.Replicas {
		r.Stop()
	}
	env := map[string]string{}
	for k, v := range c.Env {
		env[k] = v
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+c.Key)
	d := loadDuration()
	type key struct{ bin, method string }
	results := map[key][]loadResult{}
	health := map[key][]loadResult{}
	cpuPerCall := map[key][]float64{} // the server process's CPU time per call, in microseconds
	methods := []string{"GetAccessToken", "StartAuthorization", "GetProvider"}
	if m := os.Getenv("MCPAUTH_BENCH_METHODS"); m != "" {
		methods = strings.Split(m, ",")
	}
	pprofDir := os.Getenv("MCPAUTH_BENCH_PPROF_DIR")
	if pprofDir != "" {
		env["MCPAUTH_PPROF"] = "true"
	}
	for round := range rounds {
		for _, bn := range bins {
			if pprofDir != "" {
				env["MCPAUTH_METRICS_ADDR"] = freeAddr(b)
			}
			p := startBinary(b, bn.path, env)
			hc := healthpb.NewHealthClient(p.Conn)
			oc := mcpauthv1.NewOAuthServiceClient(p.Conn)
			pc := mcpauthv1.NewMCPProviderServiceClient(p.Conn)
			ghzReq := map[string]string{
				"GetAccessToken":     `{"name":"` + c.Name + `"}`,
				"StartAuthorization": `{"name":"` + c.Name + `","user":"alice"}`,
				"GetProvider":        `{"name":"` + c.Name + `"}`,
			}
			ghzCall := map[string]string{
				"GetAccessToken":     "mcpauth.v1.OAuthService/GetAccessToken",
				"StartAuthorization": "mcpauth.v1.OAuthService/StartAuthorization",
				"GetProvider":        "mcpauth.v1.MCPProviderService/GetProvider",
			}
			calls := map[string]func(context.Context) error{
				"GetAccessToken": func(context.Context) error {
					_, err := oc.GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: c.Name})
					return err
				},
				"StartAuthorization": func(context.Context) error {
					_, err := oc.StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: c.Name, User: "alice"})
					return err
				},
				"GetProvider": func(context.Context) error {
					_, err := pc.GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: c.Name})
					return err
				},
			}
			// Warm up: connections, metadata and probe caches.
			for _, m := range methods {
				if err := calls[m](ctx); err != nil {
					b.Fatalf("%s on %s: %v", m, bn.label, err)
				}
			}
			for _, m := range methods {
				var h, r loadResult
				var profiled chan error
				if pprofDir != "" {
					profiled = make(chan error, 1)
					go func() {
						time.Sleep(d) // the Health/Check run comes first
						profiled <- saveProfile(env["MCPAUTH_METRICS_ADDR"], getenv("MCPAUTH_BENCH_PPROF", "profile"), d-d/4,
							filepath.Join(pprofDir, fmt.Sprintf("%s-%s-%d.pprof", bn.label, m, round+1)))
					}()
				}
				// The server's CPU per call of each run, besides throughput.
				cpu := func(run func() loadResult) (loadResult, float64) {
					t0, ok0 := p.CPUTime()
					res := run()
					t1, ok1 := p.CPUTime()
					if !ok0 || !ok1 || res.N == 0 {
						return res, 0
					}
					return res, float64((t1 - t0).Microseconds()) / float64(res.N)
				}
				var hCPU, rCPU float64
				if ghz != "" {
					h, hCPU = cpu(func() loadResult { return ghzLoad(b, ghz, p.GRPCAddr, "grpc.health.v1.Health/Check", "{}", "", 64, d) })
					r, rCPU = cpu(func() loadResult { return ghzLoad(b, ghz, p.GRPCAddr, ghzCall[m], ghzReq[m], c.Key, 64, d) })
				} else {
					h, hCPU = cpu(func() loadResult {
						return runLoad(ctx, 64, d, func(ctx context.Context) error {
							_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
							return err
						})
					})
					r, rCPU = cpu(func() loadResult { return runLoad(ctx, 64, d, calls[m]) })
				}
				cpuPerCall[key{bn.label, m}] = append(cpuPerCall[key{bn.label, m}], rCPU)
				if profiled != nil {
					if err := <-profiled; err != nil {
						b.Errorf("cpu profile of %s on %s: %v", m, bn.label, err)
					}
				}
				health[key{bn.label, m}] = append(health[key{bn.label, m}], h)
				results[key{bn.label, m}] = append(results[key{bn.label, m}], r)
				// On stdout: the testing package keeps only the first lines
				// of a benchmark's log, and the summary below must be among them.
				fmt.Printf("round %d %-6s %-18s health %6.0f/s p99 %6.1fms cpu %4.0fus/call | call %6.0f/s p50 %6.1fms p99 %6.1fms cpu %4.0fus/call errors %d | ratio %.2f\n",
					round+1, bn.label, m, h.RPS(), ms(h.P99), hCPU, r.RPS(), ms(r.P50), ms(r.P99), rCPU, r.Errors, r.RPS()/h.RPS())
				if r.Errors > 0 || h.Errors > 0 {
					b.Errorf("%s on %s: %d errors (health %d)", m, bn.label, r.Errors, h.Errors)
				}
			}
			if err := p.Term(b); err != nil {
				b.Errorf("%s did not stop cleanly: %v", bn.label, err)
			}
		}
	}
	gen := "this test's load loop"
	if ghz != "" {
		gen = "ghz"
	}
	b.Logf("load generator: %s", gen)
	b.Logf("median over %d rounds of %s each, 64 callers (ratio = call req/s / Health/Check req/s of the run just before; [min-max]):", rounds, d)
	for _, m := range methods {
		for _, bn := range bins {
			k := key{bn.label, m}
			var ratios, p99s, hp99s []float64
			for i, r := range results[k] {
				ratios = append(ratios, r.RPS()/health[k][i].RPS())
				p99s = append(p99s, ms(r.P99))
				hp99s = append(hp99s, ms(health[k][i].P99))
			}
			ratio, p99 := median(ratios), median(p99s)
			b.Logf("  %-18s %-6s ratio %.2f [%.2f-%.2f]  p99 %6.1f ms [%.1f-%.1f]  (Health/Check p99 %6.1f ms)  server CPU %.0f us/call", m, bn.label,
				ratio, slices.Min(ratios), slices.Max(ratios), p99, slices.Min(p99s), slices.Max(p99s), median(hp99s), median(cpuPerCall[k]))
			b.ReportMetric(median(cpuPerCall[k]), m+"_"+bn.label+"_cpu_us")
			b.ReportMetric(ratio, m+"_"+bn.label+"_ratio")
			b.ReportMetric(p99, m+"_"+bn.label+"_p99_ms")
		}
	}
}

// saveProfile fetches a profile of kind ("profile" for CPU, "allocs") over d from the admin port at addr
// into path.
func saveProfile(addr, kind string, d time.Duration, path string) error {
	secs := max(1, int(d.Seconds()))
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", addr, kind, secs))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("pprof answered %s", resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(path, body, 0o644)
}

// median is the middle value of xs (the mean of the two middle ones for an
// even count).
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
