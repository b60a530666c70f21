package e2e

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// wellKnownPaths returns the paths of the .well-known requests in reqs,
// oldest first.
func wellKnownPaths(reqs []testauthz.RecordedRequest) []string {
	var out []string
	for _, r := range reqs {
		if strings.Contains(r.Path, "/.well-known/") {
			out = append(out, r.Path)
		}
	}
	return out
}

// TestOAuthDiscoveryPaths authorizes a provider through every discovery
// path the MCP authorization spec defines, and checks at the servers which
// metadata URLs mcpauth asked for, in which order.
func TestOAuthDiscoveryPaths(t *testing.T) {
	t.Parallel()
	const (
		prmInserted = "/.well-known/oauth-protected-resource/mcp"
		prmRoot     = "/.well-known/oauth-protected-resource"
		oauthRoot   = "/.well-known/oauth-authorization-server"
		oidcRoot    = "/.well-known/openid-configuration"
	)
	cases := []struct {
		name    string
		as      testauthz.AuthServerOptions
		mcp     testauthz.MCPServerOptions
		backend Options
		// wantPRM are the protected-resource metadata paths requested at
		// the MCP server; wantAS the metadata paths requested at the
		// authorization server.
		wantPRM, wantAS []string
	}{
		{
			// The main path, on PostgreSQL and Redis: the 401 challenge's
			// resource_metadata (here the root URL) is used first, so the
			// path-inserted URL is never tried.
			name:    "prm from WWW-Authenticate resource_metadata",
			as:      testauthz.AuthServerOptions{DCR: true, IssParameter: true},
			mcp:     testauthz.MCPServerOptions{PRMLocation: testauthz.PRMRoot},
			backend: Options{Postgres: true, Redis: true},
			wantPRM: []string{prmRoot},
			wantAS:  []string{oauthRoot},
		},
		{
			name:    "path-inserted prm without resource_metadata",
			as:      testauthz.AuthServerOptions{DCR: true},
			mcp:     testauthz.MCPServerOptions{OmitResourceMetadata: true},
			wantPRM: []string{prmInserted},
			wantAS:  []string{oauthRoot},
		},
		{
			name:    "root prm without resource_metadata",
			as:      testauthz.AuthServerOptions{DCR: true},
			mcp:     testauthz.MCPServerOptions{OmitResourceMetadata: true, PRMLocation: testauthz.PRMRoot},
			wantPRM: []string{prmInserted, prmRoot},
			wantAS:  []string{oauthRoot},
		},
		{
			name:    "issuer with path, oauth path-insert",
			as:      testauthz.AuthServerOptions{DCR: true, IssuerPath: "/tenant1", Metadata: testauthz.MetadataOAuthPathInsert},
			wantPRM: []string{prmInserted},
			wantAS:  []string{oauthRoot + "/tenant1"},
		},
		{
			name:    "issuer with path, oidc path-insert",
			as:      testauthz.AuthServerOptions{DCR: true, IssuerPath: "/tenant1", Metadata: testauthz.MetadataOIDCPathInsert},
			wantPRM: []string{prmInserted},
			wantAS:  []string{oauthRoot + "/tenant1", oidcRoot + "/tenant1"},
		},
		{
			name:    "issuer with path, oidc path-append",
			as:      testauthz.AuthServerOptions{DCR: true, IssuerPath: "/tenant1", Metadata: testauthz.MetadataOIDCPathAppend},
			wantPRM: []string{prmInserted},
			wantAS:  []string{oauthRoot + "/tenant1", oidcRoot + "/tenant1", "/tenant1" + oidcRoot},
		},
		{
			name:    "issuer without path, oidc only",
			as:      testauthz.AuthServerOptions{DCR: true, Metadata: testauthz.MetadataOIDCRoot},
			wantPRM: []string{prmInserted},
			wantAS:  []string{oauthRoot, oidcRoot},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := tc.backend
			if o.Redis {
				o.RedisURL, _, _ = oaRedis(t)
			}
			f := oaSetup(t, tc.as, tc.mcp, o, nil)
			start := f.Start(t)
			if start.GetIssuer() != f.AS.URL {
				t.Errorf("issuer %q, want %q", start.GetIssuer(), f.AS.URL)
			}
			if start.GetRegistrationMethod() != "dynamic_registration" {
				t.Errorf("registration method %q", start.GetRegistrationMethod())
			}
			if got := wellKnownPaths(f.MCP.Received()); !slices.Equal(got, tc.wantPRM) {
				t.Errorf("protected-resource metadata requests %q, want %q", got, tc.wantPRM)
			}
			if got := wellKnownPaths(f.AS.Requests()); !slices.Equal(got, tc.wantAS) {
				t.Errorf("authorization-server metadata requests %q, want %q", got, tc.wantAS)
			}
			p := oaOpen(t, NewBrowser(t), start.GetAuthorizationUrl())
			if p.Code != http.StatusOK || p.Title != "Authorization complete" || p.Provider != f.Name {
				t.Fatalf("result page: %d %q reason %q provider %q", p.Code, p.Title, p.Reason, p.Provider)
			}
			if st := f.Status(t); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
				t.Fatalf("status %v", st)
			}
			tok, err := f.S.OAuth().GetAccessToken(f.Ctx, &mcpauthv1.GetAccessTokenRequest{Name: f.Name})
			oaMust(t, err)
			info, err := f.AS.ValidateToken(t.Context(), tok.GetAccessToken())
			if err != nil {
				t.Fatalf("the authorization server does not know the token: %v", err)
			}
			if info.Resource != f.MCP.URL() {
				t.Errorf("token issued for resource %q, want %q", info.Resource, f.MCP.URL())
			}
			if code := oaMCPStatus(t, f.MCP.URL(), tok.GetAccessToken()); code != http.StatusOK {
				t.Errorf("the MCP server answers the new token with %d", code)
			}
		})
	}
}

// TestOAuthIssuerMismatch: an authorization-server metadata document whose
// issuer differs from the issuer its URL was built from is not used.
func TestOAuthIssuerMismatch(t *testing.T) {
	t.Parallel()
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, MetadataIssuer: "https://evil.example"}, testauthz.MCPServerOptions{}, Options{}, nil)
	_, err := f.S.OAuth().StartAuthorization(f.Ctx, &mcpauthv1.StartAuthorizationRequest{Name: f.Name, User: "alice"})
	oaWantErr(t, err, codes.FailedPrecondition, "ISSUER_MISMATCH")
	for _, p := range []string{"/register", "/authorize", "/token"} {
		if n := f.AS.Counts(p); n != 0 {
			t.Errorf("%d requests to %s after an issuer mismatch", n, p)
		}
	}
	if st := f.Status(t); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED {
		t.Errorf("status %v", st)
	}
	oaWantEvent(t, f.S, "acme", "oauth.authorization.started", "ISSUER_MISMATCH")

	// The diagnosis shows every metadata document that was skipped.
	diag, err := f.S.OAuth().DiagnoseProvider(f.Ctx, &mcpauthv1.DiagnoseProviderRequest{Name: f.Name})
	oaMust(t, err)
	if diag.GetReady() || diag.GetBlockingProblem() == "" {
		t.Errorf("diagnosis ready=%v problem=%q", diag.GetReady(), diag.GetBlockingProblem())
	}
	skipped := 0
	for _, st := range diag.GetSteps() {
		if st.GetAction() == "authorization_server_metadata" {
			if st.GetOk() || !strings.Contains(st.GetDetail(), "issuer mismatch") {
				t.Errorf("metadata step %s: ok=%v detail %q", st.GetUrl(), st.GetOk(), st.GetDetail())
			}
			skipped++
		}
	}
	if skipped == 0 {
		t.Errorf("the trace shows no skipped metadata document: %v", diag.GetSteps())
	}
}

// TestOAuthResourceMismatch: protected-resource metadata naming another
// resource stops the flow before the authorization server is contacted.
func TestOAuthResourceMismatch(t *testing.T) {
	t.Parallel()
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true},
		testauthz.MCPServerOptions{PRMResourceOverride: "https://other.example/mcp"}, Options{}, nil)
	_, err := f.S.OAuth().StartAuthorization(f.Ctx, &mcpauthv1.StartAuthorizationRequest{Name: f.Name, User: "alice"})
	oaWantErr(t, err, codes.FailedPrecondition, "RESOURCE_MISMATCH")
	if reqs := f.AS.Requests(); len(reqs) != 0 {
		t.Errorf("the authorization server received %d requests, first %s", len(reqs), reqs[0].Path)
	}
	if st := f.Status(t); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED {
		t.Errorf("status %v", st)
	}
	oaWantEvent(t, f.S, "acme", "oauth.authorization.started", "RESOURCE_MISMATCH")
}

// TestOAuthLegacyServer: a 2025-03-26-era server (authorization server on
// the MCP server's origin, no protected-resource metadata) is authorized.
func TestOAuthLegacyServer(t *testing.T) {
	t.Parallel()
	f := oaSetup(t, testauthz.AuthServerOptions{}, testauthz.MCPServerOptions{
		EmbeddedAuth: &testauthz.AuthServerOptions{DCR: true}, NoPRM: true}, Options{}, nil)
	start := f.Start(t)
	if start.GetIssuer() != f.MCP.Origin() {
		t.Errorf("issuer %q, want the origin %q", start.GetIssuer(), f.MCP.Origin())
	}
	p := oaOpen(t, NewBrowser(t), start.GetAuthorizationUrl())
	if p.Code != http.StatusOK || p.Title != "Authorization complete" {
		t.Fatalf("result page: %d %q reason %q", p.Code, p.Title, p.Reason)
	}
	if n := f.AS.Counts("/token"); n != 1 {
		t.Errorf("%d token requests", n)
	}
	tok, err := f.S.OAuth().GetAccessToken(f.Ctx, &mcpauthv1.GetAccessTokenRequest{Name: f.Name})
	oaMust(t, err)
	if code := oaMCPStatus(t, f.MCP.URL(), tok.GetAccessToken()); code != http.StatusOK {
		t.Errorf("the MCP server answers the new token with %d", code)
	}
}

// TestOAuthPKCEMetadata: no code_challenge_methods_supported means no
// authorization, unless the provider carries the audited exception.
func TestOAuthPKCEMetadata(t *testing.T) {
	t.Parallel()
	t.Run("strict", func(t *testing.T) {
		t.Parallel()
		f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, OmitPKCEMetadata: true}, testauthz.MCPServerOptions{}, Options{}, nil)
		_, err := f.S.OAuth().StartAuthorization(f.Ctx, &mcpauthv1.StartAuthorizationRequest{Name: f.Name, User: "alice"})
		oaWantErr(t, err, codes.FailedPrecondition, "PKCE_NOT_SUPPORTED")
		if n := f.AS.Counts("/register") + f.AS.Counts("/authorize"); n != 0 {
			t.Errorf("%d registration or authorization requests", n)
		}
		oaWantEvent(t, f.S, "acme", "oauth.authorization.started", "PKCE_NOT_SUPPORTED")
	})
	t.Run("plain only, even with the exception", func(t *testing.T) {
		t.Parallel()
		f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, PKCEMethods: []string{"plain"}}, testauthz.MCPServerOptions{}, Options{},
			func(p *mcpauthv1.Provider) {
				p.Compatibility = &mcpauthv1.CompatibilityProfile{AllowMissingPkceMetadata: true}
			})
		_, err := f.S.OAuth().StartAuthorization(f.Ctx, &mcpauthv1.StartAuthorizationRequest{Name: f.Name, User: "alice"})
		oaWantErr(t, err, codes.FailedPrecondition, "PKCE_NOT_SUPPORTED")
	})
	t.Run("compatibility exception", func(t *testing.T) {
		t.Parallel()
		f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, OmitPKCEMetadata: true}, testauthz.MCPServerOptions{}, Options{},
			func(p *mcpauthv1.Provider) {
				p.Compatibility = &mcpauthv1.CompatibilityProfile{AllowMissingPkceMetadata: true}
			})
		f.Authorize(t)
		ev := oaWantEvent(t, f.S, "acme", "oauth.compatibility.used", "PKCE_METADATA_MISSING")
		if ev.GetProvider() != f.Name {
			t.Errorf("compatibility event for provider %q", ev.GetProvider())
		}
		q := f.AS.RequestsTo("/authorize")[0].Query
		if q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43 {
			t.Errorf("authorization request without S256 PKCE: %v", q)
		}
		if f.AS.RequestsTo("/token")[0].Form.Get("code_verifier") == "" {
			t.Error("token request without code_verifier")
		}
	})
}
