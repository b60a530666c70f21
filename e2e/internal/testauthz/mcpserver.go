package testauthz

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/modelcontextprotocol/go-sdk/oauthex"
)

// PRMLocation says where an MCP server serves its RFC 9728 protected-resource
// metadata.
type PRMLocation int

// Protected-resource metadata locations.
const (
	// PRMPathInserted serves /.well-known/oauth-protected-resource{MCP path}.
	PRMPathInserted PRMLocation = iota
	// PRMRoot serves /.well-known/oauth-protected-resource.
	PRMRoot
	// PRMBoth serves both.
	PRMBoth
)

// DummyToolCount is how many filler tools ("dummy_00", ...) every MCP server
// has, so that tools/list pagination has pages to walk.
const DummyToolCount = 30

// HugeToolSize is the size of the text the "huge" tool returns.
const HugeToolSize = 10 << 20

// MCPServerOptions configures an MCPServer. The zero value is an MCP server
// at /mcp with no authentication.
type MCPServerOptions struct {
	// Auth makes the server require bearer tokens issued by this
	// authorization server, advertised through protected-resource metadata.
	Auth *AuthServer
	// EmbeddedAuth, instead of Auth, runs an authorization server on the MCP
	// server's own origin (issuer = origin), as 2025-03-26-era servers did;
	// combine with NoPRM for the legacy discovery path. Reach it with Auth().
	EmbeddedAuth *AuthServerOptions

	// RequiredHeader, when its name is set, makes the MCP endpoint answer 401
	// unless the request carries this header with exactly this value (custom
	// header authentication, such as {"X-Api-Key", "k1"}).
	RequiredHeader [2]string

	// Path is the MCP endpoint's path; default "/mcp".
	Path string

	// PRMResourceOverride replaces the resource field of the
	// protected-resource metadata, making it disagree with the server's URL.
	PRMResourceOverride string
	// NoPRM serves no protected-resource metadata, and 401 challenges carry
	// no resource_metadata.
	NoPRM bool
	// PRMLocation selects where the metadata is served.
	PRMLocation PRMLocation
	// OmitResourceMetadata leaves resource_metadata out of 401 challenges
	// while still serving the metadata, so clients must probe well-known URLs.
	OmitResourceMetadata bool
	// ChallengeScope adds scope="..." to 401 challenges.
	ChallengeScope string
	// PRMScopes is scopes_supported in the metadata; default the
	// authorization server's scopes.
	PRMScopes []string

	// ScopedTool names a tool (added if it does not exist) that needs
	// RequiredScope: calling it with a token lacking that scope answers HTTP
	// 403 with WWW-Authenticate: Bearer error="insufficient_scope",
	// scope="RequiredScope".
	ScopedTool string
	// RequiredScope is the scope ScopedTool needs.
	RequiredScope string

	// PageSize is the tools/list page size; 0 keeps the SDK's default.
	PageSize int
	// SlowTool adds a tool "slow" that sleeps this long (or until cancelled).
	SlowTool time.Duration
	// HugeTool adds a tool "huge" returning HugeToolSize bytes of text.
	HugeTool bool
	// Stateless runs the Streamable HTTP transport without sessions.
	Stateless bool
	// DPoP makes the endpoint accept only DPoP-bound tokens of Auth with a
	// valid proof per request (RFC 9449 section 7; dpop.go).
	DPoP *DPoPOptions
	// Addr is the listen address; default "127.0.0.1:0" (a free port).
	Addr string
}

// MCPServer is a real MCP server (go-sdk, Streamable HTTP) listening on
// 127.0.0.1. Its tools are "echo" (returns its "text" argument as text and
// as structuredContent {"text": ...}), "add" (returns {"sum": a+b}),
// "whoami" (returns the token's subject and the custom header's value),
// DummyToolCount filler tools, and the optional slow, huge and scoped tools.
type MCPServer struct {
	origin string
	opt    MCPServerOptions
	auth   *AuthServer
	rec    recorder
	mux    *http.ServeMux

	dpop           *dpopServer // nil without DPoP
	dpopMu         sync.Mutex
	bearerAttempts int
}

// NewMCPServer starts an MCP server on 127.0.0.1 and stops it when tb ends.
func NewMCPServer(tb TB, opt MCPServerOptions) *MCPServer {
	tb.Helper()
	if opt.Path == "" {
		opt.Path = "/mcp"
	}
	if !strings.HasPrefix(opt.Path, "/") {
		tb.Fatalf("testauthz: MCP path %q must start with /", opt.Path)
	}
	if opt.Auth != nil && opt.EmbeddedAuth != nil {
		tb.Fatal("testauthz: set Auth or EmbeddedAuth, not both")
	}
	l, err := net.Listen("tcp", listenAddr(opt.Addr))
	if err != nil {
		tb.Fatalf("testauthz: listen: %v", err)
	}
	m := &MCPServer{origin: "http://" + l.Addr().String(), opt: opt, auth: opt.Auth, mux: http.NewServeMux()}
	if opt.EmbeddedAuth != nil {
		m.auth = newAuthServer(tb, *opt.EmbeddedAuth, m.origin)
		m.mux.Handle("/", m.auth)
	}

	server := mcp.NewServer(&mcp.Implementation{Name: "testauthz", Version: "1.0.0"}, &mcp.ServerOptions{PageSize: opt.PageSize})
	m.addTools(server)
	var h http.Handler = mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server },
		&mcp.StreamableHTTPOptions{Stateless: opt.Stateless})
	if m.auth != nil {
		if opt.ScopedTool != "" {
			h = m.requireToolScope(h)
		}
		h = auth.RequireBearerToken(m.verify, &auth.RequireBearerTokenOptions{ResourceMetadataURL: m.challengeMetadataURL()})(h)
		if opt.DPoP != nil {
			if m.auth.dpop == nil {
				tb.Fatal("testauthz: a DPoP MCP server needs an authorization server with DPoP")
			}
			m.dpop = newDPoPServer(*opt.DPoP)
			m.dpop.lookup = m.auth.TokenJKT
			h = m.requireDPoP(h)
		} else {
			h = m.challenge(h)
		}
	}
	if opt.RequiredHeader[0] != "" {
		h = m.requireHeader(h)
	}
	m.mux.Handle(opt.Path, h)

	if m.auth != nil && !opt.NoPRM {
		prm := &oauthex.ProtectedResourceMetadata{
			Resource:               m.URL(),
			AuthorizationServers:   []string{m.auth.URL},
			ScopesSupported:        m.auth.opt.Scopes,
			BearerMethodsSupported: []string{"header"},
			ResourceName:           "testauthz MCP server",
		}
		if opt.PRMResourceOverride != "" {
			prm.Resource = opt.PRMResourceOverride
		}
		if opt.PRMScopes != nil {
			prm.ScopesSupported = opt.PRMScopes
		}
		ph := auth.ProtectedResourceMetadataHandler(prm)
		for _, p := range m.prmPaths() {
			m.mux.Handle(p, ph)
		}
	}

	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.rec.record(r)
		m.mux.ServeHTTP(w, r)
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	tb.Cleanup(srv.Close)
	return m
}

// URL returns the MCP endpoint's full URL, which is also its canonical
// resource identifier.
func (m *MCPServer) URL() string { return m.origin + m.opt.Path }

// Origin returns the server's scheme and host.
func (m *MCPServer) Origin() string { return m.origin }

// Auth returns the authorization server protecting this server (Auth or the
// embedded one), or nil.
func (m *MCPServer) Auth() *AuthServer { return m.auth }

// PRMURL returns the first URL of the protected-resource metadata, or ""
// when none is served.
func (m *MCPServer) PRMURL() string {
	if m.auth == nil || m.opt.NoPRM {
		return ""
	}
	return m.origin + m.prmPaths()[0]
}

// Received returns every request the server received (the MCP endpoint and
// metadata), oldest first.
func (m *MCPServer) Received() []RecordedRequest { return m.rec.all() }

func (m *MCPServer) prmPaths() []string {
	inserted := "/.well-known/oauth-protected-resource" + strings.TrimSuffix(m.opt.Path, "/")
	root := "/.well-known/oauth-protected-resource"
	switch m.opt.PRMLocation {
	case PRMRoot:
		return []string{root}
	case PRMBoth:
		return []string{inserted, root}
	}
	return []string{inserted}
}

func (m *MCPServer) challengeMetadataURL() string {
	if m.opt.NoPRM || m.opt.OmitResourceMetadata {
		return ""
	}
	return m.PRMURL()
}

// verify is the go-sdk TokenVerifier: the authorization server's in-process
// introspection, plus an audience check against the resource indicator the
// token was issued for.
func (m *MCPServer) verify(ctx context.Context, token string, _ *http.Request) (*auth.TokenInfo, error) {
	info, err := m.auth.ValidateToken(ctx, token)
	if err != nil {
		return nil, fmt.Errorf("%w: inactive token", auth.ErrInvalidToken)
	}
	if info.Resource != "" && info.Resource != m.URL() {
		return nil, fmt.Errorf("%w: token issued for another resource", auth.ErrInvalidToken)
	}
	return &auth.TokenInfo{Scopes: info.Scopes, Expiration: info.ExpiresAt, UserID: info.Subject}, nil
}

// challenge makes every 401 carry a Bearer challenge, with scope when
// configured; the SDK adds none when there is no metadata URL.
func (m *MCPServer) challenge(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&challengeWriter{ResponseWriter: w, scope: m.opt.ChallengeScope}, r)
	})
}

type challengeWriter struct {
	http.ResponseWriter
	scope string
	// scheme, when set, replaces the Bearer scheme of the challenge (a
	// DPoP-only resource server challenges with DPoP, RFC 9449 section 7.1).
	scheme string
}

func (w *challengeWriter) WriteHeader(code int) {
	if code == http.StatusUnauthorized {
		c := w.Header().Get("WWW-Authenticate")
		if c == "" {
			c = "Bearer"
		}
		if w.scheme != "" {
			c = w.scheme + strings.TrimPrefix(c, "Bearer")
		}
		if w.scope != "" {
			if c == "Bearer" {
				c += " scope=" + strconv.Quote(w.scope)
			} else {
				c += ", scope=" + strconv.Quote(w.scope)
			}
		}
		w.Header().Set("WWW-Authenticate", c)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *challengeWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *challengeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (m *MCPServer) requireHeader(next http.Handler) http.Handler {
	name, value := m.opt.RequiredHeader[0], m.opt.RequiredHeader[1]
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(name) != value {
			http.Error(w, "missing or wrong "+name, http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// requireToolScope answers 403 insufficient_scope to a tools/call of the
// scoped tool when the token lacks the required scope (RFC 6750 §3.1).
func (m *MCPServer) requireToolScope(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
		if err != nil {
			http.Error(w, "read body", http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		ti := auth.TokenInfoFromContext(r.Context())
		if callsTool(body, m.opt.ScopedTool) && (ti == nil || !slices.Contains(ti.Scopes, m.opt.RequiredScope)) {
			c := fmt.Sprintf("Bearer error=\"insufficient_scope\", scope=%q, error_description=%q",
				m.opt.RequiredScope, "tool "+m.opt.ScopedTool+" needs scope "+m.opt.RequiredScope)
			if u := m.challengeMetadataURL(); u != "" {
				c += fmt.Sprintf(", resource_metadata=%q", u)
			}
			w.Header().Set("WWW-Authenticate", c)
			http.Error(w, "insufficient scope", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// callsTool reports whether a JSON-RPC message or batch calls the named tool.
func callsTool(body []byte, name string) bool {
	type call struct {
		Method string `json:"method"`
		Params struct {
			Name string `json:"name"`
		} `json:"params"`
	}
	var msgs []call
	if err := json.Unmarshal(body, &msgs); err != nil {
		var one call
		if json.Unmarshal(body, &one) != nil {
			return false
		}
		msgs = []call{one}
	}
	for _, c := range msgs {
		if c.Method == "tools/call" && c.Params.Name == name {
			return true
		}
	}
	return false
}

type echoArgs struct {
	Text string `json:"text" jsonschema:"the text to echo"`
}

type addArgs struct {
	A float64 `json:"a"`
	B float64 `json:"b"`
}

type sumOut struct {
	Sum float64 `json:"sum"`
}

type whoamiOut struct {
	Subject string `json:"subject"`
	Header  string `json:"header"`
}

type noArgs struct{}

func textResult(s string) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: s}}}
}

func (m *MCPServer) addTools(s *mcp.Server) {
	mcp.AddTool(s, &mcp.Tool{Name: "echo", Description: "Returns its text argument."},
		func(_ context.Context, _ *mcp.CallToolRequest, in echoArgs) (*mcp.CallToolResult, echoArgs, error) {
			return textResult(in.Text), in, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "add", Description: "Adds a and b."},
		func(_ context.Context, _ *mcp.CallToolRequest, in addArgs) (*mcp.CallToolResult, sumOut, error) {
			sum := in.A + in.B
			return textResult(strconv.FormatFloat(sum, 'g', -1, 64)), sumOut{Sum: sum}, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "whoami", Description: "Returns the caller's subject and custom header."},
		func(_ context.Context, req *mcp.CallToolRequest, _ noArgs) (*mcp.CallToolResult, whoamiOut, error) {
			var out whoamiOut
			if req.Extra != nil {
				if req.Extra.TokenInfo != nil {
					out.Subject = req.Extra.TokenInfo.UserID
				}
				if name := m.opt.RequiredHeader[0]; name != "" && req.Extra.Header != nil {
					out.Header = req.Extra.Header.Get(name)
				}
			}
			return textResult(out.Subject), out, nil
		})
	for i := range DummyToolCount {
		name := fmt.Sprintf("dummy_%02d", i)
		mcp.AddTool(s, &mcp.Tool{Name: name, Description: "Does nothing."},
			func(context.Context, *mcp.CallToolRequest, noArgs) (*mcp.CallToolResult, any, error) {
				return textResult(name), nil, nil
			})
	}
	if d := m.opt.SlowTool; d > 0 {
		mcp.AddTool(s, &mcp.Tool{Name: "slow", Description: "Sleeps, then answers."},
			func(ctx context.Context, _ *mcp.CallToolRequest, _ noArgs) (*mcp.CallToolResult, any, error) {
				t := time.NewTimer(d)
				defer t.Stop()
				select {
				case <-ctx.Done():
					return nil, nil, ctx.Err()
				case <-t.C:
				}
				return textResult("done"), nil, nil
			})
	}
	if m.opt.HugeTool {
		mcp.AddTool(s, &mcp.Tool{Name: "huge", Description: "Returns about 10 MiB of text."},
			func(context.Context, *mcp.CallToolRequest, noArgs) (*mcp.CallToolResult, any, error) {
				return textResult(strings.Repeat("x", HugeToolSize)), nil, nil
			})
	}
	if name := m.opt.ScopedTool; name != "" && !slices.Contains([]string{"echo", "add", "whoami", "slow", "huge"}, name) {
		mcp.AddTool(s, &mcp.Tool{Name: name, Description: "Needs a wider scope."},
			func(context.Context, *mcp.CallToolRequest, noArgs) (*mcp.CallToolResult, any, error) {
				return textResult("ok"), nil, nil
			})
	}
}
