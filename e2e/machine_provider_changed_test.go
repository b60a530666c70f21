package e2e

import (
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// TestMachineClientReplacedDuringTokenRequest: an operator replaces a
// client-credentials provider's client (UpdateProvider oauth_client)
// while mcpauth's first token request is at the authorization server,
// which has issued the token to the old client and not answered yet. That
// token is never stored nor served: mcpauth revokes it (the server then
// refuses it), audits oauth.token.obtain_failed PROVIDER_CHANGED step
// store, and asks again with the new client; the caller gets the new
// client's token, stored and used for tools from then on. Before, the old
// client's token was stored after the update's reset and served until it
// expired.
func TestMachineClientReplacedDuringTokenRequest(t *testing.T) {
	t.Parallel()
	e := mcStart(t, testauthz.MachineOptions{})
	const oldSecret, newSecret = "old-machine-secret-0123456789", "new-machine-secret-0123456789"
	e.AS.RegisterMachineClient(testauthz.MachineClient{ID: "svc-old", Secret: oldSecret})
	e.AS.RegisterMachineClient(testauthz.MachineClient{ID: "svc-new", Secret: newSecret})
	p := e.create(t, "cc", &mcpauthv1.Provider{CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_CLIENT_CREDENTIALS,
		OauthClient: &mcpauthv1.OAuthClient{ClientId: "svc-old", ClientSecret: oldSecret}})
	ctx := Ctx(t, e.S.AdminKey)
	var once sync.Once
	e.AS.SetBeforeTokenAnswer(func(grant string) {
		if grant != testauthz.GrantClientCredentials {
			return
		}
		once.Do(func() {
			if _, err := e.S.Providers().UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
				Provider:   &mcpauthv1.Provider{Name: p.GetName(), OauthClient: &mcpauthv1.OAuthClient{ClientId: "svc-new", ClientSecret: newSecret}},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"oauth_client"}}}); err != nil {
				t.Errorf("UpdateProvider during the token request: %v", err)
			}
		})
	})

	tok, err := e.token(t, p.GetName())
	if err != nil {
		t.Fatalf("GetAccessToken: %v", err)
	}
	e.AS.SetBeforeTokenAnswer(nil)

	info, err := e.AS.ValidateToken(t.Context(), tok.GetAccessToken())
	if err != nil || info.ClientID != "svc-new" {
		t.Fatalf("served token: client %q, %v; want a live token of svc-new", info.ClientID, err)
	}
	if n := len(e.tokenRequests()); n != 2 {
		t.Fatalf("%d token requests, want 2 (the old client's, then the new one's)", n)
	}
	revs := e.AS.RequestsTo("/revoke")
	if len(revs) != 1 {
		t.Fatalf("%d revocations, want 1 (the old client's token)", len(revs))
	}
	old := revs[0].Form.Get("token")
	if old == tok.GetAccessToken() {
		t.Fatal("the served token was revoked")
	}
	if info, err := e.AS.ValidateToken(t.Context(), old); err == nil {
		t.Fatalf("the old client's token is still valid (client %q)", info.ClientID)
	}
	tlWaitEvents(t, e.S, "acme", p.GetName(), "oauth.token.obtain_failed", 1, func(ev *mcpauthv1.AuditEvent) bool {
		return ev.GetReason() == "PROVIDER_CHANGED" && ev.GetDetails()["step"] == "store" && ev.GetDetails()["kind"] == "client_credentials"
	})
	if evs := tlEvents(t, e.S, "acme", p.GetName(), "oauth.revocation.failed"); len(evs) != 0 {
		t.Errorf("revocation failures audited: %v", evs)
	}

	// The new client's token is the stored one.
	again, err := e.token(t, p.GetName())
	if err != nil || again.GetAccessToken() != tok.GetAccessToken() {
		t.Fatalf("second GetAccessToken: %v (same token %v)", err, again.GetAccessToken() == tok.GetAccessToken())
	}
	if n := len(e.tokenRequests()); n != 2 {
		t.Fatalf("%d token requests after the second read, want 2", n)
	}
	e.callEcho(t, p.GetName())
	e.noSecretAnywhere(t, p.GetName(), oldSecret, newSecret, old, tok.GetAccessToken())
}

// TestMachineProviderDeletedDuringTokenRequest: a client-credentials
// provider is deleted while mcpauth's first token request is at the
// authorization server, which has issued the token and not answered yet.
// The token cannot be stored (the provider is gone, NOT_FOUND): mcpauth
// revokes it at the server (RFC 7009), which then refuses it, and audits
// oauth.token.obtain_failed PROVIDER_GONE step store. Before, a token
// whose write failed for any reason but a lost race or a changed provider
// was dropped live: issued, held by nobody, never revoked.
func TestMachineProviderDeletedDuringTokenRequest(t *testing.T) {
	t.Parallel()
	e := mcStart(t, testauthz.MachineOptions{})
	const sec = "machine-secret-0123456789abcdef"
	e.AS.RegisterMachineClient(testauthz.MachineClient{ID: "svc", Secret: sec})
	p := e.create(t, "cc", &mcpauthv1.Provider{CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_CLIENT_CREDENTIALS,
		OauthClient: &mcpauthv1.OAuthClient{ClientId: "svc", ClientSecret: sec}})
	deleteDuringGrant(t, e.S, e.AS, p.GetName(), testauthz.GrantClientCredentials)

	_, err := e.token(t, p.GetName())
	if status.Code(err) != codes.NotFound {
		t.Fatalf("GetAccessToken of a provider deleted during its token request: %v, want NOT_FOUND", err)
	}
	issued := wantOneIssuedRevoked(t, e.AS, testauthz.GrantClientCredentials)
	tlWaitEvents(t, e.S, "acme", p.GetName(), "oauth.token.obtain_failed", 1, func(ev *mcpauthv1.AuditEvent) bool {
		return ev.GetReason() == "PROVIDER_GONE" && ev.GetDetails()["step"] == "store" && ev.GetDetails()["kind"] == "client_credentials"
	})
	seen := e.S.Logs.String()
	for _, ev := range provAuditEvents(t, e.S, e.S.AdminKey, "acme") {
		seen += provJSON(t, ev)
	}
	for _, s := range []string{sec, issued} {
		if strings.Contains(seen, s) {
			t.Errorf("secret %.12q... found in the audit log or the logs", s)
		}
	}
}

// deleteDuringGrant deletes the provider name through s when the
// authorization server is about to answer its first request of grant
// (the token issued, not yet answered).
func deleteDuringGrant(t *testing.T, s *Service, as *testauthz.AuthServer, name, grant string) {
	t.Helper()
	ctx := Ctx(t, s.AdminKey)
	var once sync.Once
	as.SetBeforeTokenAnswer(func(g string) {
		if g != grant {
			return
		}
		once.Do(func() {
			if _, err := s.Providers().DeleteProvider(ctx, &mcpauthv1.DeleteProviderRequest{Name: name}); err != nil {
				t.Errorf("DeleteProvider during the %s request: %v", grant, err)
			}
		})
	})
	t.Cleanup(func() { as.SetBeforeTokenAnswer(nil) })
}

// wantOneIssuedRevoked checks that as issued one token of grant, that it
// was revoked (RFC 7009) and that the server refuses it now, and returns
// it.
func wantOneIssuedRevoked(t *testing.T, as *testauthz.AuthServer, grant string) string {
	t.Helper()
	var issued []string
	for _, is := range as.Issued() {
		if is.Grant == grant {
			issued = append(issued, is.AccessToken)
		}
	}
	if len(issued) != 1 {
		t.Fatalf("%d tokens issued, want 1", len(issued))
	}
	revs := as.RequestsTo("/revoke")
	if len(revs) != 1 || revs[0].Form.Get("token") != issued[0] {
		t.Fatalf("%d revocations, want 1 of the issued token", len(revs))
	}
	if _, err := as.ValidateToken(t.Context(), issued[0]); err == nil {
		t.Fatal("the issued token is still valid")
	}
	return issued[0]
}
