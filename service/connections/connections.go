// Package connections is the use case of per-user grants seen as
// resources: it shows a USER provider's connections (one end user's grant
// each) and removes them, revoking their tokens at the authorization
// server first.
package connections

import (
	"context"
	"errors"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/validate"
)

// Store reads connections. *repository.Store implements it.
type Store interface {
	vault.ProviderGetter
	GetConnection(ctx context.Context, tenant, provider, connectionID string) (*repository.Credential, error)
	ListConnections(ctx context.Context, tenant string, f repository.ConnectionFilter, after repository.ConnectionKey, limit int) ([]repository.Credential, error)
}

var _ Store = (*repository.Store)(nil)

// Revoker revokes a grant at its server and deletes it. *grants.Service
// implements it.
type Revoker interface {
	Revoke(ctx context.Context, ref domain.GrantRef) (bool, error)
}

// DenialRecorder audits a call refused because its caller may act only for
// some users and the connection is another's. *audit.Auditor implements it.
type DenialRecorder interface {
	RecordUserDenied(ctx context.Context, tenant, provider, method, user string)
}

// Clock tells the time.
type Clock func() time.Time

// Service shows and deletes connections.
type Service struct {
	store   Store
	revoker Revoker
	denials DenialRecorder
	now     Clock
}

// New returns the connections use case. denials may be nil (refusals are
// then not audited); now defaults to time.Now.
func New(store Store, revoker Revoker, denials DenialRecorder, now Clock) (*Service, error) {
	if store == nil || revoker == nil {
		return nil, errors.New("connections: store and revoker are required")
	}
	if now == nil {
		now = time.Now
	}
	return &Service{store: store, revoker: revoker, denials: denials, now: now}, nil
}

// Connection is one end user's grant as callers see it (never a token).
type Connection struct {
	Tenant, Provider, ID, User string
	Status                     domain.AuthStatus
	Reason                     string
	Issuer                     string
	Scopes                     []string
	// ExpiresAt, LastRefresh are zero when unknown.
	ExpiresAt   time.Time
	HasRefresh  bool
	LastRefresh time.Time
	Creator     string
	CreateTime  time.Time
	UpdateTime  time.Time
	// IdentityIssuer and IdentitySubject are the enterprise identity an
	// enterprise-managed connection is bound to; empty when none.
	IdentityIssuer, IdentitySubject string
}

// AllProviders is the provider id that lists the connections of every
// provider of the tenant.
const AllProviders = "-"

// Get returns the connection id of the provider. A provider that does not
// exist and a connection that does not exist are both NOT_FOUND, and so is
// another user's connection for a caller limited to users (owned).
func (s *Service) Get(ctx context.Context, tenant, provider, id string) (*Connection, error) {
	c, err := s.owned(ctx, tenant, provider, id, methodGet)
	if err != nil {
		return nil, err
	}
	return s.view(c), nil
}

// The methods named in the audit events of refusals (the RPCs'
// full names, as the transport's own refusals name them).
const (
	methodGet    = "/mcpauth.v1.ConnectionService/GetConnection"
	methodDelete = "/mcpauth.v1.ConnectionService/DeleteConnection"
)

// owned reads the connection id for the caller. A name carries no user id
// the transport could check (the id is derived from it, and anyone can
// derive it), so the row's user is checked here: for a caller limited to
// some users (a per-user service) another user's connection is NOT_FOUND,
// as a connection that does not exist (no answer tells it apart), and the
// attempt is audited as a denial naming that user. A request without a
// caller (no transport in between) is refused the same way.
func (s *Service) owned(ctx context.Context, tenant, provider, id, method string) (*repository.Credential, error) {
	if !domain.IsConnectionID(id) {
		return nil, apperr.NotFound("connection")
	}
	c, err := s.store.GetConnection(ctx, tenant, provider, id)
	if err != nil {
		return nil, err
	}
	if who, ok := caller.FromContext(ctx); !ok || !who.AllowsUser(c.UserID) {
		if s.denials != nil {
			s.denials.RecordUserDenied(ctx, tenant, provider, method, c.UserID)
		}
		return nil, apperr.NotFound("connection")
	}
	return c, nil
}

// Page is one page of a listing.
type Page struct {
	Connections []*Connection
	// More reports whether a next page may exist.
	More bool
}

// List returns up to limit connections of provider (AllProviders: of
// every provider of the tenant), of user when set, after the position
// after ("": from the start; "provider/connection" of the last one shown).
func (s *Service) List(ctx context.Context, tenant, provider, user string, after repository.ConnectionKey, limit int) (*Page, error) {
	if user != "" {
		if err := validate.UserID("user", user); err != nil {
			return nil, err
		}
	}
	f := repository.ConnectionFilter{User: user}
	if provider != AllProviders {
		// A provider that does not exist is NOT_FOUND, not an empty list.
		if _, err := s.store.GetProvider(ctx, tenant, provider); err != nil {
			return nil, err
		}
		f.Provider = provider
	}
	rows, err := s.store.ListConnections(ctx, tenant, f, after, limit+1)
	if err != nil {
		return nil, err
	}
	p := &Page{More: len(rows) > limit}
	if p.More {
		rows = rows[:limit]
	}
	for i := range rows {
		p.Connections = append(p.Connections, s.view(&rows[i]))
	}
	return p, nil
}

// Delete revokes the connection's tokens at the authorization server when
// it can and deletes it (audited with the user). It reports whether the
// server confirmed the revocation.
func (s *Service) Delete(ctx context.Context, tenant, provider, id string) (bool, error) {
	c, err := s.owned(ctx, tenant, provider, id, methodDelete)
	if err != nil {
		return false, err
	}
	return s.revoker.Revoke(ctx, c.Ref())
}

// view is the caller's view of a connection row: EXPIRED when its access
// token expired and cannot be refreshed, as GetAuthorizationStatus says.
func (s *Service) view(c *repository.Credential) *Connection {
	v := &Connection{Tenant: c.TenantID, Provider: c.ProviderID, ID: domain.ConnectionID(c.UserID), User: c.UserID,
		Status: c.Status, Reason: c.Reason, Issuer: c.Issuer, Scopes: vault.ParseList(c.Scopes), HasRefresh: c.HasRefresh,
		Creator: c.CreatedBy, CreateTime: c.CreatedAt, UpdateTime: c.UpdatedAt, IdentityIssuer: c.IdentityIssuer,
		IdentitySubject: c.IdentitySubject}
	if c.ExpiresAt != nil {
		v.ExpiresAt = *c.ExpiresAt
		if v.Status == domain.StatusAuthorized && !c.HasRefresh && !c.ExpiresAt.After(s.now()) {
			v.Status, v.Reason = domain.StatusExpired, "access token expired and no refresh token is held"
		}
	}
	if c.LastRefreshAt != nil {
		v.LastRefresh = *c.LastRefreshAt
	}
	return v
}
