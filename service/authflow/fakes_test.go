package authflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/grants"
	"github.com/mcpauth/mcpauth/service/servicetest"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/statestore"
	"github.com/mcpauth/mcpauth/validate"
)

// The deployment and the servers the tests talk to.
const (
	testTenant      = "acme"
	testProvider    = "files"
	testUser        = "alice@example.com"
	testServerURL   = "https://mcp.example.com/mcp"
	testPRMURL      = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
	testIssuer      = "https://as.example.com"
	callbackURL     = "https://broker.example.com/v1/oauth/callback"
	authorizePrefix = "https://broker.example.com/v1/oauth/authorize/"
	cimdURL         = "https://broker.example.com/oauth/client-metadata.json"
	returnOrigin    = "https://app.example.com"
)

// t0 is where every test clock starts: a whole second, so flow expiries
// (stored in whole seconds) fall exactly FlowTTL after a start.
var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

// testKeys is one real keyring shared by every test (it is immutable and
// safe for concurrent use).
var testKeys = sync.OnceValues(func() (*keyring.Keyring, error) {
	spec, err := keyring.GenerateSpec(1)
	if err != nil {
		return nil, err
	}
	return keyring.Parse(spec)
})

// fakeAS is an MCP server and its authorization server in memory, behaving
// as the specifications ask: the MCP server answers an unauthenticated
// request with a Bearer challenge (or serves it when NotRequired), the
// protected resource metadata names one resource, the authorization server
// registers clients dynamically, knows pre-registered clients and fetches
// client ID metadata documents, issues codes only to valid authorization
// requests (S256 PKCE, known client and redirect URI, accepted resource and
// scopes) and redeems each code once, for the client it was issued to, with
// the verifier of its challenge.
type fakeAS struct {
	now func() time.Time

	mu sync.Mutex
	// probe is what the MCP server's challenge says; probeErr fails probing.
	probe    oauthclient.ProbeResult
	probeErr error
	// md is the protected resource and authorization server metadata;
	// md.Resource is the resource the protected resource metadata names.
	md          oauthclient.Metadata
	discoverErr error
	registerErr error
	// resources are the resource indicators the authorization server
	// accepts.
	resources []string
	// omitGrantedScope leaves scope out of token responses.
	omitGrantedScope bool
	clients          map[string]*asClient
	// cimdDocs are the client ID metadata documents it can fetch, by URL.
	cimdDocs map[string]map[string]any
	codes    map[string]*asCode
	refresh  map[string]string // refresh token -> client id
	serial   int
	// onRegister runs once, outside the lock, when the next client is
	// registered (another start racing this one).
	onRegister func()

	// What the servers received.
	probes, discovers, registrations, exchanges int
	forgotten                                   []string
	probed                                      []probeCall
	registered                                  []registerCall
	lastExchange                                *exchangeCall
}

type asClient struct {
	secret      string
	redirectURI string
}

type asCode struct {
	clientID, redirectURI, resource, challenge string
	scopes                                     []string
	used                                       bool
}

type probeCall struct {
	url     string
	headers map[string]string
}

type registerCall struct {
	clientName, redirectURI string
	scopes                  []string
}

type exchangeCall struct {
	tokenEndpoint string
	reg           oauthclient.Registration
	redirectURI   string
	resource      string
	scopes        []string
}

// asCounts is how often each server endpoint was used.
type asCounts struct{ probes, discovers, registrations, exchanges int }

func newFakeAS(now func() time.Time) *fakeAS {
	return &fakeAS{
		now:   now,
		probe: oauthclient.ProbeResult{Status: 401, ResourceMetadataURL: testPRMURL},
		md: oauthclient.Metadata{
			Resource: testServerURL, ResourceMetadataURL: testPRMURL, Issuer: testIssuer,
			AuthorizationEndpoint: testIssuer + "/authorize", TokenEndpoint: testIssuer + "/token",
			RegistrationEndpoint: testIssuer + "/register", RevocationEndpoint: testIssuer + "/revoke",
			CodeChallengeMethods: []string{"S256"}, ScopesSupported: []string{"files:read", "files:write"},
			ASScopesSupported:     []string{"files:read", "files:write", "admin", oauthclient.OfflineAccess},
			IssParameterSupported: true,
		},
		resources: []string{testServerURL},
		clients:   map[string]*asClient{},
		cimdDocs:  map[string]map[string]any{},
		codes:     map[string]*asCode{},
		refresh:   map[string]string{},
	}
}

func (a *fakeAS) counts() asCounts {
	a.mu.Lock()
	defer a.mu.Unlock()
	return asCounts{a.probes, a.discovers, a.registrations, a.exchanges}
}

// preRegister makes a client known, as an operator does by hand.
func (a *fakeAS) preRegister(id, clientSecret string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.clients[id] = &asClient{secret: clientSecret, redirectURI: callbackURL}
}

// forgetClient drops a client, as servers evict unused dynamic clients.
func (a *fakeAS) forgetClient(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.clients, id)
}

// publishCIMD makes a client ID metadata document fetchable.
func (a *fakeAS) publishCIMD(doc map[string]any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cimdDocs[doc["client_id"].(string)] = doc
}

func addStep(tr *oauthclient.Trace, s oauthclient.Step) {
	if tr != nil {
		s.URL = oauthclient.StripURL(s.URL)
		tr.Steps = append(tr.Steps, s)
	}
}

// Probe is the MCP server's answer to an unauthenticated request.
func (a *fakeAS) Probe(_ context.Context, serverURL string, headers map[string]string, tr *oauthclient.Trace) (*oauthclient.ProbeResult, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.probes++
	a.probed = append(a.probed, probeCall{url: serverURL, headers: maps.Clone(headers)})
	if a.probeErr != nil {
		addStep(tr, oauthclient.Step{Action: oauthclient.ActionProbe, URL: serverURL, Detail: "no answer from " + serverURL})
		return nil, a.probeErr
	}
	p := a.probe
	p.Scopes = slices.Clone(p.Scopes)
	if p.NotRequired {
		p.Status = 200
	}
	addStep(tr, oauthclient.Step{Action: oauthclient.ActionProbe, URL: serverURL, HTTPStatus: p.Status, OK: true})
	return &p, nil
}

// Discover reads the protected resource metadata, which must name the
// canonical resource, then the authorization server metadata.
func (a *fakeAS) Discover(_ context.Context, _, canonicalResource string, _ *oauthclient.ProbeResult, tr *oauthclient.Trace) (*oauthclient.Metadata, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.discovers++
	addStep(tr, oauthclient.Step{Action: oauthclient.ActionProtectedResourceMetadata, URL: a.md.ResourceMetadataURL,
		HTTPStatus: 200, ContentType: "application/json", OK: a.discoverErr == nil, Detail: "resource " + a.md.Resource})
	if a.discoverErr != nil {
		return nil, a.discoverErr
	}
	if !oauthclient.SameResource(canonicalResource, a.md.Resource) {
		return nil, fmt.Errorf("protected resource metadata: %w", oauthclient.ErrResourceMismatch)
	}
	addStep(tr, oauthclient.Step{Action: oauthclient.ActionAuthServerMetadata, URL: a.md.Issuer + "/.well-known/oauth-authorization-server",
		HTTPStatus: 200, ContentType: "application/json", OK: true})
	md := a.md
	for _, l := range []*[]string{&md.CodeChallengeMethods, &md.ScopesSupported, &md.ASScopesSupported, &md.TokenEndpointAuthMethods, &md.GrantTypes} {
		*l = slices.Clone(*l)
	}
	return &md, nil
}

// Forget records that cached discovery for serverURL was dropped.
func (a *fakeAS) Forget(serverURL string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.forgotten = append(a.forgotten, serverURL)
}

// RegisterDynamic is RFC 7591 registration: a confidential client using
// client_secret_basic when the server supports it.
// IdentityProviderMetadata: the fake knows no enterprise identity
// provider (enterprise-managed providers are tested end to end).
func (a *fakeAS) IdentityProviderMetadata(context.Context, string, *oauthclient.Trace) (*oauthclient.Metadata, error) {
	return nil, oauthclient.ErrNoAuthServerMetadata
}

func (a *fakeAS) RegisterDynamic(_ context.Context, md *oauthclient.Metadata, clientName, redirectURI string, scopes []string) (*oauthclient.Registration, error) {
	a.mu.Lock()
	a.registered = append(a.registered, registerCall{clientName: clientName, redirectURI: redirectURI, scopes: slices.Clone(scopes)})
	switch {
	case a.registerErr != nil:
		a.mu.Unlock()
		return nil, a.registerErr
	case a.md.RegistrationEndpoint == "" || md.RegistrationEndpoint != a.md.RegistrationEndpoint:
		a.mu.Unlock()
		return nil, oauthclient.ErrNoRegistrationEndpoint
	}
	a.registrations++
	id, sec := fmt.Sprintf("dcr-client-%d", a.registrations), fmt.Sprintf("dcr-secret-%d", a.registrations)
	a.clients[id] = &asClient{secret: sec, redirectURI: redirectURI}
	method := oauthclient.AuthClientSecretBasic
	if m := a.md.TokenEndpointAuthMethods; len(m) > 0 && !slices.Contains(m, method) {
		method = oauthclient.AuthClientSecretPost
	}
	hook := a.onRegister
	a.onRegister = nil
	a.mu.Unlock()
	if hook != nil {
		hook()
	}
	return &oauthclient.Registration{ClientID: id, ClientSecret: secret.New(sec), AuthMethod: method, RedirectURI: redirectURI}, nil
}

// authorization is the authorization server's answer to a browser that
// approved an authorization request.
type authorization struct {
	Code, State, Iss string
	// Query is the authorization request as received.
	Query url.Values
}

// Authorize is the authorization endpoint: the person approves the request
// in authURL, and the server issues a code bound to its client, redirect
// URI, resource, scopes and PKCE challenge.
func (a *fakeAS) Authorize(authURL string) (*authorization, error) {
	u, err := url.Parse(authURL)
	if err != nil {
		return nil, err
	}
	q := u.Query()
	u.RawQuery = ""
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case u.String() != a.md.AuthorizationEndpoint:
		return nil, fmt.Errorf("not this server's authorization endpoint: %s", u)
	case q.Get("response_type") != "code":
		return nil, errors.New("unsupported_response_type")
	case q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43:
		return nil, errors.New("invalid_request: S256 PKCE is required")
	case len(q.Get("state")) < 43:
		return nil, errors.New("invalid_request: state missing or weak")
	}
	clientID, redirectURI := q.Get("client_id"), q.Get("redirect_uri")
	if err := a.checkRedirect(clientID, redirectURI); err != nil {
		return nil, err
	}
	resource := q.Get("resource")
	if resource != "" && !slices.ContainsFunc(a.resources, func(r string) bool { return oauthclient.SameResource(r, resource) }) {
		return nil, fmt.Errorf("invalid_target: %s", resource)
	}
	scopes := strings.Fields(q.Get("scope"))
	for _, s := range scopes {
		if len(a.md.ASScopesSupported) > 0 && !slices.Contains(a.md.ASScopesSupported, s) {
			return nil, fmt.Errorf("invalid_scope: %s", s)
		}
	}
	a.serial++
	code := fmt.Sprintf("code-%d", a.serial)
	a.codes[code] = &asCode{clientID: clientID, redirectURI: redirectURI, resource: resource, challenge: q.Get("code_challenge"), scopes: scopes}
	iss := ""
	if a.md.IssParameterSupported {
		iss = a.md.Issuer
	}
	return &authorization{Code: code, State: q.Get("state"), Iss: iss, Query: q}, nil
}

// checkRedirect accepts a known client's registered redirect URI, or one
// listed by a client ID metadata document.
func (a *fakeAS) checkRedirect(clientID, redirectURI string) error {
	if c, ok := a.clients[clientID]; ok {
		if c.redirectURI != redirectURI {
			return errors.New("invalid_request: redirect_uri not registered")
		}
		return nil
	}
	if doc, ok := a.cimdDocs[clientID]; ok && a.md.ClientIDMetadataDocumentSupported {
		if uris, _ := doc["redirect_uris"].([]string); slices.Contains(uris, redirectURI) {
			return nil
		}
		return errors.New("invalid_request: redirect_uri not in the client metadata document")
	}
	return errors.New("invalid_client: unknown client")
}

// Exchange is the token endpoint's authorization_code grant.
func (a *fakeAS) Exchange(_ context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, code, verifier secret.Secret, redirectURI, resource string, requestedScopes []string) (*oauthclient.Tokens, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.exchanges++
	a.lastExchange = &exchangeCall{tokenEndpoint: md.TokenEndpoint, reg: *reg, redirectURI: redirectURI, resource: resource, scopes: slices.Clone(requestedScopes)}
	if md.TokenEndpoint != a.md.TokenEndpoint {
		return nil, errors.New("token request sent to another server")
	}
	if !a.authenticated(reg) {
		return nil, fmt.Errorf("token exchange: %w", oauthclient.ErrInvalidClient)
	}
	c, ok := a.codes[code.Reveal()]
	invalidGrant := fmt.Errorf("token exchange: %w", oauthclient.ErrInvalidGrant)
	switch {
	case !ok || c.used:
		return nil, invalidGrant
	case c.clientID != reg.ClientID || c.redirectURI != redirectURI:
		c.used = true
		return nil, invalidGrant
	case challengeOf(verifier.Reveal()) != c.challenge:
		c.used = true
		return nil, invalidGrant
	case resource != c.resource:
		c.used = true
		return nil, &oauthclient.OAuthError{Op: "token exchange", Status: 400, Code: "invalid_target"}
	}
	c.used = true
	return a.issue(reg.ClientID, c.scopes), nil
}

// authenticated checks the client authentication of a token request.
func (a *fakeAS) authenticated(reg *oauthclient.Registration) bool {
	if c, ok := a.clients[reg.ClientID]; ok {
		return c.secret == "" || reg.ClientSecret.Reveal() == c.secret
	}
	_, cimd := a.cimdDocs[reg.ClientID]
	return cimd && reg.AuthMethod == oauthclient.AuthNone && reg.ClientSecret.IsZero()
}

// issue mints a token set; a refresh token only with offline_access.
func (a *fakeAS) issue(clientID string, scopes []string) *oauthclient.Tokens {
	a.serial++
	t := &oauthclient.Tokens{AccessToken: secret.New(fmt.Sprintf("access-%d", a.serial)), TokenType: "Bearer", ExpiresAt: a.now().Add(time.Hour)}
	if slices.Contains(scopes, oauthclient.OfflineAccess) {
		rt := fmt.Sprintf("refresh-%d", a.serial)
		a.refresh[rt] = clientID
		t.RefreshToken = secret.New(rt)
	}
	if !a.omitGrantedScope {
		t.Scopes = slices.Clone(scopes)
	}
	return t
}

// Refresh is the token endpoint's refresh_token grant (grants.Protocol).
func (a *fakeAS) Refresh(_ context.Context, _ *oauthclient.Metadata, reg *oauthclient.Registration, refreshToken secret.Secret, _ string) (*oauthclient.Tokens, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if client, ok := a.refresh[refreshToken.Reveal()]; !ok || client != reg.ClientID {
		return nil, fmt.Errorf("refresh: %w", oauthclient.ErrInvalidGrant)
	}
	return a.issue(reg.ClientID, []string{oauthclient.OfflineAccess}), nil
}

// Revoke is the RFC 7009 revocation endpoint (grants.Protocol).
func (a *fakeAS) Revoke(_ context.Context, _ *oauthclient.Metadata, _ *oauthclient.Registration, token secret.Secret, _ string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.refresh, token.Reveal())
	return nil
}

// errStoreDown is what an unreachable flow state store returns.
var errStoreDown = fmt.Errorf("dial tcp 10.0.0.7:6379: connection refused: %w", statestore.ErrUnavailable)

// flakyFlows is the in-memory flow store with failures switched on per
// method ("Put", "Take", "Claim", "Settle", "Get"), as a Redis outage looks to its callers.
type flakyFlows struct {
	*statestore.Memory
	mu   sync.Mutex
	fail map[string]error
}

func (f *flakyFlows) failOn(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[method] = err
}

func (f *flakyFlows) failure(method string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fail[method]
}

func (f *flakyFlows) Put(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := f.failure("Put"); err != nil {
		return err
	}
	return f.Memory.Put(ctx, key, value, ttl)
}

func (f *flakyFlows) Take(ctx context.Context, key string) ([]byte, error) {
	if err := f.failure("Take"); err != nil {
		return nil, err
	}
	return f.Memory.Take(ctx, key)
}

func (f *flakyFlows) Claim(ctx context.Context, key, token string, ttl time.Duration) ([]byte, error) {
	if err := f.failure("Claim"); err != nil {
		return nil, err
	}
	return f.Memory.Claim(ctx, key, token, ttl)
}

func (f *flakyFlows) Settle(ctx context.Context, key, token string) error {
	if err := f.failure("Settle"); err != nil {
		return err
	}
	return f.Memory.Settle(ctx, key, token)
}

func (f *flakyFlows) Get(ctx context.Context, key string) ([]byte, error) {
	if err := f.failure("Get"); err != nil {
		return nil, err
	}
	return f.Memory.Get(ctx, key)
}

// env is the flow use case wired to working in-memory dependencies.
type env struct {
	svc    *Service
	store  *servicetest.Store
	audit  *audit.Auditor
	clock  *servicetest.Clock
	keys   *keyring.Keyring
	as     *fakeAS
	flows  *flakyFlows
	grants *grants.Service
	cfg    Config
}

type envOption func(*envSetup)

type envSetup struct {
	cfg   Config
	store func(*servicetest.Store) Store
}

// withConfig changes the configuration.
func withConfig(f func(*Config)) envOption { return func(s *envSetup) { f(&s.cfg) } }

// withStore puts a wrapper between the use case and the store.
func withStore(f func(*servicetest.Store) Store) envOption {
	return func(s *envSetup) { s.store = f }
}

func newEnv(tb testing.TB, opts ...envOption) *env {
	tb.Helper()
	keys, err := testKeys()
	if err != nil {
		tb.Fatal(err)
	}
	setup := envSetup{cfg: Config{CallbackURL: callbackURL, AuthorizeURLPrefix: authorizePrefix, ClientName: "mcpauth-test",
		ReturnOrigins: []string{returnOrigin}}}
	for _, o := range opts {
		o(&setup)
	}
	clock := servicetest.NewClock(t0)
	store := servicetest.NewStore(clock.Now)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	flows := &flakyFlows{Memory: statestore.NewMemory(), fail: map[string]error{}}
	tb.Cleanup(func() { _ = flows.Close() })
	auditor := audit.NewAuditor(store, log, clock.Now)
	tb.Cleanup(auditor.Close)
	as := newFakeAS(clock.Now)
	g, err := grants.New(grants.Deps{Store: store, Cipher: keys, Proto: as, Locks: flows.Memory, Audit: auditor, Reads: &servicetest.Reads{}, Log: log,
		Now: clock.Now, Metrics: metrics.New()})
	if err != nil {
		tb.Fatal(err)
	}
	var st Store = store
	if setup.store != nil {
		st = setup.store(store)
	}
	svc, err := New(Deps{Store: st, Cipher: keys, Flows: flows, Proto: as, Grants: g, Audit: auditor, Log: log, Now: clock.Now, Config: setup.cfg})
	if err != nil {
		tb.Fatal(err)
	}
	return &env{svc: svc, store: store, audit: auditor, clock: clock, keys: keys, as: as, flows: flows, grants: g, cfg: svc.cfg}
}

// withCIMD makes the deployment serve a client ID metadata document.
func withCIMD(on bool) envOption {
	return func(s *envSetup) {
		if on {
			s.cfg.ClientMetadataURL = cimdURL
		}
	}
}

// newProviderEnv is an env holding one provider, whose pre-registered
// client (if any) and the deployment's client ID metadata document (if
// served) the authorization server knows.
func newProviderEnv(tb testing.TB, spec providerSpec, opts ...envOption) *env {
	tb.Helper()
	e := newEnv(tb, opts...)
	e.provider(tb, spec)
	if spec.ClientID != "" {
		e.as.preRegister(spec.ClientID, spec.ClientSecret)
	}
	if doc := e.svc.ClientMetadataDocument(); doc != nil {
		e.as.publishCIMD(doc)
	}
	return e
}

// providerSpec describes a provider; zero fields take the defaults.
type providerSpec struct {
	ID, URL                string
	Headers                map[string]string
	ClientID, ClientSecret string
	Scopes                 []string
	Compat                 domain.Compat
}

// provider creates a provider as the providers use case stores it.
func (e *env) provider(tb testing.TB, p providerSpec) *repository.Provider {
	tb.Helper()
	if p.ID == "" {
		p.ID = testProvider
	}
	if p.URL == "" {
		p.URL = testServerURL
	}
	row := &repository.Provider{TenantID: testTenant, ID: p.ID, DisplayName: p.ID, ServerIdentifier: p.ID, ClientID: p.ClientID,
		Scopes: vault.JSONList(p.Scopes), Compat: vault.JSONCompat(p.Compat), KeyID: e.keys.PrimaryID()}
	e.setURL(tb, row, p.URL)
	if len(p.Headers) > 0 {
		raw, _ := json.Marshal(p.Headers)
		row.Headers = e.seal(tb, row, vault.FieldHeaders, raw)
	}
	if p.ClientSecret != "" {
		row.ClientSecret = e.seal(tb, row, vault.FieldClientSecret, []byte(p.ClientSecret))
	}
	if err := e.store.CreateProvider(context.Background(), row); err != nil {
		tb.Fatal(err)
	}
	return row
}

func (e *env) seal(tb testing.TB, row *repository.Provider, field string, plaintext []byte) []byte {
	tb.Helper()
	ct, err := e.keys.Seal(keyring.Scope{Tenant: row.TenantID, Provider: row.ID, Field: field}, plaintext)
	if err != nil {
		tb.Fatal(err)
	}
	return ct
}

// setURL seals a server URL into row with its keyed hash.
func (e *env) setURL(tb testing.TB, row *repository.Provider, raw string) {
	tb.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		tb.Fatal(err)
	}
	row.ServerURL = e.seal(tb, row, vault.FieldServerURL, []byte(raw))
	row.URLHash = e.keys.Fingerprint(row.TenantID, vault.PurposeURL, []byte(validate.NormalizeURL(u)))
}

// updateProvider changes a stored provider, as an operator's update does.
func (e *env) updateProvider(tb testing.TB, id string, change func(*repository.Provider)) {
	tb.Helper()
	row, err := e.store.GetProvider(context.Background(), testTenant, id)
	if err != nil {
		tb.Fatal(err)
	}
	change(row)
	if err := e.store.UpdateProvider(context.Background(), row, row.Version); err != nil {
		tb.Fatal(err)
	}
}

// status is the provider's grant status as the store reads it.
func (e *env) status(tb testing.TB, id string) (domain.AuthStatus, string) {
	tb.Helper()
	row, err := e.store.GetProvider(context.Background(), testTenant, id)
	if err != nil {
		tb.Fatal(err)
	}
	return row.AuthStatus()
}

func (e *env) wantStatus(tb testing.TB, id string, want domain.AuthStatus, wantReason string) {
	tb.Helper()
	if got, reason := e.status(tb, id); got != want || reason != wantReason {
		tb.Fatalf("status = %v %q, want %v %q", got, reason, want, wantReason)
	}
}

// stored returns every stored audit event, once the events recorded so far
// are in: starts are recorded without waiting (Auditor.RecordAsync).
func (e *env) stored() []repository.AuditEvent {
	if err := e.audit.Flush(context.Background()); err != nil {
		panic(err)
	}
	return e.store.Events()
}

// events returns the stored audit events of the given type.
func (e *env) events(typ domain.EventType) []repository.AuditEvent {
	var out []repository.AuditEvent
	for _, ev := range e.stored() {
		if ev.EventType == string(typ) {
			out = append(out, ev)
		}
	}
	return out
}

// event returns the only stored audit event of the given type.
func (e *env) event(tb testing.TB, typ domain.EventType) repository.AuditEvent {
	tb.Helper()
	evs := e.events(typ)
	if len(evs) != 1 {
		tb.Fatalf("%d %s events, want 1: %+v", len(evs), typ, e.stored())
	}
	return evs[0]
}

func details(tb testing.TB, ev repository.AuditEvent) map[string]string {
	tb.Helper()
	var d map[string]string
	if err := json.Unmarshal([]byte(ev.Details), &d); err != nil {
		tb.Fatalf("details %q: %v", ev.Details, err)
	}
	return d
}

// held opens the provider's stored token set.
func (e *env) held(tb testing.TB, id string) (*repository.Credential, *vault.Held) {
	tb.Helper()
	cred := e.store.Credential(testTenant, id)
	if cred == nil {
		tb.Fatal("no credential stored")
	}
	h, err := vault.OpenTokens(e.keys, cred)
	if err != nil {
		tb.Fatal(err)
	}
	return cred, h
}

func startIn() StartInput {
	return StartInput{Tenant: testTenant, Provider: testProvider, User: testUser}
}

// flow is an authorization in progress: started, sent to the browser and
// approved at the authorization server.
type flow struct {
	started *Started
	browser *BrowserStart
	auth    *authorization
}

// handle is the flow handle in a started flow's authorization URL.
func handle(tb testing.TB, st *Started) string {
	tb.Helper()
	h, ok := strings.CutPrefix(st.AuthorizationURL, authorizePrefix)
	if !ok || h == "" {
		tb.Fatalf("authorization url %q does not start with %q", st.AuthorizationURL, authorizePrefix)
	}
	return h
}

// authorize starts a flow, opens it in a browser and approves it.
func (e *env) authorize(tb testing.TB, in StartInput) *flow {
	tb.Helper()
	return e.authorizeAs(tb, context.Background(), in)
}

// authorizeAs is authorize with the start made in ctx (its caller and
// request id).
func (e *env) authorizeAs(tb testing.TB, ctx context.Context, in StartInput) *flow {
	tb.Helper()
	st, err := e.svc.Start(ctx, in)
	if err != nil {
		tb.Fatalf("Start: %v", err)
	}
	b, err := e.svc.BeginBrowser(context.Background(), handle(tb, st))
	if err != nil {
		tb.Fatalf("BeginBrowser: %v", err)
	}
	auth, err := e.as.Authorize(b.RedirectURL)
	if err != nil {
		tb.Fatalf("Authorize: %v", err)
	}
	return &flow{started: st, browser: b, auth: auth}
}

// cookie is the browser holding the flow's binding secret.
func (f *flow) cookie(binding string) string {
	if binding == f.browser.Binding {
		return f.browser.BrowserSecret
	}
	return ""
}

// callback is the authorization response the browser delivers.
func (f *flow) callback() CallbackInput {
	return CallbackInput{State: f.auth.State, Code: f.auth.Code, Iss: f.auth.Iss, IssPresent: f.auth.Iss != "", BrowserSecret: f.cookie}
}

// complete delivers the approved authorization response.
func (e *env) complete(tb testing.TB, f *flow) {
	tb.Helper()
	if res := e.svc.Callback(context.Background(), f.callback()); !res.OK {
		tb.Fatalf("callback failed: %+v", res)
	}
}

// wantErr checks an error's kind and reason.
func wantErr(tb testing.TB, err error, kind apperr.Kind, reason string) *apperr.Error {
	tb.Helper()
	if err == nil {
		tb.Fatalf("no error, want %v %s", kind, reason)
	}
	e, ok := apperr.As(err)
	if !ok || e.Kind != kind || e.Reason != reason {
		tb.Fatalf("error %v (kind %v), want %v %s", err, apperr.KindOf(err), kind, reason)
	}
	return e
}
