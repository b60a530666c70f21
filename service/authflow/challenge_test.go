package authflow

import (
	"context"
	"errors"
	"maps"
	"net/url"
	"slices"
	"testing"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
)

// record stores a challenge as the tools use case does after a refused
// MCP request.
func (e *env) record(tb testing.TB, status int, errCode, scope string) {
	tb.Helper()
	if _, err := e.store.RecordChallenge(context.Background(), &repository.Challenge{TenantID: testTenant, ProviderID: testProvider,
		HTTPStatus: status, Error: errCode, Scope: scope, ResourceMetadata: testPRMURL}, e.keys.PrimaryID()); err != nil {
		tb.Fatal(err)
	}
}

// TestStartUsesRecordedChallenge: the probe (initialize) is open, so Start
// first answers NOT_REQUIRED; once an MCP request was challenged, Start
// starts a flow from the challenge (its scope first) without probing, and
// the status says why.
func TestStartUsesRecordedChallenge(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	e.as.probe = oauthclient.ProbeResult{NotRequired: true}
	st, err := e.svc.Start(context.Background(), startIn())
	if err != nil || st.Status != domain.StatusNotRequired {
		t.Fatalf("Start = %+v, %v; want NOT_REQUIRED", st, err)
	}
	e.record(t, 401, "", "files:write")
	e.wantStatus(t, testProvider, domain.StatusUnauthorized, domain.ReasonAuthorizationRequired)
	probes := e.as.counts().probes
	st, err = e.svc.Start(context.Background(), startIn())
	if err != nil || st.Status != domain.StatusPending {
		t.Fatalf("Start after the challenge = %+v, %v", st, err)
	}
	if st.Scopes[0] != "files:write" || slices.Contains(st.Scopes, "files:read") {
		t.Fatalf("scopes %v, want the challenge's", st.Scopes)
	}
	if n := e.as.counts().probes; n != probes {
		t.Fatalf("%d probes after the challenge was recorded", n-probes)
	}
	if f := e.as.forgotten; len(f) == 0 || f[0] != testServerURL {
		t.Fatalf("cached discovery not dropped for a fresher challenge: %v", f)
	}
	d, err := e.svc.Diagnose(context.Background(), testTenant, testProvider)
	if err != nil || !d.Ready || d.Steps[0].Action != oauthclient.ActionRecordedChallenge {
		t.Fatalf("Diagnose = %+v, %v", d, err)
	}
}

// TestStepUpUnionAndBound: a 403 insufficient_scope after authorizing asks
// for the granted scopes plus the challenged ones; after
// MaxStepUpAttempts completed step-ups the next Start refuses.
func TestStepUpUnionAndBound(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	e.complete(t, e.authorize(t, startIn()))
	for i := range domain.MaxStepUpAttempts {
		e.record(t, 403, "insufficient_scope", "admin")
		f := e.authorize(t, startIn())
		if !slices.Contains(f.started.Scopes, "admin") || !slices.Contains(f.started.Scopes, "files:read") {
			t.Fatalf("step-up %d asked for %v, want the union with the granted scopes", i, f.started.Scopes)
		}
		e.complete(t, f)
	}
	ch, err := e.store.GetChallenge(context.Background(), domain.TenantGrant(testTenant, testProvider))
	if err != nil || ch.StepUpAttempts != domain.MaxStepUpAttempts {
		t.Fatalf("challenge %+v, %v", ch, err)
	}
	_, err = e.svc.Start(context.Background(), startIn())
	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonStepUpExhausted)
	if d, err := e.svc.Diagnose(context.Background(), testTenant, testProvider); err != nil || d.Ready {
		t.Fatalf("Diagnose = %+v, %v", d, err)
	}
}

// TestAuthServerMoveMarksReauth: when the metadata names another
// authorization server than the one that issued the grant, the grant is
// REAUTH_REQUIRED (audited once) and the next flow registers a new client
// with the new server.
func TestAuthServerMoveMarksReauth(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	e.complete(t, e.authorize(t, startIn()))
	oldClient := e.as.lastExchange.reg.ClientID
	const newIssuer = "https://as2.example.com"
	e.as.md.Issuer = newIssuer
	e.as.md.AuthorizationEndpoint, e.as.md.TokenEndpoint, e.as.md.RegistrationEndpoint = newIssuer+"/authorize", newIssuer+"/token", newIssuer+"/register"
	f := e.authorize(t, startIn())
	e.wantStatus(t, testProvider, domain.StatusReauthRequired, domain.ReasonAuthServerChanged)
	if _, err := e.svc.Diagnose(context.Background(), testTenant, testProvider); err != nil {
		t.Fatal(err)
	}
	evs := e.events(domain.EventAuthServerChanged)
	if len(evs) != 1 {
		t.Fatalf("%d AS change events, want 1", len(evs))
	}
	if d := details(t, evs[0]); d["old_issuer"] != testIssuer || d["new_issuer"] != newIssuer {
		t.Fatalf("event details %v", d)
	}
	if f.started.Issuer != newIssuer || e.as.counts().registrations != 2 {
		t.Fatalf("flow at %q after %d registrations", f.started.Issuer, e.as.counts().registrations)
	}
	e.complete(t, f)
	if c := e.as.lastExchange.reg.ClientID; c == oldClient {
		t.Fatal("the old server's client was presented to the new server")
	}
	e.wantStatus(t, testProvider, domain.StatusAuthorized, "")
}

// TestDefaultEndpointsAlwaysSendS256: 2025-03-26 servers without any
// metadata advertise nothing, and S256 is sent anyway.
func TestDefaultEndpointsAlwaysSendS256(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	e.as.md.DefaultEndpoints, e.as.md.Legacy, e.as.md.CodeChallengeMethods = true, true, nil
	st, err := e.svc.Start(context.Background(), startIn())
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	b, err := e.svc.BeginBrowser(context.Background(), handle(t, st))
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(b.RedirectURL)
	if u.Query().Get("code_challenge_method") != "S256" || u.Query().Get("code_challenge") == "" {
		t.Fatalf("redirect %s", b.RedirectURL)
	}
	if evs := e.events(domain.EventCompatRelaxation); len(evs) != 0 {
		t.Fatalf("a compatibility relaxation was recorded: %+v", evs)
	}
	if d, err := e.svc.Diagnose(context.Background(), testTenant, testProvider); err != nil || !d.Ready || !d.PKCES256Supported {
		t.Fatalf("Diagnose = %+v, %v", d, err)
	}
}

func TestTokenErrorDetails(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want map[string]string
	}{
		{oauthclient.ErrInvalidGrant, map[string]string{"error": "invalid_grant"}},
		{oauthclient.ErrInvalidClient, map[string]string{"error": "invalid_client"}},
		{&oauthclient.OAuthError{Code: "invalid_scope", Status: 400}, map[string]string{"error": "invalid_scope"}},
		{&oauthclient.TemporaryError{Status: 503}, map[string]string{"error": "temporarily_unavailable", "http_status": "503"}},
		{&oauthclient.TemporaryError{}, map[string]string{"error": "unreachable"}},
		{&oauthclient.StatusError{Status: 418}, map[string]string{"http_status": "418"}},
		{errors.New("other"), nil},
	}
	for _, tc := range tests {
		if got := tokenErrorDetails(tc.err); !maps.Equal(got, tc.want) {
			t.Errorf("tokenErrorDetails(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
