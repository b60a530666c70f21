package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	josev3 "github.com/go-jose/go-jose/v3"
	"google.golang.org/grpc/codes"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// TestMachineClientCredentialsBasicOnly: a server that advertises only
// client_secret_basic gets HTTP Basic without any compatibility setting,
// with the client id and secret form-urlencoded before the Basic encoding
// (RFC 6749 section 2.3.1): reserved characters in either (":", "+", "%",
// "/", "=", non-ASCII) reach the server intact, and fosite, which decodes
// them as the RFC says, accepts the client. Tools are listed and called.
func TestMachineClientCredentialsBasicOnly(t *testing.T) {
	t.Parallel()
	e := mcStart(t, testauthz.MachineOptions{AuthMethods: []string{"client_secret_basic"}})
	const id, secret = "svc:nightly+1", "s3cret/+:%=é-value-1234567890"
	e.AS.RegisterMachineClient(testauthz.MachineClient{ID: id, Secret: secret})
	p := e.create(t, "ccbasic", &mcpauthv1.Provider{CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_CLIENT_CREDENTIALS,
		OauthClient: &mcpauthv1.OAuthClient{ClientId: id, ClientSecret: secret}})
	tok, err := e.token(t, p.GetName())
	if err != nil {
		t.Fatalf("GetAccessToken: %v", err)
	}
	e.callEcho(t, p.GetName())
	reqs := e.tokenRequests()
	if len(reqs) != 1 {
		t.Fatalf("%d token requests, want 1", len(reqs))
	}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
	if got := reqs[0].Header.Get("Authorization"); got != want || reqs[0].Form.Has("client_secret") || reqs[0].Form.Get("grant_type") != "client_credentials" {
		t.Fatalf("token request: Authorization %q (want %q), form %v", got, want, reqs[0].Form)
	}
	e.noSecretAnywhere(t, p.GetName(), secret, url.QueryEscape(secret), tok.GetAccessToken())
}

// TestMachineJWTBearerRefusals: the workload JWT bearer grant refused by
// the server as unauthorized_client (the client may not use the grant)
// and invalid_scope (the assertion's key may not ask for the scope) is
// reported as it is (reason and metadata oauth_error), once: no retry, no
// other grant type, although the client holds a secret it could use for
// client_credentials; reads and tool calls afterwards answer the same
// error without asking the server again.
func TestMachineJWTBearerRefusals(t *testing.T) {
	t.Parallel()
	const iss, sub = "https://token.actions.example", "repo:acme/agents:ref:refs/heads/main"
	for _, tc := range []struct {
		name, reason, code string
		client             testauthz.MachineClient
		keyScopes, scopes  []string
	}{
		{"unauthorized_client", "UNAUTHORIZED_CLIENT", "unauthorized_client",
			testauthz.MachineClient{ID: "wl", Secret: "wl-secret-123456", GrantTypes: []string{testauthz.GrantClientCredentials}},
			[]string{"mcp.read", "mcp.write"}, nil},
		{"invalid_scope", "INVALID_SCOPE", "invalid_scope",
			testauthz.MachineClient{ID: "wl", Secret: "wl-secret-123456"}, []string{"mcp.read"}, []string{"mcp.write"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := mcStart(t, testauthz.MachineOptions{})
			wk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			e.AS.TrustIssuer(iss, sub, &josev3.JSONWebKey{Key: wk.Public(), KeyID: "wk1", Algorithm: "ES256", Use: "sig"}, tc.keyScopes)
			e.AS.RegisterMachineClient(tc.client)
			file := filepath.Join(e.TokenDir, "token")
			if err := os.WriteFile(file, []byte(mcWorkloadToken(t, wk, "wk1", iss, sub, e.AS.URL)), 0o600); err != nil {
				t.Fatal(err)
			}
			p := e.create(t, "wl", &mcpauthv1.Provider{CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_JWT_BEARER,
				OauthClient:      &mcpauthv1.OAuthClient{ClientId: "wl", ClientSecret: "wl-secret-123456", Scopes: tc.scopes},
				WorkloadIdentity: &mcpauthv1.WorkloadIdentity{AssertionFile: file}})
			for i := range 2 {
				_, err := e.token(t, p.GetName())
				info := tokErrorInfo(t, err, codes.FailedPrecondition)
				if info.GetReason() != tc.reason || info.GetMetadata()["oauth_error"] != tc.code {
					t.Fatalf("attempt %d: %v, want reason %s with oauth_error %s", i, info, tc.reason, tc.code)
				}
			}
			_, err := tlCall(Ctx(t, e.S.AdminKey), e.S, p.GetName(), "echo", map[string]any{"text": "hi"})
			if info := tokErrorInfo(t, err, codes.FailedPrecondition); info.GetReason() != tc.reason {
				t.Fatalf("CallTool: %v", info)
			}
			reqs := e.tokenRequests()
			if len(reqs) != 1 || reqs[0].Form.Get("grant_type") != testauthz.GrantJWTBearer {
				t.Fatalf("%d token requests (want exactly one, the JWT bearer grant: no retry, no client_credentials)", len(reqs))
			}
			oaWantEvent(t, e.S, "acme", "oauth.token.obtain_failed", tc.reason)
		})
	}
}
