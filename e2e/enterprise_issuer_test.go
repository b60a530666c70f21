package e2e

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// TestEnterpriseManagedIssuerMismatch: an ID token whose iss is not
// exactly the issuer of the provider's enterprise identity provider
// (OpenID Connect Core 1.0 section 3.1.3.7 step 2) is refused with
// ID_TOKEN_ISSUER_MISMATCH. A token of another identity provider is
// refused before anything is sent: the configured identity provider, the
// other one, the authorization server and the MCP server receive no
// request at all. A token of the right provider naming its issuer with a
// trailing slash (not the issuer its metadata names) is refused before
// the token exchange. Both are audited; the user's connection is not
// bound by either, and the provider's own ID token then works.
func TestEnterpriseManagedIssuerMismatch(t *testing.T) {
	t.Parallel()
	e := xaaStart(t, testauthz.MachineOptions{}, xaaASClient, xaaPerUser)
	other := testauthz.NewIdentityProvider(t)
	other.RegisterClient(xaaIdPClient, xaaIdPSecret)
	idpBefore, asBefore, mcpBefore := len(e.IdP.Requests()), len(e.AS.Requests()), len(e.MCP.Received())

	_, err := e.exchange(t, "alice", other.IDToken(t, "alice", xaaIdPClient, 10*time.Minute))
	if ei := tlWantReason(t, err, codes.FailedPrecondition, "ID_TOKEN_ISSUER_MISMATCH"); ei.GetMetadata()["step"] != "identity_binding" {
		t.Errorf("metadata %v, want step identity_binding", ei.GetMetadata())
	}
	if idp, as, mcp := len(e.IdP.Requests())-idpBefore, len(e.AS.Requests())-asBefore, len(e.MCP.Received())-mcpBefore; idp != 0 || as != 0 || mcp != 0 {
		t.Fatalf("another identity provider's ID token made requests: identity provider %d, authorization server %d, MCP server %d", idp, as, mcp)
	}
	if n := len(other.Requests()); n != 0 {
		t.Fatalf("the token's own identity provider received %d requests", n)
	}
	ev := oaWantEvent(t, e.S, xaaTenant, "oauth.token.obtain_failed", "ID_TOKEN_ISSUER_MISMATCH")
	if d := ev.GetDetails(); d["step"] != "identity_binding" || d["identity_issuer"] != other.URL || d["user"] != "alice" {
		t.Errorf("obtain_failed details %v", d)
	}

	// Exactly: the identity provider's issuer identifier has no trailing
	// slash.
	_, err = e.exchange(t, "alice", e.IdP.IDTokenIssuedAs(t, e.IdP.URL+"/", "alice", xaaIdPClient, 10*time.Minute))
	tlWantReason(t, err, codes.FailedPrecondition, "ID_TOKEN_ISSUER_MISMATCH")
	if idp, as := e.tokenRequests(); idp != 0 || as != 0 {
		t.Fatalf("a refused ID token was exchanged: %d, %d token requests", idp, as)
	}

	if _, err := e.exchange(t, "alice", e.IdP.IDToken(t, "alice", xaaIdPClient, 10*time.Minute)); err != nil {
		t.Fatalf("ExchangeIdentityAssertion with the provider's ID token: %v", err)
	}
	if got := e.whoami(t, "alice"); got != "alice" {
		t.Fatalf("whoami = %q", got)
	}
	if id := e.connection(t, "alice").GetIdentity(); id.GetIssuer() != e.IdP.URL || id.GetSubject() != "alice" {
		t.Errorf("connection identity %v, want (%s, alice)", id, e.IdP.URL)
	}
}
