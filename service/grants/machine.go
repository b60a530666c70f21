package grants

import (
	"context"
	"errors"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/retry"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/validate"
)

// Discoverer finds the authorization server of a provider's MCP server.
// *oauthclient.Client implements it.
type Discoverer interface {
	Probe(ctx context.Context, serverURL string, headers map[string]string, tr *oauthclient.Trace) (*oauthclient.ProbeResult, error)
	Discover(ctx context.Context, serverURL, canonicalResource string, probe *oauthclient.ProbeResult, tr *oauthclient.Trace) (*oauthclient.Metadata, error)
}

// MachineProtocol asks for tokens without a person. *oauthclient.Client
// implements it.
type MachineProtocol interface {
	ClientCredentials(ctx context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, scopes []string, resource string) (*oauthclient.Tokens, error)
	JWTBearer(ctx context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, assertion secret.Secret, scopes []string, resource string) (*oauthclient.Tokens, error)
}

// AssertionSource reads a workload's identity token. *workload.Files
// implements it.
type AssertionSource interface {
	Read(path string) (secret.Secret, error)
}

// MachineDeps are what obtaining tokens without a person needs. Without
// them, providers of such kinds answer FAILED_PRECONDITION.
type MachineDeps struct {
	Discover   Discoverer
	Proto      MachineProtocol
	Assertions AssertionSource
	// Identity exchanges ID tokens at enterprise identity providers
	// (enterprise.go).
	Identity IdentityExchanger
}

var (
	_ Discoverer      = (*oauthclient.Client)(nil)
	_ MachineProtocol = (*oauthclient.Client)(nil)
)

// obtainIfMachine is Get's answer when the provider holds no usable grant:
// a provider of a kind without a person gets its first token now, under
// the same one-at-a-time guard as refreshes; any other keeps loadErr.
// A grant such a kind marked dead answers with the server's error as its
// reason again, without asking the server.
func (s *Service) obtainIfMachine(ctx context.Context, ref domain.GrantRef, cred *repository.Credential, loadErr error) (*Token, error) {
	if dpopSuspended(cred) {
		return s.retrySuspended(ctx, ref, cred)
	}
	e, ok := apperr.As(loadErr)
	if !ok || e.Reason != domain.ReasonNotAuthorized && e.Reason != domain.ReasonReauthRequired {
		return nil, loadErr
	}
	row, err := s.store.GetProvider(ctx, ref.Tenant, ref.Provider)
	if err == nil && domain.CredentialKind(row.CredentialKind) == domain.KindEnterpriseManaged {
		return nil, enterpriseLoadError(cred, loadErr)
	}
	if err != nil || !domain.CredentialKind(row.CredentialKind).Machine() {
		return nil, loadErr
	}
	if e.Reason == domain.ReasonReauthRequired {
		if cred == nil || cred.Reason == "" {
			return nil, loadErr
		}
		err := apperr.FailedPrecondition(cred.Reason, "the authorization server refused the last %s grant (%s): fix the provider's credentials, or call RevokeAuthorization to try again",
			domain.CredentialKind(row.CredentialKind).GrantType(), cred.Reason)
		if code := oauthCodeOf(cred.Reason); code != "" {
			// The stored refusal answers as the server did, every time.
			err = err.WithMeta("oauth_error", code)
		}
		return nil, err
	}
	return s.refreshShared(ctx, ref, "")
}

// obtainLocked runs under the grant's lock, after the re-read: it asks
// the authorization server for a new token when the provider's kind needs
// no person and the held token (if any) is not usable. loadErr is the
// re-read's error: a grant marked dead stays dead (nothing is retried
// blindly) until the provider's credentials change or it is revoked.
//
// What the server answers is stored only while the provider is still at
// the version of the row it was asked under (PutCredentialAtProvider). An
// update that committed meanwhile (a rotated client secret or key, another
// token endpoint, other scopes; one that changed the credential material
// also reset the grant) would otherwise have the token made with the old
// configuration stored after it and served until it expires, or a refusal
// of the old secret stored as the verdict on the new one. Such a token is
// revoked at the server (as the client it was obtained as, when there is a
// revocation endpoint and a client id: revokeFresh) and audited as
// oauth.token.obtain_failed, reason PROVIDER_CHANGED, step store; then the
// request is made once more under the new row, so a caller asking while an
// operator rotates the secret gets a token made with the new one (and the
// refusal, if any, of the new configuration). Only a provider changed
// again during that second request answers FAILED_PRECONDITION
// PROVIDER_CHANGED: ask again.
func (s *Service) obtainLocked(ctx context.Context, ref domain.GrantRef, prev *repository.Credential, loadErr error, stale string) (*Token, error) {
	t, err := s.obtainUnder(ctx, ref, prev, loadErr)
	if !providerChanged(err) {
		return t, err
	}
	// Re-read: the update that changed the row may have reset the grant.
	prev, h, loadErr := s.load(ctx, ref)
	if loadErr == nil && s.usable(h, stale) {
		return token(h.Tokens, prev, h.Grant), nil
	}
	return s.obtainUnder(ctx, ref, prev, loadErr)
}

// providerChanged reports whether err is PutCredentialAtProvider's
// PROVIDER_CHANGED.
func providerChanged(err error) bool {
	e, ok := apperr.As(err)
	return ok && e.Kind == apperr.KindFailedPrecondition && e.Reason == domain.ReasonProviderChanged
}

// obtainUnder is one token request of obtainLocked under the provider row
// it reads, stored only while the provider is still at that row's version.
func (s *Service) obtainUnder(ctx context.Context, ref domain.GrantRef, prev *repository.Credential, loadErr error) (*Token, error) {
	if loadErr != nil {
		if e, ok := apperr.As(loadErr); !ok || e.Reason != domain.ReasonNotAuthorized {
			return nil, loadErr
		}
		prev = nil
	}
	ctx = audit.WithScope(ctx, ref.Tenant, ref.Provider)
	row, err := s.store.GetProvider(ctx, ref.Tenant, ref.Provider)
	if err != nil {
		return nil, err
	}
	d, err := vault.OpenProvider(s.cipher, row)
	if err != nil {
		return nil, err
	}
	if !d.Kind.Machine() {
		if loadErr != nil {
			return nil, loadErr
		}
		return nil, ReauthRequired("the provider's credential kind changed")
	}
	m := s.machine
	if m.Discover == nil || m.Proto == nil {
		return nil, apperr.FailedPrecondition(domain.ReasonNotAuthorized, "obtaining tokens without a person is not available on this server")
	}
	failed := func(reason, code string) {
		det := map[string]string{"kind": string(d.Kind)}
		if code != "" {
			det["oauth_error"] = code
		}
		s.audit.Record(ctx, audit.Event{Tenant: ref.Tenant, Type: domain.EventTokenObtainFailed, Provider: ref.Provider, User: ref.User, Outcome: domain.OutcomeFailure, Reason: reason, Details: det})
	}
	probe, err := m.Discover.Probe(ctx, d.URL.String(), d.Headers, nil)
	if err != nil {
		failed(domain.ReasonUnavailable, "")
		return nil, apperr.Unavailable(err, "the MCP server could not be probed")
	}
	md, err := m.Discover.Discover(ctx, d.URL.String(), d.Resource, probe, nil)
	if err != nil {
		failed(domain.ReasonUnavailable, "")
		return nil, apperr.Unavailable(err, "the authorization server could not be discovered")
	}
	var reg *oauthclient.Registration
	if row.ClientID != "" {
		reg = &oauthclient.Registration{Method: domain.RegPreRegistered, ClientID: row.ClientID, ClientSecret: d.ClientSecret,
			AuthMethod: d.Compat.TokenEndpointAuth, ClientKey: d.ClientKey}
	}
	key := d.DPoPFor(md.DPoPSigningAlgs)
	if key != nil && reg == nil {
		// A JWT bearer grant without client authentication, with DPoP.
		reg = &oauthclient.Registration{}
	}
	if key != nil {
		reg.DPoP = key
	}
	scopes := d.Scopes
	if len(scopes) == 0 && probe != nil {
		scopes = probe.Scopes
	}
	if len(scopes) == 0 {
		scopes = md.ScopesSupported
	}
	resource := d.ResourceParam()
	var fresh *oauthclient.Tokens
	p := retry.Policy{Attempts: s.cfg.MaxAttempts, Base: 300 * time.Millisecond, Max: s.cfg.MaxRetryAfter, Jitter: 2.0 / 3, Reserve: persistBudget}
	err = retry.Do(ctx, p, func(ctx context.Context, _ int) error {
		var t *oauthclient.Tokens
		var err error
		switch d.Kind {
		case domain.KindClientCredentials:
			t, err = m.Proto.ClientCredentials(ctx, md, reg, scopes, resource)
		case domain.KindJWTBearer:
			// Read fresh every time: projected tokens are rotated on disk.
			if m.Assertions == nil {
				return retry.Permanent(errNoAssertionSource)
			}
			a, rerr := m.Assertions.Read(d.CredConfig.AssertionFile)
			if rerr != nil {
				return retry.Permanent(&assertionError{err: rerr})
			}
			t, err = m.Proto.JWTBearer(ctx, md, reg, a, scopes, resource)
		}
		if err == nil {
			fresh = t
		}
		return tokenEndpointRetry(err)
	})
	if err != nil {
		// An unbound token is never used: revoke it at once.
		s.revokeUnbound(ctx, ref.Tenant, ref.Provider, md, reg, err)
		return s.obtainFailed(ctx, prev, row, d, err, failed)
	}
	if fresh.TokenType == "" {
		fresh.TokenType = "Bearer"
	}
	method, _ := oauthclient.ChooseAuthMethod(orEmpty(reg), md.TokenEndpointAuthMethods)
	if reg == nil || reg.ClientID == "" {
		method = ""
	}
	g := vault.Grant{Issuer: md.Issuer, TokenEndpoint: md.TokenEndpoint, RevocationEndpoint: md.RevocationEndpoint,
		RegMethod: domain.RegPreRegistered, ClientID: row.ClientID, AuthMethod: method, Resource: resource,
		Server: validate.NormalizeURL(d.URL), Kind: d.Kind}
	if key != nil {
		g.DPoPJKT = key.Thumbprint()
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), persistBudget)
	defer cancel()
	stored, err := s.storeObtained(pctx, ref, prev, g, fresh, nil, row.Version)
	if err != nil {
		return s.obtainedNotStored(pctx, ref, d.Kind, md, reg, fresh, err)
	}
	det := map[string]string{"kind": string(d.Kind), "grant_type": d.Kind.GrantType()}
	if method != "" {
		det["auth_method"] = method
	}
	if g.DPoPJKT != "" {
		det["token_type"], det["dpop_jkt"] = fresh.TokenType, g.DPoPJKT
	}
	s.audit.Record(pctx, audit.Event{Tenant: ref.Tenant, Type: domain.EventTokenObtained, Provider: ref.Provider, User: ref.User, Outcome: domain.OutcomeSuccess, Details: det})
	return token(fresh, stored, g), nil
}

// obtainedNotStored is obtainUnder's answer when the tokens it obtained
// could not be stored (err). Tokens the grant holds after all (the write
// committed though its answer was lost) are served (readBack). Tokens the
// grant is known not to hold are used by nobody, so they are revoked at
// the server (revokeFresh), whatever kept them out: another writer that
// stored the grant first (whose grant is served), a provider changed
// meanwhile (obtainLocked asks again under the new row), or a write that
// failed (a provider deleted, a database that is down or aborted the
// transaction: the caller gets the store's error); all but the first are
// audited as oauth.token.obtain_failed, step store (storeFailReason).
// When neither the read-back nor err tells whether the write committed
// (storeOutcomeUnknown), the tokens are left alone: revoking them could
// revoke a stored grant's tokens.
func (s *Service) obtainedNotStored(ctx context.Context, ref domain.GrantRef, kind domain.CredentialKind, md *oauthclient.Metadata, reg *oauthclient.Registration, fresh *oauthclient.Tokens, err error) (*Token, error) {
	held, latest, lh, lerr := s.readBack(ctx, ref, fresh)
	if held {
		return token(lh.Tokens, latest, lh.Grant), nil
	}
	unknown := storeOutcomeUnknown(err, lerr)
	race := lostRace(err)
	if !race {
		det := map[string]string{"kind": string(kind), "step": stepStore}
		if unknown {
			det["stored"] = storedUnknown
		}
		s.audit.Record(ctx, audit.Event{Tenant: ref.Tenant, Type: domain.EventTokenObtainFailed, Provider: ref.Provider, User: ref.User,
			Outcome: domain.OutcomeFailure, Reason: storeFailReason(err), Details: det})
	}
	if unknown {
		s.warnStoreUnknown(ref, err, lerr)
		return nil, err
	}
	s.revokeFresh(ctx, ref.Tenant, ref.Provider, md, reg, fresh.AccessToken, fresh.RefreshToken)
	switch {
	case !race:
		return nil, err
	case lerr != nil:
		return nil, lerr
	}
	return token(lh.Tokens, latest, lh.Grant), nil
}

// readBackBudget is the time of one read of a grant after a write of it
// failed: the write's own context may be spent (its deadline is what
// failed it).
const readBackBudget = 2 * time.Second

// storedUnknown is the "stored" detail of an oauth.token.obtain_failed
// event whose write may have committed: its tokens were not revoked.
const storedUnknown = "unknown"

// readBack is heldNow with its own time (readBackBudget, not cancelled
// with ctx), tried once more when the database did not answer it
// (readFailed).
func (s *Service) readBack(ctx context.Context, ref domain.GrantRef, t *oauthclient.Tokens) (bool, *repository.Credential, *vault.Held, error) {
	var (
		held bool
		cred *repository.Credential
		h    *vault.Held
		err  error
	)
	for attempt := 0; attempt < 2; attempt++ {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), readBackBudget)
		held, cred, h, err = s.heldNow(rctx, ref, t)
		cancel()
		if !readFailed(err) {
			break
		}
	}
	return held, cred, h, err
}

// heldNow reads the grant ref after a write of t failed, and reports
// whether it holds t's access token after all (the write committed though
// its answer was lost, or the server answered another writer with the same
// token, which that writer stored), with what it holds.
func (s *Service) heldNow(ctx context.Context, ref domain.GrantRef, t *oauthclient.Tokens) (bool, *repository.Credential, *vault.Held, error) {
	cred, h, err := s.load(ctx, ref)
	return err == nil && h.Tokens.AccessToken.Reveal() == t.AccessToken.Reveal(), cred, h, err
}

// readFailed reports whether err, a read-back's error, means the grant
// could not be read (the database failed, or its tokens could not be
// opened), rather than an answer about it (no grant, not authorized).
func readFailed(err error) bool {
	switch apperr.KindOf(err) {
	case apperr.KindUnavailable, apperr.KindDeadlineExceeded, apperr.KindAborted, apperr.KindInternal:
		return err != nil
	}
	return false
}

// storeOutcomeUnknown reports whether it is unknown if a failed write of
// fresh tokens (err) committed: the read-back after it failed too (lerr,
// readFailed), and err does not prove nothing was written (notStored).
func storeOutcomeUnknown(err, lerr error) bool {
	return readFailed(lerr) && !notStored(err)
}

// notStored reports whether err, a failed write of fresh tokens, proves
// nothing was written: it was returned before the write was sent
// (unsent), another writer's compare-and-swap won (lostRace),
// the provider changed (PROVIDER_CHANGED) or is gone (NotFound), the grant
// is bound to another identity, or the database aborted the transaction or
// was never reached (repository.NotWritten). A timeout, EOF or reset after
// the write was sent proves nothing: its COMMIT may have landed.
func notStored(err error) bool {
	var u unsent
	e, ok := apperr.As(err)
	if errors.As(err, &u) || ok && (lostRace(err) || providerChanged(err) || e.Kind == apperr.KindNotFound || e.Reason == domain.ReasonIdentityBindingMismatch) {
		return true
	}
	return repository.NotWritten(err)
}

// unsent is a store error returned before the write was sent: nothing was
// written (notStored). It is the error it wraps for everything else.
type unsent struct{ error }

func (u unsent) Unwrap() error { return u.error }

// warnStoreUnknown logs fresh tokens of ref left live because it is
// unknown whether their write (err) committed and the read-back failed
// (lerr). Errors only, no secrets.
func (s *Service) warnStoreUnknown(ref domain.GrantRef, err, lerr error) {
	s.log.Warn("obtained tokens not revoked: unknown whether their write committed", "tenant", ref.Tenant, "provider", ref.Provider,
		"user", ref.User, "err", err.Error(), "read_err", lerr.Error())
}

// storeFailReason is the audit reason of tokens obtained without a person
// that a write did not store because of err.
func storeFailReason(err error) string {
	switch {
	case providerChanged(err):
		return domain.ReasonProviderChanged
	case apperr.KindOf(err) == apperr.KindNotFound:
		return domain.ReasonProviderGone
	case lostRace(err):
		return domain.ReasonAborted
	}
	return domain.ReasonDBWriteFailed
}

func orEmpty(r *oauthclient.Registration) *oauthclient.Registration {
	if r == nil {
		return &oauthclient.Registration{}
	}
	return r
}

var errNoAssertionSource = errors.New("workload identity tokens are not enabled on this server")

// assertionError is a workload token that could not be read.
type assertionError struct{ err error }

func (e *assertionError) Error() string { return "workload identity token: " + e.err.Error() }
func (e *assertionError) Unwrap() error { return e.err }

// obtainFailed turns a failed grant request into the caller's error. An
// OAuth error answer marks the grant dead with the code as its reason (so
// the next read answers the same, without asking the server again); a
// temporary failure serves the previous token while it is still valid.
func (s *Service) obtainFailed(ctx context.Context, prev *repository.Credential, row *repository.Provider, d *vault.Provider, err error, failed func(reason, code string)) (*Token, error) {
	var (
		oe   *oauthclient.OAuthError
		ae   *assertionError
		temp *oauthclient.TemporaryError
	)
	switch {
	case dpopRefused(err):
		// Never retried, never answered by asking for a Bearer token.
		failed(domain.ReasonDPoPRefused, oauthCode(err))
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), persistBudget)
		defer cancel()
		if err := s.markDead(mctx, prev, row, domain.ReasonDPoPRefused); providerChanged(err) {
			return nil, err
		}
		return nil, apperr.FailedPrecondition(domain.ReasonDPoPRefused, "the authorization server did not honour DPoP for the %s grant: disable DPoP for the provider, or call RevokeAuthorization to try again",
			d.Kind.GrantType())
	case errors.As(err, &ae), errors.Is(err, errNoAssertionSource):
		failed(domain.ReasonAssertionUnavailable, "")
		return nil, apperr.FailedPrecondition(domain.ReasonAssertionUnavailable, "%s", err.Error())
	case errors.As(err, &oe):
		reason := oauthReason(oe.Code)
		failed(reason, oe.Code)
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), persistBudget)
		defer cancel()
		if err := s.markDead(mctx, prev, row, reason); providerChanged(err) {
			return nil, err
		}
		return nil, apperr.FailedPrecondition(reason, "the authorization server refused the %s grant (%s): fix the provider's credentials, or call RevokeAuthorization to try again",
			d.Kind.GrantType(), oe.Code).WithMeta("oauth_error", oe.Code)
	case errors.As(err, &temp):
		failed(domain.ReasonUnavailable, "")
		if prev != nil {
			if h, herr := vault.OpenTokens(s.cipher, prev); herr == nil && s.valid(h) {
				// The old token still works: serve it while the server is down.
				return token(h.Tokens, prev, h.Grant), nil
			}
		}
		return nil, apperr.Unavailable(err, "the authorization server could not issue a token")
	}
	failed(domain.ReasonGrantRefused, "")
	return nil, apperr.FailedPrecondition(domain.ReasonGrantRefused, "the authorization server did not issue a token")
}

// markDead stores the grant as REAUTH_REQUIRED with reason, without
// tokens, unless another writer changed it meanwhile or the provider is no
// longer at row's version (PROVIDER_CHANGED, returned: the refusal was of
// a configuration an update replaced, and must not stand as the verdict on
// the new one). Other store errors are dropped: the next read asks again.
func (s *Service) markDead(ctx context.Context, prev *repository.Credential, row *repository.Provider, reason string) error {
	now := s.now().UTC()
	c := &repository.Credential{TenantID: row.TenantID, ProviderID: row.ID, Tokens: []byte{}, Status: domain.StatusReauthRequired,
		Reason: reason, KeyID: s.cipher.PrimaryID(), UpdatedAt: now, Scopes: "[]"}
	var expected int64
	if prev != nil {
		expected = prev.Generation
	}
	s.cache.drop(c.Ref().Key())
	_, err := s.store.PutCredentialAtProvider(ctx, c, expected, row.Version)
	s.cache.drop(c.Ref().Key())
	if providerChanged(err) {
		return err
	}
	return nil
}

// storeObtained stores a token obtained without a person, replacing prev
// (compare-and-swap on its generation; nil means none is stored). With
// providerVersion (not 0) it stores only while the provider is still at
// that version (PutCredentialAtProvider).
func (s *Service) storeObtained(ctx context.Context, ref domain.GrantRef, prev *repository.Credential, g vault.Grant, t *oauthclient.Tokens, bind *oauthclient.IDTokenClaims, providerVersion int64) (*repository.Credential, error) {
	now := s.now().UTC()
	ct, err := vault.SealTokens(s.cipher, ref, t, g, now)
	if err != nil {
		return nil, unsent{err}
	}
	var expected int64
	if prev != nil {
		expected = prev.Generation
	}
	c := &repository.Credential{TenantID: ref.Tenant, ProviderID: ref.Provider, UserID: ref.User, Tokens: ct, Issuer: g.Issuer,
		Scopes: vault.JSONList(t.Scopes), ExpiresAt: vault.ExpiresPtr(t.ExpiresAt), HasRefresh: !t.RefreshToken.IsZero(),
		Status: domain.StatusAuthorized, LastRefreshAt: &now, KeyID: s.cipher.PrimaryID(), UpdatedAt: now}
	if bind != nil && (prev == nil || prev.IdentitySubject == "") {
		c.IdentityIssuer, c.IdentitySubject = bind.Issuer, bind.Subject
	}
	s.cache.drop(ref.Key())
	var gen int64
	if providerVersion != 0 {
		gen, err = s.store.PutCredentialAtProvider(ctx, c, expected, providerVersion)
	} else {
		gen, err = s.store.PutCredential(ctx, c, expected)
	}
	s.cache.drop(ref.Key())
	if err != nil {
		return nil, err
	}
	c.Generation = gen
	return c, nil
}
