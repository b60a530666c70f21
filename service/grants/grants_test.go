package grants

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/servicetest"
)

// counter reads a counter's value.
func counter(tb testing.TB, c prometheus.Metric) float64 {
	tb.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		tb.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestNew(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig)
	full := func() Deps {
		return Deps{Store: e.store, Cipher: e.keys, Proto: e.as, Locks: e.locks, Audit: e.auditor, Reads: e.reads, Log: e.log, Metrics: e.metrics}
	}
	missing := []struct {
		name string
		drop func(d *Deps)
	}{
		{"store", func(d *Deps) { d.Store = nil }},
		{"cipher", func(d *Deps) { d.Cipher = nil }},
		{"proto", func(d *Deps) { d.Proto = nil }},
		{"locks", func(d *Deps) { d.Locks = nil }},
		{"audit", func(d *Deps) { d.Audit = nil }},
		{"reads", func(d *Deps) { d.Reads = nil }},
		{"log", func(d *Deps) { d.Log = nil }},
		{"metrics", func(d *Deps) { d.Metrics = nil }},
	}
	for _, tt := range missing {
		t.Run("without "+tt.name, func(t *testing.T) {
			t.Parallel()
			d := full()
			tt.drop(&d)
			if s, err := New(d); err == nil || s != nil {
				t.Fatalf("New without %s = %v, %v; want an error", tt.name, s, err)
			}
		})
	}
	t.Run("defaults", func(t *testing.T) {
		t.Parallel()
		s, err := New(full())
		if err != nil {
			t.Fatal(err)
		}
		want := Config{MarginMax: time.Minute, LockTTL: 15 * time.Second, MaxAttempts: 3, MaxRetryAfter: 5 * time.Second,
			StaleWait: 500 * time.Millisecond, TakeoverSettle: 2 * time.Second, BackoffMax: 30 * time.Second, DPoPRetryAfter: 5 * time.Minute}
		if s.cfg != want {
			t.Errorf("config = %+v, want %+v", s.cfg, want)
		}
		if s.now == nil || time.Since(s.now()) > time.Minute {
			t.Error("Now does not default to the real clock")
		}
	})
	t.Run("explicit settings kept", func(t *testing.T) {
		t.Parallel()
		d := full()
		d.Config = Config{MarginMax: 2 * time.Minute, LockTTL: time.Second, MaxAttempts: 7, MaxRetryAfter: time.Millisecond, CacheTTL: time.Second,
			StaleWait: time.Second, TakeoverSettle: time.Millisecond, BackoffMax: time.Minute, DPoPRetryAfter: time.Hour}
		s, err := New(d)
		if err != nil {
			t.Fatal(err)
		}
		if s.cfg != d.Config {
			t.Errorf("config = %+v, want %+v", s.cfg, d.Config)
		}
	})
}

func TestGetServesStoredToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig)
	s := e.authorize(grantSpec{scopes: []string{"repo", "read:org"}})
	tok := e.get(e.svc, tnt, pid)
	c := e.cred(tnt, pid)
	if tok.AccessToken != s.tokens.AccessToken {
		t.Errorf("access token = %q, want the stored %q", tok.AccessToken.Reveal(), s.tokens.AccessToken.Reveal())
	}
	if tok.TokenType != "Bearer" || !slices.Equal(tok.Scopes, []string{"repo", "read:org"}) || tok.Issuer != issuer {
		t.Errorf("token = type %q scopes %q issuer %q", tok.TokenType, tok.Scopes, tok.Issuer)
	}
	if !tok.ExpiresAt.Equal(t0.Add(time.Hour)) || tok.Generation != c.Generation || c.Generation == 0 {
		t.Errorf("token expires %v generation %d; stored generation %d", tok.ExpiresAt, tok.Generation, c.Generation)
	}
	want := s.grant
	want.Server = normalizedURL(pid)
	if tok.Grant != want {
		t.Errorf("grant = %+v, want %+v", tok.Grant, want)
	}
	e.wantRefreshes(0)
	e.wantGrant(tnt, pid, domain.StatusAuthorized, "")
}

func TestGetCache(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		ttl       time.Duration
		advance   time.Duration
		wantReads int  // credential reads by the two Gets
		wantNew   bool // the second Get refreshed
	}{
		{name: "disabled: every read goes to the store", ttl: 0, advance: time.Second, wantReads: 2},
		{name: "served from memory within its ttl", ttl: time.Minute, advance: 59 * time.Second, wantReads: 1},
		{name: "read again once its ttl passed", ttl: time.Minute, advance: time.Minute, wantReads: 2},
		{name: "never serves a token due for refresh", ttl: 24 * time.Hour, advance: dueButValid, wantNew: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig
			cfg.CacheTTL = tt.ttl
			e := newEnv(t, cfg)
			e.authorize(grantSpec{})
			before := e.store.Calls("GetCredential")
			first := e.get(e.svc, tnt, pid)
			e.clock.Advance(tt.advance)
			second := e.get(e.svc, tnt, pid)
			if tt.wantNew {
				e.wantRefreshes(1)
				if second.AccessToken == first.AccessToken {
					t.Error("a due token was served from the cache")
				}
				return
			}
			e.wantRefreshes(0)
			if second.AccessToken != first.AccessToken {
				t.Error("token changed without a refresh")
			}
			if got := e.store.Calls("GetCredential") - before; got != tt.wantReads {
				t.Errorf("credential reads = %d, want %d", got, tt.wantReads)
			}
		})
	}
}

func TestForgetDropsCachedCredential(t *testing.T) {
	t.Parallel()
	e := newCachedEnv(t)
	s := e.authorize(grantSpec{})
	other := e.service(testConfig, e.store, e.locks) // another replica
	old := e.get(e.svc, tnt, pid)
	rotated, err := other.ForceRefresh(e.ctx, domain.TenantGrant(tnt, pid), s.tokens.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.get(e.svc, tnt, pid); got.AccessToken != old.AccessToken {
		t.Fatal("the cache did not serve its copy within its ttl")
	}
	e.svc.Forget(domain.TenantGrant(tnt, pid))
	if got := e.get(e.svc, tnt, pid); got.AccessToken != rotated.AccessToken || got.Generation != rotated.Generation {
		t.Errorf("after Forget: token %q generation %d, want the other replica's %q generation %d",
			got.AccessToken.Reveal(), got.Generation, rotated.AccessToken.Reveal(), rotated.Generation)
	}
}

func TestGetRefreshesWithinMargin(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		lifetime  time.Duration
		marginMax time.Duration
		advance   time.Duration
		want      bool
	}{
		{"hour token outside the capped margin", time.Hour, time.Minute, 59*time.Minute - time.Second, false},
		{"hour token inside the capped margin", time.Hour, time.Minute, 59*time.Minute + time.Second, true},
		{"two-minute token before its last quarter", 2 * time.Minute, time.Minute, 89 * time.Second, false},
		{"two-minute token in its last quarter", 2 * time.Minute, time.Minute, 91 * time.Second, true},
		{"larger cap moves the margin", time.Hour, 10 * time.Minute, 51 * time.Minute, true},
		{"token without expiry is never due", 0, time.Minute, 1000 * time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig
			cfg.MarginMax = tt.marginMax
			e := newEnv(t, cfg)
			e.as.set(func(f *fakeAS) { f.lifetime = tt.lifetime })
			s := e.authorize(grantSpec{})
			e.clock.Advance(tt.advance)
			tok := e.get(e.svc, tnt, pid)
			if refreshed := tok.AccessToken != s.tokens.AccessToken; refreshed != tt.want {
				t.Fatalf("refreshed = %v, want %v", refreshed, tt.want)
			}
			if !tt.want {
				e.wantRefreshes(0)
				return
			}
			e.wantRefreshes(1)
			if want := e.clock.Now().Add(tt.lifetime); !tok.ExpiresAt.Equal(want) {
				t.Errorf("new token expires %v, want %v", tok.ExpiresAt, want)
			}
			e.wantEvents(domain.EventTokenRefreshed, pid, domain.OutcomeSuccess, "")
		})
	}
}

func TestRefreshStoresResult(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                string
		nonRotating         bool
		seedScopes          []string
		seedType            string
		respScopes          []string
		respType            string
		wantScopes          []string
		wantType            string
		wantOldRefreshStays bool
	}{
		{name: "rotated refresh token replaces the old one", seedScopes: []string{"repo"}, seedType: "Bearer",
			wantScopes: []string{"repo"}, wantType: "Bearer"},
		{name: "response without refresh token keeps the old one", nonRotating: true, seedScopes: []string{"repo"},
			wantScopes: []string{"repo"}, wantType: "Bearer", wantOldRefreshStays: true},
		{name: "scopes and type carried over when the response has none", seedScopes: []string{"a", "b"}, seedType: "DPoP",
			wantScopes: []string{"a", "b"}, wantType: "DPoP"},
		{name: "scopes and type of the response win", seedScopes: []string{"a", "b"}, seedType: "DPoP",
			respScopes: []string{"a"}, respType: "bearer", wantScopes: []string{"a"}, wantType: "bearer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testConfig)
			e.as.set(func(f *fakeAS) { f.rotate, f.scopes, f.tokenType = !tt.nonRotating, tt.respScopes, tt.respType })
			s := e.authorize(grantSpec{scopes: tt.seedScopes, tokenType: tt.seedType})
			before := e.cred(tnt, pid)
			e.clock.Advance(dueButValid)
			tok := e.get(e.svc, tnt, pid)

			if tok.AccessToken == s.tokens.AccessToken || tok.TokenType != tt.wantType || !slices.Equal(tok.Scopes, tt.wantScopes) {
				t.Errorf("token = %q type %q scopes %q, want a new one of type %q scopes %q",
					tok.AccessToken.Reveal(), tok.TokenType, tok.Scopes, tt.wantType, tt.wantScopes)
			}
			c, h := e.cred(tnt, pid), e.held(tnt, pid)
			if h.Tokens.AccessToken != tok.AccessToken || h.Tokens.TokenType != cmp.Or(tt.respType, tt.seedType) || !slices.Equal(h.Tokens.Scopes, tt.wantScopes) {
				t.Errorf("stored tokens = %q type %q scopes %q", h.Tokens.AccessToken.Reveal(), h.Tokens.TokenType, h.Tokens.Scopes)
			}
			if sameRefresh := h.Tokens.RefreshToken == s.tokens.RefreshToken; sameRefresh != tt.wantOldRefreshStays || !c.HasRefresh {
				t.Errorf("stored refresh token %q (old %q), has_refresh %v", h.Tokens.RefreshToken.Reveal(), s.tokens.RefreshToken.Reveal(), c.HasRefresh)
			}
			if !e.as.isLive(h.Tokens.RefreshToken.Reveal()) {
				t.Error("the stored refresh token is one the server no longer accepts")
			}
			if c.Generation != before.Generation+1 || tok.Generation != c.Generation || c.LastRefreshAt == nil ||
				!c.LastRefreshAt.Equal(e.clock.Now()) || !h.IssuedAt.Equal(e.clock.Now()) || c.ExpiresAt == nil || !c.ExpiresAt.Equal(tok.ExpiresAt) {
				t.Errorf("stored credential: generation %d (was %d, token %d), last refresh %v, issued %v, expires %v",
					c.Generation, before.Generation, tok.Generation, c.LastRefreshAt, h.IssuedAt, c.ExpiresAt)
			}
			if h.Grant != tok.Grant || tok.Grant.Server != normalizedURL(pid) {
				t.Errorf("grant changed by the refresh: %+v", h.Grant)
			}
			e.wantGrant(tnt, pid, domain.StatusAuthorized, "")
			e.wantEvents(domain.EventTokenRefreshed, pid, domain.OutcomeSuccess, "")

			// The refreshed token is fresh: served again without a call, and a
			// later refresh works with whatever refresh token was stored.
			if again := e.get(e.svc, tnt, pid); again.AccessToken != tok.AccessToken {
				t.Error("fresh refreshed token not served")
			}
			e.clock.Advance(dueButValid)
			e.get(e.svc, tnt, pid)
			e.wantRefreshes(2)
			if got := e.as.resourcesSent(); !slices.Equal(got, []string{s.grant.Resource, s.grant.Resource}) {
				t.Errorf("resource parameters sent = %q, want the grant's %q", got, s.grant.Resource)
			}
		})
	}
}

func TestDeadGrant(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		reg         domain.RegistrationMethod
		kill        func(e *env, s *seeded)
		wantReason  string
		wantRegGone bool
	}{
		{"refresh token revoked at the server", domain.RegPreRegistered,
			func(e *env, s *seeded) { e.as.forgetGrant(s.subject()) }, domain.ReasonInvalidGrant, false},
		{"dynamic client's refresh token revoked: registration kept", domain.RegDynamic,
			func(e *env, s *seeded) { e.as.forgetGrant(s.subject()) }, domain.ReasonInvalidGrant, false},
		{"dynamic client forgotten by the server: registration deleted", domain.RegDynamic,
			func(e *env, s *seeded) { e.as.forgetClient(s.grant.ClientID) }, domain.ReasonInvalidClient, true},
		{"pre-registered client rejected: its configuration kept", domain.RegPreRegistered,
			func(e *env, s *seeded) { e.as.forgetClient(s.grant.ClientID) }, domain.ReasonInvalidClient, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testConfig)
			s, err := e.getDue(tt.reg, tt.kill)
			wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonReauthRequired)
			e.wantRefreshes(1) // invalid_grant and invalid_client are not retried
			e.wantGrant(tnt, pid, domain.StatusReauthRequired, tt.wantReason)
			e.wantEvents(domain.EventReauthRequired, pid, domain.OutcomeFailure, tt.wantReason)
			if got := counter(t, e.metrics.ReauthRequired); got != 1 {
				t.Errorf("reauth_required metric = %v, want 1", got)
			}

			switch tt.reg {
			case domain.RegDynamic:
				_, rerr := e.store.GetClientRegistration(e.ctx, tnt, pid, issuer)
				if gone := apperr.KindOf(rerr) == apperr.KindNotFound; gone != tt.wantRegGone {
					t.Errorf("client registration gone = %v (%v), want %v", gone, rerr, tt.wantRegGone)
				}
			case domain.RegPreRegistered:
				row, perr := e.store.GetProvider(e.ctx, tnt, pid)
				if perr != nil || row.ClientID != s.row.ClientID || len(row.ClientSecret) == 0 {
					t.Errorf("pre-registered client changed: %v", perr)
				}
			}
			st, err := e.svc.Status(e.ctx, domain.TenantGrant(tnt, pid))
			if err != nil || st.Status != domain.StatusReauthRequired || st.Reason != tt.wantReason {
				t.Errorf("Status = %+v, %v; want REAUTH_REQUIRED/%s", st, err, tt.wantReason)
			}
			// Dead for good: the server is not asked again.
			_, err = e.svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
			wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonReauthRequired)
			e.wantRefreshes(1)
		})
	}
}

func TestRefreshTemporaryFailures(t *testing.T) {
	t.Parallel()
	netErr := &oauthclient.TemporaryError{Op: "refresh", Err: io.ErrUnexpectedEOF}
	tests := []struct {
		name          string
		maxAttempts   int
		maxRetryAfter time.Duration
		queued        []error
		always        error
		advance       time.Duration
		wantCalls     int
		want          string // "new", "old" or "unavailable"
	}{
		{name: "503 twice then success", queued: []error{temporary(0), temporary(0)}, advance: dueButValid, wantCalls: 3, want: "new"},
		{name: "network error then success", queued: []error{netErr}, advance: dueButValid, wantCalls: 2, want: "new"},
		{name: "server down: the still valid old token is served", always: temporary(0), advance: dueButValid, wantCalls: 3, want: "old"},
		{name: "server down and token expired", always: temporary(0), advance: 2 * time.Hour, wantCalls: 3, want: "unavailable"},
		{name: "MaxAttempts bounds the attempts", maxAttempts: 5, always: netErr, advance: 2 * time.Hour, wantCalls: 5, want: "unavailable"},
		{name: "Retry-After waited for", maxRetryAfter: time.Hour, queued: []error{temporary(time.Millisecond), temporary(time.Millisecond)},
			advance: dueButValid, wantCalls: 3, want: "new"},
		{name: "Retry-After past the lease is not waited for", maxRetryAfter: time.Hour, always: temporary(time.Hour),
			advance: dueButValid, wantCalls: 1, want: "old"},
		{name: "Retry-After capped by MaxRetryAfter", queued: []error{temporary(time.Hour), temporary(time.Hour)},
			advance: dueButValid, wantCalls: 3, want: "new"},
		{name: "other errors are not retried", always: &oauthclient.OAuthError{Op: "refresh", Status: 400, Code: "invalid_scope"},
			advance: dueButValid, wantCalls: 1, want: "old"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig
			cfg.MaxAttempts = tt.maxAttempts
			if tt.maxRetryAfter > 0 {
				cfg.MaxRetryAfter = tt.maxRetryAfter
			}
			e := newEnv(t, cfg)
			s := e.authorize(grantSpec{})
			e.as.fail(tt.queued...)
			e.as.failAlways(tt.always)
			e.clock.Advance(tt.advance)

			tok, err := e.svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
			e.wantRefreshes(tt.wantCalls)
			switch tt.want {
			case "new":
				if err != nil || tok.AccessToken == s.tokens.AccessToken {
					t.Fatalf("Get = %v, want a refreshed token", err)
				}
				e.wantEvents(domain.EventTokenRefreshFailed, pid, domain.OutcomeFailure)
				return
			case "old":
				if err != nil || tok.AccessToken != s.tokens.AccessToken {
					t.Fatalf("Get = %v, want the old token while the server is down", err)
				}
			case "unavailable":
				wantErr(t, err, apperr.KindUnavailable, domain.ReasonUnavailable)
				if isTemporary(tt.always) && !isTemporary(err) {
					t.Errorf("error %v lost the server's temporary failure", err)
				}
			}
			e.wantEvents(domain.EventTokenRefreshFailed, pid, domain.OutcomeFailure, domain.ReasonUnavailable)
			// A failed refresh changes nothing stored: the grant lives on.
			e.wantGrant(tnt, pid, domain.StatusAuthorized, "")
			if h := e.held(tnt, pid); h.Tokens.AccessToken != s.tokens.AccessToken || !e.as.isLive(h.Tokens.RefreshToken.Reveal()) {
				t.Error("stored tokens changed by a failed refresh")
			}
		})
	}
}

func TestConcurrentWriteWins(t *testing.T) {
	t.Parallel()
	// reauthorize stores a newer authorization of the same provider, as a
	// completed callback does.
	reauthorize := func(e *env, s *seeded) *oauthclient.Tokens {
		t := e.as.authorize(s.subject(), s.grant.ClientID, true)
		if err := e.svc.StoreNew(e.ctx, s.row, "", s.grant, t); err != nil {
			e.tb.Errorf("StoreNew during the refresh: %v", err)
		}
		return t
	}
	tests := []struct {
		name string
		// during runs while the refresh is at the server and returns the
		// tokens that must be served and stored, if any.
		during     func(e *env, s *seeded) *oauthclient.Tokens
		refreshErr error // the server's answer, nil for success
		wantKind   apperr.Kind
		wantReason string
		wantStatus domain.AuthStatus
		wantWhy    string
	}{
		{name: "newer authorization stored meanwhile is returned", during: reauthorize, wantStatus: domain.StatusAuthorized},
		{name: "grant marked dead meanwhile stays dead",
			during: func(e *env, s *seeded) *oauthclient.Tokens {
				_ = e.svc.MarkReauth(e.ctx, domain.TenantGrant(tnt, pid), domain.ReasonMCPServerRejectedToken, e.store.Credential(tnt, pid).Generation)
				return nil
			},
			wantKind: apperr.KindFailedPrecondition, wantReason: domain.ReasonReauthRequired,
			wantStatus: domain.StatusReauthRequired, wantWhy: domain.ReasonMCPServerRejectedToken},
		{name: "stale invalid_grant does not wipe newer tokens", during: reauthorize,
			refreshErr: fmt.Errorf("refresh: %w", oauthclient.ErrInvalidGrant),
			wantKind:   apperr.KindAborted, wantReason: domain.ReasonAborted, wantStatus: domain.StatusAuthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testConfig)
			s := e.authorize(grantSpec{})
			var newer *oauthclient.Tokens
			e.as.set(func(f *fakeAS) { f.during = func() { newer = tt.during(e, s) } })
			if tt.refreshErr != nil {
				e.as.fail(tt.refreshErr)
			}
			e.clock.Advance(dueButValid)

			tok, err := e.svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
			e.wantRefreshes(1)
			e.wantGrant(tnt, pid, tt.wantStatus, tt.wantWhy)
			e.wantEvents(domain.EventTokenRefreshed, pid, domain.OutcomeSuccess) // the losing result is not stored
			if tt.wantReason != "" {
				wantErr(t, err, tt.wantKind, tt.wantReason)
				if tt.wantStatus == domain.StatusAuthorized {
					e.wantEvents(domain.EventReauthRequired, pid, domain.OutcomeFailure)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if newer == nil {
				return
			}
			if h := e.held(tnt, pid); h.Tokens.AccessToken != newer.AccessToken {
				t.Errorf("stored access token %q, want the newer %q", h.Tokens.AccessToken.Reveal(), newer.AccessToken.Reveal())
			}
			if err == nil && (tok.AccessToken != newer.AccessToken || tok.Generation != e.cred(tnt, pid).Generation) {
				t.Errorf("served %q generation %d, want the newer %q", tok.AccessToken.Reveal(), tok.Generation, newer.AccessToken.Reveal())
			}
		})
	}
}

// TestRefreshPersistFailure: the server answered a refresh (and rotated the
// refresh token) but the database cannot store it. The answer is never
// thrown away: it is served from memory, no second refresh spends the dead
// stored refresh token, and it is stored once the database is back.
func TestRefreshPersistFailure(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig)
	s := e.authorize(grantSpec{})
	hs := &hookStore{Store: e.store}
	svc := e.service(testConfig, hs, e.locks)
	var down atomic.Bool
	down.Store(true)
	hs.onPut = func(*repository.Credential, int64) error {
		if down.Load() {
			return errInjected
		}
		return nil
	}
	e.clock.Advance(time.Hour) // expired: the caller waits for the refresh

	tok, err := svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
	if err != nil {
		t.Fatalf("refreshed token not served while the database is down: %v", err)
	}
	if tok.AccessToken == s.tokens.AccessToken {
		t.Fatal("the expired token was served")
	}
	if e.as.isLive(s.tokens.RefreshToken.Reveal()) {
		t.Fatal("the server did not rotate the refresh token: the test proves nothing")
	}
	again, err := svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
	if err != nil || again.AccessToken != tok.AccessToken {
		t.Fatalf("second read = %v; want the kept token", err)
	}
	e.wantRefreshes(1) // the stored, rotated refresh token is never spent again
	// The failure's audit event is written without holding up the caller.
	for wait := time.Now().Add(5 * time.Second); len(e.events(domain.EventTokenPersistFailure)) == 0 && time.Now().Before(wait); {
		time.Sleep(10 * time.Millisecond)
	}
	e.wantEvents(domain.EventTokenPersistFailure, pid, domain.OutcomeFailure, domain.ReasonDBWriteFailed)
	e.wantGrant(tnt, pid, domain.StatusAuthorized, "")

	down.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for e.held(tnt, pid).Tokens.AccessToken != tok.AccessToken {
		if time.Now().After(deadline) {
			t.Fatal("kept tokens not stored after the database came back")
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.wantGrant(tnt, pid, domain.StatusAuthorized, "")
	for svc.hasUnstored(tnt + "/" + pid) {
		if time.Now().After(deadline) {
			t.Fatal("kept tokens not forgotten after they were stored")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The refresh lease was released: a refresh can run again.
	e.clock.Advance(2 * time.Hour)
	if _, err := svc.Get(e.ctx, domain.TenantGrant(tnt, pid)); err != nil {
		t.Fatalf("refresh after the kept tokens were stored: %v", err)
	}
	e.wantRefreshes(2)
}

// TestRefreshStoreAbortedByTheDatabase: the database aborted the write of
// an answered refresh (a deadlock or serialization failure: Aborted, as a
// lost compare-and-swap is, but nothing was written and nobody else's
// tokens were). The rotated tokens are not dropped as if another writer's
// had won: the write is retried and they are stored and served; while the
// database keeps aborting it they are kept and served from memory, and
// stored once it takes them.
func TestRefreshStoreAbortedByTheDatabase(t *testing.T) {
	t.Parallel()
	for _, aborts := range []int{1, 1000} {
		t.Run(fmt.Sprintf("%d aborts", aborts), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testConfig)
			s := e.authorize(grantSpec{})
			hs := &hookStore{Store: e.store}
			svc := e.service(testConfig, hs, e.locks)
			var left atomic.Int64
			left.Store(int64(aborts))
			hs.onPut = func(*repository.Credential, int64) error {
				if left.Add(-1) >= 0 {
					return errDBAborted
				}
				return nil
			}
			e.clock.Advance(time.Hour) // expired: the caller waits for the refresh

			tok, err := svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
			if err != nil {
				t.Fatalf("refresh whose write the database aborted: %v", err)
			}
			if tok.AccessToken == s.tokens.AccessToken {
				t.Fatal("the expired token was served: the refreshed one was dropped")
			}
			if e.as.isLive(s.tokens.RefreshToken.Reveal()) {
				t.Fatal("the server did not rotate the refresh token: the test proves nothing")
			}
			left.Store(0)
			for deadline := time.Now().Add(10 * time.Second); e.held(tnt, pid).Tokens.AccessToken != tok.AccessToken; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the refreshed tokens were never stored")
				}
			}
			e.wantRefreshes(1)
			e.wantGrant(tnt, pid, domain.StatusAuthorized, "")
		})
	}
}

func TestForceRefresh(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec grantSpec
		// prepare returns the token the MCP server rejected.
		prepare   func(e *env, s *seeded) secret.Secret
		wantCalls int
		wantNew   bool // a token other than the stored one before the call
		wantKind  apperr.Kind
		wantWhy   string
	}{
		{name: "stale token refreshed once", prepare: func(_ *env, s *seeded) secret.Secret { return s.tokens.AccessToken },
			wantCalls: 1, wantNew: true},
		{name: "another replica already rotated: stored token returned without a call", wantCalls: 1,
			prepare: func(e *env, s *seeded) secret.Secret {
				other := e.service(testConfig, e.store, e.locks)
				if _, err := other.ForceRefresh(e.ctx, domain.TenantGrant(tnt, pid), s.tokens.AccessToken); err != nil {
					e.tb.Fatal(err)
				}
				return s.tokens.AccessToken
			}},
		{name: "no refresh token", spec: grantSpec{noRefresh: true}, wantCalls: 0,
			prepare:  func(_ *env, s *seeded) secret.Secret { return s.tokens.AccessToken },
			wantKind: apperr.KindFailedPrecondition, wantWhy: domain.ReasonTokenExpired},
		{name: "server down: the rejected token is not served", wantCalls: 3,
			prepare: func(e *env, s *seeded) secret.Secret {
				e.as.failAlways(temporary(0))
				return s.tokens.AccessToken
			},
			wantKind: apperr.KindUnavailable, wantWhy: domain.ReasonUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newCachedEnv(t)
			s := e.authorize(tt.spec)
			cached := e.get(e.svc, tnt, pid) // a cached copy must not be served
			stale := tt.prepare(e, s)
			stored := e.held(tnt, pid).Tokens.AccessToken

			tok, err := e.svc.ForceRefresh(e.ctx, domain.TenantGrant(tnt, pid), stale)
			e.wantRefreshes(tt.wantCalls)
			if tt.wantWhy != "" {
				wantErr(t, err, tt.wantKind, tt.wantWhy)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tok.AccessToken == stale {
				t.Fatal("ForceRefresh returned the rejected token")
			}
			if isNew := tok.AccessToken != stored; isNew != tt.wantNew {
				t.Errorf("returned %q (stored before %q), want new = %v", tok.AccessToken.Reveal(), stored.Reveal(), tt.wantNew)
			}
			if h := e.held(tnt, pid); h.Tokens.AccessToken != tok.AccessToken {
				t.Error("returned token is not the stored one")
			}
			if got := e.get(e.svc, tnt, pid); got.AccessToken != tok.AccessToken {
				t.Errorf("Get after ForceRefresh served %q (cached before: %q), want %q", got.AccessToken.Reveal(), cached.AccessToken.Reveal(), tok.AccessToken.Reveal())
			}
		})
	}
}

func TestGetWithoutRefreshToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		advance time.Duration
		expired bool
	}{
		{"fresh", time.Minute, false},
		{"due but still valid: served as it is", dueButValid, false},
		{"expired", time.Hour, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testConfig)
			s := e.authorize(grantSpec{noRefresh: true})
			e.clock.Advance(tt.advance)
			tok, err := e.svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
			e.wantRefreshes(0)
			if tt.expired {
				wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonTokenExpired)
				return
			}
			if err != nil || tok.AccessToken != s.tokens.AccessToken {
				t.Fatalf("Get = %v, want the stored token", err)
			}
		})
	}
}

func TestGetWithoutUsableGrant(t *testing.T) {
	t.Parallel()
	setStatus := func(e *env, from, to domain.AuthStatus) {
		ok, err := e.store.SetGrantStatus(e.ctx, domain.TenantGrant(tnt, pid), []domain.AuthStatus{from}, to, "", e.keys.PrimaryID())
		if err != nil || !ok {
			e.tb.Fatalf("SetGrantStatus %v -> %v = %v, %v", from, to, ok, err)
		}
	}
	tests := []struct {
		name       string
		prepare    func(e *env)
		wantKind   apperr.Kind
		wantReason string
	}{
		{"provider without grant", func(e *env) { e.provider(tnt, pid, domain.RegPreRegistered) },
			apperr.KindFailedPrecondition, domain.ReasonNotAuthorized},
		// Existence first: never "call StartAuthorization" for a provider
		// StartAuthorization would answer NOT_FOUND for.
		{"unknown provider", func(*env) {}, apperr.KindNotFound, domain.ReasonNotFound},
		{"unknown provider of a known tenant", func(e *env) { e.provider(tnt, "other", domain.RegPreRegistered) },
			apperr.KindNotFound, domain.ReasonNotFound},
		{"unknown tenant", func(e *env) { e.provider("another-tenant", pid, domain.RegPreRegistered) },
			apperr.KindNotFound, domain.ReasonNotFound},
		{"authorization pending", func(e *env) {
			e.provider(tnt, pid, domain.RegPreRegistered)
			setStatus(e, domain.StatusUnauthorized, domain.StatusPending)
		}, apperr.KindFailedPrecondition, domain.ReasonNotAuthorized},
		{"no authorization required", func(e *env) {
			e.provider(tnt, pid, domain.RegPreRegistered)
			setStatus(e, domain.StatusUnauthorized, domain.StatusNotRequired)
		}, apperr.KindFailedPrecondition, domain.ReasonNotRequired},
		{"no authorization required any more", func(e *env) {
			e.authorize(grantSpec{})
			setStatus(e, domain.StatusAuthorized, domain.StatusNotRequired)
		}, apperr.KindFailedPrecondition, domain.ReasonNotRequired},
		{"provider unreadable", func(e *env) {
			e.provider(tnt, pid, domain.RegPreRegistered)
			e.store.FailOn("GetProvider", errInjected)
		}, apperr.KindUnavailable, domain.ReasonUnavailable},
		{"dead grant", func(e *env) {
			e.authorize(grantSpec{})
			_ = e.svc.MarkReauth(e.ctx, domain.TenantGrant(tnt, pid), domain.ReasonInvalidGrant, e.cred(tnt, pid).Generation)
		}, apperr.KindFailedPrecondition, domain.ReasonReauthRequired},
		{"authorized without tokens", func(e *env) {
			e.provider(tnt, pid, domain.RegPreRegistered)
			setStatus(e, domain.StatusUnauthorized, domain.StatusAuthorized)
		}, apperr.KindFailedPrecondition, domain.ReasonReauthRequired},
		{"database down", func(e *env) {
			e.authorize(grantSpec{})
			e.store.FailOn("GetCredential", errInjected)
		}, apperr.KindUnavailable, domain.ReasonUnavailable},
		{"undecryptable tokens", func(e *env) {
			e.authorize(grantSpec{})
			c := e.cred(tnt, pid)
			c.Tokens = []byte("not a ciphertext")
			if _, err := e.store.PutCredential(e.ctx, c, c.Generation); err != nil {
				e.tb.Fatal(err)
			}
		}, apperr.KindInternal, domain.ReasonInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testConfig)
			tt.prepare(e)
			_, err := e.svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
			wantErr(t, err, tt.wantKind, tt.wantReason)
			if msg := apperr.PublicMessage(err); tt.wantReason != domain.ReasonNotAuthorized && strings.Contains(msg, "StartAuthorization") {
				t.Errorf("message %q sends the caller to StartAuthorization", msg)
			}
			_, err = e.svc.AccessToken(e.ctx, domain.TenantGrant(tnt, pid))
			wantErr(t, err, tt.wantKind, tt.wantReason)
			_, err = e.svc.ForceRefresh(e.ctx, domain.TenantGrant(tnt, pid), secret.New("at-rejected"))
			wantErr(t, err, tt.wantKind, tt.wantReason)
			e.wantRefreshes(0)
		})
	}
}

func TestMarkReauth(t *testing.T) {
	t.Parallel()
	t.Run("current generation", func(t *testing.T) {
		t.Parallel()
		e := newCachedEnv(t)
		e.authorize(grantSpec{})
		tok := e.get(e.svc, tnt, pid) // cached
		err := e.svc.MarkReauth(e.ctx, domain.TenantGrant(tnt, pid), domain.ReasonMCPServerRejectedToken, tok.Generation)
		wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonReauthRequired)
		e.wantGrant(tnt, pid, domain.StatusReauthRequired, domain.ReasonMCPServerRejectedToken)
		e.wantEvents(domain.EventReauthRequired, pid, domain.OutcomeFailure, domain.ReasonMCPServerRejectedToken)
		_, err = e.svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
		wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonReauthRequired)
	})
	t.Run("stale generation: newer tokens kept", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, testConfig)
		s := e.authorize(grantSpec{})
		rejected := e.cred(tnt, pid).Generation
		fresh, err := e.svc.ForceRefresh(e.ctx, domain.TenantGrant(tnt, pid), s.tokens.AccessToken) // another request refreshed meanwhile
		if err != nil {
			t.Fatal(err)
		}
		err = e.svc.MarkReauth(e.ctx, domain.TenantGrant(tnt, pid), domain.ReasonMCPServerRejectedToken, rejected)
		wantErr(t, err, apperr.KindAborted, domain.ReasonAborted)
		e.wantGrant(tnt, pid, domain.StatusAuthorized, "")
		if h := e.held(tnt, pid); h.Tokens.AccessToken != fresh.AccessToken {
			t.Error("newer tokens wiped")
		}
		e.wantEvents(domain.EventReauthRequired, pid, domain.OutcomeFailure)
	})
}

func TestRefreshNeedsTheGrantsClient(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		reg        domain.RegistrationMethod
		change     func(e *env, s *seeded)
		wantKind   apperr.Kind
		wantReason string
	}{
		{"pre-registered client id changed", domain.RegPreRegistered, func(e *env, s *seeded) {
			row, _ := e.store.GetProvider(e.ctx, tnt, pid)
			row.ClientID = "pre-other"
			if err := e.store.UpdateProvider(e.ctx, row, row.Version); err != nil {
				e.tb.Fatal(err)
			}
		}, apperr.KindFailedPrecondition, domain.ReasonReauthRequired},
		{"dynamic registration gone", domain.RegDynamic, func(e *env, s *seeded) {
			if err := e.store.DeleteClientRegistration(e.ctx, tnt, pid, issuer); err != nil {
				e.tb.Fatal(err)
			}
		}, apperr.KindFailedPrecondition, domain.ReasonReauthRequired},
		{"dynamic registration replaced by another client", domain.RegDynamic, func(e *env, s *seeded) {
			reg, _ := e.store.GetClientRegistration(e.ctx, tnt, pid, issuer)
			reg.ClientID = "dyn-other"
			if err := e.store.PutClientRegistration(e.ctx, reg); err != nil {
				e.tb.Fatal(err)
			}
		}, apperr.KindFailedPrecondition, domain.ReasonReauthRequired},
		{"database down while reading the registration", domain.RegDynamic, func(e *env, _ *seeded) {
			e.store.FailOn("GetClientRegistration", errInjected)
		}, apperr.KindUnavailable, domain.ReasonUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testConfig)
			tok, err := e.getDue(tt.reg, tt.change)
			e.wantRefreshes(0) // the tokens are never sent with another client
			if tt.wantKind == apperr.KindUnavailable {
				// The due token is still valid: it is served while the
				// database is down, and the outage never kills the grant.
				if err != nil || tok == nil {
					t.Fatalf("due but valid token not served during a database outage: %v", err)
				}
				e.wantGrant(tnt, pid, domain.StatusAuthorized, "")
				return
			}
			wantErr(t, err, tt.wantKind, tt.wantReason)
		})
	}
}

// A grant that can no longer be refreshed because its client is gone is
// reported REAUTH_REQUIRED by Get, so its stored status must say so too.
func TestClientGoneMarksGrantDead(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig)
	e.dueGrant(grantSpec{reg: domain.RegDynamic})
	if err := e.store.DeleteClientRegistration(e.ctx, tnt, pid, issuer); err != nil {
		t.Fatal(err)
	}
	_, err := e.svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonReauthRequired)
	e.wantGrant(tnt, pid, domain.StatusReauthRequired, domain.ReasonNoClient)
}

// slowReads is a read counter whose first count takes long: the clock
// moves past the token's expiry while the read is counted.
type slowReads struct {
	servicetest.Reads
	clock *servicetest.Clock
	by    time.Duration
	n     atomic.Int32
}

func (r *slowReads) Record(ctx context.Context, tenant, provider string) {
	if r.n.Add(1) == 1 {
		r.clock.Advance(r.by)
	}
	r.Reads.Record(ctx, tenant, provider)
}

// TestAccessTokenCheckedAfterTheReadIsCounted (issue 15, case 7): a token
// that expires while its read is recorded never reaches the caller; the
// caller gets a valid one, and the read is counted once.
func TestAccessTokenCheckedAfterTheReadIsCounted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig)
	s := e.authorize(grantSpec{})
	rec := &slowReads{clock: e.clock, by: 2 * time.Hour}
	svc, err := New(Deps{Store: e.store, Cipher: e.keys, Proto: e.as, Locks: e.locks, Audit: e.auditor, Reads: rec, Log: e.log,
		Now: e.clock.Now, Config: testConfig, Metrics: metrics.New()})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := svc.AccessToken(e.ctx, domain.TenantGrant(tnt, pid))
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == s.tokens.AccessToken || !e.clock.Now().Before(tok.ExpiresAt) {
		t.Fatal("a token that expired while its read was counted reached the caller")
	}
	if n := rec.Total(); n != 1 {
		t.Errorf("token reads counted %d times, want 1", n)
	}
}
