package repository

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"gorm.io/gorm"
)

// Audit retention. On PostgreSQL audit_events is partitioned by month of
// created_at (migration 0008): EnsureAuditPartitions creates the coming
// months' partitions ahead of time, and PruneAudit drops whole partitions
// older than the retention instead of deleting rows (no dead tuples, no
// vacuum debt, a bound on the table). Dropping takes a brief exclusive lock
// on the parent table: queries running then finish first, new ones wait for
// the drop (bounded by lock_timeout, after which the drop is retried at the
// next run). Rows in the default partition (a clock far off) are deleted
// row by row. On SQLite, PruneAudit deletes rows older than the retention
// and the oldest beyond a row count.

// partitionName matches the monthly partitions' names.
var partitionName = regexp.MustCompile(`^audit_events_p(\d{6})$`)

// EnsureAuditPartitions creates the monthly partitions from the month of
// now through monthsAhead months later, if missing (PostgreSQL; a no-op on
// SQLite).
func (s *Store) EnsureAuditPartitions(ctx context.Context, now time.Time, monthsAhead int) error {
	if s.db.Dialector.Name() != "postgres" {
		return nil
	}
	m := time.Date(now.UTC().Year(), now.UTC().Month(), 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i <= monthsAhead; i++ {
		from, to := m.AddDate(0, i, 0), m.AddDate(0, i+1, 0)
		name := "audit_events_p" + from.Format("200601")
		stmt := fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s PARTITION OF audit_events FOR VALUES FROM ('%s') TO ('%s')`,
			name, from.Format(time.RFC3339), to.Format(time.RFC3339))
		if err := s.db.WithContext(ctx).Exec(stmt).Error; err != nil {
			return dbErr(err, "create audit partition")
		}
	}
	return nil
}

// AuditPartitions lists the monthly partitions (PostgreSQL), oldest first,
// as their first day.
func (s *Store) AuditPartitions(ctx context.Context) ([]time.Time, error) {
	if s.db.Dialector.Name() != "postgres" {
		return nil, nil
	}
	var names []string
	err := s.db.WithContext(ctx).Raw(`SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'audit_events' AND p.relnamespace = c.relnamespace
		AND p.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) ORDER BY c.relname`).Scan(&names).Error
	if err != nil {
		return nil, dbErr(err, "list audit partitions")
	}
	var out []time.Time
	for _, n := range names {
		m := partitionName.FindStringSubmatch(n)
		if m == nil {
			continue
		}
		t, err := time.Parse("200601", m[1])
		if err != nil {
			continue
		}
		out = append(out, t)
	}
	return out, nil
}

// PruneResult says what PruneAudit removed.
type PruneResult struct {
	// DroppedPartitions are the months dropped whole (PostgreSQL).
	DroppedPartitions []time.Time
	// DeletedRows counts rows deleted one by one.
	DeletedRows int64
	// DeletedTokenReads counts token-read counts (minutes) deleted.
	DeletedTokenReads int64
}

// PruneAudit removes audit events created before cutoff: on PostgreSQL by
// dropping every monthly partition that ends at or before cutoff (and
// deleting older rows from the default partition), on SQLite by deleting
// rows, and then, when maxRows > 0, the oldest rows beyond maxRows. Webhook
// deliveries already delivered or dead before cutoff go too.
func (s *Store) PruneAudit(ctx context.Context, cutoff time.Time, maxRows int64) (PruneResult, error) {
	var res PruneResult
	cutoff = cutoff.UTC()
	if s.db.Dialector.Name() == "postgres" {
		parts, err := s.AuditPartitions(ctx)
		if err != nil {
			return res, err
		}
		for _, from := range parts {
			if from.AddDate(0, 1, 0).After(cutoff) {
				continue
			}
			name := "audit_events_p" + from.Format("200601")
			err := s.transaction(ctx, func(tx *gorm.DB) error {
				if err := tx.Exec(`SET LOCAL lock_timeout = '5s'`).Error; err != nil {
					return err
				}
				return tx.Exec(`DROP TABLE ` + name).Error
			})
			if err != nil {
				return res, dbErr(err, "drop audit partition")
			}
			res.DroppedPartitions = append(res.DroppedPartitions, from)
		}
		d := s.db.WithContext(ctx).Exec(`DELETE FROM audit_events_default WHERE created_at < ?`, cutoff)
		if d.Error != nil {
			return res, dbErr(d.Error, "prune audit events")
		}
		res.DeletedRows += d.RowsAffected
	} else {
		d := s.db.WithContext(ctx).Where("created_at < ?", cutoff).Delete(&AuditEvent{})
		if d.Error != nil {
			return res, dbErr(d.Error, "prune audit events")
		}
		res.DeletedRows += d.RowsAffected
	}
	if maxRows > 0 {
		var ids []int64
		if err := s.db.WithContext(ctx).Model(&AuditEvent{}).Order("id DESC").Offset(int(maxRows)).Limit(1).
			Pluck("id", &ids).Error; err != nil {
			return res, dbErr(err, "find the oldest audit events to keep")
		}
		if len(ids) > 0 {
			d := s.db.WithContext(ctx).Where("id <= ?", ids[0]).Delete(&AuditEvent{})
			if d.Error != nil {
				return res, dbErr(d.Error, "prune audit events beyond the row bound")
			}
			res.DeletedRows += d.RowsAffected
		}
	}
	if !cutoff.IsZero() {
		n, err := s.pruneTokenReads(ctx, cutoff)
		res.DeletedTokenReads = n
		if err != nil {
			return res, err
		}
	}
	err := s.db.WithContext(ctx).Where("state <> ? AND updated_at < ?", DeliveryPending, cutoff).Delete(&WebhookDelivery{}).Error
	return res, dbErr(err, "prune webhook deliveries")
}

// tokenReadsPruneStep is the span of minutes one DELETE of pruneTokenReads
// covers, so no statement holds its locks for a whole backlog.
const tokenReadsPruneStep = time.Hour

// pruneTokenReads deletes the token-read counts of minutes before cutoff,
// one hour of minutes per statement.
func (s *Store) pruneTokenReads(ctx context.Context, cutoff time.Time) (int64, error) {
	var total int64
	for {
		var oldest *int64
		if err := s.db.WithContext(ctx).Raw(`SELECT MIN(minute_start) FROM token_reads`).Scan(&oldest).Error; err != nil {
			return total, dbErr(err, "find the oldest token reads")
		}
		if oldest == nil || *oldest >= cutoff.Unix() {
			return total, nil
		}
		upTo := min(*oldest+int64(tokenReadsPruneStep/time.Second), cutoff.Unix())
		d := s.db.WithContext(ctx).Exec(`DELETE FROM token_reads WHERE minute_start < ?`, upTo)
		if d.Error != nil {
			return total, dbErr(d.Error, "prune token reads")
		}
		total += d.RowsAffected
	}
}
