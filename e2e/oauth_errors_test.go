package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestOAuthAccessDenied: error=access_denied from the authorization server
// ends on a failure page showing the (escaped) error, an audit event with
// the reason, and no token request.
func TestOAuthAccessDenied(t *testing.T) {
	t.Parallel()
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true, Deny: true}, testauthz.MCPServerOptions{}, Options{}, nil)
	start := f.Start(t)
	p := oaOpen(t, NewBrowser(t), start.GetAuthorizationUrl())
	oaFailed(t, p, "AUTHORIZATION_DENIED")
	if !strings.HasPrefix(p.Detail, "access_denied") {
		t.Errorf("detail %q", p.Detail)
	}
	if p.Provider != f.Name {
		t.Errorf("provider %q", p.Provider)
	}
	if n := f.AS.Counts("/token"); n != 0 {
		t.Errorf("%d token requests", n)
	}
	if st := f.Status(t); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED {
		t.Errorf("status %v", st)
	}
	ev := oaWantEvent(t, f.S, "acme", "oauth.callback.failed", "AUTHORIZATION_DENIED")
	if ev.GetActor() != "user:alice" || ev.GetProvider() != f.Name || ev.GetOutcome() != mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE {
		t.Errorf("audit event %v", ev)
	}
}

// TestOAuthErrorDescriptionEscaped: markup in error_description is shown as
// text, never interpreted.
func TestOAuthErrorDescriptionEscaped(t *testing.T) {
	t.Parallel()
	const desc = `<script>alert("x")</script><img src=x onerror=alert(1)>`
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true, Deny: true}, testauthz.MCPServerOptions{}, Options{}, nil)
	start := f.Start(t)
	b := NewBrowser(t)
	cb := oaToCallback(t, b, start.GetAuthorizationUrl())
	q := cb.Query()
	q.Set("error_description", desc)
	cb.RawQuery = q.Encode()
	p := oaOpen(t, b, cb.String())
	oaFailed(t, p, "AUTHORIZATION_DENIED")
	if strings.Contains(p.Body, "<script>") || strings.Contains(p.Body, "<img") {
		t.Fatalf("unescaped markup on the page: %s", p.Body)
	}
	if !strings.Contains(p.Body, "&lt;script&gt;") || !strings.Contains(p.Detail, desc) {
		t.Errorf("the escaped description is not shown: detail %q", p.Detail)
	}
	if csp := p.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || strings.Contains(csp, "script-src") {
		t.Errorf("CSP %q", csp)
	}
}

// TestOAuthExchangeFailure: a failing code exchange ends on a failure page,
// puts the provider back to UNAUTHORIZED and is never retried (an
// authorization code is single use).
func TestOAuthExchangeFailure(t *testing.T) {
	t.Parallel()
	for _, code := range []int{http.StatusBadRequest, http.StatusInternalServerError} {
		t.Run(http.StatusText(code), func(t *testing.T) {
			t.Parallel()
			f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true}, testauthz.MCPServerOptions{}, Options{}, nil)
			start := f.Start(t)
			if st := f.Status(t); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_PENDING {
				t.Errorf("status after start %v", st)
			}
			b := NewBrowser(t)
			cb := oaToCallback(t, b, start.GetAuthorizationUrl())
			f.AS.SetTokenStatus(code, "1")
			p := oaOpen(t, b, cb.String())
			oaFailed(t, p, "TOKEN_EXCHANGE_FAILED")
			if p.Detail != "" || strings.Contains(p.Body, "temporarily_unavailable") {
				t.Errorf("the token endpoint's answer is reflected: %q", p.Detail)
			}
			if st := f.Status(t); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED {
				t.Errorf("status %v", st)
			}
			oaWantEvent(t, f.S, "acme", "oauth.callback.failed", "TOKEN_EXCHANGE_FAILED")
			// Nothing retries the exchange later, and a reload cannot.
			f.AS.SetTokenStatus(0, "")
			time.Sleep(300 * time.Millisecond)
			oaFailed(t, oaOpen(t, b, cb.String()), "STATE_INVALID")
			if n := f.AS.Counts("/token"); n != 1 {
				t.Errorf("%d token requests, want exactly 1", n)
			}
			if _, err := f.S.OAuth().GetAccessToken(f.Ctx, &mcpauthv1.GetAccessTokenRequest{Name: f.Name}); err == nil {
				t.Error("GetAccessToken succeeds after a failed exchange")
			}
		})
	}
}
