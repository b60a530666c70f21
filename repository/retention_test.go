package repository

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/internal/testenv"
)

// TestPruneDropsPartitionsWhileQueriesRun: on PostgreSQL, retention drops
// the monthly partitions older than the cutoff, whole, while listings and
// feed reads run without an error; newer events stay and are still paged.
func TestPruneDropsPartitionsWhileQueriesRun(t *testing.T) {
	t.Parallel()
	s := openStore(t, testenv.PostgresDSN(t))
	ctx := context.Background()
	now := time.Now().UTC()
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	wantNoErr(t, s.EnsureAuditPartitions(ctx, month.AddDate(0, -6, 0), 8), "EnsureAuditPartitions")
	for m := -6; m <= 0; m++ {
		var batch []*AuditEvent
		for i := range 50 {
			batch = append(batch, &AuditEvent{TenantID: "t", EventType: "e", CreatedAt: month.AddDate(0, m, 1).Add(time.Duration(i) * time.Minute)})
		}
		wantNoErr(t, s.AppendAuditBatch(ctx, batch), "AppendAuditBatch")
	}
	var failures atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				page, err := s.ListAudit(ctx, "t", AuditFilter{}, "", 100)
				if err == nil && len(page) > 0 {
					_, err = s.ListAudit(ctx, "t", AuditFilter{}, page[len(page)-1].UID, 100)
				}
				if err == nil {
					_, err = s.EventsAfter(ctx, "t", EventCursor{}, 100)
				}
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	cutoff := month.AddDate(0, -3, 0)
	res, err := s.PruneAudit(ctx, cutoff, 0)
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	wantNoErr(t, err, "PruneAudit")
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d queries failed while partitions were dropped; first: %v", n, firstErr.Load())
	}
	if len(res.DroppedPartitions) != 3 {
		t.Fatalf("dropped %v, want the 3 months before %s", res.DroppedPartitions, cutoff.Format("2006-01"))
	}
	parts, err := s.AuditPartitions(ctx)
	wantNoErr(t, err, "AuditPartitions")
	for _, p := range parts {
		if p.Before(cutoff) {
			t.Errorf("partition %s kept, older than the cutoff", p.Format("2006-01"))
		}
	}
	var left int64
	wantNoErr(t, s.db.Model(&AuditEvent{}).Count(&left).Error, "count")
	var old int64
	wantNoErr(t, s.db.Model(&AuditEvent{}).Where("created_at < ?", cutoff).Count(&old).Error, "count old")
	if left != 4*50 || old != 0 {
		t.Fatalf("%d events left (%d older than the cutoff), want 200 and 0", left, old)
	}
	// Pagination across the remaining partitions still pages everything.
	seen, after := 0, ""
	for {
		page, err := s.ListAudit(ctx, "t", AuditFilter{}, after, 37)
		wantNoErr(t, err, "ListAudit")
		if len(page) == 0 {
			break
		}
		seen += len(page)
		after = page[len(page)-1].UID
	}
	if seen != 200 {
		t.Fatalf("paged %d events, want 200", seen)
	}
}

// TestPruneBoundsRows: with a row bound, the oldest events beyond it go
// (the SQLite bound; it applies on PostgreSQL too), and events older than
// the cutoff go row by row on SQLite.
func TestPruneBoundsRows(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		now := time.Now().UTC()
		var batch []*AuditEvent
		for i := range 30 {
			batch = append(batch, &AuditEvent{TenantID: "t", EventType: "e", CreatedAt: now.Add(time.Duration(i-30) * time.Second)})
		}
		wantNoErr(t, s.AppendAuditBatch(ctx, batch), "AppendAuditBatch")
		_, err := s.PruneAudit(ctx, time.Time{}, 10)
		wantNoErr(t, err, "PruneAudit")
		got, err := s.ListAudit(ctx, "t", AuditFilter{}, "", 100)
		wantNoErr(t, err, "ListAudit")
		if len(got) != 10 || got[0].UID != batch[29].UID || got[9].UID != batch[20].UID {
			t.Fatalf("%d events left, want the newest 10", len(got))
		}
		_, err = s.PruneAudit(ctx, now.Add(-5*time.Second), 0)
		wantNoErr(t, err, "PruneAudit by age")
		got, err = s.ListAudit(ctx, "t", AuditFilter{}, "", 100)
		wantNoErr(t, err, "ListAudit")
		if s.db.Dialector.Name() != "postgres" && len(got) != 5 {
			t.Fatalf("%d events left after the age cutoff, want 5", len(got))
		}
	})
}

// TestPruneTokenReads: token-read counts of minutes before the cutoff go
// (across tenants, over several hour-long steps), later ones stay.
func TestPruneTokenReads(t *testing.T) {
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		now := time.Now().UTC().Truncate(time.Minute)
		var rows []TokenReads
		for _, ago := range []time.Duration{5 * time.Hour, 3*time.Hour + time.Minute, 91 * time.Minute, 89 * time.Minute, time.Minute} {
			m := now.Add(-ago)
			for _, tenant := range []string{"t1", "t2"} {
				rows = append(rows, TokenReads{TenantID: tenant, ProviderID: "p", Actor: "a", Minute: m.Unix(), Reads: 1,
					FirstMs: m.UnixMilli(), LastMs: m.UnixMilli()})
			}
		}
		if err := s.AddTokenReads(ctx, "b1", rows); err != nil {
			t.Fatal(err)
		}
		res, err := s.PruneAudit(ctx, now.Add(-90*time.Minute), 0)
		if err != nil {
			t.Fatal(err)
		}
		if res.DeletedTokenReads != 6 {
			t.Fatalf("deleted %d token-read minutes, want 6", res.DeletedTokenReads)
		}
		for _, tenant := range []string{"t1", "t2"} {
			left, err := s.ListTokenReads(ctx, tenant, TokenReadsFilter{}, TokenReadsCursor{}, 100)
			if err != nil {
				t.Fatal(err)
			}
			if len(left) != 2 {
				t.Fatalf("%s keeps %d minutes, want the 2 after the cutoff", tenant, len(left))
			}
			for _, r := range left {
				if r.Minute < now.Add(-90*time.Minute).Unix() {
					t.Fatalf("%s kept a minute before the cutoff: %d", tenant, r.Minute)
				}
			}
		}
	})
}
