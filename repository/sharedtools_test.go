package repository

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

// TestPutSharedToolsOnlyWhileShared: a USER provider's shared tool list is
// stored only while the provider is still shared at the version the write
// was prepared from. A write prepared while shared is dropped once sharing
// was turned off, and also once it was turned off and on again (a list
// from the earlier period); a TENANT provider has no shared list.
func TestPutSharedToolsOnlyWhileShared(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		p := createShared(t, s)
		list := func(tools string) *ToolList {
			return &ToolList{TenantID: "a", ProviderID: "shared", Tools: tools}
		}
		shared := domain.TenantGrant("a", "shared")
		wantList := func(t *testing.T, want string) {
			t.Helper()
			tl, err := s.GetTools(ctx, shared)
			if want == "" {
				wantKind(t, err, apperr.KindNotFound, "")
				return
			}
			if err != nil || tl.Tools != want {
				t.Fatalf("shared list = %+v, %v; want %s", tl, err, want)
			}
		}
		setShared := func(t *testing.T, on bool) {
			t.Helper()
			row, err := s.GetProvider(ctx, "a", "shared")
			wantNoErr(t, err, "GetProvider")
			row.SharedToolList = on
			wantNoErr(t, s.UpdateProvider(ctx, row, row.Version), "UpdateProvider")
		}

		stored, err := s.PutSharedTools(ctx, list(`["one"]`), p.Version)
		if err != nil || !stored {
			t.Fatalf("PutSharedTools while shared = %v, %v", stored, err)
		}
		wantList(t, `["one"]`)

		// Prepared while shared (version v), written after sharing was
		// turned off: dropped.
		v := p.Version
		setShared(t, false)
		stored, err = s.PutSharedTools(ctx, list(`["stale"]`), v)
		if err != nil || stored {
			t.Fatalf("PutSharedTools after sharing was turned off = %v, %v", stored, err)
		}
		wantList(t, "")

		// On again: the write from the earlier period is still dropped,
		// one prepared from the current row is stored.
		setShared(t, true)
		stored, err = s.PutSharedTools(ctx, list(`["stale"]`), v)
		if err != nil || stored {
			t.Fatalf("PutSharedTools from before sharing was turned off and on = %v, %v", stored, err)
		}
		wantList(t, "")
		row, err := s.GetProvider(ctx, "a", "shared")
		wantNoErr(t, err, "GetProvider")
		stored, err = s.PutSharedTools(ctx, list(`["two"]`), row.Version)
		if err != nil || !stored {
			t.Fatalf("PutSharedTools from the current row = %v, %v", stored, err)
		}
		wantList(t, `["two"]`)

		// A TENANT provider's list is its own, never a shared one.
		tp := mustCreate(t, s, newProvider("a", "tenant-scoped"))
		stored, err = s.PutSharedTools(ctx, &ToolList{TenantID: "a", ProviderID: "tenant-scoped", Tools: "[]"}, tp.Version)
		if err != nil || stored {
			t.Fatalf("PutSharedTools of a TENANT provider = %v, %v", stored, err)
		}
		_, err = s.PutSharedTools(ctx, &ToolList{TenantID: "b", ProviderID: "shared", Tools: "[]"}, row.Version)
		wantKind(t, err, apperr.KindNotFound, "")
		_, err = s.PutSharedTools(ctx, &ToolList{TenantID: "a", ProviderID: "shared", UserID: "alice", Tools: "[]"}, row.Version)
		wantKind(t, err, apperr.KindInternal, "")
	})
}

// TestPutSharedToolsWaitsForTurningOff: a shared write that runs while
// another transaction is turning sharing off (the provider row updated and
// the shared list deleted, not yet committed) waits for it and then stores
// nothing. Without the lock in the write's transaction it would read the
// old row, insert the list after the delete, and commit it.
func TestPutSharedToolsWaitsForTurningOff(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		p := createShared(t, s)
		sqlDB, err := s.DB().DB()
		wantNoErr(t, err, "DB")

		// Turning sharing off, as UpdateProvider does, held open.
		tx := s.DB().WithContext(ctx).Begin()
		wantNoErr(t, tx.Error, "begin")
		defer tx.Rollback()
		wantNoErr(t, tx.Exec(`UPDATE providers SET shared_tool_list = ?, version = version + 1 WHERE tenant_id = ? AND id = ?`, false, "a", "shared").Error, "update")
		wantNoErr(t, tx.Exec(`DELETE FROM tool_lists WHERE tenant_id = ? AND provider_id = ? AND user_id = ''`, "a", "shared").Error, "delete")
		var holder int64
		postgres := s.DB().Dialector.Name() == "postgres"
		if postgres {
			wantNoErr(t, tx.Raw(`SELECT pg_backend_pid()`).Scan(&holder).Error, "pg_backend_pid")
		}
		waitsBefore := sqlDB.Stats().WaitCount

		type result struct {
			stored bool
			err    error
		}
		done := make(chan result, 1)
		var finished atomic.Bool
		go func() {
			stored, err := s.PutSharedTools(ctx, &ToolList{TenantID: "a", ProviderID: "shared", Tools: `["stale"]`}, p.Version)
			finished.Store(true)
			done <- result{stored, err}
		}()
		// Wait until the write is blocked by the open transaction: on
		// PostgreSQL waiting for its lock (as Gitaly's
		// WaitForBlockedQuery), on SQLite for the store's one connection.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if finished.Load() {
				r := <-done
				t.Fatalf("PutSharedTools did not wait for the transaction turning sharing off: %v, %v", r.stored, r.err)
			}
			if time.Now().After(deadline) {
				t.Fatal("PutSharedTools never blocked")
			}
			if !postgres {
				if sqlDB.Stats().WaitCount > waitsBefore {
					break
				}
				continue
			}
			var n int64
			wantNoErr(t, s.DB().Raw(`SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND ? = ANY(pg_blocking_pids(pid))`, holder).Scan(&n).Error, "pg_stat_activity")
			if n > 0 {
				break
			}
		}
		wantNoErr(t, tx.Commit().Error, "commit")
		r := <-done
		if r.err != nil || r.stored {
			t.Fatalf("PutSharedTools racing with turning sharing off = %v, %v", r.stored, r.err)
		}
		if tl, err := s.GetTools(ctx, domain.TenantGrant("a", "shared")); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("a shared list was stored after sharing was turned off: %+v %v", tl, err)
		}
	})
}

// createShared creates a/shared, a USER provider whose tool list is shared.
func createShared(tb testing.TB, s *Store) *Provider {
	tb.Helper()
	p := newProvider("a", "shared")
	p.GrantScope, p.SharedToolList = domain.ScopeUser, true
	return mustCreate(tb, s, p)
}

// TestPutToolsDroppedAfterProviderMoved: a grant's own tool list (the
// tenant-wide one of a TENANT provider, one user's of a USER provider)
// fetched under version v of the provider is not stored once the provider
// moved to another server (UpdateProviderResettingCredentials cleared its
// lists and moved the version on); one fetched under the current row is.
// Before the version guard, the old server's list was stored after the
// reset and served as the new server's tools.
func TestPutToolsDroppedAfterProviderMoved(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		user := newProvider("a", "per-user")
		user.GrantScope = domain.ScopeUser
		for _, tc := range []struct {
			p    *Provider
			list func(tools string) *ToolList
		}{
			{newProvider("a", "tenant-wide"), func(tools string) *ToolList {
				return &ToolList{TenantID: "a", ProviderID: "tenant-wide", Tools: tools}
			}},
			{user, func(tools string) *ToolList {
				return &ToolList{TenantID: "a", ProviderID: "per-user", UserID: "alice", Tools: tools}
			}},
		} {
			p := mustCreate(t, s, tc.p)
			ref := domain.GrantRef{Tenant: "a", Provider: p.ID, User: tc.list("").UserID}
			v := p.Version
			stored, err := s.PutTools(ctx, tc.list(`["old-server"]`), v)
			if err != nil || !stored {
				t.Fatalf("%s: PutTools at the current version = %v, %v", p.ID, stored, err)
			}

			// The provider moves while a second fetch from the old server
			// is under way.
			row, err := s.GetProvider(ctx, "a", p.ID)
			wantNoErr(t, err, "GetProvider")
			row.ServerURL = []byte("ct-url-moved")
			row.URLHash = "k1:hash-moved-" + p.ID
			wantNoErr(t, s.UpdateProviderResettingCredentials(ctx, row, row.Version), "UpdateProviderResettingCredentials")
			stored, err = s.PutTools(ctx, tc.list(`["old-server-late"]`), v)
			if err != nil || stored {
				t.Fatalf("%s: PutTools from before the move = %v, %v; want dropped", p.ID, stored, err)
			}
			if tl, err := s.GetTools(ctx, ref); apperr.KindOf(err) != apperr.KindNotFound {
				t.Fatalf("%s: tool list after the move = %+v, %v; want none (the old server's)", p.ID, tl, err)
			}

			stored, err = s.PutTools(ctx, tc.list(`["new-server"]`), row.Version)
			if err != nil || !stored {
				t.Fatalf("%s: PutTools under the moved row = %v, %v", p.ID, stored, err)
			}
			tl, err := s.GetTools(ctx, ref)
			if err != nil || tl.Tools != `["new-server"]` {
				t.Fatalf("%s: tool list = %+v, %v; want the new server's", p.ID, tl, err)
			}
		}
		_, err := s.PutTools(ctx, &ToolList{TenantID: "b", ProviderID: "tenant-wide", Tools: "[]"}, 2)
		wantKind(t, err, apperr.KindNotFound, "")
	})
}
