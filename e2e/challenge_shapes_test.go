package e2e

import (
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// challengeFirst makes the selective server challenge once (RefreshTools
// answers 401) so StartAuthorization has a recorded challenge to start from.
func challengeFirst(t *testing.T, s *Service, name string) {
	t.Helper()
	_, err := s.Tools().RefreshTools(Ctx(t, s.AdminKey), &mcpauthv1.RefreshToolsRequest{Name: name})
	tlWantReason(t, err, codes.FailedPrecondition, "NOT_AUTHORIZED")
}

// receivedPaths lists the paths of the GETs a server received.
func receivedPaths(reqs []testauthz.RecordedRequest) []string {
	var out []string
	for _, r := range reqs {
		if r.Method == http.MethodGet {
			out = append(out, r.Path)
		}
	}
	return out
}

// TestChallengeRootPRMWithPathIssuer: no resource_metadata in the
// challenge, no path-inserted metadata (404), a root document naming the
// origin (RFC 9728 section 3.3), and an authorization server whose issuer
// has a path (metadata at the RFC 8414 section 3.1 path-inserted URL only).
// mcpauth accepts it and sends the origin, the protected resource's own
// identifier, as resource; the server accepts the token.
func TestChallengeRootPRMWithPathIssuer(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, IssuerPath: "/tenant1",
		Metadata: testauthz.MetadataOAuthPathInsert, Scopes: []string{"mcp:basic"}})
	srv := testauthz.NewSelectiveServer(t, testauthz.SelectiveOptions{Auth: as, BasicScope: "mcp:basic", RootPRM: true})
	s := Start(t, Options{Env: oaAllowEnv()})
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "acme", "root", srv.URL(), nil)
	challengeFirst(t, s, name)

	st, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatalf("StartAuthorization: %v", err)
	}
	if st.GetIssuer() != as.URL {
		t.Fatalf("issuer %q, want %q", st.GetIssuer(), as.URL)
	}
	if p := oaOpen(t, NewBrowser(t), st.GetAuthorizationUrl()); p.Code != http.StatusOK || p.Title != "Authorization complete" {
		t.Fatalf("flow: %d %q %q", p.Code, p.Title, p.Reason)
	}
	auth := as.RequestsTo(as.Path("/authorize"))
	if len(auth) != 1 || auth[0].Query.Get("resource") != srv.Origin() {
		t.Fatalf("authorization requests %v, want one with resource=%s", auth, srv.Origin())
	}
	tok := as.RequestsTo(as.Path("/token"))
	if len(tok) == 0 || tok[0].Param("resource") != srv.Origin() {
		t.Fatalf("token request resource %q", tok[0].Param("resource"))
	}
	if _, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name}); err != nil {
		t.Fatalf("RefreshTools with the origin's token: %v", err)
	}
	got := strings.Join(receivedPaths(srv.Received()), " ")
	if !strings.Contains(got, "/.well-known/oauth-protected-resource/mcp /.well-known/oauth-protected-resource") {
		t.Fatalf("MCP server GETs %q: want the path-inserted then the root metadata", got)
	}
	if asGot := strings.Join(receivedPaths(as.Requests()), " "); !strings.HasPrefix(asGot, "/.well-known/oauth-authorization-server/tenant1") {
		t.Fatalf("authorization server GETs %q: want the path-inserted metadata first", asGot)
	}
}

// TestChallengeRootPRMOtherOriginRefused: a root document naming another
// origin is a RESOURCE_MISMATCH, refused before any request reaches the
// authorization server.
func TestChallengeRootPRMOtherOriginRefused(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, Scopes: []string{"mcp:basic"}})
	srv := testauthz.NewSelectiveServer(t, testauthz.SelectiveOptions{Auth: as, BasicScope: "mcp:basic", RootPRM: true,
		PRMResource: "https://elsewhere.example"})
	s := Start(t, Options{Env: oaAllowEnv()})
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "acme", "root", srv.URL(), nil)
	challengeFirst(t, s, name)
	_, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	oaWantErr(t, err, codes.FailedPrecondition, "RESOURCE_MISMATCH")
	if n := len(as.Requests()); n != 0 {
		t.Fatalf("the authorization server saw %d requests", n)
	}
	d, err := s.OAuth().DiagnoseProvider(ctx, &mcpauthv1.DiagnoseProviderRequest{Name: name})
	if err != nil || d.GetReady() {
		t.Fatalf("DiagnoseProvider = %v, %v", d, err)
	}
	shown := false
	for _, st := range d.GetSteps() {
		if strings.Contains(st.GetDetail(), "https://elsewhere.example") && strings.Contains(st.GetDetail(), srv.Origin()) {
			shown = true
		}
	}
	if !shown {
		t.Fatalf("diagnosis does not show both resources: %v", d.GetSteps())
	}
}

// TestChallengeLegacyDefaultEndpoints: a 2025-03-26 server with no metadata
// at all (no protected-resource, no authorization-server metadata): the
// default /authorize, /token and /register at the MCP server's origin are
// used, and PKCE S256 is sent (2025-03-26 authorization, "Fallbacks for
// Servers without Metadata Discovery"; PKCE is required there).
func TestChallengeLegacyDefaultEndpoints(t *testing.T) {
	t.Parallel()
	srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{NoPRM: true,
		EmbeddedAuth: &testauthz.AuthServerOptions{DCR: true, Metadata: testauthz.MetadataNone}})
	as := srv.Auth()
	s := Start(t, Options{Env: oaAllowEnv()})
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "acme", "legacy", srv.URL(), nil)
	st, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatalf("StartAuthorization: %v", err)
	}
	if p := oaOpen(t, NewBrowser(t), st.GetAuthorizationUrl()); p.Code != http.StatusOK || p.Title != "Authorization complete" {
		t.Fatalf("flow: %d %q %q", p.Code, p.Title, p.Reason)
	}
	auth := as.RequestsTo("/authorize")
	if len(auth) != 1 || auth[0].Query.Get("code_challenge_method") != "S256" || auth[0].Query.Get("code_challenge") == "" {
		t.Fatalf("authorization requests %v", auth)
	}
	if reg := as.RequestsTo("/register"); len(reg) != 1 {
		t.Fatalf("%d registrations at /register", len(reg))
	}
	if tok := as.RequestsTo("/token"); len(tok) != 1 || tok[0].Param("code_verifier") == "" {
		t.Fatalf("token requests %v", tok)
	}
	if _, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name}); err != nil {
		t.Fatalf("RefreshTools: %v", err)
	}
}

// TestChallengeTokenEndpointAuthFromMetadata: the token endpoint
// authentication method comes from token_endpoint_auth_methods_supported
// (RFC 8414 section 2): an AS listing only client_secret_basic gets a
// client registered for it and HTTP Basic at the token endpoint; an AS
// listing only private_key_jwt (which this client has no key for) is
// refused before registration and before any browser step.
func TestChallengeTokenEndpointAuthFromMetadata(t *testing.T) {
	t.Parallel()
	t.Run("client_secret_basic only", func(t *testing.T) {
		t.Parallel()
		as := testauthz.NewAuthServerAdvertising(t, testauthz.AuthServerOptions{DCR: true}, []string{"client_secret_basic"})
		srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
		s := Start(t, Options{Env: oaAllowEnv()})
		ctx := Ctx(t, s.AdminKey)
		name := createProvider(t, s, s.AdminKey, "acme", "basic", srv.URL(), nil)
		st, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
		if err != nil {
			t.Fatalf("StartAuthorization: %v", err)
		}
		if p := oaOpen(t, NewBrowser(t), st.GetAuthorizationUrl()); p.Code != http.StatusOK || p.Title != "Authorization complete" {
			t.Fatalf("flow: %d %q %q", p.Code, p.Title, p.Reason)
		}
		reg := as.RequestsTo("/register")
		if len(reg) != 1 || !strings.Contains(string(reg[0].Body), `"token_endpoint_auth_method":"client_secret_basic"`) {
			t.Fatalf("registration %v", reg)
		}
		tok := as.RequestsTo("/token")
		if len(tok) != 1 || !strings.HasPrefix(tok[0].Header.Get("Authorization"), "Basic ") || tok[0].Param("client_secret") != "" {
			t.Fatalf("token request did not use client_secret_basic: %v", tok)
		}
	})
	t.Run("private_key_jwt only", func(t *testing.T) {
		t.Parallel()
		as := testauthz.NewAuthServerAdvertising(t, testauthz.AuthServerOptions{DCR: true}, []string{"private_key_jwt"})
		srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
		s := Start(t, Options{Env: oaAllowEnv()})
		ctx := Ctx(t, s.AdminKey)
		name := createProvider(t, s, s.AdminKey, "acme", "pkjwt", srv.URL(), nil)
		_, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
		oaWantErr(t, err, codes.FailedPrecondition, "NO_USABLE_AUTH_METHOD")
		for _, p := range []string{"/register", "/authorize", "/token"} {
			if n := as.Counts(p); n != 0 {
				t.Fatalf("the authorization server saw %d requests to %s", n, p)
			}
		}
		d, err := s.OAuth().DiagnoseProvider(ctx, &mcpauthv1.DiagnoseProviderRequest{Name: name})
		if err != nil || d.GetReady() || !strings.Contains(d.GetBlockingProblem(), "private_key_jwt") {
			t.Fatalf("DiagnoseProvider = %v, %v", d, err)
		}
	})
}

// TestChallengeTokenEndpointErrorIsVisible: a token endpoint error on the
// callback shows as the status reason and in the audit event (the error
// code, never the body), and DiagnoseProvider reads the servers afresh.
func TestChallengeTokenEndpointErrorIsVisible(t *testing.T) {
	t.Parallel()
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true}, testauthz.MCPServerOptions{}, Options{}, nil)
	start := f.Start(t)
	b := NewBrowser(t)
	cb := oaToCallback(t, b, start.GetAuthorizationUrl())
	f.AS.SetTokenStatus(http.StatusBadRequest, "")
	oaFailed(t, oaOpen(t, b, cb.String()), "TOKEN_EXCHANGE_FAILED")
	st := tlStatus(t, f.S, f.Name)
	if st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED || st.GetReason() != "TOKEN_EXCHANGE_FAILED" {
		t.Fatalf("status %v %q", st.GetStatus(), st.GetReason())
	}
	ev := oaWantEvent(t, f.S, "acme", "oauth.callback.failed", "TOKEN_EXCHANGE_FAILED")
	if ev.GetDetails()["error"] != "temporarily_unavailable" {
		t.Fatalf("event details %v, want the token endpoint's error code", ev.GetDetails())
	}
	// DiagnoseProvider reads the metadata again rather than from the cache
	// StartAuthorization filled.
	before := len(f.AS.RequestsTo("/.well-known/oauth-authorization-server"))
	if _, err := f.S.OAuth().DiagnoseProvider(f.Ctx, &mcpauthv1.DiagnoseProviderRequest{Name: f.Name}); err != nil {
		t.Fatal(err)
	}
	if n := len(f.AS.RequestsTo("/.well-known/oauth-authorization-server")); n != before+1 {
		t.Fatalf("DiagnoseProvider fetched the metadata %d times, want 1", n-before)
	}
}
