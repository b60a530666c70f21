package repository

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

// TestUserGrantsAreSeparate: on both backends, the grants of one provider
// for alice, bob and the tenant are separate rows in every per-grant table:
// a write, a compare-and-swap, a refresh lease, a challenge, a tool list and
// a delete of one never touch another; deleting the provider deletes them
// all.
func TestUserGrantsAreSeparate(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		mustCreate(t, s, newProvider("t", "p"))
		refs := []domain.GrantRef{domain.TenantGrant("t", "p"), {Tenant: "t", Provider: "p", User: "alice"},
			{Tenant: "t", Provider: "p", User: "Alice"}, {Tenant: "t", Provider: "p", User: "bob/../x"}}
		for _, g := range refs {
			c := newCredential("t", "p", "tokens-of-"+g.User)
			c.UserID = g.User
			_, err := s.PutCredential(ctx, c, 0)
			wantNoErr(t, err, "put %q", g.User)
		}
		for _, g := range refs {
			c, err := s.GetCredential(ctx, g)
			wantNoErr(t, err, "get %q", g.User)
			if string(c.Tokens) != "tokens-of-"+g.User || c.Ref() != g {
				t.Fatalf("grant %q reads %q as %+v", g.User, c.Tokens, c.Ref())
			}
		}
		alice, bob := refs[1], refs[3]
		a, _ := s.GetCredential(ctx, alice)
		// A compare-and-swap with alice's generation on bob's row fails.
		b := newCredential("t", "p", "stale")
		b.UserID = bob.User
		if _, err := s.PutCredential(ctx, b, a.Generation); apperr.KindOf(err) != apperr.KindAborted {
			t.Fatalf("bob's write with alice's generation: %v", err)
		}
		// One refresh lease per grant: alice's held does not hold bob's.
		_, err := s.AcquireRefreshLease(ctx, alice, a.Generation, "r1", time.Minute)
		wantNoErr(t, err, "alice's lease")
		if _, err := s.AcquireRefreshLease(ctx, alice, a.Generation, "r2", time.Minute); !errors.Is(err, ErrLeaseHeld) {
			t.Fatalf("second holder of alice's lease: %v", err)
		}
		bc, _ := s.GetCredential(ctx, bob)
		_, err = s.AcquireRefreshLease(ctx, bob, bc.Generation, "r2", time.Minute)
		wantNoErr(t, err, "bob's lease while alice's is held")
		// Challenges and tool lists are per grant.
		_, err = s.RecordChallenge(ctx, &Challenge{TenantID: "t", ProviderID: "p", UserID: "alice", HTTPStatus: 403, Error: "insufficient_scope"}, 1)
		wantNoErr(t, err, "alice's challenge")
		if _, err := s.GetChallenge(ctx, bob); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("bob sees alice's challenge: %v", err)
		}
		wantNoErr(t, putTools(t, s, &ToolList{TenantID: "t", ProviderID: "p", UserID: "alice", Tools: `["a"]`}), "alice's tools")
		if _, err := s.GetTools(ctx, bob); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("bob sees alice's tools: %v", err)
		}
		// Deleting alice's grant leaves the others.
		wantNoErr(t, s.DeleteCredential(ctx, alice, 0), "delete alice's grant")
		if _, err := s.GetCredential(ctx, alice); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("alice's grant after delete: %v", err)
		}
		for _, g := range []domain.GrantRef{refs[0], refs[2], bob} {
			_, err := s.GetCredential(ctx, g)
			wantNoErr(t, err, "grant %q after alice's delete", g.User)
		}
		// The provider row shows the tenant-wide grant only.
		p, err := s.GetProvider(ctx, "t", "p")
		wantNoErr(t, err, "get provider")
		tc, _ := s.GetCredential(ctx, refs[0])
		if p.GrantGeneration != tc.Generation {
			t.Fatalf("provider shows generation %d, tenant grant is %d", p.GrantGeneration, tc.Generation)
		}
		// Deleting the provider deletes every grant.
		wantNoErr(t, s.DeleteProvider(ctx, "t", "p", 0), "delete provider")
		for _, g := range refs {
			if _, err := s.GetCredential(ctx, g); apperr.KindOf(err) != apperr.KindNotFound {
				t.Fatalf("grant %q outlived its provider: %v", g.User, err)
			}
		}
	})
}

// TestListConnections: connections are found by their derived id and
// listed by provider then connection id, narrowed by provider and user,
// paged by key; the tenant-wide grant is never a connection.
func TestListConnections(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		for _, p := range []string{"a", "b"} {
			mustCreate(t, s, newProvider("t", p))
			for _, u := range []string{"", "alice", "bob"} {
				c := newCredential("t", p, "x")
				c.UserID = u
				_, err := s.PutCredential(ctx, c, 0)
				wantNoErr(t, err, "put %s/%q", p, u)
			}
		}
		got, err := s.GetConnection(ctx, "t", "a", domain.ConnectionID("bob"))
		wantNoErr(t, err, "get bob's connection")
		if got.UserID != "bob" || got.ConnectionID != domain.ConnectionID("bob") {
			t.Fatalf("bob's connection: %+v", got)
		}
		if _, err := s.GetConnection(ctx, "u", "a", domain.ConnectionID("bob")); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("another tenant reads bob's connection: %v", err)
		}
		if _, err := s.GetConnection(ctx, "t", "a", ""); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("the tenant-wide grant reads as a connection: %v", err)
		}
		all, err := s.ListConnections(ctx, "t", ConnectionFilter{}, ConnectionKey{}, 10)
		wantNoErr(t, err, "list all")
		if len(all) != 4 {
			t.Fatalf("listed %d connections, want 4", len(all))
		}
		var paged []Credential
		after := ConnectionKey{}
		for {
			page, err := s.ListConnections(ctx, "t", ConnectionFilter{User: "alice"}, after, 1)
			wantNoErr(t, err, "page")
			if len(page) == 0 {
				break
			}
			paged = append(paged, page...)
			after = ConnectionKey{Provider: page[0].ProviderID, ConnectionID: page[0].ConnectionID}
		}
		if len(paged) != 2 || paged[0].ProviderID != "a" || paged[1].ProviderID != "b" || paged[0].UserID != "alice" {
			t.Fatalf("alice's connections paged: %+v", paged)
		}
		onlyB, err := s.ListConnections(ctx, "t", ConnectionFilter{Provider: "b"}, ConnectionKey{}, 10)
		wantNoErr(t, err, "list b")
		if len(onlyB) != 2 || onlyB[0].ProviderID != "b" {
			t.Fatalf("b's connections: %+v", onlyB)
		}
	})
}

// TestSharedToolListSetting: the shared tool list setting is stored and
// read back (the hot read included), and an update leaving a USER
// provider without it deletes the provider-wide list, never a
// connection's own.
func TestSharedToolListSetting(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		p := newProvider("t", "p")
		p.GrantScope, p.SharedToolList = domain.ScopeUser, true
		mustCreate(t, s, p)
		got, err := s.GetProvider(ctx, "t", "p")
		wantNoErr(t, err, "get")
		if !got.SharedToolList {
			t.Fatal("shared_tool_list was not stored")
		}
		wantNoErr(t, putTools(t, s, &ToolList{TenantID: "t", ProviderID: "p", Tools: `["shared"]`}), "shared list")
		wantNoErr(t, putTools(t, s, &ToolList{TenantID: "t", ProviderID: "p", UserID: "alice", Tools: `["alice"]`}), "alice's list")
		// An update that keeps it shared keeps the list.
		got.DisplayName = "renamed"
		wantNoErr(t, s.UpdateProvider(ctx, got, got.Version), "rename")
		if _, err := s.GetTools(ctx, domain.TenantGrant("t", "p")); err != nil {
			t.Fatalf("the shared list after a rename: %v", err)
		}
		got.SharedToolList = false
		wantNoErr(t, s.UpdateProvider(ctx, got, got.Version), "unshare")
		if _, err := s.GetTools(ctx, domain.TenantGrant("t", "p")); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("the shared list outlived the setting: %v", err)
		}
		if _, err := s.GetTools(ctx, domain.GrantRef{Tenant: "t", Provider: "p", User: "alice"}); err != nil {
			t.Fatalf("alice's own list after unsharing: %v", err)
		}
		if got, err = s.GetProvider(ctx, "t", "p"); err != nil || got.SharedToolList {
			t.Fatalf("after unsharing: %+v %v", got, err)
		}
	})
}
