package e2e

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestOAuthCallbackReplay: a callback URL works once; a replay shows the
// failure page and changes nothing (no second token request, same tokens,
// same status). PostgreSQL and Redis hold the state.
func TestOAuthCallbackReplay(t *testing.T) {
	t.Parallel()
	redisURL, _, _ := oaRedis(t)
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true}, testauthz.MCPServerOptions{},
		Options{Postgres: true, RedisURL: redisURL}, nil)
	start := f.Start(t)
	b := NewBrowser(t)
	cb := oaToCallback(t, b, start.GetAuthorizationUrl())
	if p := oaOpen(t, b, cb.String()); p.Title != "Authorization complete" {
		t.Fatalf("first callback: %q %q", p.Title, p.Reason)
	}
	before, err := f.S.OAuth().GetAccessToken(f.Ctx, &mcpauthv1.GetAccessTokenRequest{Name: f.Name})
	oaMust(t, err)
	for _, agent := range []*Browser{b, NewBrowser(t)} {
		oaFailed(t, oaOpen(t, agent, cb.String()), "STATE_INVALID")
	}
	if n := f.AS.Counts("/token"); n != 1 {
		t.Errorf("%d token requests after replays", n)
	}
	if st := f.Status(t); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Errorf("status %v after replays", st)
	}
	after, err := f.S.OAuth().GetAccessToken(f.Ctx, &mcpauthv1.GetAccessTokenRequest{Name: f.Name})
	oaMust(t, err)
	if after.GetAccessToken() != before.GetAccessToken() {
		t.Error("a replay changed the stored tokens")
	}
	succeeded := oaEvents(t, f.S, "acme", "oauth.callback.succeeded")
	if n := len(succeeded); n != 1 {
		t.Fatalf("%d callback.succeeded events", n)
	}
	// The callback's event names the caller and request that started the
	// flow (the start's own event is written without waiting for it).
	started := oaWantEvent(t, f.S, "acme", "oauth.authorization.started", "")
	if d := succeeded[0].GetDetails(); started.GetActor() == "" || started.GetRequestId() == "" ||
		d["started_by"] != started.GetActor() || d["start_request_id"] != started.GetRequestId() {
		t.Errorf("callback details %v, started by %q in request %q", d, started.GetActor(), started.GetRequestId())
	}
}

// TestOAuthStateExpired: a state whose record is gone from Redis (expired)
// is refused; the record had a TTL of at most the flow lifetime.
func TestOAuthStateExpired(t *testing.T) {
	t.Parallel()
	redisURL, rc, prefix := oaRedis(t)
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true}, testauthz.MCPServerOptions{},
		Options{RedisURL: redisURL}, nil)
	start := f.Start(t)
	b := NewBrowser(t)
	cb := oaToCallback(t, b, start.GetAuthorizationUrl())
	keys := oaRedisKeys(t, rc, prefix+"kv:*")
	if len(keys) != 1 {
		t.Fatalf("pending flow keys %q, want exactly the state record", keys)
	}
	ttl, err := rc.TTL(context.Background(), keys[0]).Result()
	oaMust(t, err)
	if ttl <= 0 || ttl > 5*time.Minute {
		t.Errorf("state record TTL %s, want (0, 5m]", ttl)
	}
	oaMust(t, rc.Del(context.Background(), keys[0]).Err())

	oaFailed(t, oaOpen(t, b, cb.String()), "STATE_INVALID")
	if n := f.AS.Counts("/token"); n != 0 {
		t.Errorf("%d token requests", n)
	}
	if st := f.Status(t); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_PENDING {
		t.Errorf("status %v, want PENDING (unchanged)", st)
	}
}

// TestOAuthUnknownState: a state that was never issued, or none, is refused
// before anything else happens.
func TestOAuthUnknownState(t *testing.T) {
	t.Parallel()
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true}, testauthz.MCPServerOptions{}, Options{}, nil)
	start := f.Start(t)
	b := NewBrowser(t)
	cb := oaToCallback(t, b, start.GetAuthorizationUrl())
	forged := *cb
	q := forged.Query()
	q.Set("state", strings.Repeat("A", 43))
	forged.RawQuery = q.Encode()
	oaFailed(t, oaOpen(t, b, forged.String()), "STATE_INVALID")
	q.Del("state")
	forged.RawQuery = q.Encode()
	oaFailed(t, oaOpen(t, b, forged.String()), "MISSING_STATE")
	q.Set("state", strings.Repeat("x", 600))
	forged.RawQuery = q.Encode()
	oaFailed(t, oaOpen(t, b, forged.String()), "MISSING_STATE")
	if n := f.AS.Counts("/token"); n != 0 {
		t.Errorf("%d token requests", n)
	}
	// The genuine callback still works.
	if p := oaOpen(t, b, cb.String()); p.Title != "Authorization complete" {
		t.Fatalf("genuine callback: %q %q", p.Title, p.Reason)
	}
}

// TestOAuthWrongBrowser: a callback URL delivered to another browser than
// the one that opened the authorize link is refused before the code goes
// anywhere, and audited; but it does not consume the flow (whoever learns a
// state must not be able to cancel someone else's authorization): the
// genuine browser completes it afterwards, once. The flow state lives in
// Redis.
func TestOAuthWrongBrowser(t *testing.T) {
	t.Parallel()
	redisURL, _, _ := oaRedis(t)
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true}, testauthz.MCPServerOptions{},
		Options{Postgres: true, RedisURL: redisURL}, nil)
	start := f.Start(t)
	victim := NewBrowser(t)
	cb := oaToCallback(t, victim, start.GetAuthorizationUrl())

	for _, attacker := range []*Browser{NewBrowser(t), NewBrowser(t)} {
		oaFailed(t, oaOpen(t, attacker, cb.String()), "BROWSER_MISMATCH")
	}
	if n := f.AS.Counts("/token"); n != 0 {
		t.Errorf("%d token requests after wrong-browser callbacks", n)
	}
	ev := oaWantEvent(t, f.S, "acme", "oauth.callback.failed", "BROWSER_MISMATCH")
	if ev.GetProvider() != f.Name {
		t.Errorf("event provider %q", ev.GetProvider())
	}
	if st := f.Status(t); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_PENDING {
		t.Errorf("status %v after wrong-browser callbacks, want PENDING", st)
	}
	// The genuine browser completes the flow, exactly once.
	if p := oaOpen(t, victim, cb.String()); p.Title != "Authorization complete" {
		t.Fatalf("genuine callback after wrong-browser ones: %q %q", p.Title, p.Reason)
	}
	if st := f.Status(t); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Errorf("status %v", st)
	}
	if _, err := f.S.OAuth().GetAccessToken(f.Ctx, &mcpauthv1.GetAccessTokenRequest{Name: f.Name}); err != nil {
		t.Errorf("GetAccessToken after the genuine callback: %v", err)
	}
	oaFailed(t, oaOpen(t, victim, cb.String()), "STATE_INVALID")
	if n := f.AS.Counts("/token"); n != 1 {
		t.Errorf("%d token requests, want 1", n)
	}
}

// TestOAuthCrossTenantFlow: flows are bound to their tenant and provider. A
// code obtained for one tenant's flow, delivered with another tenant's
// state, is not stored on either; a completed flow stores tokens only on
// its own provider.
func TestOAuthCrossTenantFlow(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true})
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	s := Start(t, Options{Env: oaAllowEnv()})
	ctx := Ctx(t, s.AdminKey)
	acme := createProvider(t, s, s.AdminKey, "acme", "docs", mcp.URL(), nil)
	globex := createProvider(t, s, s.AdminKey, "globex", "docs", mcp.URL(), nil)
	startFor := func(name string) string {
		resp, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
		oaMust(t, err)
		return resp.GetAuthorizationUrl()
	}
	bA, bG := NewBrowser(t), NewBrowser(t)
	cbA := oaToCallback(t, bA, startFor(acme))
	cbG := oaToCallback(t, bG, startFor(globex))

	// acme's code with globex's state, in globex's browser (its cookie).
	swapped := *cbG
	q := swapped.Query()
	q.Set("code", cbA.Query().Get("code"))
	swapped.RawQuery = q.Encode()
	p := oaOpen(t, bG, swapped.String())
	oaFailed(t, p, "TOKEN_EXCHANGE_FAILED")
	if p.Provider != globex {
		t.Errorf("failure page for provider %q, want %q", p.Provider, globex)
	}
	for _, name := range []string{acme, globex} {
		if st := oaStatusOf(t, s, ctx, name); st == mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
			t.Errorf("%s authorized by a swapped code", name)
		}
	}

	// acme's own callback completes acme, and only acme.
	p = oaOpen(t, bA, cbA.String())
	if p.Title != "Authorization complete" || p.Provider != acme {
		t.Fatalf("acme's callback: %q %q provider %q", p.Title, p.Reason, p.Provider)
	}
	if st := oaStatusOf(t, s, ctx, acme); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Errorf("acme status %v", st)
	}
	if st := oaStatusOf(t, s, ctx, globex); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED {
		t.Errorf("globex status %v", st)
	}
	if _, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: globex}); err == nil {
		t.Error("globex holds tokens")
	}
	if n := len(oaEvents(t, s, "globex", "oauth.callback.succeeded")); n != 0 {
		t.Errorf("%d callback.succeeded events in globex", n)
	}
	// globex's flow was consumed by the failed attempt.
	oaFailed(t, oaOpen(t, bG, cbG.String()), "STATE_INVALID")
}

// TestOAuthAuthorizeLinkSingleUse: the authorize link on the gateway works
// once, in whichever browser opens it first.
func TestOAuthAuthorizeLinkSingleUse(t *testing.T) {
	t.Parallel()
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true}, testauthz.MCPServerOptions{}, Options{}, nil)
	start := f.Start(t)
	b := NewBrowser(t)
	cb := oaToCallback(t, b, start.GetAuthorizationUrl())
	for _, agent := range []*Browser{b, NewBrowser(t)} {
		p := oaOpen(t, agent, start.GetAuthorizationUrl())
		if p.Code != http.StatusBadRequest || p.Title != "Authorization cannot start" || p.Reason != "FLOW_EXPIRED_OR_USED" {
			t.Errorf("second use of the authorize link: %d %q %q", p.Code, p.Title, p.Reason)
		}
	}
	u, _ := url.Parse(start.GetAuthorizationUrl())
	u.Path += "x"
	if p := oaOpen(t, b, u.String()); p.Reason != "FLOW_EXPIRED_OR_USED" {
		t.Errorf("unknown flow handle: %d %q", p.Code, p.Reason)
	}
	if n := f.AS.Counts("/authorize"); n != 1 {
		t.Errorf("%d authorization requests", n)
	}
	if p := oaOpen(t, b, cb.String()); p.Title != "Authorization complete" {
		t.Fatalf("callback: %q %q", p.Title, p.Reason)
	}
}
