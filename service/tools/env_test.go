package tools_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/egress"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/grants"
	"github.com/mcpauth/mcpauth/service/servicetest"
	"github.com/mcpauth/mcpauth/service/tools"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/statestore"
)

const (
	tenant        = "acme"
	issuer        = "https://auth.example.com"
	tokenEndpoint = issuer + "/token"
	clientID      = "mcpauth-client"
	serverURL     = "https://mcp.example.com/mcp"
)

// The fakes are working implementations of what the use case consumes.
var (
	_ grants.Protocol = (*authServer)(nil)
	_ tools.Connector = (*network)(nil)
	_ tools.Starter   = (*flowStarter)(nil)
)

// t0 has nanoseconds, to show what is truncated.
var t0 = time.Date(2025, 6, 1, 12, 0, 0, 123456789, time.UTC)

// env is one broker replica over in-memory state: the real grants and
// audit services on servicetest's store, a real keyring, the fake
// authorization server and MCP network.
type env struct {
	clock   *servicetest.Clock
	store   *servicetest.Store
	keys    *keyring.Keyring
	as      *authServer
	net     *network
	starter *flowStarter
	metrics *metrics.Metrics
	auditor *audit.Auditor
	log     *slog.Logger
	grants  *grants.Service
	svc     *tools.Service
}

func newEnv(tb testing.TB) *env {
	tb.Helper()
	spec, err := keyring.GenerateSpec(1)
	if err != nil {
		tb.Fatal(err)
	}
	keys, err := keyring.Parse(spec)
	if err != nil {
		tb.Fatal(err)
	}
	e := &env{clock: servicetest.NewClock(t0), keys: keys, metrics: metrics.New(), log: slog.New(slog.DiscardHandler)}
	e.store = servicetest.NewStore(e.clock.Now)
	e.auditor = audit.NewAuditor(e.store, e.log, e.clock.Now)
	tb.Cleanup(e.auditor.Close)
	e.as = newAuthServer(e.clock.Now, clientID)
	guard, err := egress.New(egress.Config{OnBlock: audit.EgressBlockHook(e.auditor, e.metrics)})
	if err != nil {
		tb.Fatal(err)
	}
	e.net = &network{guard: guard, servers: map[string]*mcpServer{}}
	e.starter = &flowStarter{store: e.store, now: e.clock.Now}
	e.grants = e.replica(tb, time.Minute)
	e.svc = e.tools(tb, nil)
	return e
}

// replica returns another grants service over the same store (another
// replica, with its own token cache).
func (e *env) replica(tb testing.TB, cacheTTL time.Duration) *grants.Service {
	tb.Helper()
	locks := statestore.NewMemory()
	tb.Cleanup(func() { _ = locks.Close() })
	g, err := grants.New(grants.Deps{Store: e.store, Cipher: e.keys, Proto: e.as, Locks: locks, Audit: e.auditor, Reads: &servicetest.Reads{}, Log: e.log,
		Now: e.clock.Now, Metrics: e.metrics, Config: grants.Config{CacheTTL: cacheTTL}})
	if err != nil {
		tb.Fatal(err)
	}
	return g
}

func (e *env) deps() tools.Deps {
	return tools.Deps{Store: e.store, Cipher: e.keys, Grants: e.grants, MCP: e.net, Audit: e.auditor, Log: e.log,
		Metrics: e.metrics, Now: e.clock.Now, Starter: e.starter}
}

// tools returns a tool service over env, after edit changes its deps.
func (e *env) tools(tb testing.TB, edit func(d *tools.Deps)) *tools.Service {
	tb.Helper()
	d := e.deps()
	if edit != nil {
		edit(&d)
	}
	s, err := tools.New(d)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// provider describes a provider row to create.
type provider struct {
	id      string
	url     string // serverURL when empty
	headers map[string]string
	scopes  []string // configured scopes
}

func (e *env) seal(tb testing.TB, id, field string, v []byte) []byte {
	tb.Helper()
	ct, err := e.keys.Seal(keyring.Scope{Tenant: tenant, Provider: id, Field: field}, v)
	if err != nil {
		tb.Fatal(err)
	}
	return ct
}

func (e *env) addProvider(tb testing.TB, p provider) *repository.Provider {
	tb.Helper()
	if p.url == "" {
		p.url = serverURL
	}
	row := &repository.Provider{TenantID: tenant, ID: p.id, DisplayName: "Provider " + p.id, ServerIdentifier: p.id,
		URLHash: e.keys.Fingerprint(tenant, vault.PurposeURL, []byte(p.url)), ServerURL: e.seal(tb, p.id, vault.FieldServerURL, []byte(p.url)),
		TimeoutMS: 2500, SSEReadTimeoutMS: 700, ClientID: clientID, Scopes: vault.JSONList(p.scopes), KeyID: e.keys.PrimaryID()}
	if p.headers != nil {
		raw, err := json.Marshal(p.headers)
		if err != nil {
			tb.Fatal(err)
		}
		row.Headers = e.seal(tb, p.id, vault.FieldHeaders, raw)
	}
	if err := e.store.CreateProvider(context.Background(), row); err != nil {
		tb.Fatal(err)
	}
	return row
}

// row reads a provider as the use cases do.
func (e *env) row(tb testing.TB, id string) *repository.Provider {
	tb.Helper()
	row, err := e.store.GetProvider(context.Background(), tenant, id)
	if err != nil {
		tb.Fatal(err)
	}
	return row
}

// authorize completes an authorization of the provider at the fake
// authorization server and stores its tokens through g.
func (e *env) authorize(tb testing.TB, g *grants.Service, id string, scopes ...string) *oauthclient.Tokens {
	tb.Helper()
	toks := e.as.Issue(scopes)
	grant := vault.Grant{RegMethod: domain.RegPreRegistered, ClientID: clientID, Issuer: issuer, TokenEndpoint: tokenEndpoint}
	if err := g.StoreNew(context.Background(), e.row(tb, id), "", grant, toks); err != nil {
		tb.Fatal(err)
	}
	return toks
}

// update changes the stored provider row without touching its grant (an
// update that did not reset credentials).
func (e *env) update(tb testing.TB, id string, edit func(row *repository.Provider)) {
	tb.Helper()
	row := e.row(tb, id)
	edit(row)
	if err := e.store.UpdateProvider(context.Background(), row, row.Version); err != nil {
		tb.Fatal(err)
	}
}

// moveServer points the provider at another server URL.
func (e *env) moveServer(tb testing.TB, id, newURL string) {
	tb.Helper()
	e.update(tb, id, func(row *repository.Provider) {
		row.ServerURL = e.seal(tb, id, vault.FieldServerURL, []byte(newURL))
		row.URLHash = e.keys.Fingerprint(tenant, vault.PurposeURL, []byte(newURL))
	})
}

// serve registers an MCP server at rawURL; as is nil for a server that
// needs no OAuth.
func (e *env) serve(rawURL string, as *authServer, ts ...fakeTool) *mcpServer {
	return e.net.add(rawURL, &mcpServer{as: as, tools: ts})
}

// events returns the tenant's audit events of type typ, oldest first.
func (e *env) events(typ domain.EventType) []repository.AuditEvent {
	var out []repository.AuditEvent
	for _, ev := range e.store.Events() {
		if ev.TenantID == tenant && ev.EventType == string(typ) {
			out = append(out, ev)
		}
	}
	return out
}

// lastEvent returns the newest event of type typ with its details.
func (e *env) lastEvent(tb testing.TB, typ domain.EventType) (repository.AuditEvent, map[string]string) {
	tb.Helper()
	evs := e.events(typ)
	if len(evs) == 0 {
		tb.Fatalf("no %s audit event in %+v", typ, e.store.Events())
	}
	ev := evs[len(evs)-1]
	var d map[string]string
	if err := json.Unmarshal([]byte(ev.Details), &d); err != nil {
		tb.Fatalf("details of %s: %v", typ, err)
	}
	return ev, d
}

// credStatus returns the stored grant's status and reason.
func (e *env) credStatus(tb testing.TB, id string) (domain.AuthStatus, string, int64) {
	tb.Helper()
	c := e.store.Credential(tenant, id)
	if c == nil {
		tb.Fatalf("provider %s holds no credential", id)
	}
	return c.Status, c.Reason, c.Generation
}

// call calls tool on provider "p" as user "u".
func (e *env) call(ctx context.Context, tool string, args map[string]any) (*tools.Result, error) {
	return e.svc.Call(ctx, tools.CallInput{Tenant: tenant, Provider: "p", Tool: tool, Arguments: args, User: "u"})
}

// wantErr checks err's kind and reason and returns it.
func wantErr(tb testing.TB, err error, kind apperr.Kind, reason string) *apperr.Error {
	tb.Helper()
	ae, ok := apperr.As(err)
	if !ok {
		tb.Fatalf("error = %v, want an *apperr.Error %v %s", err, kind, reason)
	}
	if ae.Kind != kind || ae.Reason != reason {
		tb.Fatalf("error = %v (kind %v, reason %s), want kind %v reason %s", err, ae.Kind, ae.Reason, kind, reason)
	}
	return ae
}

func wantTokens(tb testing.TB, s *mcpServer, want ...string) {
	tb.Helper()
	if got := s.Tokens(); !slices.Equal(got, want) {
		tb.Fatalf("server received tokens %q, want %q", got, want)
	}
}

// agent is a caller allowed to call tools and start authorizations on the
// tenant.
func agent(perms ...caller.Permission) context.Context {
	return caller.WithIdentity(context.Background(), caller.NewIdentity("agent", []string{tenant}, perms))
}

// Tools used across tests.

func echoTool(name string, scopes ...string) fakeTool {
	return fakeTool{
		def:    &mcp.Tool{Name: name, Description: "echoes", InputSchema: map[string]any{"type": "object"}},
		scopes: scopes,
		run: func(_ context.Context, args map[string]any) (*mcp.CallToolResult, error) {
			b, _ := json.Marshal(args)
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "echo " + string(b)}}}, nil
		},
	}
}

func failingTool(name string, err error) fakeTool {
	return fakeTool{def: &mcp.Tool{Name: name, InputSchema: map[string]any{"type": "object"}},
		run: func(context.Context, map[string]any) (*mcp.CallToolResult, error) { return nil, err }}
}

var errBoom = errors.New("upstream said: internal secret stack trace")
