package grants

import (
	"context"
	"errors"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/vault"
)

// A grant whose DPoP-proven refresh was not honoured (the answer was a
// Bearer token, a token bound to another key, or invalid_dpop_proof) is
// suspended, not dropped:
//
//   - the access token of such an answer is never stored or served. It is
//     not revoked either: RFC 7009 section 2.1 lets a server revoke the
//     refresh token with it (fosite does), which would end the grant this
//     keeps; it only ever lived in mcpauth's memory and expires on its own;
//   - the refresh token is kept, sealed as before: the one the answer
//     carries when the server rotated it (the one sent is dead then), else
//     the one sent. Losing it would end the grant on a rotating server and
//     leave it unrevokable there;
//   - the grant is REAUTH_REQUIRED with reason DPOP_REFUSED, and reads answer
//     DPOP_REFUSED without asking the server, until Config.DPoPRetryAfter
//     has passed since the attempt; then one read (under the refresh lease,
//     as every refresh) proves a refresh again with the same key. A server
//     that honours DPoP again resumes the grant without a person; one that
//     still does not suspends it for another interval. RevokeAuthorization
//     and deleting the provider revoke the kept refresh token at the server.

// dpopSuspended reports whether cred is a grant suspended after a refresh
// that did not honour DPoP, holding its refresh token.
func dpopSuspended(cred *repository.Credential) bool {
	return cred != nil && cred.Status == domain.StatusReauthRequired && cred.Reason == domain.ReasonDPoPRefused &&
		cred.HasRefresh && len(cred.Tokens) > 0
}

// dpopRetryAt is when a suspended grant's refresh is tried again.
func (s *Service) dpopRetryAt(cred *repository.Credential) time.Time {
	if cred.LastRefreshAt == nil {
		return time.Time{}
	}
	return cred.LastRefreshAt.Add(s.cfg.DPoPRetryAfter)
}

// dpopRefusedError is a read's answer for a suspended grant.
func (s *Service) dpopRefusedError(cred *repository.Credential) error {
	wait := max(s.dpopRetryAt(cred).Sub(s.now()), 0).Round(time.Second)
	return apperr.FailedPrecondition(domain.ReasonDPoPRefused,
		"the authorization server did not honour DPoP on the last refresh: no token it issued was used; the refresh token is kept and tried again in %s (or authorize the provider again, or disable DPoP for it)", wait)
}

// unboundRefreshToken is the refresh token of a token answer refused for
// its binding (err an *oauthclient.UnboundTokensError), zero when there is
// none.
func unboundRefreshToken(err error) secret.Secret {
	var ub *oauthclient.UnboundTokensError
	if errors.As(err, &ub) {
		return ub.RefreshToken
	}
	return secret.Secret{}
}

// revokeUnbound revokes, at md's revocation endpoint as reg, the tokens of
// a token answer refused for its binding (err an
// *oauthclient.UnboundTokensError) when nothing of it is kept: a grant
// obtained without a refresh token to keep (client credentials, JWT
// bearer, an ID-JAG). Refresh token first (RFC 7009 section 2.1), then
// the access token. Failures are audited; nothing else depends on them.
func (s *Service) revokeUnbound(ctx context.Context, tenant, provider string, md *oauthclient.Metadata, reg *oauthclient.Registration, err error) {
	var ub *oauthclient.UnboundTokensError
	if errors.As(err, &ub) {
		s.revokeFresh(ctx, tenant, provider, md, reg, ub.AccessToken, ub.RefreshToken)
	}
}

// revokeFresh revokes tokens just obtained and never stored, refresh
// token first (RFC 7009 section 2.1), when the server has a revocation
// endpoint. Failures are audited; nothing else depends on them.
func (s *Service) revokeFresh(ctx context.Context, tenant, provider string, md *oauthclient.Metadata, reg *oauthclient.Registration, access, refresh secret.Secret) {
	if md == nil || md.RevocationEndpoint == "" || reg == nil || reg.ClientID == "" {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), persistBudget)
	defer cancel()
	failed := func(reason string) {
		s.audit.Record(rctx, audit.Event{Tenant: tenant, Type: domain.EventRevocationFailed, Provider: provider, Outcome: domain.OutcomeFailure, Reason: reason})
	}
	if !refresh.IsZero() {
		if rerr := s.proto.Revoke(rctx, md, reg, refresh, "refresh_token"); rerr != nil {
			failed(domain.ReasonRevokeRefreshFailed)
		}
	}
	if !access.IsZero() {
		if rerr := s.proto.Revoke(rctx, md, reg, access, "access_token"); rerr != nil {
			failed(domain.ReasonRevokeAccessFailed)
		}
	}
}

// suspendDPoP stores cred as suspended: no access token, the refresh
// token rt, REAUTH_REQUIRED with reason DPOP_REFUSED, the attempt's time
// (the retry clock), unless newer tokens were stored meanwhile. It returns
// the error to give the caller.
func (s *Service) suspendDPoP(ctx context.Context, cred *repository.Credential, h *vault.Held, rt secret.Secret, issued bool) error {
	ref := cred.Ref()
	now := s.now().UTC()
	kept := &oauthclient.Tokens{RefreshToken: rt, TokenType: h.Tokens.TokenType, Scopes: h.Tokens.Scopes}
	ct, err := vault.SealTokens(s.cipher, ref, kept, h.Grant, h.IssuedAt)
	if err != nil {
		return err
	}
	next := *cred
	// The access-token expiry is the attempt's time: nothing in the blob
	// is ever servable.
	next.Tokens, next.HasRefresh, next.ExpiresAt = ct, true, &now
	next.Status, next.Reason = domain.StatusReauthRequired, domain.ReasonDPoPRefused
	next.LastRefreshAt, next.KeyID, next.UpdatedAt = &now, s.cipher.PrimaryID(), now
	det := map[string]string{"refresh_token": "kept"}
	if issued {
		det["unbound_access_token"] = "discarded"
	}
	s.cache.drop(ref.Key())
	_, err = s.store.PutCredential(ctx, &next, cred.Generation,
		audit.Rows(ctx, s.now(), audit.Event{Tenant: ref.Tenant, Type: domain.EventReauthRequired, Provider: ref.Provider,
			Outcome: domain.OutcomeFailure, Reason: domain.ReasonDPoPRefused, Details: det})...)
	s.cache.drop(ref.Key())
	if apperr.KindOf(err) == apperr.KindAborted {
		return apperr.Aborted("the credential changed during the refresh; retry")
	}
	if err != nil {
		return err
	}
	s.metrics.ReauthRequired.Inc()
	return s.dpopRefusedError(&next)
}

// retrySuspended is the read path of a suspended grant: DPOP_REFUSED
// until its retry is due, then one shared refresh.
func (s *Service) retrySuspended(ctx context.Context, ref domain.GrantRef, cred *repository.Credential) (*Token, error) {
	if s.now().Before(s.dpopRetryAt(cred)) {
		return nil, s.dpopRefusedError(cred)
	}
	return s.refreshShared(ctx, ref, "")
}
