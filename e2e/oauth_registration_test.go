package e2e

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestOAuthDynamicRegistration: RFC 7591 registration carries
// application_type and the callback as redirect URI, is persisted, and is
// reused by the next flow instead of registering again.
func TestOAuthDynamicRegistration(t *testing.T) {
	t.Parallel()
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true}, testauthz.MCPServerOptions{}, Options{}, nil)
	f.Authorize(t)
	regs := f.AS.RequestsTo("/register")
	if len(regs) != 1 {
		t.Fatalf("%d registration requests", len(regs))
	}
	var meta struct {
		RedirectURIs            []string `json:"redirect_uris"`
		ApplicationType         string   `json:"application_type"`
		GrantTypes              []string `json:"grant_types"`
		ResponseTypes           []string `json:"response_types"`
		TokenEndpointAuthMethod string   `json:"token_endpoint_auth_method"`
		ClientName              string   `json:"client_name"`
	}
	if err := json.Unmarshal(regs[0].Body, &meta); err != nil {
		t.Fatalf("registration body %q: %v", regs[0].Body, err)
	}
	if meta.ApplicationType != "web" {
		t.Errorf("application_type %q", meta.ApplicationType)
	}
	if !slices.Equal(meta.RedirectURIs, []string{f.S.HTTPURL + callbackPath}) {
		t.Errorf("redirect_uris %q", meta.RedirectURIs)
	}
	if !slices.Contains(meta.GrantTypes, "authorization_code") || !slices.Equal(meta.ResponseTypes, []string{"code"}) || meta.ClientName == "" {
		t.Errorf("registration metadata %+v", meta)
	}
	firstClient := f.AS.RequestsTo("/authorize")[0].Query.Get("client_id")

	// A second flow reuses the stored registration.
	start := f.Start(t)
	if start.GetRegistrationMethod() != "dynamic_registration" {
		t.Errorf("registration method %q", start.GetRegistrationMethod())
	}
	p := oaOpen(t, NewBrowser(t), start.GetAuthorizationUrl())
	if p.Title != "Authorization complete" {
		t.Fatalf("second flow: %q %q", p.Title, p.Reason)
	}
	if n := f.AS.Counts("/register"); n != 1 {
		t.Errorf("/register count %d after the second flow, want 1", n)
	}
	if got := f.AS.RequestsTo("/authorize")[1].Query.Get("client_id"); got != firstClient {
		t.Errorf("second flow used client %q, want %q", got, firstClient)
	}
	if n := len(oaEvents(t, f.S, "acme", "oauth.client.registered")); n != 1 {
		t.Errorf("%d oauth.client.registered events", n)
	}
}

// TestOAuthPreRegisteredClient: a client entered on the provider is used
// with client authentication at the token endpoint; its secret never shows
// up in a response, a log line, an audit event or a browser URL.
func TestOAuthPreRegisteredClient(t *testing.T) {
	t.Parallel()
	const clientID, clientSecret = "mcpauth-pre", "pre-secret-Zq8v3XkT1w"
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{IssParameter: true})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	s := Start(t, Options{Env: oaAllowEnv()})
	as.RegisterClient(clientID, clientSecret, []string{s.HTTPURL + callbackPath}, false)
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "acme", "docs", mcp.URL(), func(p *mcpauthv1.Provider) {
		p.OauthClient = &mcpauthv1.OAuthClient{ClientId: clientID, ClientSecret: clientSecret}
	})
	f := &oaFlow{S: s, AS: as, MCP: mcp, Name: name, Ctx: ctx}
	start := f.Start(t)
	if start.GetRegistrationMethod() != "pre_registered" {
		t.Errorf("registration method %q", start.GetRegistrationMethod())
	}
	b := NewBrowser(t)
	p := oaOpen(t, b, start.GetAuthorizationUrl())
	if p.Title != "Authorization complete" {
		t.Fatalf("result page %q %q", p.Title, p.Reason)
	}
	if n := as.Counts("/register"); n != 0 {
		t.Errorf("%d registration requests with a pre-registered client", n)
	}
	toks := as.RequestsTo("/token")
	if len(toks) != 1 {
		t.Fatalf("%d token requests", len(toks))
	}
	user, pass, ok := parseBasic(toks[0].Header.Get("Authorization"))
	if !ok || user != clientID || pass != clientSecret {
		t.Errorf("token request not authenticated with client_secret_basic: %q", toks[0].Header.Get("Authorization"))
	}
	if toks[0].Form.Has("client_secret") {
		t.Error("client secret also sent in the form body")
	}

	// Where the secret must never appear.
	var seen []string
	gp, err := s.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: name})
	oaMust(t, err)
	if !gp.GetProvider().GetOauthClient().GetClientSecretSet() {
		t.Error("client_secret_set is false")
	}
	seen = append(seen, protojson.Format(gp), protojson.Format(start), p.Body, s.Logs.String())
	for _, ev := range oaEvents(t, s, "acme", "") {
		seen = append(seen, protojson.Format(ev))
	}
	for _, u := range b.Visited {
		seen = append(seen, u.String())
	}
	for _, r := range as.RequestsTo("/authorize") {
		seen = append(seen, r.Query.Encode())
	}
	for _, text := range seen {
		if strings.Contains(text, clientSecret) || strings.Contains(text, url.QueryEscape(clientSecret)) {
			t.Fatalf("client secret found in %.300q", text)
		}
	}
}

// parseBasic decodes an HTTP Basic authorization header whose parts are
// form-encoded (RFC 6749 section 2.3.1).
func parseBasic(h string) (string, string, bool) {
	raw, ok := strings.CutPrefix(h, "Basic ")
	if !ok {
		return "", "", false
	}
	dec, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		return "", "", false
	}
	u, p, ok := strings.Cut(string(dec), ":")
	if !ok {
		return "", "", false
	}
	u, err1 := url.QueryUnescape(u)
	p, err2 := url.QueryUnescape(p)
	return u, p, ok && err1 == nil && err2 == nil
}

// TestOAuthPublicPreRegisteredClient: a pre-registered client without a
// secret sends only its client_id.
func TestOAuthPublicPreRegisteredClient(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	s := Start(t, Options{Env: oaAllowEnv()})
	as.RegisterClient("public-client", "", []string{s.HTTPURL + callbackPath}, true)
	name := createProvider(t, s, s.AdminKey, "acme", "docs", mcp.URL(), func(p *mcpauthv1.Provider) {
		p.OauthClient = &mcpauthv1.OAuthClient{ClientId: "public-client"}
	})
	f := &oaFlow{S: s, AS: as, MCP: mcp, Name: name, Ctx: Ctx(t, s.AdminKey)}
	f.Authorize(t)
	tok := as.RequestsTo("/token")[0]
	if tok.Header.Get("Authorization") != "" || tok.Form.Get("client_id") != "public-client" || tok.Form.Has("client_secret") {
		t.Errorf("public client token request: auth %q form %v", tok.Header.Get("Authorization"), tok.Form)
	}
}

// TestOAuthEvictedRegistration: when the authorization server has
// forgotten the dynamically registered client, the code exchange fails with
// invalid_client and the next flow registers again.
func TestOAuthEvictedRegistration(t *testing.T) {
	t.Parallel()
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true}, testauthz.MCPServerOptions{}, Options{}, nil)
	start := f.Start(t)
	b := NewBrowser(t)
	cb := oaToCallback(t, b, start.GetAuthorizationUrl())
	oldClient := f.AS.RequestsTo("/authorize")[0].Query.Get("client_id")
	f.AS.DeleteClient(oldClient)

	p := oaOpen(t, b, cb.String())
	oaFailed(t, p, "TOKEN_EXCHANGE_FAILED")
	if n := f.AS.Counts("/token"); n != 1 {
		t.Errorf("%d token requests, want exactly 1 (never retried)", n)
	}
	if st := f.Status(t); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED {
		t.Errorf("status %v", st)
	}

	// The next flow registers a new client and completes.
	start = f.Start(t)
	if n := f.AS.Counts("/register"); n != 2 {
		t.Fatalf("/register count %d, want 2 (re-registration)", n)
	}
	p = oaOpen(t, NewBrowser(t), start.GetAuthorizationUrl())
	if p.Code != http.StatusOK || p.Title != "Authorization complete" {
		t.Fatalf("flow after re-registration: %d %q %q", p.Code, p.Title, p.Reason)
	}
	if got := f.AS.RequestsTo("/authorize")[1].Query.Get("client_id"); got == oldClient || got == "" {
		t.Errorf("second flow used client %q (evicted %q)", got, oldClient)
	}
}
