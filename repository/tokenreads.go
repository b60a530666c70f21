package repository

import (
	"context"
	"strings"
	"time"

	"gorm.io/gorm"
)

// TokenReads is the count of access tokens one caller read for one provider
// of a tenant during one minute (the token-read audit, aggregated).
type TokenReads struct {
	TenantID   string
	ProviderID string
	Actor      string
	// Minute is the start of the minute (UTC), in Unix seconds.
	Minute int64
	// Reads is how many tokens were handed out.
	Reads int64
	// FirstMs and LastMs are the first and last read's times in Unix
	// milliseconds.
	FirstMs, LastMs int64
}

// TokenReadsCursor is the position of a listing: the last row of the
// previous page (rows are ordered by minute, provider and actor, all
// descending). The zero cursor is the first page.
type TokenReadsCursor struct {
	Minute     int64
	ProviderID string
	Actor      string
}

// tokenReadsPerStatement bounds the rows of one INSERT (7 parameters each,
// well under PostgreSQL's 65,535 and SQLite's 32,766).
const tokenReadsPerStatement = 500

// tokenReadBatchKeep is how long applied batch ids are remembered; a flush
// is retried within seconds, so a day is ample.
const tokenReadBatchKeep = 24 * time.Hour

// AddTokenReads adds rows to the stored counts in one transaction, once per
// batch id: the id is recorded in the same transaction, so a batch that is
// retried after its commit was lost in transit (the database applied it,
// the caller saw an error) is skipped instead of counted twice. Rows must
// not repeat a (tenant, minute, provider, actor) key within one batch.
func (s *Store) AddTokenReads(ctx context.Context, batch string, rows []TokenReads) error {
	if len(rows) == 0 {
		return nil
	}
	for _, r := range rows {
		if err := checkTenant(r.TenantID); err != nil {
			return err
		}
	}
	merge := "LEAST(t.first_read_ms, excluded.first_read_ms)"
	mergeLast := "GREATEST(t.last_read_ms, excluded.last_read_ms)"
	if s.db.Dialector.Name() != "postgres" {
		merge, mergeLast = "min(t.first_read_ms, excluded.first_read_ms)", "max(t.last_read_ms, excluded.last_read_ms)"
	}
	now := time.Now()
	err := s.transaction(ctx, func(tx *gorm.DB) error {
		res := tx.Exec(`INSERT INTO token_read_batches (id, applied_ms) VALUES (?, ?) ON CONFLICT (id) DO NOTHING`, batch, now.UnixMilli())
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			return nil // applied before
		}
		for start := 0; start < len(rows); start += tokenReadsPerStatement {
			chunk := rows[start:min(start+tokenReadsPerStatement, len(rows))]
			var sb strings.Builder
			sb.WriteString(`INSERT INTO token_reads AS t (tenant_id, minute_start, provider_id, actor, reads, first_read_ms, last_read_ms) VALUES `)
			args := make([]any, 0, 7*len(chunk))
			for i, r := range chunk {
				if i > 0 {
					sb.WriteString(", ")
				}
				sb.WriteString("(?, ?, ?, ?, ?, ?, ?)")
				args = append(args, r.TenantID, r.Minute, r.ProviderID, r.Actor, r.Reads, r.FirstMs, r.LastMs)
			}
			sb.WriteString(` ON CONFLICT (tenant_id, minute_start, provider_id, actor) DO UPDATE SET reads = t.reads + excluded.reads, first_read_ms = ` +
				merge + `, last_read_ms = ` + mergeLast)
			if err := tx.Exec(sb.String(), args...).Error; err != nil {
				return err
			}
		}
		return tx.Exec(`DELETE FROM token_read_batches WHERE applied_ms < ?`, now.Add(-tokenReadBatchKeep).UnixMilli()).Error
	})
	return dbErr(err, "add token reads")
}

// TokenReadsFilter narrows ListTokenReads; empty fields match everything.
type TokenReadsFilter struct {
	ProviderID string
}

// ListTokenReads returns up to limit of the tenant's token-read counts
// matching f after cursor, newest minute first (then provider and actor,
// descending). limit is clamped to [1, 1000] (0 means 50).
func (s *Store) ListTokenReads(ctx context.Context, tenant string, f TokenReadsFilter, after TokenReadsCursor, limit int) ([]TokenReads, error) {
	q, err := scoped(ctx, s.db, tenant)
	if err != nil {
		return nil, err
	}
	q = q.Table("token_reads")
	if f.ProviderID != "" {
		q = q.Where("provider_id = ?", f.ProviderID)
	}
	if after != (TokenReadsCursor{}) {
		q = q.Where("(minute_start, provider_id, actor) < (?, ?, ?)", after.Minute, after.ProviderID, after.Actor)
	}
	var rows []struct {
		TenantID    string
		MinuteStart int64
		ProviderID  string
		Actor       string
		Reads       int64
		FirstReadMs int64
		LastReadMs  int64
	}
	if err := q.Order("minute_start DESC, provider_id DESC, actor DESC").Limit(clampLimit(limit)).Find(&rows).Error; err != nil {
		return nil, dbErr(err, "list token reads")
	}
	out := make([]TokenReads, len(rows))
	for i, r := range rows {
		out[i] = TokenReads{TenantID: r.TenantID, ProviderID: r.ProviderID, Actor: r.Actor, Minute: r.MinuteStart, Reads: r.Reads,
			FirstMs: r.FirstReadMs, LastMs: r.LastReadMs}
	}
	return out, nil
}
