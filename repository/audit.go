package repository

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/mcpauth/mcpauth/apperr"
)

// ErrUnknownAuditEvent is the cause of ListAudit's error when the event to
// page after is not one of the tenant's.
var ErrUnknownAuditEvent = errors.New("repository: unknown audit event")

// newAuditUID returns a fresh public event id.
func newAuditUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b)
}

// AppendAudit appends e and sets e.ID, e.UID (and e.CreatedAt when zero). Audit
// events are append-only: the repository has no method that updates or
// deletes them.
func (s *Store) AppendAudit(ctx context.Context, e *AuditEvent) error {
	if err := checkTenant(e.TenantID); err != nil {
		return err
	}
	if e.CreatedAt.IsZero() {
		e.CreatedAt = s.db.NowFunc()
	}
	e.ID = 0 // assigned by the database
	e.UID = newAuditUID()
	return dbErr(s.db.WithContext(ctx).Create(e).Error, "append audit event")
}

// AppendAuditBatch appends events in one statement and one transaction
// (the audit writer's group commit). Every event must name a tenant.
func (s *Store) AppendAuditBatch(ctx context.Context, events []*AuditEvent) error {
	if len(events) == 0 {
		return nil
	}
	now := s.db.NowFunc()
	for _, e := range events {
		if err := checkTenant(e.TenantID); err != nil {
			return err
		}
		if e.CreatedAt.IsZero() {
			e.CreatedAt = now
		}
		e.ID = 0
		e.UID = newAuditUID()
	}
	// On PostgreSQL the batch goes in with COPY: one statement, no RETURNING,
	// no per-row parse, and still all-or-nothing.
	if s.db.Dialector.Name() != "postgres" {
		return dbErr(s.db.WithContext(ctx).Create(events).Error, "append audit events")
	}
	sqlDB, err := s.db.DB()
	if err != nil {
		return dbErr(err, "append audit events")
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		return dbErr(err, "append audit events")
	}
	defer conn.Close()
	rows := make([][]any, len(events))
	for i, e := range events {
		rows[i] = []any{e.TenantID, e.UID, e.CreatedAt, e.EventType, e.Actor, e.ProviderID, e.Outcome, e.Reason, e.RequestID, e.Details}
	}
	err = conn.Raw(func(dc any) error {
		pc := dc.(*stdlib.Conn).Conn()
		_, err := pc.CopyFrom(ctx, pgx.Identifier{"audit_events"},
			[]string{"tenant_id", "uid", "created_at", "event_type", "actor", "provider_id", "outcome", "reason", "request_id", "details"},
			pgx.CopyFromRows(rows))
		return err
	})
	return dbErr(err, "append audit events")
}

// ListAudit returns up to limit of the tenant's events matching f, newest
// first, older than the tenant's event with UID afterUID ("" for the newest
// page). It is a keyset query on (tenant_id, id DESC). An afterUID that is not
// one of the tenant's events is an invalid-argument error on "page_token"
// wrapping ErrUnknownAuditEvent. limit is clamped to [1, 1000] (0 means 50).
func (s *Store) ListAudit(ctx context.Context, tenant string, f AuditFilter, afterUID string, limit int) ([]AuditEvent, error) {
	var beforeID int64
	if afterUID != "" {
		q, err := scoped(ctx, s.db, tenant)
		if err != nil {
			return nil, err
		}
		var ids []int64
		if err := q.Model(&AuditEvent{}).Where("uid = ?", afterUID).Limit(1).Pluck("id", &ids).Error; err != nil {
			return nil, dbErr(err, "list audit events")
		}
		if len(ids) == 0 {
			return nil, &apperr.Error{Kind: apperr.KindInvalidArgument, Reason: "INVALID_ARGUMENT", Field: "page_token",
				Message: "is not a valid page token", Err: ErrUnknownAuditEvent}
		}
		beforeID = ids[0]
	}
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return nil, err
	}
	if f.ProviderID != "" {
		q = q.Where("provider_id = ?", f.ProviderID)
	}
	if f.EventType != "" {
		q = q.Where("event_type = ?", f.EventType)
	}
	if beforeID > 0 {
		q = q.Where("id < ?", beforeID)
	}
	var out []AuditEvent
	if err := q.Order("id DESC").Limit(clampLimit(limit)).Find(&out).Error; err != nil {
		return nil, dbErr(err, "list audit events")
	}
	return out, nil
}
