package authflow

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/service/audit"
)

// A flow lives in the flow store (Redis) only. Two faults used to lose it:
//
//   - A store that stalls during the callback: the take ran, its answer
//     was lost, and the browser's retry found nothing. The callback now
//     claims the flow with a token derived from the browser's own secret
//     (its cookie) and the state, so the same browser's next request gets
//     the flow back from the claim's receipt while any other request finds
//     it used; the claim is settled (exclusively, retry-safe) before the
//     code goes anywhere, so a code is never exchanged twice.
//   - A store that restarts empty (or evicts) between the start and the
//     callback. The browser's flow cookie carries, beside its secret, a
//     sealed restart hint (tenant, provider, user, return URL, scopes, the
//     completion binding, a deadline, the hash of the secret; AEAD under the keyring, bound to the
//     cookie's name). The lost flow's page then offers to start again: a new
//     flow for the same provider and user, bound to the same browser, which
//     only the browser holding that cookie can ask for, and only until the
//     first flow's restart deadline (restarts do not extend it).

// restartWindow is how long after a flow's expiry its browser may still
// start it again.
func (s *Service) restartWindow() time.Duration { return s.cfg.FlowTTL }

// claimToken is the token a callback claims its flow with: only the
// browser holding the secret, returning with the same state, presents it.
func claimToken(secret, state string) string {
	h := sha256.Sum256([]byte("mcpauth/v1/claim\x00" + secret + "\x00" + state))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// splitCookie separates a flow cookie into the browser secret and the
// sealed restart hint (absent from cookies set before hints existed).
func splitCookie(v string) (secret, hint string) {
	secret, hint, _ = strings.Cut(v, ".")
	return secret, hint
}

// cookieOf is the flow cookie the browser sent for the callback's state.
func cookieOf(in CallbackInput) string {
	if in.BrowserSecret == nil {
		return ""
	}
	return in.BrowserSecret(Binding(in.State))
}

// consumeFlow finds the callback's flow and consumes it for this browser,
// or answers the callback when it cannot: another browser's request (the
// flow stays pending for its own), a store that cannot answer now (try
// again: nothing was consumed that the next try cannot claim), or a flow
// gone (offering a restart when the browser may start it again).
func (s *Service) consumeFlow(ctx context.Context, in CallbackInput) (*flowRecord, *CallbackResult) {
	key := flowKey("state", in.State)
	cookie := cookieOf(in)
	secret, _ := splitCookie(cookie)
	rec, sealed, err := s.flows.peek(ctx, key, s.now())
	switch {
	case err == nil && !browserMatches(rec, secret):
		// Not the browser that started the flow: the flow stays pending for
		// the one that did, and the grant's status does not change.
		s.audit.Record(audit.WithScope(ctx, rec.Tenant, rec.Provider),
			rec.event(domain.EventCallbackFailed, domain.OutcomeFailure, domain.ReasonBrowserMismatch, nil))
		return nil, &CallbackResult{Reason: domain.ReasonBrowserMismatch, Tenant: rec.Tenant, Provider: rec.Provider, ReturnURL: rec.ReturnURL}
	case err == nil:
	case errors.Is(err, errFlowGone) && secret != "":
		// Gone, or claimed by an earlier request of this browser whose
		// answer was lost: the claim tells.
	default:
		return nil, s.lostFlow(ctx, err, in.State, cookie)
	}
	// Of concurrent callbacks with the same state, only this browser's
	// get the record, and of those exactly one settles it.
	token := claimToken(secret, in.State)
	claimed, csealed, err := s.flows.claim(ctx, key, token, s.cfg.FlowTTL, s.now())
	if err == nil && (rec != nil && string(csealed) != string(sealed) || !browserMatches(claimed, secret)) {
		err = errFlowGone
	}
	if err == nil {
		err = s.flows.settle(ctx, key, token)
	}
	if err != nil {
		return nil, s.lostFlow(ctx, err, in.State, cookie)
	}
	return claimed, nil
}

// lostFlow answers a callback whose state names no flow this browser can
// complete: try again when the store cannot answer now, else a lost flow,
// which the browser that opened it may start again.
func (s *Service) lostFlow(ctx context.Context, err error, state, cookie string) *CallbackResult {
	if apperr.KindOf(err) == apperr.KindUnavailable {
		return &CallbackResult{Reason: domain.ReasonUnavailable}
	}
	s.log.WarnContext(ctx, "oauth callback with unknown, expired or replayed state")
	res := &CallbackResult{Reason: domain.ReasonStateInvalid}
	if !errors.Is(err, errFlowGone) {
		// The store failed otherwise: the flow may still be there.
		return res
	}
	if h, err := s.openHint(Binding(state), cookie); err == nil {
		res.Restart, res.Tenant, res.Provider = Binding(state), h.Tenant, h.Provider
	}
	return res
}

// restartHint is what a flow cookie remembers to start the flow again.
// It holds no secret of the flow (no state, verifier or code).
type restartHint struct {
	Tenant    string   `json:"t"`
	Provider  string   `json:"p"`
	User      string   `json:"u"`
	ReturnURL string   `json:"ru,omitempty"`
	Scopes    []string `json:"as,omitempty"`
	// RequireCompletion and ExpectedSubject carry the first flow's
	// completion binding into the restarted one.
	RequireCompletion bool   `json:"rc,omitempty"`
	ExpectedSubject   string `json:"es,omitempty"`
	// Until (Unix seconds) ends the restarts.
	Until int64 `json:"x"`
	// Browser is the hash of the secret the cookie holds beside the hint.
	Browser string `json:"b"`
}

// hintScope binds a sealed hint to the cookie name it is stored under.
func hintScope(binding string) keyring.Scope {
	return keyring.Scope{Tenant: flowTenant, Provider: "restart:" + binding, Field: "restart"}
}

// flowCookie is the cookie value of a flow's browser: its secret, a dot,
// and the sealed restart hint.
func (s *Service) flowCookie(rec *flowRecord, secret string) (string, error) {
	h := restartHint{Tenant: rec.Tenant, Provider: rec.Provider, User: rec.User, ReturnURL: rec.ReturnURL, Scopes: rec.AddScopes,
		RequireCompletion: rec.RequireCompletion, ExpectedSubject: rec.ExpectedSubject,
		Until: max(rec.RestartUntil, rec.ExpiresAt), Browser: rec.Browser}
	raw, err := json.Marshal(h)
	if err != nil {
		return "", err
	}
	ct, err := s.cipher.Seal(hintScope(Binding(rec.State)), raw)
	if err != nil {
		return "", err
	}
	return secret + "." + base64.RawURLEncoding.EncodeToString(ct), nil
}

// openHint opens the restart hint of the flow cookie stored under binding,
// checking that it was sealed for that name, holds the secret beside it,
// and has not passed its deadline; errFlowGone otherwise.
func (s *Service) openHint(binding, cookie string) (*restartHint, error) {
	secret, sealed := splitCookie(cookie)
	ct, err := base64.RawURLEncoding.DecodeString(sealed)
	if secret == "" || len(cookie) > 4096 || err != nil {
		return nil, errFlowGone
	}
	raw, err := s.cipher.Open(hintScope(binding), ct)
	if err != nil {
		return nil, errFlowGone
	}
	var h restartHint
	if json.Unmarshal(raw, &h) != nil || h.Browser != browserHash(secret) || s.now().Unix() > h.Until {
		return nil, errFlowGone
	}
	return &h, nil
}

// Restart starts again, for the browser that opened it, a flow that was
// lost or expired: the flow cookie stored under binding names the tenant,
// provider and user, and proves that this browser opened the first flow.
// The new flow is started as StartAuthorization would (discovery,
// registration, audit, actor "user:<user>") and bound to this browser at
// once; the answer is what the authorize route answers.
func (s *Service) Restart(ctx context.Context, binding, cookie string) (*BrowserStart, error) {
	h, err := s.openHint(binding, cookie)
	if err != nil {
		return nil, err
	}
	st, handle, err := s.start(ctx, StartInput{Tenant: h.Tenant, Provider: h.Provider, User: h.User, ReturnURL: h.ReturnURL,
		AdditionalScopes: h.Scopes, RequireCompletion: h.RequireCompletion, ExpectedSubject: h.ExpectedSubject},
		restartOf{until: h.Until, actor: "user:" + h.User})
	if err != nil {
		return nil, err
	}
	if st.Status == domain.StatusNotRequired {
		return nil, apperr.FailedPrecondition(domain.ReasonNotRequired, "the MCP server no longer asks for authorization: there is nothing to start")
	}
	return s.BeginBrowser(ctx, handle)
}

// restartOf marks a start made by Restart: the first flow's restart
// deadline and the person as the actor. The zero value is a caller's start.
type restartOf struct {
	until int64
	actor string
}
