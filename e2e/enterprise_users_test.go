package e2e

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/structpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// xaaPerUser makes the enterprise-managed provider's grants per user.
func xaaPerUser(p *mcpauthv1.Provider) { p.GrantScope = mcpauthv1.GrantScope_GRANT_SCOPE_USER }

// whoami calls the MCP server's whoami tool for user and returns the
// subject of the access token it was called with.
func (e *xaaEnv) whoami(t *testing.T, user string) string {
	t.Helper()
	res, err := e.S.Tools().CallTool(Ctx(t, e.S.AdminKey), &mcpauthv1.CallToolRequest{Name: xaaProviderRes, Tool: "whoami", User: user,
		Arguments: &structpb.Struct{}})
	if err != nil {
		t.Fatalf("CallTool whoami for %s: %v", user, err)
	}
	return res.GetStructuredContent().GetFields()["subject"].GetStringValue()
}

// connection returns user's connection to the provider.
func (e *xaaEnv) connection(t *testing.T, user string) *mcpauthv1.Connection {
	t.Helper()
	list, err := mcpauthv1.NewConnectionServiceClient(e.S.Conn).ListConnections(Ctx(t, e.S.AdminKey),
		&mcpauthv1.ListConnectionsRequest{Parent: xaaProviderRes, User: user})
	if err != nil || len(list.GetConnections()) != 1 {
		t.Fatalf("%s's connections: %v %v", user, list, err)
	}
	return list.GetConnections()[0]
}

// tokenRequests counts the token requests both servers received.
func (e *xaaEnv) tokenRequests() (idp, as int) {
	return len(e.IdP.RequestsTo("/token")), len(e.AS.RequestsTo("/token"))
}

// TestEnterpriseManagedPerUser: on a USER provider, alice and bob each
// exchange their own ID token from the identity provider; tools listed
// and called for each act with that person's token, also after a refresh
// and after a new exchange. Each connection is bound to the identity
// (iss, sub) of its first ID token: bob's ID token offered for alice is
// refused with IDENTITY_BINDING_MISMATCH (an ID token naming "alice" from
// another identity provider with ID_TOKEN_ISSUER_MISMATCH) before it is
// sent anywhere, audited with the identity offered (never the token), and
// alice's tokens stay hers.
// Deleting alice's connection clears the binding.
func TestEnterpriseManagedPerUser(t *testing.T) {
	t.Parallel()
	e := xaaStart(t, testauthz.MachineOptions{AccessTokenLifetime: 2 * time.Second, IDJAGRefresh: true}, xaaASClient, xaaPerUser)
	ctx := Ctx(t, e.S.AdminKey)

	// Nobody has exchanged yet: the platform is told to supply an ID token.
	_, err := e.S.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: xaaProviderRes, User: "alice"})
	tlWantReason(t, err, codes.FailedPrecondition, "ID_TOKEN_REQUIRED")
	// A USER provider needs the user.
	_, err = e.exchange(t, "", e.IdP.IDToken(t, "alice", xaaIdPClient, 10*time.Minute))
	cnWantField(t, err, "user")

	aliceToken := e.IdP.IDToken(t, "alice", xaaIdPClient, 10*time.Minute)
	bobToken := e.IdP.IDToken(t, "bob", xaaIdPClient, 10*time.Minute)
	for user, tok := range map[string]string{"alice": aliceToken, "bob": bobToken} {
		if resp, err := e.exchange(t, user, tok); err != nil || !resp.GetHasRefreshToken() {
			t.Fatalf("ExchangeIdentityAssertion for %s = %v, %v", user, resp, err)
		}
	}
	for _, user := range []string{"alice", "bob"} {
		if _, err := e.S.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: xaaProviderRes, User: user}); err != nil {
			t.Fatalf("RefreshTools for %s: %v", user, err)
		}
		list, err := e.S.Tools().ListTools(ctx, &mcpauthv1.ListToolsRequest{Name: xaaProviderRes, User: user})
		if err != nil || len(list.GetTools()) == 0 {
			t.Fatalf("ListTools for %s: %v %v", user, list, err)
		}
		if got := e.whoami(t, user); got != user {
			t.Fatalf("whoami for %s = %q", user, got)
		}
		c := e.connection(t, user)
		if c.GetIdentity().GetIssuer() != e.IdP.URL || c.GetIdentity().GetSubject() != user {
			t.Fatalf("%s's connection identity = %v, want (%s, %s)", user, c.GetIdentity(), e.IdP.URL, user)
		}
	}

	// After the access tokens expire: each connection is refreshed with
	// its own refresh token, and still acts for its own user.
	time.Sleep(2500 * time.Millisecond)
	for _, user := range []string{"alice", "bob"} {
		if got := e.whoami(t, user); got != user {
			t.Fatalf("whoami for %s after the refresh = %q", user, got)
		}
	}
	refreshes := 0
	for _, r := range e.AS.RequestsTo("/token") {
		if r.Form.Get("grant_type") == "refresh_token" {
			refreshes++
		}
	}
	if refreshes != 2 {
		t.Fatalf("refreshes = %d, want one per user", refreshes)
	}

	// A new exchange with a fresh ID token of the same identity is fine.
	if _, err := e.exchange(t, "alice", e.IdP.IDToken(t, "alice", xaaIdPClient, 10*time.Minute)); err != nil {
		t.Fatalf("alice's second exchange: %v", err)
	}
	if got := e.whoami(t, "alice"); got != "alice" {
		t.Fatalf("whoami for alice after her second exchange = %q", got)
	}

	// Bob's ID token, and an ID token naming "alice" at another identity
	// provider, offered for alice: refused, nothing sent to either server
	// (the other provider's token for its issuer, before the binding is
	// read: enterprise_issuer_test.go).
	other := testauthz.NewIdentityProvider(t)
	otherAlice := other.IDToken(t, "alice", xaaIdPClient, 10*time.Minute)
	for _, c := range []struct{ name, token, iss, sub, reason string }{
		{"bob's ID token", e.IdP.IDToken(t, "bob", xaaIdPClient, 10*time.Minute), e.IdP.URL, "bob", "IDENTITY_BINDING_MISMATCH"},
		{"another issuer's alice", otherAlice, other.URL, "alice", "ID_TOKEN_ISSUER_MISMATCH"},
	} {
		idp, as := e.tokenRequests()
		_, err := e.exchange(t, "alice", c.token)
		ei := tlWantReason(t, err, codes.FailedPrecondition, c.reason)
		if ei.GetMetadata()["step"] != "identity_binding" {
			t.Errorf("%s: metadata %v", c.name, ei.GetMetadata())
		}
		if strings.Contains(err.Error(), "bob") || strings.Contains(err.Error(), c.token) {
			t.Errorf("%s: the error names an identity or the token: %v", c.name, err)
		}
		if idp2, as2 := e.tokenRequests(); idp2 != idp || as2 != as || len(other.RequestsTo("/token")) != 0 {
			t.Fatalf("%s: token requests went out (%d->%d, %d->%d)", c.name, idp, idp2, as, as2)
		}
		var audited bool
		for _, ev := range tlEvents(t, e.S, xaaTenant, xaaProviderRes, "oauth.token.obtain_failed") {
			d := ev.GetDetails()
			if ev.GetReason() == c.reason && ev.GetUser() == "alice" && d["identity_issuer"] == c.iss &&
				d["identity_subject"] == c.sub && d["step"] == "identity_binding" {
				audited = true
			}
		}
		if !audited {
			t.Errorf("%s: no oauth.token.obtain_failed event naming alice and the identity offered", c.name)
		}
		if got := e.whoami(t, "alice"); got != "alice" {
			t.Fatalf("%s: whoami for alice = %q after the refused exchange", c.name, got)
		}
	}
	(&mcEnv{S: e.S}).noSecretAnywhere(t, xaaProviderRes, aliceToken, bobToken, otherAlice)

	// Deleting alice's connection clears the binding: the next exchange
	// binds it again, to whoever the platform now names (here, to show the
	// binding went with the connection, bob's identity).
	conns := mcpauthv1.NewConnectionServiceClient(e.S.Conn)
	if _, err := conns.DeleteConnection(ctx, &mcpauthv1.DeleteConnectionRequest{Name: e.connection(t, "alice").GetName()}); err != nil {
		t.Fatalf("DeleteConnection: %v", err)
	}
	if _, err := e.exchange(t, "alice", e.IdP.IDToken(t, "bob", xaaIdPClient, 10*time.Minute)); err != nil {
		t.Fatalf("exchange after the connection was deleted: %v", err)
	}
	if c := e.connection(t, "alice"); c.GetIdentity().GetSubject() != "bob" {
		t.Fatalf("alice's new connection identity = %v", c.GetIdentity())
	}
	if got := e.whoami(t, "bob"); got != "bob" {
		t.Fatalf("bob's connection changed: whoami = %q", got)
	}
}

// TestEnterpriseManagedUserClaim: with user_claim "email", an ID token is
// accepted only for the user its email claim names, exactly; another
// user, another case, or no such claim is refused with
// ID_TOKEN_USER_MISMATCH before anything is sent. user_claim is refused on
// a TENANT provider and when it is no claim name.
func TestEnterpriseManagedUserClaim(t *testing.T) {
	t.Parallel()
	e := xaaStart(t, testauthz.MachineOptions{}, xaaASClient, xaaPerUser, func(p *mcpauthv1.Provider) {
		p.EnterpriseIdentityProvider.UserClaim = "email"
	})
	ctx := Ctx(t, e.S.AdminKey)
	p, err := e.S.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: xaaProviderRes})
	if err != nil || p.GetProvider().GetEnterpriseIdentityProvider().GetUserClaim() != "email" {
		t.Fatalf("GetProvider: %v %v", p, err)
	}

	alice := e.IdP.IDTokenWith(t, "00u-alice", xaaIdPClient, 10*time.Minute, map[string]any{"email": "alice@example.com"})
	for _, c := range []struct{ name, user, token string }{
		{"another user", "bob@example.com", alice},
		{"another case", "Alice@example.com", alice},
		{"no email claim", "alice@example.com", e.IdP.IDToken(t, "00u-alice", xaaIdPClient, 10*time.Minute)},
		{"email not a string", "alice@example.com", e.IdP.IDTokenWith(t, "00u-alice", xaaIdPClient, 10*time.Minute,
			map[string]any{"email": []string{"alice@example.com"}})},
	} {
		_, err := e.exchange(t, c.user, c.token)
		if ei := tlWantReason(t, err, codes.FailedPrecondition, "ID_TOKEN_USER_MISMATCH"); ei.GetMetadata()["step"] != "identity_binding" {
			t.Errorf("%s: metadata %v", c.name, ei.GetMetadata())
		}
	}
	if idp, as := e.tokenRequests(); idp != 0 || as != 0 {
		t.Fatalf("refused exchanges sent token requests: %d, %d", idp, as)
	}
	oaWantEvent(t, e.S, xaaTenant, "oauth.token.obtain_failed", "ID_TOKEN_USER_MISMATCH")

	if _, err := e.exchange(t, "alice@example.com", alice); err != nil {
		t.Fatalf("ExchangeIdentityAssertion: %v", err)
	}
	if got := e.whoami(t, "alice@example.com"); got != "00u-alice" {
		t.Fatalf("whoami = %q", got)
	}

	// Refused settings.
	tenantWide := &mcpauthv1.Provider{DisplayName: "tw", ServerIdentifier: "tw", ServerUrl: e.MCP.URL() + "?tw",
		CredentialKind: mcpauthv1.CredentialKind_CREDENTIAL_KIND_ENTERPRISE_MANAGED,
		OauthClient:    &mcpauthv1.OAuthClient{ClientId: xaaASClient, ClientSecret: xaaASSecret},
		EnterpriseIdentityProvider: &mcpauthv1.EnterpriseIdentityProvider{Issuer: e.IdP.URL, ClientId: xaaIdPClient,
			ClientSecret: xaaIdPSecret, UserClaim: "email"}}
	_, err = e.S.Providers().CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/" + xaaTenant, ProviderId: "tw", Provider: tenantWide})
	provWantField(t, err, codes.InvalidArgument, "provider.enterprise_identity_provider.user_claim")
	for _, bad := range []string{"e mail", strings.Repeat("a", 65), "email\n"} {
		_, err = e.S.Providers().UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
			Provider: &mcpauthv1.Provider{Name: xaaProviderRes, EnterpriseIdentityProvider: &mcpauthv1.EnterpriseIdentityProvider{
				Issuer: e.IdP.URL, ClientId: xaaIdPClient, UserClaim: bad}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"enterprise_identity_provider"}}})
		provWantField(t, err, codes.InvalidArgument, "provider.enterprise_identity_provider.user_claim")
	}
}

// TestEnterpriseManagedBindingRace: two exchanges for one new user with
// ID tokens of two identities, at the same time. Neither connection is
// bound when they are checked, and both reach the authorization server
// (held there for two seconds); the first to store binds the connection,
// the other finds the binding under the connection's compare-and-swap,
// answers IDENTITY_BINDING_MISMATCH, and its fresh access token is revoked
// at once. The connection's identity is the one its token acts as.
func TestEnterpriseManagedBindingRace(t *testing.T) {
	t.Parallel()
	e := xaaStart(t, testauthz.MachineOptions{}, xaaASClient, xaaPerUser)
	e.AS.SetTokenDelay(2 * time.Second)
	type result struct {
		sub string
		err error
	}
	results := make(chan result, 2)
	ctx := Ctx(t, e.S.AdminKey)
	for _, sub := range []string{"alice", "bob"} {
		tok := e.IdP.IDToken(t, sub, xaaIdPClient, 10*time.Minute)
		go func() {
			_, err := e.S.OAuth().ExchangeIdentityAssertion(ctx, &mcpauthv1.ExchangeIdentityAssertionRequest{Name: xaaProviderRes,
				User: "carol", IdToken: tok})
			results <- result{sub, err}
		}()
	}
	var won string
	var lost []result
	for range 2 {
		r := <-results
		if r.err == nil {
			won = r.sub
		} else {
			lost = append(lost, r)
		}
	}
	if won == "" || len(lost) != 1 {
		t.Fatalf("winner %q, losers %v: want exactly one of each", won, lost)
	}
	tlWantReason(t, lost[0].err, codes.FailedPrecondition, "IDENTITY_BINDING_MISMATCH")
	e.AS.SetTokenDelay(0)
	if a, b := e.tokenRequests(); a != 2 || b != 2 {
		t.Fatalf("token requests %d, %d: both exchanges should have reached both servers", a, b)
	}
	if c := e.connection(t, "carol"); c.GetIdentity().GetSubject() != won {
		t.Fatalf("carol's connection is bound to %v, her token acts as %s", c.GetIdentity(), won)
	}
	if got := e.whoami(t, "carol"); got != won {
		t.Fatalf("whoami for carol = %q, want %q", got, won)
	}
	revoked := e.AS.RequestsTo("/revoke")
	if len(revoked) != 1 || revoked[0].Form.Get("token_type_hint") != "access_token" {
		t.Fatalf("revocations: %d, want the loser's access token", len(revoked))
	}
	if info, err := e.AS.ValidateToken(t.Context(), revoked[0].Form.Get("token")); err == nil {
		t.Fatalf("the loser's token is still valid (subject %q)", info.Subject)
	}
}

// TestEnterpriseManagedUserClaimSetLater: user_claim set on a provider
// whose connections were bound without it. alice@example.com's connection
// was bound to bob's identity (the platform bug user_claim exists to
// stop); setting user_claim deletes every connection and revokes its
// tokens in the update (audited with the new claim), so nothing bound
// under the old rule is used again: bob's ID token is then refused for
// alice (ID_TOKEN_USER_MISMATCH) and alice's own is accepted. An exchange
// already under way when the claim is set, checked under the old rule, is
// refused when it stores (PROVIDER_CHANGED), its fresh tokens revoked,
// nothing kept: before, it stored a connection nobody checked against the
// new claim.
func TestEnterpriseManagedUserClaimSetLater(t *testing.T) {
	t.Parallel()
	e := xaaStart(t, testauthz.MachineOptions{}, xaaASClient, xaaPerUser)
	ctx := Ctx(t, e.S.AdminKey)
	withEmail := func(sub, email string) string {
		return e.IdP.IDTokenWith(t, sub, xaaIdPClient, 10*time.Minute, map[string]any{"email": email})
	}
	bobs := withEmail("00u-bob", "bob@example.com")
	if _, err := e.exchange(t, "alice@example.com", bobs); err != nil {
		t.Fatalf("exchange before user_claim: %v", err)
	}
	old, err := e.S.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: xaaProviderRes, User: "alice@example.com"})
	if err != nil {
		t.Fatalf("GetAccessToken: %v", err)
	}

	// An exchange for dave with mallory's ID token, under way (held at
	// the authorization server) while user_claim is set.
	e.AS.SetTokenDelay(3 * time.Second)
	asBefore := len(e.AS.RequestsTo("/token"))
	inFlight := make(chan error, 1)
	go func() {
		_, err := e.S.OAuth().ExchangeIdentityAssertion(ctx, &mcpauthv1.ExchangeIdentityAssertionRequest{Name: xaaProviderRes,
			User: "dave@example.com", IdToken: withEmail("00u-mallory", "mallory@example.com")})
		inFlight <- err
	}()
	for deadline := time.Now().Add(10 * time.Second); len(e.AS.RequestsTo("/token")) == asBefore; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the exchange never reached the authorization server")
		}
	}
	if _, err := e.S.Providers().UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
		Provider: &mcpauthv1.Provider{Name: xaaProviderRes, EnterpriseIdentityProvider: &mcpauthv1.EnterpriseIdentityProvider{
			Issuer: e.IdP.URL, ClientId: xaaIdPClient, UserClaim: "email"}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"enterprise_identity_provider"}}}); err != nil {
		t.Fatalf("setting user_claim: %v", err)
	}
	revokedByUpdate := len(e.AS.RequestsTo("/revoke"))
	tlWantReason(t, <-inFlight, codes.FailedPrecondition, "PROVIDER_CHANGED")
	e.AS.SetTokenDelay(0)
	// The refused exchange revoked the tokens it had just obtained.
	fresh := e.AS.RequestsTo("/revoke")[revokedByUpdate:]
	if len(fresh) == 0 {
		t.Fatal("the exchange refused when it stored revoked nothing")
	}
	for _, r := range fresh {
		if info, err := e.AS.ValidateToken(t.Context(), r.Form.Get("token")); err == nil {
			t.Fatalf("a token the refused exchange revoked is still valid (subject %q)", info.Subject)
		}
	}

	// Nothing bound under the old rule is left, nor usable.
	list, err := mcpauthv1.NewConnectionServiceClient(e.S.Conn).ListConnections(ctx, &mcpauthv1.ListConnectionsRequest{Parent: xaaProviderRes})
	if err != nil || len(list.GetConnections()) != 0 {
		t.Fatalf("connections after user_claim was set: %v %v; want none", list, err)
	}
	for _, user := range []string{"alice@example.com", "dave@example.com"} {
		_, err = e.S.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: xaaProviderRes, User: user})
		tlWantReason(t, err, codes.FailedPrecondition, "ID_TOKEN_REQUIRED")
	}
	if info, err := e.AS.ValidateToken(t.Context(), old.GetAccessToken()); err == nil {
		t.Fatalf("alice's token from before user_claim is still valid (subject %q)", info.Subject)
	}
	refusedAudited := false
	for _, ev := range tlEvents(t, e.S, xaaTenant, xaaProviderRes, "oauth.token.obtain_failed") {
		if ev.GetReason() == "PROVIDER_CHANGED" && ev.GetUser() == "dave@example.com" && ev.GetDetails()["step"] == "store" {
			refusedAudited = true
		}
	}
	if !refusedAudited {
		t.Error("no oauth.token.obtain_failed event for the exchange refused when it stored")
	}
	var resetAudited, updateAudited bool
	for _, ev := range tlEvents(t, e.S, xaaTenant, xaaProviderRes, "provider.credentials.reset") {
		resetAudited = resetAudited || ev.GetDetails()["user_claim"] == "email"
	}
	for _, ev := range tlEvents(t, e.S, xaaTenant, xaaProviderRes, "provider.updated") {
		updateAudited = updateAudited || ev.GetDetails()["user_claim"] == "email"
	}
	if !resetAudited || !updateAudited {
		t.Errorf("user_claim audited on the reset %v, on the update %v; want both", resetAudited, updateAudited)
	}

	// The new rule holds for every exchange from now on.
	_, err = e.exchange(t, "alice@example.com", bobs)
	tlWantReason(t, err, codes.FailedPrecondition, "ID_TOKEN_USER_MISMATCH")
	if _, err := e.exchange(t, "alice@example.com", withEmail("00u-alice", "alice@example.com")); err != nil {
		t.Fatalf("alice's own exchange under user_claim: %v", err)
	}
	if got := e.whoami(t, "alice@example.com"); got != "00u-alice" {
		t.Fatalf("whoami for alice = %q", got)
	}
}
