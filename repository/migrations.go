package repository

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/go-gormigrate/gormigrate/v2"
	"gorm.io/gorm"

	"github.com/mcpauth/mcpauth/domain"
)

// migration is one versioned schema change.
type migration struct {
	id string
	// check, when set, runs in the migration's transaction before its
	// statements and refuses data the migration cannot carry over, with a
	// message that tells the operator what to do.
	check func(tx *gorm.DB) error
	sql   []string
	// fill, when set, runs after the statements (both dialects): data
	// changes SQL cannot express.
	fill func(tx *gorm.DB) error
	// postgres and sqlite, when set, run after sql on that dialect only
	// (for changes the two databases express differently).
	postgres []string
	sqlite   []string
}

// migrationLockKey is the PostgreSQL advisory lock that serialises Migrate
// across replicas starting at the same time.
const migrationLockKey = 0x6d6370617574 // "mcpaut"

// The schema is plain SQL, frozen per migration, so that later model changes
// cannot rewrite history. Placeholders are replaced per dialect:
// {{BYTES}} binary, {{EMPTYBYTES}} an empty binary value, {{TS}} timestamp, {{BOOL}} boolean, {{AUTOID}} an
// auto-increment 64-bit primary key, {{RANDOMHEX16}} 16 random bytes as 32 lower-case hex digits.
var migrations = []migration{
	{
		id: "0001_init",
		sql: []string{
			`CREATE TABLE providers (
				tenant_id varchar(63) NOT NULL,
				id varchar(63) NOT NULL,
				display_name text NOT NULL,
				server_identifier text NOT NULL,
				url_hash text NOT NULL,
				server_url {{BYTES}} NOT NULL,
				headers {{BYTES}},
				icon text NOT NULL DEFAULT '',
				timeout_ms bigint NOT NULL DEFAULT 0,
				sse_read_timeout_ms bigint NOT NULL DEFAULT 0,
				client_id text NOT NULL DEFAULT '',
				client_secret {{BYTES}},
				scopes text NOT NULL DEFAULT '',
				compat text NOT NULL DEFAULT '',
				auth_status integer NOT NULL DEFAULT 0,
				key_id bigint NOT NULL,
				version bigint NOT NULL,
				cred_generation bigint NOT NULL DEFAULT 0,
				created_at {{TS}} NOT NULL,
				updated_at {{TS}} NOT NULL,
				CONSTRAINT providers_pkey PRIMARY KEY (tenant_id, id)
			)`,
			`CREATE UNIQUE INDEX uniq_provider_name ON providers (tenant_id, display_name)`,
			`CREATE UNIQUE INDEX uniq_provider_sid ON providers (tenant_id, server_identifier)`,
			`CREATE UNIQUE INDEX uniq_provider_url ON providers (tenant_id, url_hash)`,
			`CREATE INDEX idx_provider_key_id ON providers (key_id)`,

			`CREATE TABLE credentials (
				tenant_id varchar(63) NOT NULL,
				provider_id varchar(63) NOT NULL,
				tokens {{BYTES}} NOT NULL,
				issuer text NOT NULL DEFAULT '',
				scopes text NOT NULL DEFAULT '',
				expires_at {{TS}},
				has_refresh {{BOOL}} NOT NULL DEFAULT false,
				generation bigint NOT NULL,
				status integer NOT NULL DEFAULT 0,
				reason text NOT NULL DEFAULT '',
				refresh_failures bigint NOT NULL DEFAULT 0,
				last_refresh_at {{TS}},
				key_id bigint NOT NULL,
				updated_at {{TS}} NOT NULL,
				CONSTRAINT credentials_pkey PRIMARY KEY (tenant_id, provider_id),
				CONSTRAINT fk_credentials_provider FOREIGN KEY (tenant_id, provider_id)
					REFERENCES providers (tenant_id, id) ON DELETE CASCADE
			)`,
			`CREATE INDEX idx_credential_key_id ON credentials (key_id)`,

			`CREATE TABLE client_registrations (
				tenant_id varchar(63) NOT NULL,
				provider_id varchar(63) NOT NULL,
				issuer_hash varchar(64) NOT NULL,
				issuer text NOT NULL,
				method text NOT NULL,
				client_id text NOT NULL,
				secret {{BYTES}},
				redirect_uri text NOT NULL DEFAULT '',
				key_id bigint NOT NULL,
				version bigint NOT NULL,
				created_at {{TS}} NOT NULL,
				updated_at {{TS}} NOT NULL,
				CONSTRAINT client_registrations_pkey PRIMARY KEY (tenant_id, provider_id, issuer_hash),
				CONSTRAINT fk_client_registrations_provider FOREIGN KEY (tenant_id, provider_id)
					REFERENCES providers (tenant_id, id) ON DELETE CASCADE
			)`,
			`CREATE INDEX idx_client_registration_key_id ON client_registrations (key_id)`,

			`CREATE TABLE tool_lists (
				tenant_id varchar(63) NOT NULL,
				provider_id varchar(63) NOT NULL,
				tools text NOT NULL,
				fetched_at {{TS}} NOT NULL,
				CONSTRAINT tool_lists_pkey PRIMARY KEY (tenant_id, provider_id),
				CONSTRAINT fk_tool_lists_provider FOREIGN KEY (tenant_id, provider_id)
					REFERENCES providers (tenant_id, id) ON DELETE CASCADE
			)`,

			// Audit rows outlive their provider: no foreign key.
			`CREATE TABLE audit_events (
				id {{AUTOID}},
				tenant_id varchar(63) NOT NULL,
				created_at {{TS}} NOT NULL,
				event_type text NOT NULL,
				actor text NOT NULL DEFAULT '',
				provider_id text NOT NULL DEFAULT '',
				outcome integer NOT NULL DEFAULT 0,
				reason text NOT NULL DEFAULT '',
				request_id text NOT NULL DEFAULT '',
				details text NOT NULL DEFAULT ''
			)`,
			`CREATE INDEX idx_audit_tenant_id ON audit_events (tenant_id, id DESC)`,
			`CREATE INDEX idx_audit_tenant_provider_id ON audit_events (tenant_id, provider_id, id DESC)`,
		},
	},
	{
		// Authorization status had two owners (providers.auth_status and
		// credentials.status, written in separate transactions). The grant
		// row is now its only owner: a provider without one is
		// UNAUTHORIZED, and PENDING or NOT_REQUIRED without tokens move to
		// a grant row with no tokens. Where both rows existed the grant
		// row's status already described the tokens, and it wins.
		id: "0002_status_on_grant",
		sql: []string{
			`INSERT INTO credentials (tenant_id, provider_id, tokens, generation, status, reason, key_id, updated_at)
				SELECT p.tenant_id, p.id, {{EMPTYBYTES}}, p.cred_generation + 1, p.auth_status, '', p.key_id, p.updated_at
				FROM providers p
				WHERE p.auth_status IN (1, 3)
				AND NOT EXISTS (SELECT 1 FROM credentials c WHERE c.tenant_id = p.tenant_id AND c.provider_id = p.id)`,
			`UPDATE providers SET cred_generation = (SELECT c.generation FROM credentials c
				WHERE c.tenant_id = providers.tenant_id AND c.provider_id = providers.id)
				WHERE EXISTS (SELECT 1 FROM credentials c WHERE c.tenant_id = providers.tenant_id
				AND c.provider_id = providers.id AND c.generation > providers.cred_generation)`,
			`ALTER TABLE providers DROP COLUMN auth_status`,
		},
	},
	{
		// People compare names ignoring case: "pg2" and "PG2" are one
		// provider to them. Display names and server identifiers become
		// unique per tenant as lower() folds them (ASCII letters on every
		// backend; PostgreSQL also folds other letters as its locale says).
		// Rows that already collide are not renamed behind the operator's
		// back (other systems refer to server identifiers): the migration
		// refuses, naming the providers to rename, and can be run again.
		id:    "0003_provider_names_ignore_case",
		check: caseCollisions,
		sql: []string{
			`DROP INDEX uniq_provider_name`,
			`DROP INDEX uniq_provider_sid`,
			`CREATE UNIQUE INDEX uniq_provider_name_ci ON providers (tenant_id, lower(display_name))`,
			`CREATE UNIQUE INDEX uniq_provider_sid_ci ON providers (tenant_id, lower(server_identifier))`,
		},
	},
	{
		// One row per master key id the data was ever written under: a
		// check value derived from the key (keyring.CheckValue). A replica
		// configured with another key under a known id refuses to start
		// instead of writing rows the others cannot read.
		id: "0004_key_check",
		sql: []string{
			`CREATE TABLE key_checks (
				key_id bigint NOT NULL,
				check_value varchar(64) NOT NULL,
				created_at {{TS}} NOT NULL,
				CONSTRAINT key_checks_pkey PRIMARY KEY (key_id)
			)`,
		},
	},
	{
		// Audit event ids are one sequence across tenants: shown to callers
		// (in event names and page tokens) they would tell every tenant the
		// others' event volume. Callers now see a random uid instead; the
		// sequence stays internal, for ordering.
		id: "0005_audit_event_uid",
		sql: []string{
			`ALTER TABLE audit_events ADD COLUMN uid varchar(32) NOT NULL DEFAULT ''`,
			`UPDATE audit_events SET uid = {{RANDOMHEX16}} WHERE uid = ''`,
			`CREATE UNIQUE INDEX uniq_audit_uid ON audit_events (tenant_id, uid)`,
		},
	},
	{
		// The last Bearer challenge an MCP server answered for a provider
		// (401, or 403 insufficient_scope), on any request from any replica:
		// StartAuthorization discovers and picks scopes from it, and a probe
		// never hides it. step_up_attempts counts authorizations completed
		// while an insufficient_scope refusal was outstanding; a successful
		// authorized request deletes the row.
		id: "0006_mcp_challenges",
		sql: []string{
			`CREATE TABLE mcp_challenges (
				tenant_id varchar(63) NOT NULL,
				provider_id varchar(63) NOT NULL,
				http_status integer NOT NULL,
				error text NOT NULL DEFAULT '',
				scope text NOT NULL DEFAULT '',
				resource_metadata text NOT NULL DEFAULT '',
				step_up_attempts integer NOT NULL DEFAULT 0,
				seen_at {{TS}} NOT NULL,
				CONSTRAINT mcp_challenges_pkey PRIMARY KEY (tenant_id, provider_id),
				CONSTRAINT fk_mcp_challenges_provider FOREIGN KEY (tenant_id, provider_id)
					REFERENCES providers (tenant_id, id) ON DELETE CASCADE
			)`,
		},
	},
	{
		// The refresh lease: a replica calls the token endpoint with a
		// grant's refresh token only while it holds this row for the
		// generation it read. Redis only keeps replicas from queueing here;
		// losing Redis can never let two replicas spend one refresh token.
		id: "0007_refresh_leases",
		sql: []string{
			`CREATE TABLE refresh_leases (
				tenant_id varchar(63) NOT NULL,
				provider_id varchar(63) NOT NULL,
				generation bigint NOT NULL,
				holder varchar(64) NOT NULL,
				expires_at {{TS}} NOT NULL,
				CONSTRAINT refresh_leases_pkey PRIMARY KEY (tenant_id, provider_id),
				CONSTRAINT fk_refresh_leases_provider FOREIGN KEY (tenant_id, provider_id)
					REFERENCES providers (tenant_id, id) ON DELETE CASCADE
			)`,
		},
	},
	{
		// The audit log becomes the event outbox. Each event records the
		// transaction that wrote it (txid; on PostgreSQL the top-level
		// transaction id, 64-bit and increasing per database cluster), so
		// that readers can deliver events in an order that never changes
		// afterwards: (txid, id) below the oldest transaction still running
		// (see EventsAfter). On PostgreSQL the table is also partitioned by
		// month of created_at, so that retention drops whole partitions;
		// existing rows are copied into it. The public uid together with
		// created_at is the idempotency key of a retried insert.
		id: "0008_audit_outbox_partitioned",
		postgres: []string{
			`ALTER TABLE audit_events RENAME TO audit_events_0005`,
			`DROP INDEX IF EXISTS idx_audit_tenant_id`,
			`DROP INDEX IF EXISTS idx_audit_tenant_provider_id`,
			`DROP INDEX IF EXISTS uniq_audit_uid`,
			`CREATE SEQUENCE audit_event_seq AS bigint`,
			`SELECT setval('audit_event_seq', GREATEST((SELECT max(id) FROM audit_events_0005), 0) + 1, false)`,
			`CREATE TABLE audit_events (
				id bigint NOT NULL DEFAULT nextval('audit_event_seq'),
				uid varchar(32) NOT NULL,
				tenant_id varchar(63) NOT NULL,
				created_at timestamptz NOT NULL,
				event_type text NOT NULL,
				actor text NOT NULL DEFAULT '',
				provider_id text NOT NULL DEFAULT '',
				outcome integer NOT NULL DEFAULT 0,
				reason text NOT NULL DEFAULT '',
				request_id text NOT NULL DEFAULT '',
				details text NOT NULL DEFAULT '',
				txid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint)
			) PARTITION BY RANGE (created_at)`,
			`ALTER SEQUENCE audit_event_seq OWNED BY audit_events.id`,
			// Rows outside every monthly partition (a clock far off, a
			// partition not created yet) land here instead of failing.
			`CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT`,
			`DO $$
			DECLARE m date;
			BEGIN
				m := date_trunc('month', LEAST(COALESCE((SELECT min(created_at) FROM audit_events_0005), now()), now()) AT TIME ZONE 'UTC')::date;
				WHILE m <= (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 month')::date LOOP
					EXECUTE format('CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
						'audit_events_p' || to_char(m, 'YYYYMM'), m::timestamp AT TIME ZONE 'UTC', (m + interval '1 month')::timestamp AT TIME ZONE 'UTC');
					m := (m + interval '1 month')::date;
				END LOOP;
			END $$`,
			`INSERT INTO audit_events (id, uid, tenant_id, created_at, event_type, actor, provider_id, outcome, reason, request_id, details)
				SELECT id, uid, tenant_id, created_at, event_type, actor, provider_id, outcome, reason, request_id, details FROM audit_events_0005`,
			`DROP TABLE audit_events_0005`,
			`CREATE INDEX idx_audit_tenant_id ON audit_events (tenant_id, id DESC)`,
			`CREATE INDEX idx_audit_tenant_provider_id ON audit_events (tenant_id, provider_id, id DESC)`,
			`CREATE UNIQUE INDEX uniq_audit_uid ON audit_events (tenant_id, uid, created_at)`,
			`CREATE INDEX idx_audit_feed ON audit_events (txid, id)`,
			`CREATE INDEX idx_audit_tenant_feed ON audit_events (tenant_id, txid, id)`,
		},
		// One SQLite connection writes at a time, so id order is commit
		// order there: txid stays 0.
		sqlite: []string{
			`ALTER TABLE audit_events ADD COLUMN txid bigint NOT NULL DEFAULT 0`,
		},
	},
	{
		// Webhook endpoints and the deliveries fanned out to them; the
		// fan-out position in the event feed.
		id: "0009_webhooks",
		sql: []string{
			`CREATE TABLE webhook_endpoints (
				tenant_id varchar(63) NOT NULL,
				id varchar(63) NOT NULL,
				url text NOT NULL,
				event_types text NOT NULL DEFAULT '',
				secret {{BYTES}} NOT NULL,
				previous_secret {{BYTES}},
				previous_until {{TS}},
				key_id bigint NOT NULL,
				disabled {{BOOL}} NOT NULL DEFAULT false,
				version bigint NOT NULL,
				created_at {{TS}} NOT NULL,
				updated_at {{TS}} NOT NULL,
				CONSTRAINT webhook_endpoints_pkey PRIMARY KEY (tenant_id, id)
			)`,
			`CREATE TABLE webhook_deliveries (
				id {{AUTOID}},
				tenant_id varchar(63) NOT NULL,
				endpoint_id varchar(63) NOT NULL,
				event_uid varchar(32) NOT NULL,
				event_type text NOT NULL,
				provider_id text NOT NULL DEFAULT '',
				event_txid bigint NOT NULL,
				event_id bigint NOT NULL,
				payload text NOT NULL,
				state integer NOT NULL DEFAULT 0,
				attempts integer NOT NULL DEFAULT 0,
				next_attempt_at {{TS}} NOT NULL,
				lease_owner text NOT NULL DEFAULT '',
				lease_until {{TS}},
				last_status integer NOT NULL DEFAULT 0,
				last_error text NOT NULL DEFAULT '',
				created_at {{TS}} NOT NULL,
				updated_at {{TS}} NOT NULL,
				CONSTRAINT fk_webhook_deliveries_endpoint FOREIGN KEY (tenant_id, endpoint_id)
					REFERENCES webhook_endpoints (tenant_id, id) ON DELETE CASCADE
			)`,
			`CREATE UNIQUE INDEX uniq_webhook_delivery ON webhook_deliveries (tenant_id, endpoint_id, event_uid)`,
			`CREATE INDEX idx_webhook_delivery_due ON webhook_deliveries (state, event_txid, event_id)`,
			`CREATE INDEX idx_webhook_delivery_order ON webhook_deliveries (tenant_id, endpoint_id, provider_id, state, event_txid, event_id)`,
			`CREATE TABLE event_cursors (
				name varchar(63) NOT NULL,
				txid bigint NOT NULL,
				event_id bigint NOT NULL,
				CONSTRAINT event_cursors_pkey PRIMARY KEY (name)
			)`,
		},
		// The fan-out starts after the events that exist now (no endpoint
		// existed for them): after every row of this transaction and of
		// every one that ended before it.
		postgres: []string{
			`INSERT INTO event_cursors (name, txid, event_id)
				SELECT 'webhooks', pg_current_xact_id()::text::bigint, COALESCE(max(id), 0) FROM audit_events`,
		},
		sqlite: []string{
			`INSERT INTO event_cursors (name, txid, event_id) SELECT 'webhooks', 0, COALESCE(max(id), 0) FROM audit_events`,
		},
	},
	{
		// Token reads are counted per (tenant, minute, provider, caller)
		// instead of one audit row each; token_read_batches makes a retried
		// flush of the same batch a no-op (see AddTokenReads).
		id: "0010_token_reads",
		sql: []string{
			`CREATE TABLE token_reads (
				tenant_id varchar(63) NOT NULL,
				minute_start bigint NOT NULL,
				provider_id varchar(63) NOT NULL,
				actor varchar(255) NOT NULL,
				reads bigint NOT NULL,
				first_read_ms bigint NOT NULL,
				last_read_ms bigint NOT NULL,
				CONSTRAINT token_reads_pkey PRIMARY KEY (tenant_id, minute_start, provider_id, actor)
			)`,
			`CREATE TABLE token_read_batches (
				id varchar(32) NOT NULL PRIMARY KEY,
				applied_ms bigint NOT NULL
			)`,
			`CREATE INDEX idx_token_read_batches_applied ON token_read_batches (applied_ms)`,
		},
	},
	{
		// Credential kinds without a person (client credentials, JWT
		// bearer) and static API keys: the kind, its non-secret settings
		// (JSON) and its secret material (one ciphertext: private key,
		// static Authorization value).
		id: "0011_credential_kinds",
		sql: []string{
			`ALTER TABLE providers ADD COLUMN credential_kind varchar(32) NOT NULL DEFAULT ''`,
			`ALTER TABLE providers ADD COLUMN credential_config text NOT NULL DEFAULT ''`,
			`ALTER TABLE providers ADD COLUMN credential_secrets {{BYTES}}`,
		},
	},
	{
		// Token-read counts follow the audit retention: old minutes are
		// deleted across tenants, which needs an index on the minute.
		id: "0016_token_reads_minute",
		sql: []string{
			`CREATE INDEX idx_token_reads_minute ON token_reads (minute_start)`,
		},
	},
	{
		// Connections (issue 11): a provider's grants are tenant-wide
		// (grant_scope TENANT, every existing provider) or one per end user
		// (USER). Every per-grant table gains user_id ('' for the
		// tenant-wide grant, so every existing row keeps its meaning) in its
		// primary key; credentials also record who created the grant and
		// when. Client registrations stay per provider: one OAuth client
		// serves all of a provider's users. Audit events name the user.
		// PostgreSQL changes the keys in place; SQLite cannot alter a
		// primary key and rebuilds the four tables.
		id: "0012_user_connections",
		sql: []string{
			`ALTER TABLE providers ADD COLUMN grant_scope varchar(16) NOT NULL DEFAULT 'TENANT'`,
			`ALTER TABLE audit_events ADD COLUMN user_id text NOT NULL DEFAULT ''`,
		},
		postgres: []string{
			`ALTER TABLE credentials ADD COLUMN user_id varchar(255) NOT NULL DEFAULT ''`,
			`ALTER TABLE credentials ADD COLUMN created_by text NOT NULL DEFAULT ''`,
			`ALTER TABLE credentials ADD COLUMN created_at timestamptz`,
			`UPDATE credentials SET created_at = updated_at`,
			`ALTER TABLE credentials ALTER COLUMN created_at SET NOT NULL`,
			`ALTER TABLE credentials DROP CONSTRAINT credentials_pkey`,
			`ALTER TABLE credentials ADD CONSTRAINT credentials_pkey PRIMARY KEY (tenant_id, provider_id, user_id)`,
			`ALTER TABLE refresh_leases ADD COLUMN user_id varchar(255) NOT NULL DEFAULT ''`,
			`ALTER TABLE refresh_leases DROP CONSTRAINT refresh_leases_pkey`,
			`ALTER TABLE refresh_leases ADD CONSTRAINT refresh_leases_pkey PRIMARY KEY (tenant_id, provider_id, user_id)`,
			`ALTER TABLE mcp_challenges ADD COLUMN user_id varchar(255) NOT NULL DEFAULT ''`,
			`ALTER TABLE mcp_challenges DROP CONSTRAINT mcp_challenges_pkey`,
			`ALTER TABLE mcp_challenges ADD CONSTRAINT mcp_challenges_pkey PRIMARY KEY (tenant_id, provider_id, user_id)`,
			`ALTER TABLE tool_lists ADD COLUMN user_id varchar(255) NOT NULL DEFAULT ''`,
			`ALTER TABLE tool_lists DROP CONSTRAINT tool_lists_pkey`,
			`ALTER TABLE tool_lists ADD CONSTRAINT tool_lists_pkey PRIMARY KEY (tenant_id, provider_id, user_id)`,
			// "What has alice connected?": a user's connections across the
			// tenant's providers.
			`CREATE INDEX idx_credential_user ON credentials (tenant_id, user_id, provider_id)`,
		},
		sqlite: []string{
			`CREATE TABLE credentials_0012 (
				tenant_id varchar(63) NOT NULL,
				provider_id varchar(63) NOT NULL,
				user_id varchar(255) NOT NULL DEFAULT '',
				tokens blob NOT NULL,
				issuer text NOT NULL DEFAULT '',
				scopes text NOT NULL DEFAULT '',
				expires_at datetime,
				has_refresh boolean NOT NULL DEFAULT false,
				generation bigint NOT NULL,
				status integer NOT NULL DEFAULT 0,
				reason text NOT NULL DEFAULT '',
				refresh_failures bigint NOT NULL DEFAULT 0,
				last_refresh_at datetime,
				key_id bigint NOT NULL,
				created_by text NOT NULL DEFAULT '',
				created_at datetime NOT NULL,
				updated_at datetime NOT NULL,
				CONSTRAINT credentials_pkey PRIMARY KEY (tenant_id, provider_id, user_id),
				CONSTRAINT fk_credentials_provider FOREIGN KEY (tenant_id, provider_id)
					REFERENCES providers (tenant_id, id) ON DELETE CASCADE
			)`,
			`INSERT INTO credentials_0012 (tenant_id, provider_id, user_id, tokens, issuer, scopes, expires_at, has_refresh, generation,
				status, reason, refresh_failures, last_refresh_at, key_id, created_by, created_at, updated_at)
				SELECT tenant_id, provider_id, '', tokens, issuer, scopes, expires_at, has_refresh, generation,
				status, reason, refresh_failures, last_refresh_at, key_id, '', updated_at, updated_at FROM credentials`,
			`DROP TABLE credentials`,
			`ALTER TABLE credentials_0012 RENAME TO credentials`,
			`CREATE INDEX idx_credential_key_id ON credentials (key_id)`,
			`CREATE INDEX idx_credential_user ON credentials (tenant_id, user_id, provider_id)`,
			`CREATE TABLE refresh_leases_0012 (
				tenant_id varchar(63) NOT NULL,
				provider_id varchar(63) NOT NULL,
				user_id varchar(255) NOT NULL DEFAULT '',
				generation bigint NOT NULL,
				holder varchar(64) NOT NULL,
				expires_at datetime NOT NULL,
				CONSTRAINT refresh_leases_pkey PRIMARY KEY (tenant_id, provider_id, user_id),
				CONSTRAINT fk_refresh_leases_provider FOREIGN KEY (tenant_id, provider_id)
					REFERENCES providers (tenant_id, id) ON DELETE CASCADE
			)`,
			`INSERT INTO refresh_leases_0012 (tenant_id, provider_id, user_id, generation, holder, expires_at)
				SELECT tenant_id, provider_id, '', generation, holder, expires_at FROM refresh_leases`,
			`DROP TABLE refresh_leases`,
			`ALTER TABLE refresh_leases_0012 RENAME TO refresh_leases`,
			`CREATE TABLE mcp_challenges_0012 (
				tenant_id varchar(63) NOT NULL,
				provider_id varchar(63) NOT NULL,
				user_id varchar(255) NOT NULL DEFAULT '',
				http_status integer NOT NULL,
				error text NOT NULL DEFAULT '',
				scope text NOT NULL DEFAULT '',
				resource_metadata text NOT NULL DEFAULT '',
				step_up_attempts integer NOT NULL DEFAULT 0,
				seen_at datetime NOT NULL,
				CONSTRAINT mcp_challenges_pkey PRIMARY KEY (tenant_id, provider_id, user_id),
				CONSTRAINT fk_mcp_challenges_provider FOREIGN KEY (tenant_id, provider_id)
					REFERENCES providers (tenant_id, id) ON DELETE CASCADE
			)`,
			`INSERT INTO mcp_challenges_0012 (tenant_id, provider_id, user_id, http_status, error, scope, resource_metadata, step_up_attempts, seen_at)
				SELECT tenant_id, provider_id, '', http_status, error, scope, resource_metadata, step_up_attempts, seen_at FROM mcp_challenges`,
			`DROP TABLE mcp_challenges`,
			`ALTER TABLE mcp_challenges_0012 RENAME TO mcp_challenges`,
			`CREATE TABLE tool_lists_0012 (
				tenant_id varchar(63) NOT NULL,
				provider_id varchar(63) NOT NULL,
				user_id varchar(255) NOT NULL DEFAULT '',
				tools text NOT NULL,
				fetched_at datetime NOT NULL,
				CONSTRAINT tool_lists_pkey PRIMARY KEY (tenant_id, provider_id, user_id),
				CONSTRAINT fk_tool_lists_provider FOREIGN KEY (tenant_id, provider_id)
					REFERENCES providers (tenant_id, id) ON DELETE CASCADE
			)`,
			`INSERT INTO tool_lists_0012 (tenant_id, provider_id, user_id, tools, fetched_at)
				SELECT tenant_id, provider_id, '', tools, fetched_at FROM tool_lists`,
			`DROP TABLE tool_lists`,
			`ALTER TABLE tool_lists_0012 RENAME TO tool_lists`,
		},
	},
	{
		// Webhook claims look only at the deliveries they could take and,
		// per candidate, at its group's busy ones (partial indexes), not at
		// every pending delivery: most pending deliveries are the ones in
		// flight, leased at fan-out.
		id: "0015_webhook_delivery_claims",
		sql: []string{
			`CREATE INDEX idx_webhook_delivery_free ON webhook_deliveries (event_txid, event_id) WHERE state = 0 AND lease_owner = ''`,
			`CREATE INDEX idx_webhook_delivery_leased ON webhook_deliveries (tenant_id, endpoint_id, provider_id, lease_until) WHERE state = 0 AND lease_owner <> ''`,
			`CREATE INDEX idx_webhook_delivery_backoff ON webhook_deliveries (tenant_id, endpoint_id, provider_id, next_attempt_at) WHERE state = 0 AND lease_owner = ''`,
		},
	},
	{
		// A connection is named by an id derived from its user
		// (domain.ConnectionID), stored so that a name is found with one
		// index lookup; '' for tenant-wide grants. Connections stored
		// before get theirs computed here, then the index is built.
		id: "0012b_connection_ids",
		sql: []string{
			`ALTER TABLE credentials ADD COLUMN connection_id varchar(27) NOT NULL DEFAULT ''`,
		},
		fill: fillConnectionIDs,
	},
	{
		// The background refresher's read of idle grants walks this index
		// and stops at its limit, however many connections there are.
		id: "0017_credentials_refresh_due",
		sql: []string{
			`CREATE INDEX idx_credential_refresh_due ON credentials (status, has_refresh, last_refresh_at)`,
		},
	},
	{
		// An enterprise-managed connection is bound to the identity (iss,
		// sub) of the ID token of its first exchange (issue 12).
		id: "0020_credentials_identity_binding",
		sql: []string{
			`ALTER TABLE credentials ADD COLUMN identity_issuer text NOT NULL DEFAULT ''`,
			`ALTER TABLE credentials ADD COLUMN identity_subject text NOT NULL DEFAULT ''`,
		},
	},
	{
		// A USER provider whose operator declares that its server lists
		// the same tools to every user keeps one tool list for all of
		// them (tool_lists row with user_id ''), not one per connection.
		id: "0018_shared_tool_list",
		sql: []string{
			`ALTER TABLE providers ADD COLUMN shared_tool_list {{BOOL}} NOT NULL DEFAULT false`,
		},
	},
	{
		// A provider may require every authorization flow to be
		// completed by the platform's backend (CompleteAuthorization)
		// before its grant is stored.
		id: "0019_provider_require_completion",
		sql: []string{
			`ALTER TABLE providers ADD COLUMN require_completion {{BOOL}} NOT NULL DEFAULT false`,
		},
	},
	{
		// The webhook fan-out sends before it records (see LeaseFanOut):
		// its position in the feed is leased to one replica at a time for
		// the length of a batch, instead of a row lock held by a
		// transaction (which would hold the feed's horizon back meanwhile).
		id: "0022_fanout_lease",
		sql: []string{
			`ALTER TABLE event_cursors ADD COLUMN lease_owner text NOT NULL DEFAULT ''`,
			`ALTER TABLE event_cursors ADD COLUMN lease_until {{TS}}`,
			// A delivered delivery is written once and never looked up by
			// state again: the indexes that serve claims and the fan-out's
			// held groups cover pending deliveries only, so the common row
			// costs two index entries instead of three; the listing of an
			// endpoint's deliveries walks (endpoint, id) instead of sorting
			// every delivery of the endpoint.
			`DROP INDEX idx_webhook_delivery_due`,
			`DROP INDEX idx_webhook_delivery_order`,
			`CREATE INDEX idx_webhook_delivery_pending ON webhook_deliveries (event_txid, event_id) WHERE state = 0`,
			`CREATE INDEX idx_webhook_delivery_pending_group ON webhook_deliveries (tenant_id, endpoint_id, provider_id, event_txid, event_id) WHERE state = 0`,
			`CREATE INDEX idx_webhook_delivery_endpoint ON webhook_deliveries (tenant_id, endpoint_id, id)`,
		},
	},
	{
		// An endpoint's delivery counts per state (GetWebhookEndpoint)
		// were served by idx_webhook_delivery_order until 0022 dropped it;
		// since, they read every row of the endpoint (a sequential scan:
		// about 100 ms for 300,000 deliveries). The endpoint index carries
		// state as well, so the count is an index-only scan and listings
		// filtered by state skip rows in the index. It replaces the index
		// rather than adding one: no extra entry per delivery written.
		id: "0030a_webhook_delivery_endpoint_state",
		sql: []string{
			`DROP INDEX idx_webhook_delivery_endpoint`,
			`CREATE INDEX idx_webhook_delivery_endpoint ON webhook_deliveries (tenant_id, endpoint_id, id, state)`,
		},
	},
}

// fillConnectionIDs sets the connection id of every connection stored
// without one, then indexes the ids (unique per provider).
func fillConnectionIDs(tx *gorm.DB) error {
	var rows []struct{ TenantID, ProviderID, UserID string }
	if err := tx.Raw(`SELECT tenant_id, provider_id, user_id FROM credentials WHERE user_id <> '' AND connection_id = ''`).Scan(&rows).Error; err != nil {
		return fmt.Errorf("read connections: %w", err)
	}
	for _, r := range rows {
		if err := tx.Exec(`UPDATE credentials SET connection_id = ? WHERE tenant_id = ? AND provider_id = ? AND user_id = ?`,
			domain.ConnectionID(r.UserID), r.TenantID, r.ProviderID, r.UserID).Error; err != nil {
			return fmt.Errorf("set connection id: %w", err)
		}
	}
	return tx.Exec(`CREATE UNIQUE INDEX uniq_credential_connection ON credentials (tenant_id, provider_id, connection_id)`).Error
}

// maxNamedCollisions bounds the providers a refused migration names.
const maxNamedCollisions = 20

// caseCollisions refuses migration 0003 while providers of one tenant have
// display names or server identifiers equal ignoring case. The message
// names tenant and provider ids only (never a name, URL or secret).
func caseCollisions(tx *gorm.DB) error {
	var problems []string
	for _, col := range []string{"display_name", "server_identifier"} {
		var rows []struct{ TenantID, ID string }
		err := tx.Raw(`SELECT tenant_id, id FROM providers WHERE (tenant_id, lower(`+col+`)) IN
			(SELECT tenant_id, lower(`+col+`) FROM providers GROUP BY tenant_id, lower(`+col+`) HAVING count(*) > 1)
			ORDER BY tenant_id, id LIMIT ?`, maxNamedCollisions+1).Scan(&rows).Error
		if err != nil {
			return fmt.Errorf("look for %s equal ignoring case: %w", col, err)
		}
		if len(rows) == 0 {
			continue
		}
		ids := make([]string, 0, len(rows))
		for i, r := range rows {
			if i == maxNamedCollisions {
				ids = append(ids, "...")
				break
			}
			ids = append(ids, r.TenantID+"/"+r.ID)
		}
		problems = append(problems, fmt.Sprintf("%s equal ignoring case in one tenant: %s", col, strings.Join(ids, ", ")))
	}
	if len(problems) > 0 {
		return fmt.Errorf("providers must be renamed before upgrading (with UpdateProvider on the previous version; then start again): %s",
			strings.Join(problems, "; "))
	}
	return nil
}

func renderDDL(dialect, stmt string) string {
	var r *strings.Replacer
	if dialect == "postgres" {
		r = strings.NewReplacer(
			"{{BYTES}}", "bytea",
			"{{EMPTYBYTES}}", "''::bytea",
			"{{TS}}", "timestamptz",
			"{{BOOL}}", "boolean",
			"{{AUTOID}}", "bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
			"{{RANDOMHEX16}}", "replace(gen_random_uuid()::text, '-', '')",
		)
	} else {
		r = strings.NewReplacer(
			"{{BYTES}}", "blob",
			"{{EMPTYBYTES}}", "X''",
			"{{TS}}", "datetime",
			"{{BOOL}}", "boolean",
			"{{AUTOID}}", "integer PRIMARY KEY AUTOINCREMENT",
			"{{RANDOMHEX16}}", "lower(hex(randomblob(16)))",
		)
	}
	return r.Replace(stmt)
}

// Migrate brings the schema up to date with versioned migrations recorded in
// the schema_migrations table. It runs in one transaction (PostgreSQL and
// SQLite both have transactional DDL), is safe to call repeatedly, and on
// PostgreSQL holds an advisory lock so concurrent replicas migrate once.
func (s *Store) Migrate(ctx context.Context) error {
	return s.migrate(ctx, migrations)
}

// migrate applies list (a prefix of migrations, in tests) as Migrate does.
func (s *Store) migrate(ctx context.Context, list []migration) error {
	dialect := s.db.Dialector.Name()
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if dialect == "postgres" {
			if err := tx.Exec("SELECT pg_advisory_xact_lock(?)", migrationLockKey).Error; err != nil {
				return fmt.Errorf("take migration lock: %w", err)
			}
		}
		ms := make([]*gormigrate.Migration, 0, len(list))
		for _, m := range list {
			m := m
			ms = append(ms, &gormigrate.Migration{
				ID: m.id,
				Migrate: func(tx *gorm.DB) error {
					if m.check != nil {
						if err := m.check(tx); err != nil {
							return fmt.Errorf("migration %s: %w", m.id, err)
						}
					}
					stmts := m.sql
					if dialect == "postgres" {
						stmts = append(slices.Clone(stmts), m.postgres...)
					} else {
						stmts = append(slices.Clone(stmts), m.sqlite...)
					}
					for _, stmt := range stmts {
						if err := tx.Exec(renderDDL(dialect, stmt)).Error; err != nil {
							return fmt.Errorf("migration %s: %w", m.id, err)
						}
					}
					if m.fill != nil {
						if err := m.fill(tx); err != nil {
							return fmt.Errorf("migration %s: %w", m.id, err)
						}
					}
					return nil
				},
			})
		}
		opts := *gormigrate.DefaultOptions
		opts.TableName = "schema_migrations"
		opts.UseTransaction = false // already inside tx
		return gormigrate.New(tx, &opts, ms).Migrate()
	})
	if err != nil {
		return dbErr(err, "migrate schema")
	}
	return nil
}
