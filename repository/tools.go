package repository

import (
	"context"
	"errors"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

// PutTools stores the tool list of one grant (t's tenant, provider and
// user), replacing any previous one, only if the provider is still at
// providerVersion: the version of the provider row the caller fetched the
// list under. It reports whether the list was stored. FetchedAt defaults to
// now. A missing provider is apperr.NotFound("provider").
//
// The check and the write are one transaction, the provider row locked as
// in PutSharedTools. Every change of the provider moves its version, and
// UpdateProviderResettingCredentials (the provider moved to another server)
// deletes its tool lists in the same transaction: a list fetched from the
// old server, whose write arrives after the move, is dropped (false, no
// error) instead of being served as the new server's tools.
func (s *Store) PutTools(ctx context.Context, t *ToolList, providerVersion int64) (bool, error) {
	return s.putToolsIf(ctx, t, "put tools", func(p toolListProvider) bool {
		return p.Version == providerVersion
	})
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
	if t.UserID != "" {
		return false, apperr.Internal(errors.New("a shared tool list has no user"), "put shared tools")
	}
	return s.putToolsIf(ctx, t, "put shared tools", func(p toolListProvider) bool {
		return p.GrantScope.PerUser() && p.SharedToolList && p.Version == providerVersion
	})
}

// toolListProvider is what decides whether a tool list may be stored: the
// provider row's scope, sharing and version, read under its lock.
type toolListProvider struct {
	GrantScope     domain.GrantScope
	SharedToolList bool
	Version        int64
}

// putToolsIf upserts t in a transaction that first locks the provider row
// (FOR SHARE; before any tool list row, the order every provider write
// takes too) and stores t only when keep accepts the row.
func (s *Store) putToolsIf(ctx context.Context, t *ToolList, op string, keep func(toolListProvider) bool) (bool, error) {
	if err := checkTenant(t.TenantID); err != nil {
		return false, err
	}
	if t.ProviderID == "" {
		return false, apperr.Internal(errEmptyID, "provider id missing")
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
		var p toolListProvider
		err = q.Model(&Provider{}).Clauses(clause.Locking{Strength: clause.LockingStrengthShare}).
			Select("grant_scope", "shared_tool_list", "version").Where("id = ?", t.ProviderID).Take(&p).Error
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return apperr.NotFound("provider")
		}
		if err != nil {
			return err
		}
		if !keep(p) {
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
		return false, dbErr(err, op)
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
