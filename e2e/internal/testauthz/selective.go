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
	"strings"
	"sync"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/modelcontextprotocol/go-sdk/oauthex"
)

// SelectiveOptions configures a SelectiveServer.
type SelectiveOptions struct {
	// Auth is the authorization server whose tokens the server accepts.
	Auth *AuthServer
	// BasicScope is what every challenged request needs (401 challenges
	// carry it as scope, MCP authorization "Scope Selection Strategy").
	BasicScope string
	// WriteTool is a tool whose tools/call needs WriteScope as well: a token
	// without it is answered 403 insufficient_scope.
	WriteTool  string
	WriteScope string
	// RootPRM serves the protected-resource metadata only at the root
	// well-known URL, naming the origin as resource (RFC 9728 section 3.3),
	// and leaves resource_metadata out of challenges, so clients find it by
	// the well-known fallback (MCP authorization, "Protected Resource
	// Metadata Discovery Requirements", root location).
	RootPRM bool
	// PRMResource, when set, replaces the metadata's resource (a server
	// naming another origin).
	PRMResource string
	// Insatiable answers every authenticated request 403
	// insufficient_scope naming a scope the token lacks ("more<n>", n the
	// token's scope count), so no authorization ever satisfies it: clients
	// must bound their step-up attempts (MCP authorization, Step-Up
	// Authorization Flow: "no more than a few times").
	Insatiable bool
}

// SelectiveServer is a go-sdk MCP server (Streamable HTTP) that lets
// initialize and notifications through without a token and challenges the
// other JSON-RPC requests with the go-sdk auth middleware
// (auth.RequireBearerToken), as many deployed servers do: the MCP
// authorization spec requires a token on every request only from clients
// that hold one ("Token Requirements"), and a server decides which requests
// it protects. Tools are those of MCPServer plus WriteTool.
type SelectiveServer struct {
	origin string
	path   string
	opt    SelectiveOptions
	rec    recorder

	mu   sync.Mutex
	auth *AuthServer // the authorization server named now (SetAuth)
}

// NewSelectiveServer starts the server on 127.0.0.1 and stops it when tb
// ends. Its MCP endpoint is /mcp.
func NewSelectiveServer(tb testing.TB, opt SelectiveOptions) *SelectiveServer {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("testauthz: listen: %v", err)
	}
	s := &SelectiveServer{origin: "http://" + l.Addr().String(), path: "/mcp", opt: opt, auth: opt.Auth}

	server := mcp.NewServer(&mcp.Implementation{Name: "testauthz-selective", Version: "1.0.0"}, nil)
	(&MCPServer{}).addTools(server)
	if opt.WriteTool != "" {
		mcp.AddTool(server, &mcp.Tool{Name: opt.WriteTool, Description: "Needs the write scope."},
			func(context.Context, *mcp.CallToolRequest, noArgs) (*mcp.CallToolResult, any, error) {
				return textResult("written"), nil, nil
			})
	}
	open := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil)

	// Challenges carry resource_metadata unless the metadata is root-only
	// (RFC 9728 section 5.1: the parameter is optional).
	rm := s.origin + "/.well-known/oauth-protected-resource" + s.path
	if opt.RootPRM {
		rm = ""
	}
	basic := auth.RequireBearerToken(s.verify, &auth.RequireBearerTokenOptions{ResourceMetadataURL: rm,
		Scopes: []string{opt.BasicScope}})(open)
	// RFC 6750 section 3.1 and MCP "Runtime Insufficient Scope Errors": a
	// 403 carries error="insufficient_scope" and the scopes the operation
	// needs; the go-sdk middleware sends the scopes, insufficientScope adds
	// the error code.
	write := insufficientScope(auth.RequireBearerToken(s.verify, &auth.RequireBearerTokenOptions{ResourceMetadataURL: rm,
		Scopes: []string{opt.BasicScope, opt.WriteScope}})(open))

	mux := http.NewServeMux()
	mux.HandleFunc(s.path, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			open.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
		if err != nil {
			http.Error(w, "read body", http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		method, tool := rpcMethod(body)
		switch {
		case method == "initialize" || strings.HasPrefix(method, "notifications/"):
			open.ServeHTTP(w, r)
		case method == "tools/call" && tool == opt.WriteTool && opt.WriteTool != "":
			write.ServeHTTP(w, r)
		case opt.Insatiable && r.Header.Get("Authorization") != "":
			n := 0
			if info, err := s.verify(r.Context(), strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "), r); err == nil {
				n = len(info.Scopes)
			}
			insufficientScope(auth.RequireBearerToken(s.verify, &auth.RequireBearerTokenOptions{ResourceMetadataURL: rm,
				Scopes: []string{opt.BasicScope, fmt.Sprintf("more%d", n)}})(open)).ServeHTTP(w, r)
		default:
			basic.ServeHTTP(w, r)
		}
	})
	prmPath := "/.well-known/oauth-protected-resource" + s.path
	if opt.RootPRM {
		prmPath = "/.well-known/oauth-protected-resource"
	}
	mux.HandleFunc(prmPath, func(w http.ResponseWriter, r *http.Request) {
		prm := &oauthex.ProtectedResourceMetadata{
			Resource:               s.URL(),
			AuthorizationServers:   []string{s.currentAuth().URL},
			ScopesSupported:        []string{opt.BasicScope},
			BearerMethodsSupported: []string{"header"},
		}
		if opt.RootPRM {
			prm.Resource = s.origin
		}
		if opt.PRMResource != "" {
			prm.Resource = opt.PRMResource
		}
		auth.ProtectedResourceMetadataHandler(prm).ServeHTTP(w, r)
	})

	serveRecorded(tb, l, &s.rec, mux)
	return s
}

// SetAuth moves the server to another authorization server: its metadata
// names as from now on (RFC 9728 authorization_servers), and only that
// server's tokens are accepted.
func (s *SelectiveServer) SetAuth(as *AuthServer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.auth = as
}

func (s *SelectiveServer) currentAuth() *AuthServer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.auth
}

// URL is the MCP endpoint.
func (s *SelectiveServer) URL() string { return s.origin + s.path }

// Origin is the server's scheme and host.
func (s *SelectiveServer) Origin() string { return s.origin }

// Received returns every request the server received, oldest first.
func (s *SelectiveServer) Received() []RecordedRequest { return s.rec.all() }

// Methods lists the JSON-RPC methods of the POSTs it received, each with
// whether it carried an Authorization header, as "method" or "method+token".
func (s *SelectiveServer) Methods() []string {
	var out []string
	for _, r := range s.rec.all() {
		if r.Method != http.MethodPost || r.Path != s.path {
			continue
		}
		m, _ := rpcMethod(r.Body)
		if r.Header.Get("Authorization") != "" {
			m += "+token"
		}
		out = append(out, m)
	}
	return out
}

// verify accepts tokens of the authorization server issued for this
// server's resource identifier: the PRM resource (RFC 8707 section 2, MCP
// "Token Handling": tokens must have been issued for this server).
func (s *SelectiveServer) verify(ctx context.Context, token string, _ *http.Request) (*auth.TokenInfo, error) {
	info, err := s.currentAuth().ValidateToken(ctx, token)
	if err != nil {
		return nil, fmt.Errorf("%w: inactive token", auth.ErrInvalidToken)
	}
	want := s.URL()
	if s.opt.RootPRM {
		want = s.origin
	}
	if info.Resource != want {
		return nil, fmt.Errorf("%w: token issued for %q", auth.ErrInvalidToken, info.Resource)
	}
	return &auth.TokenInfo{Scopes: info.Scopes, Expiration: info.ExpiresAt, UserID: info.Subject}, nil
}

// rpcMethod returns the method (and, for tools/call, the tool name) of a
// single JSON-RPC message.
func rpcMethod(body []byte) (method, tool string) {
	var m struct {
		Method string `json:"method"`
		Params struct {
			Name string `json:"name"`
		} `json:"params"`
	}
	if json.Unmarshal(body, &m) != nil {
		return "", ""
	}
	return m.Method, m.Params.Name
}

// insufficientScope adds error="insufficient_scope" to the Bearer
// challenge of a 403.
func insufficientScope(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&scopeErrorWriter{ResponseWriter: w}, r)
	})
}

type scopeErrorWriter struct{ http.ResponseWriter }

func (w *scopeErrorWriter) WriteHeader(code int) {
	if code == http.StatusForbidden {
		if c := w.Header().Get("WWW-Authenticate"); strings.HasPrefix(c, "Bearer ") {
			w.Header().Set("WWW-Authenticate", `Bearer error="insufficient_scope", `+strings.TrimPrefix(c, "Bearer "))
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *scopeErrorWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *scopeErrorWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// NewAuthServerAdvertising starts an AuthServer whose metadata lists only
// methods as token_endpoint_auth_methods_supported (RFC 8414 section 2),
// such as ["private_key_jwt"] or ["client_secret_basic"]. The clients it
// registers dynamically get the method they ask for, as before.
func NewAuthServerAdvertising(tb testing.TB, opt AuthServerOptions, methods []string) *AuthServer {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("testauthz: listen: %v", err)
	}
	a := newAuthServer(tb, opt, "http://"+l.Addr().String())
	meta := map[string]bool{}
	for _, p := range a.metadataPaths() {
		meta[p] = true
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !meta[r.URL.Path] {
			a.ServeHTTP(w, r)
			return
		}
		rr := httptest.NewRecorder()
		a.ServeHTTP(rr, r)
		var doc map[string]any
		if err := json.Unmarshal(rr.Body.Bytes(), &doc); err != nil {
			http.Error(w, "metadata", http.StatusInternalServerError)
			return
		}
		doc["token_endpoint_auth_methods_supported"] = methods
		writeJSON(w, rr.Code, doc)
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	tb.Cleanup(srv.Close)
	return a
}
