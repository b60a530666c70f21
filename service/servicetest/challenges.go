package servicetest

import (
	"context"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/repository"
)

// RecordChallenge stores the provider's last challenge and moves its grant
// status as the repository does.
func (s *Store) RecordChallenge(ctx context.Context, c *repository.Challenge, keyID uint32, events ...*repository.AuditEvent) (bool, error) {
	s.mu.Lock()
	if err := s.enter("RecordChallenge", c.TenantID); err != nil {
		s.mu.Unlock()
		return false, err
	}
	k := gkey(c.Ref())
	if _, ok := s.providers[key(c.TenantID, c.ProviderID)]; !ok {
		s.mu.Unlock()
		return false, apperr.NotFound("provider")
	}
	row := *c
	if row.SeenAt.IsZero() {
		row.SeenAt = s.now()
	}
	row.StepUpAttempts = s.chals[k].StepUpAttempts
	s.chals[k] = row
	s.mu.Unlock()
	return s.SetGrantStatus(ctx, c.Ref(), []domain.AuthStatus{domain.StatusNotRequired, domain.StatusUnauthorized},
		domain.StatusUnauthorized, domain.ReasonAuthorizationRequired, keyID, events...)
}

// GetChallenge returns the provider's last challenge.
func (s *Store) GetChallenge(_ context.Context, g domain.GrantRef) (*repository.Challenge, error) {
	tenant := g.Tenant
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("GetChallenge", tenant); err != nil {
		return nil, err
	}
	c, ok := s.chals[gkey(g)]
	if !ok {
		return nil, apperr.NotFound("challenge")
	}
	return &c, nil
}

// ClearChallenge forgets the provider's challenge.
func (s *Store) ClearChallenge(_ context.Context, g domain.GrantRef) error {
	tenant := g.Tenant
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("ClearChallenge", tenant); err != nil {
		return err
	}
	delete(s.chals, gkey(g))
	return nil
}

// CountStepUp counts a step-up authorization of an outstanding
// insufficient_scope challenge.
func (s *Store) CountStepUp(_ context.Context, g domain.GrantRef) error {
	tenant := g.Tenant
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("CountStepUp", tenant); err != nil {
		return err
	}
	k := gkey(g)
	if c, ok := s.chals[k]; ok && c.Error == "insufficient_scope" {
		c.StepUpAttempts++
		s.chals[k] = c
	}
	return nil
}
