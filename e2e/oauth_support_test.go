package e2e

import (
	"context"
	"errors"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// Helpers of the OAuth end-to-end tests. Names start with "oa" so they do
// not collide with the other e2e helpers of the package.

// callbackPath is the redirect_uri path mcpauth registers.
const callbackPath = "/v1/oauth/callback"

// oaAllowEnv is the environment of a service that may reach the test
// servers on 127.0.0.1 (over plain http), plus extra settings.
func oaAllowEnv(extra ...string) map[string]string {
	env := map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1"}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return env
}

// oaRedis returns a Redis URL whose keys live under a prefix of the test's
// own, the client to inspect them and the prefix; the keys are removed when
// the test ends. The test skips (fails under CI=true) without Redis.
func oaRedis(tb testing.TB) (string, redis.UniversalClient, string) {
	tb.Helper()
	client, prefix := testenv.Redis(tb)
	return testenv.RedisURLWithPrefix(tb, prefix), client, prefix
}

// oaRedisKeys lists the keys under pattern (SCAN, never KEYS).
func oaRedisKeys(tb testing.TB, c redis.UniversalClient, pattern string) []string {
	tb.Helper()
	ctx := context.Background()
	var out []string
	iter := c.Scan(ctx, 0, pattern, 100).Iterator()
	for iter.Next(ctx) {
		out = append(out, iter.Val())
	}
	if err := iter.Err(); err != nil {
		tb.Fatalf("redis scan: %v", err)
	}
	return out
}

// oaFlow is one provider set up against a test authorization server and
// MCP server.
type oaFlow struct {
	S    *Service
	AS   *testauthz.AuthServer
	MCP  *testauthz.MCPServer
	Name string
	Ctx  context.Context
}

// oaSetup starts the servers and a service and creates provider "docs" in
// tenant "acme" for the MCP server.
func oaSetup(tb testing.TB, aso testauthz.AuthServerOptions, mo testauthz.MCPServerOptions, o Options, mut func(*mcpauthv1.Provider)) *oaFlow {
	tb.Helper()
	f := &oaFlow{}
	if mo.EmbeddedAuth == nil {
		f.AS = testauthz.NewAuthServer(tb, aso)
		mo.Auth = f.AS
	}
	f.MCP = testauthz.NewMCPServer(tb, mo)
	if f.AS == nil {
		f.AS = f.MCP.Auth()
	}
	if o.Env == nil {
		o.Env = oaAllowEnv()
	}
	f.S = Start(tb, o)
	f.Ctx = Ctx(tb, f.S.AdminKey)
	f.Name = createProvider(tb, f.S, f.S.AdminKey, "acme", "docs", f.MCP.URL(), mut)
	return f
}

// Start calls StartAuthorization for user alice and fails tb on error.
func (f *oaFlow) Start(tb testing.TB) *mcpauthv1.StartAuthorizationResponse {
	tb.Helper()
	resp, err := f.S.OAuth().StartAuthorization(f.Ctx, &mcpauthv1.StartAuthorizationRequest{Name: f.Name, User: "alice"})
	if err != nil {
		tb.Fatalf("StartAuthorization: %v", err)
	}
	return resp
}

// Status returns the provider's authorization status.
func (f *oaFlow) Status(tb testing.TB) mcpauthv1.AuthorizationStatus {
	tb.Helper()
	return oaStatusOf(tb, f.S, f.Ctx, f.Name)
}

func oaStatusOf(tb testing.TB, s *Service, ctx context.Context, name string) mcpauthv1.AuthorizationStatus {
	tb.Helper()
	st, err := s.OAuth().GetAuthorizationStatus(ctx, &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
	if err != nil {
		tb.Fatalf("GetAuthorizationStatus(%s): %v", name, err)
	}
	return st.GetStatus()
}

// Authorize runs a complete flow in a fresh user agent and fails tb unless
// the result page says it succeeded.
func (f *oaFlow) Authorize(tb testing.TB) {
	tb.Helper()
	start := f.Start(tb)
	p := oaOpen(tb, NewBrowser(tb), start.GetAuthorizationUrl())
	if p.Code != http.StatusOK || p.Title != "Authorization complete" {
		tb.Fatalf("flow did not complete: %d %q reason %q detail %q", p.Code, p.Title, p.Reason, p.Detail)
	}
	if st := f.Status(tb); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		tb.Fatalf("status after the flow = %v", st)
	}
}

// oaToCallback opens authURL (mcpauth's authorize link) in b and follows
// the redirects up to, but not including, mcpauth's callback: it returns
// the callback URL the authorization server redirected to, with its code,
// state and iss (or error). The flow cookie is in b's jar.
func oaToCallback(tb testing.TB, b *Browser, authURL string) *url.URL {
	tb.Helper()
	prev := b.Client.CheckRedirect
	b.Client.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if req.URL.Path == callbackPath {
			return http.ErrUseLastResponse
		}
		return prev(req, via)
	}
	defer func() { b.Client.CheckRedirect = prev }()
	resp, err := b.Client.Get(authURL)
	if err != nil {
		tb.Fatalf("GET authorize: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	loc, err := resp.Location()
	if resp.StatusCode != http.StatusFound && resp.StatusCode != http.StatusSeeOther || err != nil || loc.Path != callbackPath {
		tb.Fatalf("authorize did not end in a redirect to the callback: %d %v %s", resp.StatusCode, err, body)
	}
	return loc
}

// oaPage is a result page of the browser routes.
type oaPage struct {
	Code                                            int
	Header                                          http.Header
	Body                                            string
	Title, Message, Reason, Detail, Provider, Final string
}

var oaIDRe = regexp.MustCompile(`id="(title|message|reason|detail|provider)"[^>]*>([^<]*)<`)

// oaOpen GETs u in b following redirects and parses the final page.
func oaOpen(tb testing.TB, b *Browser, u string) oaPage {
	tb.Helper()
	resp, err := b.Client.Get(u)
	if err != nil {
		tb.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	p := oaPage{Code: resp.StatusCode, Header: resp.Header, Body: string(raw), Final: resp.Request.URL.String()}
	for _, m := range oaIDRe.FindAllStringSubmatch(p.Body, -1) {
		v := html.UnescapeString(m[2])
		switch m[1] {
		case "title":
			p.Title = v
		case "message":
			p.Message = v
		case "reason":
			p.Reason = v
		case "detail":
			p.Detail = v
		case "provider":
			p.Provider = v
		}
	}
	return p
}

// oaFailed fails tb unless p is the failure page with reason.
func oaFailed(tb testing.TB, p oaPage, reason string) {
	tb.Helper()
	if p.Code < 400 || p.Title != "Authorization failed" || p.Reason != reason {
		tb.Fatalf("want the failure page with reason %s, got %d %q reason %q detail %q", reason, p.Code, p.Title, p.Reason, p.Detail)
	}
}

// oaCode returns the gRPC code and the google.rpc.ErrorInfo reason of err.
func oaCode(err error) (codes.Code, string) {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return st.Code(), info.GetReason()
		}
	}
	return st.Code(), ""
}

// oaWantErr fails tb unless err has code and (when not empty) reason.
func oaWantErr(tb testing.TB, err error, code codes.Code, reason string) {
	tb.Helper()
	c, r := oaCode(err)
	if c != code || (reason != "" && r != reason) {
		tb.Fatalf("want %v %s, got %v %q (%v)", code, reason, c, r, err)
	}
}

// oaEvents returns tenant's audit events of type typ (all types when
// empty), newest first.
func oaEvents(tb testing.TB, s *Service, tenant, typ string) []*mcpauthv1.AuditEvent {
	tb.Helper()
	var out []*mcpauthv1.AuditEvent
	tok := ""
	for {
		resp, err := s.Audit().ListAuditEvents(Ctx(tb, s.AdminKey), &mcpauthv1.ListAuditEventsRequest{
			Parent: "tenants/" + tenant, PageSize: 500, PageToken: tok, EventType: typ})
		if err != nil {
			tb.Fatalf("ListAuditEvents: %v", err)
		}
		out = append(out, resp.GetAuditEvents()...)
		if tok = resp.GetNextPageToken(); tok == "" {
			return out
		}
	}
}

// oaWantEvent fails tb unless tenant has an event of typ with reason (any
// reason when empty) and returns the newest one. It waits a while for the
// event: some (an authorization started) are stored just after the call
// that records them answers (audit.Auditor.RecordAsync).
func oaWantEvent(tb testing.TB, s *Service, tenant, typ, reason string) *mcpauthv1.AuditEvent {
	tb.Helper()
	var evs []*mcpauthv1.AuditEvent
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		evs = oaEvents(tb, s, tenant, typ)
		for _, e := range evs {
			if reason == "" || e.GetReason() == reason {
				return e
			}
		}
		if time.Now().After(deadline) {
			break
		}
	}
	var got []string
	for _, e := range evs {
		got = append(got, e.GetReason())
	}
	tb.Fatalf("no audit event %s with reason %q (reasons seen: %q)", typ, reason, got)
	return nil
}

// oaCounter is an HTTP server on 127.0.0.1 that counts every request it
// receives: the target an SSRF attempt must never reach.
type oaCounter struct {
	URL  string
	Port string
	mu   sync.Mutex
	hits int
}

func newOACounter(tb testing.TB, network, addr string) *oaCounter {
	tb.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		tb.Fatalf("listen %s: %v", addr, err)
	}
	c := &oaCounter{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		c.mu.Lock()
		c.hits++
		c.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"secret":"internal"}`)
	})}
	go func() { _ = srv.Serve(l) }()
	tb.Cleanup(func() { _ = srv.Close() })
	_, c.Port, _ = net.SplitHostPort(l.Addr().String())
	c.URL = "http://" + l.Addr().String()
	return c
}

// Hits returns how many requests arrived.
func (c *oaCounter) Hits() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits
}

// oaIsTimeout reports whether err is a deadline or unavailability, the
// acceptable outcomes of a call bounded by a short deadline.
func oaIsTimeout(err error) bool {
	c, _ := oaCode(err)
	return c == codes.DeadlineExceeded || c == codes.Unavailable || errors.Is(err, context.DeadlineExceeded)
}

// oaMust fails tb on err.
func oaMust(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

// oaMCPStatus sends an MCP initialize request with the bearer token to the
// MCP server and returns the HTTP status: 200 when the server accepts the
// token.
func oaMCPStatus(tb testing.TB, mcpURL, token string) int {
	tb.Helper()
	body := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}}`
	req, err := http.NewRequest(http.MethodPost, mcpURL, strings.NewReader(body))
	oaMust(tb, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	oaMust(tb, err)
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}
