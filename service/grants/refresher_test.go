package grants

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
)

// idleConfig refreshes grants not refreshed for an hour, one at a time (so
// the order they reach the server is the refresher's order).
var idleConfig = RefresherConfig{IdleAge: time.Hour, Concurrency: 1}

// seedIdle authorizes each tenant/provider pair a minute apart, with day-long
// access tokens, then lets two hours pass: every grant is idle, none is due.
func seedIdle(e *env, pairs ...[2]string) {
	e.tb.Helper()
	e.as.set(func(f *fakeAS) { f.lifetime = 24 * time.Hour })
	for _, p := range pairs {
		e.authorize(grantSpec{tenant: p[0], id: p[1]})
		e.clock.Advance(time.Minute)
	}
	e.clock.Advance(2 * time.Hour)
}

func TestRefresherPass(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig)
	seedIdle(e, [2]string{"acme", "a"}, [2]string{"acme", "b"}, [2]string{"globex", "c"})
	e.authorize(grantSpec{tenant: "acme", id: "recent"})                      // refreshed just now: not idle
	e.authorize(grantSpec{tenant: "acme", id: "no-refresh", noRefresh: true}) // nothing to keep alive
	old := map[string]*repository.Credential{}
	for _, id := range []string{"a", "b"} {
		old[id] = e.cred("acme", id)
	}
	r := NewRefresherWith(e.store, e.svc, e.log, RefresherConfig{IdleAge: time.Hour, Concurrency: 2})

	if n := r.Pass(e.ctx); n != 3 {
		t.Fatalf("first pass refreshed %d, want 3", n)
	}
	got := e.as.refreshedSubjects()
	slices.Sort(got)
	if want := []string{"acme/a", "acme/b", "globex/c"}; !slices.Equal(got, want) {
		t.Errorf("refreshed %q, want %q", got, want)
	}
	for id, before := range old {
		c := e.cred("acme", id)
		if c.LastRefreshAt == nil || !c.LastRefreshAt.Equal(e.clock.Now()) || c.Generation != before.Generation+1 || c.Status != domain.StatusAuthorized {
			t.Errorf("acme/%s after the pass: %+v", id, c)
		}
	}
	if n := r.Pass(e.ctx); n != 0 {
		t.Errorf("second pass refreshed %d, want 0: nothing is idle any more", n)
	}
	e.wantRefreshes(3)
}

func TestRefresherFairness(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		perTenant int
		batch     int
		want      []string
	}{
		{"tenants take turns", 0, 0, []string{"acme/a1", "globex/b1", "initech/c1", "acme/a2", "globex/b2", "acme/a3", "acme/a4"}},
		{"one tenant's share of a pass is bounded", 2, 0, []string{"acme/a1", "globex/b1", "initech/c1", "acme/a2", "globex/b2"}},
		{"the batch bounds the pass, oldest first", 2, 3, []string{"acme/a1", "acme/a2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testConfig)
			seedIdle(e, [2]string{"acme", "a1"}, [2]string{"acme", "a2"}, [2]string{"acme", "a3"}, [2]string{"acme", "a4"},
				[2]string{"globex", "b1"}, [2]string{"globex", "b2"}, [2]string{"initech", "c1"})
			cfg := idleConfig
			cfg.PerTenant, cfg.Batch = tt.perTenant, tt.batch
			r := NewRefresherWith(e.store, e.svc, e.log, cfg)
			if n := r.Pass(e.ctx); n != len(tt.want) {
				t.Errorf("pass refreshed %d, want %d", n, len(tt.want))
			}
			if got := e.as.refreshedSubjects(); !slices.Equal(got, tt.want) {
				t.Errorf("refresh order %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFairOrder(t *testing.T) {
	t.Parallel()
	row := func(tenant, id string) repository.Credential {
		return repository.Credential{TenantID: tenant, ProviderID: id}
	}
	names := func(rows []repository.Credential) []string {
		var out []string
		for _, c := range rows {
			out = append(out, c.TenantID+"/"+c.ProviderID)
		}
		return out
	}
	tests := []struct {
		name      string
		rows      []repository.Credential
		perTenant int
		want      []string
	}{
		{"nothing", nil, 5, nil},
		{"one tenant, cut to its share", []repository.Credential{row("a", "1"), row("a", "2"), row("a", "3")}, 2, []string{"a/1", "a/2"}},
		{"first-seen tenant first in every round",
			[]repository.Credential{row("b", "1"), row("a", "1"), row("b", "2"), row("a", "2"), row("b", "3")}, 5,
			[]string{"b/1", "a/1", "b/2", "a/2", "b/3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := names(fairOrder(tt.rows, tt.perTenant)); !slices.Equal(got, tt.want) {
				t.Errorf("fairOrder = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRefresherFailures(t *testing.T) {
	t.Parallel()
	const maxFailures = 3
	tests := []struct {
		name         string
		prepare      func(e *env)
		passes       int
		wantCalls    int
		wantFailures int
		wantStatus   domain.AuthStatus
		wantWhy      string
	}{
		{name: "server unavailable: dead after MaxFailures passes", passes: maxFailures + 1, wantCalls: maxFailures,
			prepare:      func(e *env) { e.as.failAlways(temporary(0)) },
			wantFailures: maxFailures, wantStatus: domain.StatusReauthRequired, wantWhy: domain.ReasonRefreshExhausted},
		{name: "one failure short of the limit", passes: maxFailures - 1, wantCalls: maxFailures - 1,
			prepare: func(e *env) {
				e.as.failAlways(&oauthclient.TemporaryError{Op: "refresh", Status: 429, RetryAfter: time.Millisecond})
			},
			wantFailures: maxFailures - 1, wantStatus: domain.StatusAuthorized},
		{name: "success resets the count", passes: 3, wantCalls: 3,
			prepare:    func(e *env) { e.as.fail(temporary(0), temporary(0)) },
			wantStatus: domain.StatusAuthorized},
		{name: "errors other than temporary ones are not counted", passes: maxFailures + 1, wantCalls: maxFailures + 1,
			prepare: func(e *env) {
				e.as.failAlways(&oauthclient.OAuthError{Op: "refresh", Status: 400, Code: "invalid_request"})
			},
			wantStatus: domain.StatusAuthorized},
		{name: "rejected refresh token: dead at once, not counted", passes: 2, wantCalls: 1,
			prepare:    func(e *env) { e.as.forgetGrant(tnt + "/" + pid) },
			wantStatus: domain.StatusReauthRequired, wantWhy: domain.ReasonInvalidGrant},
		{name: "mcpauth's own database lease unavailable: not counted", passes: maxFailures + 1, wantCalls: 0,
			prepare: func(e *env) {
				e.store.FailOn("AcquireRefreshLease", apperr.Unavailable(errInjected, "database down"))
			},
			wantStatus: domain.StatusAuthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig
			cfg.MaxAttempts = 1
			e := newEnv(t, cfg)
			seedIdle(e, [2]string{tnt, pid})
			tt.prepare(e)
			r := NewRefresherWith(e.store, e.svc, e.log, RefresherConfig{IdleAge: time.Hour, MaxFailures: maxFailures})
			for range tt.passes {
				r.Pass(e.ctx)
				// Past the failure backoff (whose skipped passes are
				// not failures of the server), within the token's life.
				e.clock.Advance(e.svc.cfg.BackoffMax)
			}
			e.wantRefreshes(tt.wantCalls)
			e.wantGrant(tnt, pid, tt.wantStatus, tt.wantWhy)
			if got := e.cred(tnt, pid).RefreshFailures; got != tt.wantFailures {
				t.Errorf("refresh failures = %d, want %d", got, tt.wantFailures)
			}
			var reauth []string
			if tt.wantWhy != "" {
				reauth = []string{tt.wantWhy}
			}
			e.wantEvents(domain.EventReauthRequired, pid, domain.OutcomeFailure, reauth...)
		})
	}
}

func TestRefresherSkipsGrantsChangedAfterListing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		change     func(e *env)
		wantStatus domain.AuthStatus
	}{
		{"authorization restarted", func(e *env) {
			_, _ = e.store.SetGrantStatus(e.ctx, domain.TenantGrant(tnt, pid), []domain.AuthStatus{domain.StatusAuthorized}, domain.StatusPending, "", 1)
		}, domain.StatusPending},
		{"marked dead", func(e *env) {
			_ = e.svc.MarkReauth(e.ctx, domain.TenantGrant(tnt, pid), domain.ReasonMCPServerRejectedToken, e.cred(tnt, pid).Generation)
		}, domain.StatusReauthRequired},
		{"re-authorized without a refresh token", func(e *env) {
			row, _ := e.store.GetProvider(e.ctx, tnt, pid)
			h := e.held(tnt, pid)
			if err := e.svc.StoreNew(e.ctx, row, "", h.Grant, e.as.authorize(tnt+"/"+pid, h.Grant.ClientID, false)); err != nil {
				e.tb.Fatal(err)
			}
		}, domain.StatusAuthorized},
		{"revoked", func(e *env) { _, _ = e.svc.Revoke(e.ctx, domain.TenantGrant(tnt, pid)) }, domain.StatusUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testConfig)
			seedIdle(e, [2]string{tnt, pid})
			hs := &hookStore{Store: e.store, afterList: func() { tt.change(e) }}
			r := NewRefresherWith(hs, e.svc, e.log, idleConfig)
			if n := r.Pass(e.ctx); n != 0 {
				t.Errorf("pass refreshed %d, want 0", n)
			}
			e.wantRefreshes(0)
			if n := e.store.Calls("RecordRefreshFailure"); n != 0 {
				t.Errorf("%d refresh failures recorded, want none", n)
			}
			var got domain.AuthStatus
			if c := e.store.Credential(tnt, pid); c != nil {
				got = c.Status
			}
			if got != tt.wantStatus {
				t.Errorf("grant status = %v, want %v", got, tt.wantStatus)
			}
		})
	}
}

func TestRefresherListingFails(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig)
	seedIdle(e, [2]string{tnt, pid})
	e.store.FailOn("CredentialsIdleSince", errInjected)
	if n := NewRefresherWith(e.store, e.svc, e.log, idleConfig).Pass(e.ctx); n != 0 {
		t.Errorf("pass refreshed %d, want 0", n)
	}
	e.wantRefreshes(0)
}

// logSignal reports each log message on a channel.
type logSignal struct {
	slog.Handler
	msgs chan string
}

func (h logSignal) Handle(_ context.Context, r slog.Record) error {
	select {
	case h.msgs <- r.Message:
	default:
	}
	return nil
}

func TestRefresherRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig)
	seedIdle(e, [2]string{tnt, pid})
	logs := logSignal{Handler: slog.NewTextHandler(io.Discard, nil), msgs: make(chan string, 16)}
	r := NewRefresherWith(e.store, e.svc, slog.New(logs), RefresherConfig{Interval: time.Millisecond, IdleAge: time.Hour})
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	if msg := <-logs.msgs; msg != "background refresh pass" {
		t.Errorf("logged %q", msg)
	}
	cancel()
	<-done
	e.wantRefreshes(1)
	if c := e.cred(tnt, pid); c.LastRefreshAt == nil || !c.LastRefreshAt.Equal(e.clock.Now()) {
		t.Errorf("grant not refreshed by Run: last refresh %v", c.LastRefreshAt)
	}
}

func TestNewRefresherDefaults(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig)
	want := RefresherConfig{Interval: time.Minute, IdleAge: 12 * time.Hour, Batch: 500, Concurrency: 4, PerTenant: 50, MaxFailures: 20, PendingTTL: 11 * time.Minute}
	if got := NewRefresher(e.store, e.svc, e.log, 0).cfg; got != want {
		t.Errorf("defaults = %+v, want %+v", got, want)
	}
	want.Interval = 5 * time.Second
	if got := NewRefresher(e.store, e.svc, e.log, 5*time.Second).cfg; got != want {
		t.Errorf("with interval = %+v, want %+v", got, want)
	}
}

// TestRefresherExpiresAbandonedFlows: a grant left PENDING (its flow lost
// with Redis, or abandoned) goes back to UNAUTHORIZED after PendingTTL;
// a recent PENDING and a held grant are left alone.
func TestRefresherExpiresAbandonedFlows(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig)
	e.provider(tnt, "old", domain.RegPreRegistered)
	e.provider(tnt, "recent", domain.RegPreRegistered)
	e.authorize(grantSpec{})
	pending := func(id string) {
		if _, err := e.store.SetGrantStatus(e.ctx, domain.TenantGrant(tnt, id), []domain.AuthStatus{domain.StatusUnauthorized}, domain.StatusPending, "", e.keys.PrimaryID()); err != nil {
			t.Fatal(err)
		}
	}
	pending("old")
	e.clock.Advance(20 * time.Minute)
	pending("recent")
	r := NewRefresherWith(e.store, e.svc, e.log, RefresherConfig{IdleAge: 24 * time.Hour, PendingTTL: 15 * time.Minute})
	r.Pass(e.ctx)
	e.wantGrant(tnt, "old", domain.StatusUnauthorized, domain.ReasonFlowExpiredOrUsed)
	e.wantGrant(tnt, "recent", domain.StatusPending, "")
	e.wantGrant(tnt, pid, domain.StatusAuthorized, "")
}
