package e2e

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestOAuthFlowStateInRedis: a pending flow costs at most 1 KiB in Redis,
// under keys derived from (not equal to) the flow handle and the state,
// with a value that holds neither the state, the PKCE verifier nor the
// client id in clear; nothing is left once the flow completes.
func TestOAuthFlowStateInRedis(t *testing.T) {
	t.Parallel()
	redisURL, rc, prefix := oaRedis(t)
	// A realistic, somewhat heavy flow: issuer with a path, several scopes.
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true, IssuerPath: "/realms/production-eu-west",
		Scopes: []string{"mcp.read", "mcp.write", "mcp.admin", "files.read", "files.write", "offline_access"}},
		testauthz.MCPServerOptions{Path: "/api/v1/workspaces/mcp"}, Options{Postgres: true, RedisURL: redisURL}, nil)
	ctx := context.Background()
	value := func(key string) []byte {
		t.Helper()
		n, err := rc.StrLen(ctx, key).Result()
		oaMust(t, err)
		if n > 1024 {
			t.Errorf("%s holds %d bytes, more than 1 KiB", key, n)
		}
		t.Logf("%s: %d bytes", strings.TrimPrefix(key, prefix), n)
		v, err := rc.Get(ctx, key).Bytes()
		oaMust(t, err)
		return v
	}

	start := f.Start(t)
	handle := start.GetAuthorizationUrl()[strings.LastIndexByte(start.GetAuthorizationUrl(), '/')+1:]
	flowKeys := oaRedisKeys(t, rc, prefix+"kv:*")
	if len(flowKeys) != 1 || strings.Contains(flowKeys[0], handle) {
		t.Fatalf("flow keys %q (handle %q)", flowKeys, handle)
	}
	stored := [][]byte{value(flowKeys[0])}

	b := NewBrowser(t)
	cb := oaToCallback(t, b, start.GetAuthorizationUrl())
	state := cb.Query().Get("state")
	stateKeys := oaRedisKeys(t, rc, prefix+"kv:*")
	if len(stateKeys) != 1 || strings.Contains(stateKeys[0], state) || stateKeys[0] == flowKeys[0] {
		t.Fatalf("state keys %q after the authorize link (flow key %q)", stateKeys, flowKeys[0])
	}
	stored = append(stored, value(stateKeys[0]))

	if p := oaOpen(t, b, cb.String()); p.Title != "Authorization complete" {
		t.Fatalf("callback: %q %q", p.Title, p.Reason)
	}
	if left := oaRedisKeys(t, rc, prefix+"kv:*"); len(left) != 0 {
		t.Errorf("flow records left after completion: %q", left)
	}
	authz := f.AS.RequestsTo(f.AS.Path("/authorize"))[0].Query
	tok := f.AS.RequestsTo(f.AS.Path("/token"))[0].Form
	secrets := map[string]string{
		"state":          state,
		"code_verifier":  tok.Get("code_verifier"),
		"code_challenge": authz.Get("code_challenge"),
		"client_id":      authz.Get("client_id"),
		"flow handle":    handle,
		"user":           "alice",
		"issuer":         f.AS.URL,
	}
	for what, v := range secrets {
		if v == "" {
			t.Fatalf("no %s recorded", what)
		}
		for _, sv := range stored {
			if bytes.Contains(sv, []byte(v)) {
				t.Errorf("the Redis value holds the %s in clear", what)
			}
		}
	}
}

// oaTCPProxy forwards 127.0.0.1 connections to a target and can be taken
// down (listener and live connections closed) and brought back on the same
// port: an outage of the service behind it.
type oaTCPProxy struct {
	target string
	addr   string
	mu     sync.Mutex
	l      net.Listener
	conns  map[net.Conn]struct{}
}

func newOATCPProxy(tb testing.TB, target string) *oaTCPProxy {
	tb.Helper()
	p := &oaTCPProxy{target: target, addr: "127.0.0.1:0", conns: map[net.Conn]struct{}{}}
	p.Up(tb)
	tb.Cleanup(p.Down)
	return p
}

// Up starts listening (again, on the same port).
func (p *oaTCPProxy) Up(tb testing.TB) {
	tb.Helper()
	l, err := net.Listen("tcp", p.addr)
	if err != nil {
		tb.Fatalf("proxy listen: %v", err)
	}
	p.mu.Lock()
	p.l, p.addr = l, l.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[u] = struct{}{}, struct{}{}
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
}

// Down closes the listener and every forwarded connection.
func (p *oaTCPProxy) Down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		p.l.Close()
		p.l = nil
	}
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// TestOAuthRedisDown: with Redis unreachable, StartAuthorization answers
// UNAVAILABLE and leaves the provider as it was; the browser routes answer
// 503 without consuming anything, so the flow completes once Redis is back.
func TestOAuthRedisDown(t *testing.T) {
	t.Parallel()
	redisURL, rc, prefix := oaRedis(t)
	u, err := url.Parse(redisURL)
	oaMust(t, err)
	proxy := newOATCPProxy(t, u.Host)
	u.Host = proxy.addr
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true}, testauthz.MCPServerOptions{},
		Options{Postgres: true, RedisURL: u.String()}, nil)
	other := createProvider(t, f.S, f.S.AdminKey, "acme", "other", f.MCP.URL()+"?variant=2", nil)

	// Before the outage: one flow not yet opened, one waiting for its callback.
	unopened := f.Start(t).GetAuthorizationUrl()
	b := NewBrowser(t)
	cb := oaToCallback(t, b, f.Start(t).GetAuthorizationUrl())
	keysBefore := oaRedisKeys(t, rc, prefix+"kv:*")

	proxy.Down()
	t0 := time.Now()
	_, err = f.S.OAuth().StartAuthorization(f.Ctx, &mcpauthv1.StartAuthorizationRequest{Name: other, User: "alice"})
	oaWantErr(t, err, codes.Unavailable, "")
	t.Logf("StartAuthorization with Redis down answered in %s: %v", time.Since(t0).Round(time.Millisecond), err)
	if st := oaStatusOf(t, f.S, f.Ctx, other); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED {
		t.Errorf("status after a failed start %v, want UNAUTHORIZED", st)
	}
	for _, ev := range oaEvents(t, f.S, "acme", "oauth.authorization.started") {
		if ev.GetProvider() == other && ev.GetOutcome() == mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS {
			t.Error("a failed start is audited as started")
		}
	}
	for what, link := range map[string]string{"authorize link": unopened, "callback": cb.String()} {
		p := oaOpen(t, NewBrowser(t), link)
		if link == cb.String() {
			p = oaOpen(t, b, link)
		}
		if p.Code != http.StatusServiceUnavailable || p.Reason != "UNAVAILABLE" {
			t.Errorf("%s during the outage: %d %q %q", what, p.Code, p.Title, p.Reason)
		}
	}
	if n := f.AS.Counts("/token"); n != 0 {
		t.Errorf("%d token requests during the outage", n)
	}
	if keys := oaRedisKeys(t, rc, prefix+"kv:*"); len(keys) != len(keysBefore) {
		t.Errorf("flow records changed during the outage: %d before, %d after", len(keysBefore), len(keys))
	}

	// Redis is back: the interrupted callback completes.
	proxy.Up(t)
	p := oaOpen(t, b, cb.String())
	if p.Title != "Authorization complete" {
		t.Fatalf("callback after the outage: %d %q %q", p.Code, p.Title, p.Reason)
	}
	if st := f.Status(t); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Errorf("status %v", st)
	}
}
