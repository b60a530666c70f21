package grants

import (
	"slices"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/vault"
)

func TestStoreNew(t *testing.T) {
	t.Parallel()
	t.Run("stores an authorized grant for the provider's server", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, testConfig)
		s := e.authorize(grantSpec{scopes: []string{"repo"}})
		c, h := e.cred(tnt, pid), e.held(tnt, pid)
		e.wantGrant(tnt, pid, domain.StatusAuthorized, "")
		if h.Grant.Server != normalizedURL(pid) || h.Grant.ClientID != s.grant.ClientID || h.Grant.Issuer != issuer {
			t.Errorf("sealed grant = %+v", h.Grant)
		}
		if h.Tokens.AccessToken != s.tokens.AccessToken || h.Tokens.RefreshToken != s.tokens.RefreshToken || !h.IssuedAt.Equal(t0) {
			t.Errorf("sealed tokens = %q/%q issued %v", h.Tokens.AccessToken.Reveal(), h.Tokens.RefreshToken.Reveal(), h.IssuedAt)
		}
		if c.Issuer != issuer || c.Scopes != `["repo"]` || !c.HasRefresh || c.ExpiresAt == nil || !c.ExpiresAt.Equal(t0.Add(time.Hour)) ||
			c.LastRefreshAt == nil || !c.LastRefreshAt.Equal(t0) || c.KeyID != e.keys.PrimaryID() {
			t.Errorf("credential row = %+v", c)
		}
	})
	t.Run("replaces a dead grant", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, testConfig)
		s := e.authorize(grantSpec{})
		_ = e.svc.MarkReauth(e.ctx, domain.TenantGrant(tnt, pid), domain.ReasonInvalidGrant, e.cred(tnt, pid).Generation)
		dead := e.cred(tnt, pid).Generation
		again := e.as.authorize(s.subject(), s.grant.ClientID, true)
		if err := e.svc.StoreNew(e.ctx, s.row, "", s.grant, again); err != nil {
			t.Fatal(err)
		}
		e.wantGrant(tnt, pid, domain.StatusAuthorized, "")
		if tok := e.get(e.svc, tnt, pid); tok.AccessToken != again.AccessToken || tok.Generation != dead+1 {
			t.Errorf("served %q generation %d, want %q generation %d", tok.AccessToken.Reveal(), tok.Generation, again.AccessToken.Reveal(), dead+1)
		}
	})

	// Failures: the provider row StoreNew is given, and what the store does.
	tests := []struct {
		name     string
		row      func(e *env, row repository.Provider) *repository.Provider
		hook     func(e *env, hs *hookStore)
		wantKind apperr.Kind
		wantPuts int
		wantKept bool // the new tokens are stored
	}{
		{name: "server URL changed during the authorization: undone", wantKind: apperr.KindAborted, wantPuts: 1,
			row: func(e *env, row repository.Provider) *repository.Provider {
				row.ServerURL = e.seal(tnt, pid, vault.FieldServerURL, "https://old.example.com/mcp")
				return &row
			}},
		{name: "undecryptable provider row", wantKind: apperr.KindInternal, wantPuts: 0,
			row: func(e *env, row repository.Provider) *repository.Provider {
				row.ServerURL = []byte("not a ciphertext")
				return &row
			}},
		{name: "database failure is not retried", wantKind: apperr.KindUnavailable, wantPuts: 1,
			hook: func(e *env, hs *hookStore) {
				hs.onPut = func(*repository.Credential, int64) error { return errInjected }
			}},
		{name: "concurrent refresh wins the first write: retried and stored", wantPuts: 2, wantKept: true,
			hook: func(e *env, hs *hookStore) {
				first := true
				hs.onPut = func(c *repository.Credential, expected int64) error {
					if first {
						first = false
						other := *c
						other.Tokens = []byte("a concurrent refresh's result")
						if _, err := e.store.PutCredential(e.ctx, &other, expected); err != nil {
							e.tb.Fatal(err)
						}
					}
					return nil
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testConfig)
			row := e.provider(tnt, pid, domain.RegPreRegistered)
			given := row
			if tt.row != nil {
				given = tt.row(e, *row)
			}
			hs := &hookStore{Store: e.store}
			puts := 0
			if tt.hook != nil {
				tt.hook(e, hs)
			}
			inner := hs.onPut
			hs.onPut = func(c *repository.Credential, expected int64) error {
				puts++
				if inner != nil {
					return inner(c, expected)
				}
				return nil
			}
			svc := e.service(testConfig, hs, e.locks)
			g := vault.Grant{Issuer: issuer, TokenEndpoint: tokenEndpoint, RegMethod: domain.RegPreRegistered, ClientID: row.ClientID}
			tokens := e.as.authorize(tnt+"/"+pid, row.ClientID, true)

			err := svc.StoreNew(e.ctx, given, "", g, tokens)
			if puts != tt.wantPuts {
				t.Errorf("credential writes = %d, want %d", puts, tt.wantPuts)
			}
			if tt.wantKept {
				if err != nil {
					t.Fatal(err)
				}
				if h := e.held(tnt, pid); h.Tokens.AccessToken != tokens.AccessToken {
					t.Error("the authorization's tokens were not stored")
				}
				e.wantGrant(tnt, pid, domain.StatusAuthorized, "")
				return
			}
			if apperr.KindOf(err) != tt.wantKind {
				t.Fatalf("StoreNew = %v, want kind %v", err, tt.wantKind)
			}
			if c := e.store.Credential(tnt, pid); c != nil {
				t.Errorf("a grant was left stored: %+v", c)
			}
		})
	}
}

func TestRevoke(t *testing.T) {
	t.Parallel()
	failRevoke := func(hint string) func(e *env, s *seeded) {
		return func(e *env, _ *seeded) {
			e.as.set(func(f *fakeAS) { f.revokeErr[hint] = &oauthclient.TemporaryError{Op: "revoke", Status: 502} })
		}
	}
	tests := []struct {
		name        string
		spec        grantSpec
		prepare     func(e *env, s *seeded)
		wantHints   []string // revocations sent, in order
		wantRevoked bool
		wantFailed  []string // revocation failure reasons audited
	}{
		{name: "refresh token first, then access token", wantHints: []string{"refresh_token", "access_token"}, wantRevoked: true},
		{name: "dynamic client", spec: grantSpec{reg: domain.RegDynamic}, wantHints: []string{"refresh_token", "access_token"}, wantRevoked: true},
		{name: "no refresh token", spec: grantSpec{noRefresh: true}, wantHints: []string{"access_token"}, wantRevoked: true},
		{name: "server without revocation endpoint", spec: grantSpec{noRevocation: true}},
		{name: "refresh token revocation fails", prepare: failRevoke("refresh_token"),
			wantHints: []string{"refresh_token", "access_token"}, wantFailed: []string{domain.ReasonRevokeRefreshFailed}},
		{name: "access token revocation fails", prepare: failRevoke("access_token"),
			wantHints: []string{"refresh_token", "access_token"}, wantFailed: []string{domain.ReasonRevokeAccessFailed}},
		{name: "client registration gone", spec: grantSpec{reg: domain.RegDynamic}, wantFailed: []string{domain.ReasonNoClient},
			prepare: func(e *env, _ *seeded) { _ = e.store.DeleteClientRegistration(e.ctx, tnt, pid, issuer) }},
		{name: "dead grant holds nothing to revoke",
			prepare: func(e *env, _ *seeded) {
				_ = e.svc.MarkReauth(e.ctx, domain.TenantGrant(tnt, pid), domain.ReasonInvalidGrant, e.cred(tnt, pid).Generation)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newCachedEnv(t)
			s := e.authorize(tt.spec)
			if tt.prepare != nil {
				tt.prepare(e, s)
			} else {
				e.get(e.svc, tnt, pid) // cached: Revoke must drop it
			}

			revoked, err := e.svc.Revoke(e.ctx, domain.TenantGrant(tnt, pid))
			if err != nil || revoked != tt.wantRevoked {
				t.Fatalf("Revoke = %v, %v; want %v", revoked, err, tt.wantRevoked)
			}
			for _, r := range e.as.revocations() {
				if want := map[string]string{"refresh_token": s.tokens.RefreshToken.Reveal(), "access_token": s.tokens.AccessToken.Reveal()}[r.hint]; r.token != want {
					t.Errorf("revoked %s %q, want %q", r.hint, r.token, want)
				}
			}
			if hints := e.revokedHints(); !slices.Equal(hints, tt.wantHints) {
				t.Errorf("revocations = %q, want %q", hints, tt.wantHints)
			}
			if tt.wantRevoked && e.as.isLive(s.tokens.RefreshToken.Reveal()) {
				t.Error("refresh token still accepted by the server")
			}
			if c := e.store.Credential(tnt, pid); c != nil {
				t.Errorf("grant not deleted: %+v", c)
			}
			row, err := e.store.GetProvider(e.ctx, tnt, pid)
			if st, _ := row.AuthStatus(); err != nil || st != domain.StatusUnauthorized {
				t.Errorf("provider status = %v, %v; want UNAUTHORIZED", st, err)
			}
			_, err = e.svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
			wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonNotAuthorized)
			if tt.spec.reg == domain.RegDynamic && tt.wantFailed == nil {
				if _, err := e.store.GetClientRegistration(e.ctx, tnt, pid, issuer); err != nil {
					t.Errorf("client registration not kept: %v", err)
				}
			}
			e.wantEvents(domain.EventRevocationFailed, pid, domain.OutcomeFailure, tt.wantFailed...)
			// The event commits with the deletion, before the server is
			// asked; the server's answer is the call's result and a
			// failure its own event (above).
			e.wantEvents(domain.EventAuthRevoked, pid, domain.OutcomeSuccess, "")
		})
	}
}

func TestRevokeWithoutDeletion(t *testing.T) {
	t.Parallel()
	t.Run("provider without grant", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, testConfig)
		e.provider(tnt, pid, domain.RegPreRegistered)
		if revoked, err := e.svc.Revoke(e.ctx, domain.TenantGrant(tnt, pid)); err != nil || revoked {
			t.Fatalf("Revoke = %v, %v; want false, nil", revoked, err)
		}
		if len(e.as.revocations()) != 0 || len(e.events(domain.EventAuthRevoked)) != 0 {
			t.Error("nothing to revoke, yet something was revoked or audited")
		}
	})
	t.Run("delete fails: nothing revoked at the server, nothing audited", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, testConfig)
		e.authorize(grantSpec{})
		e.store.FailOn("DeleteCredential", errInjected)
		revoked, err := e.svc.Revoke(e.ctx, domain.TenantGrant(tnt, pid))
		wantErr(t, err, apperr.KindUnavailable, domain.ReasonUnavailable)
		if revoked || len(e.as.revocations()) != 0 {
			t.Errorf("revoked %v, %d revocations at the server for a grant that stays stored", revoked, len(e.as.revocations()))
		}
		if len(e.events(domain.EventAuthRevoked)) != 0 {
			t.Error("revocation audited although the grant was not deleted")
		}
	})
}

func TestRevokeBeforeDelete(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		seed      bool
		wantHints []string
	}{
		{"revokes at the server and leaves the deletion to the caller", true, []string{"refresh_token", "access_token"}},
		{"provider without grant", false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testConfig)
			if tt.seed {
				e.authorize(grantSpec{})
			} else {
				e.provider(tnt, pid, domain.RegPreRegistered)
			}
			revoked := e.svc.PrepareRevoke(e.ctx, domain.TenantGrant(tnt, pid))(e.ctx)
			if revoked != tt.seed {
				t.Errorf("RevokeBeforeDelete = %v, want %v", revoked, tt.seed)
			}
			if hints := e.revokedHints(); !slices.Equal(hints, tt.wantHints) {
				t.Errorf("revocations = %q, want %q", hints, tt.wantHints)
			}
			if got := e.store.Credential(tnt, pid) != nil; got != tt.seed {
				t.Errorf("grant still stored = %v, want %v", got, tt.seed)
			}
			if len(e.events(domain.EventAuthRevoked)) != 0 {
				t.Error("RevokeBeforeDelete audited a revocation: the caller audits the deletion")
			}
		})
	}
}

func TestStatus(t *testing.T) {
	t.Parallel()
	expires := t0.Add(time.Hour)
	tests := []struct {
		name    string
		prepare func(e *env)
		advance time.Duration
		want    Status
	}{
		{name: "no grant", prepare: func(e *env) { e.provider(tnt, pid, domain.RegPreRegistered) },
			want: Status{Status: domain.StatusUnauthorized}},
		{name: "authorized", prepare: func(e *env) { e.authorize(grantSpec{scopes: []string{"repo"}}) },
			want: Status{Status: domain.StatusAuthorized, Issuer: issuer, Scopes: []string{"repo"}, HasRefresh: true, ExpiresAt: expires}},
		{name: "expired but refreshable stays authorized", prepare: func(e *env) { e.authorize(grantSpec{}) }, advance: 2 * time.Hour,
			want: Status{Status: domain.StatusAuthorized, Issuer: issuer, HasRefresh: true, ExpiresAt: expires}},
		{name: "no refresh token, still valid", prepare: func(e *env) { e.authorize(grantSpec{noRefresh: true}) }, advance: time.Minute,
			want: Status{Status: domain.StatusAuthorized, Issuer: issuer, ExpiresAt: expires}},
		{name: "no refresh token, past expiry", prepare: func(e *env) { e.authorize(grantSpec{noRefresh: true}) }, advance: time.Hour,
			want: Status{Status: domain.StatusExpired, Reason: "access token expired and no refresh token is held", Issuer: issuer, ExpiresAt: expires}},
		{name: "dead grant with its reason", prepare: func(e *env) {
			e.authorize(grantSpec{})
			e.as.forgetGrant(tnt + "/" + pid)
			e.clock.Advance(dueButValid)
			_, _ = e.svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
		}, want: Status{Status: domain.StatusReauthRequired, Reason: domain.ReasonInvalidGrant, Issuer: issuer}},
		{name: "pending", prepare: func(e *env) {
			e.provider(tnt, pid, domain.RegPreRegistered)
			_, _ = e.store.SetGrantStatus(e.ctx, domain.TenantGrant(tnt, pid), []domain.AuthStatus{domain.StatusUnauthorized}, domain.StatusPending, "", 1)
		}, want: Status{Status: domain.StatusPending}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testConfig)
			tt.prepare(e)
			e.clock.Advance(tt.advance)
			got, err := e.svc.Status(e.ctx, domain.TenantGrant(tnt, pid))
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != tt.want.Status || got.Reason != tt.want.Reason || got.Issuer != tt.want.Issuer ||
				!slices.Equal(got.Scopes, tt.want.Scopes) || got.HasRefresh != tt.want.HasRefresh || !got.ExpiresAt.Equal(tt.want.ExpiresAt) {
				t.Errorf("Status = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestAccessTokenCountsRead(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig)
	s := e.authorize(grantSpec{})
	e.provider(tnt, "unauthorized", domain.RegPreRegistered)

	tok, err := e.svc.AccessToken(e.ctx, domain.TenantGrant(tnt, pid))
	if err != nil || tok.AccessToken != s.tokens.AccessToken {
		t.Fatalf("AccessToken = %v, want the stored token", err)
	}
	_, err = e.svc.AccessToken(e.ctx, domain.TenantGrant(tnt, "unauthorized"))
	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonNotAuthorized)

	// Reads are counted per caller (here none: "anonymous"), not written as
	// audit rows; a failed read is not a read.
	if n := e.reads.Count(tnt, pid, "anonymous"); n != 1 {
		t.Errorf("%d reads of %s counted, want 1", n, pid)
	}
	if n := e.reads.Total(); n != 1 {
		t.Errorf("%d reads counted in all, want 1", n)
	}
	e.wantEvents(domain.EventTokenRead, pid, domain.OutcomeSuccess)
}

// TestStoreErrors: a missing provider or grant is NOT_FOUND and a database
// outage UNAVAILABLE, with nothing sent to the server or changed.
func TestStoreErrors(t *testing.T) {
	t.Parallel()
	calls := map[string]func(e *env) error{
		"Revoke": func(e *env) error { _, err := e.svc.Revoke(e.ctx, domain.TenantGrant(tnt, pid)); return err },
		"Status": func(e *env) error { _, err := e.svc.Status(e.ctx, domain.TenantGrant(tnt, pid)); return err },
		"MarkReauth": func(e *env) error {
			return e.svc.MarkReauth(e.ctx, domain.TenantGrant(tnt, pid), domain.ReasonMCPServerRejectedToken, 1)
		},
	}
	cases := []struct {
		name     string
		prepare  func(e *env)
		wantKind apperr.Kind
		want     string
		wantCred bool
	}{
		{"missing provider", func(*env) {}, apperr.KindNotFound, domain.ReasonNotFound, false},
		{"database down", func(e *env) {
			e.authorize(grantSpec{})
			e.store.FailOn("GetCredential", errInjected)
		}, apperr.KindUnavailable, domain.ReasonUnavailable, true},
	}
	for name, call := range calls {
		for _, tc := range cases {
			t.Run(name+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				e := newEnv(t, testConfig)
				tc.prepare(e)
				wantErr(t, call(e), tc.wantKind, tc.want)
				if len(e.as.revocations()) != 0 {
					t.Error("revoked at the server without reading the grant")
				}
				if got := e.store.Credential(tnt, pid) != nil; got != tc.wantCred {
					t.Errorf("grant stored = %v, want %v", got, tc.wantCred)
				}
			})
		}
	}
	t.Run("MarkReauth/provider without grant", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, testConfig)
		e.provider(tnt, pid, domain.RegPreRegistered)
		err := e.svc.MarkReauth(e.ctx, domain.TenantGrant(tnt, pid), domain.ReasonMCPServerRejectedToken, 1)
		wantErr(t, err, apperr.KindNotFound, domain.ReasonNotFound)
		if e.store.Credential(tnt, pid) != nil {
			t.Error("a grant was created")
		}
	})
}
