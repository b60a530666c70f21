package repository

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/mcpauth/mcpauth/apperr"
)

// IssuerHash returns the key under which a registration for issuer is stored:
// hex(SHA-256(issuer)). Issuers are public identifiers; the hash only keeps
// the primary key short.
func IssuerHash(issuer string) string {
	sum := sha256.Sum256([]byte(issuer))
	return hex.EncodeToString(sum[:])
}

// GetClientRegistration returns the provider's registration at issuer, or
// apperr.NotFound("client registration not found").
func (s *Store) GetClientRegistration(ctx context.Context, tenant, providerID, issuer string) (*ClientRegistration, error) {
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return nil, err
	}
	var r ClientRegistration
	err = q.Where("provider_id = ? AND issuer_hash = ?", providerID, IssuerHash(issuer)).Take(&r).Error
	if err != nil {
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return nil, apperr.NotFound("client registration")
		}
		return nil, dbErr(err, "get client registration")
	}
	return &r, nil
}

// PutClientRegistration inserts or replaces the provider's registration at
// r.Issuer. It sets r.IssuerHash, r.Version (1 on insert, +1 on replace) and
// the timestamps. A missing provider is apperr.NotFound("provider not
// found").
func (s *Store) PutClientRegistration(ctx context.Context, r *ClientRegistration) error {
	if err := checkTenant(r.TenantID); err != nil {
		return err
	}
	if r.ProviderID == "" {
		return apperr.Internal(errEmptyID, "provider id missing")
	}
	now := s.db.NowFunc()
	row := *r
	row.IssuerHash = IssuerHash(r.Issuer)
	row.Version = 1
	row.CreatedAt, row.UpdatedAt = now, now
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		err := tx.Clauses(clause.OnConflict{
			Columns: []clause.Column{{Name: "tenant_id"}, {Name: "provider_id"}, {Name: "issuer_hash"}},
			DoUpdates: clause.Assignments(map[string]any{
				"issuer":       row.Issuer,
				"method":       row.Method,
				"client_id":    row.ClientID,
				"secret":       nullBytes(row.Secret),
				"redirect_uri": row.RedirectURI,
				"key_id":       row.KeyID,
				"version":      gorm.Expr("client_registrations.version + 1"),
				"updated_at":   now,
			}),
		}).Create(&row).Error
		if err != nil {
			return err
		}
		q, err := scoped(ctx, tx, row.TenantID)
		if err != nil {
			return err
		}
		return q.Where("provider_id = ? AND issuer_hash = ?", row.ProviderID, row.IssuerHash).Take(&row).Error
	})
	if err != nil {
		if foreignKeyViolation(err) {
			return apperr.NotFound("provider")
		}
		return dbErr(err, "put client registration")
	}
	*r = row
	return nil
}

// DeleteClientRegistration deletes the provider's registration at issuer.
// Deleting a registration that does not exist is not an error: the caller
// re-registers either way.
func (s *Store) DeleteClientRegistration(ctx context.Context, tenant, providerID, issuer string) error {
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return err
	}
	err = q.Where("provider_id = ? AND issuer_hash = ?", providerID, IssuerHash(issuer)).
		Delete(&ClientRegistration{}).Error
	return dbErr(err, "delete client registration")
}

// AfterFind reads an absent secret back as nil whichever way the driver
// stored it.
func (r *ClientRegistration) AfterFind(*gorm.DB) error {
	r.Secret = emptyToNil(r.Secret)
	return nil
}
