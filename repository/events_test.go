package repository

import (
	"context"
	"testing"
	"time"

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
