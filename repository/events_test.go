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
