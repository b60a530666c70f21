package grants

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/secret"
)

// result is what one concurrent call returned.
type result struct {
	tok *Token
	err error
}

// launch starts n calls of call, each once the previous goroutines have
// been started, and returns their results once all are in.
func launch(n int, call func() (*Token, error)) func() []result {
	out := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := call()
			out[i] = result{tok, err}
		}()
	}
	return func() []result { wg.Wait(); return out }
}

// wantAllSame checks that every call succeeded with the same token, other
// than old, and returns it.
func wantAllSame(tb testing.TB, results []result, old secret.Secret) secret.Secret {
	tb.Helper()
	var first secret.Secret
	for i, r := range results {
		if r.err != nil {
			tb.Fatalf("call %d: %v", i, r.err)
		}
		if i == 0 {
			first = r.tok.AccessToken
		}
		if r.tok.AccessToken != first || r.tok.AccessToken == old {
			tb.Fatalf("call %d got %q, call 0 got %q (old %q)", i, r.tok.AccessToken.Reveal(), first.Reveal(), old.Reveal())
		}
	}
	return first
}

func TestConcurrentCallsShareOneRefresh(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		call func(e *env, s *seeded) (*Token, error)
	}{
		{"Get of a due token", func(e *env, _ *seeded) (*Token, error) { return e.svc.Get(e.ctx, domain.TenantGrant(tnt, pid)) }},
		{"ForceRefresh of the same rejected token", func(e *env, s *seeded) (*Token, error) {
			return e.svc.ForceRefresh(e.ctx, domain.TenantGrant(tnt, pid), s.tokens.AccessToken)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testConfig)
			s := e.dueGrant(grantSpec{})
			release := e.as.block()
			defer release()

			wait := launch(100, func() (*Token, error) { return tt.call(e, s) })
			<-e.as.entered // one refresh is at the server, held there
			release()
			tok := wantAllSame(t, wait(), s.tokens.AccessToken)
			e.wantRefreshes(1)
			if h := e.held(tnt, pid); h.Tokens.AccessToken != tok {
				t.Error("served token is not the stored one")
			}
			e.wantEvents(domain.EventTokenRefreshed, pid, domain.OutcomeSuccess, "")
		})
	}
}

func TestReplicaWaitsForTheLockHolder(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		holderErr error // the server's answer to the lock holder
	}{
		{name: "holder's refreshed token is served to the waiter"},
		{name: "holder found the grant dead: the waiter does not ask again", holderErr: fmt.Errorf("refresh: %w", oauthclient.ErrInvalidGrant)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testConfig)
			s := e.authorize(grantSpec{})
			locks := newWaitSignalLocker(e.locks)
			a, b := e.service(testConfig, e.store, locks), e.service(testConfig, e.store, locks)
			e.clock.Advance(dueButValid)
			if tt.holderErr != nil {
				e.as.fail(tt.holderErr)
			}
			release := e.as.block()
			defer release()

			waitA := launch(1, func() (*Token, error) { return a.Get(e.ctx, domain.TenantGrant(tnt, pid)) })
			<-e.as.entered // replica a holds the lock and is at the server
			waitB := launch(1, func() (*Token, error) { return b.Get(e.ctx, domain.TenantGrant(tnt, pid)) })
			if key := <-locks.waiting; key != lockKey(tnt, pid) {
				t.Fatalf("replica b waits for %q", key)
			}
			release()
			results := append(waitA(), waitB()...)
			e.wantRefreshes(1)
			if tt.holderErr == nil {
				wantAllSame(t, results, s.tokens.AccessToken)
				return
			}
			for _, r := range results {
				wantErr(t, r.err, apperr.KindFailedPrecondition, domain.ReasonReauthRequired)
			}
			e.wantGrant(tnt, pid, domain.StatusReauthRequired, domain.ReasonInvalidGrant)
		})
	}
}

func TestLockHolderReleasesWithoutResult(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig)
	s := e.authorize(grantSpec{})
	locks := newWaitSignalLocker(e.locks)
	svc := e.service(testConfig, e.store, locks)
	e.clock.Advance(dueButValid)
	// Another replica holds the lock and gives up without refreshing.
	lease, err := e.locks.Lock(e.ctx, lockKey(tnt, pid), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	wait := launch(1, func() (*Token, error) { return svc.Get(e.ctx, domain.TenantGrant(tnt, pid)) })
	<-locks.waiting
	e.wantRefreshes(0)
	if err := lease.Release(e.ctx); err != nil {
		t.Fatal(err)
	}
	wantAllSame(t, wait(), s.tokens.AccessToken)
	e.wantRefreshes(1)
}

// TestLockStoreUnavailable: Redis is only the queue in front of the
// database lease, so losing it neither withholds a token nor stops a
// refresh.
func TestLockStoreUnavailable(t *testing.T) {
	t.Parallel()
	t.Run("tokens are served, due ones refreshed under the database lease", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, testConfig)
		s := e.authorize(grantSpec{})
		_ = e.locks.Close()
		if tok := e.get(e.svc, tnt, pid); tok.AccessToken != s.tokens.AccessToken {
			t.Error("fresh token not served")
		}
		e.clock.Advance(dueButValid)
		tok, err := e.svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
		if err != nil {
			t.Fatal(err)
		}
		if tok.AccessToken == s.tokens.AccessToken {
			t.Error("due token not refreshed")
		}
		e.wantRefreshes(1)
		e.wantGrant(tnt, pid, domain.StatusAuthorized, "")
	})
	t.Run("lock store lost while waiting", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, testConfig)
		e.authorize(grantSpec{})
		locks := newWaitSignalLocker(e.locks)
		svc := e.service(testConfig, e.store, locks)
		e.clock.Advance(time.Hour)
		if _, err := e.locks.Lock(e.ctx, lockKey(tnt, pid), time.Minute); err != nil {
			t.Fatal(err)
		}
		wait := launch(1, func() (*Token, error) { return svc.Get(e.ctx, domain.TenantGrant(tnt, pid)) })
		<-locks.waiting
		_ = e.locks.Close()
		if err := wait()[0].err; err != nil {
			t.Fatal(err)
		}
		e.wantRefreshes(1)
	})
	t.Run("database lease held elsewhere: nobody else spends the refresh token", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, testConfig)
		s := e.authorize(grantSpec{})
		_ = e.locks.Close() // as after a Redis restart: the queue is gone
		cred := e.cred(tnt, pid)
		if _, err := e.store.AcquireRefreshLease(e.ctx, domain.TenantGrant(tnt, pid), cred.Generation, "other-replica", time.Hour); err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(dueButValid)
		tok, err := e.svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
		if err != nil || tok.AccessToken != s.tokens.AccessToken {
			t.Fatalf("valid token not served while another replica holds the lease: %v", err)
		}
		e.clock.Advance(time.Minute) // expired
		ctx, cancel := context.WithTimeout(e.ctx, 300*time.Millisecond)
		defer cancel()
		if _, err := e.svc.Get(ctx, domain.TenantGrant(tnt, pid)); err == nil {
			t.Fatal("an expired token was served or refreshed without the lease")
		}
		e.wantRefreshes(0)
	})
	t.Run("database down: a valid token is served, nothing refreshed", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, testConfig)
		s := e.authorize(grantSpec{})
		e.clock.Advance(dueButValid)
		e.store.FailOn("AcquireRefreshLease", apperr.Unavailable(errInjected, "database down"))
		tok, err := e.svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
		if err != nil || tok.AccessToken != s.tokens.AccessToken {
			t.Fatalf("valid token not served: %v", err)
		}
		e.wantRefreshes(0)
	})
}

func TestCallerGivingUpDoesNotAbandonTheRefresh(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig)
	s := e.dueGrant(grantSpec{})
	release := e.as.block()
	defer release()

	ctx, cancel := context.WithCancel(e.ctx)
	wait := launch(1, func() (*Token, error) { return e.svc.Get(ctx, domain.TenantGrant(tnt, pid)) })
	<-e.as.entered
	cancel()
	if err := wait()[0].err; !errors.Is(err, context.Canceled) {
		t.Fatalf("Get after the caller gave up = %v, want context.Canceled", err)
	}
	release()
	// The refresh went on: its rotated tokens are stored and served, and
	// the server is not asked again (whether this call joins the flight or
	// reads the stored result).
	tok := e.get(e.svc, tnt, pid)
	if tok.AccessToken == s.tokens.AccessToken {
		t.Error("the abandoned refresh's result was lost")
	}
	e.wantRefreshes(1)
	if !e.as.isLive(e.held(tnt, pid).Tokens.RefreshToken.Reveal()) {
		t.Error("stored refresh token is not the rotated one")
	}
}

// TestFailedRefreshBacksOffEveryReplica: after a refresh failed at the
// server, neither this replica nor another asks it again until the backoff
// ends; both serve the valid token meanwhile, and a caller whose token
// expired is answered at once instead of waiting for the server.
func TestFailedRefreshBacksOffEveryReplica(t *testing.T) {
	t.Parallel()
	cfg := testConfig
	cfg.MaxAttempts = 1
	cfg.BackoffMax = 5 * time.Minute
	e := newEnv(t, cfg)
	s := e.authorize(grantSpec{})
	other := e.service(cfg, e.store, e.locks)
	e.as.failAlways(temporary(2 * time.Minute)) // a backoff of 1.5 to 2 minutes
	e.clock.Advance(dueButValid)
	for i, svc := range []*Service{e.svc, other, e.svc, other} {
		tok, err := svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
		if err != nil || tok.AccessToken != s.tokens.AccessToken {
			t.Fatalf("read %d: %v; want the valid token", i, err)
		}
	}
	e.wantRefreshes(1)
	e.clock.Advance(time.Minute) // expired, backoff still running on the lease
	if _, err := other.Get(e.ctx, domain.TenantGrant(tnt, pid)); apperr.KindOf(err) != apperr.KindUnavailable {
		t.Fatalf("expired token during the backoff: %v, want UNAVAILABLE", err)
	}
	e.wantRefreshes(1)
	e.clock.Advance(e.svc.cfg.BackoffMax)
	e.as.failAlways(nil)
	tok, err := other.Get(e.ctx, domain.TenantGrant(tnt, pid))
	if err != nil || tok.AccessToken == s.tokens.AccessToken {
		t.Fatalf("after the backoff: %v; want a refreshed token", err)
	}
	e.wantRefreshes(2)
	e.wantGrant(tnt, pid, domain.StatusAuthorized, "")
}
