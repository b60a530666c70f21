package e2e

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// publicTransport reaches mcpauth's https public URL on the harness's
// plain listener (as DNS and a TLS-terminating proxy would in front of a
// deployment), and every other URL as it is. Clients using it keep
// seeing the https URLs, so a browser's cookie jar keeps its __Host-
// cookies.
type publicTransport struct {
	public string
	local  atomic.Pointer[string]
}

func (p *publicTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	local := p.local.Load()
	if local == nil || !strings.HasPrefix(r.URL.String(), p.public+"/") {
		return http.DefaultTransport.RoundTrip(r)
	}
	u, err := url.Parse(*local + strings.TrimPrefix(r.URL.String(), p.public))
	if err != nil {
		return nil, err
	}
	r = r.Clone(r.Context())
	r.URL, r.Host = u, u.Host
	return http.DefaultTransport.RoundTrip(r)
}

// TestClientIDMetadataDocumentPrivateKeyJWT: an authorization-code
// provider with a generated private_key_jwt key and no client_id is
// identified by its own Client ID Metadata Document (client_id = the
// document's https URL, token_endpoint_auth_method private_key_jwt,
// jwks_uri = the provider's JWKS). A fosite authorization server that
// supports such documents fetches the document (no redirects, client_id
// compared exactly), then verifies every client assertion of the code
// exchange and the refresh against the keys at its jwks_uri; the person
// completes the flow in a browser and tools are listed and called with
// the token. At a server without document support the flow fails before
// the browser with NO_CLIENT_REGISTRATION, and with an http public URL
// the key without client_id is refused on create.
func TestClientIDMetadataDocumentPrivateKeyJWT(t *testing.T) {
	t.Parallel()
	const public = "https://auth.mcpauth.test"
	pt := &publicTransport{public: public}
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{AccessTokenLifetime: 2 * time.Second,
		CIMD: &testauthz.CIMDOptions{Client: &http.Client{Transport: pt}}})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	s := Start(t, Options{Env: oaAllowEnv("MCPAUTH_PUBLIC_URL", public)})
	pt.local.Store(&s.HTTPURL)
	ctx := Ctx(t, s.AdminKey)
	withKey := func(p *mcpauthv1.Provider) {
		p.OauthClient = &mcpauthv1.OAuthClient{PrivateKeyJwt: &mcpauthv1.ClientKey{Generate: true}}
	}
	name := createProvider(t, s, s.AdminKey, "cimdk", "docs", mcp.URL(), withKey)
	docURL, jwksURL := public+"/v1/oauth/client-metadata/cimdk/docs", public+"/v1/oauth/jwks/cimdk/docs"

	p, err := s.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	if c := p.GetProvider().GetOauthClient(); c.GetClientId() != "" || c.GetClientIdMetadataDocumentUri() != docURL ||
		c.GetPrivateKeyJwt().GetJwksUri() != jwksURL || !c.GetPrivateKeyJwt().GetGenerated() {
		t.Fatalf("oauth_client = %v", c)
	}

	// The document, as any authorization server reads it.
	resp, err := (&http.Client{Transport: pt}).Get(docURL)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || resp.StatusCode != 200 {
		t.Fatalf("document: %d %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	if doc["client_id"] != docURL || doc["token_endpoint_auth_method"] != "private_key_jwt" || doc["jwks_uri"] != jwksURL ||
		doc["token_endpoint_auth_signing_alg"] != "ES256" || doc["client_secret"] != nil {
		t.Fatalf("document %v", doc)
	}
	if uris, _ := doc["redirect_uris"].([]any); len(uris) != 1 || uris[0] != public+callbackPath {
		t.Fatalf("redirect_uris %v", doc["redirect_uris"])
	}
	for _, missing := range []string{"/v1/oauth/client-metadata/cimdk/nope", "/v1/oauth/client-metadata/other/docs"} {
		if r, err := http.Get(s.HTTPURL + missing); err != nil || r.StatusCode != http.StatusNotFound {
			t.Fatalf("GET %s: %v %v", missing, r, err)
		}
	}

	start := cimdStart(t, s, name)
	b := NewBrowser(t)
	b.Client.Transport = pt
	if page := oaOpen(t, b, start.GetAuthorizationUrl()); page.Title != "Authorization complete" {
		t.Fatalf("flow ended with %+v", page)
	}
	if auth := as.RequestsTo("/authorize"); len(auth) != 1 || auth[0].Param("client_id") != docURL {
		t.Fatalf("authorization requests: %v", auth)
	}

	// The tools, with the token.
	if _, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name}); err != nil {
		t.Fatalf("RefreshTools: %v", err)
	}
	if list, err := s.Tools().ListTools(ctx, &mcpauthv1.ListToolsRequest{Name: name}); err != nil || len(list.GetTools()) == 0 {
		t.Fatalf("ListTools: %v %v", list, err)
	}
	who := func() string {
		t.Helper()
		res, err := s.Tools().CallTool(ctx, &mcpauthv1.CallToolRequest{Name: name, Tool: "whoami", Arguments: &structpb.Struct{}})
		if err != nil {
			t.Fatalf("CallTool: %v", err)
		}
		return res.GetStructuredContent().GetFields()["subject"].GetStringValue()
	}
	if got := who(); got != "alice" {
		t.Fatalf("whoami = %q", got)
	}
	// After expiry: a refresh, authenticated by a new assertion.
	time.Sleep(2500 * time.Millisecond)
	if got := who(); got != "alice" {
		t.Fatalf("whoami after the refresh = %q", got)
	}

	// On the wire: the code exchange and the refresh each carry an RFC
	// 7523 assertion (iss = sub = the document URL, aud = the issuer, a
	// fresh jti) that verifies with the key at the document's jwks_uri;
	// no secret, no client_id other than the document's.
	var set jose.JSONWebKeySet
	r, err := http.Get(s.HTTPURL + "/v1/oauth/jwks/cimdk/docs")
	if err != nil || json.NewDecoder(r.Body).Decode(&set) != nil {
		t.Fatalf("jwks: %v", err)
	}
	r.Body.Close()
	tokens := as.RequestsTo("/token")
	var grants []string
	jtis := map[string]bool{}
	for _, req := range tokens {
		f := req.Form
		grants = append(grants, f.Get("grant_type"))
		if f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" || f.Has("client_secret") ||
			req.Header.Get("Authorization") != "" || (f.Has("client_id") && f.Get("client_id") != docURL) {
			t.Fatalf("token request client authentication: %v", f)
		}
		tok, err := jwt.ParseSigned(f.Get("client_assertion"), []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			t.Fatal(err)
		}
		var c jwt.Claims
		if err := tok.Claims(&set, &c); err != nil {
			t.Fatalf("assertion does not verify with the document's JWKS: %v", err)
		}
		if c.Issuer != docURL || c.Subject != docURL || !c.Audience.Contains(as.URL) || c.ID == "" || jtis[c.ID] ||
			c.Expiry == nil || c.Expiry.Time().Sub(c.IssuedAt.Time()) > 5*time.Minute {
			t.Fatalf("assertion claims %+v", c)
		}
		jtis[c.ID] = true
	}
	if !slices.Equal(grants, []string{"authorization_code", "refresh_token"}) {
		t.Fatalf("token requests %v", grants)
	}
	fetched := as.CIMDFetches()
	if !slices.Contains(fetched, docURL) || !slices.Contains(fetched, jwksURL) {
		t.Fatalf("the authorization server fetched %v", fetched)
	}
	// Revocation (RFC 7009 section 2.1: the client authenticates) uses the
	// same client and key.
	rev, err := s.OAuth().RevokeAuthorization(ctx, &mcpauthv1.RevokeAuthorizationRequest{Name: name})
	if err != nil || !rev.GetRevokedAtServer() {
		t.Fatalf("RevokeAuthorization = %v, %v", rev, err)
	}
	for _, req := range as.RequestsTo("/revoke") {
		if req.Form.Get("client_assertion_type") == "" || req.Form.Has("client_secret") {
			t.Fatalf("revocation request client authentication: %v", req.Form)
		}
	}

	// A server that fetches no documents: refused before the browser.
	plain := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{})
	plainMCP := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: plain})
	other := createProvider(t, s, s.AdminKey, "cimdk", "plain", plainMCP.URL(), withKey)
	_, err = s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: other, User: "alice"})
	tlWantReason(t, err, codes.FailedPrecondition, "NO_CLIENT_REGISTRATION")
	if n := len(plain.RequestsTo("/token")) + len(plain.RequestsTo("/authorize")); n != 0 {
		t.Fatalf("%d requests reached the server", n)
	}

	// Without an https public URL there is no document to be: refused.
	h := Start(t, Options{Env: oaAllowEnv()})
	_, err = h.Providers().CreateProvider(Ctx(t, h.AdminKey), &mcpauthv1.CreateProviderRequest{Parent: "tenants/cimdk", ProviderId: "docs",
		Provider: &mcpauthv1.Provider{DisplayName: "docs", ServerIdentifier: "docs", ServerUrl: mcp.URL(),
			OauthClient: &mcpauthv1.OAuthClient{PrivateKeyJwt: &mcpauthv1.ClientKey{Generate: true}}}})
	provWantField(t, err, codes.InvalidArgument, "provider.oauth_client.client_id")
}
