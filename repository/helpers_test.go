package repository

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// openStore opens and migrates a store on dsn, closed at cleanup.
func openStore(tb testing.TB, dsn string) *Store {
	tb.Helper()
	ctx := context.Background()
	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	if err := s.Migrate(ctx); err != nil {
		tb.Fatalf("Migrate: %v", err)
	}
	return s
}

// eachBackend runs fn against a fresh, migrated store on SQLite and on
// PostgreSQL.
func eachBackend(t *testing.T, fn func(t *testing.T, s *Store)) {
	t.Helper()
	testenv.Backends(t, func(t *testing.T, dsn string) {
		fn(t, openStore(t, dsn))
	})
}

// eachBackendReplicas is eachBackend with two stores on the same database,
// as two replicas have.
func eachBackendReplicas(t *testing.T, fn func(t *testing.T, a, b *Store)) {
	t.Helper()
	testenv.Backends(t, func(t *testing.T, dsn string) {
		fn(t, openStore(t, dsn), openStore(t, dsn))
	})
}

func newProvider(tenant, id string) *Provider {
	return &Provider{
		TenantID:         tenant,
		ID:               id,
		DisplayName:      "name-" + id,
		ServerIdentifier: "sid-" + id,
		URLHash:          "k1:hash-" + id,
		ServerURL:        []byte("ct-url-" + id),
		Headers:          []byte("ct-headers-" + id),
		TimeoutMS:        30000,
		Scopes:           `["read"]`,
		Compat:           `{}`,
		KeyID:            1,
	}
}

func mustCreate(tb testing.TB, s *Store, p *Provider) *Provider {
	tb.Helper()
	if err := s.CreateProvider(context.Background(), p); err != nil {
		tb.Fatalf("CreateProvider(%s/%s): %v", p.TenantID, p.ID, err)
	}
	return p
}

func newCredential(tenant, providerID, tokens string) *Credential {
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	return &Credential{
		TenantID:   tenant,
		ProviderID: providerID,
		Tokens:     []byte(tokens),
		Issuer:     "https://as.example",
		Scopes:     `["read"]`,
		ExpiresAt:  &exp,
		HasRefresh: true,
		KeyID:      1,
	}
}

// wantKind fails unless err carries the apperr kind (and field, when given).
func wantKind(tb testing.TB, err error, kind apperr.Kind, field string) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("err = nil, want kind %d", kind)
	}
	e, ok := apperr.As(err)
	if !ok {
		tb.Fatalf("err = %v (%T), want *apperr.Error kind %d", err, err, kind)
	}
	if e.Kind != kind {
		tb.Fatalf("err = %v kind %d, want kind %d", err, e.Kind, kind)
	}
	if field == "" {
		return
	}
	// Uniqueness conflicts name their rule; other errors their field.
	var c *ConflictError
	if errors.As(err, &c) {
		if string(c.Rule) != field {
			tb.Fatalf("err = %v rule %q, want rule %q", err, c.Rule, field)
		}
		return
	}
	if e.Field != field {
		tb.Fatalf("err = %v field %q, want field %q", err, e.Field, field)
	}
}

func wantNoErr(tb testing.TB, err error, what string, args ...any) {
	tb.Helper()
	if err != nil {
		tb.Fatalf("%s: %v", fmt.Sprintf(what, args...), err)
	}
}

func isKind(err error, kind apperr.Kind) bool {
	var e *apperr.Error
	return errors.As(err, &e) && e.Kind == kind
}

// putTools stores t with PutTools at its provider's current version, and
// fails unless it was stored or refused with an error.
func putTools(tb testing.TB, s *Store, t *ToolList) error {
	tb.Helper()
	ctx := context.Background()
	var version int64 = 1
	if p, err := s.GetProvider(ctx, t.TenantID, t.ProviderID); err == nil {
		version = p.Version
	}
	stored, err := s.PutTools(ctx, t, version)
	if err == nil && !stored {
		tb.Fatalf("PutTools(%s/%s) at the current version stored nothing", t.TenantID, t.ProviderID)
	}
	return err
}
