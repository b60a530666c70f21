package e2e

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// xaaDPoP sets the provider's DPoP mode.
func xaaDPoP(mode mcpauthv1.DpopMode) func(*mcpauthv1.Provider) {
	return func(p *mcpauthv1.Provider) { p.Dpop = &mcpauthv1.DpopSettings{Mode: mode} }
}

// TestEnterpriseManagedDPoP: an enterprise-managed provider in DPoP AUTO
// mode against an authorization server and an MCP server that speak RFC
// 9449 and demand nonces. The JWT bearer grant with the ID-JAG is proven
// with the provider's key (after one use_dpop_nonce answer, section 8);
// the token exchange at the identity provider carries no proof (the ID-JAG
// draft binds nothing there); the token is DPoP-bound (cnf.jkt); every MCP
// request is proven (section 7) and the refresh keeps the binding
// (section 5).
func TestEnterpriseManagedDPoP(t *testing.T) {
	t.Parallel()
	dp := &testauthz.DPoPOptions{RequireNonce: true, RequireProof: true}
	e := xaaStart(t, testauthz.MachineOptions{DPoP: dp, AccessTokenLifetime: 4 * time.Second, IDJAGRefresh: true}, xaaASClient,
		xaaDPoP(mcpauthv1.DpopMode_DPOP_MODE_AUTO))
	ctx := Ctx(t, e.S.AdminKey)
	p, err := e.S.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: xaaProviderRes})
	if err != nil {
		t.Fatal(err)
	}
	jkt := p.GetProvider().GetDpop().GetKeyThumbprint()
	if len(jkt) != 43 {
		t.Fatalf("dpop view = %v", p.GetProvider().GetDpop())
	}
	d, err := e.S.OAuth().DiagnoseProvider(ctx, &mcpauthv1.DiagnoseProviderRequest{Name: xaaProviderRes})
	if err != nil || !d.GetDpopWillBeUsed() {
		t.Fatalf("DiagnoseProvider: %v, dpop_will_be_used %v", err, d.GetDpopWillBeUsed())
	}

	idToken := e.IdP.IDToken(t, "alice", xaaIdPClient, 10*time.Minute)
	if _, err := e.exchange(t, "alice", idToken); err != nil {
		t.Fatalf("ExchangeIdentityAssertion: %v (refused proofs %v)", err, e.AS.DPoPRefused())
	}
	if ex := e.IdP.RequestsTo("/token"); len(ex) != 1 || len(ex[0].Header.Values("DPoP")) != 0 {
		t.Fatalf("identity provider token requests %d (want 1, without a DPoP proof)", len(ex))
	}
	// Two JWT bearer requests: the first refused for the nonce, the second
	// proven with it; both carry exactly one proof and the same ID-JAG.
	as := e.AS.RequestsTo("/token")
	if len(as) != 2 || e.AS.DPoPNonceChallenges() != 1 {
		t.Fatalf("%d authorization server token requests, %d nonce demands; want 2 and 1 (refused %v)", len(as), e.AS.DPoPNonceChallenges(), e.AS.DPoPRefused())
	}
	jag := e.IdP.Issued()[0].Raw
	for _, r := range as {
		if r.Form.Get("grant_type") != testauthz.GrantJWTBearer || r.Form.Get("assertion") != jag || len(r.Header.Values("DPoP")) != 1 {
			t.Errorf("token request: grant %q, DPoP headers %d", r.Form.Get("grant_type"), len(r.Header.Values("DPoP")))
		}
	}
	if pr := e.AS.DPoPProofs(); len(pr) != 1 || pr[0].JKT != jkt || pr[0].HTU != e.AS.URL+"/token" || pr[0].HTM != "POST" || pr[0].Nonce == "" || pr[0].ATH != "" {
		t.Fatalf("accepted token endpoint proofs = %+v", pr)
	}

	tok, err := e.S.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: xaaProviderRes})
	if err != nil {
		t.Fatalf("GetAccessToken: %v", err)
	}
	if tok.GetTokenType() != "DPoP" || tok.GetDpopKeyThumbprint() != jkt || e.AS.TokenJKT(tok.GetAccessToken()) != jkt {
		t.Fatalf("token type %q, thumbprint %q, bound to %q; want DPoP bound to %s", tok.GetTokenType(), tok.GetDpopKeyThumbprint(), e.AS.TokenJKT(tok.GetAccessToken()), jkt)
	}
	who := tlMustCall(t, e.S, xaaProviderRes, "whoami", nil)
	if got := who.GetStructuredContent().AsMap()["subject"]; got != "alice" {
		t.Fatalf("whoami subject %v, want alice", got)
	}
	if n := dpCheckMCPProofs(t, e.MCP.DPoPProofs(), 0, e.MCP.URL(), jkt, tok.GetAccessToken()); n < 3 {
		t.Errorf("%d MCP requests proven, want at least 3 (initialize, list, call)", n)
	}
	if e.MCP.DPoPNonceChallenges() != 1 || e.MCP.BearerAttempts() != 0 {
		t.Errorf("MCP server: %d nonce demands (want 1), %d Bearer attempts (want 0)", e.MCP.DPoPNonceChallenges(), e.MCP.BearerAttempts())
	}

	// The refresh (the token is due after three quarters of 4 s) is proven
	// with the same key and its token bound to it; no new ID token needed.
	var fresh *mcpauthv1.GetAccessTokenResponse
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		if fresh, err = e.S.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: xaaProviderRes}); err != nil {
			t.Fatalf("GetAccessToken: %v", err)
		}
		if fresh.GetAccessToken() != tok.GetAccessToken() {
			break
		}
	}
	if fresh.GetAccessToken() == tok.GetAccessToken() {
		t.Fatal("no refresh happened")
	}
	if fresh.GetTokenType() != "DPoP" || e.AS.TokenJKT(fresh.GetAccessToken()) != jkt {
		t.Errorf("refreshed token type %q bound to %q, want DPoP bound to %s", fresh.GetTokenType(), e.AS.TokenJKT(fresh.GetAccessToken()), jkt)
	}
	for _, r := range e.AS.RequestsTo("/token")[2:] {
		if r.Form.Get("grant_type") != "refresh_token" || len(r.Header.Values("DPoP")) != 1 {
			t.Errorf("request after the grant: %q with %d DPoP headers, want refresh_token with one", r.Form.Get("grant_type"), len(r.Header.Values("DPoP")))
		}
	}
	for _, pr := range e.AS.DPoPProofs() {
		if pr.JKT != jkt {
			t.Errorf("a token request was proven with key %s, want %s", pr.JKT, jkt)
		}
	}
	if n := len(e.IdP.RequestsTo("/token")); n != 1 {
		t.Errorf("identity provider token requests = %d, want 1", n)
	}
	before := len(e.MCP.DPoPProofs())
	tlMustCall(t, e.S, xaaProviderRes, "whoami", nil)
	dpCheckMCPProofs(t, e.MCP.DPoPProofs(), before, e.MCP.URL(), jkt, tok.GetAccessToken(), fresh.GetAccessToken())
	if e.MCP.BearerAttempts() != 0 {
		t.Errorf("%d Bearer attempts at the MCP server", e.MCP.BearerAttempts())
	}
	dpNoPrivateKey(t, e.S, xaaProviderRes)
	(&mcEnv{S: e.S}).noSecretAnywhere(t, xaaProviderRes, idToken, jag, xaaIdPSecret, xaaASSecret, tok.GetAccessToken(), fresh.GetAccessToken())
}

// TestEnterpriseManagedDPoPNoFallback: DPoP REQUIRED against an
// authorization server that ignores the proof (RFC 9449 section 5: a
// server without DPoP support issues a Bearer token): the grant is
// refused with DPOP_REFUSED once, nothing is stored, and no Bearer token
// reaches the MCP server.
func TestEnterpriseManagedDPoPNoFallback(t *testing.T) {
	t.Parallel()
	e := xaaStart(t, testauthz.MachineOptions{}, xaaASClient, xaaDPoP(mcpauthv1.DpopMode_DPOP_MODE_REQUIRED))
	ctx := Ctx(t, e.S.AdminKey)
	idToken := e.IdP.IDToken(t, "alice", xaaIdPClient, 10*time.Minute)
	_, err := e.exchange(t, "alice", idToken)
	ei := tlErrorInfo(t, err, codes.FailedPrecondition)
	if ei.GetReason() != "DPOP_REFUSED" || ei.GetMetadata()["step"] != "jwt_bearer" {
		t.Fatalf("error info %v, want DPOP_REFUSED at jwt_bearer", ei)
	}
	as := e.AS.RequestsTo("/token")
	if len(as) != 1 || len(as[0].Header.Values("DPoP")) != 1 || as[0].Form.Get("grant_type") != testauthz.GrantJWTBearer {
		t.Fatalf("%d token requests (want exactly one JWT bearer grant with a proof)", len(as))
	}
	_, err = e.S.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: xaaProviderRes})
	if ei := tlErrorInfo(t, err, codes.FailedPrecondition); ei.GetReason() != "ID_TOKEN_REQUIRED" {
		t.Fatalf("GetAccessToken after the refusal: reason %q, want ID_TOKEN_REQUIRED (nothing stored)", ei.GetReason())
	}
	_, err = tlCall(ctx, e.S, xaaProviderRes, "whoami", nil)
	tlErrorInfo(t, err, codes.FailedPrecondition)
	for _, r := range e.MCP.Received() {
		if strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			t.Errorf("a Bearer token reached the MCP server")
		}
	}
	if ev := oaWantEvent(t, e.S, xaaTenant, "oauth.token.obtain_failed", "DPOP_REFUSED"); ev == nil || ev.GetDetails()["step"] != "jwt_bearer" {
		t.Fatalf("obtain_failed event %v", ev)
	}
	(&mcEnv{S: e.S}).noSecretAnywhere(t, xaaProviderRes, idToken, e.IdP.Issued()[0].Raw)
}
