package audit

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/mcpauth/mcpauth/repository"
)

// RetentionStore prunes and partitions the audit log. *repository.Store
// implements it.
type RetentionStore interface {
	EnsureAuditPartitions(ctx context.Context, now time.Time, monthsAhead int) error
	PruneAudit(ctx context.Context, cutoff time.Time, maxRows int64) (repository.PruneResult, error)
}

var _ RetentionStore = (*repository.Store)(nil)

// Retention keeps the audit log bounded: events older than Keep go (whole
// monthly partitions on PostgreSQL), and on top of that the oldest beyond
// MaxRows (0: no row bound).
type Retention struct {
	store   RetentionStore
	log     *slog.Logger
	now     Clock
	Keep    time.Duration
	MaxRows int64
}

// partitionsAhead is how many months of partitions exist ahead of now.
const partitionsAhead = 2

// NewRetention returns the retention job; keep 0 keeps events for ever
// (only MaxRows bounds them).
func NewRetention(store RetentionStore, log *slog.Logger, now Clock, keep time.Duration, maxRows int64) (*Retention, error) {
	if store == nil || log == nil {
		return nil, errors.New("audit retention: store and log are required")
	}
	if now == nil {
		now = time.Now
	}
	return &Retention{store: store, log: log, now: now, Keep: keep, MaxRows: maxRows}, nil
}

// RunOnce creates the coming partitions and prunes.
func (r *Retention) RunOnce(ctx context.Context) error {
	now := r.now()
	if err := r.store.EnsureAuditPartitions(ctx, now, partitionsAhead); err != nil {
		return err
	}
	if r.Keep <= 0 && r.MaxRows <= 0 {
		return nil
	}
	cutoff := time.Time{}
	if r.Keep > 0 {
		cutoff = now.Add(-r.Keep)
	}
	res, err := r.store.PruneAudit(ctx, cutoff, r.MaxRows)
	if err != nil {
		return err
	}
	if len(res.DroppedPartitions) > 0 || res.DeletedRows > 0 || res.DeletedTokenReads > 0 {
		months := make([]string, len(res.DroppedPartitions))
		for i, m := range res.DroppedPartitions {
			months[i] = m.Format("2006-01")
		}
		r.log.Info("audit retention", "dropped_partitions", months, "deleted_rows", res.DeletedRows,
			"deleted_token_read_minutes", res.DeletedTokenReads)
	}
	return nil
}

// Run runs RunOnce now and every interval until ctx ends.
func (r *Retention) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := r.RunOnce(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("audit retention failed; retrying at the next run", "err", err.Error())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
