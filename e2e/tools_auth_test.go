package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	"github.com/mcpauth/mcpauth/keyring"
)

// tlBearers returns the bearer tokens of the server's tools/call requests
// of tool, oldest first ("" for a request without one).
func tlBearers(srv *testauthz.MCPServer, tool string) []string {
	var out []string
	for _, r := range tlRPCs(srv, "tools/call") {
		if r.Tool == tool {
			out = append(out, strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
		}
	}
	return out
}

// TestToolsTokenExpiresBetweenCalls: an access token that expires between
// two calls is refreshed before the second one, which succeeds.
func TestToolsTokenExpiresBetweenCalls(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, AccessTokenLifetime: 2 * time.Second})
	srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	s := tlStart(t, nil)
	name := createProvider(t, s, s.AdminKey, "tl-expiry", "docs", srv.URL(), nil)
	tlAuthorize(t, s, name)

	tlMustCall(t, s, name, "echo", map[string]any{"text": "one"})
	refreshes := as.RefreshCount()
	// Wait on the service's own view of the expiry, not a guessed sleep.
	deadline := time.Now().Add(30 * time.Second)
	for {
		exp := tlStatus(t, s, name).GetExpireTime()
		if exp == nil {
			t.Fatal("the authorization has no expiry")
		}
		// fosite rounds lifetimes to whole seconds: wait for both clocks.
		if _, valid := as.Validate(tlBearers(srv, "echo")[0]); !valid && time.Now().After(exp.AsTime()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token expiring at %s never expired", exp.AsTime())
		}
		time.Sleep(50 * time.Millisecond)
	}
	res := tlMustCall(t, s, name, "echo", map[string]any{"text": "two"})
	if res.GetStructuredContent().AsMap()["text"] != "two" {
		t.Errorf("second echo: %v", res)
	}
	if n := as.RefreshCount() - refreshes; n < 1 {
		t.Errorf("%d refreshes at the authorization server, want at least 1", n)
	}
	b := tlBearers(srv, "echo")
	if len(b) != 2 || b[0] == b[1] {
		t.Errorf("the two calls carried %d bearer tokens, want two different ones", len(b))
	}
	if st := tlStatus(t, s, name).GetStatus(); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Errorf("status %v", st)
	}
}

// TestToolsRevokedToken: a 401 from the MCP server makes mcpauth refresh
// once and retry. When the authorization server revoked everything the
// refresh fails and the caller gets REAUTH_REQUIRED; when only the access
// token died, the one refresh cures it; when the server rejects even the
// fresh token, the authorization is marked dead after exactly one refresh.
func TestToolsRevokedToken(t *testing.T) {
	t.Parallel()
	s := tlStart(t, nil)
	ctx := Ctx(t, s.AdminKey)

	t.Run("everything revoked", func(t *testing.T) {
		t.Parallel()
		as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
		srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
		name := createProvider(t, s, s.AdminKey, "tl-revoked", "all", srv.URL(), nil)
		tlAuthorize(t, s, name)
		tlMustCall(t, s, name, "echo", map[string]any{"text": "before"})
		as.RevokeAllTokens()
		refreshes := as.RefreshCount()

		_, err := tlCall(ctx, s, name, "echo", map[string]any{"text": "after"})
		info := tlWantReason(t, err, codes.FailedPrecondition, "REAUTH_REQUIRED")
		if info.GetMetadata()["provider"] != name || info.GetMetadata()["action"] == "" {
			t.Errorf("REAUTH_REQUIRED detail lacks provider or action: %v", info.GetMetadata())
		}
		if n := as.RefreshCount() - refreshes; n != 1 {
			t.Errorf("%d refresh attempts, want exactly 1", n)
		}
		if n := len(tlBearers(srv, "echo")); n != 2 {
			t.Errorf("%d tools/call requests, want 2 (one before, one refused)", n)
		}
		if st := tlStatus(t, s, name).GetStatus(); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_REAUTH_REQUIRED {
			t.Errorf("status %v, want REAUTH_REQUIRED", st)
		}
		// The dead authorization is reported without another round trip.
		_, err = tlCall(ctx, s, name, "echo", map[string]any{"text": "again"})
		tlWantReason(t, err, codes.FailedPrecondition, "REAUTH_REQUIRED")
		if n := as.RefreshCount() - refreshes; n != 1 {
			t.Errorf("%d refresh attempts after the second call, want still 1", n)
		}
		tlWaitEvents(t, s, "tl-revoked", name, "mcp.tool.called", 1, func(ev *mcpauthv1.AuditEvent) bool {
			return ev.GetReason() == "REAUTH_REQUIRED" && ev.GetOutcome() == mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE
		})
		// A new authorization brings the provider back.
		tlAuthorize(t, s, name)
		tlMustCall(t, s, name, "echo", map[string]any{"text": "back"})
	})

	t.Run("access token revoked", func(t *testing.T) {
		t.Parallel()
		// A pre-registered client (so the test can refresh as that client)
		// at a server that keeps refresh tokens across refreshes and kills
		// the family's previous access token on each refresh.
		as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{NoRefreshRotation: true})
		as.RegisterClient("tl-client", "tl-client-secret", []string{s.HTTPURL + "/v1/oauth/callback"}, false)
		srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
		name := createProvider(t, s, s.AdminKey, "tl-revoked", "access", srv.URL(), func(p *mcpauthv1.Provider) {
			p.OauthClient = &mcpauthv1.OAuthClient{ClientId: "tl-client", ClientSecret: "tl-client-secret"}
		})
		tlAuthorize(t, s, name)
		tlMustCall(t, s, name, "echo", map[string]any{"text": "before"})
		old := tlBearers(srv, "echo")[0]

		// Refresh behind mcpauth's back: its access token dies, its refresh
		// token stays good.
		if _, err := as.Refresh(tlStoredRefreshToken(t, s, "tl-revoked", "access"), "tl-client", "tl-client-secret"); err != nil {
			t.Fatalf("refreshing as the client: %v", err)
		}
		if _, ok := as.Validate(old); ok {
			t.Fatal("mcpauth's access token survived the refresh")
		}
		refreshes := as.RefreshCount()

		res := tlMustCall(t, s, name, "echo", map[string]any{"text": "after"})
		if res.GetStructuredContent().AsMap()["text"] != "after" {
			t.Errorf("echo after refresh: %v", res)
		}
		if n := as.RefreshCount() - refreshes; n != 1 {
			t.Errorf("%d refreshes by mcpauth, want exactly 1", n)
		}
		b := tlBearers(srv, "echo")
		if len(b) != 3 || b[1] != old || b[2] == old {
			t.Errorf("tools/call bearers: %d calls, want the old token refused then a new one", len(b))
		}
		if _, ok := as.Validate(b[len(b)-1]); !ok {
			t.Error("the retried call did not carry a valid token")
		}
		if st := tlStatus(t, s, name).GetStatus(); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
			t.Errorf("status %v", st)
		}
	})

	t.Run("fresh token rejected too", func(t *testing.T) {
		t.Parallel()
		// The resource indicator names another resource: the authorization
		// server issues tokens for it and the MCP server refuses them all.
		as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
		srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
		name := createProvider(t, s, s.AdminKey, "tl-revoked", "audience", srv.URL(), func(p *mcpauthv1.Provider) {
			p.Compatibility = &mcpauthv1.CompatibilityProfile{
				ResourceMode:     mcpauthv1.ResourceParameterMode_RESOURCE_PARAMETER_MODE_OVERRIDE,
				ResourceOverride: "https://other.example/mcp",
			}
		})
		tlAuthorize(t, s, name)
		from := len(tlRPCs(srv, ""))
		refreshes := as.RefreshCount()
		_, err := tlCall(ctx, s, name, "echo", map[string]any{"text": "x"})
		tlWantReason(t, err, codes.FailedPrecondition, "REAUTH_REQUIRED")
		if n := as.RefreshCount() - refreshes; n != 1 {
			t.Errorf("%d refreshes, want exactly 1", n)
		}
		// The server refuses the session's initialize: one attempt with the
		// first token, one with the refreshed one, then nothing more.
		var tokens []string
		for _, r := range tlRPCs(srv, "")[from:] {
			switch r.Method {
			case "initialize":
				tokens = append(tokens, r.Header.Get("Authorization"))
			case "server/discover": // the SDK's probe before initialize
			default:
				t.Errorf("unexpected %s request", r.Method)
			}
		}
		if len(tokens) != 2 || tokens[0] == tokens[1] {
			t.Errorf("%d attempts, want 2 with different tokens", len(tokens))
		}
		st := tlStatus(t, s, name)
		if st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_REAUTH_REQUIRED || st.GetReason() != "MCP_SERVER_REJECTED_TOKEN" {
			t.Errorf("status %v reason %q, want REAUTH_REQUIRED MCP_SERVER_REJECTED_TOKEN", st.GetStatus(), st.GetReason())
		}
	})
}

// tlStoredRefreshToken opens the provider's stored tokens with the
// service's keyring and returns the refresh token.
func tlStoredRefreshToken(tb testing.TB, s *Service, tenant, id string) string {
	tb.Helper()
	cred, err := s.Store().GetCredential(context.Background(), domain.TenantGrant(tenant, id))
	if err != nil {
		tb.Fatalf("reading credential: %v", err)
	}
	raw, err := s.App.Keys().Open(keyring.Scope{Tenant: tenant, Provider: id, Field: "credential.tokens"}, cred.Tokens)
	if err != nil {
		tb.Fatalf("opening credential: %v", err)
	}
	var blob struct {
		Refresh string `json:"r"`
	}
	if err := json.Unmarshal(raw, &blob); err != nil || blob.Refresh == "" {
		tb.Fatalf("stored tokens hold no refresh token (%v)", err)
	}
	return blob.Refresh
}

// TestToolsStepUp: a 403 insufficient_scope becomes a structured
// FAILED_PRECONDITION naming the missing scopes and the union to request;
// authorizing again with them makes the call succeed.
func TestToolsStepUp(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true,
		Scopes: []string{"mcp.read", "mcp.write", "offline_access", "mcp.admin"}})
	// The resource advertises only the everyday scopes: the first
	// authorization does not ask for mcp.admin.
	srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as, PRMScopes: []string{"mcp.read", "mcp.write"},
		ScopedTool: "admin_tool", RequiredScope: "mcp.admin"})
	s := tlStart(t, nil)
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "tl-stepup", "docs", srv.URL(), nil)
	first := tlAuthorize(t, s, name)
	if slices.Contains(first, "mcp.admin") {
		t.Fatalf("the first authorization requested %v", first)
	}
	granted := tlStatus(t, s, name).GetScopes()

	tlMustCall(t, s, name, "echo", map[string]any{"text": "everyday"})
	refreshes := as.RefreshCount()
	_, err := tlCall(ctx, s, name, "admin_tool", nil)
	info := tlWantReason(t, err, codes.FailedPrecondition, "INSUFFICIENT_SCOPE")
	md := info.GetMetadata()
	if md["missing_scopes"] != "mcp.admin" {
		t.Errorf("missing_scopes %q, want mcp.admin", md["missing_scopes"])
	}
	union := strings.Fields(md["step_up_scopes"])
	for _, sc := range append(slices.Clone(granted), "mcp.admin") {
		if !slices.Contains(union, sc) {
			t.Errorf("step_up_scopes %q lacks %q (granted %v)", md["step_up_scopes"], sc, granted)
		}
	}
	if md["provider"] != name {
		t.Errorf("metadata provider %q", md["provider"])
	}
	if as.RefreshCount() != refreshes {
		t.Error("a 403 insufficient_scope made mcpauth refresh the token")
	}
	// The authorization itself is intact: other tools still work.
	if st := tlStatus(t, s, name).GetStatus(); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Errorf("status %v after the 403", st)
	}
	tlMustCall(t, s, name, "echo", map[string]any{"text": "still"})
	tlWaitEvents(t, s, "tl-stepup", name, "oauth.step_up_required", 1, func(ev *mcpauthv1.AuditEvent) bool {
		return ev.GetReason() == "INSUFFICIENT_SCOPE" && ev.GetDetails()["missing_scopes"] == "mcp.admin"
	})

	second := tlAuthorize(t, s, name, strings.Fields(md["missing_scopes"])...)
	for _, sc := range union {
		if !slices.Contains(second, sc) {
			t.Errorf("step-up authorization requests %v, lacking %q", second, sc)
		}
	}
	res := tlMustCall(t, s, name, "admin_tool", nil)
	if res.GetIsError() || res.GetContent()[0].AsMap()["text"] != "ok" {
		t.Errorf("admin_tool after step-up: %v", res)
	}
	if got := tlStatus(t, s, name).GetScopes(); !slices.Contains(got, "mcp.admin") {
		t.Errorf("granted scopes after step-up %v", got)
	}
}

// TestToolsURLChangeDropsCredentials: pointing a provider at another
// server drops its token and headers; nothing meant for the old server is
// ever sent to the new one, not even by a call made right after the update.
func TestToolsURLChangeDropsCredentials(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
	a := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as, RequiredHeader: [2]string{"X-Api-Key", "k1"}})
	b := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{})
	s := tlStart(t, nil)
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "tl-move", "docs", a.URL(), func(p *mcpauthv1.Provider) {
		p.Headers = map[string]string{"X-Api-Key": "k1"}
	})
	tlAuthorize(t, s, name)
	// Warm every cache: token, pooled session, tool list.
	if _, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name}); err != nil {
		t.Fatalf("RefreshTools on A: %v", err)
	}
	tlMustCall(t, s, name, "echo", map[string]any{"text": "on A"})
	if _, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name}); err != nil {
		t.Fatalf("GetAccessToken on A: %v", err)
	}
	onA := len(a.Received())
	old := tlBearers(a, "echo")[0]

	if _, err := s.Providers().UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
		Provider:   &mcpauthv1.Provider{Name: name, ServerUrl: b.URL()},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"server_url"}},
	}); err != nil {
		t.Fatalf("UpdateProvider: %v", err)
	}
	if lt, err := s.Tools().ListTools(ctx, &mcpauthv1.ListToolsRequest{Name: name}); err != nil || len(lt.GetTools()) != 0 {
		t.Errorf("ListTools after the URL change: %d tools, %v; want A's list dropped", len(lt.GetTools()), err)
	}
	// Immediately: no cache may still hold A's credentials.
	res := tlMustCall(t, s, name, "echo", map[string]any{"text": "on B"})
	if res.GetStructuredContent().AsMap()["text"] != "on B" {
		t.Errorf("echo on B: %v", res)
	}
	if _, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name}); err != nil {
		t.Fatalf("RefreshTools on B: %v", err)
	}
	got := b.Received()
	if len(got) == 0 {
		t.Fatal("B received nothing")
	}
	for _, r := range got {
		if r.Header.Get("Authorization") != "" || r.Header.Get("X-Api-Key") != "" {
			t.Errorf("B received %s %s with A's credentials (Authorization set %t, X-Api-Key set %t)", r.Method, r.Path,
				r.Header.Get("Authorization") != "", r.Header.Get("X-Api-Key") != "")
		}
	}
	if n := len(a.Received()) - onA; n != 0 {
		t.Errorf("A received %d requests after the provider moved", n)
	}
	st := tlStatus(t, s, name)
	if st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED &&
		st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_NOT_REQUIRED {
		t.Errorf("status %v after the URL change", st.GetStatus())
	}
	_, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name})
	tlErrorInfo(t, err, codes.FailedPrecondition)
	// The old server's tokens were revoked there, not just forgotten.
	if _, ok := as.Validate(old); ok {
		t.Error("the old server's access token is still valid at its authorization server")
	}
	tlWaitEvents(t, s, "tl-move", name, "provider.credentials.reset", 1, func(ev *mcpauthv1.AuditEvent) bool {
		// The event commits with the reset, before the old server is asked;
		// the revocation itself is checked at the server above.
		return ev.GetReason() == "SERVER_URL_CHANGED"
	})
	p, err := s.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.GetProvider().GetHeaderInfo()) != 0 {
		t.Errorf("headers survived the URL change: %v", p.GetProvider().GetHeaderInfo())
	}
}

// TestToolsURLChangeAcrossReplicas: a replica that did not serve the
// update, and whose short-lived token cache still holds the old server's
// token, never sends it to the new server either.
func TestToolsURLChangeAcrossReplicas(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
	a := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	b := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{})
	// A long cache makes the window certain rather than a race.
	env := map[string]string{"MCPAUTH_MASTER_KEYS": testMasterKeys(t), "MCPAUTH_TOKEN_CACHE_TTL": "10s"}
	r0 := tlStart(t, env)
	env["MCPAUTH_EGRESS_ALLOW"] = "127.0.0.1"
	r1 := Start(t, Options{DSN: r0.DSN, RedisURL: r0.RedisURL, Env: env, DataDir: t.TempDir()})
	name := createProvider(t, r0, r0.AdminKey, "tl-replicas", "docs", a.URL(), nil)
	tlAuthorize(t, r0, name)
	tlMustCall(t, r1, name, "echo", map[string]any{"text": "on A via r1"})
	old := tlBearers(a, "echo")[0]

	if _, err := r0.Providers().UpdateProvider(Ctx(t, r0.AdminKey), &mcpauthv1.UpdateProviderRequest{
		Provider:   &mcpauthv1.Provider{Name: name, ServerUrl: b.URL()},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"server_url"}},
	}); err != nil {
		t.Fatalf("UpdateProvider: %v", err)
	}
	tlMustCall(t, r1, name, "echo", map[string]any{"text": "on B via r1"})
	for _, r := range b.Received() {
		if r.Header.Get("Authorization") != "" {
			t.Errorf("B received %s %s with an Authorization header", r.Method, r.Path)
		}
	}
	// Whatever r1's cache still holds is dead at the old authorization
	// server: the update revoked it there.
	if _, ok := as.Validate(old); ok {
		t.Error("the old server's token is still valid after the URL change")
	}
}

// TestToolsStepUpLoop: a server that answers insufficient_scope although
// every scope it names is already granted would send people through the
// authorization page forever; mcpauth says so instead of asking again.
func TestToolsStepUpLoop(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
	// A misbehaving front: it passes everything to a real MCP server but
	// refuses every call of whoami with insufficient_scope "mcp.read", a
	// scope the authorization grants.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	frontURL := "http://" + l.Addr().String() + "/mcp"
	inner := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as, PRMResourceOverride: frontURL})
	target, err := url.Parse(inner.Origin())
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			var msg struct {
				Method string `json:"method"`
				Params struct {
					Name string `json:"name"`
				} `json:"params"`
			}
			if json.Unmarshal(body, &msg) == nil && msg.Method == "tools/call" && msg.Params.Name == "whoami" {
				w.Header().Set("WWW-Authenticate", `Bearer error="insufficient_scope", scope="mcp.read"`)
				http.Error(w, "insufficient scope", http.StatusForbidden)
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	front.Listener.Close()
	front.Listener = l
	front.Start()
	t.Cleanup(front.Close)

	s := tlStart(t, nil)
	ctx := Ctx(t, s.AdminKey)
	// The token is issued without a resource indicator: the inner server
	// would refuse one naming the front.
	name := createProvider(t, s, s.AdminKey, "tl-loop", "docs", frontURL, func(p *mcpauthv1.Provider) {
		p.Compatibility = &mcpauthv1.CompatibilityProfile{ResourceMode: mcpauthv1.ResourceParameterMode_RESOURCE_PARAMETER_MODE_OMIT}
	})
	tlAuthorize(t, s, name)
	if granted := tlStatus(t, s, name).GetScopes(); !slices.Contains(granted, "mcp.read") {
		t.Fatalf("granted scopes %v lack mcp.read", granted)
	}
	tlMustCall(t, s, name, "echo", map[string]any{"text": "through the front"})
	refreshes := as.RefreshCount()

	_, err = tlCall(ctx, s, name, "whoami", nil)
	info := tlWantReason(t, err, codes.FailedPrecondition, "INSUFFICIENT_SCOPE_LOOP")
	if info.GetMetadata()["required_scopes"] != "mcp.read" {
		t.Errorf("metadata %v", info.GetMetadata())
	}
	if as.RefreshCount() != refreshes {
		t.Error("the 403 made mcpauth refresh")
	}
	tlWaitEvents(t, s, "tl-loop", name, "oauth.step_up_required", 1, func(ev *mcpauthv1.AuditEvent) bool {
		return ev.GetReason() == "STEP_UP_LOOP"
	})
	if st := tlStatus(t, s, name).GetStatus(); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Errorf("status %v", st)
	}
}

// TestToolsWrongHeaderKeepsAuthorization: when a server that wants both a
// token and a custom header refuses a wrong header value, the OAuth
// authorization is not what failed and must survive; fixing the header
// makes calls work again without a new authorization.
func TestToolsWrongHeaderKeepsAuthorization(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
	srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as, RequiredHeader: [2]string{"X-Api-Key", "k1"}})
	s := tlStart(t, nil)
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "tl-header", "docs", srv.URL(), func(p *mcpauthv1.Provider) {
		p.Headers = map[string]string{"X-Api-Key": "k1"}
	})
	tlAuthorize(t, s, name)
	tlMustCall(t, s, name, "echo", map[string]any{"text": "right header"})
	setHeader := func(v string) {
		t.Helper()
		if _, err := s.Providers().UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
			Provider:   &mcpauthv1.Provider{Name: name, Headers: map[string]string{"X-Api-Key": v}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"headers"}},
		}); err != nil {
			t.Fatalf("UpdateProvider headers: %v", err)
		}
	}
	setHeader("k2")
	_, err := tlCall(ctx, s, name, "echo", map[string]any{"text": "wrong header"})
	info := tlWantReason(t, err, codes.FailedPrecondition, "NOT_AUTHORIZED")
	if info.GetMetadata()["provider"] != name {
		t.Errorf("metadata %v", info.GetMetadata())
	}
	if st := tlStatus(t, s, name).GetStatus(); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatalf("status %v after a refused header, want the authorization kept", st)
	}
	setHeader("k1")
	tlMustCall(t, s, name, "echo", map[string]any{"text": "fixed header"})
}
