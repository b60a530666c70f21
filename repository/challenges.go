package repository

import (
	"context"
	"errors"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

// Challenge is the last Bearer challenge (RFC 6750 section 3, RFC 9728
// section 5.1) an MCP server answered for a provider. Its values are
// upstream data, already parsed and bounded; ResourceMetadata has the
// provider's URL path and query replaced by placeholders, so it holds no
// more than the provider's origin in clear.
type Challenge struct {
	// TenantID is the owning tenant.
	TenantID string `gorm:"column:tenant_id;primaryKey;size:63"`
	// ProviderID is the challenged provider.
	ProviderID string `gorm:"column:provider_id;primaryKey;size:63"`
	// UserID is the connection's user when the request carried a user's
	// token, empty for the tenant-wide grant.
	UserID string `gorm:"column:user_id;primaryKey;size:255"`
	// HTTPStatus is 401 or 403.
	HTTPStatus int `gorm:"column:http_status"`
	// Error is the challenge's error code (for example insufficient_scope).
	Error string `gorm:"column:error"`
	// Scope is the challenge's scope, space separated.
	Scope string `gorm:"column:scope"`
	// ResourceMetadata is the challenge's resource_metadata (see above).
	ResourceMetadata string `gorm:"column:resource_metadata"`
	// StepUpAttempts counts authorizations completed while an
	// insufficient_scope refusal was outstanding.
	StepUpAttempts int `gorm:"column:step_up_attempts"`
	// SeenAt is when the challenge arrived.
	SeenAt time.Time `gorm:"column:seen_at"`
}

// TableName is the table of Challenge.
func (Challenge) TableName() string { return "mcp_challenges" }

// Ref names the grant the challenge was answered to.
func (c *Challenge) Ref() domain.GrantRef {
	return domain.GrantRef{Tenant: c.TenantID, Provider: c.ProviderID, User: c.UserID}
}

// RecordChallenge stores c as the provider's last challenge (keeping its
// step-up attempt count) and moves a grant that is NOT_REQUIRED or
// UNAUTHORIZED (or missing) to UNAUTHORIZED with reason
// AUTHORIZATION_REQUIRED. A held grant keeps its status: refreshing and
// step-up decide about it. It reports whether the status changed.
func (s *Store) RecordChallenge(ctx context.Context, c *Challenge, keyID uint32, events ...*AuditEvent) (bool, error) {
	if err := checkTenant(c.TenantID); err != nil {
		return false, err
	}
	row := *c
	if row.SeenAt.IsZero() {
		row.SeenAt = s.db.NowFunc()
	}
	err := s.db.WithContext(ctx).Clauses(clause.OnConflict{
		Columns:   []clause.Column{{Name: "tenant_id"}, {Name: "provider_id"}, {Name: "user_id"}},
		DoUpdates: clause.AssignmentColumns([]string{"http_status", "error", "scope", "resource_metadata", "seen_at"}),
	}).Create(&row).Error
	if err != nil {
		if foreignKeyViolation(err) {
			return false, apperr.NotFound("provider")
		}
		return false, dbErr(err, "record challenge")
	}
	return s.SetGrantStatus(ctx, c.Ref(),
		[]domain.AuthStatus{domain.StatusNotRequired, domain.StatusUnauthorized},
		domain.StatusUnauthorized, domain.ReasonAuthorizationRequired, keyID, events...)
}

// GetChallenge returns the grant's last challenge, or
// apperr.NotFound("challenge") when none is outstanding.
func (s *Store) GetChallenge(ctx context.Context, g domain.GrantRef) (*Challenge, error) {
	q, err := grantScoped(ctx, s.db, g)
	if err != nil {
		return nil, err
	}
	var c Challenge
	if err := q.Take(&c).Error; err != nil {
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return nil, apperr.NotFound("challenge")
		}
		return nil, dbErr(err, "get challenge")
	}
	return &c, nil
}

// ClearChallenge forgets the provider's challenge: a request succeeded. It
// is called after every successful MCP request, so it reads first and
// writes only when there is a challenge to forget (a write, even one that
// deletes nothing, takes SQLite's write lock).
func (s *Store) ClearChallenge(ctx context.Context, g domain.GrantRef) error {
	q, err := grantScoped(ctx, s.db, g)
	if err != nil {
		return err
	}
	var n int64
	if err := q.Model(&Challenge{}).Limit(1).Count(&n).Error; err != nil {
		return dbErr(err, "read challenge")
	}
	if n == 0 {
		return nil
	}
	q, err = grantScoped(ctx, s.db, g)
	if err != nil {
		return err
	}
	return dbErr(q.Delete(&Challenge{}).Error, "clear challenge")
}

// CountStepUp adds one to the step-up attempts of the provider's
// outstanding insufficient_scope challenge, if it has one.
func (s *Store) CountStepUp(ctx context.Context, g domain.GrantRef) error {
	q, err := grantScoped(ctx, s.db, g)
	if err != nil {
		return err
	}
	err = q.Model(&Challenge{}).Where("error = ?", "insufficient_scope").
		UpdateColumn("step_up_attempts", gorm.Expr("step_up_attempts + 1")).Error
	return dbErr(err, "count step-up")
}
