package authflow

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

// parkedFlow authorizes a flow started with require_completion and
// delivers its callback, returning the completion code.
func (e *env) parkedFlow(tb testing.TB) string {
	tb.Helper()
	in := startIn()
	in.ReturnURL, in.RequireCompletion = returnOrigin+"/done", true
	f := e.authorize(tb, in)
	res := e.svc.Callback(context.Background(), f.callback())
	if !res.OK || len(res.CompletionCode) != 43 || res.ReturnURL != in.ReturnURL {
		tb.Fatalf("callback %+v, want a parked grant with a 256-bit code", res)
	}
	return res.CompletionCode
}

// storedTokens reports whether the provider's grant row holds tokens (a
// pending grant has a row without them).
func (e *env) storedTokens() bool {
	c := e.store.Credential(testTenant, testProvider)
	return c != nil && len(c.Tokens) > 0
}

func completeIn(user, code string) CompleteInput {
	return CompleteInput{Tenant: testTenant, Provider: testProvider, User: user, Code: code}
}

// TestCompletionStoresOnlyForTheFlowsUser: a parked grant is not stored
// by the callback; CompleteAuthorization stores it for the flow's user,
// once. Another provider's code consumes nothing; another user spends the
// code, revokes the tokens and leaves the grant unauthorized.
func TestCompletionStoresOnlyForTheFlowsUser(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	ctx := context.Background()
	code := e.parkedFlow(t)
	if e.storedTokens() {
		t.Fatal("the callback stored a grant that needs completion")
	}
	e.wantStatus(t, testProvider, domain.StatusPending, "")
	if ev := e.event(t, domain.EventCallbackSucceeded); details(t, ev)["completion"] != "required" {
		t.Fatalf("callback event %+v", ev)
	}

	other := completeIn(testUser, code)
	other.Provider = "other"
	_, err := e.svc.Complete(ctx, other)
	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonCompletionInvalid)

	_, err = e.svc.Complete(ctx, completeIn("mallory", code))
	wantErr(t, err, apperr.KindPermissionDenied, domain.ReasonCompletionUserMismatch)
	if e.storedTokens() {
		t.Fatal("a completion for another user stored the grant")
	}
	e.wantStatus(t, testProvider, domain.StatusUnauthorized, domain.ReasonCompletionUserMismatch)
	if len(e.as.refresh) != 0 {
		t.Fatalf("the unstored refresh token was not revoked: %v", e.as.refresh)
	}
	_, err = e.svc.Complete(ctx, completeIn(testUser, code))
	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonCompletionInvalid)

	code = e.parkedFlow(t)
	done, err := e.svc.Complete(ctx, completeIn(testUser, code))
	if err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if done.Issuer != testIssuer || !done.HasRefresh || done.ExpiresAt.IsZero() || !slices.Contains(done.Scopes, "files:read") {
		t.Fatalf("Complete = %+v", done)
	}
	e.wantStatus(t, testProvider, domain.StatusAuthorized, "")
	_, h := e.held(t, testProvider)
	if h.Tokens.AccessToken.IsZero() || h.Tokens.RefreshToken.IsZero() || h.Grant.Issuer != testIssuer {
		t.Fatalf("stored grant %+v", h)
	}
	var outcomes []domain.Outcome
	for _, ev := range e.events(domain.EventAuthCompleted) {
		outcomes = append(outcomes, domain.Outcome(ev.Outcome))
	}
	if len(outcomes) != 4 || !slices.Contains(outcomes, domain.OutcomeSuccess) {
		t.Fatalf("completion events %v, want 3 refusals and a success", outcomes)
	}
	_, err = e.svc.Complete(ctx, completeIn(testUser, code))
	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonCompletionInvalid)
}

// TestCompletionRefuses: bad input changes nothing; an expired or unknown
// code is COMPLETION_INVALID; an unreachable store is UNAVAILABLE and
// leaves the code usable.
func TestCompletionRefuses(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	ctx := context.Background()
	code := e.parkedFlow(t)
	for _, in := range []CompleteInput{completeIn("", code), completeIn(testUser, ""), completeIn(testUser, strings.Repeat("c", 129))} {
		_, err := e.svc.Complete(ctx, in)
		wantErr(t, err, apperr.KindInvalidArgument, domain.ReasonInvalidArgument)
	}
	_, err := e.svc.Complete(ctx, completeIn(testUser, code[:42]+"x"))
	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonCompletionInvalid)
	e.flows.failOn("Get", errStoreDown)
	_, err = e.svc.Complete(ctx, completeIn(testUser, code))
	wantErr(t, err, apperr.KindUnavailable, domain.ReasonUnavailable)
	e.flows.failOn("Get", nil)
	e.clock.Advance(6 * time.Minute)
	_, err = e.svc.Complete(ctx, completeIn(testUser, code))
	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonCompletionInvalid)

	for _, in := range []StartInput{
		{Tenant: testTenant, Provider: testProvider, User: testUser, RequireCompletion: true},
		{Tenant: testTenant, Provider: testProvider, User: testUser, ExpectedSubject: strings.Repeat("s", 256)},
		{Tenant: testTenant, Provider: testProvider, User: testUser, ExpectedSubject: "a\nb"},
	} {
		_, err := e.svc.Start(ctx, in)
		wantErr(t, err, apperr.KindInvalidArgument, domain.ReasonInvalidArgument)
	}
}

// TestExpectedSubjectWithoutIDToken: a flow expecting a subject requests
// openid, and a token response without an ID token stores nothing and
// revokes the tokens (ID_TOKEN_INVALID).
func TestExpectedSubjectWithoutIDToken(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	in := startIn()
	in.ExpectedSubject = "alice-at-as"
	e.as.md.ASScopesSupported = append(e.as.md.ASScopesSupported, "openid")
	f := e.authorize(t, in)
	if !slices.Contains(f.started.Scopes, "openid") {
		t.Fatalf("scopes %v lack openid", f.started.Scopes)
	}
	res := e.svc.Callback(context.Background(), f.callback())
	if res.OK || res.Reason != domain.ReasonIDTokenInvalid {
		t.Fatalf("callback %+v, want ID_TOKEN_INVALID", res)
	}
	if e.storedTokens() || len(e.as.refresh) != 0 {
		t.Fatal("tokens without the expected ID token were stored or not revoked")
	}
	if got := completionScopes(StartInput{ExpectedSubject: "x", AdditionalScopes: []string{"openid"}}); !slices.Equal(got, []string{"openid"}) {
		t.Fatalf("completionScopes = %v", got)
	}
}
