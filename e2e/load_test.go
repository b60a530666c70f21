package e2e

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// loadResult is what one load run measured.
type loadResult struct {
	N        int64
	Errors   int64
	Duration time.Duration
	P50, P99 time.Duration
}

func (r loadResult) RPS() float64 { return float64(r.N) / r.Duration.Seconds() }

// runLoad calls fn from conc goroutines for d and measures throughput and
// latency. It is a load generator for benchmarks, never a timed assertion.
func runLoad(ctx context.Context, conc int, d time.Duration, fn func(ctx context.Context) error) loadResult {
	var (
		n, errs int64
		mu      sync.Mutex
		lat     []time.Duration
		wg      sync.WaitGroup
	)
	deadline := time.Now().Add(d)
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 4096)
			for time.Now().Before(deadline) {
				t := time.Now()
				err := fn(ctx)
				local = append(local, time.Since(t))
				atomic.AddInt64(&n, 1)
				if err != nil {
					atomic.AddInt64(&errs, 1)
				}
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	r := loadResult{N: n, Errors: errs, Duration: time.Since(start)}
	slices.Sort(lat)
	if len(lat) > 0 {
		r.P50 = lat[len(lat)/2]
		r.P99 = lat[len(lat)*99/100]
	}
	return r
}

// compare runs the no-op baseline and the measured call alternately (two
// rounds each, to spread the machine's noise over both) and reports both
// and their throughput ratio.
func compare(b *testing.B, s *Service, conc int, d time.Duration, name string, fn func(ctx context.Context) error) {
	b.Helper()
	hc := healthpb.NewHealthClient(s.Conn)
	health := func(ctx context.Context) error {
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	ctx := context.Background()
	var base, meas []loadResult
	for range 2 {
		base = append(base, runLoad(ctx, conc, d, health))
		meas = append(meas, runLoad(ctx, conc, d, fn))
	}
	sum := func(rs []loadResult) (rps float64, p50, p99 time.Duration, errs int64) {
		for _, r := range rs {
			rps += r.RPS() / float64(len(rs))
			p50 += r.P50 / time.Duration(len(rs))
			p99 += r.P99 / time.Duration(len(rs))
			errs += r.Errors
		}
		return
	}
	brps, bp50, bp99, berr := sum(base)
	mrps, mp50, mp99, merr := sum(meas)
	b.Logf("concurrency %d, %s per round, 2 rounds each", conc, d)
	b.Logf("  Health/Check : %.0f req/s, p50 %s, p99 %s, %d errors", brps, bp50, bp99, berr)
	b.Logf("  %-13s: %.0f req/s, p50 %s, p99 %s, %d errors", name, mrps, mp50, mp99, merr)
	b.Logf("  ratio %s/Health = %.2f", name, mrps/brps)
	b.ReportMetric(brps, "health_rps")
	b.ReportMetric(mrps, "call_rps")
	b.ReportMetric(mrps/brps, "ratio")
	b.ReportMetric(float64(mp99.Microseconds())/1000, "call_p99_ms")
	b.ReportMetric(float64(mp50.Microseconds())/1000, "call_p50_ms")
	if merr > 0 {
		b.Errorf("%d errors during the %s load", merr, name)
	}
}

// loadDuration is how long each load round runs (MCPAUTH_LOAD_SECONDS).
func loadDuration() time.Duration {
	if d, err := time.ParseDuration(getenv("MCPAUTH_LOAD_DURATION", "3s")); err == nil {
		return d
	}
	return 3 * time.Second
}
