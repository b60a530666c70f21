// Package grants is the token lifecycle use case: it serves valid access
// tokens, refreshes them ahead of expiry with one refresh per grant at a
// time across replicas, marks dead grants REAUTH_REQUIRED, stores the tokens
// of completed authorizations, revokes grants (RFC 7009), and keeps idle
// grants alive in the background (Refresher). A grant's status and reason
// live on its credential row and are written with its tokens.
package grants

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"strconv"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/retry"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/statestore"
	"github.com/mcpauth/mcpauth/validate"
)

// Store persists grants and reads what they need.
// *repository.Store implements it.
type Store interface {
	vault.ProviderGetter
	GetCredential(ctx context.Context, tenant, providerID string) (*repository.Credential, error)
	PutCredential(ctx context.Context, c *repository.Credential, expectedGeneration int64) (int64, error)
	DeleteCredential(ctx context.Context, tenant, providerID string, expectedGeneration int64) error
	GetClientRegistration(ctx context.Context, tenant, providerID, issuer string) (*repository.ClientRegistration, error)
	DeleteClientRegistration(ctx context.Context, tenant, providerID, issuer string) error
}

var _ Store = (*repository.Store)(nil)

// Protocol refreshes and revokes tokens. *oauthclient.Client implements it.
type Protocol interface {
	Refresh(ctx context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, refreshToken secret.Secret, resource string) (*oauthclient.Tokens, error)
	Revoke(ctx context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, token secret.Secret, hint string) error
}

// Locker gives one refresher per grant across replicas (Redis SET NX PX in
// production). statestore.Store implements it.
type Locker interface {
	Lock(ctx context.Context, key string, ttl time.Duration) (statestore.Lease, error)
	WaitUnlocked(ctx context.Context, key string) error
}

// ReadCounter counts token reads handed to callers: the token-read audit,
// aggregated per caller, provider and minute and stored asynchronously
// (see package readlog for the loss bound). *readlog.Aggregator implements
// it.
type ReadCounter interface {
	Record(ctx context.Context, tenant, provider string)
}

// Clock tells the time; tests pass a stepping clock.
type Clock func() time.Time

// Config tunes the token lifecycle.
type Config struct {
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

// Service keeps tokens valid: proactive refresh, one refresh per grant at a
// time across replicas (in-process single-flight, a cross-replica lock, a
// re-read after acquiring it, and a generation compare-and-swap so a stale
// result never overwrites newer tokens).
type Service struct {
	store   Store
	cipher  vault.Cipher
	proto   Protocol
	locks   Locker
	audit   audit.Recorder
	reads   ReadCounter
	log     *slog.Logger
	now     Clock
	cfg     Config
	metrics *metrics.Metrics
	sf      singleflight.Group
	loads   singleflight.Group // cache misses of one grant share one read
	cache   *tokenCache
}

// Deps are what New needs. Now defaults to time.Now.
type Deps struct {
	Store   Store
	Cipher  vault.Cipher
	Proto   Protocol
	Locks   Locker
	Audit   audit.Recorder
	Reads   ReadCounter
	Log     *slog.Logger
	Now     Clock
	Config  Config
	Metrics *metrics.Metrics
}

// New returns the token lifecycle service.
func New(d Deps) (*Service, error) {
	if d.Store == nil || d.Cipher == nil || d.Proto == nil || d.Locks == nil || d.Audit == nil || d.Reads == nil || d.Log == nil || d.Metrics == nil {
		return nil, errors.New("grants: store, cipher, proto, locks, audit, reads, log and metrics are required")
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
	return &Service{store: d.Store, cipher: d.Cipher, proto: d.Proto, locks: d.Locks, audit: d.Audit, reads: d.Reads, log: d.Log,
		now: d.Now, cfg: d.Config, metrics: d.Metrics, cache: newTokenCache(d.Config.CacheTTL)}, nil
}

// persistBudget is the time reserved for storing a refresh's result.
const persistBudget = 5 * time.Second

// margin is how long before expiry a token counts as due for refresh: a
// quarter of its lifetime, capped, so a 2-second token is not refreshed on
// every read and an hour-long one is refreshed a minute early.
func (s *Service) margin(h *vault.Held) time.Duration {
	life := h.Tokens.ExpiresAt.Sub(h.IssuedAt)
	if h.IssuedAt.IsZero() || life <= 0 {
		return s.cfg.MarginMax
	}
	return min(life/4, s.cfg.MarginMax)
}

// fresh reports whether the held token can be served without refreshing.
func (s *Service) fresh(h *vault.Held) bool {
	if h.Tokens.ExpiresAt.IsZero() {
		return true
	}
	return s.now().Add(s.margin(h)).Before(h.Tokens.ExpiresAt)
}

func (s *Service) valid(h *vault.Held) bool {
	return h.Tokens.ExpiresAt.IsZero() || s.now().Before(h.Tokens.ExpiresAt)
}

// ReauthRequired is the error when a person must authorize again; why is a
// plain sentence for the caller.
func ReauthRequired(why string) error {
	return apperr.FailedPrecondition(domain.ReasonReauthRequired, "%s: authorize the provider again", why)
}

// notAuthorized is the error for a provider that holds no grant.
func notAuthorized() error {
	return apperr.FailedPrecondition(domain.ReasonNotAuthorized, "the provider is not authorized: call StartAuthorization")
}

// reauthWhy explains a dead grant's reason in plain words.
func reauthWhy(reason string) string {
	switch reason {
	case domain.ReasonInvalidGrant:
		return "the authorization server rejected the refresh token"
	case domain.ReasonInvalidClient:
		return "the authorization server no longer knows mcpauth's client"
	case domain.ReasonMCPServerRejectedToken:
		return "the MCP server rejected a freshly refreshed token"
	case domain.ReasonRefreshExhausted:
		return "the token could not be refreshed for too long"
	case domain.ReasonPersistFailed:
		return "refreshed tokens could not be stored"
	case domain.ReasonNoClient:
		return "the client the tokens were issued to is gone or was replaced"
	}
	return "the authorization is no longer valid"
}

// load reads and opens the provider's grant, mapping a grant without
// tokens to a precise precondition error.
func (s *Service) load(ctx context.Context, tenant, id string) (*repository.Credential, *vault.Held, error) {
	cred, err := s.store.GetCredential(ctx, tenant, id)
	if apperr.KindOf(err) == apperr.KindNotFound {
		return nil, nil, s.noGrant(ctx, tenant, id)
	}
	if err != nil {
		return nil, nil, err
	}
	switch {
	case cred.Status == domain.StatusReauthRequired:
		return cred, nil, ReauthRequired(reauthWhy(cred.Reason))
	case cred.Status != domain.StatusAuthorized:
		return cred, nil, s.noGrant(ctx, tenant, id)
	case len(cred.Tokens) == 0:
		return cred, nil, ReauthRequired("the provider holds no tokens")
	}
	h, err := vault.OpenTokens(s.cipher, cred)
	if err != nil {
		return nil, nil, err
	}
	return cred, h, nil
}

// noGrant explains why a provider holds no usable grant, existence first:
// a provider (or tenant) that does not exist is NOT_FOUND, so a caller is
// never told to start an authorization that cannot start; a server that
// asks for no authorization needs no token; otherwise the provider is not
// authorized yet.
func (s *Service) noGrant(ctx context.Context, tenant, id string) error {
	row, err := s.store.GetProvider(ctx, tenant, id)
	if err != nil {
		return err
	}
	if st, _ := row.AuthStatus(); st == domain.StatusNotRequired {
		return apperr.FailedPrecondition(domain.ReasonNotRequired,
			"the provider's MCP server asks for no authorization: no access token is needed")
	}
	return notAuthorized()
}

// Token is a valid access token and what it was issued with.
type Token struct {
	AccessToken secret.Secret
	TokenType   string
	Scopes      []string
	Issuer      string
	// ExpiresAt is zero when the server gave no lifetime.
	ExpiresAt time.Time
	// Generation is the credential generation the token belongs to.
	Generation int64
	// Grant is what the token was issued under, sealed with it.
	Grant vault.Grant
}

func token(t *oauthclient.Tokens, cred *repository.Credential, g vault.Grant) *Token {
	typ := t.TokenType
	if typ == "" {
		typ = "Bearer"
	}
	return &Token{AccessToken: t.AccessToken, TokenType: typ, Scopes: t.Scopes, Issuer: cred.Issuer, ExpiresAt: t.ExpiresAt,
		Generation: cred.Generation, Grant: g}
}

// AccessToken returns a valid access token for the provider to a caller
// that asked for it, refreshing first when it is due, and counts the read
// (per caller, provider and minute; not a synchronous audit row: see
// ReadCounter). A failed read is not a read; the refresh and reauth events
// it may cause are audited synchronously as before.
func (s *Service) AccessToken(ctx context.Context, tenant, id string) (*Token, error) {
	t, err := s.Get(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	s.reads.Record(ctx, tenant, id)
	return t, nil
}

// Get returns a valid access token for the provider, refreshing first when
// it is due, together with the grant it was issued under (from the same
// decryption: callers that check where a token may go need it every time).
func (s *Service) Get(ctx context.Context, tenant, id string) (*Token, error) {
	key := tenant + "/" + id
	now := s.now()
	if e, ok := s.cache.get(key, now); ok && s.fresh(e.held) {
		s.metrics.TokensServed.Inc()
		return token(e.held.Tokens, e.cred, e.held.Grant), nil
	}
	epoch := s.cache.now()
	cred, h, err := s.loadShared(ctx, s.cache.shareKey(key, epoch), tenant, id)
	if err != nil {
		return nil, err
	}
	if s.fresh(h) {
		s.cache.put(key, cred, h, now, epoch)
		s.metrics.TokensServed.Inc()
		return token(h.Tokens, cred, h.Grant), nil
	}
	s.cache.drop(key)
	return s.refreshShared(ctx, tenant, id, "")
}

// loadShared is load for a cache miss: concurrent misses of one grant in
// this process (every caller of a busy grant, each time its cache entry
// ends) share one read and one decryption instead of one each. The read
// does not end with the first caller's context, which the others did not
// choose.
func (s *Service) loadShared(ctx context.Context, key, tenant, id string) (*repository.Credential, *vault.Held, error) {
	type loaded struct {
		cred *repository.Credential
		held *vault.Held
	}
	ch := s.loads.DoChan(key, func() (any, error) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), persistBudget)
		defer cancel()
		cred, h, err := s.load(lctx, tenant, id)
		return loaded{cred, h}, err
	})
	select {
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	case r := <-ch:
		l, _ := r.Val.(loaded)
		return l.cred, l.held, r.Err
	}
}

// ForceRefresh refreshes after the MCP server rejected staleAccess (401),
// unless the stored token already differs from it (someone else refreshed).
// Callers must use the token it returns, never a cached copy.
func (s *Service) ForceRefresh(ctx context.Context, tenant, id string, staleAccess secret.Secret) (*Token, error) {
	s.cache.drop(tenant + "/" + id)
	return s.refreshShared(ctx, tenant, id, staleAccess.Reveal())
}

// Forget drops the provider's cached credential on this replica.
func (s *Service) Forget(tenant, id string) { s.cache.drop(tenant + "/" + id) }

// refreshShared collapses concurrent refreshes of one grant in this process
// into one; the cross-replica lock is taken inside.
func (s *Service) refreshShared(ctx context.Context, tenant, id, stale string) (*Token, error) {
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
		return s.refreshLocked(rctx, tenant, id, stale)
	})
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		s.metrics.TokensServed.Inc()
		return r.Val.(*Token), nil
	}
}

// refreshLocked takes the grant's cross-replica lock, re-reads the
// credential (another replica may have refreshed already), and refreshes
// only if it is still due.
func (s *Service) refreshLocked(ctx context.Context, tenant, id, stale string) (*Token, error) {
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
				return nil, apperr.Unavailable(err, "refresh lock store unavailable")
			}
			return nil, apperr.Internal(err, "refresh lock")
		}
		if err := s.locks.WaitUnlocked(ctx, lockKey); err != nil {
			return nil, apperr.Unavailable(err, "waiting for another refresh of this provider")
		}
		// The holder released: its result is probably stored already.
		cred, h, err := s.load(ctx, tenant, id)
		if err != nil {
			return nil, err
		}
		if s.usable(h, stale) {
			s.metrics.LockWaits.Observe(time.Since(waitStart).Seconds())
			return token(h.Tokens, cred, h.Grant), nil
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
		return nil, err
	}
	if s.usable(h, stale) {
		return token(h.Tokens, cred, h.Grant), nil
	}
	if h.Tokens.RefreshToken.IsZero() {
		if s.valid(h) && stale == "" {
			return token(h.Tokens, cred, h.Grant), nil
		}
		return nil, apperr.FailedPrecondition(domain.ReasonTokenExpired, "the access token expired and the server issued no refresh token: authorize the provider again")
	}
	return s.doRefresh(ctx, cred, h, stale, lease)
}

// usable reports whether held tokens can be served: fresh, and not the
// token the MCP server just rejected.
func (s *Service) usable(h *vault.Held, stale string) bool {
	if stale != "" {
		return h.Tokens.AccessToken.Reveal() != stale && s.valid(h)
	}
	return s.fresh(h)
}

// registrationFor rebuilds the client the tokens were granted to.
func (s *Service) registrationFor(ctx context.Context, cred *repository.Credential, g vault.Grant) (*oauthclient.Registration, error) {
	reg := &oauthclient.Registration{Method: g.RegMethod, ClientID: g.ClientID, AuthMethod: g.AuthMethod}
	switch g.RegMethod {
	case domain.RegPreRegistered:
		row, err := s.store.GetProvider(ctx, cred.TenantID, cred.ProviderID)
		if err != nil {
			return nil, err
		}
		if row.ClientID != g.ClientID {
			return nil, ReauthRequired("the pre-registered client changed")
		}
		d, err := vault.OpenProvider(s.cipher, row)
		if err != nil {
			return nil, err
		}
		reg.ClientSecret = d.ClientSecret
	case domain.RegDynamic:
		stored, err := s.store.GetClientRegistration(ctx, cred.TenantID, cred.ProviderID, g.Issuer)
		if apperr.KindOf(err) == apperr.KindNotFound {
			return nil, ReauthRequired("the client registration is gone")
		}
		if err != nil {
			return nil, err
		}
		r, err := vault.OpenRegistration(s.cipher, stored)
		if err != nil {
			return nil, err
		}
		if r.ClientID != g.ClientID {
			return nil, ReauthRequired("the client registration changed")
		}
		reg.ClientSecret = r.ClientSecret
	}
	return reg, nil
}

// callRefresh calls the token endpoint with bounded, jittered retries on
// 5xx, 429 and network errors, honouring Retry-After. It stops early while
// the old refresh token is still ours: an attempt that could succeed too
// late to be stored under the lease is not made.
func (s *Service) callRefresh(ctx context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, h *vault.Held) (*oauthclient.Tokens, error) {
	var fresh *oauthclient.Tokens
	// Waits in [100ms, 300ms], then [200ms, 600ms]...
	p := retry.Policy{Attempts: s.cfg.MaxAttempts, Base: 300 * time.Millisecond, Max: s.cfg.MaxRetryAfter, Jitter: 2.0 / 3, Reserve: persistBudget}
	err := retry.Do(ctx, p, func(ctx context.Context, _ int) error {
		start := time.Now()
		t, err := s.proto.Refresh(ctx, md, reg, h.Tokens.RefreshToken, h.Grant.Resource)
		s.metrics.RefreshLatency.Observe(time.Since(start).Seconds())
		var temp *oauthclient.TemporaryError
		switch {
		case err == nil:
			fresh = t
			return nil
		case errors.As(err, &temp) && temp.RetryAfter > 0:
			return retry.After(err, temp.RetryAfter)
		case errors.As(err, &temp):
			return err
		}
		return retry.Permanent(err)
	})
	return fresh, err
}

// doRefresh refreshes the tokens and stores the result with a generation
// compare-and-swap.
func (s *Service) doRefresh(ctx context.Context, cred *repository.Credential, h *vault.Held, stale string, lease statestore.Lease) (*Token, error) {
	tenant, id := cred.TenantID, cred.ProviderID
	ctx = audit.WithScope(ctx, tenant, id)
	reg, err := s.registrationFor(ctx, cred, h.Grant)
	if e, ok := apperr.As(err); ok && e.Reason == domain.ReasonReauthRequired {
		// The client the tokens were issued to is gone or was replaced:
		// the grant can never be refreshed again. Say so where the status
		// lives, so reads and the background refresher stop trying.
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), persistBudget)
		defer cancel()
		return nil, s.markReauth(mctx, cred, domain.ReasonNoClient)
	}
	if err != nil {
		return nil, err
	}
	md := &oauthclient.Metadata{Issuer: h.Grant.Issuer, TokenEndpoint: h.Grant.TokenEndpoint, RevocationEndpoint: h.Grant.RevocationEndpoint}
	fresh, rerr := s.callRefresh(ctx, md, reg, h)
	switch {
	case rerr == nil:
	case errors.Is(rerr, oauthclient.ErrInvalidGrant), errors.Is(rerr, oauthclient.ErrInvalidClient):
		s.metrics.Refreshes.WithLabelValues("reauth_required").Inc()
		reason := domain.ReasonInvalidGrant
		if errors.Is(rerr, oauthclient.ErrInvalidClient) {
			reason = domain.ReasonInvalidClient
			if h.Grant.RegMethod == domain.RegDynamic {
				// The server forgot our client: register again at the next
				// authorization instead of failing forever.
				_ = s.store.DeleteClientRegistration(ctx, tenant, id, h.Grant.Issuer)
			}
		}
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), persistBudget)
		defer cancel()
		return nil, s.markReauth(mctx, cred, reason)
	default:
		s.metrics.Refreshes.WithLabelValues("unavailable").Inc()
		s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventTokenRefreshFailed, Provider: id, Outcome: domain.OutcomeFailure, Reason: domain.ReasonUnavailable})
		if s.valid(h) && h.Tokens.AccessToken.Reveal() != stale {
			// The old token still works: serve it while the server is down.
			return token(h.Tokens, cred, h.Grant), nil
		}
		return nil, apperr.Unavailable(rerr, "the authorization server could not refresh the token")
	}
	if fresh.RefreshToken.IsZero() {
		fresh.RefreshToken = h.Tokens.RefreshToken
	}
	if len(fresh.Scopes) == 0 {
		fresh.Scopes = h.Tokens.Scopes
	}
	if fresh.TokenType == "" {
		fresh.TokenType = h.Tokens.TokenType
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
	err = retry.Do(pctx, retry.Policy{Attempts: 3, Base: 100 * time.Millisecond, Max: 300 * time.Millisecond},
		func(ctx context.Context, _ int) error {
			var perr error
			stored, perr = s.persist(ctx, cred, h.Grant, fresh)
			if apperr.KindOf(perr) == apperr.KindAborted {
				return retry.Permanent(perr)
			}
			return perr
		})
	ctx = pctx
	if apperr.KindOf(err) == apperr.KindAborted {
		// Someone stored newer tokens meanwhile: theirs win, ours are dropped.
		latest, lh, lerr := s.load(ctx, tenant, id)
		if lerr != nil {
			return nil, lerr
		}
		return token(lh.Tokens, latest, lh.Grant), nil
	}
	if err != nil {
		// The server rotated the refresh token but we could not store it:
		// the old one is probably dead. Say so instead of pretending.
		s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventTokenPersistFailure, Provider: id, Outcome: domain.OutcomeFailure, Reason: domain.ReasonDBWriteFailed})
		_ = s.markReauth(ctx, cred, domain.ReasonPersistFailed)
		return nil, apperr.Unavailable(err, "refreshed tokens could not be stored")
	}
	s.metrics.Refreshes.WithLabelValues("success").Inc()
	s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventTokenRefreshed, Provider: id, Outcome: domain.OutcomeSuccess})
	return token(fresh, stored, h.Grant), nil
}

// persist stores refreshed tokens if the credential is still the one the
// refresh started from (generation compare-and-swap).
func (s *Service) persist(ctx context.Context, prev *repository.Credential, g vault.Grant, t *oauthclient.Tokens) (*repository.Credential, error) {
	now := s.now().UTC()
	ct, err := vault.SealTokens(s.cipher, prev.TenantID, prev.ProviderID, t, g, now)
	if err != nil {
		return nil, err
	}
	next := *prev
	next.Tokens, next.Scopes, next.HasRefresh = ct, vault.JSONList(t.Scopes), !t.RefreshToken.IsZero()
	next.ExpiresAt = vault.ExpiresPtr(t.ExpiresAt)
	next.Status = domain.StatusAuthorized
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

// markReauth clears the tokens (keeping the client registration) and sets
// REAUTH_REQUIRED with its reason in the same write, unless newer tokens
// were stored meanwhile.
func (s *Service) markReauth(ctx context.Context, cred *repository.Credential, reason string) error {
	tenant, id := cred.TenantID, cred.ProviderID
	next := *cred
	// Empty, not nil: the column is NOT NULL, and empty means "no tokens".
	next.Tokens, next.HasRefresh, next.ExpiresAt = []byte{}, false, nil
	next.Status = domain.StatusReauthRequired
	next.Reason = reason
	next.UpdatedAt = s.now().UTC()
	s.cache.drop(tenant + "/" + id)
	_, err := s.store.PutCredential(ctx, &next, cred.Generation)
	// Dropped again after the write: a concurrent Get may have cached the
	// old credential in between.
	s.cache.drop(tenant + "/" + id)
	if err != nil {
		if apperr.KindOf(err) == apperr.KindAborted {
			// Newer tokens exist: a stale failure must not wipe them.
			return apperr.Aborted("the credential changed during the refresh; retry")
		}
		return err
	}
	s.metrics.ReauthRequired.Inc()
	s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventReauthRequired, Provider: id, Outcome: domain.OutcomeFailure, Reason: reason})
	return ReauthRequired(reauthWhy(reason))
}

// MarkReauth marks the grant dead with reason (for example after the MCP
// server rejected a freshly refreshed token), if the stored credential is
// still at generation (the one that was rejected). If newer tokens were
// stored meanwhile, nothing is wiped and the caller gets ABORTED (retry).
// On success it returns the REAUTH_REQUIRED error to give the caller.
func (s *Service) MarkReauth(ctx context.Context, tenant, id, reason string, generation int64) error {
	cred, err := s.store.GetCredential(ctx, tenant, id)
	if err != nil {
		return err
	}
	if cred.Generation != generation {
		return apperr.Aborted("the credential changed meanwhile; retry")
	}
	return s.markReauth(ctx, cred, reason)
}

// StoreNew stores the tokens of a completed authorization of row's server,
// replacing any held before; the grant becomes AUTHORIZED in the same write.
func (s *Service) StoreNew(ctx context.Context, row *repository.Provider, g vault.Grant, t *oauthclient.Tokens) error {
	d, err := vault.OpenProvider(s.cipher, row)
	if err != nil {
		return err
	}
	g.Server = validate.NormalizeURL(d.URL)
	now := s.now().UTC()
	ct, err := vault.SealTokens(s.cipher, row.TenantID, row.ID, t, g, now)
	if err != nil {
		return err
	}
	// A refresh finishing concurrently can win the compare-and-swap: re-read
	// and try again, so a code already exchanged is not thrown away.
	var gen int64
	err = retry.Do(ctx, retry.Policy{Attempts: 3}, func(ctx context.Context, _ int) error {
		var expected int64
		prev, err := s.store.GetCredential(ctx, row.TenantID, row.ID)
		switch {
		case err == nil:
			expected = prev.Generation
		case apperr.KindOf(err) != apperr.KindNotFound:
			return retry.Permanent(err)
		}
		s.cache.drop(row.TenantID + "/" + row.ID)
		c := &repository.Credential{TenantID: row.TenantID, ProviderID: row.ID, Tokens: ct, Issuer: g.Issuer,
			Scopes: vault.JSONList(t.Scopes), ExpiresAt: vault.ExpiresPtr(t.ExpiresAt), HasRefresh: !t.RefreshToken.IsZero(),
			Status: domain.StatusAuthorized, LastRefreshAt: &now, KeyID: s.cipher.PrimaryID(), UpdatedAt: now}
		gen, err = s.store.PutCredential(ctx, c, expected)
		s.cache.drop(row.TenantID + "/" + row.ID)
		if err != nil && apperr.KindOf(err) != apperr.KindAborted {
			return retry.Permanent(err)
		}
		return err
	})
	if err != nil {
		return err
	}
	// The provider's server may have changed between the callback's check
	// and this write: then these tokens belong to the old server. Undo.
	cur, err := s.store.GetProvider(ctx, row.TenantID, row.ID)
	if err != nil {
		return err
	}
	cu, err := vault.OpenURL(s.cipher, cur)
	if err != nil {
		return err
	}
	if validate.NormalizeURL(cu) != g.Server {
		_ = s.store.DeleteCredential(ctx, row.TenantID, row.ID, gen)
		return apperr.Aborted("the provider's server changed during the authorization")
	}
	return nil
}

// pendingRevocation is what revoking a grant at its server needs, read while the
// grant and its client registration are still stored.
type pendingRevocation struct {
	tenant, id string
	held       *vault.Held
	reg        *oauthclient.Registration
	// noClient: the client the tokens were issued to could not be rebuilt.
	noClient bool
}

// prepareRevocation reads what revoking cred needs; nil when there is
// nothing to revoke (no tokens, or a server without a revocation endpoint).
func (s *Service) prepareRevocation(ctx context.Context, cred *repository.Credential) *pendingRevocation {
	if len(cred.Tokens) == 0 {
		return nil
	}
	h, err := vault.OpenTokens(s.cipher, cred)
	if err != nil || h.Grant.RevocationEndpoint == "" {
		return nil
	}
	rv := &pendingRevocation{tenant: cred.TenantID, id: cred.ProviderID, held: h}
	if rv.reg, err = s.registrationFor(ctx, cred, h.Grant); err != nil {
		rv.noClient = true
	}
	return rv
}

// revokeAtServer sends RFC 7009 revocations, refresh token first (which on
// most servers also kills the access tokens), then the access token. It
// reports whether every revocation was confirmed, and audits failures.
func (s *Service) revokeAtServer(ctx context.Context, rv *pendingRevocation) bool {
	if rv == nil {
		return false
	}
	ctx = audit.WithScope(ctx, rv.tenant, rv.id)
	failed := func(reason string) {
		s.audit.Record(ctx, audit.Event{Tenant: rv.tenant, Type: domain.EventRevocationFailed, Provider: rv.id, Outcome: domain.OutcomeFailure, Reason: reason})
	}
	if rv.noClient {
		failed(domain.ReasonNoClient)
		return false
	}
	g, t := rv.held.Grant, rv.held.Tokens
	md := &oauthclient.Metadata{Issuer: g.Issuer, TokenEndpoint: g.TokenEndpoint, RevocationEndpoint: g.RevocationEndpoint}
	ok := true
	if !t.RefreshToken.IsZero() {
		if err := s.proto.Revoke(ctx, md, rv.reg, t.RefreshToken, "refresh_token"); err != nil {
			ok = false
			failed(domain.ReasonRevokeRefreshFailed)
		}
	}
	if err := s.proto.Revoke(ctx, md, rv.reg, t.AccessToken, "access_token"); err != nil {
		ok = false
		failed(domain.ReasonRevokeAccessFailed)
	}
	return ok
}

// Revoke revokes the provider's grant at the server when it can and
// deletes it locally (the provider becomes UNAUTHORIZED), keeping the
// client registration. It reports whether the server confirmed.
func (s *Service) Revoke(ctx context.Context, tenant, id string) (bool, error) {
	cred, err := s.store.GetCredential(ctx, tenant, id)
	if apperr.KindOf(err) == apperr.KindNotFound {
		// No grant: the provider is UNAUTHORIZED already, if it exists.
		_, err := s.store.GetProvider(ctx, tenant, id)
		return false, err
	}
	if err != nil {
		return false, err
	}
	// Delete exactly the grant read (tokens stored meanwhile are read and
	// deleted on the next attempt), then revoke what was deleted: a grant
	// is never revoked at the server while it stays stored.
	var rv *pendingRevocation
	err = retry.Do(ctx, retry.Policy{Attempts: 3}, func(ctx context.Context, attempt int) error {
		if attempt > 1 {
			if cred, err = s.store.GetCredential(ctx, tenant, id); err != nil {
				return retry.Permanent(err)
			}
		}
		rv = s.prepareRevocation(ctx, cred)
		s.cache.drop(tenant + "/" + id)
		err := s.store.DeleteCredential(ctx, tenant, id, cred.Generation)
		s.cache.drop(tenant + "/" + id)
		if apperr.KindOf(err) == apperr.KindAborted {
			return err
		}
		return retry.Permanent(err)
	})
	if err != nil && apperr.KindOf(err) != apperr.KindNotFound {
		return false, err
	}
	revoked := s.revokeAtServer(ctx, rv)
	s.audit.Record(ctx, audit.Event{Tenant: tenant, Type: domain.EventAuthRevoked, Provider: id, Outcome: domain.OutcomeSuccess,
		Details: map[string]string{"revoked_at_server": strconv.FormatBool(revoked)}})
	return revoked, nil
}

// PrepareRevoke reads the provider's grant as held now and returns its
// revocation at the server, to run once the change that forgets the grant
// (a delete, a new server URL) has committed. The revocation reports
// whether the server confirmed; failures are audited and never block the
// caller.
func (s *Service) PrepareRevoke(ctx context.Context, tenant, id string) func(context.Context) bool {
	var rv *pendingRevocation
	if cred, err := s.store.GetCredential(ctx, tenant, id); err == nil {
		rv = s.prepareRevocation(ctx, cred)
	}
	return func(ctx context.Context) bool {
		s.cache.drop(tenant + "/" + id)
		return s.revokeAtServer(ctx, rv)
	}
}

// Status is what a provider's grant looks like now.
type Status struct {
	Status     domain.AuthStatus
	Reason     string
	Issuer     string
	Scopes     []string
	HasRefresh bool
	ExpiresAt  time.Time
}

// Status reports the provider's grant: its status and reason as stored with
// the tokens, EXPIRED when the access token expired and cannot be
// refreshed.
func (s *Service) Status(ctx context.Context, tenant, id string) (*Status, error) {
	row, err := s.store.GetProvider(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	st, reason := row.AuthStatus()
	out := &Status{Status: st, Reason: reason}
	if row.GrantStatus == domain.StatusUnknown {
		return out, nil
	}
	cred, err := s.store.GetCredential(ctx, tenant, id)
	if apperr.KindOf(err) == apperr.KindNotFound {
		return &Status{Status: domain.StatusUnauthorized}, nil
	}
	if err != nil {
		return nil, err
	}
	out = &Status{Status: cred.Status, Reason: cred.Reason, Issuer: cred.Issuer, Scopes: vault.ParseList(cred.Scopes), HasRefresh: cred.HasRefresh}
	if cred.ExpiresAt != nil {
		out.ExpiresAt = *cred.ExpiresAt
		if out.Status == domain.StatusAuthorized && !cred.HasRefresh && !cred.ExpiresAt.After(s.now()) {
			out.Status = domain.StatusExpired
			out.Reason = "access token expired and no refresh token is held"
		}
	}
	return out, nil
}

// refreshIdle refreshes a grant in the background even though its access
// token may still be fresh, so refresh tokens that expire when unused stay
// alive. It takes the same lock as on-demand refreshes.
func (s *Service) refreshIdle(ctx context.Context, tenant, id string) error {
	_, h, err := s.load(ctx, tenant, id)
	if err != nil {
		return err
	}
	if h.Tokens.RefreshToken.IsZero() {
		return apperr.FailedPrecondition(domain.ReasonTokenExpired, "no refresh token")
	}
	// Passing the current access token as "stale" makes refreshLocked skip
	// the refresh only if another replica already rotated it.
	_, err = s.refreshShared(ctx, tenant, id, h.Tokens.AccessToken.Reveal())
	return err
}
