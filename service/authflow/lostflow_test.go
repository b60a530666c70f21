package authflow

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/statestore"
)

// loseFlows empties the flow store, as a Redis restart or eviction does.
func (e *env) loseFlows(tb testing.TB) {
	old := e.flows.Memory
	e.flows.Memory = statestore.NewMemory()
	tb.Cleanup(func() { _ = e.flows.Memory.Close(); _ = old.Close() })
}

// restartFlow starts a lost flow again in its browser and approves it.
func (e *env) restartFlow(tb testing.TB, f *flow) *flow {
	tb.Helper()
	b, err := e.svc.Restart(context.Background(), f.browser.Binding, f.browser.BrowserSecret)
	if err != nil {
		tb.Fatalf("Restart: %v", err)
	}
	auth, err := e.as.Authorize(b.RedirectURL)
	if err != nil {
		tb.Fatalf("Authorize: %v", err)
	}
	return &flow{browser: b, auth: auth}
}

// TestLostFlowStartsAgain (issue 15, case 8): the flow store loses the
// flow between the browser's visit and the callback. The callback offers
// the browser that opened the flow a restart; the restart is a new flow for
// the same provider, user, return URL and scopes, audited with the person
// as actor, which completes; a restart of the restart keeps the first
// flow's deadline.
func TestLostFlowStartsAgain(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	in := startIn()
	in.ReturnURL, in.AdditionalScopes = returnOrigin+"/back", []string{"admin"}
	f := e.authorize(t, in)
	e.loseFlows(t)
	res := e.svc.Callback(context.Background(), f.callback())
	if res.OK || res.Reason != domain.ReasonStateInvalid || res.Restart != f.browser.Binding || res.Provider != testProvider {
		t.Fatalf("callback of a lost flow = %+v", res)
	}
	again := e.restartFlow(t, f)
	if want, got := f.auth.Query.Get("scope"), again.auth.Query.Get("scope"); got != want || !strings.Contains(got, "admin") {
		t.Fatalf("restarted flow asks for %q, want %q (with the first flow's additional scope)", got, want)
	}
	// A second loss: the restarted flow can restart too, but not past the
	// first flow's deadline.
	e.loseFlows(t)
	if res := e.svc.Callback(context.Background(), again.callback()); res.Restart != again.browser.Binding {
		t.Fatalf("callback of the lost restarted flow = %+v", res)
	}
	first, _ := e.svc.openHint(f.browser.Binding, f.browser.BrowserSecret)
	second, err := e.svc.openHint(again.browser.Binding, again.browser.BrowserSecret)
	if err != nil || first == nil || second.Until != first.Until || second.ReturnURL != in.ReturnURL || second.User != testUser {
		t.Fatalf("restart hints %+v then %+v (%v)", first, second, err)
	}
	third := e.restartFlow(t, again)
	res = e.svc.Callback(context.Background(), third.callback())
	if !res.OK || res.ReturnURL != in.ReturnURL {
		t.Fatalf("callback of the restarted flow = %+v", res)
	}
	e.wantStatus(t, testProvider, domain.StatusAuthorized, "")
	started := e.events(domain.EventAuthStarted)
	if len(started) != 3 {
		t.Fatalf("%d authorization.started events, want 3", len(started))
	}
	for i, ev := range started {
		restarted := details(t, ev)["restarted"] == "true"
		if restarted != (i > 0) || (i > 0 && ev.Actor != "user:"+testUser) {
			t.Fatalf("started event %d: actor %q details %s", i, ev.Actor, ev.Details)
		}
	}
}

// TestRestartRefused: only the cookie the browser got for that flow, whole
// and before its deadline, starts a flow again.
func TestRestartRefused(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	f := e.authorize(t, startIn())
	other := e.authorize(t, startIn())
	secret, hint := splitCookie(f.browser.BrowserSecret)
	otherSecret, _ := splitCookie(other.browser.BrowserSecret)
	cases := map[string]struct {
		binding, cookie string
		advance         time.Duration
	}{
		"no cookie":                {binding: f.browser.Binding},
		"secret without hint":      {binding: f.browser.Binding, cookie: secret},
		"another flow's name":      {binding: other.browser.Binding, cookie: f.browser.BrowserSecret},
		"another browser's secret": {binding: f.browser.Binding, cookie: otherSecret + "." + hint},
		"hint altered":             {binding: f.browser.Binding, cookie: secret + "." + hint[:len(hint)-2] + "AA"},
		"hint not base64":          {binding: f.browser.Binding, cookie: secret + ".***"},
		"oversized":                {binding: f.browser.Binding, cookie: secret + "." + hint + strings.Repeat("A", 4096)},
		"past the deadline":        {binding: f.browser.Binding, cookie: f.browser.BrowserSecret, advance: 10*time.Minute + time.Second},
		"well past the deadline":   {binding: f.browser.Binding, cookie: f.browser.BrowserSecret, advance: 11 * time.Minute},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			e := e
			if tc.advance > 0 {
				e = newProviderEnv(t, providerSpec{})
				g := e.authorize(t, startIn())
				tc.binding, tc.cookie = g.browser.Binding, g.browser.BrowserSecret
				e.clock.Advance(tc.advance)
			}
			b, err := e.svc.Restart(context.Background(), tc.binding, tc.cookie)
			wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonFlowExpiredOrUsed)
			if b != nil {
				t.Fatalf("refused restart returned %+v", b)
			}
		})
	}
	if n := len(e.events(domain.EventAuthStarted)); n != 2 {
		t.Fatalf("%d authorization.started events after refused restarts, want 2", n)
	}
	// Just before the deadline the same cookie still restarts.
	e.clock.Advance(10 * time.Minute)
	if _, err := e.svc.Restart(context.Background(), f.browser.Binding, f.browser.BrowserSecret); err != nil {
		t.Fatalf("Restart at the deadline: %v", err)
	}
}

// TestCallbackRetryAfterStalledClaim: the claim ran but its answer was
// lost, so the callback asked the browser to try again; its retry gets the
// flow back and completes with one code exchange, while another browser's
// request with the same state finds the flow used.
func TestCallbackRetryAfterStalledClaim(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	f := e.authorize(t, startIn())
	e.flows.failOn("Settle", errStoreDown)
	if res := e.svc.Callback(context.Background(), f.callback()); res.Reason != domain.ReasonUnavailable {
		t.Fatalf("callback with the store failing = %+v, want UNAVAILABLE", res)
	}
	e.flows.failOn("Settle", nil)
	intruder := f.callback()
	intruder.BrowserSecret = func(string) string { return "someone-else" }
	if res := e.svc.Callback(context.Background(), intruder); res.Reason != domain.ReasonStateInvalid || res.Restart != "" {
		t.Fatalf("another browser's callback = %+v, want STATE_INVALID without restart", res)
	}
	e.complete(t, f)
	if res := e.svc.Callback(context.Background(), f.callback()); res.OK {
		t.Fatal("the same response completed twice")
	}
	if n := e.as.counts().exchanges; n != 1 {
		t.Fatalf("%d code exchanges, want 1", n)
	}
}

// TestRestartKeepsCompletionBinding: a flow started with
// require_completion, lost and started again, still parks its grant for
// CompleteAuthorization instead of storing it: a restart never drops the
// binding the caller asked for.
func TestRestartKeepsCompletionBinding(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	in := startIn()
	in.ReturnURL, in.RequireCompletion = returnOrigin+"/done", true
	f := e.authorize(t, in)
	e.loseFlows(t)
	if res := e.svc.Callback(context.Background(), f.callback()); res.Restart == "" {
		t.Fatalf("callback of the lost flow = %+v", res)
	}
	again := e.restartFlow(t, f)
	res := e.svc.Callback(context.Background(), again.callback())
	if !res.OK || len(res.CompletionCode) != 43 || res.ReturnURL != in.ReturnURL || e.storedTokens() {
		t.Fatalf("callback of the restarted flow = %+v (stored tokens: %v), want a parked grant", res, e.storedTokens())
	}
}
