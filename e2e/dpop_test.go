package e2e

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// dpATH is RFC 9449 section 4.2's ath of a token.
func dpATH(token string) string {
	sum := sha256.Sum256([]byte(token))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// dpCheckMCPProofs checks the proofs an MCP server accepted from first on:
// each is bound to jkt and to one of tokens (ath), names the endpoint (htu
// without query, htm), and no jti repeats. It returns how many there were.
func dpCheckMCPProofs(t *testing.T, proofs []testauthz.DPoPProof, first int, endpoint, jkt string, tokens ...string) int {
	t.Helper()
	seen := map[string]bool{}
	aths := map[string]bool{}
	for _, tk := range tokens {
		aths[dpATH(tk)] = true
	}
	for _, p := range proofs {
		if seen[p.JTI] {
			t.Errorf("jti %q used twice", p.JTI)
		}
		seen[p.JTI] = true
	}
	for _, p := range proofs[first:] {
		if p.JKT != jkt || p.HTU != endpoint || (p.HTM != http.MethodPost && p.HTM != http.MethodGet && p.HTM != http.MethodDelete) || !aths[p.ATH] || p.Typ != "dpop+jwt" || p.Alg != "ES256" {
			t.Errorf("MCP proof %+v: want jkt %s, htu %s, ath of the token", p, jkt, endpoint)
		}
	}
	return len(proofs) - first
}

// dpVerifyProof checks a proof GetAccessToken returned, with go-jose: typ,
// the jwk's thumbprint, the signature and the claims of RFC 9449 section
// 4.2.
func dpVerifyProof(t *testing.T, raw, method, htu, jkt, token, nonce string) {
	t.Helper()
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("proof does not parse: %v", err)
	}
	h := tok.Headers[0]
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); typ != "dpop+jwt" || h.JSONWebKey == nil || !h.JSONWebKey.IsPublic() {
		t.Fatalf("proof headers: typ %q, jwk %v", typ, h.JSONWebKey)
	}
	tp, _ := h.JSONWebKey.Thumbprint(crypto.SHA256)
	if got := base64.RawURLEncoding.EncodeToString(tp); got != jkt {
		t.Errorf("proof key %s, want %s", got, jkt)
	}
	var c struct {
		JTI   string           `json:"jti"`
		HTM   string           `json:"htm"`
		HTU   string           `json:"htu"`
		IAT   *jwt.NumericDate `json:"iat"`
		ATH   string           `json:"ath"`
		Nonce string           `json:"nonce"`
	}
	if err := tok.Claims(h.JSONWebKey.Key, &c); err != nil {
		t.Fatalf("proof signature: %v", err)
	}
	if c.JTI == "" || c.HTM != method || c.HTU != htu || c.ATH != dpATH(token) || c.Nonce != nonce || c.IAT == nil || time.Since(c.IAT.Time()) > time.Minute {
		t.Errorf("proof claims %+v, want htm %s htu %s nonce %q", c, method, htu, nonce)
	}
}

// dpNoPrivateKey fails when a private key in PEM or JWK form appears in
// the provider's view, the tenant's audit rows or the service's logs.
func dpNoPrivateKey(t *testing.T, s *Service, name string) {
	t.Helper()
	ctx := Ctx(t, s.AdminKey)
	p, err := s.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	texts := map[string]string{"GetProvider": provJSON(t, p), "logs": s.Logs.String()}
	for _, ev := range provAuditEvents(t, s, s.AdminKey, "acme") {
		texts["audit"] += provJSON(t, ev)
	}
	for where, text := range texts {
		for _, leak := range []string{"PRIVATE KEY", `"d":`, `\"d\":`} {
			if strings.Contains(text, leak) {
				t.Errorf("%s contains %q", where, leak)
			}
		}
	}
}

// dpKeyEvents are the tenant's provider.dpop_key.changed events, oldest
// first.
func dpKeyEvents(t *testing.T, s *Service) []*mcpauthv1.AuditEvent {
	t.Helper()
	var out []*mcpauthv1.AuditEvent
	for _, ev := range provAuditEvents(t, s, s.AdminKey, "acme") {
		if ev.GetEventType() == "provider.dpop_key.changed" {
			out = append(out, ev)
		}
	}
	slices.Reverse(out)
	return out
}

// TestDPoPAuthorizationCode: a provider in DPoP AUTO mode against an
// authorization server and an MCP server that both speak RFC 9449 and
// demand nonces. The code exchange and the refresh carry proofs signed by
// the provider's key; the nonce demand is answered once at each server;
// tokens are DPoP-bound (cnf.jkt = the key) and the refresh keeps the
// binding; every MCP request carries "DPoP <token>" with a fresh proof;
// GetAccessToken hands out a proof a caller can use; the private key shows
// up nowhere.
func TestDPoPAuthorizationCode(t *testing.T) {
	t.Parallel()
	// The token lives 20 s (due for refresh after 15 s): long enough that
	// the flow and the first calls below finish before it is due even on a
	// loaded machine (with 6 s, a slow run refreshed before the check that
	// the MCP server's nonce demand caused no refresh).
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true, AccessTokenLifetime: 20 * time.Second,
		DPoP: &testauthz.DPoPOptions{RequireNonce: true, RequireProof: true}})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as, DPoP: &testauthz.DPoPOptions{RequireNonce: true}})
	s := tlStart(t, nil)
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "acme", "dpop", mcp.URL(), func(p *mcpauthv1.Provider) {
		p.Dpop = &mcpauthv1.DpopSettings{Mode: mcpauthv1.DpopMode_DPOP_MODE_AUTO}
	})
	got, err := s.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	p := got.GetProvider()
	jkt := p.GetDpop().GetKeyThumbprint()
	if p.GetDpop().GetMode() != mcpauthv1.DpopMode_DPOP_MODE_AUTO || p.GetDpop().GetAlgorithm() != "ES256" || len(jkt) != 43 {
		t.Fatalf("dpop view = %v", p.GetDpop())
	}
	if ev := dpKeyEvents(t, s); len(ev) != 1 || ev[0].GetDetails()["change"] != "created" || ev[0].GetDetails()["jkt"] != jkt {
		t.Fatalf("dpop key events = %v", ev)
	}

	diag, err := s.OAuth().DiagnoseProvider(ctx, &mcpauthv1.DiagnoseProviderRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(diag.GetDpopSigningAlgValuesSupported(), []string{"ES256", "RS256"}) || !diag.GetDpopWillBeUsed() {
		t.Fatalf("diagnose: algs %v, will be used %v (blocking: %q, steps %v)", diag.GetDpopSigningAlgValuesSupported(), diag.GetDpopWillBeUsed(), diag.GetBlockingProblem(), diag.GetSteps())
	}

	start, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatalf("StartAuthorization: %v", err)
	}
	if code, body, _ := NewBrowser(t).Open(t, start.GetAuthorizationUrl()); code != 200 || !strings.Contains(body, "Authorization complete") {
		t.Fatalf("final page: %d %s", code, body)
	}
	// RFC 9449 section 10: the code is bound to the key (the server
	// redeems it only with a proof by that key).
	if az := as.RequestsTo("/authorize"); len(az) != 1 || az[0].Query.Get("dpop_jkt") != jkt {
		t.Errorf("authorization requests %d, dpop_jkt %q, want %s", len(az), az[0].Query.Get("dpop_jkt"), jkt)
	}
	// The exchange: one use_dpop_nonce answer, then the proof with the
	// nonce was accepted. Every token request carried a proof.
	for _, r := range as.RequestsTo("/token") {
		if len(r.Header.Values("DPoP")) != 1 {
			t.Errorf("token request %s without exactly one DPoP header", r.Form.Get("grant_type"))
		}
	}
	if n := as.DPoPNonceChallenges(); n != 1 {
		t.Errorf("%d use_dpop_nonce answers at the token endpoint, want 1 (refused: %v)", n, as.DPoPRefused())
	}
	proofs := as.DPoPProofs()
	if len(proofs) != 1 || proofs[0].JKT != jkt || proofs[0].HTU != as.URL+"/token" || proofs[0].HTM != "POST" || proofs[0].Nonce == "" {
		t.Fatalf("token endpoint proofs = %+v", proofs)
	}

	tok, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name})
	if err != nil {
		t.Fatalf("GetAccessToken: %v", err)
	}
	if tok.GetTokenType() != "DPoP" || tok.GetDpopKeyThumbprint() != jkt || as.TokenJKT(tok.GetAccessToken()) != jkt {
		t.Fatalf("token type %q, thumbprint %q, server binding %q; want DPoP bound to %s", tok.GetTokenType(), tok.GetDpopKeyThumbprint(), as.TokenJKT(tok.GetAccessToken()), jkt)
	}

	// Tools through mcpauth: every MCP request proven afresh.
	tl := &mcEnv{S: s, AS: as, MCP: mcp}
	tl.callEcho(t, name)
	tl.callEcho(t, name)
	n := dpCheckMCPProofs(t, mcp.DPoPProofs(), 0, mcp.URL(), jkt, tok.GetAccessToken())
	if n < 4 {
		t.Errorf("%d MCP requests proven, want at least 4 (initialize, list, 2 calls)", n)
	}
	// One MCP session serves every call (the key read again for each call
	// is the same key): its initialize request is sent twice, the first
	// time refused for the nonce.
	var inits int
	for _, r := range mcp.Received() {
		if strings.Contains(string(r.Body), `"method":"initialize"`) {
			inits++
		}
	}
	if inits != 2 {
		t.Errorf("%d initialize requests, want 2 (one session, one nonce retry)", inits)
	}
	if c := mcp.DPoPNonceChallenges(); c != 1 {
		t.Errorf("%d use_dpop_nonce answers at the MCP server, want 1 (refused: %v)", c, mcp.DPoPRefused())
	}
	if b := mcp.BearerAttempts(); b != 0 {
		t.Errorf("%d requests fell back to Bearer", b)
	}
	// The MCP server's nonce demand is a 401, but not a token rejection:
	// it caused no refresh and recorded no challenge.
	if r := as.RefreshCount(); r != 0 {
		t.Errorf("%d refreshes after the MCP server's nonce demand, want 0", r)
	}
	for _, ev := range provAuditEvents(t, s, s.AdminKey, "acme") {
		if ev.GetEventType() == "mcp.challenge.recorded" {
			t.Errorf("the nonce demand was recorded as a challenge: %v", ev)
		}
	}

	// Refresh (the token is due after three quarters of its 20 seconds):
	// proven with the same key, and the new token is bound to it too.
	var fresh *mcpauthv1.GetAccessTokenResponse
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if fresh, err = s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name}); err != nil {
			t.Fatalf("GetAccessToken: %v", err)
		}
		if fresh.GetAccessToken() != tok.GetAccessToken() {
			break
		}
	}
	if fresh.GetAccessToken() == tok.GetAccessToken() || as.RefreshCount() < 1 {
		t.Fatalf("no refresh happened (refreshes %d)", as.RefreshCount())
	}
	var refreshes int
	for _, r := range as.RequestsTo("/token") {
		if r.Form.Get("grant_type") == "refresh_token" {
			refreshes++
		}
	}
	proofs = as.DPoPProofs()
	if len(proofs) != 1+refreshes {
		t.Errorf("%d token endpoint proofs for 1 exchange and %d refreshes", len(proofs), refreshes)
	}
	for _, pr := range proofs {
		if pr.JKT != jkt {
			t.Errorf("a token request was proven with key %s, want %s", pr.JKT, jkt)
		}
	}
	if fresh.GetTokenType() != "DPoP" || as.TokenJKT(fresh.GetAccessToken()) != jkt {
		t.Errorf("refreshed token type %q bound to %q, want DPoP bound to %s", fresh.GetTokenType(), as.TokenJKT(fresh.GetAccessToken()), jkt)
	}
	if n := as.DPoPNonceChallenges(); n != 1 {
		t.Errorf("%d use_dpop_nonce answers after the refresh, want still 1 (the nonce is remembered)", n)
	}
	before := len(mcp.DPoPProofs())
	tl.callEcho(t, name)
	if n := dpCheckMCPProofs(t, mcp.DPoPProofs(), before, mcp.URL(), jkt, tok.GetAccessToken(), fresh.GetAccessToken()); n < 1 {
		t.Error("no MCP request after the refresh")
	}

	// A proof for the caller's own request: first without the server's
	// nonce (the MCP server asks for one), then with it (accepted).
	target := mcp.URL() + "?trace=1"
	init := []byte(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"caller","version":"1"}}}`)
	send := func(nonce string) (*http.Response, *mcpauthv1.GetAccessTokenResponse) {
		t.Helper()
		g, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name, DpopMethod: "POST", DpopUrl: target, DpopNonce: nonce})
		if err != nil {
			t.Fatalf("GetAccessToken with a proof request: %v", err)
		}
		dpVerifyProof(t, g.GetDpopProof(), "POST", mcp.URL(), jkt, g.GetAccessToken(), nonce)
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, target, bytes.NewReader(init))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Authorization", "DPoP "+g.GetAccessToken())
		req.Header.Set("DPoP", g.GetDpopProof())
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res, g
	}
	// The MCP server's nonce is known to mcpauth's MCP client, not to the
	// caller: a caller's first proof has none. The server demands it.
	res, _ := send("")
	if res.StatusCode != http.StatusUnauthorized || !strings.Contains(res.Header.Get("WWW-Authenticate"), "use_dpop_nonce") || res.Header.Get("DPoP-Nonce") == "" {
		t.Fatalf("caller's proof without nonce: %d %q", res.StatusCode, res.Header.Get("WWW-Authenticate"))
	}
	if res, _ = send(res.Header.Get("DPoP-Nonce")); res.StatusCode != http.StatusOK {
		t.Fatalf("caller's proof with the nonce: %d %q (refused: %v)", res.StatusCode, res.Header.Get("WWW-Authenticate"), mcp.DPoPRefused())
	}

	// Bad proof requests change nothing and ask nothing of anyone.
	tokenCalls := len(as.RequestsTo("/token"))
	for _, bad := range []*mcpauthv1.GetAccessTokenRequest{
		{Name: name, DpopMethod: "POST"},
		{Name: name, DpopMethod: "PO ST", DpopUrl: target},
		{Name: name, DpopMethod: "GET", DpopUrl: "ftp://example.com/x"},
		{Name: name, DpopMethod: "GET", DpopUrl: target, DpopNonce: "bad\"nonce"},
	} {
		_, err := s.OAuth().GetAccessToken(ctx, bad)
		oaWantErr(t, err, codes.InvalidArgument, "")
	}
	// Proofs only for the provider's own MCP server (origin, and a path at
	// or below its path): never for the authorization server's token
	// endpoint or any other URL, so mcpauth is no proof oracle.
	reads := len(provAuditEvents(t, s, s.AdminKey, "acme"))
	for _, u := range []string{as.URL + "/token", mcp.Origin() + "/admin", mcp.URL() + "x", mcp.URL() + "/../admin",
		mcp.URL() + "/%2e%2e/admin", strings.Replace(mcp.URL(), "http://", "https://", 1), "http://localhost" + strings.TrimPrefix(mcp.Origin(), "http://127.0.0.1")} {
		_, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name, DpopMethod: "POST", DpopUrl: u})
		st := provWantField(t, err, codes.InvalidArgument, "dpop_url")
		if strings.Contains(st.Message(), mcp.URL()) {
			t.Errorf("the error repeats the server URL: %q", st.Message())
		}
	}
	_, err = s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name, DpopMethod: "GET", DpopUrl: mcp.URL() + "/sub?x=1"})
	if err != nil {
		t.Errorf("a proof for a path below the MCP endpoint: %v", err)
	}
	if got := len(provAuditEvents(t, s, s.AdminKey, "acme")); got != reads {
		t.Errorf("refused proof requests wrote %d audit events", got-reads)
	}
	if got := len(as.RequestsTo("/token")); got != tokenCalls {
		t.Errorf("bad proof requests reached the token endpoint")
	}
	dpNoPrivateKey(t, s, name)
}

// TestDPoPClientCredentials: a client_credentials provider in DPoP
// REQUIRED mode. The token request is proven (after the server's nonce
// demand), the token is DPoP-bound, tools work with proofs per request;
// rotating the key is audited, drops the tokens bound to the old key, and
// the next token is bound to the new key.
func TestDPoPClientCredentials(t *testing.T) {
	t.Parallel()
	dp := &testauthz.DPoPOptions{RequireNonce: true, RequireProof: true}
	as := testauthz.NewMachineAuthServer(t, testauthz.MachineOptions{DPoP: dp})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as, DPoP: &testauthz.DPoPOptions{RequireNonce: true}})
	e := &mcEnv{AS: as, MCP: mcp, S: tlStart(t, nil)}
	const secret = "s3cret-dpop-machine-1234567890"
	as.RegisterMachineClient(testauthz.MachineClient{ID: "svc", Secret: secret})
	p := e.create(t, "ccdpop", &mcpauthv1.Provider{CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_CLIENT_CREDENTIALS,
		OauthClient: &mcpauthv1.OAuthClient{ClientId: "svc", ClientSecret: secret},
		Dpop:        &mcpauthv1.DpopSettings{Mode: mcpauthv1.DpopMode_DPOP_MODE_REQUIRED}})
	jkt := p.GetDpop().GetKeyThumbprint()
	if jkt == "" || p.GetDpop().GetMode() != mcpauthv1.DpopMode_DPOP_MODE_REQUIRED {
		t.Fatalf("dpop view = %v", p.GetDpop())
	}
	tok, err := e.token(t, p.GetName())
	if err != nil {
		t.Fatalf("GetAccessToken: %v", err)
	}
	if tok.GetTokenType() != "DPoP" || as.TokenJKT(tok.GetAccessToken()) != jkt {
		t.Fatalf("token type %q bound to %q, want DPoP bound to %s", tok.GetTokenType(), as.TokenJKT(tok.GetAccessToken()), jkt)
	}
	reqs := e.tokenRequests()
	if len(reqs) != 2 || as.DPoPNonceChallenges() != 1 {
		t.Fatalf("%d token requests with %d nonce demands, want 2 and 1 (refused %v)", len(reqs), as.DPoPNonceChallenges(), as.DPoPRefused())
	}
	for _, r := range reqs {
		if r.Form.Get("grant_type") != "client_credentials" || len(r.Header.Values("DPoP")) != 1 {
			t.Errorf("token request: grant %q, DPoP headers %d", r.Form.Get("grant_type"), len(r.Header.Values("DPoP")))
		}
	}
	if pr := as.DPoPProofs(); len(pr) != 1 || pr[0].JKT != jkt || pr[0].Nonce == "" || pr[0].ATH != "" {
		t.Fatalf("accepted token endpoint proofs = %+v", pr)
	}
	e.callEcho(t, p.GetName())
	if n := dpCheckMCPProofs(t, mcp.DPoPProofs(), 0, mcp.URL(), jkt, tok.GetAccessToken()); n < 3 {
		t.Errorf("%d MCP requests proven, want at least 3", n)
	}
	if mcp.DPoPNonceChallenges() != 1 || mcp.BearerAttempts() != 0 {
		t.Errorf("MCP server: %d nonce demands (want 1), %d Bearer attempts (want 0)", mcp.DPoPNonceChallenges(), mcp.BearerAttempts())
	}

	// Rotate the key.
	ctx := Ctx(t, e.S.AdminKey)
	up, err := e.S.Providers().UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
		Provider:   &mcpauthv1.Provider{Name: p.GetName(), Dpop: &mcpauthv1.DpopSettings{Mode: mcpauthv1.DpopMode_DPOP_MODE_REQUIRED, RotateKey: true}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"dpop"}},
	})
	if err != nil {
		t.Fatalf("UpdateProvider: %v", err)
	}
	jkt2 := up.GetProvider().GetDpop().GetKeyThumbprint()
	if jkt2 == "" || jkt2 == jkt {
		t.Fatalf("rotated thumbprint %q (old %q)", jkt2, jkt)
	}
	ev := dpKeyEvents(t, e.S)
	if len(ev) != 2 || ev[1].GetDetails()["change"] != "rotated" || ev[1].GetDetails()["jkt"] != jkt2 {
		t.Fatalf("dpop key events = %v", ev)
	}
	tok2, err := e.token(t, p.GetName())
	if err != nil {
		t.Fatalf("GetAccessToken after rotation: %v", err)
	}
	if tok2.GetAccessToken() == tok.GetAccessToken() || as.TokenJKT(tok2.GetAccessToken()) != jkt2 || tok2.GetDpopKeyThumbprint() != jkt2 {
		t.Fatalf("after rotation: same token %v, bound to %q, want %s", tok2.GetAccessToken() == tok.GetAccessToken(), as.TokenJKT(tok2.GetAccessToken()), jkt2)
	}
	before := len(mcp.DPoPProofs())
	e.callEcho(t, p.GetName())
	dpCheckMCPProofs(t, mcp.DPoPProofs(), before, mcp.URL(), jkt2, tok2.GetAccessToken())
	dpNoPrivateKey(t, e.S, p.GetName())
	e.noSecretAnywhere(t, p.GetName(), secret, tok.GetAccessToken(), tok2.GetAccessToken())
}

// TestDPoPRequiredNoFallback: a provider that requires DPoP, against an
// authorization server that ignores the proof and issues a Bearer token:
// the token is refused (DPOP_REFUSED), the server is asked once, and no
// Bearer token is ever sent to the MCP server.
func TestDPoPRequiredNoFallback(t *testing.T) {
	t.Parallel()
	as := testauthz.NewMachineAuthServer(t, testauthz.MachineOptions{})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	e := &mcEnv{AS: as, MCP: mcp, S: tlStart(t, nil)}
	as.RegisterMachineClient(testauthz.MachineClient{ID: "svc", Secret: "s3cret-nofallback-123456"})
	p := e.create(t, "nofallback", &mcpauthv1.Provider{CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_CLIENT_CREDENTIALS,
		OauthClient: &mcpauthv1.OAuthClient{ClientId: "svc", ClientSecret: "s3cret-nofallback-123456"},
		Dpop:        &mcpauthv1.DpopSettings{Mode: mcpauthv1.DpopMode_DPOP_MODE_REQUIRED}})
	diag, err := e.S.OAuth().DiagnoseProvider(Ctx(t, e.S.AdminKey), &mcpauthv1.DiagnoseProviderRequest{Name: p.GetName()})
	if err != nil || len(diag.GetDpopSigningAlgValuesSupported()) != 0 || !diag.GetDpopWillBeUsed() {
		t.Fatalf("diagnose: %v, algs %v, will be used %v", err, diag.GetDpopSigningAlgValuesSupported(), diag.GetDpopWillBeUsed())
	}
	_, err = e.token(t, p.GetName())
	oaWantErr(t, err, codes.FailedPrecondition, "DPOP_REFUSED")
	_, err = e.S.Tools().RefreshTools(Ctx(t, e.S.AdminKey), &mcpauthv1.RefreshToolsRequest{Name: p.GetName()})
	oaWantErr(t, err, codes.FailedPrecondition, "DPOP_REFUSED")
	reqs := e.tokenRequests()
	if len(reqs) != 1 || len(reqs[0].Header.Values("DPoP")) != 1 {
		t.Fatalf("%d token requests (want 1, with a proof)", len(reqs))
	}
	for _, r := range mcp.Received() {
		if strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			t.Errorf("a Bearer token reached the MCP server")
		}
	}
	if ev := oaWantEvent(t, e.S, "acme", "oauth.token.obtain_failed", "DPOP_REFUSED"); ev == nil {
		t.Fatal("no obtain_failed event")
	}
}
