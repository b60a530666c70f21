package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/service/grants"
)

// Sizes of the refresher sweep benchmark: 100,000 connections over 10
// tenants of 10 USER providers, 1,000 users each.
const (
	swTenants   = 10
	swProviders = 10
	swUsers     = 1_000
)

// swStatement is one SQL statement a pass sent, as GORM sent it.
type swStatement struct {
	SQL  string
	Vars []any
}

// swCapture records the statements GORM runs on credentials while on.
type swCapture struct {
	mu   sync.Mutex
	on   bool
	stmt []swStatement
}

func (c *swCapture) record(db *gorm.DB) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.on && db.Statement.Table == "credentials" {
		c.stmt = append(c.stmt, swStatement{SQL: db.Statement.SQL.String(), Vars: slices.Clone(db.Statement.Vars)})
	}
}

// take turns capturing on for the run of fn and returns what it sent.
func (c *swCapture) take(fn func()) []swStatement {
	c.mu.Lock()
	c.on, c.stmt = true, nil
	c.mu.Unlock()
	fn()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.on = false
	return c.stmt
}

// swPlanCost runs each statement under EXPLAIN (ANALYZE, BUFFERS) in a
// transaction that is rolled back, and sums the rows its scans of
// credentials read (returned or removed by a filter, times loops) and the
// shared buffers it touched; it logs one line per statement.
func swPlanCost(tb testing.TB, db *gorm.DB, stmts []swStatement) (rows, buffers float64) {
	tb.Helper()
	sqlDB, err := db.DB()
	if err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	for _, st := range stmts {
		tx, err := sqlDB.BeginTx(ctx, nil)
		if err != nil {
			tb.Fatal(err)
		}
		var raw string
		err = tx.QueryRowContext(ctx, "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "+st.SQL, st.Vars...).Scan(&raw)
		_ = tx.Rollback()
		if err != nil {
			tb.Fatalf("explain %s: %v", st.SQL, err)
		}
		var plans []struct {
			Plan swPlanNode `json:"Plan"`
		}
		if err := json.Unmarshal([]byte(raw), &plans); err != nil || len(plans) != 1 {
			tb.Fatalf("explain output %s: %v", raw, err)
		}
		p := plans[0].Plan
		r, scans := p.rowsRead()
		rows += r
		buffers += p.SharedHit + p.SharedRead
		tb.Logf("  %.0f rows read, %.0f buffers, %s: %s", r, p.SharedHit+p.SharedRead, strings.Join(scans, ", "), st.SQL)
	}
	return rows, buffers
}

// swPlanNode is the part of a PostgreSQL JSON plan node the sweep
// benchmark reads.
type swPlanNode struct {
	NodeType      string       `json:"Node Type"`
	Relation      string       `json:"Relation Name"`
	Index         string       `json:"Index Name"`
	ActualRows    float64      `json:"Actual Rows"`
	ActualLoops   float64      `json:"Actual Loops"`
	RemovedFilter float64      `json:"Rows Removed by Filter"`
	RemovedCheck  float64      `json:"Rows Removed by Index Recheck"`
	SharedHit     float64      `json:"Shared Hit Blocks"`
	SharedRead    float64      `json:"Shared Read Blocks"`
	Plans         []swPlanNode `json:"Plans"`
}

// rowsRead sums the rows the plan's scans of credentials read, and names
// the scans.
func (n swPlanNode) rowsRead() (float64, []string) {
	var rows float64
	var scans []string
	if n.Relation == "credentials" && n.NodeType != "ModifyTable" {
		rows = (n.ActualRows + n.RemovedFilter + n.RemovedCheck) * n.ActualLoops
		scans = append(scans, strings.TrimSpace(n.NodeType+" "+n.Index))
	}
	for _, c := range n.Plans {
		r, s := c.rowsRead()
		rows += r
		scans = append(scans, s...)
	}
	return rows, scans
}

// BenchmarkRefresherSweep100k (issue 11): the background refresher's cost
// per 100,000 idle connections on PostgreSQL. 100,000 connections (10
// tenants, 10 USER providers each, 1,000 users per provider), each sealed
// for its own user and refreshed within the idle age, so a pass has
// nothing to do: the benchmark times grants.Refresher.Pass (ns/op,
// allocations with -benchmem) and reports the rows of credentials its SQL
// reads and the buffers it touches, from EXPLAIN (ANALYZE, BUFFERS) of the
// very statements one pass sent. Then every connection is made due and it
// reports the same for the reads that pick a pass's batch (500), the part
// of a sweep that grows with the number of connections. Seeding takes a
// while, so it runs only with MCPAUTH_BENCH_CONNECTIONS=1:
//
//	MCPAUTH_BENCH_CONNECTIONS=1 go test -run '^$' -bench BenchmarkRefresherSweep100k -benchmem -timeout 30m ./e2e/
func BenchmarkRefresherSweep100k(b *testing.B) {
	if os.Getenv("MCPAUTH_BENCH_CONNECTIONS") == "" {
		b.Skip("set MCPAUTH_BENCH_CONNECTIONS=1 to seed 100,000 connections")
	}
	s := Start(b, Options{Postgres: true, Env: map[string]string{"MCPAUTH_LOG_LEVEL": "warn"}})
	ctx := context.Background()
	db := s.Store().DB()
	t0 := time.Now()
	tenant := func(t int) string { return fmt.Sprintf("t%02d", t) }
	for t := range swTenants {
		list1MLoad(b, s.DSN, s.App.Keys(), tenant(t), swProviders)
	}
	if err := db.Exec("UPDATE providers SET grant_scope = ?", domain.ScopeUser).Error; err != nil {
		b.Fatal(err)
	}
	total := swTenants * swProviders * swUsers
	cbSeedRefs(b, s, clBenchHeld(), total, func(i int) domain.GrantRef {
		return domain.GrantRef{Tenant: tenant(i / (swProviders * swUsers)), Provider: list1MID(i / swUsers % swProviders),
			User: fmt.Sprintf("u-%04d", i%swUsers)}
	})
	if err := db.Exec("VACUUM (ANALYZE) credentials").Error; err != nil {
		b.Fatal(err)
	}
	b.Logf("seeded %d connections in %s", total, time.Since(t0).Round(time.Millisecond))

	var capture swCapture
	for _, reg := range []interface {
		Register(string, func(*gorm.DB)) error
		Remove(string) error
	}{db.Callback().Query().After("gorm:query"), db.Callback().Update().After("gorm:update")} {
		if err := reg.Register("bench:sweep", capture.record); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = reg.Remove("bench:sweep") })
	}

	r := grants.NewRefresherWith(s.Store(), s.App.Tokens(), slog.New(slog.NewTextHandler(io.Discard, nil)), grants.RefresherConfig{})
	for range 5 {
		r.Pass(ctx) // warm the pool and PostgreSQL's caches
	}
	stmts := capture.take(func() {
		if n := r.Pass(ctx); n != 0 {
			b.Fatalf("a pass over fresh connections refreshed %d", n)
		}
	})
	b.Logf("one pass over %d connections refreshed within the idle age: %d statements", total, len(stmts))
	rows, buffers := swPlanCost(b, db, stmts)

	b.ReportAllocs()
	for b.Loop() {
		if n := r.Pass(ctx); n != 0 {
			b.Fatalf("a pass over fresh connections refreshed %d", n)
		}
	}
	b.StopTimer()
	b.ReportMetric(rows, "rows_read/pass")
	b.ReportMetric(buffers, "buffers/pass")

	// All due: what picking a pass's batch reads (the refreshes themselves
	// are the authorization servers' work, 500 a pass).
	if err := db.Exec("UPDATE credentials SET last_refresh_at = now() - interval '1 day'").Error; err != nil {
		b.Fatal(err)
	}
	if err := db.Exec("VACUUM (ANALYZE) credentials").Error; err != nil {
		b.Fatal(err)
	}
	pick := func() {
		if _, err := s.Store().ExpirePendingGrants(ctx, time.Now().Add(-11*time.Minute), domain.ReasonFlowExpiredOrUsed); err != nil {
			b.Fatal(err)
		}
		got, err := s.Store().CredentialsIdleSince(ctx, time.Now().Add(-12*time.Hour), 500)
		if err != nil || len(got) != 500 {
			b.Fatalf("idle read: %d rows, %v", len(got), err)
		}
	}
	for range 5 {
		pick()
	}
	var took []time.Duration
	for range 50 {
		t := time.Now()
		pick()
		took = append(took, time.Since(t))
	}
	slices.Sort(took)
	b.Logf("a pass's reads with all %d connections due (batch of 500): p50 %s, max %s", total, took[len(took)/2], took[len(took)-1])
	dueRows, dueBuffers := swPlanCost(b, db, capture.take(pick))
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "due_pick_p50_ms")
	b.ReportMetric(dueRows, "due_rows_read/pass")
	b.ReportMetric(dueBuffers, "due_buffers/pass")
}
