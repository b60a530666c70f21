package repository

import (
	"context"
	"errors"
	"time"

	"gorm.io/gorm"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

// RefreshLease is one grant's refresh lease row: who may call the token
// endpoint with the refresh token of generation, until when.
type RefreshLease struct {
	TenantID   string    `gorm:"primaryKey;size:63"`
	ProviderID string    `gorm:"primaryKey;size:63"`
	UserID     string    `gorm:"primaryKey;size:255"`
	Generation int64     `gorm:"not null"`
	Holder     string    `gorm:"not null;size:64"`
	ExpiresAt  time.Time `gorm:"not null"`
}

// TableName implements gorm's tabler.
func (RefreshLease) TableName() string { return "refresh_leases" }

// ErrLeaseHeld is the cause of AcquireRefreshLease's error when another
// holder's lease has not expired. Test with errors.Is.
var ErrLeaseHeld = errors.New("repository: refresh lease held by another replica")

// ErrRefreshBackoff is the cause of AcquireRefreshLease's error while the
// grant's refreshes are backed off after a failure (see BackoffRefreshLease).
var ErrRefreshBackoff = errors.New("repository: refreshes backed off after a failure")

// backoffHolder marks a lease that holds a grant's refreshes back after a
// failure instead of a replica refreshing it.
const backoffHolder = "backoff"

// ErrLeaseGone is returned by ExtendRefreshLease when holder no longer holds
// the lease (it expired and another holder took it, or it was released).
var ErrLeaseGone = errors.New("repository: refresh lease no longer held")

// LeaseAcquired says what AcquireRefreshLease found.
type LeaseAcquired struct {
	// TookOver is true when an expired lease of another holder for the
	// same generation was taken over: that holder may have spent the
	// refresh token and not stored the answer yet (a database outage), so
	// the new holder should give it a moment and read the credential
	// again before it calls the token endpoint.
	TookOver bool
	// BackoffUntil is when the backoff that refused the lease ends (with
	// ErrRefreshBackoff only).
	BackoffUntil time.Time
}

// AcquireRefreshLease records holder as the only replica allowed to refresh
// the tenant's grant at generation for ttl. It succeeds when nobody holds
// the lease, when it expired, or when holder holds it already (a retried
// acquire whose first answer was lost counts as acquired), and fails with
// ErrLeaseHeld otherwise. Times are the database's clock as the Store sees
// it. One conditional upsert decides, so of concurrent acquirers on any
// number of replicas exactly one wins.
func (s *Store) AcquireRefreshLease(ctx context.Context, g domain.GrantRef, generation int64, holder string, ttl time.Duration) (LeaseAcquired, error) {
	var out LeaseAcquired
	if err := checkTenant(g.Tenant); err != nil {
		return out, err
	}
	now := s.db.NowFunc()
	err := s.transaction(ctx, func(tx *gorm.DB) error {
		q, err := grantScoped(ctx, tx, g)
		if err != nil {
			return err
		}
		var prev RefreshLease
		perr := q.Take(&prev).Error
		if perr != nil && !errors.Is(perr, gorm.ErrRecordNotFound) {
			return perr
		}
		res := tx.Exec(`INSERT INTO refresh_leases (tenant_id, provider_id, user_id, generation, holder, expires_at)
			VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (tenant_id, provider_id, user_id) DO UPDATE
			SET generation = excluded.generation, holder = excluded.holder, expires_at = excluded.expires_at
			WHERE refresh_leases.holder = excluded.holder OR refresh_leases.expires_at < ?`,
			g.Tenant, g.Provider, g.User, generation, holder, now.Add(ttl), now)
		if res.Error != nil {
			if foreignKeyViolation(res.Error) {
				return apperr.NotFound("provider")
			}
			return res.Error
		}
		if res.RowsAffected == 0 {
			if perr == nil && prev.Holder == backoffHolder {
				out.BackoffUntil = prev.ExpiresAt
				return ErrRefreshBackoff
			}
			return ErrLeaseHeld
		}
		out.TookOver = perr == nil && prev.Holder != holder && prev.Holder != backoffHolder && prev.Generation == generation
		return nil
	})
	if errors.Is(err, ErrLeaseHeld) || errors.Is(err, ErrRefreshBackoff) {
		return out, err
	}
	return out, dbErr(err, "acquire refresh lease")
}

// ExtendRefreshLease moves the lease's expiry to ttl from now if holder
// still holds it, and fails with ErrLeaseGone otherwise.
func (s *Store) ExtendRefreshLease(ctx context.Context, g domain.GrantRef, holder string, ttl time.Duration) error {
	q, err := grantScoped(ctx, s.db, g)
	if err != nil {
		return err
	}
	res := q.Model(&RefreshLease{}).Where("holder = ?", holder).
		UpdateColumn("expires_at", s.db.NowFunc().Add(ttl))
	if res.Error != nil {
		return dbErr(res.Error, "extend refresh lease")
	}
	if res.RowsAffected == 0 {
		return ErrLeaseGone
	}
	return nil
}

// ReleaseRefreshLease ends holder's lease; it does nothing when holder no
// longer holds it.
func (s *Store) ReleaseRefreshLease(ctx context.Context, g domain.GrantRef, holder string) error {
	q, err := grantScoped(ctx, s.db, g)
	if err != nil {
		return err
	}
	return dbErr(q.Where("holder = ?", holder).Delete(&RefreshLease{}).Error, "release refresh lease")
}

// BackoffRefreshLease turns holder's lease into a backoff that lasts for d:
// until it ends no replica refreshes the grant (AcquireRefreshLease fails
// with ErrRefreshBackoff), so a failing authorization server is asked again
// once per backoff, not once per replica and caller. It does nothing when
// holder no longer holds the lease.
func (s *Store) BackoffRefreshLease(ctx context.Context, g domain.GrantRef, holder string, d time.Duration) error {
	q, err := grantScoped(ctx, s.db, g)
	if err != nil {
		return err
	}
	res := q.Model(&RefreshLease{}).Where("holder = ?", holder).
		Updates(map[string]any{"holder": backoffHolder, "expires_at": s.db.NowFunc().Add(d)})
	return dbErr(res.Error, "back off refresh lease")
}
