package e2e

import (
	"bufio"
	"html"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	"github.com/mcpauth/mcpauth/service/grants"
)

// TestFaultRedisRestartLosesFlow (issue 15, case 8): Redis restarts empty
// between StartAuthorization and the browser's visit. The person gets a
// page that says what happened and to start again (not a bare error), and
// starting again completes the authorization. Meanwhile the provider is
// PENDING, and the sweep of abandoned flows (case 9) returns it to
// UNAUTHORIZED.
func TestFaultRedisRestartLosesFlow(t *testing.T) {
	t.Parallel()
	c, rd, _ := faultCluster(t, 1, "")
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: c.AS})
	s := c.Replicas[0]
	name := createProvider(t, s, c.Key, c.Tenant, "wiki", mcp.URL(), nil)
	start, err := s.OAuth().StartAuthorization(c.ctx(t), &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	rd.Restart()
	code, body, _ := NewBrowser(t).Open(t, start.GetAuthorizationUrl())
	if code != 400 || !strings.Contains(body, "start the authorization again") || !strings.Contains(body, "lost") {
		t.Fatalf("lost flow page: %d %s", code, body)
	}
	// Case 9: the lost flow leaves the provider PENDING until the sweep
	// (run here with a 1 s age instead of the flow TTL + 1 min) returns it
	// to UNAUTHORIZED, saying why.
	statusOf := func() *mcpauthv1.GetAuthorizationStatusResponse {
		st, err := s.OAuth().GetAuthorizationStatus(c.ctx(t), &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := statusOf(); st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_PENDING {
		t.Fatalf("status after the lost flow: %v, want PENDING", st.GetStatus())
	}
	time.Sleep(1100 * time.Millisecond) // the flow is now older than the sweep's age
	sweep := grants.NewRefresherWith(s.Store(), s.App.Tokens(), slog.New(slog.DiscardHandler),
		grants.RefresherConfig{PendingTTL: time.Second})
	sweep.Pass(c.ctx(t))
	if st := statusOf(); st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED ||
		st.GetReason() != "FLOW_EXPIRED_OR_USED" {
		t.Fatalf("status after the sweep: %v (%s), want UNAUTHORIZED (FLOW_EXPIRED_OR_USED)", st.GetStatus(), st.GetReason())
	}
	start, err = s.OAuth().StartAuthorization(c.ctx(t), &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	code, body, _ = NewBrowser(t).Open(t, start.GetAuthorizationUrl())
	if code != 200 || !strings.Contains(body, "Authorization complete") {
		t.Fatalf("starting again: %d %s", code, body)
	}
	st, err := s.OAuth().GetAuthorizationStatus(c.ctx(t), &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
	if err != nil || st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatalf("status after starting again: %v %v", st, err)
	}
}

// toCallback opens authURL in b and follows its redirects up to mcpauth's
// callback, which it does not visit yet: it returns the callback URL, with
// the authorization server's response in its query.
func toCallback(tb testing.TB, b *Browser, authURL string) string {
	tb.Helper()
	c := *b.Client
	c.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
		if req.URL.Path == "/v1/oauth/callback" {
			return http.ErrUseLastResponse
		}
		return nil
	}
	resp, err := c.Get(authURL)
	if err != nil {
		tb.Fatalf("GET %s: %v", authURL, err)
	}
	_ = resp.Body.Close()
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil || loc.Path != "/v1/oauth/callback" {
		tb.Fatalf("the authorization server did not redirect to the callback: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	return loc.String()
}

var restartLinkRE = regexp.MustCompile(`id="restart" href="([^"]+)"`)

// restartLink is the lost-flow page's "start again" link, or "".
func restartLink(tb testing.TB, page, base string) string {
	tb.Helper()
	m := restartLinkRE.FindStringSubmatch(page)
	if m == nil {
		return ""
	}
	u, err := url.Parse(base)
	if err != nil {
		tb.Fatal(err)
	}
	ref, err := u.Parse(html.UnescapeString(m[1]))
	if err != nil {
		tb.Fatal(err)
	}
	return ref.String()
}

// codesExchangedOnce fails tb when the authorization server saw an
// authorization code twice (a code spent twice makes a server revoke what
// it issued for it), and returns how many codes it saw.
func codesExchangedOnce(tb testing.TB, as *testauthz.AuthServer) int {
	tb.Helper()
	seen := map[string]bool{}
	for _, r := range as.RequestsTo("/token") {
		if r.Form.Get("grant_type") != "authorization_code" {
			continue
		}
		if code := r.Form.Get("code"); seen[code] {
			tb.Errorf("an authorization code was exchanged twice")
		} else {
			seen[code] = true
		}
	}
	return len(seen)
}

// TestFaultRedisRestartBeforeCallback (issue 15, case 8): Redis restarts
// empty while the person is at the authorization server. The callback
// finds no flow; the browser that opened it gets a page that says so and
// offers to start again, and starting again from there completes the
// authorization for the same provider and user. Another browser with the
// same response gets neither the offer nor, with the link, a flow.
func TestFaultRedisRestartBeforeCallback(t *testing.T) {
	t.Parallel()
	c, rd, _ := faultCluster(t, 1, "")
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: c.AS})
	s := c.Replicas[0]
	name := createProvider(t, s, c.Key, c.Tenant, "wiki", mcp.URL(), nil)
	start, err := s.OAuth().StartAuthorization(c.ctx(t), &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	b := NewBrowser(t)
	cb := toCallback(t, b, start.GetAuthorizationUrl())
	rd.Restart()

	code, body, _ := NewBrowser(t).Open(t, cb)
	if code != 400 || restartLink(t, body, cb) != "" {
		t.Fatalf("another browser's callback of the lost flow: %d %s", code, body)
	}
	code, body, _ = b.Open(t, cb)
	link := restartLink(t, body, cb)
	if code != 400 || link == "" || !strings.Contains(body, "start the authorization again from here") {
		t.Fatalf("the lost flow's page in its own browser: %d %s", code, body)
	}
	if code, body, _ := NewBrowser(t).Open(t, link); code != 400 || strings.Contains(body, "Authorization complete") {
		t.Fatalf("another browser following the restart link: %d %s", code, body)
	}
	if code, body, _ := b.Open(t, link); code != 200 || !strings.Contains(body, "Authorization complete") {
		t.Fatalf("starting again: %d %s", code, body)
	}
	st, err := s.OAuth().GetAuthorizationStatus(c.ctx(t), &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
	if err != nil || st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatalf("status after starting again: %v %v", st, err)
	}
	// The provider's tokens are the ones of the second flow: one per code.
	if n := codesExchangedOnce(t, c.AS); n != 2 {
		t.Fatalf("%d codes exchanged, want 2 (the cluster's own and the restarted flow's)", n)
	}
}

// TestFaultRedisStallDuringCallback (issue 15, case 8): Redis freezes
// (SIGSTOP) during the callback; what it was about to run runs only when it
// resumes, its answer lost. The callback answers "try again", never a lost
// flow without a way on, and no code is ever exchanged twice:
//
//   - frozen after it answered the read of the flow, so the take that
//     consumes the flow is stuck past every timeout: trying again in the
//     same browser gets the flow back from the take's receipt and completes
//     (the fault of the issue: a GETDEL consumed the flow and the retry got
//     nothing);
//   - frozen after the take, so the settle that precedes the code exchange
//     is stuck: whether it ran is unknown, so the code is not exchanged and
//     trying again offers to start again, which completes.
//
// To freeze Redis at one of those points, the replica reaches Redis through
// a proxy that delivers every answer 300 ms late, and the test freezes
// Redis as soon as MONITOR shows the command before it.
func TestFaultRedisStallDuringCallback(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		after   func(line string) bool
		restart bool
	}{
		{name: "before the take", after: func(l string) bool { return strings.Contains(l, `"get" "`) && strings.Contains(l, "kv:state:") }},
		{name: "before the settle", restart: true, after: func(l string) bool {
			// The take script's own GET of the flow (MONITOR shows the
			// commands a script runs, from "lua").
			return strings.Contains(l, ` lua] "GET"`) && strings.Contains(l, "kv:state:")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			stallCallback(t, tc.after, tc.restart)
		})
	}
}

// stallCallback runs one case of TestFaultRedisStallDuringCallback.
func stallCallback(t *testing.T, after func(line string) bool, restart bool) {
	rd := startFaultRedis(t)
	proxy := newFaultProxy(t, "redis", rd.addr())
	c := tokStart(t, tokOptions{Replicas: 1,
		RedisURL: "redis://" + proxy.Addr() + "/0?dial_timeout=1s&read_timeout=1s&write_timeout=1s"})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: c.AS})
	s := c.Replicas[0]
	name := createProvider(t, s, c.Key, c.Tenant, "wiki", mcp.URL(), nil)
	start, err := s.OAuth().StartAuthorization(c.ctx(t), &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	b := NewBrowser(t)
	cb := toCallback(t, b, start.GetAuthorizationUrl())

	seen := monitorRedis(t, rd.addr(), after)
	proxy.Hold(300 * time.Millisecond)
	frozen := make(chan struct{})
	go func() {
		<-seen
		rd.Stop()
		close(frozen)
	}()
	t.Cleanup(rd.Cont)
	code, body, _ := b.Open(t, cb)
	select {
	case <-frozen:
	default:
		t.Fatalf("the callback answered %d before Redis froze: %s", code, body)
	}
	rd.Cont()
	proxy.Clear()
	if code != 503 || !strings.Contains(body, "reload this page") {
		t.Fatalf("callback during the freeze: %d %s (want try again)", code, body)
	}
	code, body, _ = b.Open(t, cb)
	if restart {
		link := restartLink(t, body, cb)
		if code != 400 || link == "" {
			t.Fatalf("trying again after a freeze before the settle: %d %s (want the offer to start again)", code, body)
		}
		code, body, _ = b.Open(t, link)
	}
	if code != 200 || !strings.Contains(body, "Authorization complete") {
		t.Fatalf("trying again after the freeze: %d %s", code, body)
	}
	st, err := s.OAuth().GetAuthorizationStatus(c.ctx(t), &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
	if err != nil || st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatalf("status after the freeze: %v %v", st, err)
	}
	// The cluster's own flow and this one (or, started again, its
	// successor: the frozen flow's code is then never exchanged).
	if n := codesExchangedOnce(t, c.AS); n != 2 {
		t.Fatalf("%d codes exchanged, want 2", n)
	}
}

// monitorRedis runs MONITOR on the Redis at addr (a raw connection: it
// reads nothing else) and closes the returned channel when a command line
// matches.
func monitorRedis(tb testing.TB, addr string, match func(line string) bool) <-chan struct{} {
	tb.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	r := bufio.NewReader(conn)
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		tb.Fatal(err)
	}
	if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "+OK") {
		tb.Fatalf("MONITOR: %q %v", l, err)
	}
	seen := make(chan struct{})
	go func() {
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if match(l) {
				close(seen)
				return
			}
		}
	}()
	return seen
}
