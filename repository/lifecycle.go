package repository

import (
	"context"
	"time"

	"gorm.io/gorm"

	"github.com/mcpauth/mcpauth/domain"
)

// CredentialsIdleSince lists, across all tenants, authorized credentials
// with a refresh token whose last refresh is older than before (or never
// recorded), least recently refreshed first. It is the background
// refresher's query and the only cross-tenant read of credentials outside
// key rotation; callers act on each row within its own tenant.
func (s *Store) CredentialsIdleSince(ctx context.Context, before time.Time, limit int) ([]Credential, error) {
	limit = clampLimit(limit)
	due := func() *gorm.DB {
		return s.db.WithContext(ctx).Where("status = ? AND has_refresh = ?", domain.StatusAuthorized, true)
	}
	// Two reads of the index of migration 0017 (status, has_refresh,
	// last_refresh_at), each stopping at limit, instead of one sort of every
	// due row: never-refreshed rows first, then the least recently
	// refreshed.
	var out []Credential
	if err := due().Where("last_refresh_at IS NULL").Limit(limit).Find(&out).Error; err != nil {
		return nil, dbErr(err, "list idle credentials")
	}
	if len(out) == limit {
		return out, nil
	}
	var older []Credential
	if err := due().Where("last_refresh_at < ?", before.UTC()).Order("last_refresh_at").
		Limit(limit - len(out)).Find(&older).Error; err != nil {
		return nil, dbErr(err, "list idle credentials")
	}
	return append(out, older...), nil
}

// RecordRefreshFailure counts a failed background refresh of the tenant's
// credential, if it is still at generation, and returns the new count (0
// when the credential changed meanwhile: a newer refresh succeeded).
func (s *Store) RecordRefreshFailure(ctx context.Context, g domain.GrantRef, generation int64) (int, error) {
	q, err := grantScoped(ctx, s.db, g)
	if err != nil {
		return 0, err
	}
	res := q.Model(&Credential{}).Where("generation = ?", generation).
		UpdateColumn("refresh_failures", gorm.Expr("refresh_failures + 1"))
	if res.Error != nil {
		return 0, dbErr(res.Error, "record refresh failure")
	}
	if res.RowsAffected == 0 {
		return 0, nil
	}
	q, err = grantScoped(ctx, s.db, g)
	if err != nil {
		return 0, err
	}
	var c Credential
	if err := q.Take(&c).Error; err != nil {
		return 0, dbErr(err, "read refresh failures")
	}
	return c.RefreshFailures, nil
}

// ExpirePendingGrants moves, across all tenants, grants PENDING since
// before back to UNAUTHORIZED with reason: their authorization flow was
// lost (a Redis restart) or abandoned, and no callback will ever end it.
// A grant with tokens never is PENDING, so nothing held is touched. It
// returns how many grants it moved; it is the background refresher's
// sweep, like CredentialsIdleSince.
func (s *Store) ExpirePendingGrants(ctx context.Context, before time.Time, reason string) (int64, error) {
	res := s.db.WithContext(ctx).Model(&Credential{}).
		Where("status = ? AND updated_at < ?", domain.StatusPending, before.UTC()).
		Updates(map[string]any{"status": domain.StatusUnauthorized, "reason": reason, "updated_at": s.db.NowFunc()})
	if res.Error != nil {
		return 0, dbErr(res.Error, "expire pending grants")
	}
	return res.RowsAffected, nil
}
