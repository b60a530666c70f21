package servicetest

import (
	"context"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/repository"
)

// RecordChallenge stores the provider's last challenge and moves its grant
// status as the repository does.
func (s *Store) RecordChallenge(ctx context.Context, c *repository.Challenge, keyID uint32) (bool, error) {
	s.mu.Lock()
	if err := s.enter("RecordChallenge", c.TenantID); err != nil {
		s.mu.Unlock()
		return false, err
	}
	k := key(c.TenantID, c.ProviderID)
	if _, ok := s.providers[k]; !ok {
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
		domain.StatusUnauthorized, domain.ReasonAuthorizationRequired, keyID)
}

// GetChallenge returns the provider's last challenge.
func (s *Store) GetChallenge(_ context.Context, g domain.GrantRef) (*repository.Challenge, error) {
	tenant, providerID := g.Tenant, g.Provider
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("GetChallenge", tenant); err != nil {
		return nil, err
	}
	c, ok := s.chals[key(tenant, providerID)]
	if !ok {
		return nil, apperr.NotFound("challenge")
	}
	return &c, nil
}

// ClearChallenge forgets the provider's challenge.
func (s *Store) ClearChallenge(_ context.Context, g domain.GrantRef) error {
	tenant, providerID := g.Tenant, g.Provider
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("ClearChallenge", tenant); err != nil {
		return err
	}
	delete(s.chals, key(tenant, providerID))
	return nil
}

// CountStepUp counts a step-up authorization of an outstanding
// insufficient_scope challenge.
func (s *Store) CountStepUp(_ context.Context, g domain.GrantRef) error {
	tenant, providerID := g.Tenant, g.Provider
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter("CountStepUp", tenant); err != nil {
		return err
	}
	k := key(tenant, providerID)
	if c, ok := s.chals[k]; ok && c.Error == "insufficient_scope" {
		c.StepUpAttempts++
		s.chals[k] = c
	}
	return nil
}
