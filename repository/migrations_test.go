package repository

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
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
			c, err := s.GetCredential(ctx, domain.TenantGrant("t", r.id))
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

// TestMigrationNamesIgnoreCase upgrades a 0002 database to case-insensitive
// uniqueness: providers whose names collide only in case make the
// migration refuse, naming tenant and provider ids and nothing else, and
// change nothing; once renamed, the migration runs and the database itself
// refuses names equal ignoring case.
func TestMigrationNamesIgnoreCase(t *testing.T) {
	t.Parallel()
	testenv.Backends(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := openMigratedBefore(t, dsn, "0003_provider_names_ignore_case")
		insert := func(tenant, id, name, sid string) {
			t.Helper()
			err := s.DB().Exec(`INSERT INTO providers (tenant_id, id, display_name, server_identifier, url_hash, server_url,
				key_id, version, created_at, updated_at)
				VALUES (?, ?, ?, ?, ?, ?, 1, 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)`,
				tenant, id, name, sid, "h-"+id, []byte("ct-secret-url")).Error
			if err != nil {
				t.Fatal(err)
			}
		}
		insert("t", "p1", "Postgres secret-name", "pg2")
		insert("t", "p2", "postgres SECRET-NAME", "other")
		insert("t", "p3", "third", "PG2")
		insert("t", "p4", "fourth", "fourth")
		// The same names in another tenant do not collide.
		insert("u", "p1", "Postgres secret-name", "pg2")

		err := s.Migrate(ctx)
		if err == nil {
			t.Fatal("Migrate succeeded over names equal ignoring case")
		}
		msg := err.Error()
		for _, want := range []string{"0003_provider_names_ignore_case", "display_name", "t/p1, t/p2", "server_identifier", "t/p1, t/p3", "rename"} {
			if !strings.Contains(msg, want) {
				t.Errorf("error %q does not say %q", msg, want)
			}
		}
		for _, secret := range []string{"secret", "pg2", "PG2", "u/p1", "t/p4"} {
			if strings.Contains(strings.ReplaceAll(msg, "0003_provider_names_ignore_case", ""), secret) {
				t.Errorf("error %q names %q", msg, secret)
			}
		}
		var n int64
		wantNoErr(t, s.DB().Table("schema_migrations").Count(&n).Error, "count migrations")
		if n != 2 || !s.DB().Migrator().HasIndex(&Provider{}, "uniq_provider_name") || s.DB().Migrator().HasIndex(&Provider{}, "uniq_provider_name_ci") {
			t.Fatalf("the refused migration changed the schema: %d migrations recorded", n)
		}

		// Renamed, the upgrade goes through.
		wantNoErr(t, s.DB().Exec(`UPDATE providers SET display_name = 'second' WHERE id = 'p2' AND tenant_id = 't'`).Error, "rename p2")
		wantNoErr(t, s.DB().Exec(`UPDATE providers SET server_identifier = 'pg3' WHERE id = 'p3' AND tenant_id = 't'`).Error, "rename p3")
		wantNoErr(t, s.Migrate(ctx), "Migrate after renaming")
		for _, p := range []struct{ name, sid, field string }{
			{"THIRD", "x1", "display_name"},
			{"x2", "Fourth", "server_identifier"},
		} {
			dup := &Provider{TenantID: "t", ID: "dup", DisplayName: p.name, ServerIdentifier: p.sid, URLHash: "h-dup",
				ServerURL: []byte("ct"), KeyID: 1, Version: 1}
			wantKind(t, providerWriteErr(s.DB().Create(dup).Error, "insert"), apperr.KindAlreadyExists, p.field)
		}
	})
}

// TestMigrationUserConnections upgrades a database from before migration
// 0012 that holds a provider with every per-grant row (credential, refresh
// lease, challenge, tool list) and an audit event: afterwards each row reads
// back unchanged as the tenant-wide grant's, the provider is TENANT, and a
// user's connection can be stored next to it without touching it.
func TestMigrationUserConnections(t *testing.T) {
	t.Parallel()
	testenv.Backends(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := openMigratedBefore(t, dsn, "0012_user_connections")
		exec := func(sql string, args ...any) {
			t.Helper()
			wantNoErr(t, s.DB().Exec(sql, args...).Error, "seed")
		}
		exec(`INSERT INTO providers (tenant_id, id, display_name, server_identifier, url_hash, server_url, key_id, version, cred_generation, created_at, updated_at)
			VALUES ('t', 'p', 'P', 'p', 'h-p', ?, 1, 1, 7, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)`, []byte("ct-url"))
		exec(`INSERT INTO credentials (tenant_id, provider_id, tokens, issuer, scopes, has_refresh, generation, status, reason, key_id, updated_at)
			VALUES ('t', 'p', ?, 'https://as', '["a"]', true, 7, 4, '', 1, CURRENT_TIMESTAMP)`, []byte("ct-tokens"))
		exec(`INSERT INTO refresh_leases (tenant_id, provider_id, generation, holder, expires_at) VALUES ('t', 'p', 7, 'h1', CURRENT_TIMESTAMP)`)
		exec(`INSERT INTO mcp_challenges (tenant_id, provider_id, http_status, error, scope, step_up_attempts, seen_at)
			VALUES ('t', 'p', 403, 'insufficient_scope', 'b', 2, CURRENT_TIMESTAMP)`)
		exec(`INSERT INTO tool_lists (tenant_id, provider_id, tools, fetched_at) VALUES ('t', 'p', '[{"name":"x"}]', CURRENT_TIMESTAMP)`)
		exec(`INSERT INTO audit_events (uid, tenant_id, created_at, event_type, provider_id) VALUES ('00000000000000000000000000000001', 't', CURRENT_TIMESTAMP, 'provider.created', 'p')`)
		wantNoErr(t, s.Migrate(ctx), "migrate to the latest")

		tenantGrant := domain.TenantGrant("t", "p")
		p, err := s.GetProvider(ctx, "t", "p")
		wantNoErr(t, err, "get provider")
		if st, _ := p.AuthStatus(); p.GrantScope != domain.ScopeTenant || st != domain.StatusAuthorized || p.GrantGeneration != 7 {
			t.Fatalf("provider after 0012: scope %q status %v generation %d", p.GrantScope, st, p.GrantGeneration)
		}
		c, err := s.GetCredential(ctx, tenantGrant)
		wantNoErr(t, err, "get credential")
		if string(c.Tokens) != "ct-tokens" || c.Generation != 7 || c.UserID != "" || c.Issuer != "https://as" || !c.HasRefresh || c.CreatedAt.IsZero() {
			t.Fatalf("credential after 0012: %+v", c)
		}
		ch, err := s.GetChallenge(ctx, tenantGrant)
		wantNoErr(t, err, "get challenge")
		if ch.StepUpAttempts != 2 || ch.Scope != "b" {
			t.Fatalf("challenge after 0012: %+v", ch)
		}
		tl, err := s.GetTools(ctx, tenantGrant)
		wantNoErr(t, err, "get tools")
		if tl.Tools != `[{"name":"x"}]` {
			t.Fatalf("tool list after 0012: %+v", tl)
		}
		// The old lease still holds the tenant-wide grant (it expired, so
		// another holder takes it over).
		acq, err := s.AcquireRefreshLease(ctx, tenantGrant, 7, "h2", time.Minute)
		wantNoErr(t, err, "acquire the migrated lease")
		if !acq.TookOver {
			t.Fatal("the migrated lease was not taken over: it was lost")
		}
		events, err := s.ListAudit(ctx, "t", AuditFilter{}, "", 10)
		wantNoErr(t, err, "list audit")
		if len(events) != 1 || events[0].ProviderID != "p" || events[0].UserID != "" {
			t.Fatalf("audit after 0012: %+v", events)
		}

		// A user's connection lives next to the tenant-wide grant.
		alice := domain.GrantRef{Tenant: "t", Provider: "p", User: "alice"}
		uc := newCredential("t", "p", "alice-tokens")
		uc.UserID = "alice"
		_, err = s.PutCredential(ctx, uc, 0)
		wantNoErr(t, err, "put alice's credential")
		got, err := s.GetCredential(ctx, alice)
		wantNoErr(t, err, "get alice's credential")
		if string(got.Tokens) != "alice-tokens" || got.Generation <= 7 {
			t.Fatalf("alice's credential: %+v", got)
		}
		c, err = s.GetCredential(ctx, tenantGrant)
		wantNoErr(t, err, "get credential again")
		if string(c.Tokens) != "ct-tokens" || c.Generation != 7 {
			t.Fatalf("storing alice's connection changed the tenant grant: %+v", c)
		}
	})
}
