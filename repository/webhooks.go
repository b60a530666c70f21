package repository

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/mcpauth/mcpauth/apperr"
)

// WebhookEndpoint is a tenant's webhook receiver. Its signing secret is a
// ciphertext sealed by the service layer.
type WebhookEndpoint struct {
	// TenantID is the owning tenant.
	TenantID string `gorm:"column:tenant_id;primaryKey;size:63"`
	// ID is the endpoint id, unique in the tenant.
	ID string `gorm:"column:id;primaryKey;size:63"`
	// URL is the https URL events are posted to.
	URL string `gorm:"column:url"`
	// EventTypes is a comma-separated list of event types to deliver;
	// empty delivers every type.
	EventTypes string `gorm:"column:event_types"`
	// Secret is the sealed signing secret.
	Secret []byte `gorm:"column:secret"`
	// PreviousSecret is the sealed secret before the last rotation, still
	// signed with until PreviousUntil.
	PreviousSecret []byte `gorm:"column:previous_secret"`
	// PreviousUntil ends the previous secret's grace period.
	PreviousUntil *time.Time `gorm:"column:previous_until"`
	// KeyID is the master key id the secrets are sealed under.
	KeyID uint32 `gorm:"column:key_id"`
	// Disabled stops deliveries (events are still queued for it).
	Disabled bool `gorm:"column:disabled"`
	// Version increases with every update (optimistic locking).
	Version int64 `gorm:"column:version"`
	// CreatedAt is when the endpoint was created: it receives events from
	// then on.
	CreatedAt time.Time `gorm:"column:created_at"`
	// UpdatedAt is the last change.
	UpdatedAt time.Time `gorm:"column:updated_at"`
}

// TableName returns the table of webhook endpoints.
func (WebhookEndpoint) TableName() string { return "webhook_endpoints" }

// Delivery states.
const (
	DeliveryPending   = 0
	DeliveryDelivered = 1
	DeliveryDead      = 2
)

// WebhookDelivery is one event to deliver to one endpoint.
type WebhookDelivery struct {
	// ID is the delivery's row id (internal; callers see EventUID).
	ID int64 `gorm:"column:id;primaryKey;autoIncrement"`
	// TenantID is the owning tenant.
	TenantID string `gorm:"column:tenant_id"`
	// EndpointID is the receiving endpoint.
	EndpointID string `gorm:"column:endpoint_id"`
	// EventUID is the event's public id: the webhook-id header, the same on
	// every attempt, so receivers drop repeats.
	EventUID string `gorm:"column:event_uid"`
	// EventType is the event's type.
	EventType string `gorm:"column:event_type"`
	// ProviderID is the provider concerned: deliveries of one provider to
	// one endpoint go out in feed order, one at a time.
	ProviderID string `gorm:"column:provider_id"`
	// EventTxID and EventID are the event's feed position (see EventCursor).
	EventTxID int64 `gorm:"column:event_txid"`
	EventID   int64 `gorm:"column:event_id"`
	// Payload is the JSON body, fixed when the delivery is created.
	Payload string `gorm:"column:payload"`
	// State is DeliveryPending, DeliveryDelivered or DeliveryDead.
	State int `gorm:"column:state"`
	// Attempts counts attempts made.
	Attempts int `gorm:"column:attempts"`
	// NextAttemptAt is when the next attempt is due.
	NextAttemptAt time.Time `gorm:"column:next_attempt_at"`
	// LeaseOwner and LeaseUntil: the replica attempting it now, and until
	// when others keep off.
	LeaseOwner string     `gorm:"column:lease_owner"`
	LeaseUntil *time.Time `gorm:"column:lease_until"`
	// LastStatus is the last HTTP status (0: no answer).
	LastStatus int `gorm:"column:last_status"`
	// LastError says why the last attempt failed (never a response body).
	LastError string `gorm:"column:last_error"`
	// CreatedAt and UpdatedAt.
	CreatedAt time.Time `gorm:"column:created_at"`
	UpdatedAt time.Time `gorm:"column:updated_at"`
}

// TableName returns the table of webhook deliveries.
func (WebhookDelivery) TableName() string { return "webhook_deliveries" }

var errEmptyEndpointID = errors.New("repository: empty webhook endpoint id")

// CreateWebhookEndpoint inserts e (Version 1). A duplicate id is
// apperr.AlreadyExists. events are inserted in the same transaction.
func (s *Store) CreateWebhookEndpoint(ctx context.Context, e *WebhookEndpoint, events ...*AuditEvent) error {
	if err := checkTenant(e.TenantID); err != nil {
		return err
	}
	if e.ID == "" {
		return apperr.Internal(errEmptyEndpointID, "webhook endpoint id missing")
	}
	now := s.db.NowFunc()
	e.Version, e.CreatedAt, e.UpdatedAt = 1, now, now
	err := s.transaction(ctx, func(tx *gorm.DB) error {
		if err := tx.Create(e).Error; err != nil {
			return err
		}
		return insertEvents(ctx, tx, events)
	})
	if _, dup := uniqueViolation(err); dup {
		return &apperr.Error{Kind: apperr.KindAlreadyExists, Reason: "ALREADY_EXISTS", Field: "webhook_endpoint_id",
			Message: "a webhook endpoint with this id already exists", Err: err}
	}
	if err != nil {
		return dbErr(err, "create webhook endpoint")
	}
	s.eventsStored(events)
	return nil
}

// GetWebhookEndpoint returns the tenant's endpoint id, or apperr.NotFound.
func (s *Store) GetWebhookEndpoint(ctx context.Context, tenant, id string) (*WebhookEndpoint, error) {
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return nil, err
	}
	var e WebhookEndpoint
	if err := q.Where("id = ?", id).Take(&e).Error; err != nil {
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return nil, apperr.NotFound("webhook endpoint")
		}
		return nil, dbErr(err, "get webhook endpoint")
	}
	return &e, nil
}

// ListWebhookEndpoints pages through the tenant's endpoints by id.
func (s *Store) ListWebhookEndpoints(ctx context.Context, tenant, afterID string, limit int) ([]WebhookEndpoint, error) {
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return nil, err
	}
	if afterID != "" {
		q = q.Where("id > ?", afterID)
	}
	var out []WebhookEndpoint
	err = q.Order("id").Limit(clampLimit(limit)).Find(&out).Error
	return out, dbErr(err, "list webhook endpoints")
}

// UpdateWebhookEndpoint replaces the endpoint's url, event types, secrets,
// key id and disabled flag when its version is expectedVersion (0: any);
// otherwise apperr.Aborted. events are inserted in the same transaction.
func (s *Store) UpdateWebhookEndpoint(ctx context.Context, e *WebhookEndpoint, expectedVersion int64, events ...*AuditEvent) error {
	if err := checkTenant(e.TenantID); err != nil {
		return err
	}
	now := s.db.NowFunc()
	err := s.transaction(ctx, func(tx *gorm.DB) error {
		q, err := scoped(ctx, tx, e.TenantID)
		if err != nil {
			return err
		}
		q = q.Model(&WebhookEndpoint{}).Where("id = ?", e.ID)
		if expectedVersion != 0 {
			q = q.Where("version = ?", expectedVersion)
		}
		res := q.Updates(map[string]any{"url": e.URL, "event_types": e.EventTypes, "secret": e.Secret,
			"previous_secret": nullBytes(e.PreviousSecret), "previous_until": e.PreviousUntil, "key_id": e.KeyID,
			"disabled": e.Disabled, "version": gorm.Expr("version + 1"), "updated_at": now})
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			if _, err := s.GetWebhookEndpoint(ctx, e.TenantID, e.ID); err != nil {
				return err
			}
			return apperr.Aborted("webhook endpoint was changed concurrently; re-read and retry")
		}
		return insertEvents(ctx, tx, events)
	})
	if err != nil {
		return dbErr(err, "update webhook endpoint")
	}
	e.UpdatedAt = now
	if expectedVersion != 0 {
		e.Version = expectedVersion + 1
	}
	s.eventsStored(events)
	return nil
}

// DeleteWebhookEndpoint deletes the endpoint and its deliveries.
func (s *Store) DeleteWebhookEndpoint(ctx context.Context, tenant, id string, events ...*AuditEvent) error {
	if err := checkTenant(tenant); err != nil {
		return err
	}
	err := s.transaction(ctx, func(tx *gorm.DB) error {
		q, err := scoped(ctx, tx, tenant)
		if err != nil {
			return err
		}
		if err := q.Where("endpoint_id = ?", id).Delete(&WebhookDelivery{}).Error; err != nil {
			return err
		}
		q, err = scoped(ctx, tx, tenant)
		if err != nil {
			return err
		}
		res := q.Where("id = ?", id).Delete(&WebhookEndpoint{})
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			return apperr.NotFound("webhook endpoint")
		}
		return insertEvents(ctx, tx, events)
	})
	if err != nil {
		return dbErr(err, "delete webhook endpoint")
	}
	s.eventsStored(events)
	return nil
}

// EventCursorRow is the stored position of a feed reader.
type EventCursorRow struct {
	Name    string `gorm:"column:name;primaryKey"`
	TxID    int64  `gorm:"column:txid"`
	EventID int64  `gorm:"column:event_id"`
}

// TableName returns the table of feed cursors.
func (EventCursorRow) TableName() string { return "event_cursors" }

// webhookCursor names the fan-out's position in the feed.
const webhookCursor = "webhooks"

// EventCursorRow's lease columns (migration 0022) are read with it.
type fanOutCursor struct {
	TxID       int64      `gorm:"column:txid"`
	EventID    int64      `gorm:"column:event_id"`
	LeaseOwner string     `gorm:"column:lease_owner"`
	LeaseUntil *time.Time `gorm:"column:lease_until"`
}

// FanOutBatch is a stretch of the event feed leased to one fan-out by
// LeaseFanOut, to be routed, sent and then recorded with RecordFanOut.
type FanOutBatch struct {
	// Events are the events of the batch's stretch of the feed whose
	// tenant has an endpoint (every event with FanOutRead.AllEvents), in
	// feed order. The others have no deliveries: the record moves the
	// cursor past them all the same.
	Events []AuditEvent
	// Scanned is how many events the stretch holds, Events or not.
	Scanned int
	// Endpoints are the endpoints of each tenant of Events, by tenant.
	Endpoints map[string][]WebhookEndpoint
	owner     string
	from, to  EventCursor
}

// FanOutRead says what LeaseFanOut reads.
type FanOutRead struct {
	// Limit bounds the events of the stretch (see clampLimit).
	Limit int
	// AllEvents reads every event of the stretch, also those of tenants
	// without endpoints (to mirror them to the log).
	AllEvents bool
}

// ErrFanOutLeaseLost is the cause of RecordFanOut's error when the batch's
// lease expired and another fan-out took the feed over (it makes the same
// attempts again: at least once).
var ErrFanOutLeaseLost = errors.New("repository: webhook fan-out lease lost")

// LeaseFanOut reads up to read.Limit events after the fan-out cursor and leases
// that stretch of the feed to owner until now+lease, so that no other
// replica routes or sends them meanwhile. It returns nil (and no error)
// when there is nothing new or another owner's lease is live. It returns
// nil while another replica (or process on the SQLite file) leads
// (fanoutlead.go), and the lead takes over at once a live lease of an
// owner that no longer leads; without a lead (in-memory SQLite) the lease
// alone decides.
// Reading costs no write while the feed is idle, and none while owner's lease has
// more than half its time left (RecordFanOut renews it). Migration 0009
// creates the cursor after the events that existed then; were it missing,
// the fan-out would start from the first event (never skip one).
//
// With after (owner's previous batch, whose record may still be under
// way), it reads the events after that batch instead, provided owner's
// lease is still live; the new batch is to be recorded once after's
// record has committed.
func (s *Store) LeaseFanOut(ctx context.Context, owner string, now time.Time, lease time.Duration, read FanOutRead, after *FanOutBatch) (*FanOutBatch, error) {
	b, err := s.leaseFanOut(ctx, owner, now, lease, read, after)
	if err != nil {
		return nil, dbErr(err, "lease fan-out")
	}
	return b, nil
}

func (s *Store) leaseFanOut(ctx context.Context, owner string, now time.Time, lease time.Duration, read FanOutRead, after *FanOutBatch) (*FanOutBatch, error) {
	// Only the lead fans out (fanoutlead.go); without a lead (in-memory
	// SQLite, no flock) the lease alone decides.
	leads := s.hasFanOutLead()
	if leads {
		lead, err := s.leadFanOut(ctx, now, fanOutLeadPing)
		if err != nil || !lead {
			return nil, err // another replica leads
		}
	}
	db := s.db.WithContext(ctx)
	var rows []fanOutCursor
	if err := db.Model(&EventCursorRow{}).Where("name = ?", webhookCursor).Find(&rows).Error; err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		if err := db.Clauses(clause.OnConflict{DoNothing: true}).Create(&EventCursorRow{Name: webhookCursor}).Error; err != nil {
			return nil, err
		}
		rows = []fanOutCursor{{}}
	}
	cur := rows[0]
	// orphan is another owner's live lease that this Store takes over as
	// the lead: that owner no longer leads, so its process died, lost its
	// lock's connection to the database (PostgreSQL) or released its lock
	// file (SQLite), or it predates the lead.
	orphan := ""
	if cur.LeaseOwner != "" && cur.LeaseOwner != owner && cur.LeaseUntil != nil && !cur.LeaseUntil.Before(now) {
		if !leads {
			return nil, nil // another replica's
		}
		if lead, err := s.leadFanOut(ctx, now, 0); err != nil || !lead {
			return nil, err // the lead was lost since its last check
		}
		orphan = cur.LeaseOwner
	}
	from := EventCursor{TxID: cur.TxID, ID: cur.EventID}
	if after != nil {
		if cur.LeaseOwner != owner || cur.LeaseUntil == nil || !cur.LeaseUntil.After(now) {
			return nil, nil // lost: after's record fails too
		}
		from = after.to
	}
	// The stretch's positions and tenants first: its events are read
	// whole only for the tenants with endpoints (or all, to mirror them).
	stretch, err := s.feedPositions(ctx, from, clampLimit(read.Limit))
	if err != nil {
		return nil, err
	}
	if len(stretch) == 0 {
		return nil, nil
	}
	if cur.LeaseOwner != owner || cur.LeaseUntil == nil || cur.LeaseUntil.Before(now.Add(lease/2)) {
		q := db.Model(&EventCursorRow{})
		if after != nil {
			// Renewed only: the cursor is where after's record leaves it.
			q = q.Where("name = ? AND lease_owner = ?", webhookCursor, owner)
		} else {
			q = q.Where("name = ? AND txid = ? AND event_id = ? AND (lease_owner IN ('', ?, ?) OR lease_until IS NULL OR lease_until < ?)",
				webhookCursor, from.TxID, from.ID, owner, orphan, now)
		}
		res := q.Updates(map[string]any{"lease_owner": owner, "lease_until": now.Add(lease)})
		if res.Error != nil {
			return nil, res.Error
		}
		if res.RowsAffected == 0 {
			return nil, nil // taken (or moved) since the read
		}
	}
	last := stretch[len(stretch)-1]
	b := &FanOutBatch{Scanned: len(stretch), Endpoints: map[string][]WebhookEndpoint{}, owner: owner, from: from,
		to: EventCursor{TxID: last.TxID, ID: last.ID}}
	// The endpoints are read after the stretch, as they were before it
	// was read in two steps: an endpoint created since is not the
	// stretch's (route takes only endpoints older than the event anyway).
	var tenants []string
	for _, p := range stretch {
		if _, ok := b.Endpoints[p.TenantID]; !ok {
			b.Endpoints[p.TenantID] = nil
			tenants = append(tenants, p.TenantID)
		}
	}
	for chunk := range slices.Chunk(tenants, groupTuples) {
		var eps []WebhookEndpoint
		if err := db.Where("tenant_id IN ?", chunk).Order("tenant_id, id").Find(&eps).Error; err != nil {
			return nil, err
		}
		for _, ep := range eps {
			b.Endpoints[ep.TenantID] = append(b.Endpoints[ep.TenantID], ep)
		}
	}
	var routed []string
	for _, t := range tenants {
		if len(b.Endpoints[t]) > 0 || read.AllEvents {
			routed = append(routed, t)
		} else {
			delete(b.Endpoints, t)
		}
	}
	if len(routed) == 0 {
		return b, nil // nothing to route: the record only moves the cursor
	}
	// The stretch is settled: every transaction below the horizon it was
	// read under has ended, so (from, to] holds the same events now.
	where, args, order := s.feedBetween(from, b.to)
	q := db.Where(where, args...)
	if len(routed) < len(tenants) {
		q = q.Where("tenant_id IN ?", routed)
	}
	if b.Events, err = findEvents(q.Order(order)); err != nil {
		return nil, err
	}
	return b, nil
}

// feedPosition is an event's place in the feed and its tenant.
type feedPosition struct {
	TxID, ID int64
	TenantID string
}

// feedPositions reads the places and tenants of up to limit events after
// from, below the horizon, in feed order. It scans rows itself: the
// fan-out reads one per event written, and GORM's reflection per row cost
// it more than the query.
func (s *Store) feedPositions(ctx context.Context, from EventCursor, limit int) ([]feedPosition, error) {
	where, args, order := s.feedAfter(from)
	rows, err := s.db.WithContext(ctx).Raw("SELECT txid, id, tenant_id FROM audit_events WHERE "+where+
		" ORDER BY "+order+" LIMIT ?", append(args, limit)...).Rows()
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []feedPosition
	for rows.Next() {
		var p feedPosition
		if err := rows.Scan(&p.TxID, &p.ID, &p.TenantID); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// RecordFanOut stores the outcome of a batch: its deliveries in whatever
// state the caller's attempts left them (delivered, pending with a retry
// due, dead, or pending untried behind their group), and the cursor past
// the batch, in one transaction, renewing the lease until now+lease. When
// the lease was lost it writes nothing and returns an error wrapping
// ErrFanOutLeaseLost. A delivery that exists already is kept
// (insert-ignore on endpoint and event uid).
//
// A delivery to an endpoint deleted since the batch was leased (perhaps
// while it was being sent) is dropped, not an error: failing would send
// the whole batch again later, every other endpoint's deliveries with it.
// The endpoints still there are locked (FOR SHARE) until the record
// commits, so a deletion that has not committed yet waits for it, and then
// deletes the recorded deliveries with its endpoint.
func (s *Store) RecordFanOut(ctx context.Context, b *FanOutBatch, ds []WebhookDelivery, now time.Time, lease time.Duration) error {
	if len(ds) == 0 {
		// Only the cursor moves: one statement, no transaction around it.
		return dbErr(moveFanOutCursor(s.db.WithContext(ctx), b, now, lease), "record fan-out")
	}
	err := s.transaction(ctx, func(tx *gorm.DB) error {
		// The cursor first: its row lock orders competing records.
		if err := moveFanOutCursor(tx, b, now, lease); err != nil {
			return err
		}
		live, err := toLiveEndpoints(tx, ds)
		if err != nil || len(live) == 0 {
			return err
		}
		// The conflict target names the delivery's key, so that only that
		// index is probed before each insert (without one, every unique
		// index is, the primary key too).
		if err := tx.Clauses(clause.OnConflict{Columns: deliveryKey, DoNothing: true}).CreateInBatches(live, recordBatch).Error; err != nil {
			return err
		}
		// The caller's slice (live may be a copy): a delivery dropped with
		// its endpoint is not found, and keeps no id.
		return leasedIDs(tx, ds)
	})
	if err != nil {
		return dbErr(err, "record fan-out")
	}
	return nil
}

// leasedIDs sets the row id of each delivery of ds recorded leased (a
// straggler, whose outcome is recorded by id and lease when its attempt
// ends), read back by its key (the unique index; there are at most a few
// stragglers a batch), and 0 where the row there is not leased with its
// token: the insert kept a row already there, which is not the caller's
// to finish.
func leasedIDs(tx *gorm.DB, ds []WebhookDelivery) error {
	for i := range ds {
		d := &ds[i]
		if d.LeaseOwner == "" {
			continue
		}
		var rows []WebhookDelivery
		if err := tx.Select("id, lease_owner").Where("tenant_id = ? AND endpoint_id = ? AND event_uid = ?", d.TenantID, d.EndpointID, d.EventUID).
			Limit(1).Find(&rows).Error; err != nil {
			return err
		}
		d.ID = 0
		if len(rows) == 1 && rows[0].LeaseOwner == d.LeaseOwner {
			d.ID = rows[0].ID
		}
	}
	return nil
}

// moveFanOutCursor moves the fan-out cursor past b and renews the lease
// until now+lease, provided b's owner still holds it at b's start:
// otherwise it changes nothing and returns ErrFanOutLeaseLost.
func moveFanOutCursor(db *gorm.DB, b *FanOutBatch, now time.Time, lease time.Duration) error {
	res := db.Model(&EventCursorRow{}).Where("name = ? AND txid = ? AND event_id = ? AND lease_owner = ?",
		webhookCursor, b.from.TxID, b.from.ID, b.owner).
		Updates(map[string]any{"txid": b.to.TxID, "event_id": b.to.ID, "lease_until": now.Add(lease)})
	if res.Error != nil {
		return res.Error
	}
	if res.RowsAffected == 0 {
		return ErrFanOutLeaseLost
	}
	return nil
}

// toLiveEndpoints returns the deliveries of ds whose endpoint still
// exists, locking those endpoints' rows for the rest of tx (FOR SHARE on
// PostgreSQL; SQLite's write transactions are exclusive). ds is returned
// as is, without a copy, when every endpoint is there.
func toLiveEndpoints(tx *gorm.DB, ds []WebhookDelivery) ([]WebhookDelivery, error) {
	type endpoint struct{ TenantID, ID string }
	var keys [][]any
	seen := map[endpoint]bool{}
	for i := range ds {
		k := endpoint{ds[i].TenantID, ds[i].EndpointID}
		if !seen[k] {
			seen[k] = true
			keys = append(keys, []any{k.TenantID, k.ID})
		}
	}
	live := map[endpoint]bool{}
	for chunk := range slices.Chunk(keys, groupTuples) {
		var rows []endpoint
		if err := tx.Model(&WebhookEndpoint{}).Clauses(clause.Locking{Strength: clause.LockingStrengthShare}).
			Select("tenant_id", "id").Where("(tenant_id, id) IN "+valuesList(len(chunk), 2), flatten(chunk)...).
			Find(&rows).Error; err != nil {
			return nil, err
		}
		for _, r := range rows {
			live[r] = true
		}
	}
	if len(live) == len(seen) {
		return ds, nil
	}
	out := make([]WebhookDelivery, 0, len(ds))
	for i := range ds {
		if live[endpoint{ds[i].TenantID, ds[i].EndpointID}] {
			out = append(out, ds[i])
		}
	}
	return out, nil
}

// deliveryKey is the unique key of a delivery (uniq_webhook_delivery).
var deliveryKey = []clause.Column{{Name: "tenant_id"}, {Name: "endpoint_id"}, {Name: "event_uid"}}

// recordBatch bounds the deliveries one insert statement carries (17
// bound values each: within both databases' limits).
const recordBatch = 1000

// RenewFanOut extends owner's fan-out lease until until; false when owner
// no longer holds it.
func (s *Store) RenewFanOut(ctx context.Context, owner string, until time.Time) (bool, error) {
	res := s.db.WithContext(ctx).Model(&EventCursorRow{}).Where("name = ? AND lease_owner = ?", webhookCursor, owner).
		Update("lease_until", until)
	if res.Error != nil {
		return false, dbErr(res.Error, "renew fan-out lease")
	}
	return res.RowsAffected == 1, nil
}

// ReleaseFanOut gives the fan-out lease up if owner holds it, and this
// Store's lead (at shutdown, so another replica takes over at once instead
// of when it expires).
func (s *Store) ReleaseFanOut(ctx context.Context, owner string) error {
	defer s.dropFanOutLead(ctx)
	err := s.db.WithContext(ctx).Model(&EventCursorRow{}).Where("name = ? AND lease_owner = ?", webhookCursor, owner).
		Updates(map[string]any{"lease_owner": "", "lease_until": nil}).Error
	return dbErr(err, "release fan-out")
}

// DeliveryGroup is an (endpoint, provider) group of deliveries, delivered
// in feed order.
type DeliveryGroup struct{ Tenant, Endpoint, Provider string }

// GroupOf returns d's group.
func GroupOf(d *WebhookDelivery) DeliveryGroup {
	return DeliveryGroup{Tenant: d.TenantID, Endpoint: d.EndpointID, Provider: d.ProviderID}
}

// groupTuples bounds the groups looked up in one statement.
const groupTuples = 1000

// HeldGroups returns the groups of ds (events about a provider only) that
// have a pending delivery: a new delivery of theirs must queue behind it.
func (s *Store) HeldGroups(ctx context.Context, ds []WebhookDelivery) (map[DeliveryGroup]bool, error) {
	var groups [][]any
	seen := map[DeliveryGroup]bool{}
	for i := range ds {
		g := GroupOf(&ds[i])
		if g.Provider != "" && !seen[g] {
			seen[g] = true
			groups = append(groups, []any{g.Tenant, g.Endpoint, g.Provider})
		}
	}
	held := map[DeliveryGroup]bool{}
	for chunk := range slices.Chunk(groups, groupTuples) {
		var rows []struct{ TenantID, EndpointID, ProviderID string }
		if err := s.db.WithContext(ctx).Model(&WebhookDelivery{}).Distinct("tenant_id", "endpoint_id", "provider_id").
			Where("state = "+strconv.Itoa(DeliveryPending)+" AND (tenant_id, endpoint_id, provider_id) IN "+valuesList(len(chunk), 3), flatten(chunk)...).
			Find(&rows).Error; err != nil {
			return nil, dbErr(err, "read held delivery groups")
		}
		for _, r := range rows {
			held[DeliveryGroup{r.TenantID, r.EndpointID, r.ProviderID}] = true
		}
	}
	return held, nil
}

// valuesList is "(VALUES (?, ?), (?, ?))" for rows of width placeholders:
// the right side of a row-value IN that both PostgreSQL and SQLite take
// (SQLite wants a subquery there, not a list of rows).
func valuesList(rows, width int) string {
	row := "(" + strings.TrimSuffix(strings.Repeat("?, ", width), ", ") + ")"
	return "(VALUES " + strings.TrimSuffix(strings.Repeat(row+", ", rows), ", ") + ")"
}

// flatten concatenates rows of arguments.
func flatten(rows [][]any) []any {
	var out []any
	for _, r := range rows {
		out = append(out, r...)
	}
	return out
}

// claimLockKey serialises ClaimDeliveries across replicas (PostgreSQL
// advisory lock, held for the claim's short transaction only).
const claimLockKey = 0x6d6370776864 // "mcpwhd"

// ClaimDeliveries leases up to limit due deliveries to owner until
// now+lease, in feed order: pending, due, not leased by a live owner, and,
// for events about a provider, with no earlier pending delivery of the same
// endpoint and provider that is leased or waiting for a retry. So a batch
// may hold several deliveries of one group (endpoint and provider), which
// the caller sends one after the other in the order returned, stopping at
// the first failure; no other replica can take a later one meanwhile, since
// claims are serialised and the earlier ones are leased. Events about no
// provider are not ordered. The lease owner recorded is a fresh token per
// claim (in LeaseOwner of the rows returned).
func (s *Store) ClaimDeliveries(ctx context.Context, owner string, now time.Time, lease time.Duration, limit int) ([]WebhookDelivery, error) {
	// The state is written into the SQL, not bound, so that a generic
	// plan can still prove the partial indexes' predicates.
	pending := strconv.Itoa(DeliveryPending)
	// Most polls find nothing due. Two probes of the partial indexes
	// (free, and leased with the lease over) say so without the claim's
	// transaction, lock and query, whose preparation alone costs SQLite
	// milliseconds on every poll of an idle process. A delivery they miss
	// was not a candidate either.
	var due bool
	if err := s.db.WithContext(ctx).Raw(`SELECT EXISTS (SELECT 1 FROM webhook_deliveries
			WHERE state = `+pending+` AND lease_owner = '' AND next_attempt_at <= ?)
		OR EXISTS (SELECT 1 FROM webhook_deliveries
			WHERE state = `+pending+` AND lease_owner <> '' AND lease_until < ? AND next_attempt_at <= ?)`,
		now, now, now).Scan(&due).Error; err != nil {
		return nil, dbErr(err, "claim deliveries")
	}
	if !due {
		return nil, nil
	}
	var out []WebhookDelivery
	err := s.transaction(ctx, func(tx *gorm.DB) error {
		if s.db.Dialector.Name() == "postgres" {
			if err := tx.Exec("SELECT pg_advisory_xact_lock(?)", claimLockKey).Error; err != nil {
				return err
			}
		}
		// Candidates are the free deliveries (unleased, or whose lease
		// expired) in feed order; a group is held back while one of its
		// pending deliveries is leased or waiting for a retry, which is
		// then its earliest (a failure releases the later ones untried).
		// Each part reads a partial index of migration 0015, so a claim
		// costs the candidates it looks at, not the deliveries in flight.
		var cands []WebhookDelivery
		err := tx.Raw(`SELECT d.* FROM webhook_deliveries d
			WHERE d.state = `+pending+` AND d.next_attempt_at <= ? AND (d.lease_owner = '' OR d.lease_until < ?)
				AND (d.provider_id = '' OR NOT EXISTS (SELECT 1 FROM webhook_deliveries e
					WHERE e.tenant_id = d.tenant_id AND e.endpoint_id = d.endpoint_id AND e.provider_id = d.provider_id
						AND e.state = `+pending+` AND ((e.lease_owner <> '' AND e.lease_until >= ?) OR (e.lease_owner = '' AND e.next_attempt_at > ?))))
				AND NOT EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.tenant_id = d.tenant_id AND w.id = d.endpoint_id AND w.disabled)
			ORDER BY d.event_txid, d.event_id LIMIT ?`,
			now, now, now, now, clampLimit(limit)).Scan(&cands).Error
		if err != nil || len(cands) == 0 {
			return err
		}
		ids := make([]int64, len(cands))
		for i, d := range cands {
			ids[i] = d.ID
		}
		token := owner + "/" + randomHex(4)
		until := now.Add(lease)
		if err := tx.Model(&WebhookDelivery{}).Where("id IN ?", ids).
			Updates(map[string]any{"lease_owner": token, "lease_until": until}).Error; err != nil {
			return err
		}
		for _, d := range cands {
			d.LeaseOwner, d.LeaseUntil = token, &until
			out = append(out, d)
		}
		return nil
	})
	if err != nil {
		return nil, dbErr(err, "claim deliveries")
	}
	return out, nil
}

// ReleaseDeliveries gives back the leases of deliveries not attempted (the
// followers of a failed delivery in their group, or of a tenant whose
// share of the workers was in use), unchanged otherwise: one statement per
// lease token (and thousand deliveries).
func (s *Store) ReleaseDeliveries(ctx context.Context, ds []WebhookDelivery) error {
	byToken := map[string][]int64{}
	for _, d := range ds {
		byToken[d.LeaseOwner] = append(byToken[d.LeaseOwner], d.ID)
	}
	for token, ids := range byToken {
		for chunk := range slices.Chunk(ids, groupTuples) {
			err := s.db.WithContext(ctx).Model(&WebhookDelivery{}).Where("id IN ? AND lease_owner = ?", chunk, token).
				Updates(map[string]any{"lease_owner": "", "lease_until": nil}).Error
			if err != nil {
				return dbErr(err, "release deliveries")
			}
		}
	}
	return nil
}

// FinishDelivered records that the deliveries done (each holding its lease
// token in LeaseOwner and the answer's status in LastStatus) were
// delivered, in one statement per token and status. Rows whose lease
// another replica took over meanwhile are left alone.
func (s *Store) FinishDelivered(ctx context.Context, done []WebhookDelivery) error {
	type key struct {
		token  string
		status int
	}
	groups := map[key][]int64{}
	for _, d := range done {
		k := key{d.LeaseOwner, d.LastStatus}
		groups[k] = append(groups[k], d.ID)
	}
	now := s.db.NowFunc()
	for k, ids := range groups {
		err := s.db.WithContext(ctx).Model(&WebhookDelivery{}).Where("id IN ? AND lease_owner = ?", ids, k.token).
			Updates(map[string]any{"state": DeliveryDelivered, "attempts": gorm.Expr("attempts + 1"), "last_status": k.status,
				"last_error": "", "lease_owner": "", "lease_until": nil, "updated_at": now}).Error
		if err != nil {
			return dbErr(err, "finish deliveries")
		}
	}
	return nil
}

// FinishAttempt records the outcome of an attempt at d (its State,
// Attempts, NextAttemptAt, LastStatus and LastError as set by the caller)
// and releases the lease held with the token in d.LeaseOwner. It reports
// false when that lease was no longer held (it expired and another replica
// took over): nothing is written.
func (s *Store) FinishAttempt(ctx context.Context, d *WebhookDelivery) (bool, error) {
	res := s.db.WithContext(ctx).Model(&WebhookDelivery{}).Where("id = ? AND lease_owner = ?", d.ID, d.LeaseOwner).
		Updates(map[string]any{"state": d.State, "attempts": d.Attempts, "next_attempt_at": d.NextAttemptAt,
			"last_status": d.LastStatus, "last_error": d.LastError, "lease_owner": "", "lease_until": nil,
			"updated_at": s.db.NowFunc()})
	if res.Error != nil {
		return false, dbErr(res.Error, "finish delivery attempt")
	}
	return res.RowsAffected == 1, nil
}

// ListWebhookDeliveries pages through the deliveries to the tenant's
// endpoint, newest first, optionally in one state (state < 0: any), after
// the delivery of event afterUID ("": from the newest). An afterUID with no
// delivery to the endpoint is an invalid-argument error on "page_token".
func (s *Store) ListWebhookDeliveries(ctx context.Context, tenant, endpointID string, state int, afterUID string, limit int) ([]WebhookDelivery, error) {
	var beforeID int64
	if afterUID != "" {
		q, err := scoped(ctx, s.db, tenant)
		if err != nil {
			return nil, err
		}
		var ids []int64
		if err := q.Model(&WebhookDelivery{}).Where("endpoint_id = ? AND event_uid = ?", endpointID, afterUID).
			Limit(1).Pluck("id", &ids).Error; err != nil {
			return nil, dbErr(err, "list webhook deliveries")
		}
		if len(ids) == 0 {
			return nil, apperr.Invalid("page_token", "is not a valid page token")
		}
		beforeID = ids[0]
	}
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return nil, err
	}
	q = q.Where("endpoint_id = ?", endpointID)
	if state >= 0 {
		q = q.Where("state = ?", state)
	}
	if beforeID > 0 {
		q = q.Where("id < ?", beforeID)
	}
	var out []WebhookDelivery
	err = q.Order("id DESC").Limit(clampLimit(limit)).Find(&out).Error
	return out, dbErr(err, "list webhook deliveries")
}

// DeliveryCounts counts the endpoint's deliveries per state. The count
// reads idx_webhook_delivery_endpoint alone (an index-only scan: the index
// carries state, migration 0030a), never the rows.
func (s *Store) DeliveryCounts(ctx context.Context, tenant, endpointID string) (map[int]int64, error) {
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return nil, err
	}
	var rows []deliveryCount
	err = deliveryCounts(q, endpointID).Scan(&rows).Error
	out := map[int]int64{}
	for _, r := range rows {
		out[r.State] = r.N
	}
	return out, dbErr(err, "count webhook deliveries")
}

// deliveryCount is one state's count of an endpoint's deliveries.
type deliveryCount struct {
	State int
	N     int64
}

// deliveryCounts is DeliveryCounts' query on q (scoped to the tenant).
func deliveryCounts(q *gorm.DB, endpointID string) *gorm.DB {
	return q.Model(&WebhookDelivery{}).Select("state, count(*) AS n").Where("endpoint_id = ?", endpointID).Group("state")
}

// RedeliverWebhookEvent makes the delivery of event uid to the endpoint
// pending again, due now, with its attempts reset. A missing delivery is
// apperr.NotFound.
func (s *Store) RedeliverWebhookEvent(ctx context.Context, tenant, endpointID, eventUID string) error {
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return err
	}
	now := s.db.NowFunc()
	res := q.Model(&WebhookDelivery{}).Where("endpoint_id = ? AND event_uid = ?", endpointID, eventUID).
		Updates(map[string]any{"state": DeliveryPending, "attempts": 0, "next_attempt_at": now, "last_error": "",
			"lease_owner": "", "lease_until": nil, "updated_at": now})
	if res.Error != nil {
		return dbErr(res.Error, "redeliver")
	}
	if res.RowsAffected == 0 {
		return apperr.NotFound("webhook delivery")
	}
	return nil
}
