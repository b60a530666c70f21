package e2e

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// puConnect authorizes user's connection to the USER provider name through
// replica r: StartAuthorization names the user, and a browser signed in at
// the authorization server as user approves.
func (c *tokCluster) puConnect(tb testing.TB, r int, name, user string) {
	tb.Helper()
	st, err := c.Replicas[r].OAuth().StartAuthorization(c.ctx(tb), &mcpauthv1.StartAuthorizationRequest{Name: name, User: user})
	if err != nil {
		tb.Fatalf("StartAuthorization for %s: %v", user, err)
	}
	b := NewBrowser(tb)
	if err := c.AS.SignIn(b.Client, user); err != nil {
		tb.Fatal(err)
	}
	if code, body, final := b.Open(tb, st.GetAuthorizationUrl()); code != 200 {
		tb.Fatalf("authorizing %s's connection: %s: %d %s", user, final.Redacted(), code, body)
	}
}

// puWhoami calls the whoami tool for user on replica r and returns the
// subject of the token the MCP server received.
func (c *tokCluster) puWhoami(tb testing.TB, r int, name, user string) string {
	tb.Helper()
	resp, err := c.Replicas[r].Tools().CallTool(c.ctx(tb), &mcpauthv1.CallToolRequest{Name: name, Tool: "whoami", User: user})
	if err != nil {
		tb.Fatalf("whoami for %q on replica %d: %v", user, r, err)
	}
	return resp.GetStructuredContent().GetFields()["subject"].GetStringValue()
}

// puWaitExpired waits until user's stored access token has expired, by the
// expiry the service reports (the service's clock, not a guessed sleep).
func (c *tokCluster) puWaitExpired(tb testing.TB, name, user string) {
	tb.Helper()
	st, err := c.Replicas[0].OAuth().GetAuthorizationStatus(c.ctx(tb), &mcpauthv1.GetAuthorizationStatusRequest{Name: name, User: user})
	if err != nil || st.GetExpireTime() == nil {
		tb.Fatalf("status of %s's connection: %v %v", user, st, err)
	}
	if d := time.Until(st.GetExpireTime().AsTime()); d > 0 {
		time.Sleep(d + 50*time.Millisecond)
	}
}

// TestConnectionsPerUserAcrossReplicas (issue 11): two end users authorize
// the same USER provider with their own accounts at a real authorization
// server whose tokens name the signed-in user. Tool calls for alice carry
// alice's token and for bob bob's, on both replicas (one PostgreSQL, one
// Redis) and after each connection's token expired and was refreshed
// (one refresh per connection and expiry, no refresh-token reuse). A third
// user gets FAILED_PRECONDITION NOT_AUTHORIZED with an authorization URL;
// a call without a user is INVALID_ARGUMENT. Revoking alice's connection
// revokes her tokens at the server and only hers: bob's calls still carry
// bob's token. The tenant-wide provider on the same server behaves as
// before (its calls name no user and carry the default account's token).
func TestConnectionsPerUserAcrossReplicas(t *testing.T) {
	t.Parallel()
	c := tokStart(t, tokOptions{AS: testauthz.AuthServerOptions{AccessTokenLifetime: tokLifetime}, Replicas: 2})
	// A second MCP server of the same authorization server (server URLs
	// are unique per tenant).
	srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: c.AS})
	people := createProvider(t, c.Replicas[0], c.Key, c.Tenant, "people", srv.URL(), func(p *mcpauthv1.Provider) {
		p.GrantScope = mcpauthv1.GrantScope_GRANT_SCOPE_USER
	})
	// Both connect through replica 0: each test replica has a public URL
	// (redirect URI) of its own, so a flow through another would register
	// another client and make the first client's grants unusable; in
	// production the replicas share one public URL and one registration.
	c.puConnect(t, 0, people, "alice")
	c.puConnect(t, 0, people, "bob")

	check := func(round string) {
		t.Helper()
		for r := range c.Replicas {
			for _, user := range []string{"alice", "bob"} {
				if got := c.puWhoami(t, r, people, user); got != user {
					t.Fatalf("%s: whoami for %s on replica %d = %q", round, user, r, got)
				}
			}
		}
	}
	check("after authorization")
	tokens := map[string]string{}
	for _, user := range []string{"alice", "bob"} {
		tok, err := c.Replicas[1].OAuth().GetAccessToken(c.ctx(t), &mcpauthv1.GetAccessTokenRequest{Name: people, User: user})
		if err != nil {
			t.Fatalf("GetAccessToken for %s: %v", user, err)
		}
		info, err := c.AS.ValidateToken(t.Context(), tok.GetAccessToken())
		if err != nil || info.Subject != user {
			t.Fatalf("%s's token: subject %q, %v", user, info.Subject, err)
		}
		tokens[user] = tok.GetAccessToken()
	}

	// Both connections' tokens expire; the next calls refresh each once per
	// expiry. Counted per generation (tokChains), not per round: on a
	// loaded machine the round's later calls may come after a new 1-2 s
	// token's margin and rightly refresh it again, for the next expiry.
	// chainOf returns the refresh chain holding user's first token.
	chainOf := func(chains [][]testauthz.Issuance, user string) []testauthz.Issuance {
		t.Helper()
		for _, ch := range chains {
			for _, is := range ch {
				if is.AccessToken == tokens[user] {
					return ch
				}
			}
		}
		t.Fatalf("no refresh chain holds %s's token", user)
		return nil
	}
	for round := 1; round <= 2; round++ {
		c.puWaitExpired(t, people, "alice")
		c.puWaitExpired(t, people, "bob")
		chains := tokChains(t, c.AS)
		if t.Failed() {
			t.FailNow()
		}
		before := map[string]int{"alice": len(chainOf(chains, "alice")), "bob": len(chainOf(chains, "bob"))}
		check("after expiry")
		chains = tokChains(t, c.AS)
		if t.Failed() {
			t.FailNow()
		}
		for _, user := range []string{"alice", "bob"} {
			if n := len(chainOf(chains, user)) - before[user]; n < 1 {
				t.Fatalf("round %d: %s's expired token was not refreshed", round, user)
			} else {
				t.Logf("round %d: %d refreshes of %s's connection", round, n, user)
			}
		}
	}

	_, err := c.Replicas[0].Tools().CallTool(c.ctx(t), &mcpauthv1.CallToolRequest{Name: people, Tool: "whoami", User: "carol"})
	info := tokErrorInfo(t, err, codes.FailedPrecondition)
	if info.GetReason() != "NOT_AUTHORIZED" || info.GetMetadata()["authorization_url"] == "" {
		t.Fatalf("carol: %v %v", info.GetReason(), info.GetMetadata())
	}
	_, err = c.Replicas[0].Tools().CallTool(c.ctx(t), &mcpauthv1.CallToolRequest{Name: people, Tool: "whoami"})
	tokErrorInfo(t, err, codes.InvalidArgument)

	// Revoke alice's connection, and only hers.
	aliceTok, err := c.Replicas[0].OAuth().GetAccessToken(c.ctx(t), &mcpauthv1.GetAccessTokenRequest{Name: people, User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	revoked := c.AS.RevocationCount()
	if _, err := c.puDelete(t, people, "alice"); err != nil {
		t.Fatalf("deleting alice's connection: %v", err)
	}
	if c.AS.RevocationCount() <= revoked {
		t.Fatal("alice's tokens were not revoked at the authorization server")
	}
	if _, ok := c.AS.Validate(aliceTok.GetAccessToken()); ok {
		t.Fatal("alice's access token still works at the server")
	}
	for r := range c.Replicas {
		_, err := c.Replicas[r].Tools().CallTool(c.ctx(t), &mcpauthv1.CallToolRequest{Name: people, Tool: "whoami", User: "alice"})
		if info := tokErrorInfo(t, err, codes.FailedPrecondition); info.GetReason() != "NOT_AUTHORIZED" {
			t.Fatalf("alice after revocation on replica %d: %v", r, info.GetReason())
		}
		if got := c.puWhoami(t, r, people, "bob"); got != "bob" {
			t.Fatalf("bob after alice's revocation on replica %d: %q", r, got)
		}
	}
	if _, ok := c.AS.Validate(tokens["bob"]); !ok {
		// bob's first token was refreshed since; his current one must work.
		tok, err := c.Replicas[0].OAuth().GetAccessToken(c.ctx(t), &mcpauthv1.GetAccessTokenRequest{Name: people, User: "bob"})
		if err != nil {
			t.Fatal(err)
		}
		tokValid(t, c.AS, tok.GetAccessToken())
	}

	// The tenant-wide provider: no user, the account that authorized it.
	for r := range c.Replicas {
		if got := c.puWhoami(t, r, c.Name, ""); got != "alice" {
			t.Fatalf("tenant-wide whoami on replica %d = %q", r, got)
		}
	}
}

// puDelete revokes user's connection to name at the server and deletes it.
func (c *tokCluster) puDelete(tb testing.TB, name, user string) (bool, error) {
	tb.Helper()
	resp, err := c.Replicas[1].OAuth().RevokeAuthorization(c.ctx(tb), &mcpauthv1.RevokeAuthorizationRequest{Name: name, User: user})
	return resp.GetRevokedAtServer(), err
}
