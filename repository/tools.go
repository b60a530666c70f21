package repository

import (
	"context"
	"errors"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

// PutTools stores the provider's tool list, replacing any previous one.
// FetchedAt defaults to now. A missing provider is apperr.NotFound("provider
// not found").
func (s *Store) PutTools(ctx context.Context, t *ToolList) error {
	if err := checkTenant(t.TenantID); err != nil {
		return err
	}
	if t.ProviderID == "" {
		return apperr.Internal(errEmptyID, "provider id missing")
	}
	if t.FetchedAt.IsZero() {
		t.FetchedAt = s.db.NowFunc()
	}
	err := s.db.WithContext(ctx).Clauses(clause.OnConflict{
		Columns:   []clause.Column{{Name: "tenant_id"}, {Name: "provider_id"}, {Name: "user_id"}},
		DoUpdates: clause.AssignmentColumns([]string{"tools", "fetched_at"}),
	}).Create(t).Error
	if err != nil {
		if foreignKeyViolation(err) {
			return apperr.NotFound("provider")
		}
		return dbErr(err, "put tools")
	}
	return nil
}

// PutSharedTools stores t as the shared tool list of a USER provider (the
// one list, without a user, that serves every connection while its
// shared_tool_list is on), only if the provider is still shared and still
// at providerVersion, the version the caller read when it decided to share
// the list. It reports whether the list was stored.
//
// The check and the write are one transaction, the provider row locked
// (FOR SHARE on PostgreSQL; SQLite's write transactions are exclusive):
// turning sharing off (UpdateProvider, which deletes the shared list in
// its own transaction) waits for it or is waited for, so a refresh that
// began while the list was shared, perhaps from another replica's cached
// row, can never store the list after sharing was turned off, nor after
// it was turned off and on again (the version moved on), which would serve
// a list from an earlier period. A missing provider is
// apperr.NotFound("provider").
func (s *Store) PutSharedTools(ctx context.Context, t *ToolList, providerVersion int64) (bool, error) {
	if err := checkTenant(t.TenantID); err != nil {
		return false, err
	}
	if t.ProviderID == "" {
		return false, apperr.Internal(errEmptyID, "provider id missing")
	}
	if t.UserID != "" {
		return false, apperr.Internal(errors.New("a shared tool list has no user"), "put shared tools")
	}
	if t.FetchedAt.IsZero() {
		t.FetchedAt = s.db.NowFunc()
	}
	stored := false
	err := s.transaction(ctx, func(tx *gorm.DB) error {
		q, err := scoped(ctx, tx, t.TenantID)
		if err != nil {
			return err
		}
		var p struct {
			GrantScope     domain.GrantScope
			SharedToolList bool
			Version        int64
		}
		err = q.Model(&Provider{}).Clauses(clause.Locking{Strength: clause.LockingStrengthShare}).
			Select("grant_scope", "shared_tool_list", "version").Where("id = ?", t.ProviderID).Take(&p).Error
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return apperr.NotFound("provider")
		}
		if err != nil {
			return err
		}
		if !p.GrantScope.PerUser() || !p.SharedToolList || p.Version != providerVersion {
			return nil
		}
		stored = true
		return tx.Clauses(clause.OnConflict{
			Columns:   []clause.Column{{Name: "tenant_id"}, {Name: "provider_id"}, {Name: "user_id"}},
			DoUpdates: clause.AssignmentColumns([]string{"tools", "fetched_at"}),
		}).Create(t).Error
	})
	if err != nil {
		if apperr.KindOf(err) == apperr.KindNotFound {
			return false, err
		}
		return false, dbErr(err, "put shared tools")
	}
	return stored, nil
}

// GetTools returns the cached tool list of the grant g (the provider's
// shared list when g has no user), or apperr.NotFound("tool list not
// found").
func (s *Store) GetTools(ctx context.Context, g domain.GrantRef) (*ToolList, error) {
	q, err := grantScoped(ctx, s.db, g)
	if err != nil {
		return nil, err
	}
	var t ToolList
	if err := q.Take(&t).Error; err != nil {
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return nil, apperr.NotFound("tool list")
		}
		return nil, dbErr(err, "get tools")
	}
	return &t, nil
}
