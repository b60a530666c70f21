package repository

import (
	"context"
	"slices"
	"testing"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// openMigratedBefore opens dsn, closed at cleanup, and applies the
// migrations that come before the one with id next.
func openMigratedBefore(tb testing.TB, dsn, next string) *Store {
	tb.Helper()
	ctx := context.Background()
	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	i := slices.IndexFunc(migrations, func(m migration) bool { return m.id == next })
	if i < 0 {
		tb.Fatalf("no migration %q", next)
	}
	if err := s.migrate(ctx, migrations[:i]); err != nil {
		tb.Fatalf("migrating to before %s: %v", next, err)
	}
	return s
}

// TestMigrationStatusToGrant upgrades a 0001 database whose providers hold
// every status in their own column (and some a credential row that
// disagrees) and checks that afterwards the grant row alone says the same
// thing every RPC used to show, with generations that never repeat.
func TestMigrationStatusToGrant(t *testing.T) {
	t.Parallel()
	testenv.Backends(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := openMigratedBefore(t, dsn, "0002_status_on_grant")
		// Pre-0002 status values were the API's numbers: 1 NOT_REQUIRED,
		// 2 UNAUTHORIZED, 3 PENDING, 4 AUTHORIZED, 6 REAUTH_REQUIRED.
		rows := []struct {
			id              string
			providerStatus  int
			credStatus      int // 0: no credential row
			credGen, provGn int64
			want            domain.AuthStatus
		}{
			{"p-none", 2, 0, 0, 0, domain.StatusUnauthorized},
			{"p-pending", 3, 0, 0, 5, domain.StatusPending},
			{"p-notreq", 1, 0, 0, 0, domain.StatusNotRequired},
			{"p-auth", 4, 4, 7, 7, domain.StatusAuthorized},
			// Started again after the grant died: the grant row keeps saying why.
			{"p-reauth", 3, 6, 2, 2, domain.StatusReauthRequired},
		}
		for _, r := range rows {
			err := s.DB().Exec(`INSERT INTO providers (tenant_id, id, display_name, server_identifier, url_hash, server_url,
				auth_status, key_id, version, cred_generation, created_at, updated_at)
				VALUES ('t', ?, ?, ?, ?, ?, ?, 1, 1, ?, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)`,
				r.id, r.id, r.id, "h-"+r.id, []byte("ct"), r.providerStatus, r.provGn).Error
			if err != nil {
				t.Fatal(err)
			}
			if r.credStatus != 0 {
				err := s.DB().Exec(`INSERT INTO credentials (tenant_id, provider_id, tokens, generation, status, reason, key_id, updated_at)
					VALUES ('t', ?, ?, ?, ?, 'INVALID_GRANT', 1, CURRENT_TIMESTAMP)`, r.id, []byte("tok"), r.credGen, r.credStatus).Error
				if err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := s.Migrate(ctx); err != nil {
			t.Fatalf("migrating to the latest: %v", err)
		}
		if s.DB().Migrator().HasColumn(&Provider{}, "auth_status") {
			t.Fatal("providers.auth_status still exists")
		}
		for _, r := range rows {
			p, err := s.GetProvider(ctx, "t", r.id)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := p.AuthStatus(); got != r.want {
				t.Errorf("%s: status %v, want %v", r.id, got, r.want)
			}
			c, err := s.GetCredential(ctx, "t", r.id)
			if r.want == domain.StatusUnauthorized {
				if err == nil {
					t.Errorf("%s: a grant row was created: %+v", r.id, c)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%s: %v", r.id, err)
			}
			if c.Status != r.want || p.GrantGeneration != c.Generation || p.CredGeneration < c.Generation {
				t.Errorf("%s: grant %+v, provider generation %d", r.id, c, p.CredGeneration)
			}
			if r.credStatus == 0 && (len(c.Tokens) != 0 || c.Generation != r.provGn+1) {
				t.Errorf("%s: moved status row has tokens %q or generation %d, want none and %d", r.id, c.Tokens, c.Generation, r.provGn+1)
			}
		}
	})
}
