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
