package grants

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/servicetest"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/statestore"
)

const (
	issuer             = "https://as.example.com"
	tokenEndpoint      = issuer + "/token"
	revocationEndpoint = issuer + "/revoke"
	// tenant and provider of the tests that need only one grant.
	tnt = "acme"
	pid = "github"
)

var t0 = time.Date(2025, 3, 4, 10, 0, 0, 0, time.UTC)

// errInjected is a database outage injected into the in-memory store.
var errInjected = apperr.Unavailable(servicetest.ErrInjected, "database unavailable")

// errDBAborted is a transaction the database aborted to break a deadlock,
// as the repository answers it: Aborted, as a lost compare-and-swap, but
// with PostgreSQL's error as its cause (nothing was written).
var errDBAborted = &apperr.Error{Kind: apperr.KindAborted, Reason: domain.ReasonAborted,
	Message: "put credential: the database aborted the transaction", Err: &pgconn.PgError{Code: "40P01"}}

// testConfig keeps retry waits negligible: no test waits on the real clock
// for a Retry-After or a backoff.
var testConfig = Config{MarginMax: time.Minute, MaxRetryAfter: time.Millisecond}

// dueButValid moves a one-hour token into its one-minute refresh margin.
const dueButValid = 59*time.Minute + 30*time.Second

// env is a token lifecycle service over working in-memory parts: the
// repository's rules (servicetest.Store), the in-process lock store, a real
// keyring and auditor, a stepping clock and a fake authorization server.
type env struct {
	tb      testing.TB
	ctx     context.Context
	clock   *servicetest.Clock
	store   *servicetest.Store
	keys    *keyring.Keyring
	locks   *statestore.Memory
	as      *fakeAS
	auditor *audit.Auditor
	reads   *servicetest.Reads
	log     *slog.Logger
	metrics *metrics.Metrics
	svc     *Service
}

func newEnv(tb testing.TB, cfg Config) *env {
	tb.Helper()
	spec, err := keyring.GenerateSpec(1)
	if err != nil {
		tb.Fatal(err)
	}
	keys, err := keyring.Parse(spec)
	if err != nil {
		tb.Fatal(err)
	}
	clock := servicetest.NewClock(t0)
	store := servicetest.NewStore(clock.Now)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	locks := statestore.NewMemory()
	tb.Cleanup(func() { _ = locks.Close() })
	auditor := audit.NewAuditor(store, log, clock.Now)
	tb.Cleanup(auditor.Close)
	e := &env{tb: tb, ctx: context.Background(), clock: clock, store: store, keys: keys, locks: locks, reads: &servicetest.Reads{},
		as: newFakeAS(clock.Now), auditor: auditor, log: log}
	e.svc = e.service(cfg, store, locks)
	e.metrics = e.svc.metrics
	return e
}

// service returns another Service (a replica, or one over a wrapped store
// or locker) sharing this environment's keys, clock, auditor and server.
// newCachedEnv is newEnv with an hour-long token cache, for the tests that
// check a write is never hidden by a cached copy.
func newCachedEnv(tb testing.TB) *env {
	tb.Helper()
	cfg := testConfig
	cfg.CacheTTL = time.Hour
	return newEnv(tb, cfg)
}

// dueGrant authorizes a provider and moves its one-hour token into its
// refresh margin (due, still valid).
func (e *env) dueGrant(s grantSpec) *seeded {
	e.tb.Helper()
	seed := e.authorize(s)
	e.clock.Advance(dueButValid)
	return seed
}

// getDue seeds a due grant, applies change (what happened since the
// authorization) and calls Get.
func (e *env) getDue(reg domain.RegistrationMethod, change func(e *env, s *seeded)) (*seeded, error) {
	e.tb.Helper()
	s := e.dueGrant(grantSpec{reg: reg})
	change(e, s)
	_, err := e.svc.Get(e.ctx, domain.TenantGrant(tnt, pid))
	return s, err
}

func (e *env) service(cfg Config, store Store, locks Locker) *Service {
	e.tb.Helper()
	s, err := New(Deps{Store: store, Cipher: e.keys, Proto: e.as, Locks: locks, Audit: e.auditor, Reads: e.reads, Log: e.log,
		Now: e.clock.Now, Config: cfg, Metrics: metrics.New()})
	if err != nil {
		e.tb.Fatal(err)
	}
	return s
}

func (e *env) seal(tenant, id, field, value string) []byte {
	e.tb.Helper()
	ct, err := e.keys.Seal(keyring.Scope{Tenant: tenant, Provider: id, Field: field}, []byte(value))
	if err != nil {
		e.tb.Fatal(err)
	}
	return ct
}

// serverURL is the provider's MCP server URL as registered (not normalised).
func serverURL(id string) string { return "HTTPS://MCP.Example.com:443/" + id + "/" }

// normalizedURL is what StoreNew must seal as the grant's server.
func normalizedURL(id string) string { return "https://mcp.example.com/" + id }

// grantSpec describes an authorization to seed; zero values are the usual
// case (pre-registered confidential client, rotating refresh token).
type grantSpec struct {
	tenant, id   string
	reg          domain.RegistrationMethod
	noRefresh    bool
	scopes       []string
	tokenType    string
	noRevocation bool
}

// seeded is an authorization stored with the service's own StoreNew.
type seeded struct {
	row    *repository.Provider
	grant  vault.Grant
	tokens *oauthclient.Tokens
}

func (s *seeded) subject() string { return s.row.TenantID + "/" + s.row.ID }

// provider creates a provider row with its server URL and, for a
// pre-registered client, its client id and sealed secret.
func (e *env) provider(tenant, id string, reg domain.RegistrationMethod) *repository.Provider {
	e.tb.Helper()
	row := &repository.Provider{TenantID: tenant, ID: id, DisplayName: id, ServerIdentifier: id, URLHash: "k1:" + id,
		ServerURL: e.seal(tenant, id, vault.FieldServerURL, serverURL(id)), Scopes: "[]", KeyID: e.keys.PrimaryID()}
	if reg == domain.RegPreRegistered {
		row.ClientID = "pre-" + tenant + "-" + id
		row.ClientSecret = e.seal(tenant, id, vault.FieldClientSecret, "pre-secret-"+id)
		e.as.addClient(row.ClientID, "pre-secret-"+id)
	}
	if err := e.store.CreateProvider(e.ctx, row); err != nil {
		e.tb.Fatal(err)
	}
	return row
}

// registerDynamic stores a dynamic client registration at the issuer and
// registers the client with the server; it returns the client id.
func (e *env) registerDynamic(tenant, id string) string {
	e.tb.Helper()
	clientID, sec := "dyn-"+tenant+"-"+id, "dyn-secret-"+id
	ct, err := vault.SealRegistration(e.keys, tenant, id, issuer,
		&oauthclient.Registration{ClientSecret: secret.New(sec), AuthMethod: oauthclient.AuthClientSecretBasic})
	if err != nil {
		e.tb.Fatal(err)
	}
	if err := e.store.PutClientRegistration(e.ctx, &repository.ClientRegistration{TenantID: tenant, ProviderID: id, Issuer: issuer,
		Method: domain.RegDynamic, ClientID: clientID, Secret: ct, KeyID: e.keys.PrimaryID()}); err != nil {
		e.tb.Fatal(err)
	}
	e.as.addClient(clientID, sec)
	return clientID
}

// authorize creates a provider and stores a completed authorization for it
// with StoreNew, the tokens issued by the fake server.
func (e *env) authorize(s grantSpec) *seeded {
	e.tb.Helper()
	if s.tenant == "" {
		s.tenant = tnt
	}
	if s.id == "" {
		s.id = pid
	}
	if s.reg == "" {
		s.reg = domain.RegPreRegistered
	}
	row := e.provider(s.tenant, s.id, s.reg)
	g := vault.Grant{Issuer: issuer, TokenEndpoint: tokenEndpoint, RevocationEndpoint: revocationEndpoint, RegMethod: s.reg,
		AuthMethod: oauthclient.AuthClientSecretBasic, Resource: normalizedURL(s.id)}
	if s.noRevocation {
		g.RevocationEndpoint = ""
	}
	switch s.reg {
	case domain.RegPreRegistered:
		g.ClientID = row.ClientID
	case domain.RegDynamic:
		g.ClientID = e.registerDynamic(s.tenant, s.id)
	}
	t := e.as.authorize(s.tenant+"/"+s.id, g.ClientID, !s.noRefresh)
	t.Scopes, t.TokenType = s.scopes, s.tokenType
	if err := e.svc.StoreNew(e.ctx, row, "", g, t); err != nil {
		e.tb.Fatal(err)
	}
	return &seeded{row: row, grant: g, tokens: t}
}

// cred returns the stored credential row, failing the test when absent.
func (e *env) cred(tenant, id string) *repository.Credential {
	e.tb.Helper()
	c := e.store.Credential(tenant, id)
	if c == nil {
		e.tb.Fatalf("no credential stored for %s/%s", tenant, id)
	}
	return c
}

// held opens the stored tokens.
func (e *env) held(tenant, id string) *vault.Held {
	e.tb.Helper()
	h, err := vault.OpenTokens(e.keys, e.cred(tenant, id))
	if err != nil {
		e.tb.Fatal(err)
	}
	return h
}

// wantGrant checks the grant's status and reason where they are stored (the
// credential row) and as the provider row reads them.
func (e *env) wantGrant(tenant, id string, status domain.AuthStatus, reason string) {
	e.tb.Helper()
	c := e.cred(tenant, id)
	if c.Status != status || c.Reason != reason {
		e.tb.Errorf("credential status = %v/%q, want %v/%q", c.Status, c.Reason, status, reason)
	}
	row, err := e.store.GetProvider(e.ctx, tenant, id)
	if err != nil {
		e.tb.Fatal(err)
	}
	if st, r := row.AuthStatus(); st != status || r != reason {
		e.tb.Errorf("provider AuthStatus() = %v/%q, want %v/%q", st, r, status, reason)
	}
	if status == domain.StatusReauthRequired && (len(c.Tokens) != 0 || c.HasRefresh || c.ExpiresAt != nil) {
		e.tb.Errorf("dead grant still holds tokens: %d bytes, has_refresh=%v, expires_at=%v", len(c.Tokens), c.HasRefresh, c.ExpiresAt)
	}
}

// events returns the stored audit events of one type.
func (e *env) events(typ domain.EventType) []repository.AuditEvent {
	var out []repository.AuditEvent
	for _, ev := range e.store.Events() {
		if ev.EventType == string(typ) {
			out = append(out, ev)
		}
	}
	return out
}

// wantEvents checks the reasons, in order, of the stored events of one type
// for the provider, and their outcome.
func (e *env) wantEvents(typ domain.EventType, provider string, outcome domain.Outcome, reasons ...string) []repository.AuditEvent {
	e.tb.Helper()
	var got []string
	var evs []repository.AuditEvent
	for _, ev := range e.events(typ) {
		if ev.ProviderID != provider {
			continue
		}
		if domain.Outcome(ev.Outcome) != outcome {
			e.tb.Errorf("%s event outcome = %d, want %d", typ, ev.Outcome, outcome)
		}
		got = append(got, ev.Reason)
		evs = append(evs, ev)
	}
	if !slices.Equal(got, reasons) {
		e.tb.Errorf("%s events for %s: reasons %q, want %q", typ, provider, got, reasons)
	}
	return evs
}

func details(tb testing.TB, ev repository.AuditEvent) map[string]string {
	tb.Helper()
	var d map[string]string
	if err := json.Unmarshal([]byte(ev.Details), &d); err != nil {
		tb.Fatalf("details %q: %v", ev.Details, err)
	}
	return d
}

// wantErr checks an error's apperr kind and reason.
func wantErr(tb testing.TB, err error, kind apperr.Kind, reason string) {
	tb.Helper()
	e, ok := apperr.As(err)
	if !ok {
		tb.Fatalf("error = %v (%T), want an apperr %v/%s", err, err, kind, reason)
	}
	if e.Kind != kind || e.Reason != reason {
		tb.Fatalf("error = %v: kind %v reason %s, want %v/%s", err, e.Kind, e.Reason, kind, reason)
	}
}

// get is Get that must succeed.
func (e *env) get(svc *Service, tenant, id string) *Token {
	e.tb.Helper()
	tok, err := svc.Get(e.ctx, domain.TenantGrant(tenant, id))
	if err != nil {
		e.tb.Fatalf("Get(%s/%s): %v", tenant, id, err)
	}
	return tok
}

// revokedHints lists the token type hints of the revocations the server
// received, in order.
func (e *env) revokedHints() []string {
	var hints []string
	for _, r := range e.as.revocations() {
		hints = append(hints, r.hint)
	}
	return hints
}

// wantRefreshes checks how many times the server's token endpoint was called.
func (e *env) wantRefreshes(n int) {
	e.tb.Helper()
	if got := e.as.refreshCalls(); got != n {
		e.tb.Errorf("refresh calls at the server = %d, want %d", got, n)
	}
}

// temporary is a 503 from the token endpoint.
func temporary(retryAfter time.Duration) error {
	return &oauthclient.TemporaryError{Op: "refresh", Status: 503, RetryAfter: retryAfter}
}

// isTemporary reports whether err carries a *oauthclient.TemporaryError.
func isTemporary(err error) bool {
	var temp *oauthclient.TemporaryError
	return errors.As(err, &temp)
}

func lockKey(tenant, id string) string { return "refresh:" + tenant + "/" + id }
