package repository

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"

	"gorm.io/gorm"

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
	var r ClientRegistration
	if err := s.getRow(ctx, getRegistrationSQL, "client_registrations", "client registration", tenant,
		[]any{providerID, IssuerHash(issuer)}, registrationDest(&r)...); err != nil {
		return nil, err
	}
	return &r, nil
}

// PutClientRegistration stores the provider's registration at r.Issuer
// with compare-and-swap on its version: r.Version 0 inserts and requires
// that none is stored; otherwise the stored registration is replaced only if
// its version is r.Version. So of two clients registered concurrently, only
// the first is kept and the other writer learns it (apperr.Aborted), and a
// pending flow's client is never overwritten. It sets r.IssuerHash,
// r.Version and the timestamps. A missing provider is
// apperr.NotFound("provider not found").
func (s *Store) PutClientRegistration(ctx context.Context, r *ClientRegistration, events ...*AuditEvent) error {
	if err := checkTenant(r.TenantID); err != nil {
		return err
	}
	if r.ProviderID == "" {
		return apperr.Internal(errEmptyID, "provider id missing")
	}
	now := s.db.NowFunc()
	row := *r
	row.IssuerHash = IssuerHash(r.Issuer)
	row.UpdatedAt = now
	for _, e := range events {
		if err := checkTenant(e.TenantID); err != nil {
			return err
		}
	}
	changed := apperr.Aborted("client registration was changed concurrently; re-read it")
	err := s.transaction(ctx, func(tx *gorm.DB) error {
		if err := putRegistration(ctx, tx, &row, r.Version, now, changed); err != nil {
			return err
		}
		return insertEvents(ctx, tx, events)
	})
	if errors.Is(err, changed) {
		return changed
	}
	if err != nil {
		if _, ok := apperr.As(err); ok {
			return err
		}
		if foreignKeyViolation(err) {
			return apperr.NotFound("provider")
		}
		return dbErr(err, "put client registration")
	}
	*r = row
	s.eventsStored(events)
	return nil
}

// putRegistration inserts row (version 0) or updates it with
// compare-and-swap on version, in tx; changed when it lost.
func putRegistration(ctx context.Context, tx *gorm.DB, row *ClientRegistration, version int64, now time.Time, changed error) error {
	var err error
	if version == 0 {
		row.Version, row.CreatedAt = 1, now
		err = tx.Create(row).Error
		if _, dup := uniqueViolation(err); dup {
			return changed
		}
	} else {
		var q *gorm.DB
		if q, err = scoped(ctx, tx, row.TenantID); err != nil {
			return err
		}
		res := q.Model(&ClientRegistration{}).
			Where("provider_id = ? AND issuer_hash = ? AND version = ?", row.ProviderID, row.IssuerHash, version).
			Updates(map[string]any{
				"issuer":       row.Issuer,
				"method":       row.Method,
				"client_id":    row.ClientID,
				"secret":       nullBytes(row.Secret),
				"redirect_uri": row.RedirectURI,
				"key_id":       row.KeyID,
				"version":      version + 1,
				"updated_at":   now,
			})
		if err = res.Error; err == nil && res.RowsAffected == 0 {
			return changed
		}
		row.Version = version + 1
	}
	return err
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
