package repository

import (
	"context"
	"errors"

	"gorm.io/gorm"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

// ConnectionFilter narrows ListConnections; empty fields match everything.
type ConnectionFilter struct {
	// Provider keeps only this provider's connections.
	Provider string
	// User keeps only this end user's connections.
	User string
}

// ConnectionKey is a connection's position in a listing: lists are ordered
// by provider id, then connection id.
type ConnectionKey struct {
	Provider     string
	ConnectionID string
}

// GetConnection returns the connection (a per-user grant) of provider
// whose id is connectionID, or apperr.NotFound("connection").
func (s *Store) GetConnection(ctx context.Context, tenant, provider, connectionID string) (*Credential, error) {
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return nil, err
	}
	var c Credential
	err = q.Where("provider_id = ? AND connection_id = ? AND user_id <> ''", provider, connectionID).Take(&c).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, apperr.NotFound("connection")
	}
	if err != nil {
		return nil, dbErr(err, "get connection")
	}
	return &c, nil
}

// ListConnections returns up to limit of the tenant's connections matching
// f that come after the key after (zero: from the start), ordered by
// provider id and connection id: a keyset query on the index
// (tenant_id, provider_id, connection_id), or with a user on
// (tenant_id, user_id, provider_id). The position is a row comparison,
// which PostgreSQL turns into the start of the index range (with a user,
// provider_id >= the position's provider): each page reads its own rows,
// not every row before it (an OR of the two columns was a filter, and a
// walk of alice's 1,000 connections read 10,000 index entries).
func (s *Store) ListConnections(ctx context.Context, tenant string, f ConnectionFilter, after ConnectionKey, limit int) ([]Credential, error) {
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return nil, err
	}
	q = q.Where("user_id <> ''")
	if f.Provider != "" {
		q = q.Where("provider_id = ?", f.Provider)
	}
	if f.User != "" {
		q = q.Where("user_id = ?", f.User)
	}
	if after != (ConnectionKey{}) {
		q = q.Where("(provider_id, connection_id) > (?, ?)", after.Provider, after.ConnectionID)
	}
	var out []Credential
	err = q.Order("provider_id, connection_id").Limit(clampLimit(limit)).Find(&out).Error
	return out, dbErr(err, "list connections")
}

// ProviderGrants returns every grant of the provider that holds tokens (its
// tenant-wide grant and its connections), for revoking them all at the
// server when the provider is deleted or moves to another server.
func (s *Store) ProviderGrants(ctx context.Context, tenant, provider string) ([]Credential, error) {
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return nil, err
	}
	var out []Credential
	// REAUTH_REQUIRED grants may still hold tokens (a DPoP-suspended
	// grant keeps its refresh token); rows without tokens are skipped by
	// the caller.
	err = q.Where("provider_id = ? AND status IN ?", provider,
		[]domain.AuthStatus{domain.StatusAuthorized, domain.StatusReauthRequired}).Order("user_id").Find(&out).Error
	return out, dbErr(err, "list provider grants")
}
