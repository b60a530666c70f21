package repository

import (
	"context"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// TestMigrationBindingToolListCompletionLease upgrades a database of the
// release before 0020 (identity binding), 0018 (shared tool list), 0019
// (require_completion) and 0022 (fan-out lease, pending-only delivery
// indexes) holding rows of every table they touch, and checks that every
// row reads as before with the new columns at their neutral values: no
// binding, no shared list, no completion rule, a free fan-out cursor where
// it was; and that the reads these migrations serve work on the old rows
// (the batched credential read, a connection listing, the fan-out lease,
// claims and the listing of an endpoint's deliveries).
func TestMigrationBindingToolListCompletionLease(t *testing.T) {
	t.Parallel()
	testenv.Backends(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := openMigratedBefore(t, dsn, "0020_credentials_identity_binding")
		exec := func(sql string, args ...any) {
			t.Helper()
			wantNoErr(t, s.DB().Exec(sql, args...).Error, "seed")
		}
		exec(`INSERT INTO providers (tenant_id, id, display_name, server_identifier, url_hash, server_url, key_id, version, cred_generation, grant_scope, created_at, updated_at)
			VALUES ('t', 'p', 'P', 'p', 'h-p', ?, 1, 1, 0, 'USER', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)`, []byte("ct-url"))
		alice := domain.GrantRef{Tenant: "t", Provider: "p", User: "alice"}
		exec(`INSERT INTO credentials (tenant_id, provider_id, user_id, connection_id, tokens, issuer, scopes, has_refresh, generation, status, reason, key_id, created_by, created_at, updated_at)
			VALUES ('t', 'p', 'alice', ?, ?, 'https://as', '["a"]', true, 3, 4, '', 1, 'console', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)`,
			domain.ConnectionID("alice"), []byte("ct-alice"))
		exec(`INSERT INTO tool_lists (tenant_id, provider_id, user_id, tools, fetched_at) VALUES ('t', 'p', 'alice', '[{"name":"x"}]', CURRENT_TIMESTAMP)`)
		exec(`INSERT INTO webhook_endpoints (tenant_id, id, url, secret, key_id, version, created_at, updated_at)
			VALUES ('t', 'e', 'https://hooks.example/x', ?, 1, 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)`, []byte("ct-secret"))
		for i, state := range []int{DeliveryDelivered, DeliveryPending, DeliveryDead} {
			exec(`INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_uid, event_type, provider_id, event_txid, event_id, payload, state, next_attempt_at, created_at, updated_at)
				VALUES ('t', 'e', ?, 'provider.created', 'p', 0, ?, '{}', ?, ?, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)`,
				"0000000000000000000000000000000"+string(rune('1'+i)), i+1, state, time.Now().Add(-time.Minute).UTC())
		}
		exec(`UPDATE event_cursors SET txid = 0, event_id = 0 WHERE name = 'webhooks'`)
		exec(`INSERT INTO audit_events (uid, tenant_id, created_at, event_type, provider_id) VALUES ('00000000000000000000000000000009', 't', CURRENT_TIMESTAMP, 'provider.created', 'p')`)
		wantNoErr(t, s.Migrate(ctx), "migrate to the latest")

		p, err := s.GetProvider(ctx, "t", "p")
		wantNoErr(t, err, "get provider")
		if p.SharedToolList || p.RequireCompletion || p.GrantScope != domain.ScopeUser {
			t.Fatalf("provider after the upgrade: shared %v, require_completion %v, scope %q", p.SharedToolList, p.RequireCompletion, p.GrantScope)
		}
		c, err := s.GetCredential(ctx, alice)
		wantNoErr(t, err, "get alice's credential")
		if string(c.Tokens) != "ct-alice" || c.Generation != 3 || c.IdentityIssuer != "" || c.IdentitySubject != "" {
			t.Fatalf("alice's credential after the upgrade: %+v", c)
		}
		// The batched read returns the same row, beside a grant nobody has.
		b := s.NewCredentialBatcher()
		batch := []*credRequest{{ctx: ctx, ref: alice, done: make(chan struct{})},
			{ctx: ctx, ref: domain.GrantRef{Tenant: "t", Provider: "p", User: "bob"}, done: make(chan struct{})}}
		b.read(batch)
		if batch[0].err != nil || !credentialsEqual(batch[0].cred, c) || batch[1].err == nil {
			t.Fatalf("batched read after the upgrade: %+v %v; bob: %v", batch[0].cred, batch[0].err, batch[1].err)
		}
		// A binding is written onto the old row, and kept by a later write.
		c.IdentityIssuer, c.IdentitySubject = "https://idp", "sub-a"
		gen, err := s.PutCredential(ctx, c, c.Generation)
		wantNoErr(t, err, "bind alice's connection")
		c.IdentityIssuer, c.IdentitySubject = "", ""
		_, err = s.PutCredential(ctx, c, gen)
		wantNoErr(t, err, "write alice's connection again")
		if got, err := s.GetCredential(ctx, alice); err != nil || got.IdentitySubject != "sub-a" || got.IdentityIssuer != "https://idp" {
			t.Fatalf("binding after a later write: %+v %v", got, err)
		}
		conns, err := s.ListConnections(ctx, "t", ConnectionFilter{User: "alice"}, ConnectionKey{}, 10)
		if err != nil || len(conns) != 1 || conns[0].ConnectionID != domain.ConnectionID("alice") {
			t.Fatalf("alice's connections after the upgrade: %+v %v", conns, err)
		}
		if tl, err := s.GetTools(ctx, alice); err != nil || tl.Tools != `[{"name":"x"}]` {
			t.Fatalf("alice's tool list after the upgrade: %+v %v", tl, err)
		}

		// The cursor is free: the fan-out leases it and reads the event.
		now := time.Now().UTC()
		fb, err := s.LeaseFanOut(ctx, "r1", now, 5*time.Second, FanOutRead{Limit: 10}, nil)
		wantNoErr(t, err, "lease the fan-out")
		if fb == nil || len(fb.Events) != 1 || len(fb.Endpoints["t"]) != 1 {
			t.Fatalf("fan-out batch after the upgrade: %+v", fb)
		}
		// Another replica: a Store of its own (on PostgreSQL the lead is a
		// Store's, fanoutlead.go).
		if again, err := openStore(t, dsn).LeaseFanOut(ctx, "r2", now, 5*time.Second, FanOutRead{Limit: 10}, nil); err != nil || again != nil {
			t.Fatalf("another replica leased the fan-out r1 holds: %+v %v", again, err)
		}
		wantNoErr(t, s.RecordFanOut(ctx, fb, nil, now, 5*time.Second), "record the fan-out")
		// The pending delivery is claimed; the listing shows all three.
		claimed, err := s.ClaimDeliveries(ctx, "r1", now, time.Minute, 10)
		if err != nil || len(claimed) != 1 || claimed[0].State != DeliveryPending {
			t.Fatalf("claims after the upgrade: %+v %v", claimed, err)
		}
		all, err := s.ListWebhookDeliveries(ctx, "t", "e", -1, "", 10)
		if err != nil || len(all) != 3 {
			t.Fatalf("the endpoint's deliveries after the upgrade: %d %v", len(all), err)
		}
	})
}
