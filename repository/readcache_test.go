package repository

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// TestCachedReadsSeeLocalChangesAtOnce: every write this process makes to
// a provider, its grant or its challenge is visible to the next cached
// read, whichever Store method made it; writes to other tables (audit) do
// not empty the cache.
func TestCachedReadsSeeLocalChangesAtOnce(t *testing.T) {
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		var changes atomic.Int64
		s.OnChange(func() { changes.Add(1) })
		c := s.NewCachedReads(time.Hour)
		mustCreate(t, s, newProvider("t1", "p"))

		got, err := c.GetProvider(ctx, "t1", "p")
		wantNoErr(t, err, "GetProvider")
		got2, err := c.GetProvider(ctx, "t1", "p")
		wantNoErr(t, err, "GetProvider again")
		if got != got2 {
			t.Fatal("second read within the TTL was not served from the cache")
		}
		if _, err := c.GetChallenge(ctx, domain.TenantGrant("t1", "p")); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("GetChallenge before any: %v, want NotFound", err)
		}

		// An audit write is no change to the cached tables.
		before := changes.Load()
		wantNoErr(t, s.AppendAudit(ctx, &AuditEvent{TenantID: "t1", EventType: "provider.created", Outcome: 1, Details: "{}"}), "AppendAudit")
		if changes.Load() != before {
			t.Fatal("an audit write emptied the provider cache")
		}
		if again, _ := c.GetProvider(ctx, "t1", "p"); again != got {
			t.Fatal("the cache was emptied by an audit write")
		}

		// A transaction (UpdateProvider) and single statements
		// (SetGrantStatus, RecordChallenge) are each seen at once.
		upd := *got
		upd.DisplayName = "renamed"
		wantNoErr(t, s.UpdateProvider(ctx, &upd, got.Version), "UpdateProvider")
		if p, _ := c.GetProvider(ctx, "t1", "p"); p.DisplayName != "renamed" {
			t.Fatalf("after UpdateProvider the cached read says %q", p.DisplayName)
		}
		if _, err := s.SetGrantStatus(ctx, domain.TenantGrant("t1", "p"), []domain.AuthStatus{domain.StatusUnauthorized}, domain.StatusPending, "", 1); err != nil {
			t.Fatal(err)
		}
		if p, _ := c.GetProvider(ctx, "t1", "p"); p.GrantStatus != domain.StatusPending {
			t.Fatalf("after SetGrantStatus the cached read says %v", p.GrantStatus)
		}
		if _, err := s.RecordChallenge(ctx, &Challenge{TenantID: "t1", ProviderID: "p", HTTPStatus: 401}, 1); err != nil {
			t.Fatal(err)
		}
		if ch, err := c.GetChallenge(ctx, domain.TenantGrant("t1", "p")); err != nil || ch.HTTPStatus != 401 {
			t.Fatalf("after RecordChallenge the cached read says %+v, %v", ch, err)
		}
		if changes.Load() == before {
			t.Fatal("OnChange was never called for the changes")
		}
		// Statements on the challenge table alone (no grant status change).
		wantNoErr(t, s.ClearChallenge(ctx, domain.TenantGrant("t1", "p")), "ClearChallenge")
		if _, err := c.GetChallenge(ctx, domain.TenantGrant("t1", "p")); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("after ClearChallenge the cached read says %v, want NotFound", err)
		}
		wantNoErr(t, s.DeleteProvider(ctx, "t1", "p", 0), "DeleteProvider")
		if _, err := c.GetProvider(ctx, "t1", "p"); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("after DeleteProvider the cached read says %v", err)
		}
	})
}

// TestCachedReadsOtherReplica: another process's change is served stale
// until Invalidate (the broadcast) or the TTL, never longer.
func TestCachedReadsOtherReplica(t *testing.T) {
	testenv.Backends(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		local, other := openStore(t, dsn), openStore(t, dsn)
		mustCreate(t, other, newProvider("t1", "p"))
		now := time.Now()
		c := local.NewCachedReads(time.Second)
		c.now = func() time.Time { return now }

		p, err := c.GetProvider(ctx, "t1", "p")
		wantNoErr(t, err, "GetProvider")
		upd := *p
		upd.DisplayName = "elsewhere"
		wantNoErr(t, other.UpdateProvider(ctx, &upd, p.Version), "UpdateProvider on the other store")
		if got, _ := c.GetProvider(ctx, "t1", "p"); got.DisplayName == "elsewhere" {
			t.Fatal("want the cached row within the TTL (this test checks the bound, not a race)")
		}
		c.Invalidate()
		if got, _ := c.GetProvider(ctx, "t1", "p"); got.DisplayName != "elsewhere" {
			t.Fatalf("after Invalidate the cached read says %q", got.DisplayName)
		}

		upd2 := upd
		upd2.DisplayName = "again"
		cur, _ := other.GetProvider(ctx, "t1", "p")
		wantNoErr(t, other.UpdateProvider(ctx, &upd2, cur.Version), "second UpdateProvider")
		now = now.Add(time.Second)
		if got, _ := c.GetProvider(ctx, "t1", "p"); got.DisplayName != "again" {
			t.Fatalf("after the TTL the cached read says %q", got.DisplayName)
		}
	})
}

// TestCachedReadsKeyByGrant: a credential is cached under its full grant,
// so a user's read is never answered with the tenant-wide grant's entry,
// and a credential write empties the cache.
func TestCachedReadsKeyByGrant(t *testing.T) {
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		c := s.NewCachedReads(time.Hour)
		mustCreate(t, s, newProvider("t1", "p"))
		tenantWide := domain.TenantGrant("t1", "p")
		if _, err := c.GetCredential(ctx, tenantWide); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("GetCredential before any: %v, want NotFound", err)
		}
		gen, err := s.PutCredential(ctx, newCredential("t1", "p", "tok"), 0)
		wantNoErr(t, err, "PutCredential")
		got, err := c.GetCredential(ctx, tenantWide)
		if err != nil || string(got.Tokens) != "tok" {
			t.Fatalf("after PutCredential the cached read says %+v, %v", got, err)
		}
		user := domain.GrantRef{Tenant: "t1", Provider: "p", User: "alice"}
		if u, err := c.GetCredential(ctx, user); err == nil {
			t.Fatalf("a user's read was answered with %q, the tenant-wide grant's credential", u.Tokens)
		}
		wantNoErr(t, s.DeleteCredential(ctx, tenantWide, gen), "DeleteCredential")
		if _, err := c.GetCredential(ctx, tenantWide); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("after DeleteCredential the cached read says %v, want NotFound", err)
		}
	})
}

// TestCachedReadsKeepHotEntriesWhenFull: a stream of new keys twice the
// cache's bound keeps it within the bound without taking out an entry read
// all along (it is read from the database once); entries of an earlier
// epoch are still never served. Before, the cache emptied itself at the
// bound, the hot entry with it.
func TestCachedReadsKeepHotEntriesWhenFull(t *testing.T) {
	t.Parallel()
	c := (&Store{}).NewCachedReads(time.Hour)
	hot := cacheKey{kind: 'p', tenant: "t", id: "hot"}
	hotRow, coldRow := &Provider{ID: "hot"}, &Provider{ID: "cold"}
	hotReads := 0
	readHot := func() (*Provider, error) { hotReads++; return hotRow, nil }
	readCold := func() (*Provider, error) { return coldRow, nil }
	for i := range 2 * maxCachedReads {
		if i%100 == 0 {
			if got, _ := cachedGet(c, hot, readHot); got != hotRow {
				t.Fatalf("hot read = %+v", got)
			}
		}
		_, _ = cachedGet(c, cacheKey{kind: 'p', tenant: "t", id: "cold-" + strconv.Itoa(i)}, readCold)
		if n := c.Len(); n > maxCachedReads {
			t.Fatalf("%d entries after %d new keys, over the bound %d", n, i+1, maxCachedReads)
		}
	}
	if hotReads != 1 {
		t.Fatalf("the hot entry was read from the database %d times, want once (kept while the cache was full)", hotReads)
	}
	c.Invalidate()
	_, _ = cachedGet(c, hot, readHot)
	if hotReads != 2 {
		t.Fatal("an entry of an earlier epoch was served after Invalidate")
	}
}
