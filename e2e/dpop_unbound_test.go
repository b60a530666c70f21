package e2e

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// dpRefreshRequests are the refresh_token grant requests an authorization
// server received, oldest first.
func dpRefreshRequests(as *testauthz.AuthServer) []testauthz.RecordedRequest {
	var out []testauthz.RecordedRequest
	for _, r := range as.RequestsTo("/token") {
		if r.Form.Get("grant_type") == "refresh_token" {
			out = append(out, r)
		}
	}
	return out
}

// TestDPoPRefreshUnbound: a DPoP-bound grant at a server that rotates
// refresh tokens (fosite: a reused refresh token revokes the whole family)
// and then stops honouring DPoP, answering the proven refresh with a
// Bearer token (RFC 9449 section 5: token_type tells the client the token
// is not bound). mcpauth never serves or sends that Bearer token, keeps
// the rotated refresh token (the one it sent is dead now), suspends the
// grant as DPOP_REFUSED (audited), asks the server again at most once per
// MCPAUTH_DPOP_RETRY_INTERVAL, and, once the server binds tokens again,
// resumes the grant without a person: the retry presents the rotated
// refresh token with a proof by the same key, nothing is seen as a reuse,
// and the new token is bound to the key.
func TestDPoPRefreshUnbound(t *testing.T) {
	t.Parallel()
	const interval = 2 * time.Second
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true, AccessTokenLifetime: 6 * time.Second,
		DPoP: &testauthz.DPoPOptions{RequireProof: true}})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as, DPoP: &testauthz.DPoPOptions{}})
	s := tlStart(t, map[string]string{"MCPAUTH_DPOP_RETRY_INTERVAL": interval.String()})
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "acme", "unbound", mcp.URL(), func(p *mcpauthv1.Provider) {
		p.Dpop = &mcpauthv1.DpopSettings{Mode: mcpauthv1.DpopMode_DPOP_MODE_AUTO}
	})
	start, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatalf("StartAuthorization: %v", err)
	}
	if code, body, _ := NewBrowser(t).Open(t, start.GetAuthorizationUrl()); code != 200 || !strings.Contains(body, "Authorization complete") {
		t.Fatalf("final page: %d %s", code, body)
	}
	tok, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name})
	if err != nil {
		t.Fatalf("GetAccessToken: %v", err)
	}
	jkt := tok.GetDpopKeyThumbprint()
	if tok.GetTokenType() != "DPoP" || as.TokenJKT(tok.GetAccessToken()) != jkt || jkt == "" {
		t.Fatalf("token type %q bound to %q", tok.GetTokenType(), as.TokenJKT(tok.GetAccessToken()))
	}
	tl := &mcEnv{S: s, AS: as, MCP: mcp}

	// The server stops binding tokens. Reads go on until the due refresh
	// has been answered: every token served meanwhile is bound to the key.
	as.IgnoreDPoP(true)
	bound := len(dpRefreshRequests(as)) // refreshes answered while the server still bound tokens
	var refused error
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		got, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name})
		if err != nil {
			refused = err
			break
		}
		if got.GetTokenType() != "DPoP" || as.TokenJKT(got.GetAccessToken()) != jkt {
			t.Fatalf("a token not bound to the key was served (type %q)", got.GetTokenType())
		}
	}
	if ei := tlErrorInfo(t, refused, codes.FailedPrecondition); ei.GetReason() != "DPOP_REFUSED" {
		t.Fatalf("GetAccessToken after the Bearer answer: reason %q, want DPOP_REFUSED", ei.GetReason())
	}
	refreshes := dpRefreshRequests(as)[bound:]
	if len(refreshes) < 1 || len(refreshes[0].Header.Values("DPoP")) != 1 {
		t.Fatalf("%d refresh requests after the server stopped binding (want a proven one)", len(refreshes))
	}
	sentFirst := refreshes[0].Form.Get("refresh_token")

	// Suspended: tools refuse too, and the Bearer token never reaches the
	// MCP server; the status says why and that the refresh token is kept.
	_, err = tlCall(ctx, s, name, "echo", map[string]any{"text": "x"})
	if ei := tlErrorInfo(t, err, codes.FailedPrecondition); ei.GetReason() != "DPOP_REFUSED" {
		t.Fatalf("CallTool while suspended: reason %q", ei.GetReason())
	}
	if mcp.BearerAttempts() != 0 {
		t.Fatalf("%d Bearer attempts at the MCP server", mcp.BearerAttempts())
	}
	st, err := s.OAuth().GetAuthorizationStatus(ctx, &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
	if err != nil || st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_REAUTH_REQUIRED || st.GetReason() != "DPOP_REFUSED" || !st.GetHasRefreshToken() {
		t.Fatalf("status = %v, %v; want REAUTH_REQUIRED, DPOP_REFUSED, refresh token held", st, err)
	}
	ev := oaWantEvent(t, s, "acme", "oauth.reauth_required", "DPOP_REFUSED")
	if ev.GetDetails()["refresh_token"] != "kept" || ev.GetDetails()["unbound_access_token"] != "discarded" {
		t.Fatalf("reauth_required details %v", ev.GetDetails())
	}

	// While suspended the server is asked at most once per interval,
	// however often the grant is read.
	began := time.Now()
	before := len(dpRefreshRequests(as))
	for range 20 {
		_, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name})
		tlErrorInfo(t, err, codes.FailedPrecondition)
	}
	if extra, most := len(dpRefreshRequests(as))-before, int(time.Since(began)/interval)+1; extra > most {
		t.Fatalf("%d refreshes during %s of reads, want at most %d", extra, time.Since(began), most)
	}

	// The server binds tokens again: the next due retry resumes the grant.
	as.IgnoreDPoP(false)
	var fresh *mcpauthv1.GetAccessTokenResponse
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if fresh, err = s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name}); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("the grant did not resume: %v", err)
	}
	if fresh.GetTokenType() != "DPoP" || as.TokenJKT(fresh.GetAccessToken()) != jkt || fresh.GetAccessToken() == tok.GetAccessToken() {
		t.Fatalf("resumed token type %q bound to %q, want a new DPoP token bound to %s", fresh.GetTokenType(), as.TokenJKT(fresh.GetAccessToken()), jkt)
	}
	all := dpRefreshRequests(as)
	last := all[len(all)-1]
	if last.Form.Get("refresh_token") == sentFirst || len(last.Header.Values("DPoP")) != 1 {
		t.Fatal("the resuming refresh did not present the rotated refresh token with a proof")
	}
	if n := as.ReuseRejections(); n != 0 {
		t.Fatalf("%d refresh token reuses seen by the server (the rotated token was not kept)", n)
	}
	for _, pr := range as.DPoPProofs() {
		if pr.JKT != jkt {
			t.Errorf("a token request was proven with key %s, want %s", pr.JKT, jkt)
		}
	}
	st, err = s.OAuth().GetAuthorizationStatus(ctx, &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
	if err != nil || st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED || st.GetReason() != "" {
		t.Fatalf("status after resuming = %v, %v", st, err)
	}
	tl.callEcho(t, name)
	if mcp.BearerAttempts() != 0 {
		t.Fatalf("%d Bearer attempts at the MCP server", mcp.BearerAttempts())
	}
	dpNoPrivateKey(t, s, name)
	tl.noSecretAnywhere(t, name, tok.GetAccessToken(), fresh.GetAccessToken(), sentFirst, last.Form.Get("refresh_token"))
}
