package mcpclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpauth/mcpauth/egress"
	"github.com/mcpauth/mcpauth/secret"
)

func secretOf(s string) secret.Secret { return secret.New(s) }

// mustGuard returns an egress client with the default body cap and the
// given allow-list.
func mustGuard(tb testing.TB, allow ...string) *http.Client {
	tb.Helper()
	if allow == nil {
		allow = []string{"127.0.0.1"}
	}
	g, err := egress.New(egress.Config{Allow: allow})
	if err != nil {
		tb.Fatal(err)
	}
	return g.Client()
}

var allKinds = []struct {
	name string
	kind serverKind
}{
	{"streamable-sse", streamableSSE},
	{"streamable-json", streamableJSON},
	{"legacy-sse", legacySSE},
}

func TestListToolsFollowsAllPages(t *testing.T) {
	t.Parallel()
	for _, k := range allKinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, k.kind)
			c := newTestClient(t, Options{})
			tools, err := c.ListTools(t.Context(), "t1/p1", Target{URL: ts.URL}, goodCreds())
			if err != nil {
				t.Fatal(err)
			}
			if len(tools) != totalTools {
				t.Fatalf("got %d tools, want %d (server pages of %d)", len(tools), totalTools, testPage)
			}
			names := map[string]bool{}
			for _, tl := range tools {
				names[tl.Name] = true
			}
			for _, want := range []string{"echo", "fail", "tool00", fmt.Sprintf("tool%02d", manyTools-1)} {
				if !names[want] {
					t.Errorf("tool %q missing", want)
				}
			}
			if len(names) != totalTools {
				t.Errorf("%d distinct names, want %d", len(names), totalTools)
			}
		})
	}
}

func TestListToolsPageCap(t *testing.T) {
	t.Parallel()
	srv := mcp.NewServer(&mcp.Implementation{Name: "many", Version: "1"}, &mcp.ServerOptions{PageSize: 1})
	for i := range MaxToolPages + 1 {
		mcp.AddTool(srv, &mcp.Tool{Name: fmt.Sprintf("t%03d", i)}, func(context.Context, *mcp.CallToolRequest, struct{}) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{}, nil, nil
		})
	}
	ts := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{JSONResponse: true}))
	defer ts.Close()
	c := newTestClient(t, Options{})
	_, err := c.ListTools(t.Context(), "k", Target{URL: ts.URL}, Credentials{})
	if !errors.Is(err, ErrTooManyTools) {
		t.Fatalf("got %v, want ErrTooManyTools", err)
	}
}

func TestCallToolIsFaithful(t *testing.T) {
	t.Parallel()
	for _, k := range allKinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, k.kind)
			c := newTestClient(t, Options{})
			tg := Target{URL: ts.URL}

			res, err := c.CallTool(t.Context(), "k", tg, goodCreds(), "echo", map[string]any{"text": "héllo"})
			if err != nil {
				t.Fatal(err)
			}
			if res.IsError {
				t.Fatal("echo reported IsError")
			}
			if len(res.Content) != 1 {
				t.Fatalf("got %d content blocks, want 1", len(res.Content))
			}
			if tc, ok := res.Content[0].(*mcp.TextContent); !ok || tc.Text != "héllo" {
				t.Fatalf("content = %#v, want text héllo", res.Content[0])
			}
			sc, ok := res.StructuredContent.(map[string]any)
			if !ok || sc["echo"] != "héllo" || sc["length"] != float64(len("héllo")) {
				t.Fatalf("structured content = %#v", res.StructuredContent)
			}

			res, err = c.CallTool(t.Context(), "k", tg, goodCreds(), "fail", nil)
			if err != nil {
				t.Fatalf("a tool error must be a result, got Go error %v", err)
			}
			if !res.IsError {
				t.Fatal("IsError lost")
			}
			if tc, ok := res.Content[0].(*mcp.TextContent); !ok || tc.Text != "it broke" {
				t.Fatalf("content = %#v", res.Content[0])
			}
		})
	}
}

func TestHeadersAndBearerBothArrive(t *testing.T) {
	t.Parallel()
	for _, k := range allKinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, k.kind)
			c := newTestClient(t, Options{})
			cr := goodCreds()
			// A custom Authorization header loses to the OAuth token.
			cr.Headers["Authorization"] = "Basic Zm9vOmJhcg=="
			if _, err := c.CallTool(t.Context(), "k", Target{URL: ts.URL}, cr, "echo", map[string]any{"text": "x"}); err != nil {
				t.Fatal(err)
			}
			seen := ts.seen()
			if len(seen) == 0 {
				t.Fatal("no requests recorded")
			}
			for i, h := range seen {
				if got := h.Get("Authorization"); got != "Bearer "+testToken {
					t.Errorf("request %d: Authorization = %q", i, got)
				}
				if h.Get("X-Api-Key") != "k-123" || h.Get("X-Tenant") != "acme" {
					t.Errorf("request %d: custom headers missing: %v", i, h)
				}
			}
		})
	}
}

func TestCustomAuthorizationWithoutToken(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, streamableSSE)
	c := newTestClient(t, Options{})
	cr := Credentials{Headers: map[string]string{"authorization": "Bearer " + testToken}}
	if err := c.Probe(t.Context(), Target{URL: ts.URL}, cr); err != nil {
		t.Fatalf("a custom Authorization header must be sent when there is no token: %v", err)
	}
}

func TestSessionReuse(t *testing.T) {
	t.Parallel()
	for _, k := range allKinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, k.kind)
			c := newTestClient(t, Options{})
			tg := Target{URL: ts.URL}
			for range 3 {
				if _, err := c.CallTool(t.Context(), "k", tg, goodCreds(), "echo", map[string]any{"text": "x"}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := c.ListTools(t.Context(), "k", tg, goodCreds()); err != nil {
				t.Fatal(err)
			}
			if n := ts.inits.Load(); n != 1 {
				t.Fatalf("%d initializations for one key, want 1", n)
			}
			// Another key is another session.
			if _, err := c.CallTool(t.Context(), "k2", tg, goodCreds(), "echo", map[string]any{"text": "x"}); err != nil {
				t.Fatal(err)
			}
			if n := ts.inits.Load(); n != 2 {
				t.Fatalf("%d initializations for two keys, want 2", n)
			}
		})
	}
}

func TestConcurrentCallsShareOneInitialization(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, streamableSSE)
	c := newTestClient(t, Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Go(func() {
			res, err := c.CallTool(t.Context(), "k", Target{URL: ts.URL}, goodCreds(), "echo", map[string]any{"text": fmt.Sprint(i)})
			if err == nil && res.Content[0].(*mcp.TextContent).Text != fmt.Sprint(i) {
				err = fmt.Errorf("call %d got another call's answer", i)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := ts.inits.Load(); n != 1 {
		t.Fatalf("%d initializations, want 1", n)
	}
}

func TestChangedCredentialsReplaceSession(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, streamableSSE)
	c := newTestClient(t, Options{})
	tg := Target{URL: ts.URL}
	cr := goodCreds()
	if _, err := c.CallTool(t.Context(), "k", tg, cr, "echo", map[string]any{"text": "x"}); err != nil {
		t.Fatal(err)
	}
	cr.Headers = map[string]string{"X-Api-Key": "rotated"}
	if _, err := c.CallTool(t.Context(), "k", tg, cr, "echo", map[string]any{"text": "x"}); err != nil {
		t.Fatal(err)
	}
	if n := ts.inits.Load(); n != 2 {
		t.Fatalf("%d initializations, want 2 (new headers under the same key)", n)
	}
	seen := ts.seen()
	if got := seen[len(seen)-1].Get("X-Api-Key"); got != "rotated" {
		t.Fatalf("last request carried X-Api-Key %q", got)
	}
	waitFor(t, "the old session's DELETE", func() bool { return ts.deletes.Load() == 1 })
}

func TestAuthErrors(t *testing.T) {
	t.Parallel()
	for _, k := range allKinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, k.kind)
			c := newTestClient(t, Options{})
			tg := Target{URL: ts.URL}

			// A wrong token: 401 at initialization.
			bad := goodCreds()
			bad.AccessToken = secretOf("tok-bad")
			_, err := c.ListTools(t.Context(), "bad", tg, bad)
			var ae *AuthError
			if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized || ae.InsufficientScope {
				t.Fatalf("wrong token: got %v, want *AuthError 401", err)
			}
			if !strings.Contains(ae.Challenge, "resource_metadata=") {
				t.Errorf("challenge = %q", ae.Challenge)
			}
			if strings.Contains(err.Error(), "resource_metadata") || strings.Contains(err.Error(), "tok-bad") {
				t.Errorf("error text carries upstream or secret data: %q", err)
			}

			// A working session, then 403 insufficient_scope on a call.
			if _, err := c.CallTool(t.Context(), "k", tg, goodCreds(), "echo", map[string]any{"text": "x"}); err != nil {
				t.Fatal(err)
			}
			ts.refuse.Store(http.StatusForbidden)
			_, err = c.CallTool(t.Context(), "k", tg, goodCreds(), "echo", map[string]any{"text": "x"})
			if !errors.As(err, &ae) || ae.Status != http.StatusForbidden || !ae.InsufficientScope || !slices.Equal(ae.Scopes, []string{"a", "b"}) {
				t.Fatalf("got %v (%+v), want *AuthError 403 insufficient_scope [a b]", err, ae)
			}

			// 401 on an established session.
			ts.refuse.Store(http.StatusUnauthorized)
			_, err = c.CallTool(t.Context(), "k", tg, goodCreds(), "echo", map[string]any{"text": "x"})
			if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
				t.Fatalf("got %v, want *AuthError 401", err)
			}

			// The session was evicted: the next call initializes again.
			ts.refuse.Store(0)
			before := ts.inits.Load()
			if _, err := c.CallTool(t.Context(), "k", tg, goodCreds(), "echo", map[string]any{"text": "x"}); err != nil {
				t.Fatal(err)
			}
			if n := ts.inits.Load(); n != before+1 {
				t.Fatalf("%d initializations after the auth error, want %d", n, before+1)
			}
		})
	}
}

func TestProbe(t *testing.T) {
	t.Parallel()
	for _, k := range allKinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, k.kind)
			c := newTestClient(t, Options{})
			if err := c.Probe(t.Context(), Target{URL: ts.URL}, goodCreds()); err != nil {
				t.Fatal(err)
			}
			err := c.Probe(t.Context(), Target{URL: ts.URL}, Credentials{})
			var ae *AuthError
			if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
				t.Fatalf("got %v, want *AuthError 401", err)
			}
			if k.kind == streamableSSE {
				waitFor(t, "the probe's DELETE", func() bool { return ts.deletes.Load() == 1 })
			}
		})
	}
}

func TestDeadline(t *testing.T) {
	t.Parallel()
	for _, k := range allKinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, k.kind)
			c := newTestClient(t, Options{})
			tg := Target{URL: ts.URL}
			if err := c.Probe(t.Context(), tg, goodCreds()); err != nil {
				t.Fatal(err)
			}

			// The caller's deadline.
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := c.CallTool(ctx, "k", tg, goodCreds(), "slow", nil)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("got %v, want context.DeadlineExceeded", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("returned after %s", d)
			}

			// Target.Timeout.
			start = time.Now()
			_, err = c.CallTool(t.Context(), "k", Target{URL: ts.URL, Timeout: 300 * time.Millisecond}, goodCreds(), "slow", nil)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("got %v, want context.DeadlineExceeded", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("returned after %s", d)
			}

			// The session survives a timed-out call.
			if _, err := c.CallTool(t.Context(), "k", tg, goodCreds(), "echo", map[string]any{"text": "x"}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSSEReadTimeout(t *testing.T) {
	t.Parallel()
	for _, k := range []struct {
		name string
		kind serverKind
	}{{"streamable-sse", streamableSSE}, {"legacy-sse", legacySSE}} {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, k.kind)
			c := newTestClient(t, Options{})
			start := time.Now()
			_, err := c.CallTool(t.Context(), "k", Target{URL: ts.URL, SSEReadTimeout: 200 * time.Millisecond}, goodCreds(), "slow", nil)
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "SSE stream") {
				t.Fatalf("got %v, want an SSE idle timeout", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("returned after %s", d)
			}
		})
	}
	// A JSON answer is not an SSE stream: only Timeout bounds it.
	ts := newTestServer(t, streamableJSON)
	c := newTestClient(t, Options{})
	_, err := c.CallTool(t.Context(), "k", Target{URL: ts.URL, SSEReadTimeout: 100 * time.Millisecond, Timeout: 500 * time.Millisecond}, goodCreds(), "slow", nil)
	if !errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "SSE stream") {
		t.Fatalf("got %v, want the call timeout", err)
	}
}

func TestResultTooLarge(t *testing.T) {
	t.Parallel()
	for _, k := range allKinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, k.kind)
			c := newTestClient(t, Options{})
			tg := Target{URL: ts.URL, MaxResultBytes: 1 << 20}
			if _, err := c.CallTool(t.Context(), "k", tg, goodCreds(), "echo", map[string]any{"text": "x"}); err != nil {
				t.Fatal(err)
			}
			_, err := c.CallTool(t.Context(), "k", tg, goodCreds(), "big", nil)
			if !errors.Is(err, ErrResultTooLarge) {
				t.Fatalf("got %v, want ErrResultTooLarge", err)
			}
			if msg := err.Error(); msg != "mcpclient: tools/call: result too large" {
				t.Errorf("message %q", msg)
			}
			// The session was discarded; a new one works.
			if _, err := c.CallTool(t.Context(), "k", tg, goodCreds(), "echo", map[string]any{"text": "x"}); err != nil {
				t.Fatal(err)
			}
			if n := ts.inits.Load(); n != 2 {
				t.Fatalf("%d initializations, want 2", n)
			}
		})
	}
}

func TestEgressCapIsResultTooLarge(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, streamableJSON)
	// No explicit MaxBodyBytes: the guard's 1 MiB default is below the
	// Target's cap.
	g := mustGuard(t)
	c := New(g, Options{})
	defer c.Close()
	_, err := c.CallTool(t.Context(), "k", Target{URL: ts.URL, MaxResultBytes: 64 << 20}, goodCreds(), "big", nil)
	if !errors.Is(err, ErrResultTooLarge) {
		t.Fatalf("got %v, want ErrResultTooLarge", err)
	}
}

func TestIdleSessionsAreClosed(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, streamableSSE)
	c := newTestClient(t, Options{IdleTTL: 50 * time.Millisecond})
	tg := Target{URL: ts.URL}
	if _, err := c.CallTool(t.Context(), "k", tg, goodCreds(), "echo", map[string]any{"text": "x"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the idle session's DELETE", func() bool { return ts.deletes.Load() == 1 })
	if _, err := c.CallTool(t.Context(), "k", tg, goodCreds(), "echo", map[string]any{"text": "x"}); err != nil {
		t.Fatal(err)
	}
	if n := ts.inits.Load(); n != 2 {
		t.Fatalf("%d initializations, want 2", n)
	}
}

func TestPoolLimit(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, streamableSSE)
	c := newTestClient(t, Options{MaxSessions: 1})
	tg := Target{URL: ts.URL}
	for _, key := range []string{"a", "b"} {
		if _, err := c.CallTool(t.Context(), key, tg, goodCreds(), "echo", map[string]any{"text": "x"}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the LRU session's DELETE", func() bool { return ts.deletes.Load() == 1 })
	c.mu.Lock()
	n := len(c.sessions)
	_, hasB := c.sessions["b"]
	c.mu.Unlock()
	if n != 1 || !hasB {
		t.Fatalf("pool holds %d sessions (b: %v), want only b", n, hasB)
	}
}

func TestServerForgotSession(t *testing.T) {
	t.Parallel()
	// A restarted server no longer knows the session: the call is retried
	// once on a new session, transparently.
	srv := newMCPServer()
	var h atomic.Pointer[mcp.StreamableHTTPHandler]
	h.Store(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.Load().ServeHTTP(w, r) }))
	defer ts.Close()
	c := newTestClient(t, Options{})
	tg := Target{URL: ts.URL}
	if _, err := c.CallTool(t.Context(), "k", tg, Credentials{}, "echo", map[string]any{"text": "x"}); err != nil {
		t.Fatal(err)
	}
	h.Store(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil)) // "restart"
	res, err := c.CallTool(t.Context(), "k", tg, Credentials{}, "echo", map[string]any{"text": "again"})
	if err != nil {
		t.Fatalf("call after the server forgot the session: %v", err)
	}
	if res.Content[0].(*mcp.TextContent).Text != "again" {
		t.Fatal("wrong answer")
	}
}

func TestUnreachableIsRedacted(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	c := newTestClient(t, Options{})
	_, err = c.ListTools(t.Context(), "k", Target{URL: "http://" + addr + "/mcp/SECRETPATH?key=SECRETQUERY"}, goodCreds())
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("got %v, want ErrUnreachable", err)
	}
	if msg := err.Error(); strings.Contains(msg, "SECRET") || strings.Contains(msg, testToken) || strings.Contains(msg, "k-123") {
		t.Fatalf("error text leaks: %q", msg)
	}

	// Blocked by the egress guard (no allow-list): still ErrUnreachable.
	strict := New(mustGuard(t, "example.invalid"), Options{})
	defer strict.Close()
	_, err = strict.ListTools(t.Context(), "k", Target{URL: "http://" + addr + "/mcp?key=SECRETQUERY"}, goodCreds())
	if !errors.Is(err, ErrUnreachable) || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("got %v, want a redacted ErrUnreachable", err)
	}
}

// TestEgressBlockOncePerCall: the SDK tries more than one request when the
// first fails (server/discover, then initialize; the legacy transport);
// after the egress guard refused one, the call sends nothing more, so each
// call meets the guard (and its audit hook) once.
func TestEgressBlockOncePerCall(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, streamableSSE)
	var blocks atomic.Int32
	g, err := egress.New(egress.Config{OnBlock: func(context.Context, string, string) { blocks.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	c := New(g.Client(), Options{})
	t.Cleanup(func() { _ = c.Close() })
	tg := Target{URL: ts.URL}
	calls := map[string]func() error{
		"CallTool": func() error {
			_, err := c.CallTool(t.Context(), "k", tg, goodCreds(), "echo", map[string]any{"text": "x"})
			return err
		},
		"ListTools": func() error {
			_, err := c.ListTools(t.Context(), "k", tg, goodCreds())
			return err
		},
		"Probe": func() error { return c.Probe(t.Context(), tg, goodCreds()) },
	}
	for name, call := range calls {
		for range 2 { // a second call is a new decision, blocked again
			before := blocks.Load()
			err := call()
			var be *egress.BlockedError
			if !errors.As(err, &be) || !errors.Is(err, ErrUnreachable) {
				t.Fatalf("%s: %v, want an egress block", name, err)
			}
			if n := blocks.Load() - before; n != 1 {
				t.Errorf("%s: the egress guard refused %d requests of one call, want 1", name, n)
			}
		}
	}
}

// TestDefinitiveStatusIsStatusError: a URL that is no MCP endpoint (404,
// 410, 400 to every request, over both transports) is a *StatusError with
// the status, not ErrUnreachable: retrying cannot help.
func TestDefinitiveStatusIsStatusError(t *testing.T) {
	t.Parallel()
	for _, code := range []int{http.StatusBadRequest, http.StatusNotFound, http.StatusGone} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			t.Parallel()
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "nothing here SECRETBODY", code)
			}))
			defer ts.Close()
			c := newTestClient(t, Options{})
			tg := Target{URL: ts.URL + "/mcp/SECRETPATH"}
			_, lerr := c.ListTools(t.Context(), "k", tg, goodCreds())
			_, cerr := c.CallTool(t.Context(), "k", tg, goodCreds(), "echo", nil)
			for name, err := range map[string]error{"ListTools": lerr, "CallTool": cerr, "Probe": c.Probe(t.Context(), tg, Credentials{})} {
				var se *StatusError
				if !errors.As(err, &se) || se.Status != code || errors.Is(err, ErrUnreachable) {
					t.Fatalf("%s: %v, want a StatusError %d", name, err, code)
				}
				if msg := err.Error(); !strings.Contains(msg, strconv.Itoa(code)) || strings.Contains(msg, "SECRET") {
					t.Fatalf("%s: message %q", name, msg)
				}
			}
		})
	}
}

func TestServerErrorStatusIsUnreachable(t *testing.T) {
	t.Parallel()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "upstream exploded", http.StatusBadGateway)
	}))
	defer ts.Close()
	c := newTestClient(t, Options{})
	err := c.Probe(t.Context(), Target{URL: ts.URL}, Credentials{})
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "502") || strings.Contains(err.Error(), "exploded") {
		t.Fatalf("got %v, want ErrUnreachable naming 502 only", err)
	}
	if se := (*StatusError)(nil); errors.As(err, &se) {
		t.Fatalf("got StatusError %d for a 502: retrying may help", se.Status)
	}
}

func TestJSONRPCErrorKeepsSession(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, streamableSSE)
	c := newTestClient(t, Options{})
	tg := Target{URL: ts.URL}
	_, err := c.CallTool(t.Context(), "k", tg, goodCreds(), "no-such-tool", nil)
	if err == nil {
		t.Skip("server reported the unknown tool as a result")
	}
	var werr *jsonrpc.Error
	if !errors.As(err, &werr) {
		t.Fatalf("got %v, want a JSON-RPC error", err)
	}
	if _, err := c.CallTool(t.Context(), "k", tg, goodCreds(), "echo", map[string]any{"text": "x"}); err != nil {
		t.Fatal(err)
	}
	if n := ts.inits.Load(); n != 1 {
		t.Fatalf("%d initializations, want 1", n)
	}
}

func TestInvalidTarget(t *testing.T) {
	t.Parallel()
	c := newTestClient(t, Options{})
	for name, tc := range map[string]struct {
		t  Target
		cr Credentials
	}{
		"scheme":       {Target{URL: "ftp://127.0.0.1/x"}, Credentials{}},
		"relative":     {Target{URL: "/mcp"}, Credentials{}},
		"userinfo":     {Target{URL: "http://u:p@127.0.0.1/mcp"}, Credentials{}},
		"negative":     {Target{URL: "http://127.0.0.1/mcp", Timeout: -1}, Credentials{}},
		"header name":  {Target{URL: "http://127.0.0.1/mcp"}, Credentials{Headers: map[string]string{"Bad Name": "v"}}},
		"header value": {Target{URL: "http://127.0.0.1/mcp"}, Credentials{Headers: map[string]string{"X-K": "a\r\nInjected: 1"}}},
		"token":        {Target{URL: "http://127.0.0.1/mcp"}, Credentials{AccessToken: secretOf("a\nb")}},
		"reserved":     {Target{URL: "http://127.0.0.1/mcp"}, Credentials{Headers: map[string]string{"mcp-session-id": "x"}}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := c.ListTools(t.Context(), "k", tc.t, tc.cr)
			if !errors.Is(err, ErrInvalidTarget) {
				t.Fatalf("got %v, want ErrInvalidTarget", err)
			}
			if strings.Contains(err.Error(), "Injected") {
				t.Fatalf("error text carries a header value: %q", err)
			}
		})
	}
}

func TestClose(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, streamableSSE)
	c := New(guardClient(t), Options{})
	if _, err := c.CallTool(t.Context(), "k", Target{URL: ts.URL}, goodCreds(), "echo", map[string]any{"text": "x"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if n := ts.deletes.Load(); n != 1 {
		t.Fatalf("%d DELETEs after Close, want 1", n)
	}
	if _, err := c.CallTool(t.Context(), "k", Target{URL: ts.URL}, goodCreds(), "echo", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("got %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}
