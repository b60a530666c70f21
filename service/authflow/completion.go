package authflow

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/validate"
)

// Completion binding. An authorize URL is a bearer link: whoever opens it
// first binds the flow to their browser and signs in at the authorization
// server with their own account, and the grant is stored for the user the
// flow was started for. Forwarded to someone else (or planted by an
// attacker who started a flow for himself), it connects the wrong account
// to a user's connection: the cross-user session fixation the OAuth
// security BCP update warns token vaults about. Two defences, both chosen
// by the calling platform at StartAuthorization:
//
//   - require_completion: the callback exchanges the code but parks the
//     tokens sealed in the flow store (encrypted, for the flow's TTL) and
//     sends the browser to the platform's return URL with a one-time
//     completion code. The platform's backend calls CompleteAuthorization
//     with the user signed in to its own session in that browser; the grant
//     is stored only when that user is the flow's user. Single use, audited.
//   - expected_subject: the authorization server must return an OpenID
//     Connect ID token whose sub is the account the platform expects the
//     person to use; otherwise the callback stores nothing.
//
// Tokens that are not stored (a mismatch, an unused completion after a
// failure) are revoked at the server when it has a revocation endpoint.

// maxExpectedSubject bounds expected_subject (OpenID Connect Core 1.0
// section 2: sub "MUST NOT exceed 255 ASCII characters").
const maxExpectedSubject = 255

// checkCompletionInput validates StartAuthorization's completion settings.
func checkCompletionInput(in StartInput) error {
	if in.RequireCompletion && in.ReturnURL == "" {
		return apperr.Invalid("return_url", "is required with require_completion (the completion code is delivered to it)")
	}
	if s := in.ExpectedSubject; s != "" {
		if len(s) > maxExpectedSubject || strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
			return apperr.Invalid("expected_subject", "must be at most %d bytes without control characters", maxExpectedSubject)
		}
	}
	return nil
}

// completionScopes adds openid to the requested scopes when an ID token
// is expected (OpenID Connect Core 1.0 section 3.1.2.1: without it the
// server issues none).
func completionScopes(in StartInput) []string {
	if in.ExpectedSubject == "" {
		return in.AdditionalScopes
	}
	for _, s := range in.AdditionalScopes {
		if s == "openid" {
			return in.AdditionalScopes
		}
	}
	return append(append([]string(nil), in.AdditionalScopes...), "openid")
}

// parkedGrant is an exchanged but not yet stored authorization: the flow
// (without its PKCE verifier), the grant's metadata and the tokens. It
// lives only sealed in the flow store.
type parkedGrant struct {
	Flow      flowRecord  `json:"f"`
	Grant     vault.Grant `json:"g"`
	Access    string      `json:"a"`
	Refresh   string      `json:"r,omitempty"`
	TokenType string      `json:"tt,omitempty"`
	// TokenExpiresAt is the access token's expiry (Unix seconds), 0 unknown.
	TokenExpiresAt int64    `json:"te,omitempty"`
	Scopes         []string `json:"s,omitempty"`
	// ExpiresAt ends the completion (Unix seconds).
	ExpiresAt int64 `json:"x"`
}

func (p *parkedGrant) tokens() *oauthclient.Tokens {
	t := &oauthclient.Tokens{AccessToken: secret.New(p.Access), RefreshToken: secret.New(p.Refresh), TokenType: p.TokenType, Scopes: p.Scopes}
	if p.TokenExpiresAt != 0 {
		t.ExpiresAt = time.Unix(p.TokenExpiresAt, 0)
	}
	return t
}

// parkedScope is the encryption scope of a parked grant under its store
// key: a sealed value moved to another key does not open.
func parkedScope(key string) keyring.Scope {
	return keyring.Scope{Tenant: flowTenant, Provider: key, Field: "completion"}
}

// bindCompletion runs the completion defences of a callback whose code was
// exchanged. It returns nil when the grant is to be stored now, else the
// callback's result: a failure (nothing stored, tokens revoked) or a
// parked grant with its completion code.
func (s *Service) bindCompletion(ctx context.Context, rec *flowRecord, row *repository.Provider, reg *oauthclient.Registration,
	g vault.Grant, t *oauthclient.Tokens, fail func(reason, detail string) *CallbackResult) *CallbackResult {
	if rec.ExpectedSubject != "" {
		if err := oauthclient.CheckIDToken(t.IDToken, rec.Issuer, rec.ClientID, rec.ExpectedSubject, s.now()); err != nil {
			s.revokeUnstored(ctx, rec, reg, t)
			if errors.Is(err, oauthclient.ErrIDTokenSubject) {
				return fail(domain.ReasonIDTokenSubjectMismatch, "")
			}
			s.log.WarnContext(ctx, "id token refused", "tenant", rec.Tenant, "provider", rec.Provider, "err", err.Error())
			return fail(domain.ReasonIDTokenInvalid, "")
		}
	}
	if !rec.RequireCompletion {
		return nil
	}
	code, err := s.park(ctx, rec, g, t)
	if err != nil {
		s.log.ErrorContext(ctx, "parking the grant failed", "tenant", rec.Tenant, "provider", rec.Provider, "err", err.Error())
		s.revokeUnstored(ctx, rec, reg, t)
		return fail(domain.ReasonStoreFailed, "")
	}
	details := callbackDetails(rec, t)
	details["completion"] = "required"
	details["user"] = rec.User
	s.audit.Record(ctx, rec.event(domain.EventCallbackSucceeded, domain.OutcomeSuccess, "", details))
	return &CallbackResult{OK: true, CompletionCode: code, Tenant: rec.Tenant, Provider: rec.Provider, ReturnURL: rec.ReturnURL}
}

// park seals the exchanged grant in the flow store under a fresh one-time
// completion code, for what is left of the flow's lifetime (at least a
// minute), and returns the code.
func (s *Service) park(ctx context.Context, rec *flowRecord, g vault.Grant, t *oauthclient.Tokens) (string, error) {
	code, err := randomToken(32)
	if err != nil {
		return "", apperr.Internal(err, "completion code")
	}
	ttl := max(time.Unix(rec.ExpiresAt, 0).Sub(s.now()), time.Minute)
	p := parkedGrant{Flow: *rec, Grant: g, Access: t.AccessToken.Reveal(), Refresh: t.RefreshToken.Reveal(), TokenType: t.TokenType,
		Scopes: t.Scopes, ExpiresAt: s.now().Add(ttl).Unix()}
	p.Flow.Verifier, p.Flow.Browser = "", ""
	if !t.ExpiresAt.IsZero() {
		p.TokenExpiresAt = t.ExpiresAt.Unix()
	}
	raw, err := json.Marshal(&p)
	if err != nil {
		return "", apperr.Internal(err, "encoding parked grant")
	}
	key := flowKey("completion", code)
	ct, err := s.cipher.Seal(parkedScope(key), raw)
	if err != nil {
		return "", apperr.Internal(err, "sealing parked grant")
	}
	if err := s.flows.store.Put(ctx, key, ct, ttl); err != nil {
		return "", storeErr(err)
	}
	return code, nil
}

// openParked reads a parked grant without consuming it; errFlowGone when
// absent, sealed under another key, or past its end.
func (s *Service) openParked(ctx context.Context, key string) (*parkedGrant, []byte, error) {
	ct, err := s.flows.store.Get(ctx, key)
	if err != nil {
		return nil, nil, flowStoreErr(err)
	}
	raw, err := s.cipher.Open(parkedScope(key), ct)
	if err != nil {
		return nil, nil, errFlowGone
	}
	var p parkedGrant
	if err := json.Unmarshal(raw, &p); err != nil || s.now().Unix() > p.ExpiresAt {
		return nil, nil, errFlowGone
	}
	return &p, ct, nil
}

// CompleteInput is a platform backend's confirmation of a parked grant.
type CompleteInput struct {
	Tenant, Provider string
	// User is the user signed in to the platform in the browser that came
	// back with the code.
	User string
	// Code is the one-time completion code from the return URL.
	Code string
}

// Completed describes the stored grant; it carries no token.
type Completed struct {
	Issuer     string
	Scopes     []string
	ExpiresAt  time.Time
	HasRefresh bool
}

// errCompletionInvalid answers a code that names no parked grant of the
// provider, whatever the cause, so that a caller learns nothing about
// other providers' or tenants' flows.
var errCompletionInvalid = apperr.FailedPrecondition(domain.ReasonCompletionInvalid,
	"the completion code is unknown, expired or already used: start the authorization again")

// Complete stores a parked grant when in.User is the user its flow was
// started for. The code is single use: the record is consumed atomically
// before the user is compared, so a wrong user burns it (and the tokens
// are revoked) rather than letting anyone try again. A code of another
// provider or tenant consumes nothing.
func (s *Service) Complete(ctx context.Context, in CompleteInput) (*Completed, error) {
	if err := validate.UserID("user", in.User); err != nil {
		return nil, err
	}
	if in.Code == "" || len(in.Code) > 128 {
		return nil, apperr.Invalid("completion_code", "must be 1 to 128 characters")
	}
	ctx = audit.WithScope(ctx, in.Tenant, in.Provider)
	refused := func(reason string) {
		s.audit.Record(ctx, audit.Event{Tenant: in.Tenant, Type: domain.EventAuthCompleted, Provider: in.Provider, User: in.User,
			Outcome: domain.OutcomeFailure, Reason: reason, Details: map[string]string{"user": in.User}})
	}
	key := flowKey("completion", in.Code)
	p, sealed, err := s.openParked(ctx, key)
	if err == nil && (p.Flow.Tenant != in.Tenant || p.Flow.Provider != in.Provider) {
		err = errFlowGone
	}
	if err == nil {
		err = s.consumeParked(ctx, key, sealed)
	}
	if err != nil {
		if apperr.KindOf(err) == apperr.KindUnavailable {
			return nil, err
		}
		refused(domain.ReasonCompletionInvalid)
		return nil, errCompletionInvalid
	}
	rec := &p.Flow
	row, err := s.store.GetProvider(ctx, rec.Tenant, rec.Provider)
	if err != nil || row.URLHash != rec.URLHash {
		refused(domain.ReasonProviderChanged)
		return nil, apperr.FailedPrecondition(domain.ReasonProviderChanged, "the provider changed or was deleted during the authorization: start it again")
	}
	if p.Flow.User != in.User {
		s.completionMismatch(ctx, rec, row, p)
		refused(domain.ReasonCompletionUserMismatch)
		e := apperr.PermissionDenied("the authorization was started for another user: it was not stored")
		e.Reason = domain.ReasonCompletionUserMismatch
		return nil, e
	}
	t := p.tokens()
	done := audit.Rows(ctx, s.now(), audit.Event{Tenant: rec.Tenant, Type: domain.EventAuthCompleted, Provider: rec.Provider,
		User: rec.GrantUser, Outcome: domain.OutcomeSuccess, Details: map[string]string{"user": rec.User, "issuer": rec.Issuer, "scopes": strings.Join(t.Scopes, " ")}})
	if err := s.grants.StoreNew(ctx, row, rec.grant().User, p.Grant, t, done...); err != nil {
		return nil, err
	}
	if err := s.store.CountStepUp(ctx, rec.grant()); err != nil {
		s.log.WarnContext(ctx, "counting a step-up failed", "tenant", rec.Tenant, "provider", rec.Provider, "err", err.Error())
	}
	return &Completed{Issuer: rec.Issuer, Scopes: t.Scopes, ExpiresAt: t.ExpiresAt, HasRefresh: !t.RefreshToken.IsZero()}, nil
}

// consumeParked takes the record openParked read, atomically; errFlowGone
// when another request took it first.
func (s *Service) consumeParked(ctx context.Context, key string, sealed []byte) error {
	ct, err := s.flows.store.Take(ctx, key)
	if err != nil {
		return flowStoreErr(err)
	}
	if !bytes.Equal(ct, sealed) {
		return errFlowGone
	}
	return nil
}

// completionMismatch drops a parked grant confirmed for another user: its
// tokens are revoked and a pending grant goes back to unauthorized.
func (s *Service) completionMismatch(ctx context.Context, rec *flowRecord, row *repository.Provider, p *parkedGrant) {
	if reg, err := s.flowRegistration(ctx, row, rec); err == nil {
		s.revokeUnstored(ctx, rec, reg, p.tokens())
	}
	_, _ = s.store.SetGrantStatus(ctx, rec.grant(), []domain.AuthStatus{domain.StatusPending},
		domain.StatusUnauthorized, domain.ReasonCompletionUserMismatch, s.cipher.PrimaryID())
}

// tokenRevoker is the RFC 7009 revocation *oauthclient.Client offers; a
// Protocol without it leaves unstored tokens to expire.
type tokenRevoker interface {
	Revoke(ctx context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, token secret.Secret, hint string) error
}

// revokeUnstored revokes tokens mcpauth obtained but will not store
// (best effort: the refresh token first, which ends the grant at most
// servers, then the access token).
func (s *Service) revokeUnstored(ctx context.Context, rec *flowRecord, reg *oauthclient.Registration, t *oauthclient.Tokens) {
	r, ok := s.proto.(tokenRevoker)
	if !ok || rec.RevocationURL == "" {
		return
	}
	md := &oauthclient.Metadata{Issuer: rec.Issuer, TokenEndpoint: rec.TokenEndpoint, RevocationEndpoint: rec.RevocationURL}
	for _, tok := range []struct {
		v    secret.Secret
		hint string
	}{{t.RefreshToken, "refresh_token"}, {t.AccessToken, "access_token"}} {
		if tok.v.IsZero() {
			continue
		}
		if err := r.Revoke(ctx, md, reg, tok.v, tok.hint); err != nil {
			s.log.WarnContext(ctx, "revoking unstored tokens failed", "tenant", rec.Tenant, "provider", rec.Provider, "err", err.Error())
		}
	}
}
