package repository

import (
	"context"
	"errors"
	"math"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/mcpauth/mcpauth/apperr"
)

// The event feed is the audit log read in an order that never changes once
// read: by (txid, id), and only below the horizon, the oldest transaction
// still running on the PostgreSQL cluster (pg_snapshot_xmin). A transaction
// below the horizon has ended, so it can add no row there any more; every row
// a later transaction writes sorts after every row already read. Ids alone
// would not do: a transaction holding id 7 may commit after one holding id 8,
// and a reader that passed 8 would skip 7 for ever. The price is latency: an
// event is delivered once every transaction older than its own has ended, so
// a long-running transaction with a transaction id holds delivery back. On
// SQLite one connection writes at a time, id order is commit order, txid is
// 0 and the horizon is unbounded.

// EventCursor is a position in the event feed: the (txid, id) of the last
// event read. The zero cursor is before every event.
type EventCursor struct {
	TxID int64
	ID   int64
}

// Cursor returns the feed position of e.
func (e *AuditEvent) Cursor() EventCursor { return EventCursor{TxID: e.TxID, ID: e.ID} }

// horizonSQL is the first transaction id not known to have ended.
func (s *Store) horizonSQL() string {
	if s.db.Dialector.Name() == "postgres" {
		return "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
	}
	return "9223372036854775807"
}

// feedAfter returns the condition "after cursor, below the horizon" of the
// event feed with its arguments, and the feed's order. On SQLite, where
// txid is always 0 and id order is commit order, both are on the primary
// key alone, which SQLite walks as a range: a row-value comparison there
// uses no index, so every poll of an idle feed would scan and sort the
// whole audit table (measured: about a core's tenth at 80,000 events).
func (s *Store) feedAfter(after EventCursor) (where string, args []any, order string) {
	if s.db.Dialector.Name() == "postgres" {
		return "(txid, id) > (?, ?) AND txid < " + s.horizonSQL(), []any{after.TxID, after.ID}, "txid, id"
	}
	return "id > ?", []any{after.ID}, "id"
}

// feedBetween is feedAfter's condition for the settled stretch (from, to]
// of the feed (no horizon: every transaction in it has ended).
func (s *Store) feedBetween(from, to EventCursor) (where string, args []any, order string) {
	if s.db.Dialector.Name() == "postgres" {
		return "(txid, id) > (?, ?) AND (txid, id) <= (?, ?)", []any{from.TxID, from.ID, to.TxID, to.ID}, "txid, id"
	}
	return "id > ? AND id <= ?", []any{from.ID, to.ID}, "id"
}

// insertEvents inserts events in tx. Each event's uid and created_at are
// its idempotency key: an event already stored (a retried batch whose commit
// was not acknowledged) is skipped, not doubled. Events without a uid or time
// get fresh ones.
func insertEvents(ctx context.Context, tx *gorm.DB, events []*AuditEvent) error {
	if len(events) == 0 {
		return nil
	}
	now := tx.NowFunc()
	for _, e := range events {
		if err := checkTenant(e.TenantID); err != nil {
			return err
		}
		if e.CreatedAt.IsZero() {
			e.CreatedAt = now
		}
		if e.UID == "" {
			e.UID = newAuditUID()
		}
		e.ID = 0
	}
	return tx.WithContext(ctx).Clauses(clause.OnConflict{DoNothing: true}).Create(events).Error
}

// PrepareEvents gives each event its idempotency key (uid and created_at)
// now, before the first attempt to store it, so that every retry carries the
// same key.
func PrepareEvents(now time.Time, events ...*AuditEvent) {
	for _, e := range events {
		if e.UID == "" {
			e.UID = newAuditUID()
		}
		if e.CreatedAt.IsZero() {
			e.CreatedAt = now.UTC()
		}
	}
}

// EventsAfter returns up to limit of the tenant's events after cursor in
// feed order, stopping at the horizon (see EventCursor). Reading again from
// the last returned event's cursor never misses or repeats an event.
func (s *Store) EventsAfter(ctx context.Context, tenant string, after EventCursor, limit int) ([]AuditEvent, error) {
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return nil, err
	}
	where, args, order := s.feedAfter(after)
	out, err := findEvents(q.Where(where, args...).Order(order).Limit(clampLimit(limit)))
	return out, dbErr(err, "read events")
}

// AllEventsAfter is EventsAfter across every tenant, for the webhook
// fan-out, which routes each event to its own tenant's endpoints only.
func (s *Store) AllEventsAfter(ctx context.Context, after EventCursor, limit int) ([]AuditEvent, error) {
	where, args, order := s.feedAfter(after)
	out, err := findEvents(s.db.WithContext(ctx).Where(where, args...).Order(order).Limit(clampLimit(limit)))
	return out, dbErr(err, "read events")
}

// eventColumns are the audit_events columns findEvents reads, in the
// order it scans them.
const eventColumns = "id, uid, tenant_id, created_at, event_type, actor, provider_id, user_id, outcome, reason, request_id, details, txid"

// findEvents runs q, a query of audit_events, and scans the rows itself:
// the event feed reads every event once per subscriber and once for the
// fan-out, and GORM's reflection per row cost about as much as the query.
func findEvents(q *gorm.DB) ([]AuditEvent, error) {
	rows, err := q.Model(&AuditEvent{}).Select(eventColumns).Rows()
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []AuditEvent
	for rows.Next() {
		var e AuditEvent
		if err := rows.Scan(&e.ID, &e.UID, &e.TenantID, &e.CreatedAt, &e.EventType, &e.Actor, &e.ProviderID, &e.UserID,
			&e.Outcome, &e.Reason, &e.RequestID, &e.Details, &e.TxID); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// FeedEnd returns the cursor of "now": events read after it are those not
// yet below the horizon, which sort after every event already there.
func (s *Store) FeedEnd(ctx context.Context) (EventCursor, error) {
	if s.db.Dialector.Name() == "postgres" {
		var h int64
		if err := s.db.WithContext(ctx).Raw("SELECT " + s.horizonSQL()).Scan(&h).Error; err != nil {
			return EventCursor{}, dbErr(err, "read event horizon")
		}
		// (h, 0) sorts before every row of transaction h and later ones.
		return EventCursor{TxID: h, ID: 0}, nil
	}
	var id *int64
	if err := s.db.WithContext(ctx).Model(&AuditEvent{}).Select("max(id)").Scan(&id).Error; err != nil {
		return EventCursor{}, dbErr(err, "read event horizon")
	}
	if id == nil {
		return EventCursor{}, nil
	}
	return EventCursor{ID: *id}, nil
}

// ErrUnknownEvent is the cause of EventCursorOf's error when the tenant has
// no event with that uid (never had, or retention removed it).
var ErrUnknownEvent = errors.New("repository: unknown event")

// EventCursorOf returns the feed position of the tenant's event uid, or an
// invalid-argument error on field wrapping ErrUnknownEvent.
func (s *Store) EventCursorOf(ctx context.Context, tenant, uid, field string) (EventCursor, error) {
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return EventCursor{}, err
	}
	var rows []AuditEvent
	if err := q.Select("txid, id").Where("uid = ?", uid).Limit(1).Find(&rows).Error; err != nil {
		return EventCursor{}, dbErr(err, "find event")
	}
	if len(rows) == 0 {
		return EventCursor{}, &apperr.Error{Kind: apperr.KindInvalidArgument, Reason: "INVALID_ARGUMENT", Field: field,
			Message: "names no event of this tenant (unknown, or removed by retention)", Err: ErrUnknownEvent}
	}
	return rows[0].Cursor(), nil
}

// maxCursor sorts after every event.
var maxCursor = EventCursor{TxID: math.MaxInt64, ID: math.MaxInt64}

// OnEvents registers f to be called (without blocking on it) after every
// commit that stored events, so in-process readers of the feed wake at once
// instead of at their next poll.
func (s *Store) OnEvents(f func()) {
	s.eventHook.Store(&f)
}

func (s *Store) notifyEvents() {
	if f := s.eventHook.Load(); f != nil {
		(*f)()
	}
}

// eventsStored wakes feed readers after a commit that stored events.
func (s *Store) eventsStored(events []*AuditEvent) {
	if len(events) > 0 {
		s.notifyEvents()
	}
}
