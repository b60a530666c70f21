package service

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	"golang.org/x/sync/singleflight"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/statestore"
	"github.com/mcpauth/mcpauth/validate"
)

// TokenProtocol refreshes and revokes tokens. *oauthclient.Client
// implements it.
type TokenProtocol interface {
	Refresh(ctx context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, refreshToken secret.Secret, resource string) (*oauthclient.Tokens, error)
	Revoke(ctx context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, token secret.Secret, hint string) error
}

// Locker gives one refresher per provider across replicas (Redis SET NX PX
// in production). statestore.Store implements it.
type Locker interface {
	Lock(ctx context.Context, key string, ttl time.Duration) (statestore.Lease, error)
	WaitUnlocked(ctx context.Context, key string) error
}

// TokenConfig tunes the token lifecycle.
type TokenConfig struct {
	// MarginMax caps how early a token is refreshed before it expires; the
	// margin is a quarter of the token's lifetime up to this cap.
	MarginMax time.Duration
	// LockTTL bounds how long a crashed refresher holds the lock.
	LockTTL time.Duration
	// MaxAttempts bounds refresh attempts on 5xx, 429 and network errors.
	MaxAttempts int
	// MaxRetryAfter caps how long a Retry-After is honoured.
	MaxRetryAfter time.Duration
	// CacheTTL keeps opened credentials in memory this long (0 disables);
	// see tokenCache for what it bounds.
	CacheTTL time.Duration
}

// TokenService keeps tokens valid: proactive refresh, one refresh per
// provider at a time across replicas (in-process single-flight, a
// cross-replica lock, a re-read after acquiring it, and a generation
// compare-and-swap so a stale result never overwrites newer tokens).
type TokenService struct {
	store   CredentialStore
	cipher  Cipher
	proto   TokenProtocol
	locks   Locker
	audit   *Auditor
	log     *slog.Logger
	now     Clock
	cfg     TokenConfig
	metrics *metrics.Metrics
	sf      singleflight.Group
	sleep   func(ctx context.Context, d time.Duration) error
	cache   *tokenCache
}

// TokenDeps are what NewTokenService needs.
type TokenDeps struct {
	Store   CredentialStore
	Cipher  Cipher
	Proto   TokenProtocol
	Locks   Locker
	Audit   *Auditor
	Log     *slog.Logger
	Now     Clock
	Config  TokenConfig
	Metrics *metrics.Metrics
}

// NewTokenService returns the token lifecycle service.
func NewTokenService(d TokenDeps) (*TokenService, error) {
	if d.Store == nil || d.Cipher == nil || d.Proto == nil || d.Locks == nil || d.Audit == nil || d.Log == nil || d.Metrics == nil {
		return nil, errors.New("token service: store, cipher, proto, locks, audit, log and metrics are required")
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Config.MarginMax <= 0 {
		d.Config.MarginMax = time.Minute
	}
	if d.Config.LockTTL <= 0 {
		d.Config.LockTTL = 15 * time.Second
	}
	if d.Config.MaxAttempts <= 0 {
		d.Config.MaxAttempts = 3
	}
	if d.Config.MaxRetryAfter <= 0 {
		d.Config.MaxRetryAfter = 5 * time.Second
	}
	return &TokenService{store: d.Store, cipher: d.Cipher, proto: d.Proto, locks: d.Locks, audit: d.Audit, log: d.Log,
		now: d.Now, cfg: d.Config, metrics: d.Metrics, sleep: sleepCtx, cache: newTokenCache(d.Config.CacheTTL)}, nil
}

// persistBudget is the time reserved for storing a refresh's result.
const persistBudget = 5 * time.Second

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// margin is how long before expiry a token counts as due for refresh: a
// quarter of its lifetime, capped, so a 2-second token is not refreshed on
// every read and an hour-long one is refreshed a minute early.
func (s *TokenService) margin(h *heldTokens) time.Duration {
	life := h.tokens.ExpiresAt.Sub(h.issuedAt)
	if h.issuedAt.IsZero() || life <= 0 {
		return s.cfg.MarginMax
	}
	return min(life/4, s.cfg.MarginMax)
}

// fresh reports whether the held token can be served without refreshing.
func (s *TokenService) fresh(h *heldTokens) bool {
	if h.tokens.ExpiresAt.IsZero() {
		return true
	}
	return s.now().Add(s.margin(h)).Before(h.tokens.ExpiresAt)
}

func (s *TokenService) valid(h *heldTokens) bool {
	return h.tokens.ExpiresAt.IsZero() || s.now().Before(h.tokens.ExpiresAt)
}

// reauthErr is the caller-facing error when a person must authorize again.
func reauthErr(tenant, id, why string) error {
	return apperr.FailedPrecondition("REAUTH_REQUIRED", "%s: authorize the provider again", why).
		WithMeta("provider", resname.ProviderName(tenant, id)).
		WithMeta("action", "call mcpauth.v1.OAuthService/StartAuthorization").
		WithMeta("start_authorization_path", "/v1/"+resname.ProviderName(tenant, id)+":startAuthorization")
}

// load reads and opens the provider's credential, mapping "no tokens" to a
// precise precondition error.
func (s *TokenService) load(ctx context.Context, tenant, id string) (*repository.Credential, *heldTokens, error) {
	cred, err := s.store.GetCredential(ctx, tenant, id)
	if apperr.KindOf(err) == apperr.KindNotFound {
		return nil, nil, apperr.FailedPrecondition("NOT_AUTHORIZED", "the provider is not authorized: call StartAuthorization").
			WithMeta("provider", resname.ProviderName(tenant, id))
	}
	if err != nil {
		return nil, nil, err
	}
	if mcpauthv1.AuthorizationStatus(cred.Status) == mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_REAUTH_REQUIRED || len(cred.Tokens) == 0 {
		return cred, nil, reauthErr(tenant, id, "the refresh token was rejected")
	}
	h, err := openTokens(s.cipher, cred)
	if err != nil {
		return nil, nil, err
	}
	return cred, h, nil
}

// Get returns a valid access token for the provider, refreshing first when
// it is due.
func (s *TokenService) Get(ctx context.Context, tenant, id string) (*oauthclient.Tokens, *repository.Credential, error) {
	t, c, _, err := s.getHeld(ctx, tenant, id)
	return t, c, err
}

// getHeld is Get that also returns the grant the tokens were issued under,
// from the same decryption (callers that check where a token may go need
// it on every call).
func (s *TokenService) getHeld(ctx context.Context, tenant, id string) (*oauthclient.Tokens, *repository.Credential, grantInfo, error) {
	key := tenant + "/" + id
	now := s.now()
	if e, ok := s.cache.get(key, now); ok && s.fresh(e.held) {
		s.metrics.TokensServed.Inc()
		return e.held.tokens, e.cred, e.held.grant, nil
	}
	cred, h, err := s.load(ctx, tenant, id)
	if err != nil {
		return nil, nil, grantInfo{}, err
	}
	if s.fresh(h) {
		s.cache.put(key, cred, h, now)
		s.metrics.TokensServed.Inc()
		return h.tokens, cred, h.grant, nil
	}
	s.cache.drop(key)
	t, c, err := s.refreshShared(ctx, tenant, id, "")
	if err != nil {
		return nil, nil, grantInfo{}, err
	}
	// The refresh may have returned another replica's newer credential:
	// read its grant rather than assume ours.
	nh, err := openTokens(s.cipher, c)
	if err != nil {
		return nil, nil, grantInfo{}, err
	}
	return t, c, nh.grant, nil
}

// ForceRefresh refreshes after the MCP server rejected staleAccess (401),
// unless the stored token already differs from it (someone else refreshed).
// Callers must use the tokens it returns, never a cached copy.
func (s *TokenService) ForceRefresh(ctx context.Context, tenant, id string, staleAccess secret.Secret) (*oauthclient.Tokens, *repository.Credential, error) {
	s.cache.drop(tenant + "/" + id)
	return s.refreshShared(ctx, tenant, id, staleAccess.Reveal())
}

// grantMatches reports whether the credential's tokens were granted for
// the provider's current server (normalised URL, sealed with the tokens).
func (s *TokenService) grantMatches(cred *repository.Credential, d *providerData) bool {
	h, err := openTokens(s.cipher, cred)
	if err != nil {
		return false
	}
	return h.grant.grantedFor(d)
}

// grantedFor reports whether the grant was issued for d's current server.
func (g grantInfo) grantedFor(d *providerData) bool {
	return g.Server == validate.NormalizeURL(d.url)
}

// Forget drops the provider's cached credential (its server changed or it
// was deleted on this replica).
func (s *TokenService) Forget(tenant, id string) { s.cache.drop(tenant + "/" + id) }

type refreshResult struct {
	tokens *oauthclient.Tokens
	cred   *repository.Credential
}

// refreshShared collapses concurrent refreshes of one provider in this
// process into one; the cross-replica lock is taken inside.
func (s *TokenService) refreshShared(ctx context.Context, tenant, id, stale string) (*oauthclient.Tokens, *repository.Credential, error) {
	// Callers reacting to different rejected tokens must not share a result:
	// one of them could be handed the very token its server just refused.
	key := tenant + "/" + id
	if stale != "" {
		h := sha256.Sum256([]byte(stale))
		key += "/" + hex.EncodeToString(h[:8])
	}
	ch := s.sf.DoChan(key, func() (any, error) {
		// The refresh must finish even if the first caller gives up: others
		// wait on it, and an abandoned refresh can burn a rotating token.
		// This bounds the wait for the lock: a crashed holder's lease ends
		// within one TTL, a live holder's work within one more. The work
		// under the lock gets its own budget in refreshLocked.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*s.cfg.LockTTL)
		defer cancel()
		t, c, err := s.refreshLocked(rctx, tenant, id, stale)
		if err != nil {
			return nil, err
		}
		return refreshResult{t, c}, nil
	})
	select {
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return nil, nil, r.Err
		}
		res := r.Val.(refreshResult)
		s.metrics.TokensServed.Inc()
		return res.tokens, res.cred, nil
	}
}

// refreshLocked takes the provider's cross-replica lock, re-reads the
// credential (another replica may have refreshed already), and refreshes
// only if it is still due.
func (s *TokenService) refreshLocked(ctx context.Context, tenant, id, stale string) (*oauthclient.Tokens, *repository.Credential, error) {
	lockKey := "refresh:" + tenant + "/" + id
	waitStart := time.Now()
	var lease statestore.Lease
	for {
		l, err := s.locks.Lock(ctx, lockKey, s.cfg.LockTTL)
		if err == nil {
			lease = l
			break
		}
		if !errors.Is(err, statestore.ErrLocked) {
			if statestore.IsUnavailable(err) {
				return nil, nil, apperr.Unavailable(err, "refresh lock store unavailable")
			}
			return nil, nil, apperr.Internal(err, "refresh lock")
		}
		if err := s.locks.WaitUnlocked(ctx, lockKey); err != nil {
			return nil, nil, apperr.Unavailable(err, "waiting for another refresh of this provider")
		}
		// The holder released: its result is probably stored already.
		cred, h, err := s.load(ctx, tenant, id)
		if err != nil {
			return nil, nil, err
		}
		if s.usable(h, stale) {
			s.metrics.LockWaits.Observe(time.Since(waitStart).Seconds())
			return h.tokens, cred, nil
		}
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = lease.Release(rctx)
	}()
	// The work under the lock gets a full lease however long the wait took
	// (else a waiter that acquires late is cut off mid-request and may burn
	// a rotating refresh token), and ends when the lease does.
	ctx, cancelWork := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.LockTTL)
	defer cancelWork()
	s.metrics.LockWaits.Observe(time.Since(waitStart).Seconds())
	cred, h, err := s.load(ctx, tenant, id)
	if err != nil {
		return nil, nil, err
	}
	if s.usable(h, stale) {
		return h.tokens, cred, nil
	}
	if h.tokens.RefreshToken.IsZero() {
		if s.valid(h) && stale == "" {
			return h.tokens, cred, nil
		}
		return nil, nil, apperr.FailedPrecondition("TOKEN_EXPIRED", "the access token expired and the server issued no refresh token: authorize the provider again").
			WithMeta("provider", resname.ProviderName(tenant, id))
	}
	return s.doRefresh(ctx, cred, h, stale, lease)
}

// usable reports whether held tokens can be served: fresh, and not the
// token the MCP server just rejected.
func (s *TokenService) usable(h *heldTokens, stale string) bool {
	if stale != "" {
		return h.tokens.AccessToken.Reveal() != stale && s.valid(h)
	}
	return s.fresh(h)
}

// registrationFor rebuilds the client the tokens were granted to.
func (s *TokenService) registrationFor(ctx context.Context, cred *repository.Credential, g grantInfo) (*oauthclient.Registration, error) {
	reg := &oauthclient.Registration{Method: g.RegMethod, ClientID: g.ClientID, AuthMethod: g.AuthMethod}
	switch g.RegMethod {
	case RegPreRegistered:
		row, err := s.store.GetProvider(ctx, cred.TenantID, cred.ProviderID)
		if err != nil {
			return nil, err
		}
		if row.ClientID != g.ClientID {
			return nil, reauthErr(cred.TenantID, cred.ProviderID, "the pre-registered client changed")
		}
		d, err := openProvider(s.cipher, row)
		if err != nil {
			return nil, err
		}
		reg.ClientSecret = d.clientSecret
	case RegDynamic:
		stored, err := s.store.GetClientRegistration(ctx, cred.TenantID, cred.ProviderID, g.Issuer)
		if apperr.KindOf(err) == apperr.KindNotFound {
			return nil, reauthErr(cred.TenantID, cred.ProviderID, "the client registration is gone")
		}
		if err != nil {
			return nil, err
		}
		r, err := openRegistration(s.cipher, stored)
		if err != nil {
			return nil, err
		}
		if r.ClientID != g.ClientID {
			return nil, reauthErr(cred.TenantID, cred.ProviderID, "the client registration changed")
		}
		reg.ClientSecret = r.ClientSecret
	}
	return reg, nil
}

// doRefresh calls the token endpoint (bounded, jittered retries on 5xx,
// 429 and network errors, honouring Retry-After) and stores the result
// with a generation compare-and-swap.
func (s *TokenService) doRefresh(ctx context.Context, cred *repository.Credential, h *heldTokens, stale string, lease statestore.Lease) (*oauthclient.Tokens, *repository.Credential, error) {
	tenant, id := cred.TenantID, cred.ProviderID
	ctx = WithAuditScope(ctx, tenant, id)
	reg, err := s.registrationFor(ctx, cred, h.grant)
	if err != nil {
		return nil, nil, err
	}
	md := &oauthclient.Metadata{Issuer: h.grant.Issuer, TokenEndpoint: h.grant.TokenEndpoint, RevocationEndpoint: h.grant.RevocationEndpoint}
	var (
		fresh *oauthclient.Tokens
		rerr  error
	)
	for attempt := 1; attempt <= s.cfg.MaxAttempts; attempt++ {
		start := time.Now()
		fresh, rerr = s.proto.Refresh(ctx, md, reg, h.tokens.RefreshToken, h.grant.Resource)
		s.metrics.RefreshLatency.Observe(time.Since(start).Seconds())
		var temp *oauthclient.TemporaryError
		if rerr == nil || !errors.As(rerr, &temp) || attempt == s.cfg.MaxAttempts {
			break
		}
		wait := temp.RetryAfter
		if wait <= 0 {
			base := 200 * time.Millisecond << (attempt - 1)
			wait = base/2 + rand.N(base)
		}
		wait = min(wait, s.cfg.MaxRetryAfter)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait+persistBudget {
			// Another attempt could succeed too late to be stored under
			// the lease: stop while the old refresh token is still ours.
			break
		}
		if err := s.sleep(ctx, wait); err != nil {
			break
		}
	}
	switch {
	case rerr == nil:
	case errors.Is(rerr, oauthclient.ErrInvalidGrant), errors.Is(rerr, oauthclient.ErrInvalidClient):
		s.metrics.Refreshes.WithLabelValues("reauth_required").Inc()
		reason := "INVALID_GRANT"
		if errors.Is(rerr, oauthclient.ErrInvalidClient) {
			reason = "INVALID_CLIENT"
			if h.grant.RegMethod == RegDynamic {
				// The server forgot our client: register again at the next
				// authorization instead of failing forever.
				_ = s.store.DeleteClientRegistration(ctx, tenant, id, h.grant.Issuer)
			}
		}
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), persistBudget)
		defer cancel()
		return nil, nil, s.markReauth(mctx, cred, reason)
	default:
		s.metrics.Refreshes.WithLabelValues("unavailable").Inc()
		s.audit.Record(ctx, Event{Tenant: tenant, Type: EventTokenRefreshFailed, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE, Reason: "UNAVAILABLE"})
		if s.valid(h) && h.tokens.AccessToken.Reveal() != stale {
			// The old token still works: serve it while the server is down.
			return h.tokens, cred, nil
		}
		return nil, nil, apperr.Unavailable(rerr, "the authorization server could not refresh the token")
	}
	if fresh.RefreshToken.IsZero() {
		fresh.RefreshToken = h.tokens.RefreshToken
	}
	if len(fresh.Scopes) == 0 {
		fresh.Scopes = h.tokens.Scopes
	}
	if fresh.TokenType == "" {
		fresh.TokenType = h.tokens.TokenType
	}
	// The server may just have rotated the refresh token: storing the
	// result must not be cut short by the lease deadline the request ran
	// under. Keep the lease for the write, and give the write its own budget.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), persistBudget)
	defer cancel()
	if lease != nil {
		_ = lease.Extend(pctx, s.cfg.LockTTL)
	}
	var stored *repository.Credential
	for attempt := 1; attempt <= 3; attempt++ {
		stored, err = s.persist(pctx, cred, h.grant, fresh)
		if err == nil || apperr.KindOf(err) == apperr.KindAborted {
			break
		}
		_ = s.sleep(pctx, time.Duration(attempt)*100*time.Millisecond)
	}
	ctx = pctx
	if apperr.KindOf(err) == apperr.KindAborted {
		// Someone stored newer tokens meanwhile: theirs win, ours are dropped.
		latest, lh, lerr := s.load(ctx, tenant, id)
		if lerr != nil {
			return nil, nil, lerr
		}
		return lh.tokens, latest, nil
	}
	if err != nil {
		// The server rotated the refresh token but we could not store it:
		// the old one is probably dead. Say so instead of pretending.
		s.audit.Record(ctx, Event{Tenant: tenant, Type: EventTokenPersistFailure, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE, Reason: "DB_WRITE_FAILED"})
		_ = s.markReauth(ctx, cred, "PERSIST_FAILED")
		return nil, nil, apperr.Unavailable(err, "refreshed tokens could not be stored")
	}
	s.metrics.Refreshes.WithLabelValues("success").Inc()
	s.audit.Record(ctx, Event{Tenant: tenant, Type: EventTokenRefreshed, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS})
	return fresh, stored, nil
}

// persist stores refreshed tokens if the credential is still the one the
// refresh started from (generation compare-and-swap).
func (s *TokenService) persist(ctx context.Context, prev *repository.Credential, g grantInfo, t *oauthclient.Tokens) (*repository.Credential, error) {
	now := s.now().UTC()
	ct, err := sealTokens(s.cipher, prev.TenantID, prev.ProviderID, t, g, now)
	if err != nil {
		return nil, err
	}
	next := *prev
	next.Tokens, next.Scopes, next.HasRefresh = ct, jsonList(t.Scopes), !t.RefreshToken.IsZero()
	next.ExpiresAt = expiresPtr(t.ExpiresAt)
	next.Status = int32(mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED)
	next.Reason, next.RefreshFailures, next.LastRefreshAt = "", 0, &now
	next.KeyID, next.UpdatedAt = s.cipher.PrimaryID(), now
	s.cache.drop(prev.TenantID + "/" + prev.ProviderID)
	gen, err := s.store.PutCredential(ctx, &next, prev.Generation)
	// Dropped again after the write: a concurrent Get may have cached the
	// old credential between the first drop and the write.
	s.cache.drop(prev.TenantID + "/" + prev.ProviderID)
	if err != nil {
		return nil, err
	}
	next.Generation = gen
	return &next, nil
}

func expiresPtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// markReauth clears the tokens (keeping the client registration) and sets
// REAUTH_REQUIRED, unless newer tokens were stored meanwhile.
func (s *TokenService) markReauth(ctx context.Context, cred *repository.Credential, reason string) error {
	tenant, id := cred.TenantID, cred.ProviderID
	next := *cred
	// Empty, not nil: the column is NOT NULL, and empty means "no tokens".
	next.Tokens, next.HasRefresh, next.ExpiresAt = []byte{}, false, nil
	next.Status = int32(mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_REAUTH_REQUIRED)
	next.Reason = reason
	next.UpdatedAt = s.now().UTC()
	s.cache.drop(tenant + "/" + id)
	if _, err := s.store.PutCredential(ctx, &next, cred.Generation); err != nil {
		if apperr.KindOf(err) == apperr.KindAborted {
			// Newer tokens exist: a stale failure must not wipe them.
			return apperr.Aborted("the credential changed during the refresh; retry")
		}
		return err
	}
	if err := s.store.SetAuthStatus(ctx, tenant, id, int32(mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_REAUTH_REQUIRED)); err != nil {
		return err
	}
	s.metrics.ReauthRequired.Inc()
	s.audit.Record(ctx, Event{Tenant: tenant, Type: EventReauthRequired, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE, Reason: reason})
	why := map[string]string{
		"INVALID_GRANT":             "the authorization server rejected the refresh token",
		"INVALID_CLIENT":            "the authorization server no longer knows mcpauth's client",
		"MCP_SERVER_REJECTED_TOKEN": "the MCP server rejected a freshly refreshed token",
		"REFRESH_EXHAUSTED":         "the token could not be refreshed for too long",
		"PERSIST_FAILED":            "refreshed tokens could not be stored",
	}[reason]
	if why == "" {
		why = "the authorization is no longer valid"
	}
	return reauthErr(tenant, id, why)
}

// storeNew stores the tokens of a completed authorization, replacing any
// held before, and marks the provider AUTHORIZED.
func (s *TokenService) storeNew(ctx context.Context, row *repository.Provider, g grantInfo, t *oauthclient.Tokens) error {
	d, err := openProvider(s.cipher, row)
	if err != nil {
		return err
	}
	g.Server = validate.NormalizeURL(d.url)
	now := s.now().UTC()
	ct, err := sealTokens(s.cipher, row.TenantID, row.ID, t, g, now)
	if err != nil {
		return err
	}
	// A refresh finishing concurrently can win the compare-and-swap: re-read
	// and try again, so a code already exchanged is not thrown away.
	var gen int64
	for attempt := 1; ; attempt++ {
		var expected int64
		prev, err := s.store.GetCredential(ctx, row.TenantID, row.ID)
		switch {
		case err == nil:
			expected = prev.Generation
		case apperr.KindOf(err) != apperr.KindNotFound:
			return err
		}
		s.cache.drop(row.TenantID + "/" + row.ID)
		c := &repository.Credential{TenantID: row.TenantID, ProviderID: row.ID, Tokens: ct, Issuer: g.Issuer,
			Scopes: jsonList(t.Scopes), ExpiresAt: expiresPtr(t.ExpiresAt), HasRefresh: !t.RefreshToken.IsZero(),
			Status: int32(mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED), LastRefreshAt: &now,
			KeyID: s.cipher.PrimaryID(), UpdatedAt: now}
		gen, err = s.store.PutCredential(ctx, c, expected)
		if err == nil {
			break
		}
		if apperr.KindOf(err) != apperr.KindAborted || attempt == 3 {
			return err
		}
	}
	// The provider's server may have changed between the callback's check
	// and this write: then these tokens belong to the old server. Undo.
	cur, err := s.store.GetProvider(ctx, row.TenantID, row.ID)
	if err != nil {
		return err
	}
	cd, err := openProvider(s.cipher, cur)
	if err != nil {
		return err
	}
	if validate.NormalizeURL(cd.url) != g.Server {
		_ = s.store.DeleteCredential(ctx, row.TenantID, row.ID, gen)
		return apperr.Aborted("the provider's server changed during the authorization")
	}
	return s.store.SetAuthStatus(ctx, row.TenantID, row.ID, int32(mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED))
}

// revokeAtServer sends RFC 7009 revocations, refresh token first (which on
// most servers also kills the access tokens), then the access token. It
// reports whether every revocation was confirmed.
func (s *TokenService) revokeAtServer(ctx context.Context, cred *repository.Credential) bool {
	if len(cred.Tokens) == 0 {
		return false
	}
	tenant, id := cred.TenantID, cred.ProviderID
	ctx = WithAuditScope(ctx, tenant, id)
	h, err := openTokens(s.cipher, cred)
	if err != nil || h.grant.RevocationEndpoint == "" {
		return false
	}
	reg, err := s.registrationFor(ctx, cred, h.grant)
	if err != nil {
		s.audit.Record(ctx, Event{Tenant: tenant, Type: EventRevocationFailed, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE, Reason: "NO_CLIENT"})
		return false
	}
	md := &oauthclient.Metadata{Issuer: h.grant.Issuer, TokenEndpoint: h.grant.TokenEndpoint, RevocationEndpoint: h.grant.RevocationEndpoint}
	ok := true
	if !h.tokens.RefreshToken.IsZero() {
		if err := s.proto.Revoke(ctx, md, reg, h.tokens.RefreshToken, "refresh_token"); err != nil {
			ok = false
			s.audit.Record(ctx, Event{Tenant: tenant, Type: EventRevocationFailed, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE,
				Reason: "REVOKE_REFRESH_FAILED"})
		}
	}
	if err := s.proto.Revoke(ctx, md, reg, h.tokens.AccessToken, "access_token"); err != nil {
		ok = false
		s.audit.Record(ctx, Event{Tenant: tenant, Type: EventRevocationFailed, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE,
			Reason: "REVOKE_ACCESS_FAILED"})
	}
	return ok
}

// Revoke revokes the provider's tokens at the server when it can and
// deletes them locally, keeping the client registration.
func (s *TokenService) Revoke(ctx context.Context, tenant, id string) (bool, error) {
	cred, err := s.store.GetCredential(ctx, tenant, id)
	if apperr.KindOf(err) == apperr.KindNotFound {
		return false, s.store.SetAuthStatus(ctx, tenant, id, int32(mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED))
	}
	if err != nil {
		return false, err
	}
	revoked := s.revokeAtServer(ctx, cred)
	s.cache.drop(tenant + "/" + id)
	if err := s.store.DeleteCredential(ctx, tenant, id, 0); err != nil && apperr.KindOf(err) != apperr.KindNotFound {
		return revoked, err
	}
	if err := s.store.SetAuthStatus(ctx, tenant, id, int32(mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED)); err != nil {
		return revoked, err
	}
	s.audit.Record(ctx, Event{Tenant: tenant, Type: EventAuthRevoked, Provider: id, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS,
		Details: map[string]string{"revoked_at_server": boolString(revoked)}})
	return revoked, nil
}

// RevokeBeforeDelete revokes at the server before a provider is deleted;
// failures are audited and never block the delete.
func (s *TokenService) RevokeBeforeDelete(ctx context.Context, tenant, id string) bool {
	s.cache.drop(tenant + "/" + id)
	cred, err := s.store.GetCredential(ctx, tenant, id)
	if err != nil {
		return false
	}
	return s.revokeAtServer(ctx, cred)
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// MarkReauth marks the provider's authorization dead after the MCP server
// rejected a freshly refreshed token, if the stored credential is still at
// generation (the one that was rejected). If newer tokens were stored
// meanwhile, nothing is wiped and the caller gets ABORTED (retry).
func (s *TokenService) MarkReauth(ctx context.Context, tenant, id, reason string, generation int64) error {
	cred, err := s.store.GetCredential(ctx, tenant, id)
	if err != nil {
		return err
	}
	if cred.Generation != generation {
		return apperr.Aborted("the credential changed meanwhile; retry")
	}
	return s.markReauth(ctx, cred, reason)
}

// refreshIdle refreshes an authorization in the background even though its
// access token may still be fresh, so refresh tokens that expire when
// unused stay alive. It takes the same lock as on-demand refreshes.
func (s *TokenService) refreshIdle(ctx context.Context, tenant, id string) (*oauthclient.Tokens, error) {
	_, h, err := s.load(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	if h.tokens.RefreshToken.IsZero() {
		return nil, apperr.FailedPrecondition("TOKEN_EXPIRED", "no refresh token")
	}
	// Passing the current access token as "stale" makes refreshLocked skip
	// the refresh only if another replica already rotated it.
	t, _, err := s.refreshShared(ctx, tenant, id, h.tokens.AccessToken.Reveal())
	return t, err
}
