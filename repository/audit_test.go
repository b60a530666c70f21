package repository

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// TestAuditUIDs: appended events (one by one and in a batch, the COPY path
// on PostgreSQL) get distinct random public ids; paging after another
// tenant's or an unknown id is an invalid page token, never a page.
func TestAuditUIDs(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		wantNoErr(t, s.AppendAudit(ctx, &AuditEvent{TenantID: "a", EventType: "e"}), "AppendAudit")
		batch := []*AuditEvent{{TenantID: "a", EventType: "e"}, {TenantID: "b", EventType: "e"}, {TenantID: "a", EventType: "e"}}
		wantNoErr(t, s.AppendAuditBatch(ctx, batch), "AppendAuditBatch")
		a, err := s.ListAudit(ctx, "a", AuditFilter{}, "", 10)
		wantNoErr(t, err, "ListAudit")
		b, err := s.ListAudit(ctx, "b", AuditFilter{}, "", 10)
		wantNoErr(t, err, "ListAudit")
		if len(a) != 3 || len(b) != 1 {
			t.Fatalf("listed %d and %d events, want 3 and 1", len(a), len(b))
		}
		seen := map[string]bool{}
		for _, e := range append(a, b...) {
			if len(e.UID) != 32 || strings.Trim(e.UID, "0123456789abcdef") != "" || seen[e.UID] {
				t.Fatalf("uid %q: not 32 lower-case hex digits, or repeated", e.UID)
			}
			seen[e.UID] = true
		}
		page, err := s.ListAudit(ctx, "a", AuditFilter{}, a[0].UID, 10)
		wantNoErr(t, err, "ListAudit after the newest")
		if len(page) != 2 || page[0].UID != a[1].UID {
			t.Fatalf("page after the newest = %+v", page)
		}
		for _, after := range []string{b[0].UID, "0123456789abcdef0123456789abcdef"} {
			_, err := s.ListAudit(ctx, "a", AuditFilter{}, after, 10)
			wantKind(t, err, apperr.KindInvalidArgument, "page_token")
		}
	})
}

// TestMigrationAuditUIDs upgrades a database whose audit events predate
// 0005: each gets a distinct 32-digit uid, and new ones are unique per
// tenant.
func TestMigrationAuditUIDs(t *testing.T) {
	t.Parallel()
	testenv.Backends(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := openMigratedBefore(t, dsn, "0005_audit_event_uid")
		for range 3 {
			wantNoErr(t, s.DB().Exec(`INSERT INTO audit_events (tenant_id, created_at, event_type) VALUES ('t', CURRENT_TIMESTAMP, 'e')`).Error, "insert")
		}
		if err := s.Migrate(ctx); err != nil {
			t.Fatalf("migrating to the latest: %v", err)
		}
		ev, err := s.ListAudit(ctx, "t", AuditFilter{}, "", 10)
		wantNoErr(t, err, "ListAudit")
		seen := map[string]bool{}
		for _, e := range ev {
			if len(e.UID) != 32 || strings.Trim(e.UID, "0123456789abcdef") != "" || seen[e.UID] {
				t.Fatalf("backfilled uid %q: not 32 lower-case hex digits, or repeated", e.UID)
			}
			seen[e.UID] = true
		}
		if len(seen) != 3 {
			t.Fatalf("%d events after the migration, want 3", len(seen))
		}
		// The uid with the event's time is the idempotency key (on
		// PostgreSQL a unique index on a partitioned table must hold the
		// partition key; uids are 128 random bits, only a retry repeats one).
		err = s.DB().Exec(`INSERT INTO audit_events (tenant_id, uid, created_at, event_type) VALUES ('t', ?, ?, 'e')`, ev[0].UID, ev[0].CreatedAt).Error
		if err == nil {
			t.Fatal("a repeated uid within a tenant was accepted")
		}
	})
}

// TestAuditUIDsSortByTime: event ids are 32 hex digits that begin with
// their time (ids written later sort after earlier ones, to the
// millisecond) and differ in their random part.
func TestAuditUIDsSortByTime(t *testing.T) {
	t.Parallel()
	a := newAuditUID()
	time.Sleep(2 * time.Millisecond)
	b, c := newAuditUID(), newAuditUID()
	for _, u := range []string{a, b, c} {
		if len(u) != 32 || strings.Trim(u, "0123456789abcdef") != "" {
			t.Fatalf("uid %q is not 32 lower-case hex digits", u)
		}
	}
	if a >= b || b == c {
		t.Fatalf("uids %s, %s, %s: want time-ordered with distinct random parts", a, b, c)
	}
	ms, err := strconv.ParseInt(a[:12], 16, 64)
	if err != nil || time.Since(time.UnixMilli(ms)) > time.Minute || time.Since(time.UnixMilli(ms)) < 0 {
		t.Fatalf("uid %s does not begin with the time now in milliseconds (%d, %v)", a, ms, err)
	}
}
