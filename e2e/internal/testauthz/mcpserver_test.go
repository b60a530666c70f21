package testauthz

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// bearerTransport adds a bearer token (and optional extra header) to every
// request and remembers the status and challenge of every response.
type bearerTransport struct {
	token  string
	header [2]string

	mu        sync.Mutex
	responses []*http.Response
}

func (t *bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if t.token != "" {
		r.Header.Set("Authorization", "Bearer "+t.token)
	}
	if t.header[0] != "" {
		r.Header.Set(t.header[0], t.header[1])
	}
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil {
		t.mu.Lock()
		t.responses = append(t.responses, &http.Response{StatusCode: resp.StatusCode, Header: resp.Header.Clone()})
		t.mu.Unlock()
	}
	return resp, err
}

func (t *bearerTransport) withStatus(code int) []*http.Response {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*http.Response
	for _, r := range t.responses {
		if r.StatusCode == code {
			out = append(out, r)
		}
	}
	return out
}

func connect(t *testing.T, m *MCPServer, tr *bearerTransport) *mcp.ClientSession {
	t.Helper()
	client := mcp.NewClient(&mcp.Implementation{Name: "testauthz-test", Version: "1"}, nil)
	cs, err := client.Connect(t.Context(), &mcp.StreamableClientTransport{
		Endpoint:   m.URL(),
		HTTPClient: &http.Client{Transport: tr, Timeout: 30 * time.Second},
	}, nil)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = cs.Close() })
	return cs
}

// postInitialize sends a raw initialize request and returns the response.
func postInitialize(t *testing.T, m *MCPServer, token string) *http.Response {
	t.Helper()
	body := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, m.URL(), strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func newProtected(t *testing.T, aopt AuthServerOptions, mopt MCPServerOptions) (*AuthServer, *MCPServer) {
	t.Helper()
	a := NewAuthServer(t, aopt)
	a.RegisterClient("app", "", []string{testRedirect}, true)
	mopt.Auth = a
	return a, NewMCPServer(t, mopt)
}

func TestMCPRequiresToken(t *testing.T) {
	t.Parallel()
	a, m := newProtected(t, AuthServerOptions{IssuerPath: "/as"}, MCPServerOptions{})
	resp := postInitialize(t, m, "")
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: HTTP %d, want 401", resp.StatusCode)
	}
	ch := resp.Header.Get("WWW-Authenticate")
	if !strings.HasPrefix(ch, "Bearer ") || !strings.Contains(ch, `resource_metadata="`+m.PRMURL()+`"`) {
		t.Fatalf("challenge %q lacks resource_metadata %q", ch, m.PRMURL())
	}
	if m.PRMURL() != m.Origin()+"/.well-known/oauth-protected-resource/mcp" {
		t.Fatalf("PRM URL %q is not path-inserted", m.PRMURL())
	}
	if resp := postInitialize(t, m, "not-a-token"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bogus token: HTTP %d, want 401", resp.StatusCode)
	}

	r, err := http.Get(m.PRMURL())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var prm struct {
		Resource             string   `json:"resource"`
		AuthorizationServers []string `json:"authorization_servers"`
		ScopesSupported      []string `json:"scopes_supported"`
	}
	if err := json.NewDecoder(r.Body).Decode(&prm); err != nil {
		t.Fatal(err)
	}
	if prm.Resource != m.URL() || len(prm.AuthorizationServers) != 1 || prm.AuthorizationServers[0] != a.URL {
		t.Fatalf("PRM %+v", prm)
	}
}

func TestMCPWithValidToken(t *testing.T) {
	t.Parallel()
	a, m := newProtected(t, AuthServerOptions{}, MCPServerOptions{PageSize: 7})
	tok := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect, Scopes: []string{"mcp.read"}, Resource: m.URL()})
	tr := &bearerTransport{token: tok.AccessToken}
	cs := connect(t, m, tr)

	var names []string
	for tool, err := range cs.Tools(t.Context(), nil) {
		if err != nil {
			t.Fatalf("list tools: %v", err)
		}
		names = append(names, tool.Name)
	}
	if len(names) != 3+DummyToolCount {
		t.Fatalf("listed %d tools, want %d: %v", len(names), 3+DummyToolCount, names)
	}
	first, err := cs.ListTools(t.Context(), nil)
	if err != nil || len(first.Tools) != 7 || first.NextCursor == "" {
		t.Fatalf("first page: %d tools, cursor %q, %v", len(first.Tools), first.NextCursor, err)
	}

	res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": "hi"}})
	if err != nil || res.IsError {
		t.Fatalf("echo: %v %+v", err, res)
	}
	if txt := res.Content[0].(*mcp.TextContent).Text; txt != "hi" {
		t.Fatalf("echo text %q", txt)
	}
	var structured struct{ Text string }
	b, _ := json.Marshal(res.StructuredContent)
	if json.Unmarshal(b, &structured) != nil || structured.Text != "hi" {
		t.Fatalf("echo structuredContent %s", b)
	}
	res, err = cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "add", Arguments: map[string]any{"a": 2, "b": 3}})
	if err != nil || res.Content[0].(*mcp.TextContent).Text != "5" {
		t.Fatalf("add: %v %+v", err, res)
	}
	res, err = cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "whoami"})
	if err != nil || res.Content[0].(*mcp.TextContent).Text != "alice" {
		t.Fatalf("whoami: %v %+v", err, res)
	}

	for _, r := range m.Received() {
		if r.Path == "/mcp" && r.Header.Get("Authorization") != "Bearer "+tok.AccessToken {
			t.Fatalf("%s %s without the bearer token", r.Method, r.Path)
		}
	}
}

func TestMCPInsufficientScope(t *testing.T) {
	t.Parallel()
	a, m := newProtected(t, AuthServerOptions{}, MCPServerOptions{ScopedTool: "admin", RequiredScope: "mcp.write"})
	narrow := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect, Scopes: []string{"mcp.read"}})
	tr := &bearerTransport{token: narrow.AccessToken}
	cs := connect(t, m, tr)
	if _, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": "x"}}); err != nil {
		t.Fatalf("unscoped tool with a narrow token: %v", err)
	}
	if _, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "admin"}); err == nil {
		t.Fatal("scoped tool succeeded with a narrow token")
	}
	forbidden := tr.withStatus(http.StatusForbidden)
	if len(forbidden) != 1 {
		t.Fatalf("%d 403 responses, want 1", len(forbidden))
	}
	ch := forbidden[0].Header.Get("WWW-Authenticate")
	for _, want := range []string{`Bearer error="insufficient_scope"`, `scope="mcp.write"`, `resource_metadata="` + m.PRMURL() + `"`} {
		if !strings.Contains(ch, want) {
			t.Errorf("challenge %q lacks %s", ch, want)
		}
	}

	wide := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect, Scopes: []string{"mcp.read", "mcp.write"}})
	cs = connect(t, m, &bearerTransport{token: wide.AccessToken})
	res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "admin"})
	if err != nil || res.IsError {
		t.Fatalf("scoped tool with the wider token: %v %+v", err, res)
	}
}

func TestMCPExpiredToken(t *testing.T) {
	t.Parallel()
	a, m := newProtected(t, AuthServerOptions{AccessTokenLifetime: 2 * time.Second}, MCPServerOptions{})
	tok := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect})
	if resp := postInitialize(t, m, tok.AccessToken); resp.StatusCode != http.StatusOK {
		t.Fatalf("fresh token: HTTP %d", resp.StatusCode)
	}
	deadline := time.Now().Add(6 * time.Second)
	for {
		resp := postInitialize(t, m, tok.AccessToken)
		if resp.StatusCode == http.StatusUnauthorized {
			if !strings.Contains(resp.Header.Get("WWW-Authenticate"), "resource_metadata=") {
				t.Fatalf("expired-token challenge %q", resp.Header.Get("WWW-Authenticate"))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("token still accepted 6s after a 2s lifetime")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestMCPRejectsTokenForAnotherResource(t *testing.T) {
	t.Parallel()
	a, m := newProtected(t, AuthServerOptions{}, MCPServerOptions{})
	tok := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect, Resource: "http://127.0.0.1:1/other"})
	if resp := postInitialize(t, m, tok.AccessToken); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("token for another resource: HTTP %d, want 401", resp.StatusCode)
	}
}

func TestMCPRequiredHeader(t *testing.T) {
	t.Parallel()
	m := NewMCPServer(t, MCPServerOptions{RequiredHeader: [2]string{"X-Api-Key", "k1"}})
	if resp := postInitialize(t, m, ""); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no API key: HTTP %d, want 401", resp.StatusCode)
	}
	cs := connect(t, m, &bearerTransport{header: [2]string{"X-Api-Key", "k1"}})
	res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "whoami"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(res.StructuredContent)
	if !strings.Contains(string(b), `"header":"k1"`) {
		t.Fatalf("whoami structured %s", b)
	}
	for _, r := range m.Received() {
		if r.Header.Get("Authorization") != "" {
			t.Fatal("Authorization sent to a header-auth server")
		}
	}
}

func TestMCPMetadataVariants(t *testing.T) {
	t.Parallel()
	status := func(t *testing.T, u string) int {
		t.Helper()
		r, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}

	_, legacy := newProtected(t, AuthServerOptions{}, MCPServerOptions{NoPRM: true})
	resp := postInitialize(t, legacy, "")
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != "Bearer" {
		t.Fatalf("NoPRM challenge: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	if code := status(t, legacy.Origin()+"/.well-known/oauth-protected-resource/mcp"); code != http.StatusNotFound {
		t.Fatalf("NoPRM serves PRM: %d", code)
	}

	_, root := newProtected(t, AuthServerOptions{}, MCPServerOptions{PRMLocation: PRMRoot, OmitResourceMetadata: true, ChallengeScope: "mcp.read"})
	resp = postInitialize(t, root, "")
	if ch := resp.Header.Get("WWW-Authenticate"); strings.Contains(ch, "resource_metadata") || !strings.Contains(ch, `scope="mcp.read"`) {
		t.Fatalf("challenge %q", ch)
	}
	if status(t, root.Origin()+"/.well-known/oauth-protected-resource") != http.StatusOK ||
		status(t, root.Origin()+"/.well-known/oauth-protected-resource/mcp") != http.StatusNotFound {
		t.Fatal("PRMRoot not served at the root only")
	}

	_, mismatch := newProtected(t, AuthServerOptions{}, MCPServerOptions{PRMResourceOverride: "https://elsewhere.example/mcp"})
	r, err := http.Get(mismatch.PRMURL())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var prm map[string]any
	_ = json.NewDecoder(r.Body).Decode(&prm)
	if prm["resource"] != "https://elsewhere.example/mcp" {
		t.Fatalf("PRM resource %v", prm["resource"])
	}
}

func TestMCPEmbeddedLegacyAuth(t *testing.T) {
	t.Parallel()
	m := NewMCPServer(t, MCPServerOptions{NoPRM: true, EmbeddedAuth: &AuthServerOptions{DCR: true}})
	a := m.Auth()
	if a.URL != m.Origin() {
		t.Fatalf("embedded issuer %q, want the MCP origin %q", a.URL, m.Origin())
	}
	a.RegisterClient("app", "", []string{testRedirect}, true)
	tok := a.MintTokens(t, FlowParams{ClientID: "app", RedirectURI: testRedirect})
	cs := connect(t, m, &bearerTransport{token: tok.AccessToken})
	if _, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "add", Arguments: map[string]any{"a": 1, "b": 1}}); err != nil {
		t.Fatal(err)
	}
	r, err := http.Get(m.Origin() + "/.well-known/oauth-authorization-server")
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusOK {
		t.Fatalf("legacy metadata at the MCP origin: %d", r.StatusCode)
	}
}

func TestMCPSlowAndHugeTools(t *testing.T) {
	t.Parallel()
	m := NewMCPServer(t, MCPServerOptions{SlowTool: time.Minute, HugeTool: true})
	cs := connect(t, m, &bearerTransport{})
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "slow"}); err == nil {
		t.Fatal("slow tool answered before its delay")
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("cancellation not honoured")
	}
	res, err := cs.CallTool(t.Context(), &mcp.CallToolParams{Name: "huge"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(res.Content[0].(*mcp.TextContent).Text); n != HugeToolSize {
		t.Fatalf("huge tool returned %d bytes", n)
	}
}
