package mcpclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpauth/mcpauth/egress"
)

// Test MCP servers: real go-sdk servers behind a bearer-checking, recording
// middleware, on 127.0.0.1.

const (
	testToken   = "tok-good"
	manyTools   = 35
	testPage    = 4
	bigResultSz = 2 << 20
)

type echoIn struct {
	Text string `json:"text"`
}

type echoOut struct {
	Echo   string `json:"echo"`
	Length int    `json:"length"`
}

// newMCPServer builds the go-sdk server every test talks to.
func newMCPServer() *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "test", Version: "1"}, &mcp.ServerOptions{PageSize: testPage})
	mcp.AddTool(s, &mcp.Tool{Name: "echo", Description: "echoes"}, func(_ context.Context, _ *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, echoOut, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: in.Text}}},
			echoOut{Echo: in.Text, Length: len(in.Text)}, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "fail"}, func(context.Context, *mcp.CallToolRequest, struct{}) (*mcp.CallToolResult, any, error) {
		return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: "it broke"}}}, nil, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "slow"}, func(ctx context.Context, _ *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "late"}}}, nil, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "big"}, func(context.Context, *mcp.CallToolRequest, struct{}) (*mcp.CallToolResult, any, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: strings.Repeat("x", bigResultSz)}}}, nil, nil
	})
	for i := range manyTools {
		mcp.AddTool(s, &mcp.Tool{Name: fmt.Sprintf("tool%02d", i)}, func(context.Context, *mcp.CallToolRequest, struct{}) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{}, nil, nil
		})
	}
	return s
}

// totalTools is how many tools newMCPServer registers.
const totalTools = manyTools + 4

// testServer records what arrives and can be switched to refuse requests.
type testServer struct {
	*httptest.Server
	URL string // the MCP endpoint

	// inits counts initialize requests answered with success. The SDK
	// client first tries the 2026-07-28 server/discover, which the v1.8.0
	// stateful server refuses, so every session sends exactly one
	// successful initialize.
	inits   atomic.Int32
	deletes atomic.Int32 // session DELETEs
	// refuse makes the middleware answer with this status (401 or 403);
	// zero passes requests on.
	refuse atomic.Int32

	mu      sync.Mutex
	headers []http.Header
}

type serverKind int

const (
	streamableSSE  serverKind = iota // streamable HTTP, answers as SSE streams
	streamableJSON                   // streamable HTTP, answers as JSON bodies
	legacySSE                        // 2024-11-05 HTTP+SSE
)

func newTestServer(tb testing.TB, kind serverKind) *testServer {
	tb.Helper()
	srv := newMCPServer()
	var h http.Handler
	switch kind {
	case streamableSSE:
		h = mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil)
	case streamableJSON:
		h = mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{JSONResponse: true})
	case legacySSE:
		h = mcp.NewSSEHandler(func(*http.Request) *mcp.Server { return srv }, nil)
	}
	ts := &testServer{}
	mux := http.NewServeMux()
	mux.Handle("/mcp", ts.middleware(h))
	ts.Server = httptest.NewServer(mux)
	ts.URL = ts.Server.URL + "/mcp"
	tb.Cleanup(ts.Server.Close)
	return ts
}

func (ts *testServer) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ts.mu.Lock()
		ts.headers = append(ts.headers, r.Header.Clone())
		ts.mu.Unlock()

		switch st := int(ts.refuse.Load()); {
		case st == http.StatusForbidden:
			w.Header().Set("WWW-Authenticate", `Bearer error="insufficient_scope", scope="a b", resource_metadata="http://127.0.0.1/.well-known/oauth-protected-resource"`)
			http.Error(w, "forbidden", st)
			return
		case st != 0 || r.Header.Get("Authorization") != "Bearer "+testToken:
			w.Header().Set("WWW-Authenticate", `Bearer resource_metadata="http://127.0.0.1/.well-known/oauth-protected-resource"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}

		switch r.Method {
		case http.MethodDelete:
			ts.deletes.Add(1)
		case http.MethodPost:
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			var msg struct {
				Method string `json:"method"`
			}
			if json.Unmarshal(body, &msg) == nil && msg.Method == "initialize" {
				sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
				next.ServeHTTP(sw, r)
				if sw.status < 300 {
					ts.inits.Add(1)
				}
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// statusWriter records the status a handler answered with.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach Flush on the real writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush is there for handlers that assert http.Flusher directly.
func (w *statusWriter) Flush() { http.NewResponseController(w.ResponseWriter).Flush() }

// seen returns the request headers recorded so far.
func (ts *testServer) seen() []http.Header {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]http.Header(nil), ts.headers...)
}

// guardClient is the egress guard's client, allowing 127.0.0.1, with a body
// cap far above the tests' MaxResultBytes.
func guardClient(tb testing.TB) *http.Client {
	tb.Helper()
	g, err := egress.New(egress.Config{Allow: []string{"127.0.0.1"}, MaxBodyBytes: 64 << 20})
	if err != nil {
		tb.Fatal(err)
	}
	return g.Client()
}

func newTestClient(tb testing.TB, opts Options) *Client {
	tb.Helper()
	c := New(guardClient(tb), opts)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

func goodCreds() Credentials {
	return Credentials{
		Headers:     map[string]string{"X-Api-Key": "k-123", "X-Tenant": "acme"},
		AccessToken: secretOf(testToken),
	}
}

// waitFor polls cond until it holds or two seconds pass.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
