package e2e

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// cmPlatform is the calling platform's page the browser returns to: it
// records the query each return carried.
type cmPlatform struct {
	srv     *httptest.Server
	mu      sync.Mutex
	returns []url.Values
}

func cmNewPlatform(tb testing.TB) *cmPlatform {
	tb.Helper()
	p := &cmPlatform{}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.returns = append(p.returns, r.URL.Query())
		p.mu.Unlock()
		_, _ = w.Write([]byte("back on the platform"))
	}))
	tb.Cleanup(p.srv.Close)
	return p
}

func (p *cmPlatform) last(tb testing.TB) url.Values {
	tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.returns) == 0 {
		tb.Fatal("the browser never came back to the platform")
	}
	return p.returns[len(p.returns)-1]
}

// cmSetup is an authorization server issuing ID tokens to whoever signs in,
// an MCP server protected by it, mcpauth allowing the platform as return
// origin, and one provider.
func cmSetup(tb testing.TB) (*testauthz.AuthServer, *Service, *cmPlatform, string) {
	tb.Helper()
	as := testauthz.NewAuthServer(tb, testauthz.AuthServerOptions{DCR: true, IssParameter: true, IDTokens: true,
		Scopes: []string{"openid", "mcp.read", "offline_access"}})
	mcp := testauthz.NewMCPServer(tb, testauthz.MCPServerOptions{Auth: as})
	p := cmNewPlatform(tb)
	s := Start(tb, Options{Env: map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1", "MCPAUTH_RETURN_ORIGINS": p.srv.URL}})
	return as, s, p, createProvider(tb, s, s.AdminKey, "acme", "docs", mcp.URL(), nil)
}

// cmBrowserAs is a browser signed in at the authorization server as user.
func cmBrowserAs(tb testing.TB, as *testauthz.AuthServer, user string) *Browser {
	tb.Helper()
	b := NewBrowser(tb)
	if err := as.SignIn(b.Client, user); err != nil {
		tb.Fatal(err)
	}
	return b
}

// cmWhoami is the subject of the token mcpauth sends for the provider.
func cmWhoami(tb testing.TB, s *Service, name string) string {
	tb.Helper()
	resp := tlMustCall(tb, s, name, "whoami", nil)
	return resp.GetStructuredContent().GetFields()["subject"].GetStringValue()
}

// TestCompletionBindsTheSignedInUser: with require_completion, the callback
// stores nothing and sends the browser back to the platform with a
// one-time code. An authorize URL started for alice but opened by bob (who
// signs in at the authorization server as bob) comes back to the
// platform in bob's session: CompleteAuthorization with bob is refused
// (COMPLETION_USER_MISMATCH, audited), bob's tokens are revoked at the
// server and never stored, and the code is spent. Opened by alice, the
// completion with alice stores her grant and tool calls carry her token;
// the code works once, and a code presented for another provider consumes
// nothing.
func TestCompletionBindsTheSignedInUser(t *testing.T) {
	t.Parallel()
	as, s, platform, name := cmSetup(t)
	ctx := Ctx(t, s.AdminKey)
	start := func() string {
		t.Helper()
		st, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice",
			ReturnUrl: platform.srv.URL + "/connections/done", RequireCompletion: true})
		if err != nil {
			t.Fatalf("StartAuthorization: %v", err)
		}
		return st.GetAuthorizationUrl()
	}
	complete := func(user, code string) (*mcpauthv1.CompleteAuthorizationResponse, error) {
		return s.OAuth().CompleteAuthorization(ctx, &mcpauthv1.CompleteAuthorizationRequest{Name: name, User: user, CompletionCode: code})
	}

	// Forwarded to bob.
	revoked := as.RevocationCount()
	code, body, final := cmBrowserAs(t, as, "bob").Open(t, start())
	if code != 200 || body != "back on the platform" || final.Path != "/connections/done" {
		t.Fatalf("bob's browser ended at %s: %d %q", final.Redacted(), code, body)
	}
	q := platform.last(t)
	if q.Get("mcpauth_status") != "completion_required" || q.Get("mcpauth_completion") == "" || q.Get("mcpauth_provider") != name {
		t.Fatalf("return query %v", q)
	}
	if st := tlStatus(t, s, name); st.GetStatus() == mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatal("the callback stored the grant before the platform completed it")
	}
	_, err := complete("bob", q.Get("mcpauth_completion"))
	tlWantReason(t, err, codes.PermissionDenied, "COMPLETION_USER_MISMATCH")
	if st := tlStatus(t, s, name); st.GetStatus() == mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatal("a completion for the wrong user stored the grant")
	}
	if as.RevocationCount() <= revoked {
		t.Fatal("bob's unstored tokens were not revoked at the authorization server")
	}
	// Single use: even the right user cannot use the spent code.
	_, err = complete("alice", q.Get("mcpauth_completion"))
	tlWantReason(t, err, codes.FailedPrecondition, "COMPLETION_INVALID")

	// Opened by alice herself.
	cmBrowserAs(t, as, "alice").Open(t, start())
	q = platform.last(t)
	aliceCode := q.Get("mcpauth_completion")
	// A code presented for another provider is refused and consumes nothing.
	_, err = s.OAuth().CompleteAuthorization(ctx, &mcpauthv1.CompleteAuthorizationRequest{Name: "tenants/acme/providers/other",
		User: "alice", CompletionCode: aliceCode})
	tlWantReason(t, err, codes.FailedPrecondition, "COMPLETION_INVALID")
	done, err := complete("alice", aliceCode)
	if err != nil {
		t.Fatalf("CompleteAuthorization for alice: %v", err)
	}
	if done.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED || done.GetIssuer() != as.URL || !done.GetHasRefreshToken() {
		t.Fatalf("completion %v", done)
	}
	if got := cmWhoami(t, s, name); got != "alice" {
		t.Fatalf("tool calls carry %q's token, want alice's", got)
	}
	_, err = complete("alice", aliceCode)
	tlWantReason(t, err, codes.FailedPrecondition, "COMPLETION_INVALID")

	// Audited: one success naming alice, failures naming who asked.
	evs := tlWaitEvents(t, s, "acme", name, "oauth.authorization.completed", 4, nil)
	var ok, mismatch, invalid int
	for _, ev := range evs {
		switch {
		case ev.GetOutcome() == mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS && ev.GetDetails()["user"] == "alice":
			ok++
		case ev.GetReason() == "COMPLETION_USER_MISMATCH" && ev.GetDetails()["user"] == "bob":
			mismatch++
		case ev.GetReason() == "COMPLETION_INVALID":
			invalid++
		}
	}
	if ok != 1 || mismatch != 1 || invalid != 2 {
		t.Fatalf("completion events: %d successes, %d mismatches, %d invalid; want 1, 1, 2: %v", ok, mismatch, invalid, evs)
	}
}

// TestCompletionExpectedSubject: with expected_subject, the callback
// stores the grant only when the authorization server's ID token names
// that subject. Bob signing in on a link meant for alice ends on the
// platform with ID_TOKEN_SUBJECT_MISMATCH, nothing stored and the tokens
// revoked; alice signing in completes at once (no completion step asked).
// A require_completion without a return URL is refused.
func TestCompletionExpectedSubject(t *testing.T) {
	t.Parallel()
	as, s, platform, name := cmSetup(t)
	ctx := Ctx(t, s.AdminKey)
	start := func() string {
		t.Helper()
		st, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice",
			ReturnUrl: platform.srv.URL + "/done", ExpectedSubject: "alice"})
		if err != nil {
			t.Fatalf("StartAuthorization: %v", err)
		}
		return st.GetAuthorizationUrl()
	}
	revoked := as.RevocationCount()
	cmBrowserAs(t, as, "bob").Open(t, start())
	if q := platform.last(t); q.Get("mcpauth_status") != "error" || q.Get("mcpauth_reason") != "ID_TOKEN_SUBJECT_MISMATCH" {
		t.Fatalf("return query %v", q)
	}
	if st := tlStatus(t, s, name); st.GetStatus() == mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatal("bob's grant was stored for alice")
	}
	if as.RevocationCount() <= revoked {
		t.Fatal("bob's tokens were not revoked")
	}
	tlWaitEvents(t, s, "acme", name, "oauth.callback.failed", 1, func(ev *mcpauthv1.AuditEvent) bool {
		return ev.GetReason() == "ID_TOKEN_SUBJECT_MISMATCH"
	})

	cmBrowserAs(t, as, "alice").Open(t, start())
	if q := platform.last(t); q.Get("mcpauth_status") != "success" {
		t.Fatalf("return query %v", q)
	}
	if got := cmWhoami(t, s, name); got != "alice" {
		t.Fatalf("tool calls carry %q's token, want alice's", got)
	}

	_, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice", RequireCompletion: true})
	if info := tlWantReason(t, err, codes.InvalidArgument, "INVALID_ARGUMENT"); info == nil {
		t.Fatal("no error info")
	}
}
