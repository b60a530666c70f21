package repository

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/mcpauth/mcpauth/apperr"
)

// The hottest reads (GetProvider and GetClientRegistration, on every
// GetProvider, StartAuthorization and CallTool) are plain SQL on GORM's
// connection pool, scanned into the model without GORM's callbacks and
// reflection. They keep the tenant rule of scoped: checkTenant first, and
// tenant_id is the first condition of every such query. A test checks that
// their column lists cover every field of the models.

// hotSQL is one hand-written query, written with ? placeholders and
// rendered for the store's dialect once.
type hotSQL struct {
	text     string
	postgres string
}

func newHotSQL(text string) hotSQL {
	var b strings.Builder
	n := 0
	for _, r := range text {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return hotSQL{text: text, postgres: b.String()}
}

// getRow runs q with the tenant and args on the pool and scans its one row
// into dest (no row: NotFound(what)), after checking the tenant (the first
// argument of every hot query).
func (s *Store) getRow(ctx context.Context, q hotSQL, table, what, tenant string, args []any, dest ...any) error {
	if err := checkTenant(tenant); err != nil {
		return err
	}
	db, err := s.db.DB()
	if err != nil {
		return dbErr(err, "get "+what)
	}
	text := q.render(s)
	ctx, span := s.hotSpan(ctx, table, text)
	err = db.QueryRowContext(ctx, text, append([]any{tenant}, args...)...).Scan(dest...)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		err = apperr.NotFound(what)
	case err != nil:
		err = dbErr(err, "get "+what)
	}
	span.end(err, 1)
	return err
}

// render returns q's text for the store's dialect.
func (q hotSQL) render(s *Store) string {
	if s.db.Dialector.Name() == "postgres" {
		return q.postgres
	}
	return q.text
}

// hotTrace is the span of one hand-written query, or nothing without a
// tracer.
type hotTrace struct{ span trace.Span }

// hotSpan starts a client span like the ones of GORM's statements
// (statement text with placeholders, no values) when the store traces.
func (s *Store) hotSpan(ctx context.Context, table, text string) (context.Context, hotTrace) {
	return s.opSpan(ctx, "SELECT", table, text)
}

// opSpan is hotSpan for a statement of operation op (SELECT, COPY...).
func (s *Store) opSpan(ctx context.Context, op, table, text string) (context.Context, hotTrace) {
	if s.tracer == nil {
		return ctx, hotTrace{}
	}
	system := "sqlite"
	if s.db.Dialector.Name() == "postgres" {
		system = "postgresql"
	}
	ctx, span := s.tracer.Start(ctx, op, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		attribute.String("db.system.name", system), attribute.String("db.operation.name", op),
		attribute.String("db.collection.name", table), attribute.String("db.query.text", text)))
	return ctx, hotTrace{span}
}

// end ends the span with the query's outcome: a NotFound answer is a
// successful query that returned no row.
func (t hotTrace) end(err error, rows int) {
	if t.span == nil {
		return
	}
	switch {
	case err == nil:
		t.span.SetAttributes(attribute.Int64("db.response.returned_rows", int64(rows)))
	case apperr.KindOf(err) == apperr.KindNotFound:
		t.span.SetAttributes(attribute.Int64("db.response.returned_rows", 0))
	default:
		t.span.SetStatus(codes.Error, err.Error())
	}
	t.span.End()
}

// providerColumns are the columns GetProvider reads, in the order of
// providerDest.
var providerColumns = []string{"tenant_id", "id", "display_name", "server_identifier", "url_hash", "server_url", "headers", "icon",
	"timeout_ms", "sse_read_timeout_ms", "client_id", "client_secret", "scopes", "compat", "key_id", "version", "cred_generation",
	"created_at", "updated_at", "credential_kind", "credential_config", "credential_secrets", "grant_scope", "grant_status", "grant_reason",
	"grant_generation", "shared_tool_list", "require_completion"}

func providerDest(p *Provider) []any {
	return []any{&p.TenantID, &p.ID, &p.DisplayName, &p.ServerIdentifier, &p.URLHash, &p.ServerURL, &p.Headers, &p.Icon,
		&p.TimeoutMS, &p.SSEReadTimeoutMS, &p.ClientID, &p.ClientSecret, &p.Scopes, &p.Compat, &p.KeyID, &p.Version, &p.CredGeneration,
		&p.CreatedAt, &p.UpdatedAt, &p.CredentialKind, &p.CredentialConfig, &p.CredentialSecrets, &p.GrantScope, &p.GrantStatus, &p.GrantReason,
		&p.GrantGeneration, &p.SharedToolList, &p.RequireCompletion}
}

var getProviderSQL = newHotSQL(`SELECT p.tenant_id, p.id, p.display_name, p.server_identifier, p.url_hash, p.server_url, p.headers, p.icon,
	p.timeout_ms, p.sse_read_timeout_ms, p.client_id, p.client_secret, p.scopes, p.compat, p.key_id, p.version, p.cred_generation,
	p.created_at, p.updated_at, p.credential_kind, p.credential_config, p.credential_secrets, p.grant_scope, COALESCE(c.status, 0), COALESCE(c.reason, ''), COALESCE(c.generation, 0),
	p.shared_tool_list, p.require_completion
	FROM providers p LEFT JOIN credentials c ON c.tenant_id = p.tenant_id AND c.provider_id = p.id AND c.user_id = ''
	WHERE p.tenant_id = ? AND p.id = ?`)

// registrationColumns are the columns GetClientRegistration reads, in the
// order of registrationDest.
var registrationColumns = []string{"tenant_id", "provider_id", "issuer_hash", "issuer", "method", "client_id", "secret", "redirect_uri",
	"key_id", "version", "created_at", "updated_at"}

func registrationDest(r *ClientRegistration) []any {
	return []any{&r.TenantID, &r.ProviderID, &r.IssuerHash, &r.Issuer, &r.Method, &r.ClientID, &r.Secret, &r.RedirectURI,
		&r.KeyID, &r.Version, &r.CreatedAt, &r.UpdatedAt}
}

var getRegistrationSQL = newHotSQL(`SELECT tenant_id, provider_id, issuer_hash, issuer, method, client_id, secret, redirect_uri,
	key_id, version, created_at, updated_at
	FROM client_registrations WHERE tenant_id = ? AND provider_id = ? AND issuer_hash = ?`)

// credentialColumns are the columns GetCredential reads, in the order of
// credentialDest.
var credentialColumns = []string{"tenant_id", "provider_id", "user_id", "connection_id", "tokens", "issuer", "scopes", "expires_at",
	"has_refresh", "generation", "status", "reason", "refresh_failures", "last_refresh_at", "key_id", "created_by", "created_at", "updated_at", "identity_issuer", "identity_subject"}

func credentialDest(c *Credential) []any {
	return []any{&c.TenantID, &c.ProviderID, &c.UserID, &c.ConnectionID, &c.Tokens, &c.Issuer, &c.Scopes, &c.ExpiresAt,
		&c.HasRefresh, &c.Generation, &c.Status, &c.Reason, &c.RefreshFailures, &c.LastRefreshAt, &c.KeyID, &c.CreatedBy, &c.CreatedAt, &c.UpdatedAt,
		&c.IdentityIssuer, &c.IdentitySubject}
}

// getCredentialSQL reads one grant by its primary key: the read of every
// GetAccessToken that misses the token cache (each call, for random users
// among many connections).
var getCredentialSQL = newHotSQL(`SELECT tenant_id, provider_id, user_id, connection_id, tokens, issuer, scopes, expires_at,
	has_refresh, generation, status, reason, refresh_failures, last_refresh_at, key_id, created_by, created_at, updated_at,
	identity_issuer, identity_subject
	FROM credentials WHERE tenant_id = ? AND provider_id = ? AND user_id = ?`)
