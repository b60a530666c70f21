package e2e

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// TestStatusAgreesAcrossRPCs: a grant's status has one owner (its row,
// written with its tokens), so GetProvider, ListProviders,
// GetAuthorizationStatus and GetAccessToken say the same thing on every
// replica through each transition: authorized, dead refresh token, a new
// flow started on the dead grant, revoked.
func TestStatusAgreesAcrossRPCs(t *testing.T) {
	t.Parallel()
	c := tokStart(t, tokOptions{Replicas: 2, AS: testauthz.AuthServerOptions{AccessTokenLifetime: tokLifetime}})
	agree := func(t *testing.T, want mcpauthv1.AuthorizationStatus, wantTokenReason string) {
		t.Helper()
		for i, s := range c.Replicas {
			ctx := c.ctx(t)
			// Another replica's change reaches this one's provider cache
			// through the Redis broadcast, at the latest within the cache's
			// TTL (MCPAUTH_PROVIDER_CACHE_TTL, 1 s) if that message is
			// lost: the documented bound, with slack for a loaded machine.
			for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				p, err := s.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: c.Name})
				if err != nil {
					t.Fatal(err)
				}
				list, err := s.Providers().ListProviders(ctx, &mcpauthv1.ListProvidersRequest{Parent: "tenants/" + c.Tenant})
				if err != nil {
					t.Fatal(err)
				}
				listed := mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNSPECIFIED
				for _, lp := range list.GetProviders() {
					if lp.GetName() == c.Name {
						listed = lp.GetAuthorizationStatus()
					}
				}
				st, err := s.OAuth().GetAuthorizationStatus(ctx, &mcpauthv1.GetAuthorizationStatusRequest{Name: c.Name})
				if err != nil {
					t.Fatal(err)
				}
				if p.GetProvider().GetAuthorizationStatus() == want && listed == want && st.GetStatus() == want {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("replica %d: GetProvider %s, ListProviders %s, GetAuthorizationStatus %s; want %s",
						i, p.GetProvider().GetAuthorizationStatus(), listed, st.GetStatus(), want)
				}
			}
			_, err := c.get(ctx, i)
			switch {
			case wantTokenReason == "" && err != nil:
				t.Fatalf("replica %d: GetAccessToken: %v", i, err)
			case wantTokenReason != "":
				if info := tokErrorInfo(t, err, codes.FailedPrecondition); info.GetReason() != wantTokenReason {
					t.Fatalf("replica %d: GetAccessToken reason %q, want %q", i, info.GetReason(), wantTokenReason)
				}
			}
		}
	}

	agree(t, mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED, "")

	c.AS.ExpireRefreshTokens()
	c.waitDue(t, tokDueMargin)
	if _, err := c.get(c.ctx(t), 1); err == nil {
		t.Fatal("a dead refresh token still gave a token")
	}
	agree(t, mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_REAUTH_REQUIRED, "REAUTH_REQUIRED")
	if st := c.status(t); st.GetReason() != "INVALID_GRANT" {
		t.Errorf("reason %q, want INVALID_GRANT", st.GetReason())
	}

	// A new flow does not hide why the grant died until it completes.
	if _, err := c.Replicas[0].OAuth().StartAuthorization(c.ctx(t), &mcpauthv1.StartAuthorizationRequest{Name: c.Name, User: "alice"}); err != nil {
		t.Fatal(err)
	}
	agree(t, mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_REAUTH_REQUIRED, "REAUTH_REQUIRED")

	if _, err := c.Replicas[1].OAuth().RevokeAuthorization(c.ctx(t), &mcpauthv1.RevokeAuthorizationRequest{Name: c.Name}); err != nil {
		t.Fatal(err)
	}
	agree(t, mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED, "NOT_AUTHORIZED")
}
