package repository

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// TestAuditBatchRetryIsIdempotent stores a batch, then the same batch again
// (a retry after a commit whose acknowledgement was lost): each event is
// stored once.
func TestAuditBatchRetryIsIdempotent(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		batch := []*AuditEvent{{TenantID: "a", EventType: "x"}, {TenantID: "a", EventType: "y"}}
		PrepareEvents(time.Now(), batch...)
		wantNoErr(t, s.AppendAuditBatch(ctx, batch), "first write")
		wantNoErr(t, s.AppendAuditBatch(ctx, batch), "retried write")
		got, err := s.ListAudit(ctx, "a", AuditFilter{}, "", 10)
		wantNoErr(t, err, "ListAudit")
		if len(got) != 2 {
			t.Fatalf("%d events stored, want 2 (the retry must not double them)", len(got))
		}
		// A batch holding one stored event and a new one (on PostgreSQL
		// the COPY fails whole and the insert takes over): the new one is
		// stored, the other not again.
		fresh := &AuditEvent{TenantID: "a", EventType: "z"}
		PrepareEvents(time.Now(), fresh)
		wantNoErr(t, s.AppendAuditBatch(ctx, []*AuditEvent{batch[0], fresh}), "mixed write")
		got, err = s.ListAudit(ctx, "a", AuditFilter{}, "", 10)
		wantNoErr(t, err, "ListAudit")
		if len(got) != 3 || got[0].UID != fresh.UID {
			t.Fatalf("%d events stored (newest %q), want 3 with %q newest", len(got), got[0].UID, fresh.UID)
		}
	})
}

// TestEventsCommitWithTheirChange: a write refused by its compare-and-swap
// stores none of its events; one that commits stores them exactly once.
func TestEventsCommitWithTheirChange(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		mustCreate(t, s, newProvider("t", "p"))
		ev := func(typ string) *AuditEvent { return &AuditEvent{TenantID: "t", EventType: typ, ProviderID: "p"} }
		_, err := s.PutCredential(ctx, newCredential("t", "p", "tok"), 7, ev("refused"))
		wantKind(t, err, apperr.KindAborted, "")
		if _, err := s.PutCredential(ctx, newCredential("t", "p", "tok"), 0, ev("stored")); err != nil {
			t.Fatalf("PutCredential: %v", err)
		}
		if err := s.DeleteCredential(ctx, domain.TenantGrant("t", "p"), 99, ev("refused")); apperr.KindOf(err) != apperr.KindAborted {
			t.Fatalf("DeleteCredential at a wrong generation: %v", err)
		}
		err = s.DeleteProvider(ctx, "t", "p", 42, ev("refused"))
		wantKind(t, err, apperr.KindAborted, "")
		wantNoErr(t, s.DeleteProvider(ctx, "t", "p", 0, ev("deleted")), "DeleteProvider")
		types := readFeed(t, s, "t", 2)
		if len(types) != 2 || types[0] != "stored" || types[1] != "deleted" {
			t.Fatalf("events %v, want [stored deleted]", types)
		}
	})
}

// TestFeedWaitsForOlderTransactions: on PostgreSQL a transaction that took
// an id early and commits late must not be skipped by a reader that already
// saw a later id. The reader stops below the oldest running transaction, so
// it first sees nothing, then both events in feed order, each once.
func TestFeedWaitsForOlderTransactions(t *testing.T) {
	t.Parallel()
	s := openStore(t, testenv.PostgresDSN(t))
	ctx := context.Background()
	start, err := s.FeedEnd(ctx)
	wantNoErr(t, err, "FeedEnd")

	slow := s.db.Begin()
	defer slow.Rollback()
	wantNoErr(t, insertEvents(ctx, slow, []*AuditEvent{{TenantID: "t", EventType: "early"}}), "insert early")
	wantNoErr(t, s.AppendAudit(ctx, &AuditEvent{TenantID: "t", EventType: "late"}), "insert late")

	got, err := s.EventsAfter(ctx, "t", start, 10)
	wantNoErr(t, err, "EventsAfter")
	if len(got) != 0 {
		t.Fatalf("read %d events while an older transaction runs; a reader that passed them would skip the older one", len(got))
	}
	wantNoErr(t, slow.Commit().Error, "commit early")

	var seen []string
	cursor := start
	deadline := time.Now().Add(10 * time.Second)
	for len(seen) < 2 && time.Now().Before(deadline) {
		got, err := s.EventsAfter(ctx, "t", cursor, 1)
		wantNoErr(t, err, "EventsAfter")
		for _, e := range got {
			seen = append(seen, e.EventType)
			cursor = e.Cursor()
		}
		if len(got) == 0 {
			time.Sleep(20 * time.Millisecond) // another test's transaction may hold the horizon
		}
	}
	if len(seen) != 2 || seen[0] != "early" || seen[1] != "late" {
		t.Fatalf("feed %v, want [early late]: the older transaction first, nothing twice", seen)
	}
	again, err := s.EventsAfter(ctx, "t", cursor, 10)
	wantNoErr(t, err, "EventsAfter at the end")
	if len(again) != 0 {
		t.Fatalf("%d events again after the last cursor", len(again))
	}
}

// readFeed reads the tenant's feed from the start until it holds want
// events or 10 s pass (another test's transaction on the shared cluster may
// hold the horizon back for a moment), and returns their types.
func readFeed(tb testing.TB, s *Store, tenant string, want int) []string {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := s.EventsAfter(context.Background(), tenant, EventCursor{}, 100)
		wantNoErr(tb, err, "EventsAfter")
		if len(got) >= want || time.Now().After(deadline) {
			types := make([]string, len(got))
			for i, e := range got {
				types[i] = e.EventType
			}
			return types
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestChangeEventsCommitWithTheirChange: a client registration and a
// recorded challenge store their events in the change's transaction: a
// registration that lost its race stores none, and a challenge that did
// not change the grant status stores none.
func TestChangeEventsCommitWithTheirChange(t *testing.T) {
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		mustCreate(t, s, newProvider("t1", "p"))
		ev := func(typ string) *AuditEvent {
			return &AuditEvent{TenantID: "t1", EventType: typ, ProviderID: "p", Outcome: 1, Details: "{}"}
		}
		count := func(typ string) int {
			rows, err := s.ListAudit(ctx, "t1", AuditFilter{}, "", 100)
			wantNoErr(t, err, "ListAudit")
			n := 0
			for _, r := range rows {
				if r.EventType == typ {
					n++
				}
			}
			return n
		}
		reg := func() *ClientRegistration {
			return &ClientRegistration{TenantID: "t1", ProviderID: "p", Issuer: "https://as.example", Method: "dynamic", ClientID: "c"}
		}
		wantNoErr(t, s.PutClientRegistration(ctx, reg(), ev("oauth.client.registered")), "PutClientRegistration")
		if n := count("oauth.client.registered"); n != 1 {
			t.Fatalf("%d registration events after one registration, want 1", n)
		}
		// A concurrent second first registration loses: no event.
		wantKind(t, s.PutClientRegistration(ctx, reg(), ev("oauth.client.registered")), apperr.KindAborted, "")
		if n := count("oauth.client.registered"); n != 1 {
			t.Fatalf("%d registration events after a lost race, want 1", n)
		}

		if _, err := s.SetGrantStatus(ctx, domain.TenantGrant("t1", "p"), []domain.AuthStatus{domain.StatusUnauthorized}, domain.StatusPending, "", 1); err != nil {
			t.Fatal(err)
		}
		// Pending: the challenge does not move the status, and stores no event.
		changed, err := s.RecordChallenge(ctx, &Challenge{TenantID: "t1", ProviderID: "p", HTTPStatus: 401}, 1, ev("mcp.challenge.recorded"))
		wantNoErr(t, err, "RecordChallenge")
		if changed || count("mcp.challenge.recorded") != 0 {
			t.Fatalf("changed=%v, %d events for a challenge that changed nothing", changed, count("mcp.challenge.recorded"))
		}
		if _, err := s.SetGrantStatus(ctx, domain.TenantGrant("t1", "p"), []domain.AuthStatus{domain.StatusPending}, domain.StatusNotRequired, "", 1); err != nil {
			t.Fatal(err)
		}
		changed, err = s.RecordChallenge(ctx, &Challenge{TenantID: "t1", ProviderID: "p", HTTPStatus: 401}, 1, ev("mcp.challenge.recorded"))
		wantNoErr(t, err, "RecordChallenge")
		if !changed || count("mcp.challenge.recorded") != 1 {
			t.Fatalf("changed=%v, %d events for a challenge that changed the status, want 1", changed, count("mcp.challenge.recorded"))
		}
	})
}

// TestFeedReadsWalkRangesOnSQLite: every read of the event feed on SQLite
// (the fan-out's positions and its stretch of whole events, a tenant's
// events for WatchEvents, all events for the log mirror) walks an index
// range. A full scan of the audit table would run on every poll of an idle
// feed, and the table holds up to MCPAUTH_AUDIT_MAX_ROWS events.
func TestFeedReadsWalkRangesOnSQLite(t *testing.T) {
	t.Parallel()
	s := openStore(t, testenv.SQLiteDSN(t))
	ctx := context.Background()
	now := time.Now().UTC()
	createEndpoint(t, s, now)
	appendEvents(t, s, "p", "q", "p")
	other := &AuditEvent{TenantID: "u", EventType: "x", Details: "{}"}
	PrepareEvents(now, other)
	wantNoErr(t, s.AppendAuditBatch(ctx, []*AuditEvent{other}), "AppendAuditBatch")

	// Every statement that reads audit_events, with its arguments.
	type stmt struct {
		sql  string
		vars []any
	}
	var mu sync.Mutex
	var reads []stmt
	capture := func(db *gorm.DB) {
		if sql := db.Statement.SQL.String(); strings.Contains(sql, "audit_events") && strings.HasPrefix(strings.TrimSpace(sql), "SELECT") {
			mu.Lock()
			reads = append(reads, stmt{sql, slices.Clone(db.Statement.Vars)})
			mu.Unlock()
		}
	}
	wantNoErr(t, s.db.Callback().Query().After("gorm:query").Register("test:feed_reads", capture), "register query callback")
	wantNoErr(t, s.db.Callback().Row().After("gorm:row").Register("test:feed_reads", capture), "register row callback")

	b, err := s.LeaseFanOut(ctx, "me", now, time.Minute, FanOutRead{Limit: 500}, nil)
	if err != nil || b == nil || len(b.Events) != 3 {
		t.Fatalf("LeaseFanOut: %v, %v, want tenant t's 3 events read whole", b, err)
	}
	if evs, err := s.EventsAfter(ctx, "t", EventCursor{}, 10); err != nil || len(evs) != 3 {
		t.Fatalf("EventsAfter: %d events, %v; want 3", len(evs), err)
	}
	if evs, err := s.AllEventsAfter(ctx, EventCursor{}, 10); err != nil || len(evs) != 4 {
		t.Fatalf("AllEventsAfter: %d events, %v; want 4", len(evs), err)
	}
	wantNoErr(t, s.db.Callback().Query().Remove("test:feed_reads"), "remove query callback")
	wantNoErr(t, s.db.Callback().Row().Remove("test:feed_reads"), "remove row callback")

	if len(reads) < 4 {
		t.Fatalf("captured %d reads of audit_events, want the fan-out's two and the feeds' two at least", len(reads))
	}
	for _, r := range reads {
		rows, err := s.db.Raw("EXPLAIN QUERY PLAN "+r.sql, r.vars...).Rows()
		wantNoErr(t, err, "EXPLAIN QUERY PLAN")
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			wantNoErr(t, rows.Scan(&id, &parent, &unused, &detail), "scan plan")
			plan = append(plan, detail)
		}
		wantNoErr(t, rows.Err(), "plan rows")
		rows.Close()
		for _, step := range plan {
			if strings.HasPrefix(step, "SCAN audit_events") {
				t.Errorf("%s\nscans the audit table: %v", r.sql, plan)
			}
		}
	}
}
