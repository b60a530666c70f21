package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	josev3 "github.com/go-jose/go-jose/v3"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/structpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// mcEnv is one mcpauth (PostgreSQL, Redis) with a machine authorization
// server and an MCP server protected by it.
type mcEnv struct {
	S        *Service
	AS       *testauthz.AuthServer
	MCP      *testauthz.MCPServer
	TokenDir string
}

func mcStart(t *testing.T, opt testauthz.MachineOptions) *mcEnv {
	t.Helper()
	dir := t.TempDir()
	e := &mcEnv{TokenDir: dir}
	e.AS = testauthz.NewMachineAuthServer(t, opt)
	e.MCP = testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: e.AS})
	e.S = tlStart(t, map[string]string{"MCPAUTH_WORKLOAD_TOKEN_DIRS": dir})
	return e
}

func (e *mcEnv) create(t *testing.T, id string, p *mcpauthv1.Provider) *mcpauthv1.Provider {
	t.Helper()
	p.DisplayName, p.ServerIdentifier = id, id
	if p.ServerUrl == "" {
		p.ServerUrl = e.MCP.URL()
	}
	out, err := e.S.Providers().CreateProvider(Ctx(t, e.S.AdminKey), &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme", ProviderId: id, Provider: p})
	if err != nil {
		t.Fatalf("CreateProvider: %v", err)
	}
	return out.GetProvider()
}

func (e *mcEnv) token(t *testing.T, name string) (*mcpauthv1.GetAccessTokenResponse, error) {
	t.Helper()
	return e.S.OAuth().GetAccessToken(Ctx(t, e.S.AdminKey), &mcpauthv1.GetAccessTokenRequest{Name: name})
}

// tokenRequests are the requests the authorization server's token
// endpoint received.
func (e *mcEnv) tokenRequests() []testauthz.RecordedRequest { return e.AS.RequestsTo("/token") }

// callEcho lists the tools and calls echo through mcpauth.
func (e *mcEnv) callEcho(t *testing.T, name string) {
	t.Helper()
	ctx := Ctx(t, e.S.AdminKey)
	if _, err := e.S.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name}); err != nil {
		t.Fatalf("RefreshTools: %v", err)
	}
	args, _ := structpb.NewStruct(map[string]any{"text": "hi"})
	res, err := e.S.Tools().CallTool(ctx, &mcpauthv1.CallToolRequest{Name: name, Tool: "echo", Arguments: args})
	if err != nil {
		t.Fatalf("CallTool: %v", err)
	}
	if res.GetIsError() {
		t.Fatalf("CallTool result is an error: %v", res)
	}
}

// noSecretAnywhere fails if any of secrets appears in the provider's
// API view, the tenant's audit rows or the service's logs.
func (e *mcEnv) noSecretAnywhere(t *testing.T, name string, secrets ...string) {
	t.Helper()
	ctx := Ctx(t, e.S.AdminKey)
	p, err := e.S.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	view := provJSON(t, p)
	audit := ""
	for _, ev := range provAuditEvents(t, e.S, e.S.AdminKey, "acme") {
		audit += provJSON(t, ev)
	}
	logs := e.S.Logs.String()
	for _, s := range secrets {
		for where, text := range map[string]string{"GetProvider": view, "audit": audit, "logs": logs} {
			if s != "" && strings.Contains(text, s) {
				t.Errorf("secret %.12q... found in %s", s, where)
			}
		}
	}
}

// TestMachineClientCredentialsSecret: client credentials with
// client_secret_basic and client_secret_post, on the wire; tools work
// with the token; the token is served from storage until it is due; no
// secret leaks.
func TestMachineClientCredentialsSecret(t *testing.T) {
	t.Parallel()
	for _, method := range []string{"client_secret_basic", "client_secret_post"} {
		t.Run(method, func(t *testing.T) {
			e := mcStart(t, testauthz.MachineOptions{})
			const secret = "s3cret-machine-value-1234567890"
			e.AS.RegisterMachineClient(testauthz.MachineClient{ID: "svc", Secret: secret, AuthMethod: method})
			p := e.create(t, "cc", &mcpauthv1.Provider{CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_CLIENT_CREDENTIALS,
				OauthClient:   &mcpauthv1.OAuthClient{ClientId: "svc", ClientSecret: secret},
				Compatibility: &mcpauthv1.CompatibilityProfile{TokenEndpointAuthMethod: method}})
			if p.GetCredentialKind() != mcpauthv1.CredentialKind_CREDENTIAL_KIND_CLIENT_CREDENTIALS {
				t.Fatalf("kind = %v", p.GetCredentialKind())
			}
			tok, err := e.token(t, p.GetName())
			if err != nil {
				t.Fatalf("GetAccessToken: %v", err)
			}
			if _, err := e.AS.ValidateToken(t.Context(), tok.GetAccessToken()); err != nil {
				t.Fatalf("the server does not know the token: %v", err)
			}
			reqs := e.tokenRequests()
			if len(reqs) != 1 {
				t.Fatalf("%d token requests, want 1", len(reqs))
			}
			r := reqs[0]
			if g := r.Form.Get("grant_type"); g != "client_credentials" {
				t.Fatalf("grant_type = %q", g)
			}
			if got := r.Form.Get("resource"); got != e.MCP.URL() {
				t.Errorf("resource = %q, want %q", got, e.MCP.URL())
			}
			user, pass, basic := (&http.Request{Header: r.Header}).BasicAuth()
			switch method {
			case "client_secret_basic":
				if !basic || user != "svc" || pass != secret || r.Form.Has("client_secret") {
					t.Errorf("basic auth = %v %q, form has secret %v", basic, user, r.Form.Has("client_secret"))
				}
			case "client_secret_post":
				if basic || r.Form.Get("client_id") != "svc" || r.Form.Get("client_secret") != secret {
					t.Errorf("post auth: basic %v, form client_id %q", basic, r.Form.Get("client_id"))
				}
			}
			// Served again from storage: no second request.
			if again, err := e.token(t, p.GetName()); err != nil || again.GetAccessToken() != tok.GetAccessToken() {
				t.Fatalf("second GetAccessToken = %v, %v", again, err)
			}
			e.callEcho(t, p.GetName())
			if n := len(e.tokenRequests()); n != 1 {
				t.Errorf("%d token requests after tool calls, want 1", n)
			}
			e.noSecretAnywhere(t, p.GetName(), secret, tok.GetAccessToken())
			var obtained int
			for _, ev := range provAuditEvents(t, e.S, e.S.AdminKey, "acme") {
				if ev.GetEventType() == "oauth.token.obtained" {
					obtained++
					if ev.GetDetails()["auth_method"] != method || ev.GetDetails()["grant_type"] != "client_credentials" {
						t.Errorf("obtained event details = %v", ev.GetDetails())
					}
				}
			}
			if obtained != 1 {
				t.Errorf("%d oauth.token.obtained events, want 1", obtained)
			}
		})
	}
}

// mcVerifyAssertion checks a client assertion against the JWKS mcpauth
// serves (RFC 7523 section 3): signature, iss = sub = client id, aud =
// the issuer, a short exp, iat and a jti. It returns the jti.
func mcVerifyAssertion(t *testing.T, raw string, jwks *jose.JSONWebKeySet, alg, clientID, issuer string) string {
	t.Helper()
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
	if err != nil {
		t.Fatalf("client assertion does not parse as %s: %v", alg, err)
	}
	var c jwt.Claims
	if err := tok.Claims(jwks, &c); err != nil {
		t.Fatalf("client assertion signature does not verify with the served JWKS: %v", err)
	}
	if c.Issuer != clientID || c.Subject != clientID {
		t.Errorf("iss %q sub %q, want %q", c.Issuer, c.Subject, clientID)
	}
	if len(c.Audience) != 1 || c.Audience[0] != issuer {
		t.Errorf("aud = %v, want [%q]", c.Audience, issuer)
	}
	if c.IssuedAt == nil || c.Expiry == nil || c.ID == "" {
		t.Fatalf("iat %v exp %v jti %q: all are required", c.IssuedAt, c.Expiry, c.ID)
	}
	if life := c.Expiry.Time().Sub(c.IssuedAt.Time()); life <= 0 || life > 5*time.Minute {
		t.Errorf("assertion lifetime %v, want short", life)
	}
	return c.ID
}

// mcFetchJWKS reads the JWKS mcpauth serves at uri, without credentials,
// and checks it holds no private key material.
func mcFetchJWKS(t *testing.T, uri string) *jose.JSONWebKeySet {
	t.Helper()
	res, err := http.Get(uri)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d", uri, res.StatusCode)
	}
	var raw struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(body, &raw); err != nil || len(raw.Keys) != 1 {
		t.Fatalf("JWKS %s: %v", body, err)
	}
	for _, private := range []string{"d", "p", "q", "dp", "dq", "qi"} {
		if _, ok := raw.Keys[0][private]; ok {
			t.Fatalf("JWKS carries private member %q", private)
		}
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		t.Fatal(err)
	}
	return &set
}

// TestMachinePrivateKeyJWT: client credentials with private_key_jwt, a
// key generated by mcpauth (ES256) and a supplied PKCS#8 RSA key (RS256).
// fosite fetches the public key from mcpauth's JWKS URL and verifies each
// assertion; the test verifies them again and checks their claims; each
// new token is asked for again with a new assertion (unique jti) once the
// old one is due; the private key is never returned or logged.
func TestMachinePrivateKeyJWT(t *testing.T) {
	t.Parallel()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	rsaPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	for _, tc := range []struct {
		alg string
		key *mcpauthv1.ClientKey
	}{
		{"ES256", &mcpauthv1.ClientKey{Generate: true}},
		{"RS256", &mcpauthv1.ClientKey{PrivateKeyPem: rsaPEM}},
	} {
		t.Run(tc.alg, func(t *testing.T) {
			e := mcStart(t, testauthz.MachineOptions{AccessTokenLifetime: 4 * time.Second})
			p := e.create(t, "pkjwt", &mcpauthv1.Provider{CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_CLIENT_CREDENTIALS,
				OauthClient: &mcpauthv1.OAuthClient{ClientId: "svc-key", PrivateKeyJwt: tc.key}})
			k := p.GetOauthClient().GetPrivateKeyJwt()
			if k.GetAlgorithm() != tc.alg || k.GetKeyId() == "" || k.GetJwksUri() == "" || k.GetPrivateKeyPem() != "" {
				t.Fatalf("key view = %v", k)
			}
			diag, err := e.S.OAuth().DiagnoseProvider(Ctx(t, e.S.AdminKey), &mcpauthv1.DiagnoseProviderRequest{Name: p.GetName()})
			if err != nil {
				t.Fatalf("DiagnoseProvider: %v", err)
			}
			if !diag.GetReady() || diag.GetGrantType() != "client_credentials" || diag.GetTokenEndpointAuthMethod() != "private_key_jwt" ||
				diag.GetCredentialKind() != mcpauthv1.CredentialKind_CREDENTIAL_KIND_CLIENT_CREDENTIALS ||
				!slices.Contains(diag.GetGrantTypesSupported(), "client_credentials") ||
				!slices.Contains(diag.GetTokenEndpointAuthMethodsSupported(), "private_key_jwt") {
				t.Fatalf("DiagnoseProvider = %v", diag)
			}
			if n := len(e.tokenRequests()); n != 0 {
				t.Fatalf("DiagnoseProvider made %d token requests", n)
			}
			jwks := mcFetchJWKS(t, k.GetJwksUri())
			e.AS.RegisterMachineClient(testauthz.MachineClient{ID: "svc-key", JWKSURI: k.GetJwksUri(), Alg: tc.alg})

			first, err := e.token(t, p.GetName())
			if err != nil {
				t.Fatalf("GetAccessToken: %v", err)
			}
			e.callEcho(t, p.GetName())
			// Due after 3 of its 4 seconds: asked for again, with a new assertion.
			time.Sleep(3200 * time.Millisecond)
			second, err := e.token(t, p.GetName())
			if err != nil {
				t.Fatalf("GetAccessToken when due: %v", err)
			}
			if second.GetAccessToken() == first.GetAccessToken() {
				t.Fatal("the due token was served again instead of a new one")
			}
			reqs := e.tokenRequests()
			if len(reqs) != 2 {
				t.Fatalf("%d token requests, want 2", len(reqs))
			}
			jtis := map[string]bool{}
			for _, r := range reqs {
				if r.Form.Get("grant_type") != "client_credentials" || r.Form.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
					t.Fatalf("token request form = %v", r.Form)
				}
				if _, _, basic := (&http.Request{Header: r.Header}).BasicAuth(); basic || r.Form.Has("client_secret") {
					t.Fatal("a private_key_jwt request carries a secret")
				}
				jtis[mcVerifyAssertion(t, r.Form.Get("client_assertion"), jwks, tc.alg, "svc-key", e.AS.URL)] = true
			}
			if len(jtis) != 2 {
				t.Errorf("jti reused across assertions")
			}
			if tc.key.GetPrivateKeyPem() != "" {
				body := strings.Split(tc.key.GetPrivateKeyPem(), "\n")[3]
				e.noSecretAnywhere(t, p.GetName(), body)
				row := provRow(t, e.S, "acme", "pkjwt")
				if strings.Contains(string(row.CredentialSecrets), body) || strings.Contains(row.CredentialConfig, body) {
					t.Error("the private key is stored in clear")
				}
			}
			e.noSecretAnywhere(t, p.GetName(), first.GetAccessToken(), second.GetAccessToken())
		})
	}
}

// TestMachineOneRequestAtATime: many concurrent reads of a due
// client-credentials token make exactly one token request.
func TestMachineOneRequestAtATime(t *testing.T) {
	t.Parallel()
	e := mcStart(t, testauthz.MachineOptions{AccessTokenLifetime: 4 * time.Second})
	e.AS.RegisterMachineClient(testauthz.MachineClient{ID: "svc", Secret: "sec-one-at-a-time"})
	p := e.create(t, "cc1", &mcpauthv1.Provider{CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_CLIENT_CREDENTIALS,
		OauthClient: &mcpauthv1.OAuthClient{ClientId: "svc", ClientSecret: "sec-one-at-a-time"}})
	var wg sync.WaitGroup
	toks := make(chan string, 32)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := e.token(t, p.GetName())
			if err != nil {
				t.Errorf("GetAccessToken: %v", err)
				return
			}
			toks <- tok.GetAccessToken()
		}()
	}
	wg.Wait()
	close(toks)
	seen := map[string]bool{}
	for tk := range toks {
		seen[tk] = true
	}
	if n := len(e.tokenRequests()); n != 1 || len(seen) != 1 {
		t.Fatalf("%d token requests and %d distinct tokens for 32 concurrent first reads, want 1 and 1", n, len(seen))
	}
}

// mcWorkloadToken signs a workload identity token (RFC 7523 section 3)
// with key: iss, sub, aud the authorization server, exp, iat, jti.
func mcWorkloadToken(t *testing.T, key *ecdsa.PrivateKey, kid, iss, sub, aud string) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	s, err := jwt.Signed(sig).Claims(jwt.Claims{Issuer: iss, Subject: sub, Audience: jwt.Audience{aud},
		IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute)), ID: rand.Text()}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestMachineJWTBearerWorkload: the JWT bearer grant with a workload
// token read from a file in the allowed directory, fresh for every
// request; a rejected assertion is reported as the server said
// (invalid_grant), not retried, and never answered with another grant.
func TestMachineJWTBearerWorkload(t *testing.T) {
	t.Parallel()
	e := mcStart(t, testauthz.MachineOptions{AccessTokenLifetime: 4 * time.Second})
	const iss, sub = "https://kubernetes.default.svc", "system:serviceaccount:agents:nightly"
	wk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	e.AS.TrustIssuer(iss, sub, &josev3.JSONWebKey{Key: wk.Public(), KeyID: "wk1", Algorithm: "ES256", Use: "sig"}, []string{"mcp.read", "mcp.write"})
	e.AS.RegisterMachineClient(testauthz.MachineClient{ID: "wl", Secret: "wl-secret-123456"})
	file := filepath.Join(e.TokenDir, "token")
	write := func(tok string) {
		if err := os.WriteFile(file, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a1 := mcWorkloadToken(t, wk, "wk1", iss, sub, e.AS.URL)
	write(a1)
	p := e.create(t, "wl", &mcpauthv1.Provider{CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_JWT_BEARER,
		OauthClient:      &mcpauthv1.OAuthClient{ClientId: "wl", ClientSecret: "wl-secret-123456"},
		WorkloadIdentity: &mcpauthv1.WorkloadIdentity{AssertionFile: file}})
	first, err := e.token(t, p.GetName())
	if err != nil {
		t.Fatalf("GetAccessToken: %v", err)
	}
	e.callEcho(t, p.GetName())
	// The projected token rotates on disk; the next request reads the new one.
	a2 := mcWorkloadToken(t, wk, "wk1", iss, sub, e.AS.URL)
	write(a2)
	time.Sleep(3200 * time.Millisecond)
	if second, err := e.token(t, p.GetName()); err != nil || second.GetAccessToken() == first.GetAccessToken() {
		t.Fatalf("GetAccessToken when due = %v, %v", second, err)
	}
	reqs := e.tokenRequests()
	if len(reqs) != 2 || reqs[0].Form.Get("assertion") != a1 || reqs[1].Form.Get("assertion") != a2 {
		t.Fatalf("%d token requests; the assertions are not the file's content of the moment", len(reqs))
	}
	for _, r := range reqs {
		if r.Form.Get("grant_type") != testauthz.GrantJWTBearer {
			t.Fatalf("grant_type = %q", r.Form.Get("grant_type"))
		}
	}
	e.noSecretAnywhere(t, p.GetName(), a1, a2, "wl-secret-123456")

	// An assertion signed by a key the server does not trust.
	bad, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	write(mcWorkloadToken(t, bad, "wk1", iss, sub, e.AS.URL))
	bp := e.create(t, "wl-bad", &mcpauthv1.Provider{ServerUrl: e.MCP.URL() + "?other=1", CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_JWT_BEARER,
		OauthClient:      &mcpauthv1.OAuthClient{ClientId: "wl", ClientSecret: "wl-secret-123456"},
		WorkloadIdentity: &mcpauthv1.WorkloadIdentity{AssertionFile: file}})
	before := len(e.tokenRequests())
	for i := range 2 {
		_, err := e.token(t, bp.GetName())
		info := tokErrorInfo(t, err, codes.FailedPrecondition)
		if info.GetReason() != "INVALID_GRANT" {
			t.Fatalf("attempt %d: reason %q, want INVALID_GRANT", i, info.GetReason())
		}
	}
	after := e.tokenRequests()[before:]
	if len(after) != 1 || after[0].Form.Get("grant_type") != testauthz.GrantJWTBearer {
		t.Fatalf("after a rejected assertion: %d token requests (want exactly 1, jwt-bearer, no retry and no other grant)", len(after))
	}
}

// TestMachineWorkloadPathConfined: a tenant can only name token files
// inside the operator's directories, and a link out of them is not
// followed.
func TestMachineWorkloadPathConfined(t *testing.T) {
	t.Parallel()
	e := mcStart(t, testauthz.MachineOptions{})
	ctx := Ctx(t, e.S.AdminKey)
	for _, path := range []string{"/etc/passwd", filepath.Join(e.S.DataDir, "master.key"), e.TokenDir + "/../x", "relative/token", e.TokenDir} {
		_, err := e.S.Providers().CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme", Provider: &mcpauthv1.Provider{
			DisplayName: "x", ServerIdentifier: "x", ServerUrl: e.MCP.URL(),
			CredentialKind:   mcpauthv1.CredentialKind_CREDENTIAL_KIND_JWT_BEARER,
			WorkloadIdentity: &mcpauthv1.WorkloadIdentity{AssertionFile: path}}})
		provWantField(t, err, codes.InvalidArgument, "provider.workload_identity.assertion_file")
	}
	// A link inside the directory to a file outside it.
	outside := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(outside, []byte("not-a-token-but-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(e.TokenDir, "link")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	p := e.create(t, "wl-link", &mcpauthv1.Provider{CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_JWT_BEARER,
		WorkloadIdentity: &mcpauthv1.WorkloadIdentity{AssertionFile: link}})
	_, err := e.token(t, p.GetName())
	if info := tokErrorInfo(t, err, codes.FailedPrecondition); info.GetReason() != "ASSERTION_UNAVAILABLE" {
		t.Fatalf("reason %q, want ASSERTION_UNAVAILABLE", info.GetReason())
	}
	if n := len(e.tokenRequests()); n != 0 {
		t.Fatalf("%d token requests for an assertion outside the directory", n)
	}
	if strings.Contains(e.S.Logs.String(), "not-a-token-but-secret") {
		t.Fatal("the linked file's content reached the logs")
	}
}

// TestMachineStaticAuthorization: a static API key is sent as the
// Authorization header, is never returned, and is never combined with an
// OAuth client.
func TestMachineStaticAuthorization(t *testing.T) {
	t.Parallel()
	const key = "Bearer sk-static-0123456789"
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{RequiredHeader: [2]string{"Authorization", key}})
	s := tlStart(t, nil)
	ctx := Ctx(t, s.AdminKey)
	base := func() *mcpauthv1.Provider {
		return &mcpauthv1.Provider{DisplayName: "k", ServerIdentifier: "k", ServerUrl: mcp.URL(),
			CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_STATIC_AUTHORIZATION, StaticAuthorization: key}
	}
	bad := base()
	bad.OauthClient = &mcpauthv1.OAuthClient{ClientId: "c", ClientSecret: "s"}
	_, err := s.Providers().CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme", Provider: bad})
	provWantField(t, err, codes.InvalidArgument, "provider.oauth_client")
	noKind := base()
	noKind.CredentialKind = mcpauthv1.CredentialKind_CREDENTIAL_KIND_UNSPECIFIED
	_, err = s.Providers().CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme", Provider: noKind})
	provWantField(t, err, codes.InvalidArgument, "provider.static_authorization")
	if n := provRowCount(t, s, "providers"); n != 0 {
		t.Fatalf("%d providers after refused creates", n)
	}
	out, err := s.Providers().CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme", ProviderId: "k", Provider: base()})
	if err != nil {
		t.Fatalf("CreateProvider: %v", err)
	}
	p := out.GetProvider()
	if info := p.GetStaticAuthorizationInfo(); !info.GetValueSet() || info.GetFingerprint() == "" || p.GetStaticAuthorization() != "" {
		t.Fatalf("static authorization view = %v", info)
	}
	e := &mcEnv{S: s, MCP: mcp}
	e.callEcho(t, p.GetName())
	for _, r := range mcp.Received() {
		if got := r.Header.Get("Authorization"); got != key {
			t.Fatalf("MCP request with Authorization %q", got)
		}
	}
	// Adding an OAuth client later is refused too, and changes nothing.
	_, err = s.Providers().UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
		Provider:   &mcpauthv1.Provider{Name: p.GetName(), OauthClient: &mcpauthv1.OAuthClient{ClientId: "c"}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"oauth_client.client_id"}}})
	provWantField(t, err, codes.InvalidArgument, "provider.oauth_client")
	e.noSecretAnywhere(t, p.GetName(), "sk-static-0123456789")
}

// TestMachineOneRequestAcrossReplicas: three replicas sharing PostgreSQL
// and Redis, 30 concurrent first reads of a client-credentials provider:
// exactly one token request at the authorization server, one token.
func TestMachineOneRequestAcrossReplicas(t *testing.T) {
	t.Parallel()
	as := testauthz.NewMachineAuthServer(t, testauthz.MachineOptions{})
	as.RegisterMachineClient(testauthz.MachineClient{ID: "svc", Secret: "replica-secret"})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	_, prefix := testenv.Redis(t)
	redisURL := testenv.RedisURLWithPrefix(t, prefix)
	master := make([]byte, 32)
	_, _ = rand.Read(master)
	fc, key := NewCaller(t, "machine-replicas", []string{"*"}, caller.ProvidersRead, caller.ProvidersWrite, caller.TokensRead)
	env := map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1", "MCPAUTH_MASTER_KEYS": "1:" + base64.StdEncoding.EncodeToString(master),
		"MCPAUTH_LOG_LEVEL": "info", "MCPAUTH_DATABASE_MAX_CONNS": "4"}
	dsn := testenv.PostgresDSN(t)
	var replicas []*Service
	for range 3 {
		replicas = append(replicas, Start(t, Options{DSN: dsn, RedisURL: redisURL, Env: env,
			Callers: &caller.File{Callers: []caller.FileCaller{fc}}}))
	}
	out, err := replicas[0].Providers().CreateProvider(Ctx(t, key), &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme", ProviderId: "cc",
		Provider: &mcpauthv1.Provider{DisplayName: "cc", ServerIdentifier: "cc", ServerUrl: mcp.URL(),
			CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_CLIENT_CREDENTIALS,
			OauthClient:    &mcpauthv1.OAuthClient{ClientId: "svc", ClientSecret: "replica-secret"}}})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		seen = map[string]bool{}
		wg   sync.WaitGroup
	)
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := replicas[i%3].OAuth().GetAccessToken(Ctx(t, key), &mcpauthv1.GetAccessTokenRequest{Name: out.GetProvider().GetName()})
			if err != nil {
				t.Errorf("GetAccessToken on replica %d: %v", i%3, err)
				return
			}
			mu.Lock()
			seen[tok.GetAccessToken()] = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	if n := len(as.RequestsTo("/token")); n != 1 || len(seen) != 1 {
		t.Fatalf("%d token requests and %d distinct tokens across 3 replicas, want 1 and 1", n, len(seen))
	}
}
