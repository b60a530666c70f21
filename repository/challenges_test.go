package repository

import (
	"context"
	"testing"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

// TestChallenges: recording a challenge moves NOT_REQUIRED (or no grant)
// to UNAUTHORIZED with its reason, leaves a held grant's status alone,
// keeps the step-up count across later challenges, and is tenant-scoped;
// deleting the provider deletes it.
func TestChallenges(t *testing.T) {
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		mustCreate(t, s, newProvider("t1", "p"))
		if _, err := s.GetChallenge(ctx, domain.TenantGrant("t1", "p")); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("GetChallenge before any: %v", err)
		}
		if err := s.ClearChallenge(ctx, domain.TenantGrant("t1", "p")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SetGrantStatus(ctx, domain.TenantGrant("t1", "p"), []domain.AuthStatus{domain.StatusUnauthorized}, domain.StatusNotRequired, "", 1); err != nil {
			t.Fatal(err)
		}
		changed, err := s.RecordChallenge(ctx, &Challenge{TenantID: "t1", ProviderID: "p", HTTPStatus: 403, Error: "insufficient_scope",
			Scope: "a b", ResourceMetadata: "https://mcp.example.com/.well-known/oauth-protected-resource"}, 1)
		if err != nil || !changed {
			t.Fatalf("RecordChallenge = %v, %v", changed, err)
		}
		c, err := s.GetCredential(ctx, domain.TenantGrant("t1", "p"))
		if err != nil || c.Status != domain.StatusUnauthorized || c.Reason != domain.ReasonAuthorizationRequired {
			t.Fatalf("grant after the challenge: %+v, %v", c, err)
		}
		for range 2 {
			if err := s.CountStepUp(ctx, domain.TenantGrant("t1", "p")); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.RecordChallenge(ctx, &Challenge{TenantID: "t1", ProviderID: "p", HTTPStatus: 403, Error: "insufficient_scope", Scope: "c"}, 1); err != nil {
			t.Fatal(err)
		}
		ch, err := s.GetChallenge(ctx, domain.TenantGrant("t1", "p"))
		if err != nil || ch.Scope != "c" || ch.StepUpAttempts != 2 || ch.SeenAt.IsZero() || ch.ResourceMetadata != "" {
			t.Fatalf("challenge %+v, %v", ch, err)
		}
		if _, err := s.GetChallenge(ctx, domain.TenantGrant("t2", "p")); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("another tenant reads the challenge: %v", err)
		}
		if _, err := s.RecordChallenge(ctx, &Challenge{TenantID: "t1", ProviderID: "nope", HTTPStatus: 401}, 1); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("challenge for a missing provider: %v", err)
		}
		if err := s.ClearChallenge(ctx, domain.TenantGrant("t1", "p")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetChallenge(ctx, domain.TenantGrant("t1", "p")); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("challenge after clearing: %v", err)
		}
		if _, err := s.RecordChallenge(ctx, &Challenge{TenantID: "t1", ProviderID: "p", HTTPStatus: 401}, 1); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteProvider(ctx, "t1", "p", 0); err != nil {
			t.Fatal(err)
		}
		var n int64
		if err := s.db.Model(&Challenge{}).Count(&n).Error; err != nil || n != 0 {
			t.Fatalf("%d challenge rows after deleting the provider (%v)", n, err)
		}
	})
}
