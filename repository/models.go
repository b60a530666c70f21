package repository

import (
	"time"

	"github.com/mcpauth/mcpauth/domain"
)

// The schema itself is defined by the versioned SQL in migrations.go; the
// GORM tags below name the columns and keys so queries map onto it. A test
// checks that every model field has a column.

// Provider is one MCP server registered in a tenant. Its ciphertext columns
// (ServerURL, Headers, ClientSecret) are encrypted by the service layer under
// the key named by KeyID.
type Provider struct {
	// TenantID is the owning tenant.
	TenantID string `gorm:"column:tenant_id;primaryKey;size:63"`
	// ID is the provider's resource id, unique within the tenant.
	ID string `gorm:"column:id;primaryKey;size:63"`
	// DisplayName is unique per tenant (index uniq_provider_name).
	DisplayName string `gorm:"column:display_name"`
	// ServerIdentifier is unique per tenant (index uniq_provider_sid).
	ServerIdentifier string `gorm:"column:server_identifier"`
	// URLHash is the keyed hash of the normalised server URL, "k<id>:hex",
	// unique per tenant (index uniq_provider_url).
	URLHash string `gorm:"column:url_hash"`
	// ServerURL is the ciphertext of the MCP server URL.
	ServerURL []byte `gorm:"column:server_url"`
	// Headers is the ciphertext of the JSON header map, or nil.
	Headers []byte `gorm:"column:headers"`
	// Icon is the provider's icon URL or data, not secret.
	Icon string `gorm:"column:icon"`
	// TimeoutMS is the request timeout in milliseconds.
	TimeoutMS int64 `gorm:"column:timeout_ms"`
	// SSEReadTimeoutMS is the SSE read timeout in milliseconds.
	SSEReadTimeoutMS int64 `gorm:"column:sse_read_timeout_ms"`
	// ClientID is the pre-registered OAuth client id, if any.
	ClientID string `gorm:"column:client_id"`
	// ClientSecret is the ciphertext of the pre-registered client secret, or nil.
	ClientSecret []byte `gorm:"column:client_secret"`
	// Scopes is a JSON array of scope strings.
	Scopes string `gorm:"column:scopes"`
	// Compat is the JSON text of the provider's compatibility profile.
	Compat string `gorm:"column:compat"`
	// CredentialKind is how the provider's token is obtained
	// (domain.CredentialKind); "" is the authorization code flow.
	CredentialKind string `gorm:"column:credential_kind"`
	// CredentialConfig is the JSON of the non-secret credential settings
	// (domain.CredentialConfig).
	CredentialConfig string `gorm:"column:credential_config"`
	// CredentialSecrets is the ciphertext of the secret credential
	// material (private key, static Authorization value), or nil.
	CredentialSecrets []byte `gorm:"column:credential_secrets"`
	// KeyID is the id of the key every ciphertext in this row uses.
	KeyID uint32 `gorm:"column:key_id"`
	// GrantScope says whose grants the provider holds (domain.ScopeTenant
	// or domain.ScopeUser); set on create, never changed.
	GrantScope domain.GrantScope `gorm:"column:grant_scope"`
	// SharedToolList, for a USER provider, is the operator's word that
	// its server lists the same tools to every user: one tool list (user
	// id empty) serves every connected user instead of one per connection.
	SharedToolList bool `gorm:"column:shared_tool_list"`
	// RequireCompletion makes every authorization flow of the provider
	// wait for CompleteAuthorization before its grant is stored.
	RequireCompletion bool `gorm:"column:require_completion"`
	// GrantStatus, GrantReason and GrantGeneration are the provider's grant
	// (its credentials row) as GetProvider and ListProviders read it in the
	// same query; zero when it has none. They are not columns of providers:
	// the grant row is the only owner of the authorization status.
	GrantStatus     domain.AuthStatus `gorm:"column:grant_status;->;-:migration"`
	GrantReason     string            `gorm:"column:grant_reason;->;-:migration"`
	GrantGeneration int64             `gorm:"column:grant_generation;->;-:migration"`
	// Version is the optimistic-lock counter: 1 on create, +1 per update.
	// The API etag derives from it.
	Version int64 `gorm:"column:version"`
	// CredGeneration is bumped by the service whenever credentials change.
	CredGeneration int64 `gorm:"column:cred_generation"`
	// CreatedAt is set on insert.
	CreatedAt time.Time `gorm:"column:created_at"`
	// UpdatedAt is set on every write.
	UpdatedAt time.Time `gorm:"column:updated_at"`
}

// TableName returns the table that stores providers.
func (Provider) TableName() string { return "providers" }

// AuthStatus is the provider's authorization status and its reason, from
// its grant: UNAUTHORIZED when it has none.
func (p *Provider) AuthStatus() (domain.AuthStatus, string) {
	if p.GrantStatus == domain.StatusUnknown {
		return domain.StatusUnauthorized, ""
	}
	return p.GrantStatus, p.GrantReason
}

// Credential holds one grant's OAuth tokens: a provider's tenant-wide grant
// (UserID empty) or one end user's connection.
type Credential struct {
	// TenantID is the owning tenant.
	TenantID string `gorm:"column:tenant_id;primaryKey;size:63"`
	// ProviderID is the provider the tokens belong to.
	ProviderID string `gorm:"column:provider_id;primaryKey;size:63"`
	// UserID is the end user of a per-user grant, empty for the
	// tenant-wide one.
	UserID string `gorm:"column:user_id;primaryKey;size:255"`
	// ConnectionID is domain.ConnectionID(UserID) for a connection, empty
	// for the tenant-wide grant; set by the repository on insert.
	ConnectionID string `gorm:"column:connection_id"`
	// Tokens is the ciphertext of JSON {access, refresh, token_type}.
	Tokens []byte `gorm:"column:tokens"`
	// Issuer is the authorization server that issued the tokens.
	Issuer string `gorm:"column:issuer"`
	// Scopes is a JSON array of granted scopes.
	Scopes string `gorm:"column:scopes"`
	// ExpiresAt is the absolute access-token expiry, or nil when unknown.
	ExpiresAt *time.Time `gorm:"column:expires_at"`
	// HasRefresh reports whether Tokens contains a refresh token.
	HasRefresh bool `gorm:"column:has_refresh"`
	// Generation is the compare-and-swap counter: 1 on insert, +1 per write.
	Generation int64 `gorm:"column:generation"`
	// Status is the grant's authorization status: the one place it is
	// stored, written in the same statement as the tokens it describes.
	Status domain.AuthStatus `gorm:"column:status"`
	// Reason is a stable code explaining Status (for example INVALID_GRANT).
	Reason string `gorm:"column:reason"`
	// RefreshFailures counts consecutive failed refreshes.
	RefreshFailures int `gorm:"column:refresh_failures"`
	// LastRefreshAt is the time of the last refresh attempt, or nil.
	LastRefreshAt *time.Time `gorm:"column:last_refresh_at"`
	// KeyID is the id of the key Tokens is encrypted under.
	KeyID uint32 `gorm:"column:key_id"`
	// IdentityIssuer and IdentitySubject are the identity (the iss and sub
	// of an enterprise identity provider's ID token) an enterprise-managed
	// connection is bound to; empty until its first exchange. They are
	// identifiers, not secrets, stored in clear like UserID. PutCredential
	// writes them only when IdentitySubject is set: a token write never
	// clears a binding; deleting the row does.
	IdentityIssuer  string `gorm:"column:identity_issuer"`
	IdentitySubject string `gorm:"column:identity_subject"`
	// CreatedBy is the caller whose request created the grant row.
	CreatedBy string `gorm:"column:created_by"`
	// CreatedAt is set when the row is inserted and kept afterwards.
	CreatedAt time.Time `gorm:"column:created_at"`
	// UpdatedAt is set on every write.
	UpdatedAt time.Time `gorm:"column:updated_at"`
}

// TableName returns the table that stores credentials.
func (Credential) TableName() string { return "credentials" }

// Ref names the grant the row holds.
func (c *Credential) Ref() domain.GrantRef {
	return domain.GrantRef{Tenant: c.TenantID, Provider: c.ProviderID, User: c.UserID}
}

// ClientRegistration is the result of dynamic client registration or a client
// ID metadata document for one provider at one authorization server. Rows are
// keyed by IssuerHash (hex SHA-256 of Issuer, computed by the repository) so
// long issuer URLs do not hit index size limits.
type ClientRegistration struct {
	// TenantID is the owning tenant.
	TenantID string `gorm:"column:tenant_id;primaryKey;size:63"`
	// ProviderID is the provider the registration belongs to.
	ProviderID string `gorm:"column:provider_id;primaryKey;size:63"`
	// IssuerHash is hex(SHA-256(Issuer)); set by the repository on write.
	IssuerHash string `gorm:"column:issuer_hash;primaryKey;size:64"`
	// Issuer is the authorization server's issuer identifier.
	Issuer string `gorm:"column:issuer"`
	// Method is how the client was obtained (dynamic registration).
	Method domain.RegistrationMethod `gorm:"column:method"`
	// ClientID is the registered client id.
	ClientID string `gorm:"column:client_id"`
	// Secret is the ciphertext of the JSON client info (secret, auth method,
	// expiry), or nil.
	Secret []byte `gorm:"column:secret"`
	// RedirectURI is the redirect URI registered with the client.
	RedirectURI string `gorm:"column:redirect_uri"`
	// KeyID is the id of the key Secret is encrypted under.
	KeyID uint32 `gorm:"column:key_id"`
	// Version is 1 on insert and +1 on every PutClientRegistration; key
	// rotation rewrites only the version it read.
	Version int64 `gorm:"column:version"`
	// CreatedAt is set on insert.
	CreatedAt time.Time `gorm:"column:created_at"`
	// UpdatedAt is set on every write.
	UpdatedAt time.Time `gorm:"column:updated_at"`
}

// TableName returns the table that stores client registrations.
func (ClientRegistration) TableName() string { return "client_registrations" }

// ToolList caches the tool list last fetched from a provider's MCP server:
// the provider's shared list (UserID empty) or one connection's.
type ToolList struct {
	// TenantID is the owning tenant.
	TenantID string `gorm:"column:tenant_id;primaryKey;size:63"`
	// ProviderID is the provider the tools belong to.
	ProviderID string `gorm:"column:provider_id;primaryKey;size:63"`
	// UserID is the connection's user when the list was fetched with that
	// user's token, empty for the provider's shared list.
	UserID string `gorm:"column:user_id;primaryKey;size:255"`
	// Tools is the JSON text of the tool list.
	Tools string `gorm:"column:tools"`
	// FetchedAt is when the list was fetched.
	FetchedAt time.Time `gorm:"column:fetched_at"`
}

// TableName returns the table that stores tool lists.
func (ToolList) TableName() string { return "tool_lists" }

// AuditEvent is one append-only audit record. It never contains a secret.
type AuditEvent struct {
	// ID is assigned by the database, increasing across all tenants; lists
	// are ordered by it. It is never shown to callers: it would tell them
	// how many events other tenants wrote.
	ID int64 `gorm:"column:id;primaryKey;autoIncrement"`
	// UID is the event's public id, 32 lower-case hex digits set on
	// insert (the time in milliseconds, then 80 random bits: see
	// newAuditUID), unique per tenant.
	UID string `gorm:"column:uid"`
	// TenantID is the tenant the event belongs to.
	TenantID string `gorm:"column:tenant_id;size:63"`
	// CreatedAt is the event time; set on insert when zero.
	CreatedAt time.Time `gorm:"column:created_at"`
	// EventType names the event, for example "provider.created".
	EventType string `gorm:"column:event_type"`
	// Actor identifies the caller that caused the event.
	Actor string `gorm:"column:actor"`
	// ProviderID is the provider concerned, or empty.
	ProviderID string `gorm:"column:provider_id"`
	// UserID is the end user whose connection the event concerns, or
	// empty.
	UserID string `gorm:"column:user_id"`
	// Outcome is the event outcome (proto enum value).
	Outcome int32 `gorm:"column:outcome"`
	// Reason is a stable code explaining the outcome.
	Reason string `gorm:"column:reason"`
	// RequestID correlates the event with a request.
	RequestID string `gorm:"column:request_id"`
	// Details is JSON text with non-secret extra facts.
	Details string `gorm:"column:details"`
	// TxID is the writing transaction (PostgreSQL; 0 on SQLite), set by
	// the database: with ID it orders the event feed (see EventsAfter).
	TxID int64 `gorm:"column:txid;->"`
}

// TableName returns the table that stores audit events.
func (AuditEvent) TableName() string { return "audit_events" }

// AuditFilter narrows ListAudit; empty fields match everything.
type AuditFilter struct {
	// ProviderID keeps only events about this provider.
	ProviderID string
	// EventType keeps only events of this type.
	EventType string
	// UserID keeps only events about this end user's connections.
	UserID string
}
