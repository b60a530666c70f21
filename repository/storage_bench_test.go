package repository

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/internal/testenv"
)

// BenchmarkAuditStorage24h writes what 24 hours at 1,000 token reads/s
// leave in PostgreSQL and reports the table sizes (pg_total_relation_size:
// heap, indexes and TOAST). The workload, stated:
//
//   - token reads: 1,000/s spread evenly over MCPAUTH_BENCH_PAIRS
//     (caller, provider) pairs (default 1,000: every pair reads once a
//     second), stored as the per-(caller, provider, minute) aggregates the
//     read log flushes (readlog), one flush of every pair per minute (the
//     aggregator flushes every 5 s; its rows merge into the minute's row,
//     so the stored rows are the same; the flush ids it records are
//     counted separately below);
//   - security events (refreshes, failures, revocations...): at
//     MCPAUTH_BENCH_EVENTS_PER_S (default 1/s = 86,400 a day), written
//     with the outbox's batch insert, with the details JSON of a refresh.
//
// The row count of the aggregates is pairs x 1,440 minutes whatever the
// read rate: the bound grows with the number of distinct callers and
// providers active per minute, not with reads. Set MCPAUTH_BENCH_STORAGE=1
// to run it (it inserts 1.5 million rows):
//
//	MCPAUTH_BENCH_STORAGE=1 go test -run '^$' -bench BenchmarkAuditStorage24h -benchtime 1x -timeout 30m ./repository/
func BenchmarkAuditStorage24h(b *testing.B) {
	if os.Getenv("MCPAUTH_BENCH_STORAGE") != "1" {
		b.Skip("set MCPAUTH_BENCH_STORAGE=1 to run (writes 24 simulated hours into PostgreSQL)")
	}
	pairs, eventsPerS := 1000, 1
	if v, err := strconv.Atoi(os.Getenv("MCPAUTH_BENCH_PAIRS")); err == nil && v > 0 {
		pairs = v
	}
	if v, err := strconv.Atoi(os.Getenv("MCPAUTH_BENCH_EVENTS_PER_S")); err == nil && v >= 0 {
		eventsPerS = v
	}
	const minutes = 24 * 60
	const readsPerSecond = 1000
	ctx := context.Background()
	s := openStore(b, testenv.PostgresDSN(b))
	start := time.Now().UTC().Add(-24 * time.Hour).Truncate(time.Minute)
	perPairMinute := int64(readsPerSecond * 60 / pairs)
	if perPairMinute == 0 {
		perPairMinute = 1
	}
	b.ResetTimer()
	for m := range minutes {
		minute := start.Add(time.Duration(m) * time.Minute)
		rows := make([]TokenReads, pairs)
		for i := range rows {
			rows[i] = TokenReads{TenantID: "bench", ProviderID: fmt.Sprintf("provider-%04d", i%100), Actor: fmt.Sprintf("caller-%04d", i/100),
				Minute: minute.Unix(), Reads: perPairMinute, FirstMs: minute.UnixMilli(), LastMs: minute.Add(59 * time.Second).UnixMilli()}
		}
		if err := s.AddTokenReads(ctx, fmt.Sprintf("batch-%d", m), rows); err != nil {
			b.Fatal(err)
		}
		events := make([]*AuditEvent, 0, eventsPerS*60)
		for i := range eventsPerS * 60 {
			events = append(events, &AuditEvent{TenantID: "bench", EventType: "authorization.refreshed", Actor: "background-refresher",
				ProviderID: fmt.Sprintf("provider-%04d", i%100), Outcome: 1, CreatedAt: minute.Add(time.Duration(i) * time.Second / time.Duration(eventsPerS)),
				Details: `{"expires_in":"3600","scopes":"read write"}`})
		}
		for len(events) > 0 {
			n := min(len(events), 500)
			if err := s.AppendAuditBatch(ctx, events[:n]); err != nil {
				b.Fatal(err)
			}
			events = events[n:]
		}
	}
	b.StopTimer()
	db := s.DB().WithContext(ctx)
	size := func(q string) int64 {
		var n int64
		if err := db.Raw(q).Scan(&n).Error; err != nil {
			b.Fatal(err)
		}
		return n
	}
	reads := size(`SELECT pg_total_relation_size('token_reads')`)
	readRows := size(`SELECT count(*) FROM token_reads`)
	// Each replica's aggregator records one flush id every 5 s, kept a day.
	batches := size(`SELECT pg_total_relation_size('token_read_batches')`)
	audit := size(`SELECT COALESCE(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits WHERE inhparent = 'audit_events'::regclass`)
	if audit == 0 {
		audit = size(`SELECT pg_total_relation_size('audit_events')`)
	}
	auditRows := size(`SELECT count(*) FROM audit_events`)
	mb := func(n int64) float64 { return float64(n) / (1 << 20) }
	b.Logf("24 h at %d token reads/s over %d (caller, provider) pairs, %d security events/s:", readsPerSecond, pairs, eventsPerS)
	b.Logf("  token_reads        %9d rows  %8.1f MiB", readRows, mb(reads))
	b.Logf("  token_read_batches %9d rows  %8.1f MiB (%d flush ids written here; a replica writes 17,280 a day)", minutes, mb(batches), minutes)
	b.Logf("  audit_events       %9d rows  %8.1f MiB", auditRows, mb(audit))
	b.Logf("  total                             %8.1f MiB", mb(reads+batches+audit))
	b.ReportMetric(mb(reads), "token_reads_MiB")
	b.ReportMetric(mb(audit), "audit_events_MiB")
	b.ReportMetric(mb(reads+batches+audit), "total_MiB")
}
