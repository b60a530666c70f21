package e2e

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	"github.com/mcpauth/mcpauth/service/grants"
)

// tokMakeIdle sets the time of a credential's last refresh, as if nobody
// had used the authorization since.
func tokMakeIdle(tb testing.TB, s *Service, tenant, id string, at time.Time) {
	tb.Helper()
	res := s.Store().DB().Exec("UPDATE credentials SET last_refresh_at = ? WHERE tenant_id = ? AND provider_id = ?", at.UTC(), tenant, id)
	if res.Error != nil || res.RowsAffected != 1 {
		tb.Fatalf("backdating %s/%s: %v (%d rows)", tenant, id, res.Error, res.RowsAffected)
	}
}

// tokClientOf returns the client id a recorded token request authenticated
// with (client_secret_basic, else client_id in the form).
func tokClientOf(r testauthz.RecordedRequest) string {
	if id, _, ok := (&http.Request{Header: r.Header}).BasicAuth(); ok {
		if u, err := url.QueryUnescape(id); err == nil {
			return u
		}
		return id
	}
	return r.Form.Get("client_id")
}

// TestTokenBackgroundRefresh: the service's own background refresher
// refreshes an authorization nobody used for longer than the idle age
// (default 12 h), without any GetAccessToken call, so refresh tokens that
// expire when unused stay alive.
func TestTokenBackgroundRefresh(t *testing.T) {
	t.Parallel()
	c := tokStart(t, tokOptions{Env: map[string]string{"MCPAUTH_BACKGROUND_REFRESH_INTERVAL": "1s"}})
	s := c.Replicas[0]
	ctx := context.Background()
	before, err := s.Store().GetCredential(ctx, domain.TenantGrant(c.Tenant, c.ID))
	if err != nil {
		t.Fatal(err)
	}
	check := tokCounters(c.AS)
	tokMakeIdle(t, s, c.Tenant, c.ID, time.Now().Add(-13*time.Hour))

	tokWait(t, "the background refresh to be stored", 15*time.Second, func() bool {
		cred, err := s.Store().GetCredential(ctx, domain.TenantGrant(c.Tenant, c.ID))
		return err == nil && cred.Generation > before.Generation
	})
	check.want(t, 1)
	after, err := s.Store().GetCredential(ctx, domain.TenantGrant(c.Tenant, c.ID))
	if err != nil {
		t.Fatal(err)
	}
	if after.LastRefreshAt == nil || time.Since(*after.LastRefreshAt) > time.Minute {
		t.Errorf("last refresh recorded at %v after the background refresh", after.LastRefreshAt)
	}
	if len(c.AS.RequestsTo(c.AS.Path("/token"))) == 0 {
		t.Fatal("no token requests recorded")
	}
	tokWait(t, "the oauth.token.refreshed audit event", 10*time.Second, func() bool {
		return len(c.tokAudit(t, "oauth.token.refreshed")) == 1
	})
	// A background refresh is not a token read (reads are counted, see
	// TestTokenReadsSurviveCrashBounded; none may be stored yet).
	if n := storedReads(t, s.Conn, c.Key, c.Tenant, c.Name); n != 0 {
		t.Fatalf("%d token reads before the first GetAccessToken", n)
	}

	// The refreshed token is what callers get now, with no further refresh.
	tok := c.mustGet(t, 0).GetAccessToken()
	tokValid(t, c.AS, tok)
	check.want(t, 1)
}

// TestTokenBackgroundRefreshFairness: one background pass takes tenants in
// turn, at most PerTenant authorizations each, so a tenant with many idle
// authorizations cannot starve another. The order is observed at the
// authorization server (each provider has its own registered client) with
// Concurrency 1.
func TestTokenBackgroundRefreshFairness(t *testing.T) {
	t.Parallel()
	c := tokStart(t, tokOptions{})
	s := c.Replicas[0]
	ctx := context.Background()
	issuer := c.status(t).GetIssuer()
	type prov struct {
		tenant, id string
		idle       time.Duration
	}
	// Least recently refreshed first is the listing order: big's three
	// come before small's one.
	provs := []prov{{"big", "b1", 30 * time.Hour}, {"big", "b2", 29 * time.Hour}, {"big", "b3", 28 * time.Hour}, {"small", "s1", 20 * time.Hour}}
	clients := map[string]string{} // client id -> tenant/id
	for _, p := range provs {
		// A tenant holds one provider per server URL: one MCP server each,
		// all protected by the same authorization server.
		mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: c.AS})
		c.authorize(t, s, p.tenant, p.id, mcp.URL())
		reg, err := s.Store().GetClientRegistration(ctx, p.tenant, p.id, issuer)
		if err != nil {
			t.Fatal(err)
		}
		clients[reg.ClientID] = p.tenant + "/" + p.id
		tokMakeIdle(t, s, p.tenant, p.id, time.Now().Add(-p.idle))
	}
	from := len(tokRefreshRequests(c.AS))

	r := grants.NewRefresherWith(s.Store(), s.App.Tokens(), slog.New(slog.DiscardHandler),
		grants.RefresherConfig{IdleAge: time.Hour, Concurrency: 1, PerTenant: 2})
	if n := r.Pass(ctx); n != 3 {
		t.Fatalf("the pass refreshed %d authorizations, want 3 (two of big's, small's one)", n)
	}
	var order []string
	for _, req := range tokRefreshRequests(c.AS)[from:] {
		order = append(order, clients[tokClientOf(req)])
	}
	if want := []string{"big/b1", "small/s1", "big/b2"}; !slices.Equal(order, want) {
		t.Fatalf("refresh order %v, want %v (round-robin by tenant, at most 2 each)", order, want)
	}
	// The authorization left out of this pass is still idle: the next one takes it.
	if n := r.Pass(ctx); n != 1 {
		t.Fatalf("the second pass refreshed %d authorizations, want 1", n)
	}
	if last := tokRefreshRequests(c.AS); clients[tokClientOf(last[len(last)-1])] != "big/b3" {
		t.Fatal("the second pass did not refresh big/b3")
	}
	if c.AS.ReuseRejections() != 0 {
		t.Fatalf("%d reuse rejections", c.AS.ReuseRejections())
	}
}
