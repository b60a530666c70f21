package grants

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
)

// IdleStore finds authorizations nobody used for a while, across tenants.
// *repository.Store implements it.
type IdleStore interface {
	CredentialsIdleSince(ctx context.Context, before time.Time, limit int) ([]repository.Credential, error)
	RecordRefreshFailure(ctx context.Context, g domain.GrantRef, generation int64) (int, error)
	ExpirePendingGrants(ctx context.Context, before time.Time, reason string) (int64, error)
}

var _ IdleStore = (*repository.Store)(nil)

// RefresherConfig tunes the background refresher.
type RefresherConfig struct {
	// Interval between passes.
	Interval time.Duration
	// IdleAge is how long since the last refresh an authorization counts
	// as idle and is refreshed in the background, keeping refresh tokens
	// that expire when unused alive.
	IdleAge time.Duration
	// Batch is the most authorizations one pass looks at.
	Batch int
	// Concurrency bounds parallel refreshes.
	Concurrency int
	// PerTenant bounds one tenant's share of a pass, for fairness.
	PerTenant int
	// MaxFailures marks an authorization refresh_exhausted (REAUTH_REQUIRED)
	// after this many consecutive failed background refreshes instead of
	// retrying forever.
	MaxFailures int
	// PendingTTL moves a grant PENDING for longer back to UNAUTHORIZED
	// (reason FLOW_EXPIRED_OR_USED): its flow expired, was abandoned, or
	// was lost with Redis, and no callback will ever end it. Set it above
	// the flow TTL.
	PendingTTL time.Duration
}

// Refresher keeps idle authorizations alive in the background.
type Refresher struct {
	store  IdleStore
	tokens *Service
	log    *slog.Logger
	cfg    RefresherConfig
}

// NewRefresher returns a background refresher with production defaults
// around interval.
func NewRefresher(store IdleStore, tokens *Service, log *slog.Logger, interval time.Duration) *Refresher {
	return NewRefresherWith(store, tokens, log, RefresherConfig{Interval: interval})
}

// NewRefresherWith returns a refresher with explicit settings (zero values
// take the defaults).
func NewRefresherWith(store IdleStore, tokens *Service, log *slog.Logger, cfg RefresherConfig) *Refresher {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Minute
	}
	if cfg.IdleAge <= 0 {
		cfg.IdleAge = 12 * time.Hour
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 500
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	if cfg.PerTenant <= 0 {
		cfg.PerTenant = 50
	}
	if cfg.MaxFailures <= 0 {
		cfg.MaxFailures = 20
	}
	if cfg.PendingTTL <= 0 {
		cfg.PendingTTL = 11 * time.Minute // the longest flow TTL, and a minute
	}
	return &Refresher{store: store, tokens: tokens, log: log, cfg: cfg}
}

// Run refreshes idle authorizations every interval until ctx ends.
func (r *Refresher) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n := r.Pass(ctx)
			if n > 0 {
				r.log.Info("background refresh pass", "refreshed", n)
			}
		}
	}
}

// Pass runs one round and returns how many authorizations it refreshed.
// Tenants take turns (round-robin, at most PerTenant each), so one tenant
// with many providers cannot starve the others.
func (r *Refresher) Pass(ctx context.Context) int {
	if n, err := r.store.ExpirePendingGrants(ctx, r.tokens.now().Add(-r.cfg.PendingTTL), domain.ReasonFlowExpiredOrUsed); err != nil {
		r.log.WarnContext(ctx, "background refresh: expiring abandoned authorizations failed", "err", err.Error())
	} else if n > 0 {
		r.log.InfoContext(ctx, "abandoned authorizations expired: PENDING back to UNAUTHORIZED", "grants", n)
	}
	rows, err := r.store.CredentialsIdleSince(ctx, r.tokens.now().Add(-r.cfg.IdleAge), r.cfg.Batch)
	if err != nil {
		r.log.WarnContext(ctx, "background refresh: listing idle authorizations failed", "err", err.Error())
		return 0
	}
	queue := fairOrder(rows, r.cfg.PerTenant)
	sem := make(chan struct{}, r.cfg.Concurrency)
	var (
		wg sync.WaitGroup
		mu sync.Mutex
		ok int
	)
	for i := range queue {
		c := queue[i]
		select {
		case <-ctx.Done():
			wg.Wait()
			return ok
		case sem <- struct{}{}:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if r.refreshOne(ctx, c) {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return ok
}

func (r *Refresher) refreshOne(ctx context.Context, c repository.Credential) bool {
	err := r.tokens.refreshIdle(ctx, c.Ref())
	if err == nil {
		return true
	}
	if e, ok := apperr.As(err); ok {
		switch e.Reason {
		case domain.ReasonReauthRequired, domain.ReasonNotAuthorized, domain.ReasonTokenExpired:
			return false
		}
	}
	// Only the authorization server's failures count towards giving up:
	// an outage of mcpauth's own Redis or database says nothing about the
	// grant and must never wipe it.
	var temp *oauthclient.TemporaryError
	if !errors.As(err, &temp) {
		return false
	}
	n, ferr := r.store.RecordRefreshFailure(ctx, c.Ref(), c.Generation)
	if ferr == nil && n >= r.cfg.MaxFailures {
		_ = r.tokens.MarkReauth(ctx, c.Ref(), domain.ReasonRefreshExhausted, c.Generation)
	}
	return false
}

// fairOrder interleaves rows by tenant, at most perTenant each.
func fairOrder(rows []repository.Credential, perTenant int) []repository.Credential {
	byTenant := map[string][]repository.Credential{}
	var tenants []string
	for _, c := range rows {
		if _, ok := byTenant[c.TenantID]; !ok {
			tenants = append(tenants, c.TenantID)
		}
		if len(byTenant[c.TenantID]) < perTenant {
			byTenant[c.TenantID] = append(byTenant[c.TenantID], c)
		}
	}
	var out []repository.Credential
	for i := 0; ; i++ {
		added := false
		for _, t := range tenants {
			if i < len(byTenant[t]) {
				out = append(out, byTenant[t][i])
				added = true
			}
		}
		if !added {
			return out
		}
	}
}
