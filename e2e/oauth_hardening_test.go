package e2e

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// oaWantHardened fails tb unless h carries the browser routes' hardening
// headers.
func oaWantHardened(tb testing.TB, what string, h http.Header) {
	tb.Helper()
	want := map[string]string{
		"Cache-Control":          "no-store",
		"Referrer-Policy":        "no-referrer",
		"X-Content-Type-Options": "nosniff",
		"X-Frame-Options":        "DENY",
	}
	for k, v := range want {
		if got := h.Get(k); got != v {
			tb.Errorf("%s: %s = %q, want %q", what, k, got, v)
		}
	}
	csp := h.Get("Content-Security-Policy")
	for _, d := range []string{"default-src 'none'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'"} {
		if !strings.Contains(csp, d) {
			tb.Errorf("%s: CSP %q lacks %s", what, csp, d)
		}
	}
	if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "script-src") {
		tb.Errorf("%s: CSP %q allows scripts or inline code", what, csp)
	}
}

// TestOAuthBrowserRouteHardening checks the headers of every kind of
// response of the authorize and callback routes, the flow cookie's
// attributes, and that the routes answer only GET.
func TestOAuthBrowserRouteHardening(t *testing.T) {
	t.Parallel()
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true}, testauthz.MCPServerOptions{}, Options{}, nil)
	jar, _ := cookiejar.New(nil)
	noFollow := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(u string) *http.Response {
		t.Helper()
		resp, err := noFollow.Get(u)
		oaMust(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}

	start := f.Start(t)
	resp := get(start.GetAuthorizationUrl())
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(resp.Header.Get("Location"), f.AS.URL+"/authorize?") {
		t.Fatalf("authorize route: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	oaWantHardened(t, "authorize redirect", resp.Header)
	cookies := resp.Cookies()
	if len(cookies) != 1 {
		t.Fatalf("authorize route set %d cookies", len(cookies))
	}
	c := cookies[0]
	raw := resp.Header.Get("Set-Cookie")
	// The cookie lives while the browser may still complete the flow (the
	// flow TTL, 5 minutes) or start it again (as long again).
	if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.MaxAge <= 300 || c.MaxAge > 600 || c.Domain != "" {
		t.Errorf("flow cookie %q: want HttpOnly, SameSite=Lax, Path=/, no Domain, Max-Age in (300, 600]", raw)
	}
	if len(c.Value) < 43 {
		t.Errorf("flow cookie value has %d characters", len(c.Value))
	}

	// The AS redirects back; the callback page (success) is hardened too.
	loc, err := testauthz.FollowAuthorize(resp.Header.Get("Location"))
	oaMust(t, err)
	resp = get(loc.String())
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("callback: %d", resp.StatusCode)
	}
	oaWantHardened(t, "callback success page", resp.Header)
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("callback Content-Type %q", ct)
	}
	cleared := false
	for _, ck := range resp.Cookies() {
		if ck.Name == c.Name && ck.MaxAge < 0 {
			cleared = true
		}
	}
	if !cleared {
		t.Error("the callback does not clear the flow cookie")
	}

	// Failure pages: replayed callback, used authorize link, the Dify alias.
	for what, u := range map[string]string{
		"callback failure page":  loc.String(),
		"authorize failure page": start.GetAuthorizationUrl(),
		"callback alias":         f.S.HTTPURL + "/console/api/mcp/oauth/callback?" + loc.RawQuery,
	} {
		resp := get(u)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d", what, resp.StatusCode)
		}
		oaWantHardened(t, what, resp.Header)
	}

	// Only GET (and HEAD).
	for _, path := range []string{callbackPath, "/console/api/mcp/oauth/callback", "/v1/oauth/authorize/abc"} {
		for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
			req, _ := http.NewRequest(m, f.S.HTTPURL+path+"?state=x&code=y", strings.NewReader("state=x&code=y"))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp, err := noFollow.Do(req)
			oaMust(t, err)
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: status %d, want 405", m, path, resp.StatusCode)
			}
			if allow := resp.Header.Get("Allow"); !strings.Contains(allow, "GET") {
				t.Errorf("%s %s: Allow %q", m, path, allow)
			}
		}
	}
}

// TestOAuthHeaderTooLarge: an oversized request header block is refused
// with 431 before any handler runs.
func TestOAuthHeaderTooLarge(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{})
	addr := strings.TrimPrefix(s.HTTPURL, "http://")
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	oaMust(t, err)
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	big := strings.Repeat("a", 64<<10)
	_, err = io.WriteString(conn, "GET /v1/oauth/callback?state=x HTTP/1.1\r\nHost: "+addr+"\r\nX-Big: "+big+"\r\nCookie: c="+big+"\r\n\r\n")
	oaMust(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	oaMust(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("status %d, want 431", resp.StatusCode)
	}
}
