package e2e

import (
	"encoding/base64"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// Client credentials of mcpauth at the test identity provider and at the
// MCP server's authorization server.
const (
	xaaIdPClient   = "mcpauth-at-idp"
	xaaIdPSecret   = "idp-secret-value-0123456789abcdef"
	xaaASClient    = "mcpauth-at-as"
	xaaASSecret    = "as-secret-value-0123456789abcdef"
	xaaTenant      = "acme"
	xaaProviderID  = "xaa"
	xaaProviderRes = "tenants/" + xaaTenant + "/providers/" + xaaProviderID
)

// xaaEnv is enterprise-managed authorization end to end: an identity
// provider, an authorization server accepting its ID-JAGs, a go-sdk MCP
// server protected by that server, and mcpauth.
type xaaEnv struct {
	S   *Service
	IdP *testauthz.IdentityProvider
	AS  *testauthz.AuthServer
	MCP *testauthz.MCPServer
}

// xaaStart starts the servers. asClient is the client id the identity
// provider names in its ID-JAGs (the client mcpauth is at the
// authorization server, unless a test wants them to disagree).
// With opt.DPoP, the MCP server too accepts only DPoP-bound tokens and
// demands its nonce; mut changes the provider before it is created.
func xaaStart(t *testing.T, opt testauthz.MachineOptions, asClient string, mut ...func(*mcpauthv1.Provider)) *xaaEnv {
	t.Helper()
	e := &xaaEnv{IdP: testauthz.NewIdentityProvider(t)}
	opt.IDJAG, opt.AuthMethods = true, []string{"client_secret_basic"}
	e.AS = testauthz.NewMachineAuthServer(t, opt)
	mcpOpt := testauthz.MCPServerOptions{Auth: e.AS}
	if opt.DPoP != nil {
		mcpOpt.DPoP = &testauthz.DPoPOptions{RequireNonce: true}
	}
	e.MCP = testauthz.NewMCPServer(t, mcpOpt)
	e.AS.TrustIdentityProvider(e.IdP.URL, e.IdP.JWKSURL(), e.MCP.URL())
	e.AS.RegisterMachineClient(testauthz.MachineClient{ID: xaaASClient, Secret: xaaASSecret})
	e.IdP.RegisterClient(xaaIdPClient, xaaIdPSecret)
	e.IdP.Allow(e.AS.URL, e.MCP.URL(), asClient, []string{"mcp.read", "mcp.write"})
	e.S = tlStart(t, nil)
	ctx := Ctx(t, e.S.AdminKey)
	p := &mcpauthv1.Provider{DisplayName: "xaa", ServerIdentifier: "xaa", ServerUrl: e.MCP.URL(),
		CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_ENTERPRISE_MANAGED,
		OauthClient:    &mcpauthv1.OAuthClient{ClientId: xaaASClient, ClientSecret: xaaASSecret},
		EnterpriseIdentityProvider: &mcpauthv1.EnterpriseIdentityProvider{Issuer: e.IdP.URL, ClientId: xaaIdPClient,
			ClientSecret: xaaIdPSecret}}
	for _, m := range mut {
		m(p)
	}
	_, err := e.S.Providers().CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/" + xaaTenant, ProviderId: xaaProviderID,
		Provider: p})
	if err != nil {
		t.Fatalf("CreateProvider: %v", err)
	}
	return e
}

func (e *xaaEnv) exchange(t *testing.T, user, idToken string) (*mcpauthv1.ExchangeIdentityAssertionResponse, error) {
	t.Helper()
	return e.S.OAuth().ExchangeIdentityAssertion(Ctx(t, e.S.AdminKey),
		&mcpauthv1.ExchangeIdentityAssertionRequest{Name: xaaProviderRes, User: user, IdToken: idToken})
}

// basicUser decodes the client id of an HTTP Basic Authorization header
// (RFC 6749 section 2.3.1: form-url-encoded before Basic encoding).
func basicUser(t *testing.T, h string) string {
	t.Helper()
	raw, ok := strings.CutPrefix(h, "Basic ")
	if !ok {
		t.Fatalf("Authorization %q is not Basic", h)
	}
	b, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		t.Fatal(err)
	}
	user, _, _ := strings.Cut(string(b), ":")
	u, err := url.QueryUnescape(user)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestEnterpriseManagedAuthorization: alice's ID token becomes an ID-JAG
// at the identity provider (RFC 8693 token exchange, every parameter as the
// extension asks) and an access token at the authorization server (JWT
// bearer grant, client_secret_basic); the tools see alice; the ID token
// and the ID-JAG appear in no response, log or audit row.
func TestEnterpriseManagedAuthorization(t *testing.T) {
	t.Parallel()
	e := xaaStart(t, testauthz.MachineOptions{}, xaaASClient)
	ctx := Ctx(t, e.S.AdminKey)

	// Before any ID token: the platform is told what to supply.
	_, err := e.S.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: xaaProviderRes})
	if ei := tlErrorInfo(t, err, codes.FailedPrecondition); ei.GetReason() != "ID_TOKEN_REQUIRED" {
		t.Fatalf("GetAccessToken before the exchange: reason %q, want ID_TOKEN_REQUIRED", ei.GetReason())
	}
	if n := len(e.IdP.RequestsTo("/token")) + len(e.AS.RequestsTo("/token")); n != 0 {
		t.Fatalf("%d token requests before any ID token", n)
	}

	idToken := e.IdP.IDToken(t, "alice", xaaIdPClient, 10*time.Minute)
	resp, err := e.exchange(t, "alice", idToken)
	if err != nil {
		t.Fatalf("ExchangeIdentityAssertion: %v", err)
	}
	if resp.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED || resp.GetIssuer() != e.AS.URL ||
		resp.GetHasRefreshToken() || resp.GetExpireTime() == nil {
		t.Fatalf("ExchangeIdentityAssertion = %v", resp)
	}

	// The token exchange on the wire (the extension, section 4).
	ex := e.IdP.RequestsTo("/token")
	if len(ex) != 1 {
		t.Fatalf("identity provider token requests = %d, want 1", len(ex))
	}
	want := map[string]string{
		"grant_type":           testauthz.GrantTokenExchange,
		"requested_token_type": testauthz.TokenTypeIDJAG,
		"subject_token":        idToken,
		"subject_token_type":   testauthz.TokenTypeIDToken,
		"audience":             e.AS.URL,
		"resource":             e.MCP.URL(),
		"scope":                "mcp.read mcp.write",
	}
	for k, v := range want {
		if got := ex[0].Form.Get(k); got != v {
			t.Errorf("token exchange %s = %q, want %q", k, got, v)
		}
	}
	if got := basicUser(t, ex[0].Header.Get("Authorization")); got != xaaIdPClient || ex[0].Form.Has("client_secret") {
		t.Errorf("token exchange client authentication: basic user %q, client_secret in form %v", got, ex[0].Form.Has("client_secret"))
	}
	issued := e.IdP.Issued()
	if len(issued) != 1 {
		t.Fatalf("ID-JAGs issued = %d", len(issued))
	}
	jag := issued[0]
	if jag.Subject != "alice" || jag.Audience != e.AS.URL || jag.ClientID != xaaASClient || jag.Resource != e.MCP.URL() {
		t.Errorf("ID-JAG claims %+v", jag)
	}

	// The JWT bearer grant on the wire (the extension, section 5).
	as := e.AS.RequestsTo("/token")
	if len(as) != 1 {
		t.Fatalf("authorization server token requests = %d, want 1", len(as))
	}
	if got := as[0].Form.Get("grant_type"); got != testauthz.GrantJWTBearer {
		t.Errorf("grant_type = %q", got)
	}
	if got := as[0].Form.Get("assertion"); got != jag.Raw {
		t.Errorf("assertion is not the ID-JAG the identity provider issued")
	}
	if got := basicUser(t, as[0].Header.Get("Authorization")); got != xaaASClient || as[0].Form.Has("client_secret") || as[0].Form.Has("client_assertion") {
		t.Errorf("grant client authentication: basic user %q, form %v", got, as[0].Form)
	}
	if as[0].Form.Get("resource") != e.MCP.URL() {
		t.Errorf("grant resource = %q", as[0].Form.Get("resource"))
	}
	if e.AS.IDJAGGrants() != 1 {
		t.Errorf("ID-JAGs accepted = %d", e.AS.IDJAGGrants())
	}

	// The tools run as alice.
	tok, err := e.S.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: xaaProviderRes})
	if err != nil {
		t.Fatalf("GetAccessToken: %v", err)
	}
	info, err := e.AS.ValidateToken(t.Context(), tok.GetAccessToken())
	if err != nil || info.Subject != "alice" {
		t.Fatalf("token subject %q (%v), want alice", info.Subject, err)
	}
	if _, err := e.S.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: xaaProviderRes}); err != nil {
		t.Fatalf("RefreshTools: %v", err)
	}
	who := tlMustCall(t, e.S, xaaProviderRes, "whoami", nil)
	if got := who.GetStructuredContent().AsMap()["subject"]; got != "alice" {
		t.Fatalf("whoami subject %v, want alice", got)
	}
	if len(e.IdP.RequestsTo("/token")) != 1 || len(e.AS.RequestsTo("/token")) != 1 {
		t.Errorf("tool calls made more token requests")
	}

	// DiagnoseProvider reports both servers.
	d, err := e.S.OAuth().DiagnoseProvider(ctx, &mcpauthv1.DiagnoseProviderRequest{Name: xaaProviderRes})
	if err != nil {
		t.Fatalf("DiagnoseProvider: %v", err)
	}
	if d.GetCredentialKind() != mcpauthv1.CredentialKind_CREDENTIAL_KIND_ENTERPRISE_MANAGED || !d.GetReady() ||
		d.GetGrantType() != testauthz.GrantJWTBearer || d.GetTokenEndpointAuthMethod() != "client_secret_basic" ||
		d.GetIdentityProviderIssuer() != e.IdP.URL ||
		strings.Join(d.GetIdentityProviderGrantTypesSupported(), " ") != testauthz.GrantTokenExchange ||
		strings.Join(d.GetAuthorizationGrantProfilesSupported(), " ") != testauthz.GrantProfileIDJAG ||
		strings.Join(d.GetIdentityProviderTokenEndpointAuthMethodsSupported(), " ") != "client_secret_basic client_secret_post private_key_jwt" ||
		d.GetIdentityProviderTokenEndpointAuthMethod() != "client_secret_basic" {
		t.Errorf("DiagnoseProvider = %v", d)
	}

	// The provider view: the identity provider without its secret.
	p, err := e.S.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: xaaProviderRes})
	if err != nil {
		t.Fatal(err)
	}
	if idp := p.GetProvider().GetEnterpriseIdentityProvider(); idp.GetIssuer() != e.IdP.URL || idp.GetClientId() != xaaIdPClient ||
		!idp.GetClientSecretSet() || idp.GetClientSecret() != "" {
		t.Errorf("enterprise_identity_provider = %v", idp)
	}

	// Audited without the ID token or the ID-JAG; neither is in any
	// response or log either.
	var obtained bool
	for _, ev := range provAuditEvents(t, e.S, e.S.AdminKey, xaaTenant) {
		if ev.GetEventType() == "oauth.token.obtained" && ev.GetDetails()["kind"] == "enterprise_managed" && ev.GetDetails()["user"] == "alice" {
			obtained = true
		}
	}
	if !obtained {
		t.Error("no oauth.token.obtained event for alice")
	}
	(&mcEnv{S: e.S}).noSecretAnywhere(t, xaaProviderRes, idToken, jag.Raw, xaaIdPSecret, xaaASSecret)
	for _, m := range []string{provJSON(t, resp), provJSON(t, d)} {
		if strings.Contains(m, idToken) || strings.Contains(m, jag.Raw) {
			t.Error("a response carries the ID token or the ID-JAG")
		}
	}
}

// TestEnterpriseManagedExpiry: without a refresh token, an expired access
// token is not renewed by anything mcpauth holds; reads and tool calls say
// a fresh ID token is needed, and nothing is asked of either server.
func TestEnterpriseManagedExpiry(t *testing.T) {
	t.Parallel()
	e := xaaStart(t, testauthz.MachineOptions{AccessTokenLifetime: 2 * time.Second}, xaaASClient)
	ctx := Ctx(t, e.S.AdminKey)
	resp, err := e.exchange(t, "alice", e.IdP.IDToken(t, "alice", xaaIdPClient, 10*time.Minute))
	if err != nil {
		t.Fatalf("ExchangeIdentityAssertion: %v", err)
	}
	time.Sleep(time.Until(resp.GetExpireTime().AsTime()) + 500*time.Millisecond)
	_, err = e.S.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: xaaProviderRes})
	ei := tlErrorInfo(t, err, codes.FailedPrecondition)
	if ei.GetReason() != "ID_TOKEN_REQUIRED" {
		t.Fatalf("GetAccessToken after expiry: reason %q, want ID_TOKEN_REQUIRED", ei.GetReason())
	}
	_, err = tlCall(ctx, e.S, xaaProviderRes, "whoami", nil)
	if ei := tlErrorInfo(t, err, codes.FailedPrecondition); ei.GetReason() != "ID_TOKEN_REQUIRED" {
		t.Fatalf("CallTool after expiry: reason %q, want ID_TOKEN_REQUIRED", ei.GetReason())
	}
	if a, b := len(e.IdP.RequestsTo("/token")), len(e.AS.RequestsTo("/token")); a != 1 || b != 1 {
		t.Fatalf("token requests: identity provider %d, authorization server %d; want 1 and 1", a, b)
	}
	// A fresh ID token gets a fresh token.
	if _, err := e.exchange(t, "alice", e.IdP.IDToken(t, "alice", xaaIdPClient, 10*time.Minute)); err != nil {
		t.Fatalf("second ExchangeIdentityAssertion: %v", err)
	}
	who := tlMustCall(t, e.S, xaaProviderRes, "whoami", nil)
	if got := who.GetStructuredContent().AsMap()["subject"]; got != "alice" {
		t.Fatalf("whoami subject %v, want alice", got)
	}
}

// TestEnterpriseManagedErrors: an invalid_grant at either step comes back
// as it is, once, with no retry and no other grant type tried, and is
// audited without the ID token.
func TestEnterpriseManagedErrors(t *testing.T) {
	t.Parallel()
	t.Run("identity provider", func(t *testing.T) {
		t.Parallel()
		e := xaaStart(t, testauthz.MachineOptions{}, xaaASClient)
		expired := e.IdP.IDToken(t, "alice", xaaIdPClient, -time.Minute)
		_, err := e.exchange(t, "alice", expired)
		ei := tlErrorInfo(t, err, codes.FailedPrecondition)
		if ei.GetReason() != "IDENTITY_PROVIDER_REFUSED" || ei.GetMetadata()["oauth_error"] != "invalid_grant" || ei.GetMetadata()["step"] != "token_exchange" {
			t.Fatalf("error info %v", ei)
		}
		if a, b := len(e.IdP.RequestsTo("/token")), len(e.AS.RequestsTo("/token")); a != 1 || b != 0 {
			t.Fatalf("token requests: identity provider %d, authorization server %d; want 1 and 0", a, b)
		}
		xaaWantFailureAudited(t, e, "IDENTITY_PROVIDER_REFUSED", "token_exchange")
		(&mcEnv{S: e.S}).noSecretAnywhere(t, xaaProviderRes, expired, xaaIdPSecret)
	})
	t.Run("authorization server", func(t *testing.T) {
		t.Parallel()
		// The identity provider names another client in its ID-JAGs than
		// the one that presents them: the authorization server refuses.
		e := xaaStart(t, testauthz.MachineOptions{}, "another-client")
		idToken := e.IdP.IDToken(t, "alice", xaaIdPClient, 10*time.Minute)
		_, err := e.exchange(t, "alice", idToken)
		ei := tlErrorInfo(t, err, codes.FailedPrecondition)
		if ei.GetReason() != "INVALID_GRANT" || ei.GetMetadata()["oauth_error"] != "invalid_grant" || ei.GetMetadata()["step"] != "jwt_bearer" {
			t.Fatalf("error info %v", ei)
		}
		as := e.AS.RequestsTo("/token")
		if len(as) != 1 || as[0].Form.Get("grant_type") != testauthz.GrantJWTBearer {
			t.Fatalf("authorization server token requests = %d (want exactly one JWT bearer grant)", len(as))
		}
		if n := len(e.IdP.RequestsTo("/token")); n != 1 {
			t.Fatalf("identity provider token requests = %d, want 1", n)
		}
		// Nothing was stored: reads still ask for an ID token.
		_, err = e.S.OAuth().GetAccessToken(Ctx(t, e.S.AdminKey), &mcpauthv1.GetAccessTokenRequest{Name: xaaProviderRes})
		if ei := tlErrorInfo(t, err, codes.FailedPrecondition); ei.GetReason() != "ID_TOKEN_REQUIRED" {
			t.Fatalf("GetAccessToken: reason %q", ei.GetReason())
		}
		if len(e.AS.RequestsTo("/token")) != 1 {
			t.Fatal("a read asked the authorization server again")
		}
		xaaWantFailureAudited(t, e, "INVALID_GRANT", "jwt_bearer")
		(&mcEnv{S: e.S}).noSecretAnywhere(t, xaaProviderRes, idToken, e.IdP.Issued()[0].Raw)
	})
	t.Run("no ID-JAG profile", func(t *testing.T) {
		t.Parallel()
		// The server lists its grant profiles without the ID-JAG one (the
		// ID-JAG draft, section 7.2): refused before the ID token goes
		// anywhere; DiagnoseProvider shows the profiles and says why.
		e := xaaStart(t, testauthz.MachineOptions{GrantProfiles: []string{"urn:example:grant-profile:other"}}, xaaASClient)
		idToken := e.IdP.IDToken(t, "alice", xaaIdPClient, 10*time.Minute)
		_, err := e.exchange(t, "alice", idToken)
		ei := tlErrorInfo(t, err, codes.FailedPrecondition)
		if ei.GetReason() != "ID_JAG_NOT_SUPPORTED" || ei.GetMetadata()["step"] != "discovery" {
			t.Fatalf("error info %v", ei)
		}
		if a, b := len(e.IdP.RequestsTo("/token")), len(e.AS.RequestsTo("/token")); a != 0 || b != 0 {
			t.Fatalf("token requests: identity provider %d, authorization server %d; want none", a, b)
		}
		if ev := oaWantEvent(t, e.S, xaaTenant, "oauth.token.obtain_failed", "ID_JAG_NOT_SUPPORTED"); ev.GetDetails()["step"] != "discovery" {
			t.Errorf("obtain_failed details %v", ev.GetDetails())
		}
		d, err := e.S.OAuth().DiagnoseProvider(Ctx(t, e.S.AdminKey), &mcpauthv1.DiagnoseProviderRequest{Name: xaaProviderRes})
		if err != nil || d.GetReady() || !strings.Contains(d.GetBlockingProblem(), testauthz.GrantProfileIDJAG) ||
			strings.Join(d.GetAuthorizationGrantProfilesSupported(), " ") != "urn:example:grant-profile:other" {
			t.Fatalf("DiagnoseProvider = %v, %v", d, err)
		}
		(&mcEnv{S: e.S}).noSecretAnywhere(t, xaaProviderRes, idToken)
	})
	t.Run("bad input", func(t *testing.T) {
		t.Parallel()
		e := xaaStart(t, testauthz.MachineOptions{}, xaaASClient)
		for _, tok := range []string{"", "not-a-jwt", "a.b", "a.b.c d", strings.Repeat("a", 17<<10) + ".b.c"} {
			_, err := e.exchange(t, "alice", tok)
			provWantField(t, err, codes.InvalidArgument, "id_token")
		}
		if a, b := len(e.IdP.RequestsTo("/token")), len(e.AS.RequestsTo("/token")); a != 0 || b != 0 {
			t.Fatalf("bad input reached the servers: %d, %d", a, b)
		}
	})
}

// xaaWantFailureAudited finds the oauth.token.obtain_failed event of a
// failed exchange.
func xaaWantFailureAudited(t *testing.T, e *xaaEnv, reason, step string) {
	t.Helper()
	for _, ev := range provAuditEvents(t, e.S, e.S.AdminKey, xaaTenant) {
		if ev.GetEventType() == "oauth.token.obtain_failed" && ev.GetReason() == reason && ev.GetDetails()["step"] == step &&
			ev.GetDetails()["oauth_error"] == "invalid_grant" {
			return
		}
	}
	t.Errorf("no oauth.token.obtain_failed event with reason %s at %s", reason, step)
}

// TestEnterpriseManagedRefresh: when the authorization server issues a
// refresh token with the ID-JAG grant, an expired token is refreshed as
// usual, without a new ID token.
func TestEnterpriseManagedRefresh(t *testing.T) {
	t.Parallel()
	e := xaaStart(t, testauthz.MachineOptions{AccessTokenLifetime: 2 * time.Second, IDJAGRefresh: true}, xaaASClient)
	resp, err := e.exchange(t, "alice", e.IdP.IDToken(t, "alice", xaaIdPClient, 10*time.Minute))
	if err != nil || !resp.GetHasRefreshToken() {
		t.Fatalf("ExchangeIdentityAssertion = %v, %v; want a refresh token", resp, err)
	}
	time.Sleep(time.Until(resp.GetExpireTime().AsTime()) + 500*time.Millisecond)
	tok, err := e.S.OAuth().GetAccessToken(Ctx(t, e.S.AdminKey), &mcpauthv1.GetAccessTokenRequest{Name: xaaProviderRes})
	if err != nil {
		t.Fatalf("GetAccessToken after expiry: %v\n%s", err, e.S.Logs.String())
	}
	if info, err := e.AS.ValidateToken(t.Context(), tok.GetAccessToken()); err != nil || info.Subject != "alice" {
		t.Fatalf("refreshed token subject %q (%v)", info.Subject, err)
	}
	as := e.AS.RequestsTo("/token")
	if len(as) != 2 || as[1].Form.Get("grant_type") != "refresh_token" || basicUser(t, as[1].Header.Get("Authorization")) != xaaASClient {
		t.Fatalf("authorization server token requests: %d (want the grant, then one refresh)", len(as))
	}
	if n := len(e.IdP.RequestsTo("/token")); n != 1 {
		t.Fatalf("identity provider token requests = %d, want 1", n)
	}
}

// TestEnterpriseManagedREST: the REST mapping of ExchangeIdentityAssertion
// on the gateway; its answer carries no token and not the ID token.
func TestEnterpriseManagedREST(t *testing.T) {
	t.Parallel()
	e := xaaStart(t, testauthz.MachineOptions{}, xaaASClient)
	idToken := e.IdP.IDToken(t, "bob", xaaIdPClient, 10*time.Minute)
	code, _, body := provHTTP(t, e.S, "POST", "/v1/"+xaaProviderRes+":exchangeIdentityAssertion", e.S.AdminKey,
		`{"user":"bob","idToken":"`+idToken+`"}`, nil)
	if code != 200 || !strings.Contains(string(body), "AUTHORIZATION_STATUS_AUTHORIZED") {
		t.Fatalf("POST :exchangeIdentityAssertion = %d %s", code, body)
	}
	if strings.Contains(string(body), idToken) || strings.Contains(string(body), e.IdP.Issued()[0].Raw) || strings.Contains(string(body), "accessToken") {
		t.Fatalf("the answer carries a token: %s", body)
	}
	who := tlMustCall(t, e.S, xaaProviderRes, "whoami", nil)
	if got := who.GetStructuredContent().AsMap()["subject"]; got != "bob" {
		t.Fatalf("whoami subject %v, want bob", got)
	}
	// Bad input on the gateway too: 400 naming the field, nothing sent.
	code, _, body = provHTTP(t, e.S, "POST", "/v1/"+xaaProviderRes+":exchangeIdentityAssertion", e.S.AdminKey, `{"user":"bob","idToken":"x"}`, nil)
	if code != 400 || !strings.Contains(string(body), "id_token") || len(e.IdP.RequestsTo("/token")) != 1 {
		t.Fatalf("bad id_token = %d %s", code, body)
	}
}

// TestEnterpriseManagedProviderDeletedDuringGrant: the provider is deleted
// while mcpauth's JWT bearer request (with the ID-JAG) is at the
// authorization server, which has issued the token and not answered yet.
// The token cannot be stored (NOT_FOUND): mcpauth revokes it at the server
// (RFC 7009), which then refuses it, and audits oauth.token.obtain_failed
// PROVIDER_GONE step store. Before, it was dropped live.
func TestEnterpriseManagedProviderDeletedDuringGrant(t *testing.T) {
	t.Parallel()
	e := xaaStart(t, testauthz.MachineOptions{}, xaaASClient)
	deleteDuringGrant(t, e.S, e.AS, xaaProviderRes, testauthz.GrantJWTBearer)

	_, err := e.exchange(t, "alice", e.IdP.IDToken(t, "alice", xaaIdPClient, 10*time.Minute))
	if status.Code(err) != codes.NotFound {
		t.Fatalf("ExchangeIdentityAssertion for a provider deleted during the grant: %v, want NOT_FOUND", err)
	}
	wantOneIssuedRevoked(t, e.AS, testauthz.GrantJWTBearer)
	tlWaitEvents(t, e.S, xaaTenant, xaaProviderRes, "oauth.token.obtain_failed", 1, func(ev *mcpauthv1.AuditEvent) bool {
		return ev.GetReason() == "PROVIDER_GONE" && ev.GetDetails()["step"] == "store"
	})
}
