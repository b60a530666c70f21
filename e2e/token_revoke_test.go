package e2e

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// tokRevocations checks the RFC 7009 requests the server received since
// index from: the refresh token first (on most servers it takes the access
// tokens with it), then the access token.
func tokRevocations(tb testing.TB, as *testauthz.AuthServer, from int, access string) {
	tb.Helper()
	reqs := as.RequestsTo(as.Path("/revoke"))[from:]
	if len(reqs) != 2 {
		tb.Fatalf("%d revocation requests, want 2", len(reqs))
	}
	if h := reqs[0].Form.Get("token_type_hint"); h != "refresh_token" {
		tb.Errorf("first revocation has token_type_hint %q, want refresh_token", h)
	}
	if tok := reqs[0].Form.Get("token"); tok == "" || tok == access {
		tb.Error("the first revocation did not carry the refresh token")
	}
	if h := reqs[1].Form.Get("token_type_hint"); h != "access_token" {
		tb.Errorf("second revocation has token_type_hint %q, want access_token", h)
	}
	if reqs[1].Form.Get("token") != access {
		tb.Error("the second revocation did not carry the access token")
	}
}

// TestTokenRevocation: deleting a provider or revoking its authorization
// revokes its tokens at the authorization server (RFC 7009); a failing
// revocation is audited and never blocks the delete.
func TestTokenRevocation(t *testing.T) {
	t.Parallel()

	t.Run("DeleteProvider", func(t *testing.T) {
		t.Parallel()
		c := tokStart(t, tokOptions{})
		access := c.mustGet(t, 0).GetAccessToken()
		from, revoked := len(c.AS.RequestsTo(c.AS.Path("/revoke"))), c.AS.RevocationCount()
		resp, err := c.Replicas[0].Providers().DeleteProvider(c.ctx(t), &mcpauthv1.DeleteProviderRequest{Name: c.Name})
		if err != nil {
			t.Fatalf("DeleteProvider: %v", err)
		}
		if !resp.GetRevokedAtServer() {
			t.Error("DeleteProvider reports the tokens were not revoked at the server")
		}
		tokRevocations(t, c.AS, from, access)
		if d := c.AS.RevocationCount() - revoked; d != 2 {
			t.Errorf("server accepted %d revocations, want 2", d)
		}
		if _, ok := c.AS.Validate(access); ok {
			t.Fatal("the access token still validates after DeleteProvider")
		}
	})

	t.Run("DeleteProviderRevocationFails", func(t *testing.T) {
		t.Parallel()
		c := tokStart(t, tokOptions{})
		access := c.mustGet(t, 0).GetAccessToken()
		// The server forgets mcpauth's client, so it rejects the
		// revocations' client authentication (invalid_client): a real
		// failure at the server, with no fault injection needed.
		reg, err := c.Replicas[0].Store().GetClientRegistration(context.Background(), c.Tenant, c.ID, c.status(t).GetIssuer())
		if err != nil {
			t.Fatal(err)
		}
		c.AS.DeleteClient(reg.ClientID)
		from, revoked := len(c.AS.RequestsTo(c.AS.Path("/revoke"))), c.AS.RevocationCount()
		resp, err := c.Replicas[0].Providers().DeleteProvider(c.ctx(t), &mcpauthv1.DeleteProviderRequest{Name: c.Name})
		if err != nil {
			t.Fatalf("DeleteProvider with failing revocation: %v", err)
		}
		if resp.GetRevokedAtServer() {
			t.Error("DeleteProvider claims a revocation the server rejected")
		}
		tokRevocations(t, c.AS, from, access)
		if d := c.AS.RevocationCount() - revoked; d != 0 {
			t.Errorf("server accepted %d revocations", d)
		}
		_, err = c.Replicas[0].Providers().GetProvider(c.ctx(t), &mcpauthv1.GetProviderRequest{Name: c.Name})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("GetProvider after delete: %v, want NOT_FOUND", err)
		}
		tokWait(t, "two oauth.revocation.failed audit events", 10*time.Second, func() bool {
			return len(c.tokAudit(t, "oauth.revocation.failed")) == 2
		})
		reasons := map[string]bool{}
		for _, ev := range c.tokAudit(t, "oauth.revocation.failed") {
			reasons[ev.GetReason()] = true
		}
		if !reasons["REVOKE_REFRESH_FAILED"] || !reasons["REVOKE_ACCESS_FAILED"] {
			t.Errorf("revocation failure reasons %v", reasons)
		}
	})

	t.Run("RevokeAuthorization", func(t *testing.T) {
		t.Parallel()
		c := tokStart(t, tokOptions{})
		access := c.mustGet(t, 0).GetAccessToken()
		issuer := c.status(t).GetIssuer()
		from := len(c.AS.RequestsTo(c.AS.Path("/revoke")))
		resp, err := c.Replicas[0].OAuth().RevokeAuthorization(c.ctx(t), &mcpauthv1.RevokeAuthorizationRequest{Name: c.Name})
		if err != nil {
			t.Fatalf("RevokeAuthorization: %v", err)
		}
		if !resp.GetRevokedAtServer() {
			t.Error("RevokeAuthorization reports the tokens were not revoked at the server")
		}
		tokRevocations(t, c.AS, from, access)
		if _, ok := c.AS.Validate(access); ok {
			t.Fatal("the access token still validates after RevokeAuthorization")
		}
		if st := c.status(t); st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED {
			t.Fatalf("status %s, want UNAUTHORIZED", st.GetStatus())
		}
		_, err = c.get(c.ctx(t), 0)
		if info := tokErrorInfo(t, err, codes.FailedPrecondition); info.GetReason() != "NOT_AUTHORIZED" {
			t.Fatalf("GetAccessToken after revocation: reason %q, want NOT_AUTHORIZED", info.GetReason())
		}
		if _, err := c.Replicas[0].Store().GetClientRegistration(context.Background(), c.Tenant, c.ID, issuer); err != nil {
			t.Fatalf("the client registration was not kept: %v", err)
		}
		tokWait(t, "the oauth.authorization.revoked audit event", 10*time.Second, func() bool {
			return len(c.tokAudit(t, "oauth.authorization.revoked")) == 1
		})
	})
}
