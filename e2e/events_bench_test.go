package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/repository"
)

// BenchmarkEventPipeline pushes b.N events through the outbox at 1,000
// events/s (batches of 10 every 10 ms, written with the audit writer's
// batch insert, the statement a change's transaction runs) into one
// PostgreSQL-backed service with 10 webhook endpoints (httptest receivers
// that verify every signature) and 10 WatchEvents subscribers, and reports
// the delivery latency (receipt minus the event's time) at the p50 and p99
// for webhooks and for subscribers, and the throughput: events times
// consumers delivered per second, and events per second fully delivered.
//
//	go test -run '^$' -bench BenchmarkEventPipeline -benchtime 10000x ./e2e/
//
// MCPAUTH_BENCH_EVENTS_RATE sets another rate (events/s, a multiple of 100);
// MCPAUTH_BENCH_EVENTS_WRITERS how many goroutines write the batches the
// rate hands out (default 8); MCPAUTH_BENCH_EVENTS_PROVIDERS how many
// providers the events are about (default 100; 1 is the worst case, every
// delivery to an endpoint in one ordered group).
func BenchmarkEventPipeline(b *testing.B) {
	const consumers = 10
	rate := 1000
	if v, err := strconv.Atoi(os.Getenv("MCPAUTH_BENCH_EVENTS_RATE")); err == nil && v >= 100 {
		rate = v
	}
	providers := 100
	if v, err := strconv.Atoi(os.Getenv("MCPAUTH_BENCH_EVENTS_PROVIDERS")); err == nil && v > 0 {
		providers = v
	}
	s := Start(b, Options{Postgres: true, Env: evEnv(map[string]string{"MCPAUTH_EVENTS_POLL": "250ms"})})
	recv := make([]*evReceiver, consumers)
	for i := range recv {
		recv[i] = evNewReceiver(b)
		evCreateEndpoint(b, s, "bench", fmt.Sprintf("hook-%d", i), recv[i])
	}
	// Subscribers resume after a marker event, so none misses the first
	// events however late its stream starts.
	marker := &repository.AuditEvent{TenantID: "bench", EventType: "bench.marker", Details: "{}"}
	if err := s.Store().AppendAudit(context.Background(), marker); err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	var watchLat []time.Duration
	watched := make([]int, consumers)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range consumers {
		go func() {
			stream, err := s.Audit().WatchEvents(metadataCtx(ctx, s.AdminKey), &mcpauthv1.WatchEventsRequest{Parent: "tenants/bench",
				ResumeAfter: "tenants/bench/auditEvents/" + marker.UID})
			if err != nil {
				return
			}
			for {
				m, err := stream.Recv()
				if err != nil {
					return
				}
				if m.GetAuditEvent().GetEventType() != "bench.event" {
					continue
				}
				lat := time.Since(m.GetAuditEvent().GetCreateTime().AsTime())
				mu.Lock()
				watchLat = append(watchLat, lat)
				watched[i]++
				mu.Unlock()
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	st := s.Store()
	writes0 := evRowWrites(b, st)
	cpu0 := evCPU()
	b.ResetTimer()
	start := time.Now()
	// A ticker hands out batches of 10 every 10 ms (at 1,000/s); several
	// writers take them, so one slow commit does not slow the offered
	// rate (one writer alone topped out below 600 events/s here).
	batches := make(chan int, 1024)
	go func() {
		tick := time.NewTicker(time.Second / time.Duration(rate/10))
		defer tick.Stop()
		defer close(batches)
		for sent := 0; sent < b.N; sent += 10 {
			<-tick.C
			batches <- sent
		}
	}()
	writers := 8
	if v, err := strconv.Atoi(os.Getenv("MCPAUTH_BENCH_EVENTS_WRITERS")); err == nil && v > 0 {
		writers = v
	}
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sent := range batches {
				batch := make([]*repository.AuditEvent, min(10, b.N-sent))
				for j := range batch {
					// Events about several providers: deliveries are
					// ordered per provider and endpoint.
					batch[j] = &repository.AuditEvent{TenantID: "bench", EventType: "bench.event", CreatedAt: time.Now().UTC(), Details: "{}",
						ProviderID: fmt.Sprintf("p%d", (sent+j)%providers)}
				}
				if err := st.AppendAuditBatch(context.Background(), batch); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	sendDur := time.Since(start)
	deadline := time.Now().Add(5 * time.Minute)
	for {
		done := true
		for _, r := range recv {
			if r.count("bench.event") < b.N {
				done = false
			}
		}
		mu.Lock()
		for _, n := range watched {
			if n < b.N {
				done = false
			}
		}
		mu.Unlock()
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	total := time.Since(start)
	b.StopTimer()
	cpu := evCPU() - cpu0
	time.Sleep(2 * time.Second) // PostgreSQL flushes table statistics about once a second
	writes := evRowWrites(b, st) - writes0
	var hookLat []time.Duration
	delivered := 0
	for _, r := range recv {
		for _, m := range r.messages() {
			if m.Type == "bench.event" {
				hookLat = append(hookLat, m.Received.Sub(m.Created))
				delivered++
			}
		}
		if bad := r.badSignatures(); len(bad) > 0 {
			b.Fatalf("bad signatures: %v", bad[:1])
		}
	}
	mu.Lock()
	wl := slices.Clone(watchLat)
	mu.Unlock()
	if delivered < consumers*b.N || len(wl) < consumers*b.N {
		b.Logf("offered %.0f events/s; in %s: %.0f webhooks/s, %.0f stream messages/s", float64(b.N)/sendDur.Seconds(),
			total.Round(time.Second), float64(delivered)/total.Seconds(), float64(len(wl))/total.Seconds())
		b.Fatalf("delivered %d webhooks and %d stream messages of %d each within 5 minutes", delivered, len(wl), consumers*b.N)
	}
	pct := func(d []time.Duration, p float64) float64 {
		slices.Sort(d)
		return float64(d[int(float64(len(d)-1)*p)].Microseconds()) / 1000
	}
	b.ReportMetric(pct(hookLat, 0.5), "webhook-p50-ms")
	b.ReportMetric(pct(hookLat, 0.99), "webhook-p99-ms")
	b.ReportMetric(pct(wl, 0.5), "watch-p50-ms")
	b.ReportMetric(pct(wl, 0.99), "watch-p99-ms")
	b.ReportMetric(float64(b.N)/sendDur.Seconds(), "events-offered/s")
	b.ReportMetric(float64(b.N)/total.Seconds(), "events-fully-delivered/s")
	// The costs per event, steadier than rates on a shared machine: this
	// process's CPU (service, receivers and subscribers alike) and the
	// rows PostgreSQL wrote in the test's schema (tuples inserted,
	// updated and deleted).
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/event")
	b.ReportMetric(float64(writes)/float64(b.N), "row-writes/event")
	b.ReportMetric(float64(delivered+len(wl))/total.Seconds(), "deliveries/s")
}

// evCPU returns the CPU time (user and system) this process used so far.
func evCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// evRowWrites returns the tuples inserted, updated and deleted so far in
// the store's schema, as PostgreSQL's statistics count them.
func evRowWrites(tb testing.TB, st *repository.Store) int64 {
	tb.Helper()
	var n int64
	if err := st.DB().Raw(`SELECT COALESCE(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint FROM pg_stat_user_tables
		WHERE schemaname = current_schema()`).Scan(&n).Error; err != nil {
		tb.Fatal(err)
	}
	return n
}
