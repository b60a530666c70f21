package repository

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// TestCredentialGenerationNeverRepeats: a credential deleted and created
// again continues the provider's generation sequence, so a writer still
// holding an old generation can never overwrite the new grant.
func TestCredentialGenerationNeverRepeats(t *testing.T) {
	testenv.Backends(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := openStore(t, dsn)
		p := mustCreate(t, s, newProvider("a", "p1"))
		c := &Credential{TenantID: "a", ProviderID: p.ID, Tokens: []byte("t1")}
		g1, err := s.PutCredential(ctx, c, 0)
		wantNoErr(t, err, "first put")
		g2, err := s.PutCredential(ctx, c, g1)
		wantNoErr(t, err, "second put")
		wantNoErr(t, s.DeleteCredential(ctx, domain.TenantGrant("a", p.ID), 0), "delete")
		g3, err := s.PutCredential(ctx, &Credential{TenantID: "a", ProviderID: p.ID, Tokens: []byte("t2")}, 0)
		wantNoErr(t, err, "re-create")
		if g3 <= g2 {
			t.Fatalf("generation went back: %d after %d", g3, g2)
		}
		// The stale writer that still holds g1 or g2 loses.
		for _, stale := range []int64{g1, g2} {
			_, err := s.PutCredential(ctx, &Credential{TenantID: "a", ProviderID: p.ID, Tokens: []byte("stale")}, stale)
			wantKind(t, err, apperr.KindAborted, "")
		}
		got, err := s.GetCredential(ctx, domain.TenantGrant("a", p.ID))
		wantNoErr(t, err, "get")
		if string(got.Tokens) != "t2" || got.Generation != g3 {
			t.Fatalf("credential %q gen %d, want t2 gen %d", got.Tokens, got.Generation, g3)
		}
	})
}

// TestIdleCredentials lists authorized credentials with a refresh token not
// refreshed since a time, across tenants, and counts failures only against
// the generation they were seen at.
func TestIdleCredentials(t *testing.T) {
	testenv.Backends(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := openStore(t, dsn)
		old := time.Now().Add(-48 * time.Hour).UTC()
		recent := time.Now().UTC()
		for _, tc := range []struct {
			tenant, id string
			at         time.Time
			refresh    bool
		}{{"a", "idle", old, true}, {"b", "idle", old, true}, {"a", "fresh", recent, true}, {"a", "norefresh", old, false}} {
			mustCreate(t, s, newProvider(tc.tenant, tc.id))
			at := tc.at
			_, err := s.PutCredential(ctx, &Credential{TenantID: tc.tenant, ProviderID: tc.id, Tokens: []byte("x"),
				Status: domain.StatusAuthorized, HasRefresh: tc.refresh, LastRefreshAt: &at}, 0)
			wantNoErr(t, err, "put")
		}
		rows, err := s.CredentialsIdleSince(ctx, time.Now().Add(-time.Hour), 10)
		wantNoErr(t, err, "idle")
		if len(rows) != 2 {
			t.Fatalf("%d idle credentials, want 2: %+v", len(rows), rows)
		}
		c, err := s.GetCredential(ctx, domain.TenantGrant("a", "idle"))
		wantNoErr(t, err, "get")
		n, err := s.RecordRefreshFailure(ctx, domain.TenantGrant("a", "idle"), c.Generation)
		wantNoErr(t, err, "failure")
		if n != 1 {
			t.Fatalf("failures %d", n)
		}
		if n, _ := s.RecordRefreshFailure(ctx, domain.TenantGrant("a", "idle"), c.Generation+100); n != 0 {
			t.Fatalf("a failure at another generation counted: %d", n)
		}
	})
}

// TestCredentialsIdleSinceOrder: never-refreshed grants come first, then the
// least recently refreshed, and the limit holds across both.
func TestCredentialsIdleSinceOrder(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		now := time.Now().UTC()
		for _, tc := range []struct {
			id string
			at *time.Time
		}{{"h3", ptrTime(now.Add(-3 * time.Hour))}, {"never", nil}, {"h5", ptrTime(now.Add(-5 * time.Hour))}, {"h4", ptrTime(now.Add(-4 * time.Hour))}} {
			mustCreate(t, s, newProvider("a", tc.id))
			_, err := s.PutCredential(ctx, &Credential{TenantID: "a", ProviderID: tc.id, Tokens: []byte("x"),
				Status: domain.StatusAuthorized, HasRefresh: true, LastRefreshAt: tc.at}, 0)
			wantNoErr(t, err, "put %s", tc.id)
		}
		rows, err := s.CredentialsIdleSince(ctx, now.Add(-time.Hour), 3)
		wantNoErr(t, err, "idle")
		var got []string
		for _, r := range rows {
			got = append(got, r.ProviderID)
		}
		if want := []string{"never", "h5", "h4"}; !slices.Equal(got, want) {
			t.Fatalf("idle order %v, want %v", got, want)
		}
	})
}

func ptrTime(t time.Time) *time.Time { return &t }

// TestCredentialIdentityBinding: a connection's identity binding is written
// with the tokens of the write that sets it, kept by every later write that
// does not (a refresh), and goes with the row when it is deleted.
func TestCredentialIdentityBinding(t *testing.T) {
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		p := mustCreate(t, s, newProvider("a", "p1"))
		ref := domain.GrantRef{Tenant: "a", Provider: p.ID, User: "alice"}
		bound := func(want string) {
			t.Helper()
			got, err := s.GetCredential(ctx, ref)
			wantNoErr(t, err, "get")
			if got.IdentitySubject != want || (want != "" && got.IdentityIssuer != "https://idp.example") {
				t.Fatalf("binding (%q, %q), want subject %q", got.IdentityIssuer, got.IdentitySubject, want)
			}
		}
		c := &Credential{TenantID: "a", ProviderID: p.ID, UserID: "alice", Tokens: []byte("t1"),
			IdentityIssuer: "https://idp.example", IdentitySubject: "00u-alice"}
		g, err := s.PutCredential(ctx, c, 0)
		wantNoErr(t, err, "insert")
		bound("00u-alice")
		g, err = s.PutCredential(ctx, &Credential{TenantID: "a", ProviderID: p.ID, UserID: "alice", Tokens: []byte("t2")}, g)
		wantNoErr(t, err, "refresh")
		bound("00u-alice")
		wantNoErr(t, s.DeleteCredential(ctx, ref, g), "delete")
		_, err = s.PutCredential(ctx, &Credential{TenantID: "a", ProviderID: p.ID, UserID: "alice", Tokens: []byte("t3")}, 0)
		wantNoErr(t, err, "re-create")
		bound("")
	})
}
