package e2e

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// TestEnterpriseManagedIdPPrivateKeyJWT: mcpauth authenticates at the
// enterprise identity provider's token endpoint with a generated
// private_key_jwt key instead of a client secret (RFC 7523 section 2.2):
// the token exchange carries a client assertion (iss = sub = the client id
// at the IdP, aud = the IdP's issuer, a short exp, a jti) that the IdP
// verifies with the JWKS mcpauth serves, and no secret in any form. The
// key's public facts are in the provider's view, its private part nowhere.
// A secret and a key together are refused, naming the field.
func TestEnterpriseManagedIdPPrivateKeyJWT(t *testing.T) {
	t.Parallel()
	e := xaaStart(t, testauthz.MachineOptions{}, xaaASClient, func(p *mcpauthv1.Provider) {
		p.EnterpriseIdentityProvider.ClientSecret = ""
		p.EnterpriseIdentityProvider.PrivateKeyJwt = &mcpauthv1.ClientKey{Generate: true}
	})
	ctx := Ctx(t, e.S.AdminKey)
	got, err := e.S.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: xaaProviderRes})
	if err != nil {
		t.Fatal(err)
	}
	idp := got.GetProvider().GetEnterpriseIdentityProvider()
	k := idp.GetPrivateKeyJwt()
	if idp.GetClientSecretSet() || k.GetAlgorithm() != "ES256" || k.GetKeyId() == "" || k.GetJwksUri() == "" || !k.GetGenerated() || k.GetPrivateKeyPem() != "" {
		t.Fatalf("enterprise_identity_provider = %v", idp)
	}
	jwks := mcFetchJWKS(t, k.GetJwksUri())
	if len(jwks.Key(k.GetKeyId())) != 1 {
		t.Fatalf("the served JWKS has no key %s", k.GetKeyId())
	}
	e.IdP.RegisterKeyClient(xaaIdPClient, k.GetJwksUri())
	d, err := e.S.OAuth().DiagnoseProvider(ctx, &mcpauthv1.DiagnoseProviderRequest{Name: xaaProviderRes})
	if err != nil || !d.GetReady() || d.GetIdentityProviderTokenEndpointAuthMethod() != "private_key_jwt" {
		t.Fatalf("DiagnoseProvider = %v, %v", d, err)
	}

	idToken := e.IdP.IDToken(t, "alice", xaaIdPClient, 10*time.Minute)
	if _, err := e.exchange(t, "alice", idToken); err != nil {
		t.Fatalf("ExchangeIdentityAssertion: %v", err)
	}
	ex := e.IdP.RequestsTo("/token")
	if len(ex) != 1 {
		t.Fatalf("identity provider token requests = %d, want 1", len(ex))
	}
	f := ex[0].Form
	if ex[0].Header.Get("Authorization") != "" || f.Has("client_secret") ||
		f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
		t.Fatalf("token exchange client authentication: Authorization %q, form %v", ex[0].Header.Get("Authorization"), f)
	}
	mcVerifyAssertion(t, f.Get("client_assertion"), jwks, "ES256", xaaIdPClient, e.IdP.URL)
	if n := e.IdP.KeyAuthentications(); n != 1 {
		t.Fatalf("identity provider accepted %d client assertions, want 1", n)
	}
	who := tlMustCall(t, e.S, xaaProviderRes, "whoami", nil)
	if got := who.GetStructuredContent().AsMap()["subject"]; got != "alice" {
		t.Fatalf("whoami subject %v, want alice", got)
	}
	dpNoPrivateKey(t, e.S, xaaProviderRes)
	(&mcEnv{S: e.S}).noSecretAnywhere(t, xaaProviderRes, idToken, e.IdP.Issued()[0].Raw, f.Get("client_assertion"))

	// A secret and a key together: refused, nothing changed.
	_, err = e.S.Providers().UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
		Provider: &mcpauthv1.Provider{Name: xaaProviderRes, EnterpriseIdentityProvider: &mcpauthv1.EnterpriseIdentityProvider{
			Issuer: e.IdP.URL, ClientId: xaaIdPClient, ClientSecret: "another-secret-0123456789", PrivateKeyJwt: &mcpauthv1.ClientKey{Generate: true}}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"enterprise_identity_provider"}}})
	provWantField(t, err, codes.InvalidArgument, "provider.enterprise_identity_provider.private_key_jwt")
	after, err := e.S.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: xaaProviderRes})
	if err != nil || after.GetProvider().GetEnterpriseIdentityProvider().GetPrivateKeyJwt().GetKeyId() != k.GetKeyId() {
		t.Fatalf("the refused update changed the key: %v, %v", after, err)
	}
}
