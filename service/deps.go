// Package service holds mcpauth's use cases: the implementations of the
// gRPC services (provider registry, OAuth authorization, tokens, tools,
// audit) and the browser side of the OAuth flow. It declares the narrow
// interfaces it consumes (store, cipher, audit log, clock, outbound HTTP);
// server wires it to the transport, and repository, keyring, statestore and
// egress provide the implementations.
package service

import (
	"context"
	"time"

	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/repository"
)

// Cipher seals and opens field values bound to their tenant, provider and
// field, and computes keyed fingerprints. *keyring.Keyring implements it.
type Cipher interface {
	Seal(s keyring.Scope, plaintext []byte) ([]byte, error)
	Open(s keyring.Scope, ciphertext []byte) ([]byte, error)
	PrimaryID() uint32
	Fingerprint(tenant, purpose string, value []byte) string
	Fingerprints(tenant, purpose string, value []byte) []string
	ShortFingerprint(tenant, purpose string, value []byte) string
}

var _ Cipher = (*keyring.Keyring)(nil)

// ProviderStore persists providers. *repository.Store implements it.
type ProviderStore interface {
	CreateProvider(ctx context.Context, p *repository.Provider) error
	GetProvider(ctx context.Context, tenant, id string) (*repository.Provider, error)
	ListProviders(ctx context.Context, tenant, afterID string, limit int) ([]repository.Provider, error)
	FindProviderByURLHash(ctx context.Context, tenant string, hashes []string) (*repository.Provider, error)
	UpdateProvider(ctx context.Context, p *repository.Provider, expectedVersion int64) error
	DeleteProvider(ctx context.Context, tenant, id string, expectedVersion int64) error
}

var _ ProviderStore = (*repository.Store)(nil)

// AuditStore appends and lists audit events. *repository.Store implements it.
type AuditStore interface {
	AppendAudit(ctx context.Context, e *repository.AuditEvent) error
	AppendAuditBatch(ctx context.Context, events []*repository.AuditEvent) error
	ListAudit(ctx context.Context, tenant string, f repository.AuditFilter, beforeID int64, limit int) ([]repository.AuditEvent, error)
}

var _ AuditStore = (*repository.Store)(nil)

// Clock tells the time; tests pass a fixed or stepping clock.
type Clock func() time.Time

// Field names used in encryption scopes and fingerprints. Changing one makes
// every stored ciphertext of that field unreadable.
const (
	fieldServerURL    = "provider.server_url"
	fieldHeaders      = "provider.headers"
	fieldClientSecret = "provider.oauth_client.client_secret"
	fieldTokens       = "credential.tokens"
	fieldRegistration = "client_registration"
	purposeURL        = "provider.server_url.normalized"
	purposeHeader     = "provider.header_value"
)
