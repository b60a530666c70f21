// Package grants is the token lifecycle use case: it serves valid access
// tokens, refreshes them ahead of expiry with one refresh per grant at a
// time across replicas, marks dead grants REAUTH_REQUIRED, stores the tokens
// of completed authorizations, revokes grants (RFC 7009), and keeps idle
// grants alive in the background (Refresher). A grant's status and reason
// live on its credential row and are written with its tokens.
package grants

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	mrand "math/rand/v2"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/dpop"
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
	GetCredential(ctx context.Context, g domain.GrantRef) (*repository.Credential, error)
	// The write methods take the audit events of the change and store them
	// in its transaction.
	PutCredential(ctx context.Context, c *repository.Credential, expectedGeneration int64, events ...*repository.AuditEvent) (int64, error)
	// PutCredentialAtProvider is PutCredential that stores only while the
	// provider is still at providerVersion, checked in the write's
	// transaction; otherwise FAILED_PRECONDITION PROVIDER_CHANGED.
	PutCredentialAtProvider(ctx context.Context, c *repository.Credential, expectedGeneration, providerVersion int64, events ...*repository.AuditEvent) (int64, error)
	DeleteCredential(ctx context.Context, g domain.GrantRef, expectedGeneration int64, events ...*repository.AuditEvent) error
	// ProviderGrants lists every grant of a provider that holds tokens
	// (its tenant-wide grant or its connections), for revoking them all.
	ProviderGrants(ctx context.Context, tenant, provider string) ([]repository.Credential, error)
	GetClientRegistration(ctx context.Context, tenant, providerID, issuer string) (*repository.ClientRegistration, error)
	DeleteClientRegistration(ctx context.Context, tenant, providerID, issuer string) error
	// The refresh lease (see refreshLeased): the database, not Redis, says
	// who may spend a grant's refresh token.
	AcquireRefreshLease(ctx context.Context, g domain.GrantRef, generation int64, holder string, ttl time.Duration) (repository.LeaseAcquired, error)
	ExtendRefreshLease(ctx context.Context, g domain.GrantRef, holder string, ttl time.Duration) error
	ReleaseRefreshLease(ctx context.Context, g domain.GrantRef, holder string) error
	BackoffRefreshLease(ctx context.Context, g domain.GrantRef, holder string, d time.Duration) error
}

var _ Store = (*repository.Store)(nil)

// Protocol refreshes and revokes tokens. *oauthclient.Client implements it.
type Protocol interface {
	Refresh(ctx context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, refreshToken secret.Secret, resource string) (*oauthclient.Tokens, error)
	Revoke(ctx context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, token secret.Secret, hint string) error
}

// Locker queues refreshers of one grant across replicas (Redis in
// production), so that they wait on Redis rather than poll the database.
// It is only the fast path: the refresh lease in the database decides who
// refreshes, so losing Redis (restart, failover, eviction) can never let
// two replicas spend one refresh token. statestore.Store implements it.
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
	// StaleWait is how long a caller whose token is due but still valid
	// waits for the refresh before it is given the valid token (stale
	// while refresh); never longer than the caller's own deadline.
	StaleWait time.Duration
	// TakeoverSettle is how long a replica that took over an expired
	// refresh lease of the same generation waits before it reads the
	// grant again and refreshes: the previous holder may have spent the
	// refresh token and be storing the answer the moment the database
	// is back.
	TakeoverSettle time.Duration
	// BackoffMax caps the backoff after failed refreshes (negative cache):
	// while it runs, no refresh of the grant is attempted, valid tokens
	// are served and callers needing a new one are answered UNAVAILABLE
	// at once instead of hammering a failing authorization server.
	BackoffMax time.Duration
	// DPoPRetryAfter is how long a grant suspended after a refresh that
	// did not honour DPoP waits before its kept refresh token is tried
	// again (unbound.go).
	DPoPRetryAfter time.Duration
}

// Service keeps tokens valid: proactive refresh, one refresh per grant at a
// time across replicas (in-process single-flight, a cross-replica lock, a
// re-read after acquiring it, and a generation compare-and-swap so a stale
// result never overwrites newer tokens).
type Service struct {
	store   Store
	creds   CredentialReader // the cache misses' reads
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
	machine MachineDeps
	// starter, when set, starts flows for NOT_AUTHORIZED answers about a
	// user's connection (SetStarter).
	starter starterBox

	mu sync.Mutex
	// inflight records when a refresh of a grant started in this process.
	inflight map[string]time.Time
	// backoff is the negative cache of failed refreshes, by grant.
	backoff map[string]failure
	// unstored holds refreshes the authorization server answered that
	// could not be stored yet (the database is down): they are served and
	// stored as soon as the database is back, never thrown away.
	unstored map[string]*unstoredRefresh
}

// failure is a grant's run of failed refreshes.
type failure struct {
	n     int
	until time.Time
}

// unstoredRefresh is an answered refresh waiting to be stored.
type unstoredRefresh struct {
	base   *repository.Credential // the credential the refresh started from
	grant  vault.Grant
	tokens *oauthclient.Tokens
	holder string // the refresh lease holder, released once stored
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
	// Machine obtains tokens for kinds without a person (machine.go).
	Machine MachineDeps
	// Credentials, when set, serves the token cache's misses (a read
	// that may share its statement with concurrent misses of other grants,
	// repository.CredentialBatcher); Store's GetCredential otherwise.
	Credentials CredentialReader
}

// CredentialReader reads one grant's row as Store.GetCredential does.
type CredentialReader interface {
	GetCredential(ctx context.Context, g domain.GrantRef) (*repository.Credential, error)
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
	if d.Config.StaleWait <= 0 {
		d.Config.StaleWait = 500 * time.Millisecond
	}
	if d.Config.TakeoverSettle <= 0 {
		d.Config.TakeoverSettle = 2 * time.Second
	}
	if d.Config.BackoffMax <= 0 {
		d.Config.BackoffMax = 30 * time.Second
	}
	if d.Config.DPoPRetryAfter <= 0 {
		d.Config.DPoPRetryAfter = 5 * time.Minute
	}
	if d.Credentials == nil {
		d.Credentials = d.Store
	}
	return &Service{store: d.Store, creds: d.Credentials, cipher: d.Cipher, proto: d.Proto, locks: d.Locks, audit: d.Audit, reads: d.Reads, log: d.Log,
		now: d.Now, cfg: d.Config, metrics: d.Metrics, cache: newTokenCache(d.Config.CacheTTL), machine: d.Machine,
		inflight: map[string]time.Time{}, backoff: map[string]failure{}, unstored: map[string]*unstoredRefresh{}}, nil
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

// servable reports whether a due token still has enough life left to hand
// to a caller while a refresh is attempted: an eighth of its lifetime, at
// most a second.
func (s *Service) servable(h *vault.Held) bool {
	if h.Tokens.ExpiresAt.IsZero() {
		return true
	}
	left := time.Second
	if life := h.Tokens.ExpiresAt.Sub(h.IssuedAt); !h.IssuedAt.IsZero() && life > 0 {
		left = min(left, life/8)
	}
	return s.now().Add(left).Before(h.Tokens.ExpiresAt)
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
	case domain.ReasonDPoPRefused:
		return "the authorization server no longer honours DPoP for these tokens"
	}
	return "the authorization is no longer valid"
}

// load reads and opens the provider's grant, mapping a grant without
// tokens to a precise precondition error.
func (s *Service) load(ctx context.Context, ref domain.GrantRef) (*repository.Credential, *vault.Held, error) {
	cred, err := s.creds.GetCredential(ctx, ref)
	if apperr.KindOf(err) == apperr.KindNotFound {
		return nil, nil, s.noGrant(ctx, ref)
	}
	if err != nil {
		return nil, nil, err
	}
	switch {
	case dpopSuspended(cred):
		return cred, nil, s.dpopRefusedError(cred)
	case cred.Status == domain.StatusReauthRequired:
		return cred, nil, ReauthRequired(reauthWhy(cred.Reason))
	case cred.Status != domain.StatusAuthorized:
		return cred, nil, s.noGrant(ctx, ref)
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
//
// It is also where a call that names a user the provider's grant scope
// does not expect is refused (see vault.GrantFor): such a call finds no
// grant, as no grant of that shape is ever stored.
func (s *Service) noGrant(ctx context.Context, ref domain.GrantRef) error {
	row, err := s.store.GetProvider(ctx, ref.Tenant, ref.Provider)
	if err != nil {
		return err
	}
	if _, err := vault.GrantFor(row, ref.User); err != nil {
		return err
	}
	if st, _ := row.AuthStatus(); ref.User == "" && st == domain.StatusNotRequired {
		return apperr.FailedPrecondition(domain.ReasonNotRequired,
			"the provider's MCP server asks for no authorization: no access token is needed")
	}
	if ref.User != "" {
		return userNotAuthorized(ref)
	}
	return notAuthorized()
}

// userNotAuthorized is NOT_AUTHORIZED for an end user without a connection.
func userNotAuthorized(ref domain.GrantRef) *apperr.Error {
	return apperr.FailedPrecondition(domain.ReasonNotAuthorized,
		"the user has not connected this provider: call StartAuthorization with this user").WithMeta("user", ref.User)
}

// withAuthorizationURL gives a NOT_AUTHORIZED answer about a user's
// connection a fresh authorization URL for that user, when the caller may
// also start authorizations on the tenant (and this server can start
// them), so the calling platform can send the person straight to it. It
// runs with the caller's own context and deadline (not the shared read's)
// and builds a new error: the one it replaces may be shared by other
// callers of the same read.
func (s *Service) withAuthorizationURL(ctx context.Context, ref domain.GrantRef, err error) error {
	if e, ok := apperr.As(err); !ok || ref.User == "" || e.Reason != domain.ReasonNotAuthorized {
		return err
	}
	e := userNotAuthorized(ref)
	AttachAuthorizationURL(ctx, s.startFor(), ref, nil, e)
	return e
}

// Holds reports whether the grant ref is held and usable, as stored now:
// nil when it is authorized and its tokens open (an expired access token
// with a refresh token counts: a token read would refresh it), otherwise
// the error a token read would answer (NOT_AUTHORIZED with a fresh
// authorization URL for the user when the caller may authorize,
// REAUTH_REQUIRED, ...). It never refreshes and reaches no server, and it
// reads the database rather than this replica's cache, so a connection
// revoked on another replica is not held here either.
func (s *Service) Holds(ctx context.Context, ref domain.GrantRef) error {
	_, _, err := s.load(ctx, ref)
	return s.withAuthorizationURL(ctx, ref, err)
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
// it may cause are audited synchronously as before. Freshness is checked
// again right before the token is returned.
func (s *Service) AccessToken(ctx context.Context, ref domain.GrantRef) (*Token, error) {
	t, err := s.Get(ctx, ref)
	if err != nil {
		return nil, err
	}
	s.reads.Record(ctx, ref.Tenant, ref.Provider)
	if s.expired(t) {
		// It expired meanwhile: an expired token never reaches the
		// caller; the read is counted once.
		if t, err = s.Get(ctx, ref); err != nil {
			return nil, err
		}
		if s.expired(t) {
			return nil, apperr.Unavailable(errors.New("token expired before it could be returned"), "no valid access token could be obtained in time; retry")
		}
	}
	return t, nil
}

// expired reports whether t can no longer be used.
func (s *Service) expired(t *Token) bool {
	return !t.ExpiresAt.IsZero() && !s.now().Before(t.ExpiresAt)
}

// Get returns a valid access token for the provider, refreshing first when
// it is due, together with the grant it was issued under (from the same
// decryption: callers that check where a token may go need it every time).
//
// A token that is due but still valid is served while the refresh runs
// (stale while refresh): the caller waits at most StaleWait (and never
// past its own deadline) for the new token, then gets the valid one. Only
// a caller whose token has expired waits for the refresh itself.
func (s *Service) Get(ctx context.Context, ref domain.GrantRef) (*Token, error) {
	key := ref.Key()
	if t, ok, err := s.fromUnstored(key, ""); ok {
		return t, err
	}
	now := s.now()
	if e, ok := s.cache.get(key, now); ok && s.fresh(e.held) {
		s.metrics.TokensServed.Inc()
		return token(e.held.Tokens, e.cred, e.held.Grant), nil
	}
	epoch := s.cache.now()
	cred, h, err := s.loadShared(ctx, s.cache.shareKey(key, epoch), ref)
	if err != nil {
		t, err := s.obtainIfMachine(ctx, ref, cred, err)
		return t, s.withAuthorizationURL(ctx, ref, err)
	}
	if s.fresh(h) {
		s.cache.put(key, cred, h, now, epoch)
		s.metrics.TokensServed.Inc()
		return token(h.Tokens, cred, h.Grant), nil
	}
	s.cache.drop(key)
	if !s.servable(h) {
		return s.refreshShared(ctx, ref, "")
	}
	// Due but valid: serve it unless the refresh answers quickly.
	stale := func() (*Token, error) {
		s.metrics.TokensServed.Inc()
		s.metrics.Refreshes.WithLabelValues("stale_served").Inc()
		return token(h.Tokens, cred, h.Grant), nil
	}
	if _, failing := s.failing(key); failing {
		return stale()
	}
	wait := s.cfg.StaleWait
	if started, ok := s.inflightSince(key); ok {
		wait -= time.Since(started)
	}
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)*9/10)
	}
	ch := s.refreshChan(ctx, ref, "")
	if wait <= 0 {
		return stale()
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case r := <-ch:
		if r.Err == nil {
			s.metrics.TokensServed.Inc()
			return r.Val.(*Token), nil
		}
		switch apperr.KindOf(r.Err) {
		case apperr.KindUnavailable, apperr.KindDeadlineExceeded:
			// mcpauth's own stores or the server are failing: the valid
			// token still works.
			return stale()
		}
		// The grant is dead or gone, or changed meanwhile: say so.
		return nil, r.Err
	case <-timer.C:
		return stale()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// loadShared is load for a cache miss: concurrent misses of one grant in
// this process (every caller of a busy grant, each time its cache entry
// ends) share one read and one decryption instead of one each. The read
// does not end with the first caller's context, which the others did not
// choose.
func (s *Service) loadShared(ctx context.Context, key string, ref domain.GrantRef) (*repository.Credential, *vault.Held, error) {
	type loaded struct {
		cred *repository.Credential
		held *vault.Held
	}
	ch := s.loads.DoChan(key, func() (any, error) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), persistBudget)
		defer cancel()
		cred, h, err := s.load(lctx, ref)
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
func (s *Service) ForceRefresh(ctx context.Context, ref domain.GrantRef, staleAccess secret.Secret) (*Token, error) {
	s.cache.drop(ref.Key())
	return s.refreshShared(ctx, ref, staleAccess.Reveal())
}

// Forget drops the provider's cached credential on this replica.
func (s *Service) Forget(ref domain.GrantRef) { s.cache.drop(ref.Key()) }

// refreshShared waits for the grant's refresh, started or joined, until
// ctx ends.
func (s *Service) refreshShared(ctx context.Context, ref domain.GrantRef, stale string) (*Token, error) {
	if t, ok, err := s.fromUnstored(ref.Key(), stale); ok {
		return t, err
	}
	if until, failing := s.failing(ref.Key()); failing {
		if err := s.waitBackoff(ctx, until); err != nil {
			return nil, err
		}
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case r := <-s.refreshChan(ctx, ref, stale):
		if r.Err != nil {
			return nil, r.Err
		}
		s.metrics.TokensServed.Inc()
		return r.Val.(*Token), nil
	}
}

// errBackoff is the cause of the error a caller gets while the grant's
// refreshes are backed off.
var errBackoff = errors.New("refresh backed off after failures")

// maxBackoffWait is the longest a caller without a deadline waits for a
// backoff to end.
const maxBackoffWait = 5 * time.Second

// waitBackoff waits for the grant's refresh backoff to end when the caller
// can afford it (its deadline, at most maxBackoffWait), so that it then
// gets the one refresh made after the backoff; otherwise it answers
// UNAVAILABLE at once rather than keep the caller waiting for nothing.
func (s *Service) waitBackoff(ctx context.Context, until time.Time) error {
	wait := until.Sub(s.now())
	if wait <= 0 {
		return nil
	}
	limit := maxBackoffWait
	if dl, ok := ctx.Deadline(); ok {
		limit = min(limit, time.Until(dl))
	}
	if wait >= limit {
		s.metrics.Refreshes.WithLabelValues("backoff").Inc()
		return apperr.Unavailable(errBackoff, "refreshing the token failed recently; the next attempt is in %s", wait.Round(100*time.Millisecond))
	}
	if err := sleepCtx(ctx, wait); err != nil {
		return apperr.Unavailable(err, "waiting for the refresh backoff to end")
	}
	return nil
}

// refreshChan starts the grant's refresh, or joins the one running in this
// process: concurrent refreshes of one grant collapse into one; the
// cross-replica lease is taken inside.
func (s *Service) refreshChan(ctx context.Context, ref domain.GrantRef, stale string) <-chan singleflight.Result {
	// Callers reacting to different rejected tokens must not share a result:
	// one of them could be handed the very token its server just refused.
	key := ref.Key()
	if stale != "" {
		h := sha256.Sum256([]byte(stale))
		key += "/" + hex.EncodeToString(h[:8])
	}
	return s.sf.DoChan(key, func() (any, error) {
		s.mu.Lock()
		s.inflight[key] = time.Now()
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			delete(s.inflight, key)
			s.mu.Unlock()
		}()
		// The refresh must finish even if the first caller gives up: others
		// wait on it, and an abandoned refresh can burn a rotating token.
		// This bounds the wait for the lock: a crashed holder's lease ends
		// within one TTL, a live holder's work within one more. The work
		// under the lock gets its own budget in refreshLocked.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*s.cfg.LockTTL)
		defer cancel()
		return s.refreshLocked(rctx, ref, stale)
	})
}

// inflightSince reports when the grant's refresh in this process started.
func (s *Service) inflightSince(key string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.inflight[key]
	return t, ok
}

// failing reports whether the grant's refreshes are backed off, and until when.
func (s *Service) failing(key string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.backoff[key]
	if !ok || !s.now().Before(f.until) {
		return time.Time{}, false
	}
	return f.until, true
}

// noteFailure backs the grant's refreshes off: 1s, 2s, 4s... up to
// BackoffMax, at least retryAfter, jittered by up to a quarter.
func (s *Service) noteFailure(key string, retryAfter time.Duration) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.backoff[key]
	f.n++
	d := min(time.Second<<min(f.n-1, 16), s.cfg.BackoffMax)
	d = max(d, min(retryAfter, s.cfg.BackoffMax))
	d -= time.Duration(mrand.Int64N(int64(d/4) + 1))
	f.until = s.now().Add(d)
	s.backoff[key] = f
	return d
}

// noteSuccess ends the grant's backoff.
func (s *Service) noteSuccess(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.backoff, key)
}

// fromUnstored serves the grant's refreshed tokens that wait to be stored
// (ok false when there are none). Nothing may refresh from the stored,
// older refresh token meanwhile: the server rotated it.
func (s *Service) fromUnstored(key, stale string) (*Token, bool, error) {
	s.mu.Lock()
	u := s.unstored[key]
	s.mu.Unlock()
	if u == nil {
		return nil, false, nil
	}
	t := u.tokens
	if (t.ExpiresAt.IsZero() || s.now().Before(t.ExpiresAt)) && t.AccessToken.Reveal() != stale {
		next := *u.base
		next.Generation++ // the generation it will be stored as
		s.metrics.TokensServed.Inc()
		return token(t, &next, u.grant), true, nil
	}
	return nil, true, apperr.Unavailable(errors.New("refreshed tokens not stored yet"),
		"the refreshed tokens are waiting for the database to be stored; retry")
}

// refreshLocked queues on the grant's Redis lock (when Redis answers),
// re-reads the credential (another replica may have refreshed already),
// and refreshes under the database lease only if it is still due.
func (s *Service) refreshLocked(ctx context.Context, ref domain.GrantRef, stale string) (*Token, error) {
	lockKey := "refresh:" + ref.Key()
	waitStart := time.Now()
	var lease statestore.Lease
	for {
		l, err := s.locks.Lock(ctx, lockKey, s.cfg.LockTTL)
		if err == nil {
			lease = l
			break
		}
		if !errors.Is(err, statestore.ErrLocked) {
			// Redis is only the queue: without it, the database lease
			// alone keeps one refresher per grant.
			s.metrics.Refreshes.WithLabelValues("lock_store_unavailable").Inc()
			s.log.WarnContext(ctx, "refresh lock store unavailable: refreshing under the database lease alone",
				"tenant", ref.Tenant, "provider", ref.Provider, "err", err.Error())
			break
		}
		if err := s.locks.WaitUnlocked(ctx, lockKey); err != nil {
			if !statestore.IsUnavailable(err) || ctx.Err() != nil {
				return nil, apperr.Unavailable(err, "waiting for another refresh of this provider")
			}
			break
		}
		// The holder released: its result is probably stored already.
		cred, h, err := s.load(ctx, ref)
		if err != nil {
			return nil, err
		}
		if s.usable(h, stale) {
			s.metrics.LockWaits.Observe(time.Since(waitStart).Seconds())
			return token(h.Tokens, cred, h.Grant), nil
		}
	}
	if lease != nil {
		defer func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			_ = lease.Release(rctx)
		}()
	}
	// The work under the lock gets a full lease however long the wait took
	// (else a waiter that acquires late is cut off mid-request and may burn
	// a rotating refresh token), and ends when the lease does.
	ctx, cancelWork := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.LockTTL)
	defer cancelWork()
	s.metrics.LockWaits.Observe(time.Since(waitStart).Seconds())
	cred, h, err := s.load(ctx, ref)
	if err != nil && dpopSuspended(cred) {
		// Re-read under the lock: retry only if nobody did meanwhile.
		if s.now().Before(s.dpopRetryAt(cred)) {
			return nil, err
		}
		if h, err = vault.OpenTokens(s.cipher, cred); err != nil {
			return nil, err
		}
		return s.refreshLeased(ctx, cred, h, stale)
	}
	if err != nil || h.Grant.Kind.Machine() && !s.usable(h, stale) {
		// Kinds without a person ask again instead of refreshing (machine.go).
		return s.obtainLocked(ctx, ref, cred, err, stale)
	}
	if s.usable(h, stale) {
		return token(h.Tokens, cred, h.Grant), nil
	}
	if h.Tokens.RefreshToken.IsZero() {
		if s.valid(h) && stale == "" {
			return token(h.Tokens, cred, h.Grant), nil
		}
		if h.Grant.Kind == domain.KindEnterpriseManaged {
			return nil, IDTokenRequired("the access token expired and the authorization server issued no refresh token")
		}
		return nil, apperr.FailedPrecondition(domain.ReasonTokenExpired, "the access token expired and the server issued no refresh token: authorize the provider again")
	}
	return s.refreshLeased(ctx, cred, h, stale)
}

// leaseTTL is how long a refresh lease lasts unless released: the work
// budget, the store budget and some slack. A crashed holder blocks the
// grant's refreshes this long at most.
func (s *Service) leaseTTL() time.Duration { return s.cfg.LockTTL + persistBudget + 5*time.Second }

// refreshLeased takes the grant's refresh lease in the database for the
// generation read (the only permission to spend its refresh token), then
// refreshes. While another replica holds the lease it waits for that
// replica's result; while the database cannot be reached nobody refreshes,
// and a still-valid token is served.
func (s *Service) refreshLeased(ctx context.Context, cred *repository.Credential, h *vault.Held, stale string) (*Token, error) {
	ref := cred.Ref()
	holder := rand.Text()
	var acq repository.LeaseAcquired
	for {
		var err error
		acq, err = s.store.AcquireRefreshLease(ctx, ref, cred.Generation, holder, s.leaseTTL())
		if err == nil {
			break
		}
		if errors.Is(err, repository.ErrRefreshBackoff) {
			// A replica's refresh failed moments ago: the server is not
			// asked again until the backoff ends.
			if s.valid(h) && h.Tokens.AccessToken.Reveal() != stale {
				s.metrics.Refreshes.WithLabelValues("backoff").Inc()
				return token(h.Tokens, cred, h.Grant), nil
			}
			if err := s.waitBackoff(ctx, acq.BackoffUntil); err != nil {
				return nil, err
			}
			continue
		}
		if !errors.Is(err, repository.ErrLeaseHeld) {
			if k := apperr.KindOf(err); k == apperr.KindNotFound || k == apperr.KindFailedPrecondition {
				return nil, err
			}
			s.metrics.Refreshes.WithLabelValues("lease_unavailable").Inc()
			if s.valid(h) && h.Tokens.AccessToken.Reveal() != stale {
				return token(h.Tokens, cred, h.Grant), nil
			}
			return nil, apperr.Unavailable(err, "the refresh lease could not be taken: the database is unavailable")
		}
		// Another replica refreshes this grant: wait for its result.
		if err := sleepCtx(ctx, 100*time.Millisecond+time.Duration(mrand.Int64N(int64(150*time.Millisecond)))); err != nil {
			if s.valid(h) && h.Tokens.AccessToken.Reveal() != stale {
				return token(h.Tokens, cred, h.Grant), nil
			}
			return nil, apperr.Unavailable(err, "waiting for another replica's refresh of this provider")
		}
		if cred, h, err = s.load(ctx, ref); err != nil {
			return nil, err
		}
		if s.usable(h, stale) {
			return token(h.Tokens, cred, h.Grant), nil
		}
	}
	keep := false
	defer func() {
		if keep {
			return // the unstored refresh releases the lease once stored
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = s.store.ReleaseRefreshLease(rctx, ref, holder)
	}()
	if acq.TookOver {
		// The previous holder's lease for this generation expired without
		// a release: it crashed, or it holds an answered refresh it is
		// about to store now that the database is back. Let it.
		s.metrics.Refreshes.WithLabelValues("lease_takeover").Inc()
		if err := sleepCtx(ctx, s.cfg.TakeoverSettle); err != nil {
			return nil, apperr.Unavailable(err, "taking over a refresh")
		}
		latest, lh, err := s.load(ctx, ref)
		if err != nil {
			return nil, err
		}
		if latest.Generation != cred.Generation {
			if s.usable(lh, stale) || (s.valid(lh) && lh.Tokens.AccessToken.Reveal() != stale) {
				return token(lh.Tokens, latest, lh.Grant), nil
			}
			return nil, apperr.Aborted("the credential changed during the refresh; retry")
		}
	}
	t, kept, err := s.doRefresh(ctx, cred, h, stale, holder)
	keep = kept
	return t, err
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
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
		reg.ClientSecret, reg.ClientKey = d.ClientSecret, d.ClientKey
	case domain.RegCIMD:
		if g.AuthMethod != oauthclient.AuthPrivateKeyJWT {
			break // mcpauth's service-wide document: a public client.
		}
		// The provider's own document: the client is the provider's key.
		row, err := s.store.GetProvider(ctx, cred.TenantID, cred.ProviderID)
		if err != nil {
			return nil, err
		}
		d, err := vault.OpenProvider(s.cipher, row)
		if err != nil {
			return nil, err
		}
		if row.ClientID != "" || d.ClientKey == nil {
			return nil, ReauthRequired("the provider's client metadata document client changed")
		}
		reg.ClientKey = d.ClientKey
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
	if g.DPoPJKT != "" {
		key, err := s.boundKey(ctx, cred.TenantID, cred.ProviderID, g)
		if err != nil {
			return nil, err
		}
		// RFC 9449 section 5: the refresh is made with the key the tokens
		// are bound to, and keeps the binding.
		reg.DPoP = key
	}
	return reg, nil
}

// boundKey is the provider's DPoP key when it is the one g's tokens are
// bound to; REAUTH_REQUIRED when the key was rotated or deleted since.
func (s *Service) boundKey(ctx context.Context, tenant, id string, g vault.Grant) (*dpop.Key, error) {
	row, err := s.store.GetProvider(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	d, err := vault.OpenProvider(s.cipher, row)
	if err != nil {
		return nil, err
	}
	if d.DPoP == nil || d.DPoP.Thumbprint() != g.DPoPJKT {
		return nil, ReauthRequired("the provider's DPoP key changed since the tokens were issued")
	}
	return d.DPoP, nil
}

// callRefresh calls the token endpoint with bounded, jittered retries on
// 5xx, 429 and network errors, honouring Retry-After. It stops early while
// the old refresh token is still ours: an attempt that could succeed too
// late to be stored under the lease is not made.
// tokenEndpointRetry tells retry.Do what to do with a token endpoint's
// answer: a temporary failure is tried again (no sooner than the server's
// Retry-After when it sent one); an OAuth error is the server's answer and is
// never asked again blindly.
func tokenEndpointRetry(err error) error {
	var temp *oauthclient.TemporaryError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &temp) && temp.RetryAfter > 0:
		return retry.After(err, temp.RetryAfter)
	case errors.As(err, &temp):
		return err
	}
	return retry.Permanent(err)
}

func (s *Service) callRefresh(ctx context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, h *vault.Held) (*oauthclient.Tokens, error) {
	var fresh *oauthclient.Tokens
	// Waits in [100ms, 300ms], then [200ms, 600ms]...
	p := retry.Policy{Attempts: s.cfg.MaxAttempts, Base: 300 * time.Millisecond, Max: s.cfg.MaxRetryAfter, Jitter: 2.0 / 3, Reserve: persistBudget}
	err := retry.Do(ctx, p, func(ctx context.Context, _ int) error {
		start := time.Now()
		t, err := s.proto.Refresh(ctx, md, reg, h.Tokens.RefreshToken, h.Grant.Resource)
		s.metrics.RefreshLatency.Observe(time.Since(start).Seconds())
		if err == nil {
			fresh = t
		}
		return tokenEndpointRetry(err)
	})
	return fresh, err
}

// doRefresh refreshes the tokens under the refresh lease held by holder and
// stores the result with a generation compare-and-swap. kept reports that
// the answered refresh could not be stored and is kept in memory (served,
// and stored once the database is back, which then releases the lease).
func (s *Service) doRefresh(ctx context.Context, cred *repository.Credential, h *vault.Held, stale, holder string) (_ *Token, kept bool, _ error) {
	ref := cred.Ref()
	ctx = audit.WithScope(ctx, ref.Tenant, ref.Provider)
	reg, err := s.registrationFor(ctx, cred, h.Grant)
	if e, ok := apperr.As(err); ok && e.Reason == domain.ReasonReauthRequired {
		// The client the tokens were issued to is gone or was replaced:
		// the grant can never be refreshed again. Say so where the status
		// lives, so reads and the background refresher stop trying.
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), persistBudget)
		defer cancel()
		return nil, false, s.markReauth(mctx, cred, domain.ReasonNoClient)
	}
	if err != nil {
		return nil, false, err
	}
	md := &oauthclient.Metadata{Issuer: h.Grant.Issuer, TokenEndpoint: h.Grant.TokenEndpoint, RevocationEndpoint: h.Grant.RevocationEndpoint}
	fresh, rerr := s.callRefresh(ctx, md, reg, h)
	key := ref.Key()
	switch {
	case rerr == nil:
		s.noteSuccess(key)
	case errors.Is(rerr, oauthclient.ErrInvalidGrant), errors.Is(rerr, oauthclient.ErrInvalidClient):
		s.metrics.Refreshes.WithLabelValues("reauth_required").Inc()
		reason := domain.ReasonInvalidGrant
		if errors.Is(rerr, oauthclient.ErrInvalidClient) {
			reason = domain.ReasonInvalidClient
			if h.Grant.RegMethod == domain.RegDynamic {
				// The server forgot our client: register again at the next
				// authorization instead of failing forever.
				_ = s.store.DeleteClientRegistration(ctx, ref.Tenant, ref.Provider, h.Grant.Issuer)
			}
		}
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), persistBudget)
		defer cancel()
		return nil, false, s.markReauth(mctx, cred, reason)
	case dpopRefused(rerr):
		// The server did not honour DPoP: its access token is never taken
		// (nor any Bearer token instead); the refresh token is kept and the
		// grant suspended (unbound.go).
		s.metrics.Refreshes.WithLabelValues("dpop_refused").Inc()
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), persistBudget)
		defer cancel()
		var ub *oauthclient.UnboundTokensError
		rt := unboundRefreshToken(rerr)
		if rt.IsZero() {
			rt = h.Tokens.RefreshToken
		}
		return nil, false, s.suspendDPoP(mctx, cred, h, rt, errors.As(rerr, &ub))
	default:
		var temp *oauthclient.TemporaryError
		retryAfter := time.Duration(0)
		if errors.As(rerr, &temp) {
			retryAfter = temp.RetryAfter
		}
		// Remember the failure, here and for every replica (the lease
		// becomes a backoff): the failing server is not asked again until
		// the backoff ends.
		d := s.noteFailure(key, retryAfter)
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = s.store.BackoffRefreshLease(bctx, ref, holder, d)
		cancel()
		s.metrics.Refreshes.WithLabelValues("unavailable").Inc()
		s.audit.Record(ctx, audit.Event{Tenant: ref.Tenant, Type: domain.EventTokenRefreshFailed, Provider: ref.Provider, User: ref.User, Outcome: domain.OutcomeFailure, Reason: domain.ReasonUnavailable})
		if s.valid(h) && h.Tokens.AccessToken.Reveal() != stale {
			// The old token still works: serve it while the server is down.
			return token(h.Tokens, cred, h.Grant), false, nil
		}
		return nil, false, apperr.Unavailable(rerr, "the authorization server could not refresh the token")
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
	_ = s.store.ExtendRefreshLease(pctx, ref, holder, s.leaseTTL())
	var stored *repository.Credential
	refreshed := audit.Rows(ctx, s.now(), audit.Event{Tenant: ref.Tenant, Type: domain.EventTokenRefreshed, Provider: ref.Provider, User: ref.User, Outcome: domain.OutcomeSuccess})
	err = retry.Do(pctx, retry.Policy{Attempts: 3, Base: 100 * time.Millisecond, Max: 300 * time.Millisecond},
		func(ctx context.Context, _ int) error {
			var perr error
			stored, perr = s.persist(ctx, cred, h.Grant, fresh, refreshed...)
			if lostRace(perr) {
				return retry.Permanent(perr)
			}
			return perr
		})
	ctx = pctx
	if lostRace(err) {
		// Someone stored newer tokens meanwhile: theirs win, ours are dropped.
		latest, lh, lerr := s.load(ctx, ref)
		if lerr != nil {
			return nil, false, lerr
		}
		return token(lh.Tokens, latest, lh.Grant), false, nil
	}
	if apperr.KindOf(err) == apperr.KindNotFound {
		return nil, false, err // the provider was deleted meanwhile
	}
	if err != nil {
		// The server rotated the refresh token: the stored one is dead.
		// Never throw the answer away while the process lives: serve it,
		// and store it as soon as the database is back.
		// The audit store is likely down too: the caller does not wait for
		// this event to be written.
		go s.audit.Record(context.WithoutCancel(ctx), audit.Event{Tenant: ref.Tenant, Type: domain.EventTokenPersistFailure, Provider: ref.Provider, User: ref.User,
			Outcome: domain.OutcomeFailure, Reason: domain.ReasonDBWriteFailed})
		s.keepUnstored(cred, h.Grant, fresh, holder, err)
		t, _, uerr := s.fromUnstored(key, "")
		return t, true, uerr
	}
	s.metrics.Refreshes.WithLabelValues("success").Inc()
	return token(fresh, stored, h.Grant), false, nil
}

// keepUnstored keeps an answered refresh whose store failed, and stores it
// in the background until the database takes it (or newer tokens are
// stored, which win).
func (s *Service) keepUnstored(base *repository.Credential, g vault.Grant, t *oauthclient.Tokens, holder string, cause error) {
	key := base.Ref().Key()
	u := &unstoredRefresh{base: base, grant: g, tokens: t, holder: holder}
	s.mu.Lock()
	s.unstored[key] = u
	s.mu.Unlock()
	s.cache.drop(key)
	s.metrics.Refreshes.WithLabelValues("unstored").Inc()
	s.log.Error("refreshed tokens could not be stored: kept in memory and served until the database takes them",
		"tenant", base.TenantID, "provider", base.ProviderID, "err", cause.Error())
	go s.storeLater(key, u)
}

// storeLater stores an unstored refresh with backoff until it is stored or
// superseded, then forgets it and releases its refresh lease.
func (s *Service) storeLater(key string, u *unstoredRefresh) {
	ctx := context.Background()
	ref := u.base.Ref()
	p := retry.Policy{Base: 100 * time.Millisecond, Max: time.Second, Jitter: 0.5}
	// The event commits with the tokens, once, whichever attempt stores them.
	refreshed := audit.Rows(audit.WithScope(ctx, ref.Tenant, ref.Provider), s.now(),
		audit.Event{Tenant: ref.Tenant, Type: domain.EventTokenRefreshed, Provider: ref.Provider, User: ref.User, Outcome: domain.OutcomeSuccess})
	err := retry.Do(ctx, p, func(ctx context.Context, _ int) error {
		actx, cancel := context.WithTimeout(ctx, persistBudget)
		defer cancel()
		_, err := s.persist(actx, u.base, u.grant, u.tokens, refreshed...)
		if lostRace(err) || apperr.KindOf(err) == apperr.KindNotFound {
			return retry.Permanent(err)
		}
		return err
	})
	s.mu.Lock()
	if s.unstored[key] == u {
		delete(s.unstored, key)
	}
	s.mu.Unlock()
	s.cache.drop(key)
	actx, cancel := context.WithTimeout(audit.WithScope(ctx, ref.Tenant, ref.Provider), persistBudget)
	defer cancel()
	if err != nil {
		s.log.Warn("kept refreshed tokens dropped: the grant changed meanwhile", "tenant", ref.Tenant, "provider", ref.Provider, "err", err.Error())
		return
	}
	_ = s.store.ReleaseRefreshLease(actx, ref, u.holder)
	s.metrics.Refreshes.WithLabelValues("stored_late").Inc()
	s.log.Info("kept refreshed tokens stored", "tenant", ref.Tenant, "provider", ref.Provider)
}

// lostRace reports whether err is a credential write another writer won:
// the store's compare-and-swap failed (apperr.Aborted), so newer tokens are
// stored or the grant is gone. A transaction the database aborted to break
// a deadlock or a serialization conflict is Aborted too, but wrote nothing
// and may be retried as it is (repository.IsRetryable): tokens whose write
// it aborted are not to be dropped as if another writer's had won.
func lostRace(err error) bool {
	return apperr.KindOf(err) == apperr.KindAborted && !repository.IsRetryable(err)
}

// persist stores refreshed tokens if the credential is still the one the
// refresh started from (generation compare-and-swap), with events in the
// same transaction.
func (s *Service) persist(ctx context.Context, prev *repository.Credential, g vault.Grant, t *oauthclient.Tokens, events ...*repository.AuditEvent) (*repository.Credential, error) {
	now := s.now().UTC()
	ct, err := vault.SealTokens(s.cipher, prev.Ref(), t, g, now)
	if err != nil {
		return nil, err
	}
	next := *prev
	next.Tokens, next.Scopes, next.HasRefresh = ct, vault.JSONList(t.Scopes), !t.RefreshToken.IsZero()
	next.ExpiresAt = vault.ExpiresPtr(t.ExpiresAt)
	next.Status = domain.StatusAuthorized
	next.Reason, next.RefreshFailures, next.LastRefreshAt = "", 0, &now
	next.KeyID, next.UpdatedAt = s.cipher.PrimaryID(), now
	s.cache.drop(prev.Ref().Key())
	gen, err := s.store.PutCredential(ctx, &next, prev.Generation, events...)
	// Dropped again after the write: a concurrent Get may have cached the
	// old credential between the first drop and the write.
	s.cache.drop(prev.Ref().Key())
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
	ref := cred.Ref()
	next := *cred
	// Empty, not nil: the column is NOT NULL, and empty means "no tokens".
	next.Tokens, next.HasRefresh, next.ExpiresAt = []byte{}, false, nil
	next.Status = domain.StatusReauthRequired
	next.Reason = reason
	next.UpdatedAt = s.now().UTC()
	s.cache.drop(ref.Key())
	_, err := s.store.PutCredential(ctx, &next, cred.Generation,
		audit.Rows(ctx, s.now(), audit.Event{Tenant: ref.Tenant, Type: domain.EventReauthRequired, Provider: ref.Provider, User: ref.User, Outcome: domain.OutcomeFailure, Reason: reason})...)
	// Dropped again after the write: a concurrent Get may have cached the
	// old credential in between.
	s.cache.drop(ref.Key())
	if err != nil {
		if apperr.KindOf(err) == apperr.KindAborted {
			// Newer tokens exist: a stale failure must not wipe them.
			return apperr.Aborted("the credential changed during the refresh; retry")
		}
		return err
	}
	s.metrics.ReauthRequired.Inc()
	return ReauthRequired(reauthWhy(reason))
}

// MarkReauth marks the grant dead with reason (for example after the MCP
// server rejected a freshly refreshed token), if the stored credential is
// still at generation (the one that was rejected). If newer tokens were
// stored meanwhile, nothing is wiped and the caller gets ABORTED (retry).
// On success it returns the REAUTH_REQUIRED error to give the caller.
func (s *Service) MarkReauth(ctx context.Context, ref domain.GrantRef, reason string, generation int64) error {
	cred, err := s.store.GetCredential(ctx, ref)
	if err != nil {
		return err
	}
	if cred.Generation != generation {
		return apperr.Aborted("the credential changed meanwhile; retry")
	}
	return s.markReauth(ctx, cred, reason)
}

// StoreNew stores the tokens of a completed authorization of row's server
// as the grant of user (empty for the provider's tenant-wide grant),
// replacing any held before; the grant becomes AUTHORIZED in the same write.
// events are stored in the same transaction as the tokens.
func (s *Service) StoreNew(ctx context.Context, row *repository.Provider, user string, g vault.Grant, t *oauthclient.Tokens, events ...*repository.AuditEvent) error {
	ref := domain.GrantRef{Tenant: row.TenantID, Provider: row.ID, User: user}
	d, err := vault.OpenProvider(s.cipher, row)
	if err != nil {
		return err
	}
	g.Server = validate.NormalizeURL(d.URL)
	now := s.now().UTC()
	ct, err := vault.SealTokens(s.cipher, ref, t, g, now)
	if err != nil {
		return err
	}
	// A refresh finishing concurrently can win the compare-and-swap: re-read
	// and try again, so a code already exchanged is not thrown away.
	var gen int64
	err = retry.Do(ctx, retry.Policy{Attempts: 3}, func(ctx context.Context, _ int) error {
		var expected int64
		prev, err := s.store.GetCredential(ctx, ref)
		switch {
		case err == nil:
			expected = prev.Generation
		case apperr.KindOf(err) != apperr.KindNotFound:
			return retry.Permanent(err)
		}
		s.cache.drop(ref.Key())
		c := &repository.Credential{TenantID: ref.Tenant, ProviderID: ref.Provider, UserID: ref.User, Tokens: ct, Issuer: g.Issuer,
			Scopes: vault.JSONList(t.Scopes), ExpiresAt: vault.ExpiresPtr(t.ExpiresAt), HasRefresh: !t.RefreshToken.IsZero(),
			Status: domain.StatusAuthorized, LastRefreshAt: &now, KeyID: s.cipher.PrimaryID(), UpdatedAt: now}
		gen, err = s.store.PutCredential(ctx, c, expected, events...)
		s.cache.drop(ref.Key())
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
		_ = s.store.DeleteCredential(ctx, ref, gen)
		return apperr.Aborted("the provider's server changed during the authorization")
	}
	return nil
}

// pendingRevocation is what revoking a grant at its server needs, read while the
// grant and its client registration are still stored.
type pendingRevocation struct {
	tenant, id, user string
	held             *vault.Held
	reg              *oauthclient.Registration
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
	rv := &pendingRevocation{tenant: cred.TenantID, id: cred.ProviderID, user: cred.UserID, held: h}
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
		s.audit.Record(ctx, audit.Event{Tenant: rv.tenant, Type: domain.EventRevocationFailed, Provider: rv.id, User: rv.user, Outcome: domain.OutcomeFailure, Reason: reason})
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
	if t.AccessToken.IsZero() {
		// A suspended grant (unbound.go) holds only its refresh token.
		return ok
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
func (s *Service) Revoke(ctx context.Context, ref domain.GrantRef) (bool, error) {
	cred, err := s.store.GetCredential(ctx, ref)
	if apperr.KindOf(err) == apperr.KindNotFound {
		// No grant: the provider (or the user's connection) is
		// UNAUTHORIZED already, if the provider exists and the call names
		// a grant it can hold.
		row, err := s.store.GetProvider(ctx, ref.Tenant, ref.Provider)
		if err != nil {
			return false, err
		}
		_, err = vault.GrantFor(row, ref.User)
		return false, err
	}
	if err != nil {
		return false, err
	}
	// Delete exactly the grant read (tokens stored meanwhile are read and
	// deleted on the next attempt), then revoke what was deleted: a grant
	// is never revoked at the server while it stays stored.
	var rv *pendingRevocation
	// The event commits with the deletion. Whether the server then
	// confirmed the revocation is in the response; a failure is audited on
	// its own (oauth.revocation.failed).
	revokedEv := audit.Rows(ctx, s.now(), audit.Event{Tenant: ref.Tenant, Type: domain.EventAuthRevoked, Provider: ref.Provider, User: ref.User, Outcome: domain.OutcomeSuccess})
	err = retry.Do(ctx, retry.Policy{Attempts: 3}, func(ctx context.Context, attempt int) error {
		if attempt > 1 {
			if cred, err = s.store.GetCredential(ctx, ref); err != nil {
				return retry.Permanent(err)
			}
		}
		rv = s.prepareRevocation(ctx, cred)
		s.cache.drop(ref.Key())
		err := s.store.DeleteCredential(ctx, ref, cred.Generation, revokedEv...)
		s.cache.drop(ref.Key())
		if apperr.KindOf(err) == apperr.KindAborted {
			return err
		}
		return retry.Permanent(err)
	})
	if err != nil && apperr.KindOf(err) != apperr.KindNotFound {
		return false, err
	}
	return s.revokeAtServer(ctx, rv), nil
}

// PrepareRevoke reads the provider's grant as held now and returns its
// revocation at the server, to run once the change that forgets the grant
// (a delete, a new server URL) has committed. The revocation reports
// whether the server confirmed; failures are audited and never block the
// caller.
func (s *Service) PrepareRevoke(ctx context.Context, ref domain.GrantRef) func(context.Context) bool {
	var rv *pendingRevocation
	if cred, err := s.store.GetCredential(ctx, ref); err == nil {
		rv = s.prepareRevocation(ctx, cred)
	}
	return func(ctx context.Context) bool {
		s.cache.drop(ref.Key())
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
func (s *Service) Status(ctx context.Context, ref domain.GrantRef) (*Status, error) {
	row, err := s.store.GetProvider(ctx, ref.Tenant, ref.Provider)
	if err != nil {
		return nil, err
	}
	if _, err := vault.GrantFor(row, ref.User); err != nil {
		return nil, err
	}
	// The provider row carries the tenant-wide grant's status only.
	st, reason := row.AuthStatus()
	out := &Status{Status: st, Reason: reason}
	if ref.User == "" && row.GrantStatus == domain.StatusUnknown {
		return out, nil
	}
	cred, err := s.store.GetCredential(ctx, ref)
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
func (s *Service) refreshIdle(ctx context.Context, ref domain.GrantRef) error {
	_, h, err := s.load(ctx, ref)
	if err != nil {
		return err
	}
	if h.Tokens.RefreshToken.IsZero() {
		return apperr.FailedPrecondition(domain.ReasonTokenExpired, "no refresh token")
	}
	// Passing the current access token as "stale" makes refreshLocked skip
	// the refresh only if another replica already rotated it.
	_, err = s.refreshShared(ctx, ref, h.Tokens.AccessToken.Reveal())
	return err
}

// hasUnstored reports whether an answered refresh of the grant waits to be
// stored.
func (s *Service) hasUnstored(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unstored[key] != nil
}
