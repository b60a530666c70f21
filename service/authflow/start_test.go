package authflow

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/egress"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/servicetest"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/statestore"
)

func TestNewRequiresItsDependencies(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	full := Deps{Store: e.store, Cipher: e.keys, Flows: e.flows, Proto: e.as, Grants: e.grants, Audit: e.svc.audit, Log: e.svc.log,
		Config: Config{CallbackURL: callbackURL, AuthorizeURLPrefix: authorizePrefix}}
	cases := map[string]func(*Deps){
		"store":            func(d *Deps) { d.Store = nil },
		"cipher":           func(d *Deps) { d.Cipher = nil },
		"flows":            func(d *Deps) { d.Flows = nil },
		"proto":            func(d *Deps) { d.Proto = nil },
		"grants":           func(d *Deps) { d.Grants = nil },
		"audit":            func(d *Deps) { d.Audit = nil },
		"log":              func(d *Deps) { d.Log = nil },
		"callback url":     func(d *Deps) { d.Config.CallbackURL = "" },
		"authorize prefix": func(d *Deps) { d.Config.AuthorizeURLPrefix = "" },
	}
	for name, drop := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d := full
			drop(&d)
			if s, err := New(d); err == nil || s != nil {
				t.Fatalf("New without %s = %v, %v; want an error", name, s, err)
			}
		})
	}
	t.Run("defaults", func(t *testing.T) {
		t.Parallel()
		s, err := New(full)
		if err != nil {
			t.Fatal(err)
		}
		if s.cfg.FlowTTL != 5*time.Minute || s.cfg.ClientName != "mcpauth" || s.now == nil {
			t.Fatalf("defaults not applied: ttl %v, client name %q", s.cfg.FlowTTL, s.cfg.ClientName)
		}
	})
}

func TestClientMetadataDocument(t *testing.T) {
	t.Parallel()
	if doc := newEnv(t).svc.ClientMetadataDocument(); doc != nil {
		t.Fatalf("document without a metadata URL: %v", doc)
	}
	e := newEnv(t, withCIMD(true))
	want := map[string]any{
		"client_id":                  cimdURL,
		"client_name":                "mcpauth-test",
		"redirect_uris":              []string{callbackURL},
		"grant_types":                []string{"authorization_code", "refresh_token"},
		"response_types":             []string{"code"},
		"token_endpoint_auth_method": "none",
		"application_type":           "web",
	}
	if got := e.svc.ClientMetadataDocument(); !reflect.DeepEqual(got, want) {
		t.Fatalf("document = %v, want %v", got, want)
	}
}

func TestStartOpensPendingFlow(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{Headers: map[string]string{"X-Api-Key": "k-123"}})
	st, err := e.svc.Start(context.Background(), startIn())
	if err != nil {
		t.Fatal(err)
	}
	wantScopes := []string{"files:read", "files:write", oauthclient.OfflineAccess}
	want := Started{Status: domain.StatusPending, AuthorizationURL: st.AuthorizationURL, ExpiresAt: t0.Add(5 * time.Minute),
		Scopes: wantScopes, Issuer: testIssuer, RegistrationMethod: domain.RegDynamic}
	if !reflect.DeepEqual(*st, want) {
		t.Fatalf("Start = %+v, want %+v", *st, want)
	}
	if h := handle(t, st); len(h) != 43 {
		t.Fatalf("flow handle %q is not 256 random bits", h)
	}
	e.wantStatus(t, testProvider, domain.StatusPending, "")

	// The MCP server was probed with the provider's URL and headers, and
	// the client registered with the deployment's name and callback.
	if got := e.as.probed; len(got) != 1 || got[0].url != testServerURL || got[0].headers["X-Api-Key"] != "k-123" {
		t.Fatalf("probes received %+v", got)
	}
	if got := e.as.registered; len(got) != 1 || got[0].clientName != "mcpauth-test" || got[0].redirectURI != callbackURL ||
		!slices.Equal(got[0].scopes, wantScopes) {
		t.Fatalf("registrations received %+v", got)
	}

	ev := e.event(t, domain.EventAuthStarted)
	if ev.Outcome != int32(domain.OutcomeSuccess) || ev.ProviderID != testProvider || ev.TenantID != testTenant {
		t.Fatalf("started event %+v", ev)
	}
	wantDetails := map[string]string{"issuer": testIssuer, "registration": string(domain.RegDynamic), "user": testUser}
	if d := details(t, ev); !reflect.DeepEqual(d, wantDetails) {
		t.Fatalf("started details %v, want %v", d, wantDetails)
	}
	if n := len(e.events(domain.EventCompatRelaxation)); n != 0 {
		t.Fatalf("%d compatibility events without a compatibility profile", n)
	}

	// A second start is another flow; the pending status is not written
	// again and the stored client is reused.
	again, err := e.svc.Start(context.Background(), startIn())
	if err != nil {
		t.Fatal(err)
	}
	if handle(t, again) == handle(t, st) {
		t.Fatal("two starts share a flow handle")
	}
	if n := e.store.Calls("SetGrantStatus"); n != 1 {
		t.Fatalf("SetGrantStatus called %d times, want 1", n)
	}
	if c := e.as.counts(); c != (asCounts{probes: 2, discovers: 2, registrations: 1}) {
		t.Fatalf("server use %+v", c)
	}
}

func TestStartSelectsScopes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		spec     providerSpec
		setup    func(*fakeAS)
		extra    []string
		want     []string
		wantAuth string // the scope parameter sent
	}{
		{name: "challenge scope wins over scopes_supported", setup: func(a *fakeAS) { a.probe.Scopes = []string{"files:read"} },
			want: []string{"files:read", "offline_access"}},
		{name: "scopes_supported without a challenge scope", want: []string{"files:read", "files:write", "offline_access"}},
		{name: "offline_access only when advertised", setup: func(a *fakeAS) { a.md.ASScopesSupported = []string{"files:read", "files:write"} },
			want: []string{"files:read", "files:write"}},
		{name: "additional scopes appended once", extra: []string{"admin", "files:read"},
			want: []string{"files:read", "files:write", "offline_access", "admin"}},
		{name: "provider's own scopes replace the challenge", spec: providerSpec{Scopes: []string{"admin"}},
			setup: func(a *fakeAS) { a.probe.Scopes = []string{"files:read"} }, want: []string{"admin", "offline_access"}},
		{name: "nothing to request", setup: func(a *fakeAS) { a.md.ScopesSupported, a.md.ASScopesSupported = nil, nil }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, tc.spec)
			if tc.setup != nil {
				tc.setup(e.as)
			}
			in := startIn()
			in.AdditionalScopes = tc.extra
			f := e.authorize(t, in)
			if !slices.Equal(f.started.Scopes, tc.want) {
				t.Fatalf("scopes %q, want %q", f.started.Scopes, tc.want)
			}
			if got, has := f.auth.Query["scope"]; strings.Join(got, " ") != strings.Join(tc.want, " ") || has != (len(tc.want) > 0) {
				t.Fatalf("scope parameter %q, want %q", got, tc.want)
			}
			e.complete(t, f)
			if got := e.as.lastExchange.scopes; !slices.Equal(got, tc.want) {
				t.Fatalf("token request scopes %q, want %q", got, tc.want)
			}
		})
	}
}

func TestStartNotRequired(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		before     func(*testing.T, *env) // what the provider holds when the server stops asking
		want       domain.AuthStatus
		wantReason string
	}{
		{name: "no grant", want: domain.StatusNotRequired},
		{name: "pending", before: func(t *testing.T, e *env) { e.authorize(t, startIn()) }, want: domain.StatusNotRequired},
		{name: "authorized grant is kept", before: func(t *testing.T, e *env) { e.complete(t, e.authorize(t, startIn())) },
			want: domain.StatusAuthorized},
		{name: "dead grant keeps its reason", before: func(t *testing.T, e *env) {
			e.complete(t, e.authorize(t, startIn()))
			if _, err := e.store.SetGrantStatus(context.Background(), domain.TenantGrant(testTenant, testProvider), []domain.AuthStatus{domain.StatusAuthorized},
				domain.StatusReauthRequired, domain.ReasonInvalidGrant, 1); err != nil {
				t.Fatal(err)
			}
		}, want: domain.StatusReauthRequired, wantReason: domain.ReasonInvalidGrant},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, providerSpec{})
			if tc.before != nil {
				tc.before(t, e)
			}
			var tokens []byte
			if c := e.store.Credential(testTenant, testProvider); c != nil {
				tokens = c.Tokens
			}
			before := e.as.counts()
			e.as.probe = oauthclient.ProbeResult{NotRequired: true}
			st, err := e.svc.Start(context.Background(), startIn())
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*st, Started{Status: domain.StatusNotRequired}) {
				t.Fatalf("Start = %+v, want only NOT_REQUIRED", *st)
			}
			e.wantStatus(t, testProvider, tc.want, tc.wantReason)
			if c := e.store.Credential(testTenant, testProvider); string(c.Tokens) != string(tokens) {
				t.Fatal("tokens changed")
			}
			if after := e.as.counts(); after.discovers != before.discovers || after.registrations != before.registrations {
				t.Fatalf("discovery or registration without a challenge: %+v -> %+v", before, after)
			}
		})
	}
}

func TestStartRequiresS256(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		methods  []string
		allow    bool // compatibility.allow_missing_pkce_metadata
		wantPKCE bool // whether the flow may start
	}{
		{name: "plain only", methods: []string{"plain"}},
		{name: "not advertised", methods: nil},
		{name: "exception does not cover an explicit list", methods: []string{"plain"}, allow: true},
		{name: "exception covers missing metadata", methods: nil, allow: true, wantPKCE: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, providerSpec{Compat: domain.Compat{AllowMissingPKCE: tc.allow}})
			e.as.md.CodeChallengeMethods = tc.methods
			if !tc.wantPKCE {
				_, err := e.svc.Start(context.Background(), startIn())
				wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonPKCENotSupported)
				ev := e.event(t, domain.EventAuthStarted)
				if ev.Outcome != int32(domain.OutcomeFailure) || ev.Reason != domain.ReasonPKCENotSupported {
					t.Fatalf("started event %+v", ev)
				}
				if c := e.as.counts(); c.registrations != 0 || e.store.Credential(testTenant, testProvider) != nil {
					t.Fatalf("a refused start registered (%+v) or wrote a grant", c)
				}
				return
			}
			f := e.authorize(t, startIn())
			// The request still uses S256: the fake server requires it.
			if f.auth.Query.Get("code_challenge_method") != "S256" {
				t.Fatalf("authorization request %v", f.auth.Query)
			}
			ev := e.event(t, domain.EventCompatRelaxation)
			if ev.Reason != domain.ReasonPKCEMetadataMissing || details(t, ev)["issuer"] != testIssuer {
				t.Fatalf("compatibility event %+v", ev)
			}
			e.complete(t, f)
		})
	}
}

// TestStartChoosesRegistration follows the spec's order (pre-registered,
// client ID metadata document, dynamic registration) through to the token
// request, where the chosen client authenticates.
func TestStartChoosesRegistration(t *testing.T) {
	t.Parallel()
	const preID, preSecret = "pre-client", "pre-secret"
	cases := []struct {
		name        string
		spec        providerSpec
		cimd        bool // the deployment serves a client ID metadata document
		setup       func(*fakeAS)
		wantMethod  domain.RegistrationMethod
		wantClient  string
		wantAuth    string
		wantDynamic int
	}{
		{name: "pre-registered, default methods", spec: providerSpec{ClientID: preID, ClientSecret: preSecret}, cimd: true,
			wantMethod: domain.RegPreRegistered, wantClient: preID, wantAuth: oauthclient.AuthClientSecretBasic},
		{name: "pre-registered, post only", spec: providerSpec{ClientID: preID, ClientSecret: preSecret},
			setup:      func(a *fakeAS) { a.md.TokenEndpointAuthMethods = []string{"client_secret_post"} },
			wantMethod: domain.RegPreRegistered, wantClient: preID, wantAuth: oauthclient.AuthClientSecretPost},
		{name: "pre-registered, basic preferred", spec: providerSpec{ClientID: preID, ClientSecret: preSecret},
			setup: func(a *fakeAS) {
				a.md.TokenEndpointAuthMethods = []string{"private_key_jwt", "client_secret_post", "client_secret_basic"}
			},
			wantMethod: domain.RegPreRegistered, wantClient: preID, wantAuth: oauthclient.AuthClientSecretBasic},
		{name: "pre-registered public client", spec: providerSpec{ClientID: preID},
			wantMethod: domain.RegPreRegistered, wantClient: preID, wantAuth: oauthclient.AuthNone},
		{name: "pre-registered, compatibility override",
			spec:       providerSpec{ClientID: preID, ClientSecret: preSecret, Compat: domain.Compat{TokenEndpointAuth: oauthclient.AuthClientSecretPost}},
			setup:      func(a *fakeAS) { a.md.TokenEndpointAuthMethods = []string{"client_secret_basic"} },
			wantMethod: domain.RegPreRegistered, wantClient: preID, wantAuth: oauthclient.AuthClientSecretPost},
		{name: "client ID metadata document", cimd: true, setup: func(a *fakeAS) { a.md.ClientIDMetadataDocumentSupported = true },
			wantMethod: domain.RegCIMD, wantClient: cimdURL, wantAuth: oauthclient.AuthNone},
		{name: "metadata document unsupported by the server", cimd: true,
			wantMethod: domain.RegDynamic, wantClient: "dcr-client-1", wantAuth: oauthclient.AuthClientSecretBasic, wantDynamic: 1},
		{name: "no metadata document served", setup: func(a *fakeAS) { a.md.ClientIDMetadataDocumentSupported = true },
			wantMethod: domain.RegDynamic, wantClient: "dcr-client-1", wantAuth: oauthclient.AuthClientSecretBasic, wantDynamic: 1},
		{name: "dynamic registration, post only", setup: func(a *fakeAS) { a.md.TokenEndpointAuthMethods = []string{"client_secret_post"} },
			wantMethod: domain.RegDynamic, wantClient: "dcr-client-1", wantAuth: oauthclient.AuthClientSecretPost, wantDynamic: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, tc.spec, withCIMD(tc.cimd))
			if tc.setup != nil {
				tc.setup(e.as)
			}
			f := e.authorize(t, startIn())
			if f.started.RegistrationMethod != tc.wantMethod || f.auth.Query.Get("client_id") != tc.wantClient {
				t.Fatalf("registration %s client %q, want %s %q", f.started.RegistrationMethod, f.auth.Query.Get("client_id"), tc.wantMethod, tc.wantClient)
			}
			e.complete(t, f)
			if got := e.as.lastExchange.reg; got.Method != tc.wantMethod || got.ClientID != tc.wantClient || got.AuthMethod != tc.wantAuth {
				t.Fatalf("token request client %+v, want %s %q %s", got, tc.wantMethod, tc.wantClient, tc.wantAuth)
			}
			_, h := e.held(t, testProvider)
			if g := h.Grant; g.RegMethod != tc.wantMethod || g.ClientID != tc.wantClient || g.AuthMethod != tc.wantAuth {
				t.Fatalf("stored grant %+v", g)
			}
			if n := e.as.counts().registrations; n != tc.wantDynamic {
				t.Fatalf("%d dynamic registrations, want %d", n, tc.wantDynamic)
			}
			if n := len(e.events(domain.EventClientRegistered)); n != tc.wantDynamic {
				t.Fatalf("%d client.registered events, want %d", n, tc.wantDynamic)
			}
		})
	}
}

func TestStartWithoutUsableClient(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		spec   providerSpec
		setup  func(*fakeAS)
		reason string
	}{
		{name: "neither metadata documents nor dynamic registration", setup: func(a *fakeAS) { a.md.RegistrationEndpoint = "" },
			reason: domain.ReasonNoClientRegistration},
		{name: "pre-registered secret the server cannot take", spec: providerSpec{ClientID: "pre-client", ClientSecret: "s"},
			setup: func(a *fakeAS) { a.md.TokenEndpointAuthMethods = []string{"private_key_jwt"} }, reason: domain.ReasonNoUsableAuthMethod},
		{name: "pre-registered with an unknown override", spec: providerSpec{ClientID: "pre-client", ClientSecret: "s",
			Compat: domain.Compat{TokenEndpointAuth: "tls_client_auth"}}, reason: domain.ReasonNoUsableAuthMethod},
		// A public client sends "none": a server listing only secret
		// methods would refuse it at the token endpoint (issue 9 item 6).
		{name: "pre-registered public client, secret methods only", spec: providerSpec{ClientID: "pre-client"},
			setup: func(a *fakeAS) { a.md.TokenEndpointAuthMethods = []string{"client_secret_post"} }, reason: domain.ReasonNoUsableAuthMethod},
		// Dynamic registration cannot obtain a key: refused before /register.
		{name: "dynamic registration, private_key_jwt only", setup: func(a *fakeAS) { a.md.TokenEndpointAuthMethods = []string{"private_key_jwt"} },
			reason: domain.ReasonNoUsableAuthMethod},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, tc.spec, withCIMD(true))
			if tc.setup != nil {
				tc.setup(e.as)
			}
			_, err := e.svc.Start(context.Background(), startIn())
			wantErr(t, err, apperr.KindFailedPrecondition, tc.reason)
			if ev := e.event(t, domain.EventAuthStarted); ev.Reason != tc.reason || ev.Outcome != int32(domain.OutcomeFailure) {
				t.Fatalf("started event %+v", ev)
			}
			e.wantStatus(t, testProvider, domain.StatusUnauthorized, "")
			if c := e.as.counts(); c.registrations != 0 {
				t.Fatalf("%d registrations", c.registrations)
			}
		})
	}
}

func TestDynamicRegistrationIsStoredEncryptedAndReused(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	first := e.authorize(t, startIn())
	row, err := e.store.GetClientRegistration(context.Background(), testTenant, testProvider, testIssuer)
	if err != nil {
		t.Fatal(err)
	}
	if row.Method != domain.RegDynamic || row.ClientID != "dcr-client-1" || row.RedirectURI != callbackURL || row.KeyID != e.keys.PrimaryID() {
		t.Fatalf("stored registration %+v", row)
	}
	if strings.Contains(string(row.Secret), "dcr-secret-1") {
		t.Fatal("client secret stored in plaintext")
	}
	reg, err := vault.OpenRegistration(e.keys, row)
	if err != nil || reg.ClientSecret.Reveal() != "dcr-secret-1" || reg.AuthMethod != oauthclient.AuthClientSecretBasic {
		t.Fatalf("opened registration %+v, %v", reg, err)
	}
	ev := e.event(t, domain.EventClientRegistered)
	if d := details(t, ev); d["issuer"] != testIssuer || d["method"] != string(domain.RegDynamic) {
		t.Fatalf("client.registered details %v", d)
	}

	second := e.authorize(t, startIn())
	if second.auth.Query.Get("client_id") != "dcr-client-1" || e.as.counts().registrations != 1 {
		t.Fatalf("second start used client %q after %d registrations", second.auth.Query.Get("client_id"), e.as.counts().registrations)
	}
	e.complete(t, first)
	e.complete(t, second)
}

// putRegistration stores a dynamic registration as an earlier start did.
func (e *env) putRegistration(tb testing.TB, reg *oauthclient.Registration) {
	tb.Helper()
	ct, err := vault.SealRegistration(e.keys, testTenant, testProvider, testIssuer, reg)
	if err != nil {
		tb.Fatal(err)
	}
	e.putRegistrationRow(tb, &repository.ClientRegistration{TenantID: testTenant, ProviderID: testProvider, Issuer: testIssuer,
		Method: domain.RegDynamic, ClientID: reg.ClientID, Secret: ct, RedirectURI: reg.RedirectURI, KeyID: e.keys.PrimaryID()})
}

// putRegistrationRow stores row over whatever registration is stored.
func (e *env) putRegistrationRow(tb testing.TB, row *repository.ClientRegistration) {
	tb.Helper()
	if cur, err := e.store.GetClientRegistration(context.Background(), row.TenantID, row.ProviderID, row.Issuer); err == nil {
		row.Version = cur.Version
	}
	if err := e.store.PutClientRegistration(context.Background(), row); err != nil {
		tb.Fatal(err)
	}
}

func TestDynamicRegistrationIsRenewedWhenUnusable(t *testing.T) {
	t.Parallel()
	old := func(mod func(*oauthclient.Registration)) *oauthclient.Registration {
		r := &oauthclient.Registration{ClientID: "old-client", ClientSecret: secret.New("old-secret"),
			AuthMethod: oauthclient.AuthClientSecretBasic, RedirectURI: callbackURL}
		mod(r)
		return r
	}
	cases := []struct {
		name    string
		reg     *oauthclient.Registration
		renewed bool
	}{
		{name: "redirect URI changed", reg: old(func(r *oauthclient.Registration) { r.RedirectURI = "https://old.example.com/callback" }), renewed: true},
		{name: "secret expired", reg: old(func(r *oauthclient.Registration) { r.ExpiresAt = t0.Add(-time.Second) }), renewed: true},
		{name: "secret expires later", reg: old(func(r *oauthclient.Registration) { r.ExpiresAt = t0.Add(time.Hour) })},
		{name: "secret never expires", reg: old(func(*oauthclient.Registration) {})},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, providerSpec{})
			e.putRegistration(t, tc.reg)
			e.as.clients["old-client"] = &asClient{secret: "old-secret", redirectURI: tc.reg.RedirectURI}
			f := e.authorize(t, startIn())
			wantClient, wantRegs := "old-client", 0
			if tc.renewed {
				wantClient, wantRegs = "dcr-client-1", 1
			}
			if got := f.auth.Query.Get("client_id"); got != wantClient || e.as.counts().registrations != wantRegs {
				t.Fatalf("client %q after %d registrations, want %q after %d", got, e.as.counts().registrations, wantClient, wantRegs)
			}
			row, err := e.store.GetClientRegistration(context.Background(), testTenant, testProvider, testIssuer)
			if err != nil || row.ClientID != wantClient {
				t.Fatalf("stored registration %+v, %v", row, err)
			}
			e.complete(t, f)
		})
	}
	t.Run("unreadable secret", func(t *testing.T) {
		t.Parallel()
		e := newProviderEnv(t, providerSpec{})
		e.putRegistrationRow(t, &repository.ClientRegistration{TenantID: testTenant, ProviderID: testProvider, Issuer: testIssuer,
			Method: domain.RegDynamic, ClientID: "old-client", Secret: []byte("not a ciphertext"), RedirectURI: callbackURL})
		e.complete(t, e.authorize(t, startIn()))
		if e.as.counts().registrations != 1 {
			t.Fatal("an unreadable registration was not replaced")
		}
	})
}

// TestConcurrentStartKeepsTheFirstStoredClient: a start that registers
// while another start stores its client uses the stored one, so the other
// start's flow is not broken.
func TestConcurrentStartKeepsTheFirstStoredClient(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{})
	var other *flow
	e.as.onRegister = func() { other = e.authorize(t, startIn()) }
	f := e.authorize(t, startIn())
	if c := e.as.counts().registrations; c != 2 {
		t.Fatalf("%d registrations, want 2", c)
	}
	if a, b := f.auth.Query.Get("client_id"), other.auth.Query.Get("client_id"); a != "dcr-client-2" || b != a {
		t.Fatalf("flows use clients %q and %q, want both the stored dcr-client-2", a, b)
	}
	if n := len(e.events(domain.EventClientRegistered)); n != 1 {
		t.Fatalf("%d client.registered events, want 1", n)
	}
	e.complete(t, other)
	e.complete(t, f)
}

// barrierStore holds each PutClientRegistration until two are waiting:
// two first starts whose registrations interleave.
type barrierStore struct {
	*servicetest.Store
	arrived chan struct{}
	release chan struct{}
	once    sync.Once
}

func (b *barrierStore) PutClientRegistration(ctx context.Context, r *repository.ClientRegistration, events ...*repository.AuditEvent) error {
	b.arrived <- struct{}{}
	b.once.Do(func() {
		go func() {
			<-b.arrived
			<-b.arrived
			close(b.release)
		}()
	})
	select {
	case <-b.release:
	case <-time.After(2 * time.Second):
	}
	return b.Store.PutClientRegistration(ctx, r, events...)
}

func TestConcurrentFirstStartsShareOneClient(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{}, withStore(func(s *servicetest.Store) Store {
		return &barrierStore{Store: s, arrived: make(chan struct{}, 2), release: make(chan struct{})}
	}))
	started := make([]*Started, 2)
	var wg sync.WaitGroup
	for i := range started {
		wg.Go(func() {
			st, err := e.svc.Start(context.Background(), startIn())
			if err != nil {
				t.Error(err)
			}
			started[i] = st
		})
	}
	wg.Wait()
	for _, st := range started {
		b, err := e.svc.BeginBrowser(context.Background(), handle(t, st))
		if err != nil {
			t.Fatal(err)
		}
		auth, err := e.as.Authorize(b.RedirectURL)
		if err != nil {
			t.Fatal(err)
		}
		f := &flow{started: st, browser: b, auth: auth}
		if res := e.svc.Callback(context.Background(), f.callback()); !res.OK {
			t.Fatalf("flow of a concurrent first start failed: %s", res.Reason)
		}
	}
}

func TestFreshDynamicRegistrationHonoursAuthMethodOverride(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{Compat: domain.Compat{TokenEndpointAuth: oauthclient.AuthClientSecretPost}})
	for i := range 2 {
		e.complete(t, e.authorize(t, startIn()))
		if got := e.as.lastExchange.reg.AuthMethod; got != oauthclient.AuthClientSecretPost {
			t.Fatalf("flow %d authenticated with %s, want the override %s", i+1, got, oauthclient.AuthClientSecretPost)
		}
	}
}

func TestStoredDynamicRegistrationHonoursAuthMethodOverride(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{Compat: domain.Compat{TokenEndpointAuth: oauthclient.AuthClientSecretPost}})
	e.putRegistration(t, &oauthclient.Registration{ClientID: "old-client", ClientSecret: secret.New("old-secret"),
		AuthMethod: oauthclient.AuthClientSecretBasic, RedirectURI: callbackURL})
	e.as.clients["old-client"] = &asClient{secret: "old-secret", redirectURI: callbackURL}
	e.complete(t, e.authorize(t, startIn()))
	if got := e.as.lastExchange.reg; got.ClientID != "old-client" || got.AuthMethod != oauthclient.AuthClientSecretPost {
		t.Fatalf("token request client %+v, want old-client with %s", got, oauthclient.AuthClientSecretPost)
	}
}

func TestStartMapsUpstreamAndStoreFailures(t *testing.T) {
	t.Parallel()
	blocked := &egress.BlockedError{Host: "10.0.0.1", Reason: "private address"}
	classified := apperr.FailedPrecondition(domain.ReasonProbeUnavailable, "the MCP server answered 500")
	cases := []struct {
		name       string
		setup      func(*env)
		wantKind   apperr.Kind
		wantReason string
		wantMsg    string // in the public message
		audited    bool   // a failed oauth.authorization.started is recorded
	}{
		{name: "probe blocked by egress", setup: func(e *env) { e.as.probeErr = &oauthclient.TemporaryError{Op: "probe", Err: blocked} },
			wantKind: apperr.KindFailedPrecondition, wantReason: domain.ReasonEgressBlocked,
			wantMsg: "probing the MCP server: egress blocked: 10.0.0.1: private address", audited: true},
		{name: "authorization server blocked by egress", setup: func(e *env) { e.as.discoverErr = fmt.Errorf("metadata: %w", blocked) },
			wantKind: apperr.KindFailedPrecondition, wantReason: domain.ReasonEgressBlocked, wantMsg: "discovering the authorization server", audited: true},
		{name: "metadata names another resource", setup: func(e *env) { e.as.md.Resource = "https://other.example.com/mcp" },
			wantKind: apperr.KindFailedPrecondition, wantReason: domain.ReasonResourceMismatch, wantMsg: "different resource", audited: true},
		{name: "metadata names another issuer", setup: func(e *env) { e.as.discoverErr = fmt.Errorf("as metadata: %w", oauthclient.ErrIssuerMismatch) },
			wantKind: apperr.KindFailedPrecondition, wantReason: domain.ReasonIssuerMismatch, wantMsg: "different issuer", audited: true},
		{name: "probe timed out", setup: func(e *env) {
			e.as.probeErr = &oauthclient.TemporaryError{Op: "probe", Err: context.DeadlineExceeded}
		}, wantKind: apperr.KindUnavailable, wantReason: domain.ReasonUnavailable, wantMsg: "probing the MCP server: timed out", audited: true},
		{name: "authorization server down", setup: func(e *env) {
			e.as.discoverErr = &oauthclient.TemporaryError{Op: "authorization server metadata", Status: 503}
		}, wantKind: apperr.KindUnavailable, wantReason: domain.ReasonUnavailable, wantMsg: "temporary failure, status 503", audited: true},
		// Definitive answers: retrying cannot help, so not UNAVAILABLE.
		{name: "MCP endpoint answers 404", setup: func(e *env) { e.as.probeErr = &oauthclient.StatusError{Op: oauthclient.OpProbe, Status: 404} },
			wantKind: apperr.KindFailedPrecondition, wantReason: domain.ReasonServerNotFound, wantMsg: "probing the MCP server: the MCP server answered 404", audited: true},
		{name: "MCP endpoint answers 410", setup: func(e *env) { e.as.probeErr = &oauthclient.StatusError{Op: oauthclient.OpProbe, Status: 410} },
			wantKind: apperr.KindFailedPrecondition, wantReason: domain.ReasonServerNotFound, wantMsg: "answered 410", audited: true},
		{name: "MCP endpoint answers 400", setup: func(e *env) { e.as.probeErr = &oauthclient.StatusError{Op: oauthclient.OpProbe, Status: 400} },
			wantKind: apperr.KindFailedPrecondition, wantReason: domain.ReasonServerRequestRejected, wantMsg: "answered 400", audited: true},
		{name: "MCP endpoint answers 500", setup: func(e *env) { e.as.probeErr = &oauthclient.StatusError{Op: oauthclient.OpProbe, Status: 500} },
			wantKind: apperr.KindUnavailable, wantReason: domain.ReasonUnavailable, wantMsg: "status 500", audited: true},
		{name: "MCP endpoint answers 429", setup: func(e *env) { e.as.probeErr = &oauthclient.StatusError{Op: oauthclient.OpProbe, Status: 429} },
			wantKind: apperr.KindUnavailable, wantReason: domain.ReasonUnavailable, wantMsg: "status 429", audited: true},
		{name: "no authorization server metadata", setup: func(e *env) {
			e.as.discoverErr = fmt.Errorf("discover: %w", oauthclient.ErrNoAuthServerMetadata)
		}, wantKind: apperr.KindFailedPrecondition, wantReason: domain.ReasonMetadataNotFound, wantMsg: "publishes no metadata", audited: true},
		{name: "classified probe error kept", setup: func(e *env) { e.as.probeErr = classified },
			wantKind: apperr.KindFailedPrecondition, wantReason: domain.ReasonProbeUnavailable, wantMsg: "answered 500", audited: true},
		{name: "registration refused", setup: func(e *env) {
			e.as.registerErr = &oauthclient.OAuthError{Op: "registration", Status: 400, Code: "invalid_client_metadata"}
		}, wantKind: apperr.KindUnavailable, wantReason: domain.ReasonUnavailable, wantMsg: "dynamic client registration failed", audited: true},
		{name: "registration blocked by egress", setup: func(e *env) { e.as.registerErr = blocked },
			wantKind: apperr.KindFailedPrecondition, wantReason: domain.ReasonEgressBlocked, wantMsg: "dynamic client registration", audited: true},
		{name: "registration unreadable", setup: func(e *env) { e.store.FailOn("GetClientRegistration", servicetest.ErrInjected) },
			wantKind: apperr.KindInternal, wantReason: domain.ReasonInternal, audited: true},
		{name: "registration not stored", setup: func(e *env) { e.store.FailOn("PutClientRegistration", servicetest.ErrInjected) },
			wantKind: apperr.KindInternal, wantReason: domain.ReasonInternal, audited: true},
		{name: "flow store unavailable", setup: func(e *env) { e.flows.failOn("Put", errStoreDown) },
			wantKind: apperr.KindUnavailable, wantReason: domain.ReasonUnavailable, wantMsg: "flow state store unavailable"},
		{name: "flow store broken", setup: func(e *env) { e.flows.failOn("Put", statestore.ErrExists) },
			wantKind: apperr.KindInternal, wantReason: domain.ReasonInternal},
		{name: "grant status not written", setup: func(e *env) { e.store.FailOn("SetGrantStatus", servicetest.ErrInjected) },
			wantKind: apperr.KindInternal, wantReason: domain.ReasonInternal},
		{name: "not-required status not written", setup: func(e *env) {
			e.as.probe = oauthclient.ProbeResult{NotRequired: true}
			e.store.FailOn("SetGrantStatus", servicetest.ErrInjected)
		}, wantKind: apperr.KindInternal, wantReason: domain.ReasonInternal},
		{name: "provider unreadable", setup: func(e *env) { e.store.FailOn("GetProvider", apperr.Unavailable(servicetest.ErrInjected, "database")) },
			wantKind: apperr.KindUnavailable, wantReason: domain.ReasonUnavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, providerSpec{})
			tc.setup(e)
			_, err := e.svc.Start(context.Background(), startIn())
			if err == nil {
				t.Fatal("Start succeeded")
			}
			if apperr.KindOf(err) != tc.wantKind || reasonOf(err) != tc.wantReason {
				t.Fatalf("error %v: kind %v reason %s, want %v %s", err, apperr.KindOf(err), reasonOf(err), tc.wantKind, tc.wantReason)
			}
			if msg := apperr.PublicMessage(err); !strings.Contains(msg, tc.wantMsg) {
				t.Fatalf("public message %q does not say %q", msg, tc.wantMsg)
			}
			evs := e.events(domain.EventAuthStarted)
			switch {
			case tc.audited && (len(evs) != 1 || evs[0].Reason != tc.wantReason || evs[0].Outcome != int32(domain.OutcomeFailure)):
				t.Fatalf("started events %+v, want one failure with %s", evs, tc.wantReason)
			case !tc.audited && len(evs) != 0:
				t.Fatalf("started events %+v, want none", evs)
			}
			if c := e.store.Credential(testTenant, testProvider); c != nil && c.Status == domain.StatusPending {
				t.Fatal("a failed start left the grant PENDING")
			}
		})
	}
}

func TestStartValidatesInputBeforeAnything(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		in        func(*StartInput)
		wantField string
	}{
		{name: "no user", in: func(in *StartInput) { in.User = "" }, wantField: "user"},
		{name: "blank user", in: func(in *StartInput) { in.User = "   " }, wantField: "user"},
		{name: "user with a control character", in: func(in *StartInput) { in.User = "alice\nbob" }, wantField: "user"},
		{name: "return URL at another origin", in: func(in *StartInput) { in.ReturnURL = "https://evil.example.com/done" }, wantField: "return_url"},
		{name: "return URL over http", in: func(in *StartInput) { in.ReturnURL = "http://app.example.com/done" }, wantField: "return_url"},
		{name: "return URL with a backslash", in: func(in *StartInput) { in.ReturnURL = returnOrigin + `\@evil.example.com` }, wantField: "return_url"},
		{name: "scope with a space", in: func(in *StartInput) { in.AdditionalScopes = []string{"a b"} }, wantField: "additional_scopes[0]"},
		{name: "empty scope", in: func(in *StartInput) { in.AdditionalScopes = []string{"a", ""} }, wantField: "additional_scopes[1]"},
		{name: "too many scopes", in: func(in *StartInput) {
			for i := range 65 {
				in.AdditionalScopes = append(in.AdditionalScopes, fmt.Sprintf("s%d", i))
			}
		}, wantField: "additional_scopes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, providerSpec{})
			in := startIn()
			tc.in(&in)
			_, err := e.svc.Start(context.Background(), in)
			if ae := wantErr(t, err, apperr.KindInvalidArgument, domain.ReasonInvalidArgument); ae.Field != tc.wantField {
				t.Fatalf("field %q, want %q", ae.Field, tc.wantField)
			}
			if c := e.as.counts(); c != (asCounts{}) || e.store.Calls("GetProvider") != 0 || len(e.stored()) != 0 ||
				e.store.Credential(testTenant, testProvider) != nil {
				t.Fatalf("an invalid start did something: servers %+v, events %v", c, e.stored())
			}
		})
	}
	t.Run("unknown provider", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		_, err := e.svc.Start(context.Background(), startIn())
		wantErr(t, err, apperr.KindNotFound, domain.ReasonNotFound)
		if c := e.as.counts(); c != (asCounts{}) || len(e.stored()) != 0 {
			t.Fatalf("servers %+v, events %v", c, e.stored())
		}
	})
}

func TestProbeResultsAreCachedForProbeTTL(t *testing.T) {
	t.Parallel()
	e := newProviderEnv(t, providerSpec{}, withConfig(func(c *Config) { c.ProbeTTL = time.Minute }))
	start := func(want domain.AuthStatus, wantProbes int) {
		t.Helper()
		st, err := e.svc.Start(context.Background(), startIn())
		if err != nil {
			t.Fatal(err)
		}
		if st.Status != want || e.as.counts().probes != wantProbes {
			t.Fatalf("Start %v after %d probes, want %v after %d", st.Status, e.as.counts().probes, want, wantProbes)
		}
	}
	start(domain.StatusPending, 1)
	// The server stops asking, but the cached challenge still holds.
	e.as.probe = oauthclient.ProbeResult{NotRequired: true}
	e.clock.Advance(59 * time.Second)
	start(domain.StatusPending, 1)
	e.clock.Advance(time.Second)
	start(domain.StatusNotRequired, 2)

	// Diagnose always probes live, and what it learns is cached.
	e.as.probe = oauthclient.ProbeResult{Status: 401}
	if _, err := e.svc.Diagnose(context.Background(), testTenant, testProvider); err != nil {
		t.Fatal(err)
	}
	if e.as.counts().probes != 3 {
		t.Fatal("Diagnose used the cached probe")
	}
	start(domain.StatusPending, 3)

	// A changed provider is probed again.
	e.as.probe = oauthclient.ProbeResult{NotRequired: true}
	e.updateProvider(t, testProvider, func(p *repository.Provider) { p.Icon = "https://mcp.example.com/icon.png" })
	start(domain.StatusNotRequired, 4)
}

func TestStartAppliesCompatibilityProfile(t *testing.T) {
	t.Parallel()
	const override = "https://api.example.com"
	cases := []struct {
		name         string
		compat       domain.Compat
		wantResource string
		wantDetails  map[string]string // of oauth.compatibility.used; nil: none
		wantExtra    map[string]string
	}{
		{name: "resource omitted", compat: domain.Compat{ResourceMode: domain.ResourceOmit},
			wantDetails: map[string]string{"compat.resource": "omit"}},
		{name: "resource overridden", compat: domain.Compat{ResourceMode: domain.ResourceOverride, ResourceOverride: override},
			wantResource: override, wantDetails: map[string]string{"compat.resource": "override"}},
		{name: "extra parameters", compat: domain.Compat{ExtraParams: map[string]string{"prompt": "consent", "audience": "files"}},
			wantResource: testServerURL, wantDetails: map[string]string{"compat.extra_authorization_params": "audience,prompt"},
			wantExtra: map[string]string{"prompt": "consent", "audience": "files"}},
		{name: "canonical resource", compat: domain.Compat{ResourceMode: domain.ResourceCanonical}, wantResource: testServerURL},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newProviderEnv(t, providerSpec{Compat: tc.compat})
			e.as.resources = append(e.as.resources, override)
			f := e.authorize(t, startIn())
			if got, has := f.auth.Query["resource"]; strings.Join(got, "") != tc.wantResource || has != (tc.wantResource != "") {
				t.Fatalf("resource parameter %q, want %q", got, tc.wantResource)
			}
			for k, v := range tc.wantExtra {
				if f.auth.Query.Get(k) != v {
					t.Fatalf("extra parameter %s = %q, want %q", k, f.auth.Query.Get(k), v)
				}
			}
			if omitted := details(t, e.event(t, domain.EventAuthStarted))["resource"] == "omitted"; omitted != (tc.wantResource == "") {
				t.Fatalf("started event says resource omitted: %v", omitted)
			}
			evs := e.events(domain.EventCompatRelaxation)
			switch {
			case tc.wantDetails == nil && len(evs) != 0:
				t.Fatalf("compatibility events %+v, want none", evs)
			case tc.wantDetails != nil && (len(evs) != 1 || !reflect.DeepEqual(details(t, evs[0]), tc.wantDetails)):
				t.Fatalf("compatibility events %+v, want one with %v", evs, tc.wantDetails)
			}
			e.complete(t, f)
			if _, h := e.held(t, testProvider); h.Grant.Resource != tc.wantResource || e.as.lastExchange.resource != tc.wantResource {
				t.Fatalf("grant resource %q, token request resource %q, want %q", h.Grant.Resource, e.as.lastExchange.resource, tc.wantResource)
			}
		})
	}
}
