package repository

import (
	"context"
	"errors"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

var errEmptyID = errors.New("repository: empty provider id")

// CreateProvider inserts p. It sets Version to 1 and CreatedAt/UpdatedAt to
// now. A duplicate id, display name, server identifier or URL hash in the same
// tenant is apperr.AlreadyExists wrapping a *ConflictError that names the
// rule; the check runs in the insert's transaction and the
// database's unique indexes back it, so concurrent creates are also refused.
//
// events are inserted in the same transaction.
func (s *Store) CreateProvider(ctx context.Context, p *Provider, events ...*AuditEvent) error {
	if err := checkTenant(p.TenantID); err != nil {
		return err
	}
	if p.ID == "" {
		return apperr.Internal(errEmptyID, "provider id missing")
	}
	now := s.db.NowFunc()
	row := *p
	row.Version = 1
	row.CreatedAt, row.UpdatedAt = now, now
	err := s.transaction(ctx, func(tx *gorm.DB) error {
		if err := providerConflict(ctx, tx, &row, true); err != nil {
			return err
		}
		if err := tx.Create(&row).Error; err != nil {
			return err
		}
		return insertEvents(ctx, tx, events)
	})
	if err != nil {
		return providerWriteErr(err, "create provider")
	}
	s.eventsStored(events)
	*p = row
	return nil
}

// providerConflict reports the first uniqueness rule p would break in its
// tenant, ignoring p's own row on update. Display names and server
// identifiers are compared with the database's lower(), as their unique
// indexes are, so this check and the indexes agree on every backend.
func providerConflict(ctx context.Context, tx *gorm.DB, p *Provider, create bool) error {
	q, err := scoped(ctx, tx, p.TenantID)
	if err != nil {
		return err
	}
	if !create {
		q = q.Where("id <> ?", p.ID)
	}
	var hits []struct {
		ID       string `gorm:"column:id"`
		SameName bool   `gorm:"column:same_name"`
		SameSID  bool   `gorm:"column:same_sid"`
		URLHash  string `gorm:"column:url_hash"`
	}
	err = q.Model(&Provider{}).
		Select("id, lower(display_name) = lower(?) AS same_name, lower(server_identifier) = lower(?) AS same_sid, url_hash",
			p.DisplayName, p.ServerIdentifier).
		Where("(id = ? OR lower(display_name) = lower(?) OR lower(server_identifier) = lower(?) OR url_hash = ?)",
			p.ID, p.DisplayName, p.ServerIdentifier, p.URLHash).
		Limit(4).Scan(&hits).Error
	if err != nil {
		return err
	}
	for _, rule := range []Unique{UniqueID, UniqueDisplayName, UniqueServerIdentifier, UniqueServerURL} {
		for _, h := range hits {
			if rule == UniqueID && create && h.ID == p.ID || rule == UniqueDisplayName && h.SameName ||
				rule == UniqueServerIdentifier && h.SameSID || rule == UniqueServerURL && h.URLHash == p.URLHash {
				return conflict(rule)
			}
		}
	}
	return nil
}

// providerWriteErr translates a driver error from writing a provider row.
func providerWriteErr(err error, what string) error {
	if key, ok := uniqueViolation(err); ok {
		if rule, known := uniqueRule[key]; known {
			return conflict(rule)
		}
		return apperr.AlreadyExists("provider", "provider already exists")
	}
	return dbErr(err, what)
}

// GetProvider returns the tenant's provider id with its grant status, or
// apperr.NotFound.
func (s *Store) GetProvider(ctx context.Context, tenant, id string) (*Provider, error) {
	var p Provider
	if err := s.getRow(ctx, getProviderSQL, "providers", "provider", tenant, []any{id}, providerDest(&p)...); err != nil {
		return nil, err
	}
	return &p, nil
}

// withGrant reads a provider's grant status with it (credentials is keyed by
// the same primary key, so the join is one index lookup per row).
func withGrant(q *gorm.DB) *gorm.DB {
	return q.Table("providers").
		Select("providers.*, credentials.status AS grant_status, credentials.reason AS grant_reason, credentials.generation AS grant_generation").
		Joins("LEFT JOIN credentials ON credentials.tenant_id = providers.tenant_id AND credentials.provider_id = providers.id AND credentials.user_id = ''")
}

// ListProviders returns up to limit providers of tenant with id greater than
// afterID ("" for the first page), ordered by id. It is a keyset query on the
// primary key (tenant_id, id), so a page costs the same at any depth. limit is
// clamped to [1, 1000] (0 means 50).
func (s *Store) ListProviders(ctx context.Context, tenant, afterID string, limit int) ([]Provider, error) {
	q, err := scopedTable(ctx, s.db, "providers", tenant)
	if err != nil {
		return nil, err
	}
	var out []Provider
	if err := withGrant(q).Where("providers.id > ?", afterID).Order("providers.id").Limit(clampLimit(limit)).Find(&out).Error; err != nil {
		return nil, dbErr(err, "list providers")
	}
	return out, nil
}

// FindProviderByURLHash returns the tenant's provider whose URLHash is one of
// hashes (one per active hashing key during rotation), or nil, nil when none.
func (s *Store) FindProviderByURLHash(ctx context.Context, tenant string, hashes []string) (*Provider, error) {
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return nil, err
	}
	if len(hashes) == 0 {
		return nil, nil
	}
	var out []Provider
	if err := q.Where("url_hash IN ?", hashes).Order("id").Limit(1).Find(&out).Error; err != nil {
		return nil, dbErr(err, "find provider by url")
	}
	if len(out) == 0 {
		return nil, nil
	}
	return &out[0], nil
}

// UpdateProvider replaces every mutable column of the stored row (tenant and
// id from p) when its version is expectedVersion, and sets the version to
// expectedVersion+1. On success p.Version and p.UpdatedAt reflect the write.
// A missing row is apperr.NotFound; a version mismatch is apperr.Aborted and
// changes nothing. Uniqueness conflicts are reported as in CreateProvider.
// events are inserted in the same transaction.
func (s *Store) UpdateProvider(ctx context.Context, p *Provider, expectedVersion int64, events ...*AuditEvent) error {
	return s.updateProvider(ctx, p, expectedVersion, false, events)
}

// UpdateProviderResettingCredentials is UpdateProvider that, in the same
// transaction, deletes everything tied to the provider's previous server:
// its credential (tokens), client registrations and tool list. It is used
// when the server URL changes, so no token or registration for the old
// server can ever be used with the new one.
func (s *Store) UpdateProviderResettingCredentials(ctx context.Context, p *Provider, expectedVersion int64, events ...*AuditEvent) error {
	return s.updateProvider(ctx, p, expectedVersion, true, events)
}

func (s *Store) updateProvider(ctx context.Context, p *Provider, expectedVersion int64, reset bool, events []*AuditEvent) error {
	if err := checkTenant(p.TenantID); err != nil {
		return err
	}
	now := s.db.NowFunc()
	err := s.transaction(ctx, func(tx *gorm.DB) error {
		if err := providerConflict(ctx, tx, p, false); err != nil {
			return err
		}
		q, err := scoped(ctx, tx, p.TenantID)
		if err != nil {
			return err
		}
		res := q.Model(&Provider{}).Where("id = ? AND version = ?", p.ID, expectedVersion).
			Updates(map[string]any{
				"display_name":        p.DisplayName,
				"server_identifier":   p.ServerIdentifier,
				"url_hash":            p.URLHash,
				"server_url":          nullBytes(p.ServerURL),
				"headers":             nullBytes(p.Headers),
				"icon":                p.Icon,
				"timeout_ms":          p.TimeoutMS,
				"sse_read_timeout_ms": p.SSEReadTimeoutMS,
				"client_id":           p.ClientID,
				"client_secret":       nullBytes(p.ClientSecret),
				"scopes":              p.Scopes,
				"compat":              p.Compat,
				"credential_kind":     p.CredentialKind,
				"credential_config":   p.CredentialConfig,
				"credential_secrets":  nullBytes(p.CredentialSecrets),
				"shared_tool_list":    p.SharedToolList,
				"require_completion":  p.RequireCompletion,
				"key_id":              p.KeyID,
				"version":             expectedVersion + 1,
				"updated_at":          now,
			})
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			return missingOrChanged(ctx, tx, p.TenantID, p.ID,
				apperr.Aborted("provider was changed concurrently; re-read and retry"))
		}
		if p.GrantScope.PerUser() && !p.SharedToolList {
			// A USER provider holds a list for all its users only while
			// its tool list is declared shared: one fetched before it was
			// turned off is never served again.
			q, err := grantScoped(ctx, tx, domain.TenantGrant(p.TenantID, p.ID))
			if err != nil {
				return err
			}
			if err := q.Delete(&ToolList{}).Error; err != nil {
				return err
			}
		}
		if !reset {
			return insertEvents(ctx, tx, events)
		}
		for _, model := range []any{&Credential{}, &ClientRegistration{}, &ToolList{}} {
			q, err := scoped(ctx, tx, p.TenantID)
			if err != nil {
				return err
			}
			if err := q.Where("provider_id = ?", p.ID).Delete(model).Error; err != nil {
				return err
			}
		}
		return insertEvents(ctx, tx, events)
	})
	if err != nil {
		return providerWriteErr(err, "update provider")
	}
	s.eventsStored(events)
	p.Version = expectedVersion + 1
	p.UpdatedAt = now
	return nil
}

// missingOrChanged decides why a guarded write hit no row: NotFound when the
// provider does not exist, otherwise changed.
func missingOrChanged(ctx context.Context, tx *gorm.DB, tenant, id string, changed error) error {
	q, err := scoped(ctx, tx, tenant)
	if err != nil {
		return err
	}
	var n int64
	if err := q.Model(&Provider{}).Where("id = ?", id).Count(&n).Error; err != nil {
		return err
	}
	if n == 0 {
		return apperr.NotFound("provider")
	}
	return changed
}

// DeleteProvider deletes the tenant's provider id together with its
// credential, client registrations and tool list, in one transaction.
// expectedVersion 0 deletes any version; otherwise a mismatch is
// apperr.Aborted and nothing is deleted. A missing provider is
// apperr.NotFound. Audit events are kept.
//
// events are inserted in the same transaction.
func (s *Store) DeleteProvider(ctx context.Context, tenant, id string, expectedVersion int64, events ...*AuditEvent) error {
	if err := checkTenant(tenant); err != nil {
		return err
	}
	err := s.transaction(ctx, func(tx *gorm.DB) error {
		// The provider row is locked first, as PutSharedTools locks it
		// before writing a tool list: taking the dependents' rows first
		// could deadlock with it on PostgreSQL.
		q, err := scoped(ctx, tx, tenant)
		if err != nil {
			return err
		}
		var locked []string
		if err := q.Model(&Provider{}).Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate}).
			Where("id = ?", id).Pluck("id", &locked).Error; err != nil {
			return err
		}
		// Dependents first; the foreign keys also cascade, this keeps the
		// delete explicit and independent of PRAGMA foreign_keys.
		for _, model := range []any{&Credential{}, &ClientRegistration{}, &ToolList{}} {
			q, err := scoped(ctx, tx, tenant)
			if err != nil {
				return err
			}
			if err := q.Where("provider_id = ?", id).Delete(model).Error; err != nil {
				return err
			}
		}
		q, err = scoped(ctx, tx, tenant)
		if err != nil {
			return err
		}
		q = q.Where("id = ?", id)
		if expectedVersion != 0 {
			q = q.Where("version = ?", expectedVersion)
		}
		res := q.Delete(&Provider{})
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			// Returning an error rolls back the dependents' deletion.
			return missingOrChanged(ctx, tx, tenant, id,
				apperr.Aborted("provider was changed concurrently; re-read and retry"))
		}
		return insertEvents(ctx, tx, events)
	})
	if err != nil {
		return dbErr(err, "delete provider")
	}
	s.eventsStored(events)
	return nil
}

// nullBytes stores nil (not an empty blob) for absent ciphertexts.
func nullBytes(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// AfterFind reads absent ciphertexts back as nil whichever way the driver
// stored them.
func (p *Provider) AfterFind(*gorm.DB) error {
	p.Headers = emptyToNil(p.Headers)
	p.ClientSecret = emptyToNil(p.ClientSecret)
	return nil
}

func emptyToNil(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// ProviderPublic is what a provider's public documents (its Client ID
// Metadata Document and its JWKS, served without credentials) are made of:
// plaintext columns only, none of the ciphertexts (server URL, headers,
// client secret, credential secrets), so serving them decrypts nothing.
type ProviderPublic struct {
	// ClientID is the pre-registered OAuth client id, if any.
	ClientID string
	// CredentialKind is Provider.CredentialKind.
	CredentialKind string
	// CredentialConfig is the JSON of the non-secret credential settings,
	// which hold the public keys (domain.CredentialConfig).
	CredentialConfig string
}

var getProviderPublicSQL = newHotSQL(`SELECT client_id, credential_kind, credential_config FROM providers WHERE tenant_id = ? AND id = ?`)

// GetProviderPublic reads a provider's public facts (ProviderPublic) from
// the database, never from a cache: the unauthenticated routes that use it
// must not fill the shared read cache (CachedReads) with the answers of
// made-up names, which would empty it for everyone.
func (s *Store) GetProviderPublic(ctx context.Context, tenant, id string) (*ProviderPublic, error) {
	var p ProviderPublic
	if err := s.getRow(ctx, getProviderPublicSQL, "providers", "provider", tenant, []any{id}, &p.ClientID, &p.CredentialKind, &p.CredentialConfig); err != nil {
		return nil, err
	}
	return &p, nil
}
