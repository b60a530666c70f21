package e2e

import (
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestOAuthRequestParameters checks, at the authorization server, what the
// authorization and token requests of one flow carry: RFC 8707 resource
// equal to the canonical MCP server URL on both, PKCE S256 with a verifier
// matching the challenge, the same redirect_uri on both, and a 256-bit
// state.
func TestOAuthRequestParameters(t *testing.T) {
	t.Parallel()
	const query = "?workspace=ws-secret-Q7"
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	s := Start(t, Options{Env: oaAllowEnv()})
	// The query of the server URL is not part of the canonical resource (it
	// often carries a workspace id or key) and is never sent to the
	// authorization server.
	name := createProvider(t, s, s.AdminKey, "acme", "docs", mcp.URL()+query, nil)
	f := &oaFlow{S: s, AS: as, MCP: mcp, Name: name, Ctx: Ctx(t, s.AdminKey)}
	f.Authorize(t)

	authz := as.RequestsTo("/authorize")
	toks := as.RequestsTo("/token")
	if len(authz) != 1 || len(toks) != 1 {
		t.Fatalf("%d authorization and %d token requests", len(authz), len(toks))
	}
	q, form := authz[0].Query, toks[0].Form
	callback := s.HTTPURL + callbackPath
	checks := []struct{ what, got, want string }{
		{"authorize resource", q.Get("resource"), mcp.URL()},
		{"token resource", form.Get("resource"), mcp.URL()},
		{"authorize redirect_uri", q.Get("redirect_uri"), callback},
		{"token redirect_uri", form.Get("redirect_uri"), callback},
		{"response_type", q.Get("response_type"), "code"},
		{"code_challenge_method", q.Get("code_challenge_method"), "S256"},
		{"grant_type", form.Get("grant_type"), "authorization_code"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
		}
	}
	verifier := form.Get("code_verifier")
	if len(verifier) < 43 {
		t.Fatalf("code_verifier %d characters", len(verifier))
	}
	sum := sha256.Sum256([]byte(verifier))
	if base64.RawURLEncoding.EncodeToString(sum[:]) != q.Get("code_challenge") {
		t.Error("code_verifier does not match the S256 code_challenge")
	}
	if st := q.Get("state"); len(st) < 43 {
		t.Errorf("state has %d characters, less than 256 bits", len(st))
	}
	for _, r := range as.Requests() {
		if strings.Contains(r.Query.Encode()+r.Form.Encode()+string(r.Body), "ws-secret-Q7") {
			t.Errorf("the server URL's query reached the authorization server at %s", r.Path)
		}
	}
	tok, err := s.OAuth().GetAccessToken(f.Ctx, &mcpauthv1.GetAccessTokenRequest{Name: name})
	oaMust(t, err)
	info, err := as.ValidateToken(t.Context(), tok.GetAccessToken())
	oaMust(t, err)
	if info.Resource != mcp.URL() {
		t.Errorf("token bound to resource %q", info.Resource)
	}
}

// TestOAuthScopes checks the scope selection on the authorization request:
// the challenge's scope, else the protected resource's scopes_supported,
// plus offline_access when the authorization server advertises it, plus
// step-up scopes.
func TestOAuthScopes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		as         testauthz.AuthServerOptions
		mcp        testauthz.MCPServerOptions
		additional []string
		want       string
	}{
		{
			name: "prm scopes plus offline_access",
			as:   testauthz.AuthServerOptions{DCR: true},
			mcp:  testauthz.MCPServerOptions{PRMScopes: []string{"mcp.read"}},
			want: "mcp.read offline_access",
		},
		{
			name: "challenge scope first",
			as:   testauthz.AuthServerOptions{DCR: true},
			mcp:  testauthz.MCPServerOptions{PRMScopes: []string{"mcp.read"}, ChallengeScope: "mcp.write"},
			want: "mcp.write offline_access",
		},
		{
			name: "no offline_access when not advertised",
			as:   testauthz.AuthServerOptions{DCR: true, Scopes: []string{"mcp.read", "mcp.write"}},
			mcp:  testauthz.MCPServerOptions{PRMScopes: []string{"mcp.read"}},
			want: "mcp.read",
		},
		{
			name:       "step-up scopes added",
			as:         testauthz.AuthServerOptions{DCR: true},
			mcp:        testauthz.MCPServerOptions{PRMScopes: []string{"mcp.read"}},
			additional: []string{"mcp.write"},
			want:       "mcp.read offline_access mcp.write",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := oaSetup(t, tc.as, tc.mcp, Options{}, nil)
			start, err := f.S.OAuth().StartAuthorization(f.Ctx, &mcpauthv1.StartAuthorizationRequest{
				Name: f.Name, User: "alice", AdditionalScopes: tc.additional})
			oaMust(t, err)
			if got := strings.Join(start.GetScopes(), " "); got != tc.want {
				t.Errorf("StartAuthorization scopes %q, want %q", got, tc.want)
			}
			p := oaOpen(t, NewBrowser(t), start.GetAuthorizationUrl())
			if p.Title != "Authorization complete" {
				t.Fatalf("result %q %q %q", p.Title, p.Reason, p.Detail)
			}
			if got := f.AS.RequestsTo("/authorize")[0].Query.Get("scope"); got != tc.want {
				t.Errorf("scope %q, want %q", got, tc.want)
			}
			st, err := f.S.OAuth().GetAuthorizationStatus(f.Ctx, &mcpauthv1.GetAuthorizationStatusRequest{Name: f.Name})
			oaMust(t, err)
			if got := strings.Join(st.GetScopes(), " "); got != tc.want {
				t.Errorf("granted scopes %q, want %q", got, tc.want)
			}
		})
	}
}

// TestOAuthResourceOmitted: an authorization server that rejects RFC 8707
// resource indicators fails the flow, unless the provider's compatibility
// profile omits the parameter, which then appears on no request.
func TestOAuthResourceOmitted(t *testing.T) {
	t.Parallel()
	t.Run("strict", func(t *testing.T) {
		t.Parallel()
		f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, RejectResource: true}, testauthz.MCPServerOptions{}, Options{}, nil)
		start := f.Start(t)
		p := oaOpen(t, NewBrowser(t), start.GetAuthorizationUrl())
		oaFailed(t, p, "AUTHORIZATION_DENIED")
		if !strings.Contains(p.Detail, "invalid_target") {
			t.Errorf("detail %q does not name invalid_target", p.Detail)
		}
		if n := f.AS.Counts("/token"); n != 0 {
			t.Errorf("%d token requests", n)
		}
	})
	t.Run("omit", func(t *testing.T) {
		t.Parallel()
		f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, RejectResource: true}, testauthz.MCPServerOptions{}, Options{},
			func(p *mcpauthv1.Provider) {
				p.Compatibility = &mcpauthv1.CompatibilityProfile{ResourceMode: mcpauthv1.ResourceParameterMode_RESOURCE_PARAMETER_MODE_OMIT}
			})
		f.Authorize(t)
		if f.AS.RequestsTo("/authorize")[0].Query.Has("resource") {
			t.Error("authorization request carries resource")
		}
		if f.AS.RequestsTo("/token")[0].Form.Has("resource") {
			t.Error("token request carries resource")
		}
		ev := oaWantEvent(t, f.S, "acme", "oauth.authorization.started", "")
		if ev.GetDetails()["resource"] != "omitted" {
			t.Errorf("authorization.started details %v", ev.GetDetails())
		}
		oaWantEvent(t, f.S, "acme", "oauth.compatibility.used", "")
	})
}
