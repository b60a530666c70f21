package tools_test

import (
	"context"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/egress"
	"github.com/mcpauth/mcpauth/mcpclient"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/authflow"
	"github.com/mcpauth/mcpauth/service/servicetest"
	"github.com/mcpauth/mcpauth/service/vault"
)

// authServer is an in-memory OAuth authorization server: a rotating token
// endpoint (grants.Protocol) and the token introspection the MCP servers it
// protects share, so a refreshed token becomes valid and the one it
// replaces stops working.
type authServer struct {
	now      func() time.Time
	clientID string

	mu        sync.Mutex
	seq       int
	scopes    map[string][]string // every access token issued -> its scopes
	live      map[string]bool     // access tokens the resource servers accept
	refresh   map[string]string   // live refresh token -> access token issued with it
	refreshes int
	revokes   int
	down      error // the token endpoint's failure, when set
}

func newAuthServer(now func() time.Time, clientID string) *authServer {
	return &authServer{now: now, clientID: clientID, scopes: map[string][]string{}, live: map[string]bool{}, refresh: map[string]string{}}
}

func (a *authServer) issueLocked(scopes []string) *oauthclient.Tokens {
	a.seq++
	at, rt := fmt.Sprintf("at-%d", a.seq), fmt.Sprintf("rt-%d", a.seq)
	a.scopes[at], a.live[at], a.refresh[rt] = slices.Clone(scopes), true, at
	return &oauthclient.Tokens{AccessToken: secret.New(at), RefreshToken: secret.New(rt), TokenType: "Bearer",
		ExpiresAt: a.now().Add(time.Hour), Scopes: slices.Clone(scopes)}
}

// Issue completes an authorization code exchange.
func (a *authServer) Issue(scopes []string) *oauthclient.Tokens {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.issueLocked(scopes)
}

// Refresh rotates: the refresh token and its access token die, a new pair
// with the same scopes is issued.
func (a *authServer) Refresh(_ context.Context, md *oauthclient.Metadata, reg *oauthclient.Registration, rt secret.Secret, _ string) (*oauthclient.Tokens, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.refreshes++
	if a.down != nil {
		return nil, a.down
	}
	if md.TokenEndpoint != tokenEndpoint || reg.ClientID != a.clientID {
		return nil, oauthclient.ErrInvalidClient
	}
	at, ok := a.refresh[rt.Reveal()]
	if !ok {
		return nil, oauthclient.ErrInvalidGrant
	}
	delete(a.refresh, rt.Reveal())
	delete(a.live, at)
	return a.issueLocked(a.scopes[at]), nil
}

// Revoke kills a token (RFC 7009).
func (a *authServer) Revoke(_ context.Context, _ *oauthclient.Metadata, _ *oauthclient.Registration, tok secret.Secret, _ string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.revokes++
	delete(a.live, tok.Reveal())
	delete(a.refresh, tok.Reveal())
	return nil
}

// Introspect returns the scopes of a live access token.
func (a *authServer) Introspect(tok string) ([]string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.scopes[tok]), a.live[tok]
}

// Expire kills an access token server-side (its holder still thinks it is
// fresh).
func (a *authServer) Expire(tok string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.live, tok)
}

// SetScopes changes what a token actually grants.
func (a *authServer) SetScopes(tok string, scopes ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.scopes[tok] = scopes
}

// Fail makes the token endpoint fail with err (nil: works again).
func (a *authServer) Fail(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.down = err
}

// Refreshes counts refresh requests.
func (a *authServer) Refreshes() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.refreshes
}

// fakeTool is one tool of an mcpServer.
type fakeTool struct {
	def *mcp.Tool
	// scopes are the scopes a call needs (403 insufficient_scope without).
	scopes []string
	// forbidden refuses every call with a plain 403.
	forbidden bool
	run       func(ctx context.Context, args map[string]any) (*mcp.CallToolResult, error)
}

// request is what one MCP exchange carried over the wire.
type request struct {
	Op      string // "tools/list", "tools/call" or "probe"
	Key     string
	Target  mcpclient.Target
	Token   string
	Headers map[string]string
	Tool    string
	Args    map[string]any
}

// mcpServer is an in-memory MCP server. With an authServer it is
// OAuth-protected: it answers 401 with a Bearer challenge to a missing or
// dead token, and 403 insufficient_scope (with the scopes needed) to a
// token lacking a tool's scopes. It may demand custom headers, refusing
// without them with a 401 that carries no Bearer challenge (a gateway).
type mcpServer struct {
	as          *authServer
	needHeaders map[string]string
	tools       []fakeTool

	mu sync.Mutex
	// rejectTokens refuses every token with a Bearer challenge (as after
	// the server's trust in the issuer changed).
	rejectTokens bool
	down         error
	// onRequest runs when a request arrives, before it is answered, with
	// its 1-based number: it plays whatever happens meanwhile elsewhere.
	onRequest func(n int)
	seen      []request
}

func (s *mcpServer) set(f func(s *mcpServer)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

// Requests returns what the server received, oldest first.
func (s *mcpServer) Requests() []request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seen)
}

// Tokens returns the bearer token of each request ("" for none).
func (s *mcpServer) Tokens() []string {
	var out []string
	for _, r := range s.Requests() {
		out = append(out, r.Token)
	}
	return out
}

func (s *mcpServer) tool(name string) *fakeTool {
	for i := range s.tools {
		if s.tools[i].def.Name == name {
			return &s.tools[i]
		}
	}
	return nil
}

// serve checks a request's credentials as the real server would and
// returns the tool to run for a call.
func (s *mcpServer) serve(ctx context.Context, r request) (*fakeTool, error) {
	s.mu.Lock()
	s.seen = append(s.seen, r)
	n, hook, reject, down := len(s.seen), s.onRequest, s.rejectTokens, s.down
	s.mu.Unlock()
	if hook != nil {
		hook(n)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("mcpclient: %s: %w", r.Op, err)
	}
	if down != nil {
		return nil, down
	}
	for k, v := range s.needHeaders {
		if r.Headers[k] != v {
			return nil, &mcpclient.AuthError{Status: 401}
		}
	}
	var granted []string
	if s.as != nil {
		sc, ok := s.as.Introspect(r.Token)
		if !ok || reject {
			return nil, &mcpclient.AuthError{Status: 401, Bearer: true, Challenge: `Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource"`}
		}
		granted = sc
	}
	if r.Op != "tools/call" {
		return nil, nil
	}
	t := s.tool(r.Tool)
	switch {
	case t == nil:
		return nil, fmt.Errorf("mcpclient: call tool: server returned JSON-RPC error -32602")
	case t.forbidden:
		return nil, &mcpclient.AuthError{Status: 403}
	}
	for _, sc := range t.scopes {
		if s.as != nil && !slices.Contains(granted, sc) {
			return nil, &mcpclient.AuthError{Status: 403, Bearer: true, InsufficientScope: true, Scopes: slices.Clone(t.scopes),
				Challenge: `Bearer error="insufficient_scope", scope="` + strings.Join(t.scopes, " ") + `"`}
		}
	}
	return t, nil
}

// network is the tools.Connector: it routes each exchange through the real
// egress guard to the in-memory server at the target URL.
type network struct {
	guard *egress.Guard

	mu      sync.Mutex
	servers map[string]*mcpServer
}

func (n *network) add(rawURL string, s *mcpServer) *mcpServer {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.servers[rawURL] = s
	return s
}

func (n *network) server(rawURL string) *mcpServer {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.servers[rawURL]
}

func (n *network) route(ctx context.Context, t mcpclient.Target, cr mcpclient.Credentials, r request) (*mcpServer, request, error) {
	r.Target, r.Token, r.Headers = t, cr.AccessToken.Reveal(), maps.Clone(cr.Headers)
	if err := n.guard.Preflight(ctx, t.URL); err != nil {
		return nil, r, fmt.Errorf("mcpclient: %s: %w: %w", r.Op, mcpclient.ErrUnreachable, err)
	}
	s := n.server(t.URL)
	if s == nil {
		u, _ := url.Parse(t.URL)
		return nil, r, fmt.Errorf("mcpclient: %s: dial tcp: lookup %s: no such host: %w", r.Op, u.Hostname(), mcpclient.ErrUnreachable)
	}
	return s, r, nil
}

func (n *network) ListTools(ctx context.Context, key string, t mcpclient.Target, cr mcpclient.Credentials) ([]*mcp.Tool, error) {
	s, r, err := n.route(ctx, t, cr, request{Op: "tools/list", Key: key})
	if err != nil {
		return nil, err
	}
	if _, err := s.serve(ctx, r); err != nil {
		return nil, err
	}
	out := make([]*mcp.Tool, 0, len(s.tools))
	for _, ft := range s.tools {
		d := *ft.def
		out = append(out, &d)
	}
	return out, nil
}

func (n *network) CallTool(ctx context.Context, key string, t mcpclient.Target, cr mcpclient.Credentials, name string, args map[string]any) (*mcp.CallToolResult, error) {
	s, r, err := n.route(ctx, t, cr, request{Op: "tools/call", Key: key, Tool: name, Args: args})
	if err != nil {
		return nil, err
	}
	ft, err := s.serve(ctx, r)
	if err != nil {
		return nil, err
	}
	if ft.run == nil {
		return &mcp.CallToolResult{Content: []mcp.Content{}}, nil
	}
	return ft.run(ctx, args)
}

func (n *network) Probe(ctx context.Context, t mcpclient.Target, cr mcpclient.Credentials) error {
	s, r, err := n.route(ctx, t, cr, request{Op: "probe"})
	if err != nil {
		return err
	}
	_, err = s.serve(ctx, r)
	return err
}

// flowStarter is a small working authorization-flow starter: it selects
// the scopes as authflow does (the provider's configured scopes, then the
// additional ones), keeps the flow, and returns a single-use URL that shows
// the scopes it will request.
type flowStarter struct {
	store *servicetest.Store
	now   func() time.Time

	mu          sync.Mutex
	fail        error
	notRequired bool
	flows       []authflow.StartInput
}

func (f *flowStarter) Start(ctx context.Context, in authflow.StartInput) (*authflow.Started, error) {
	if in.User == "" {
		return nil, apperr.Invalid("user", "is required")
	}
	row, err := f.store.GetProvider(ctx, in.Tenant, in.Provider)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.fail != nil:
		return nil, f.fail
	case f.notRequired:
		return &authflow.Started{Status: domain.StatusNotRequired}, nil
	}
	scopes := oauthclient.SelectScopes(vault.ParseList(row.Scopes), nil, nil, in.AdditionalScopes)
	f.flows = append(f.flows, in)
	return &authflow.Started{
		Status:           domain.StatusPending,
		AuthorizationURL: fmt.Sprintf("https://mcpauth.example.com/oauth/authorize/flow-%d?scope=%s", len(f.flows), url.QueryEscape(strings.Join(scopes, " "))),
		ExpiresAt:        f.now().Add(10 * time.Minute),
		Scopes:           scopes,
		Issuer:           issuer,
	}, nil
}

// Flows returns the flows started so far.
func (f *flowStarter) Flows() []authflow.StartInput {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.flows)
}
