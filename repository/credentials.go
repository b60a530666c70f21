package repository

import (
	"context"
	"errors"

	"gorm.io/gorm"

	"github.com/mcpauth/mcpauth/apperr"
)

func credentialChanged() *apperr.Error {
	return apperr.Aborted("credential was changed concurrently; re-read and retry")
}

// GetCredential returns the provider's credential, or apperr.NotFound
// ("credential not found") when it has none.
func (s *Store) GetCredential(ctx context.Context, tenant, providerID string) (*Credential, error) {
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return nil, err
	}
	var c Credential
	if err := q.Where("provider_id = ?", providerID).Take(&c).Error; err != nil {
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return nil, apperr.NotFound("credential")
		}
		return nil, dbErr(err, "get credential")
	}
	return &c, nil
}

// PutCredential writes c with compare-and-swap on the generation counter.
// expectedGeneration 0 inserts and requires that no credential exists;
// otherwise the stored row is replaced only if its generation is
// expectedGeneration. The new generation is expectedGeneration+1; it is
// returned and stored in c.Generation. Any mismatch (including a row that
// appeared or disappeared meanwhile) is apperr.Aborted and changes nothing,
// so a writer holding stale tokens can never overwrite newer ones. A missing
// provider is apperr.NotFound("provider not found").
func (s *Store) PutCredential(ctx context.Context, c *Credential, expectedGeneration int64) (int64, error) {
	if err := checkTenant(c.TenantID); err != nil {
		return 0, err
	}
	if c.ProviderID == "" {
		return 0, apperr.Internal(errEmptyID, "provider id missing")
	}
	now := s.db.NowFunc()
	newGen := expectedGeneration + 1
	if expectedGeneration == 0 {
		row := *c
		row.Generation = newGen
		row.UpdatedAt = now
		if err := s.db.WithContext(ctx).Create(&row).Error; err != nil {
			if _, dup := uniqueViolation(err); dup {
				return 0, credentialChanged()
			}
			if foreignKeyViolation(err) {
				return 0, apperr.NotFound("provider")
			}
			return 0, dbErr(err, "put credential")
		}
		*c = row
		return newGen, nil
	}
	q, err := scoped(ctx, s.db, c.TenantID)
	if err != nil {
		return 0, err
	}
	res := q.Model(&Credential{}).Where("provider_id = ? AND generation = ?", c.ProviderID, expectedGeneration).
		Updates(map[string]any{
			"tokens":           c.Tokens,
			"issuer":           c.Issuer,
			"scopes":           c.Scopes,
			"expires_at":       c.ExpiresAt,
			"has_refresh":      c.HasRefresh,
			"generation":       newGen,
			"status":           c.Status,
			"reason":           c.Reason,
			"refresh_failures": c.RefreshFailures,
			"last_refresh_at":  c.LastRefreshAt,
			"key_id":           c.KeyID,
			"updated_at":       now,
		})
	if res.Error != nil {
		return 0, dbErr(res.Error, "put credential")
	}
	if res.RowsAffected == 0 {
		return 0, credentialChanged()
	}
	c.Generation = newGen
	c.UpdatedAt = now
	return newGen, nil
}

// DeleteCredential deletes the provider's credential. expectedGeneration 0
// deletes any generation; otherwise a mismatch is apperr.Aborted. A missing
// credential is apperr.NotFound("credential not found").
func (s *Store) DeleteCredential(ctx context.Context, tenant, providerID string, expectedGeneration int64) error {
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return err
	}
	q = q.Where("provider_id = ?", providerID)
	if expectedGeneration != 0 {
		q = q.Where("generation = ?", expectedGeneration)
	}
	res := q.Delete(&Credential{})
	if res.Error != nil {
		return dbErr(res.Error, "delete credential")
	}
	if res.RowsAffected > 0 {
		return nil
	}
	if _, err := s.GetCredential(ctx, tenant, providerID); err != nil {
		return err
	}
	return credentialChanged()
}
