package authflow

import (
	"context"
	"errors"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/reqid"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/servicetest"
	"github.com/mcpauth/mcpauth/service/vault"
)

func TestBeginBrowserRedirectsToTheAuthorizationServer(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	st, err := e.svc.Start(context.Background(), startIn())
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Minute)
	b, err := e.svc.BeginBrowser(context.Background(), handle(t, st))
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(b.RedirectURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	u.RawQuery = ""
	if u.String() != testIssuer+"/authorize" {
		t.Fatalf("redirect to %s", u)
	}
	want := map[string]string{"response_type": "code", "client_id": "dcr-client-1", "redirect_uri": callbackURL,
		"code_challenge_method": "S256", "resource": testServerURL, "scope": "files:read files:write offline_access"}
	for k, v := range want {
		if q.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, q.Get(k), v)
		}
	}
	state := q.Get("state")
	if len(state) != 43 || len(q.Get("code_challenge")) != 43 {
		t.Fatalf("state %q or challenge %q is not 256 bits", state, q.Get("code_challenge"))
	}
	// The cookie holds the 256-bit browser secret and the sealed restart
	// hint, and lives until the flow's restart deadline (its expiry, in 4
	// minutes, plus the flow TTL).
	if secret, hint := splitCookie(b.BrowserSecret); b.Binding != Binding(state) || len(secret) != 43 || hint == "" ||
		strings.Contains(hint, testUser) || b.MaxAge != 9*time.Minute {
		t.Fatalf("browser start %+v", b)
	}
	if _, err := e.as.Authorize(b.RedirectURL); err != nil {
		t.Fatalf("the authorization server refused the request: %v", err)
	}
	_, err = e.svc.BeginBrowser(context.Background(), handle(t, st))
	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonFlowExpiredOrUsed)
}

func TestBeginBrowserRefuses(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		handle     func(real string) string
		before     func(*env)
		wantKind   apperr.Kind
		wantReason string
	}{
		{name: "empty handle", handle: func(string) string { return "" }},
		{name: "oversized handle", handle: func(string) string { return strings.Repeat("h", 129) }},
		{name: "unknown handle", handle: func(real string) string { return real[:42] + "x" }},
		{name: "expired flow", before: func(e *env) { e.clock.Advance(5*time.Minute + time.Second) }},
		{name: "flow at its expiry", before: func(e *env) { e.clock.Advance(5 * time.Minute) }},
		{name: "flow store unavailable", before: func(e *env) { e.flows.failOn("Take", errStoreDown) },
			wantKind: apperr.KindUnavailable, wantReason: domain.ReasonUnavailable},
		{name: "state not stored", before: func(e *env) { e.flows.failOn("Put", errStoreDown) },
			wantKind: apperr.KindUnavailable, wantReason: domain.ReasonUnavailable},
		{name: "flow store broken", before: func(e *env) { e.flows.failOn("Take", errors.New("WRONGTYPE")) },
			wantKind: apperr.KindInternal, wantReason: domain.ReasonInternal},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, providerSpec{})
			st, err := e.svc.Start(context.Background(), startIn())
			if err != nil {
				t.Fatal(err)
			}
			h := handle(t, st)
			if tc.handle != nil {
				h = tc.handle(h)
			}
			if tc.before != nil {
				tc.before(e)
			}
			if tc.wantKind == 0 && tc.wantReason == "" {
				tc.wantKind, tc.wantReason = apperr.KindFailedPrecondition, domain.ReasonFlowExpiredOrUsed
			}
			b, err := e.svc.BeginBrowser(context.Background(), h)
			wantErr(t, err, tc.wantKind, tc.wantReason)
			if b != nil {
				t.Fatalf("refused start returned %+v", b)
			}
		})
	}
}

func TestBinding(t *testing.T) {
	t.Parallel()
	a, b := Binding("state-one"), Binding("state-two")
	if a != Binding("state-one") || a == b || len(a) != 8 || strings.Contains(a, "state") {
		t.Fatalf("bindings %q %q", a, b)
	}
}

func TestBeginBrowserRefusesReservedExtraParameter(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// A profile written before extra parameters were validated.
	e.provider(t, providerSpec{Compat: domain.Compat{ExtraParams: map[string]string{"redirect_uri": "https://evil.example.com/cb"}}})
	st, err := e.svc.Start(context.Background(), startIn())
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.BeginBrowser(context.Background(), handle(t, st))
	wantErr(t, err, apperr.KindInternal, domain.ReasonInternal)
}

func TestCallbackStoresTokens(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	in := startIn()
	in.ReturnURL = returnOrigin + "/settings?tab=1"
	starter := reqid.With(caller.WithIdentity(context.Background(), &caller.Identity{Name: "console-backend"}), "req-start-7")
	f := e.authorizeAs(t, starter, in)
	e.clock.Advance(30 * time.Second)
	res := e.svc.Callback(context.Background(), f.callback())
	want := CallbackResult{OK: true, Tenant: testTenant, Provider: testProvider, ReturnURL: in.ReturnURL}
	if !reflect.DeepEqual(*res, want) {
		t.Fatalf("Callback = %+v, want %+v", *res, want)
	}
	e.wantStatus(t, testProvider, domain.StatusAuthorized, "")

	scopes := []string{"files:read", "files:write", oauthclient.OfflineAccess}
	ex := e.as.lastExchange
	if ex.tokenEndpoint != testIssuer+"/token" || ex.redirectURI != callbackURL || ex.resource != testServerURL ||
		!reflect.DeepEqual(ex.scopes, scopes) || ex.reg.ClientSecret.Reveal() != "dcr-secret-1" {
		t.Fatalf("token request %+v", ex)
	}
	cred, h := e.held(t, testProvider)
	if cred.Issuer != testIssuer || !cred.HasRefresh || vault.JSONList(scopes) != cred.Scopes || !cred.ExpiresAt.Equal(t0.Add(30*time.Second+time.Hour)) {
		t.Fatalf("stored credential %+v", cred)
	}
	if !strings.HasPrefix(h.Tokens.AccessToken.Reveal(), "access-") || !strings.HasPrefix(h.Tokens.RefreshToken.Reveal(), "refresh-") {
		t.Fatalf("stored tokens %+v", h.Tokens)
	}
	wantGrant := vault.Grant{Issuer: testIssuer, TokenEndpoint: testIssuer + "/token", RevocationEndpoint: testIssuer + "/revoke",
		RegMethod: domain.RegDynamic, ClientID: "dcr-client-1", AuthMethod: oauthclient.AuthClientSecretBasic, Resource: testServerURL,
		Server: testServerURL}
	if h.Grant != wantGrant {
		t.Fatalf("stored grant %+v, want %+v", h.Grant, wantGrant)
	}
	ev := e.event(t, domain.EventCallbackSucceeded)
	if ev.Actor != "user:"+testUser || ev.Outcome != int32(domain.OutcomeSuccess) || ev.ProviderID != testProvider {
		t.Fatalf("callback event %+v", ev)
	}
	// It names who started the flow, whose own event is written without
	// waiting and could be lost to a crash.
	if d := details(t, ev); d["issuer"] != testIssuer || d["scopes"] != strings.Join(scopes, " ") ||
		d["started_by"] != "console-backend" || d["start_request_id"] != "req-start-7" {
		t.Fatalf("callback details %v", d)
	}
	if st := e.event(t, domain.EventAuthStarted); st.Actor != "console-backend" || st.RequestID != "req-start-7" {
		t.Fatalf("started event %+v", st)
	}
	// The grant serves its token.
	tok, err := e.grants.Get(context.Background(), domain.TenantGrant(testTenant, testProvider))
	if err != nil || tok.AccessToken.Reveal() != h.Tokens.AccessToken.Reveal() {
		t.Fatalf("grants.Get = %+v, %v", tok, err)
	}
}

func TestCallbackKeepsRequestedScopesWhenNoneGranted(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	e.as.omitGrantedScope = true
	e.complete(t, e.authorize(t, startIn()))
	want := []string{"files:read", "files:write", oauthclient.OfflineAccess}
	if got := e.store.Credential(testTenant, testProvider).Scopes; got != vault.JSONList(want) {
		t.Fatalf("stored scopes %s, want %q", got, want)
	}
	if d := details(t, e.event(t, domain.EventCallbackSucceeded)); d["scopes"] != strings.Join(want, " ") {
		t.Fatalf("callback details %v", d)
	}
}

func TestCallbackRejectsReplay(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	f := e.authorize(t, startIn())
	e.complete(t, f)
	gen := e.store.Credential(testTenant, testProvider).Generation
	// The browser that opened the flow (its cookie kept) may start again;
	// anyone else replaying the response learns nothing.
	res := e.svc.Callback(context.Background(), f.callback())
	if !reflect.DeepEqual(*res, CallbackResult{Reason: domain.ReasonStateInvalid, Restart: f.browser.Binding, Tenant: testTenant, Provider: testProvider}) {
		t.Fatalf("replayed callback = %+v", *res)
	}
	in := f.callback()
	in.BrowserSecret = nil
	if res := e.svc.Callback(context.Background(), in); !reflect.DeepEqual(*res, CallbackResult{Reason: domain.ReasonStateInvalid}) {
		t.Fatalf("replayed callback without the cookie = %+v", *res)
	}
	if e.as.counts().exchanges != 1 || e.store.Credential(testTenant, testProvider).Generation != gen {
		t.Fatal("a replayed callback reached the token endpoint or the grant")
	}
	e.wantStatus(t, testProvider, domain.StatusAuthorized, "")
	if n := len(e.events(domain.EventCallbackFailed)); n != 0 {
		t.Fatalf("%d callback.failed events for an unknown state", n)
	}
}

// TestCallbackFromAnotherBrowserKeepsTheFlow: whoever learns a state (a
// leaked redirect, a log) and sends it from another browser, any number of
// times, cannot cancel the flow: its own browser completes it afterwards,
// once.
func TestCallbackFromAnotherBrowserKeepsTheFlow(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	f := e.authorize(t, startIn())
	for range 3 {
		in := f.callback()
		in.BrowserSecret = func(string) string { return "attacker" }
		if res := e.svc.Callback(context.Background(), in); res.OK || res.Reason != domain.ReasonBrowserMismatch {
			t.Fatalf("Callback from another browser = %+v", res)
		}
	}
	if n := e.as.counts().exchanges; n != 0 {
		t.Fatalf("%d token requests from another browser's callbacks", n)
	}
	e.wantStatus(t, testProvider, domain.StatusPending, "")
	e.complete(t, f)
	e.wantStatus(t, testProvider, domain.StatusAuthorized, "")
	if res := e.svc.Callback(context.Background(), f.callback()); res.Reason != domain.ReasonStateInvalid {
		t.Fatalf("replay after completion = %+v, want STATE_INVALID", res)
	}
	if n := e.as.counts().exchanges; n != 1 {
		t.Fatalf("%d token requests, want 1", n)
	}
}

// TestConcurrentCallbacksConsumeOnce: the binding is checked on a read, but
// the record is consumed atomically: of many callbacks from the flow's own
// browser at once, exactly one exchanges the code.
func TestConcurrentCallbacksConsumeOnce(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	f := e.authorize(t, startIn())
	const n = 16
	results := make(chan *CallbackResult, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { results <- e.svc.Callback(context.Background(), f.callback()) })
	}
	wg.Wait()
	close(results)
	ok := 0
	for res := range results {
		switch {
		case res.OK:
			ok++
		case res.Reason != domain.ReasonStateInvalid:
			t.Errorf("concurrent callback = %+v, want OK or STATE_INVALID", res)
		}
	}
	if ok != 1 || e.as.counts().exchanges != 1 {
		t.Fatalf("%d callbacks succeeded and %d codes were exchanged, want 1 and 1", ok, e.as.counts().exchanges)
	}
}

func TestCallbackFailures(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		// prepare changes the world and the response before the callback.
		prepare    func(t *testing.T, e *env, f *flow, in *CallbackInput)
		wantReason string
		wantDetail string
		exchanged  bool // the code reached the token endpoint
		flowKnown  bool // the state named a flow (it is audited, and consumed unless kept)
		kept       bool // the flow survives: its own browser completes it afterwards
	}{
		{name: "missing state", prepare: func(_ *testing.T, _ *env, _ *flow, in *CallbackInput) { in.State = "" },
			wantReason: domain.ReasonMissingState},
		{name: "oversized state", prepare: func(_ *testing.T, _ *env, _ *flow, in *CallbackInput) { in.State = strings.Repeat("s", 513) },
			wantReason: domain.ReasonMissingState},
		{name: "unknown state", prepare: func(_ *testing.T, _ *env, _ *flow, in *CallbackInput) { in.State = strings.Repeat("s", 43) },
			wantReason: domain.ReasonStateInvalid},
		{name: "flow store unavailable", prepare: func(_ *testing.T, e *env, _ *flow, _ *CallbackInput) { e.flows.failOn("Claim", errStoreDown) },
			wantReason: domain.ReasonUnavailable},
		// The claim ran but its settle failed (the answer lost): the
		// browser's next try gets the flow back from the claim and completes.
		{name: "flow store unavailable on settle", prepare: func(_ *testing.T, e *env, _ *flow, _ *CallbackInput) { e.flows.failOn("Settle", errStoreDown) },
			wantReason: domain.ReasonUnavailable},
		{name: "flow store unavailable on read", prepare: func(_ *testing.T, e *env, _ *flow, _ *CallbackInput) { e.flows.failOn("Get", errStoreDown) },
			wantReason: domain.ReasonUnavailable},
		{name: "flow store broken", prepare: func(_ *testing.T, e *env, _ *flow, _ *CallbackInput) {
			e.flows.failOn("Claim", errors.New("WRONGTYPE"))
		}, wantReason: domain.ReasonStateInvalid},
		{name: "no browser binding", prepare: func(_ *testing.T, _ *env, _ *flow, in *CallbackInput) { in.BrowserSecret = nil },
			wantReason: domain.ReasonBrowserMismatch, flowKnown: true, kept: true},
		{name: "empty browser secret", prepare: func(_ *testing.T, _ *env, _ *flow, in *CallbackInput) {
			in.BrowserSecret = func(string) string { return "" }
		}, wantReason: domain.ReasonBrowserMismatch, flowKnown: true, kept: true},
		{name: "another browser's secret", prepare: func(t *testing.T, e *env, _ *flow, in *CallbackInput) {
			other := e.authorize(t, startIn())
			in.BrowserSecret = func(string) string { return other.browser.BrowserSecret }
		}, wantReason: domain.ReasonBrowserMismatch, flowKnown: true, kept: true},
		{name: "another browser with an issuer mismatch and an error", prepare: func(_ *testing.T, _ *env, _ *flow, in *CallbackInput) {
			in.BrowserSecret = nil
			in.Iss, in.Code, in.Error = "https://evil.example.com", "", "access_denied"
		}, wantReason: domain.ReasonBrowserMismatch, flowKnown: true, kept: true},
		{name: "iss missing where advertised", prepare: func(_ *testing.T, _ *env, _ *flow, in *CallbackInput) { in.Iss, in.IssPresent = "", false },
			wantReason: domain.ReasonIssuerMismatch, flowKnown: true},
		{name: "iss of another server hides its error", prepare: func(_ *testing.T, _ *env, _ *flow, in *CallbackInput) {
			in.Iss, in.Code, in.Error, in.ErrorDescription = "https://evil.example.com", "", "access_denied", "go to evil.example.com"
		}, wantReason: domain.ReasonIssuerMismatch, flowKnown: true},
		{name: "authorization denied", prepare: func(_ *testing.T, _ *env, _ *flow, in *CallbackInput) {
			in.Code, in.Error, in.ErrorDescription = "", "access_denied", "The user denied the request"
		}, wantReason: domain.ReasonAuthorizationDenied, wantDetail: "access_denied: The user denied the request", flowKnown: true},
		{name: "missing code", prepare: func(_ *testing.T, _ *env, _ *flow, in *CallbackInput) { in.Code = "" },
			wantReason: domain.ReasonMissingCode, flowKnown: true},
		{name: "oversized code", prepare: func(_ *testing.T, _ *env, _ *flow, in *CallbackInput) { in.Code = strings.Repeat("c", 4097) },
			wantReason: domain.ReasonMissingCode, flowKnown: true},
		{name: "code the server never issued", prepare: func(_ *testing.T, _ *env, _ *flow, in *CallbackInput) { in.Code = "forged" },
			wantReason: domain.ReasonTokenExchangeFailed, exchanged: true, flowKnown: true},
		{name: "code of another flow", prepare: func(t *testing.T, e *env, _ *flow, in *CallbackInput) {
			in.Code = e.authorize(t, startIn()).auth.Code // bound to another verifier
		}, wantReason: domain.ReasonTokenExchangeFailed, exchanged: true, flowKnown: true},
		{name: "provider deleted", prepare: func(t *testing.T, e *env, _ *flow, _ *CallbackInput) {
			if err := e.store.DeleteProvider(context.Background(), testTenant, testProvider, 0); err != nil {
				t.Fatal(err)
			}
		}, wantReason: domain.ReasonProviderGone, flowKnown: true},
		{name: "server URL changed", prepare: func(t *testing.T, e *env, _ *flow, _ *CallbackInput) {
			e.updateProvider(t, testProvider, func(p *repository.Provider) { e.setURL(t, p, "https://mcp2.example.com/mcp") })
		}, wantReason: domain.ReasonProviderChanged, flowKnown: true},
		{name: "tokens not stored", prepare: func(_ *testing.T, e *env, _ *flow, _ *CallbackInput) {
			e.store.FailOn("PutCredential", servicetest.ErrInjected)
		}, wantReason: domain.ReasonStoreFailed, exchanged: true, flowKnown: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, providerSpec{})
			start := startIn()
			start.ReturnURL = returnOrigin + "/back"
			f := e.authorize(t, start)
			in := f.callback()
			tc.prepare(t, e, f, &in)
			exchanges := e.as.counts().exchanges
			res := e.svc.Callback(context.Background(), in)
			want := CallbackResult{Reason: tc.wantReason, Detail: tc.wantDetail}
			if tc.flowKnown {
				want.Tenant, want.Provider, want.ReturnURL = testTenant, testProvider, start.ReturnURL
			}
			if !reflect.DeepEqual(*res, want) {
				t.Fatalf("Callback = %+v, want %+v", *res, want)
			}
			if got := e.as.counts().exchanges - exchanges; got != map[bool]int{true: 1}[tc.exchanged] {
				t.Fatalf("%d token requests, exchanged %v", got, tc.exchanged)
			}
			if len(e.events(domain.EventCallbackSucceeded)) != 0 {
				t.Fatal("a failed callback audited success")
			}
			if !tc.flowKnown {
				// Nothing is known about the flow: it is neither audited nor
				// consumed, and completes when the real response arrives.
				if n := len(e.events(domain.EventCallbackFailed)); n != 0 {
					t.Fatalf("%d callback.failed events", n)
				}
				e.wantStatus(t, testProvider, domain.StatusPending, "")
				for _, m := range []string{"Get", "Claim", "Settle"} {
					e.flows.failOn(m, nil)
				}
				e.complete(t, f)
				return
			}
			ev := e.event(t, domain.EventCallbackFailed)
			if ev.Reason != tc.wantReason || ev.Actor != "user:"+testUser || ev.Outcome != int32(domain.OutcomeFailure) {
				t.Fatalf("callback.failed event %+v", ev)
			}
			if tc.kept {
				// Another browser learnt the state: the flow is neither
				// consumed nor failed, and its own browser completes it.
				e.wantStatus(t, testProvider, domain.StatusPending, "")
				e.complete(t, f)
				e.wantStatus(t, testProvider, domain.StatusAuthorized, "")
				return
			}
			if tc.wantReason != domain.ReasonProviderGone {
				e.wantStatus(t, testProvider, domain.StatusUnauthorized, tc.wantReason)
			}
			if again := e.svc.Callback(context.Background(), f.callback()); again.Reason != domain.ReasonStateInvalid {
				t.Fatalf("the failed flow's state still works: %+v", again)
			}
		})
	}
}

func TestCallbackChecksIssuer(t *testing.T) {
	t.Parallel()
	const other = "https://evil.example.com"
	cases := []struct {
		name      string
		supported bool // authorization_response_iss_parameter_supported
		iss       string
		present   bool
		ok        bool
	}{
		{name: "advertised and matching", supported: true, iss: testIssuer, present: true, ok: true},
		{name: "advertised and absent", supported: true},
		{name: "advertised and different", supported: true, iss: other, present: true},
		{name: "advertised and empty", supported: true, iss: "", present: true},
		{name: "not advertised and absent", ok: true},
		{name: "not advertised but matching", iss: testIssuer, present: true, ok: true},
		{name: "not advertised and different", iss: other, present: true},
		{name: "not advertised, trailing slash", iss: testIssuer + "/", present: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, providerSpec{})
			e.as.md.IssParameterSupported = tc.supported
			f := e.authorize(t, startIn())
			in := f.callback()
			in.Iss, in.IssPresent = tc.iss, tc.present
			res := e.svc.Callback(context.Background(), in)
			if res.OK != tc.ok || (!tc.ok && res.Reason != domain.ReasonIssuerMismatch) {
				t.Fatalf("Callback = %+v, want ok %v", res, tc.ok)
			}
			if wantEx := map[bool]int{true: 1}[tc.ok]; e.as.counts().exchanges != wantEx {
				t.Fatalf("%d token requests, want %d", e.as.counts().exchanges, wantEx)
			}
		})
	}
}

func TestCallbackSanitisesErrorDetail(t *testing.T) {
	t.Parallel()
	cases := []struct{ name, code, desc, want string }{
		{name: "code only", code: "access_denied", want: "access_denied"},
		{name: "control characters", code: "access_denied\x07", desc: "line1\r\nline2\x00\x1b[31m\x7fend", want: "access_denied: line1line2[31mend"},
		{name: "markup kept for the page to escape", code: "invalid_scope", desc: "<script>alert(1)</script>",
			want: "invalid_scope: <script>alert(1)</script>"},
		{name: "long code", code: strings.Repeat("e", 100), want: strings.Repeat("e", 64) + "…"},
		{name: "long description", code: "server_error", desc: strings.Repeat("d", 300), want: "server_error: " + strings.Repeat("d", 200) + "…"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, providerSpec{})
			in := e.authorize(t, startIn()).callback()
			in.Code, in.Error, in.ErrorDescription = "", tc.code, tc.desc
			res := e.svc.Callback(context.Background(), in)
			if res.Reason != domain.ReasonAuthorizationDenied || res.Detail != tc.want {
				t.Fatalf("Callback = %+v, want detail %q", res, tc.want)
			}
			if e.as.counts().exchanges != 0 {
				t.Fatal("an error response reached the token endpoint")
			}
		})
	}
}

func TestCallbackErrorDetailStaysUTF8(t *testing.T) {
	t.Parallel()
	got := upstreamDetail("access_denied", strings.Repeat("a", 199)+"é and more")
	if !utf8.ValidString(got) {
		t.Fatalf("detail %q is not valid UTF-8", got)
	}
}

func TestCallbackRereadsTheFlowsClient(t *testing.T) {
	t.Parallel()
	const preID = "pre-client"
	cases := []struct {
		name   string
		spec   providerSpec
		change func(*testing.T, *env)
	}{
		{name: "pre-registered client replaced", spec: providerSpec{ClientID: preID, ClientSecret: "s"}, change: func(t *testing.T, e *env) {
			e.updateProvider(t, testProvider, func(p *repository.Provider) { p.ClientID = "another-client" })
		}},
		{name: "dynamic registration replaced", change: func(t *testing.T, e *env) {
			e.putRegistration(t, &oauthclient.Registration{ClientID: "dcr-client-9", ClientSecret: secret.New("x"), RedirectURI: callbackURL})
		}},
		{name: "dynamic registration deleted", change: func(t *testing.T, e *env) {
			if err := e.store.DeleteClientRegistration(context.Background(), testTenant, testProvider, testIssuer); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "dynamic registration unreadable", change: func(t *testing.T, e *env) {
			e.putRegistrationRow(t, &repository.ClientRegistration{TenantID: testTenant, ProviderID: testProvider, Issuer: testIssuer,
				Method: domain.RegDynamic, ClientID: "dcr-client-1", Secret: []byte("garbage"), RedirectURI: callbackURL})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, tc.spec)
			f := e.authorize(t, startIn())
			tc.change(t, e)
			if res := e.svc.Callback(context.Background(), f.callback()); res.Reason != domain.ReasonClientChanged {
				t.Fatalf("Callback = %+v, want CLIENT_CHANGED", res)
			}
			if e.as.counts().exchanges != 0 {
				t.Fatal("the code was sent with another client")
			}
			e.wantStatus(t, testProvider, domain.StatusUnauthorized, domain.ReasonClientChanged)
		})
	}
}

func TestCallbackWithRotatedPreRegisteredSecret(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{ClientID: "pre-client", ClientSecret: "old"})
	e.as.preRegister("pre-client", "new")
	f := e.authorize(t, startIn())
	// The operator rotates the secret while the person is at the server:
	// secrets never travel through the flow store, so the new one is used.
	e.updateProvider(t, testProvider, func(p *repository.Provider) { p.ClientSecret = e.seal(t, p, vault.FieldClientSecret, []byte("new")) })
	e.complete(t, f)
}

func TestCallbackInvalidClient(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		spec       providerSpec
		client     string
		wantDelete bool
	}{
		{name: "dynamic registration is dropped", client: "dcr-client-1", wantDelete: true},
		{name: "pre-registered client is kept", spec: providerSpec{ClientID: "pre-client", ClientSecret: "s"}, client: "pre-client"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, tc.spec)
			f := e.authorize(t, startIn())
			e.as.forgetClient(tc.client)
			if res := e.svc.Callback(context.Background(), f.callback()); res.Reason != domain.ReasonTokenExchangeFailed {
				t.Fatalf("Callback = %+v, want TOKEN_EXCHANGE_FAILED", res)
			}
			if deleted := e.store.Calls("DeleteClientRegistration") > 0; deleted != tc.wantDelete {
				t.Fatalf("registration deleted %v, want %v", deleted, tc.wantDelete)
			}
			if !tc.wantDelete {
				return
			}
			if _, err := e.store.GetClientRegistration(context.Background(), testTenant, testProvider, testIssuer); apperr.KindOf(err) != apperr.KindNotFound {
				t.Fatalf("evicted registration still stored (%v)", err)
			}
			// The next start registers again and works.
			e.complete(t, e.authorize(t, startIn()))
			if _, h := e.held(t, testProvider); h.Grant.ClientID != "dcr-client-2" || e.as.counts().registrations != 2 {
				t.Fatalf("grant client %q after %d registrations", h.Grant.ClientID, e.as.counts().registrations)
			}
		})
	}
}

// TestFailedFlowKeepsAHeldGrant: a grant held (authorized, or dead with its
// reason) keeps its status and tokens while a new flow runs and fails.
func TestFailedFlowKeepsAHeldGrant(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		dead       bool
		wantStatus domain.AuthStatus
		wantReason string
	}{
		{name: "authorized", wantStatus: domain.StatusAuthorized},
		{name: "reauth required", dead: true, wantStatus: domain.StatusReauthRequired, wantReason: domain.ReasonInvalidGrant},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, providerSpec{})
			e.complete(t, e.authorize(t, startIn()))
			if tc.dead {
				err := e.grants.MarkReauth(context.Background(), domain.TenantGrant(testTenant, testProvider), domain.ReasonInvalidGrant,
					e.store.Credential(testTenant, testProvider).Generation)
				wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonReauthRequired)
			}
			before := *e.store.Credential(testTenant, testProvider)
			writes := e.store.Calls("SetGrantStatus")
			for _, reason := range []string{domain.ReasonAuthorizationDenied, domain.ReasonBrowserMismatch, domain.ReasonTokenExchangeFailed} {
				in := e.authorize(t, startIn()).callback()
				switch reason {
				case domain.ReasonAuthorizationDenied:
					in.Code, in.Error = "", "access_denied"
				case domain.ReasonBrowserMismatch:
					in.BrowserSecret = nil
				default:
					in.Code = "forged"
				}
				if res := e.svc.Callback(context.Background(), in); res.Reason != reason {
					t.Fatalf("Callback = %+v, want %s", res, reason)
				}
				e.wantStatus(t, testProvider, tc.wantStatus, tc.wantReason)
			}
			after := e.store.Credential(testTenant, testProvider)
			if after.Generation != before.Generation || string(after.Tokens) != string(before.Tokens) {
				t.Fatal("the held grant's tokens changed")
			}
			// Starts wrote no PENDING; failures found no PENDING to reset;
			// another browser's callback writes no status at all.
			if n := e.store.Calls("SetGrantStatus") - writes; n != 2 {
				t.Fatalf("%d status writes, want only the 2 consumed failures' conditional resets", n)
			}
		})
	}
}

func TestCallbackAfterExpiry(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	f := e.authorize(t, startIn())
	e.clock.Advance(5*time.Minute + time.Second)
	if res := e.svc.Callback(context.Background(), f.callback()); res.Reason != domain.ReasonStateInvalid {
		t.Fatalf("Callback = %+v, want STATE_INVALID", res)
	}
	if e.as.counts().exchanges != 0 {
		t.Fatal("an expired flow's code was exchanged")
	}
}

func TestDiagnose(t *testing.T) {
	t.Parallel()
	down := &oauthclient.TemporaryError{Op: "metadata", Err: errors.New("no route to host")}
	cases := []struct {
		name         string
		spec         providerSpec
		cimd         bool
		setup        func(*testing.T, *env)
		wantReady    bool
		wantBlocking string
		wantMethod   domain.RegistrationMethod
		wantStatus   domain.AuthStatus
		wantSteps    []string
	}{
		{name: "dynamic registration, not performed", wantReady: true, wantMethod: domain.RegDynamic, wantStatus: domain.StatusUnauthorized},
		{name: "stored dynamic registration", setup: func(t *testing.T, e *env) { e.authorize(t, startIn()) },
			wantReady: true, wantMethod: domain.RegDynamic, wantStatus: domain.StatusPending},
		{name: "pre-registered", spec: providerSpec{ClientID: "pre-client"}, wantReady: true, wantMethod: domain.RegPreRegistered,
			wantStatus: domain.StatusUnauthorized},
		{name: "metadata document", cimd: true, setup: func(_ *testing.T, e *env) { e.as.md.ClientIDMetadataDocumentSupported = true },
			wantReady: true, wantMethod: domain.RegCIMD, wantStatus: domain.StatusUnauthorized},
		{name: "not required", setup: func(_ *testing.T, e *env) { e.as.probe = oauthclient.ProbeResult{NotRequired: true} },
			wantReady: true, wantStatus: domain.StatusNotRequired, wantSteps: []string{oauthclient.ActionProbe}},
		{name: "no S256", setup: func(_ *testing.T, e *env) { e.as.md.CodeChallengeMethods = nil }, wantBlocking: "S256 PKCE",
			wantStatus: domain.StatusUnauthorized},
		{name: "no S256 with the exception", spec: providerSpec{Compat: domain.Compat{AllowMissingPKCE: true}},
			setup: func(_ *testing.T, e *env) { e.as.md.CodeChallengeMethods = nil }, wantReady: true, wantMethod: domain.RegDynamic,
			wantStatus: domain.StatusUnauthorized},
		{name: "no registration", setup: func(_ *testing.T, e *env) { e.as.md.RegistrationEndpoint = "" },
			wantBlocking: "neither client ID metadata documents nor dynamic registration", wantStatus: domain.StatusUnauthorized},
		{name: "registration unreadable", setup: func(_ *testing.T, e *env) { e.store.FailOn("GetClientRegistration", servicetest.ErrInjected) },
			wantBlocking: "internal error", wantStatus: domain.StatusUnauthorized},
		{name: "discovery failed", setup: func(_ *testing.T, e *env) { e.as.discoverErr = down },
			wantBlocking: "discovering the authorization server failed: metadata: server unreachable",
			wantSteps:    []string{oauthclient.ActionProbe, oauthclient.ActionProtectedResourceMetadata}},
		{name: "probe failed", setup: func(_ *testing.T, e *env) { e.as.probeErr = &oauthclient.TemporaryError{Op: "probe"} },
			wantBlocking: "probing the MCP server failed: probe: server unreachable", wantSteps: []string{oauthclient.ActionProbe}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, tc.spec, withCIMD(tc.cimd))
			if tc.setup != nil {
				tc.setup(t, e)
			}
			regs, events := e.as.counts().registrations, len(e.stored())
			d, err := e.svc.Diagnose(context.Background(), testTenant, testProvider)
			if err != nil {
				t.Fatal(err)
			}
			if d.Ready != tc.wantReady || !strings.Contains(d.BlockingProblem, tc.wantBlocking) || (tc.wantBlocking == "") != (d.BlockingProblem == "") ||
				d.RegistrationMethod != tc.wantMethod || d.Status != tc.wantStatus {
				t.Fatalf("Diagnose = %+v", d)
			}
			steps := tc.wantSteps
			if steps == nil {
				steps = []string{oauthclient.ActionProbe, oauthclient.ActionProtectedResourceMetadata, oauthclient.ActionAuthServerMetadata}
			}
			var got []string
			for _, s := range d.Steps {
				got = append(got, s.Action)
			}
			if !reflect.DeepEqual(got, steps) {
				t.Fatalf("steps %q, want %q", got, steps)
			}
			if e.as.counts().registrations != regs || len(e.stored()) != events {
				t.Fatal("Diagnose registered a client or audited")
			}
		})
	}
	t.Run("unknown provider", func(t *testing.T) {
		t.Parallel()
		_, err := newEnv(t).svc.Diagnose(context.Background(), testTenant, "nope")
		wantErr(t, err, apperr.KindNotFound, domain.ReasonNotFound)
	})
}

func TestDiagnoseHidesTheServerURLPath(t *testing.T) {
	t.Parallel()
	const key = "k-9f8e7d6c"
	e := newProviderEnv(t, providerSpec{URL: "https://mcp.example.com/" + key + "/mcp/"})
	e.as.md.Resource = "https://mcp.example.com/" + key + "/mcp"
	e.as.md.ResourceMetadataURL = "https://mcp.example.com/.well-known/oauth-protected-resource/" + key + "/mcp"
	d, err := e.svc.Diagnose(context.Background(), testTenant, testProvider)
	if err != nil {
		t.Fatal(err)
	}
	want := &Diagnosis{
		Steps: []oauthclient.Step{
			{Action: oauthclient.ActionProbe, URL: "https://mcp.example.com/******/", HTTPStatus: 401, OK: true},
			{Action: oauthclient.ActionProtectedResourceMetadata, URL: "https://mcp.example.com/.well-known/oauth-protected-resource/******",
				HTTPStatus: 200, ContentType: "application/json", OK: true, Detail: "resource https://mcp.example.com/******"},
			{Action: oauthclient.ActionAuthServerMetadata, URL: testIssuer + "/.well-known/oauth-authorization-server", HTTPStatus: 200,
				ContentType: "application/json", OK: true},
		},
		Status: domain.StatusUnauthorized, Ready: true,
		ResourceMetadataURL: "https://mcp.example.com/.well-known/oauth-protected-resource/******",
		Issuer:              testIssuer, PKCES256Supported: true, DynamicRegistrationSupported: true, IssuerParameterSupported: true,
		Scopes: []string{"files:read", "files:write", oauthclient.OfflineAccess}, RegistrationMethod: domain.RegDynamic,
		GrantType: "authorization_code",
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("Diagnose =\n%+v\nwant\n%+v", d, want)
	}
	// A server at its origin's root has no path to hide.
	root := newProviderEnv(t, providerSpec{URL: "https://mcp.example.com/"})
	root.as.md.Resource = "https://mcp.example.com"
	d, err = root.svc.Diagnose(context.Background(), testTenant, testProvider)
	if err != nil || len(d.Steps) != 3 || d.Steps[0].URL != "https://mcp.example.com/" || d.ResourceMetadataURL != testPRMURL {
		t.Fatalf("Diagnose = %+v, %v", d, err)
	}
}
