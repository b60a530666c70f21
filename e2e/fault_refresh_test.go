package e2e

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// faultTokenLife is the access token lifetime of the fault tests: short, so
// tokens come due and expire within a test; the refresh margin is a quarter
// of it (1.5 s).
const faultTokenLife = 6 * time.Second

// faultCluster starts n replicas on a private Redis with the authorization
// server (rotating refresh tokens, reuse revokes the whole grant) behind a
// fault proxy.
func faultCluster(tb testing.TB, n int, dsn string) (*tokCluster, *faultRedis, *faultProxy) {
	tb.Helper()
	return faultClusterEnv(tb, n, dsn, nil)
}

// faultClusterEnv is faultCluster with more MCPAUTH_* settings.
func faultClusterEnv(tb testing.TB, n int, dsn string, env map[string]string) (*tokCluster, *faultRedis, *faultProxy) {
	tb.Helper()
	rd := startFaultRedis(tb)
	newAS, asProxy := faultAS(tb)
	c := tokStart(tb, tokOptions{AS: testauthz.AuthServerOptions{AccessTokenLifetime: faultTokenLife}, Replicas: n,
		NewAS: newAS, RedisURL: rd.URL(), DSN: dsn, Env: env})
	return c, rd, asProxy()
}

// wantGrantAlive checks the outcome every fault test must keep: the server
// never saw a rotated refresh token again (reuse would revoke the grant),
// the provider is AUTHORIZED, and the token mcpauth serves now is accepted
// by the server.
func (c *tokCluster) wantGrantAlive(tb testing.TB) {
	tb.Helper()
	if n := c.AS.ReuseRejections(); n != 0 {
		tb.Errorf("refresh token reuse at the server: %d (the grant was revoked)", n)
	}
	if st := c.status(tb); st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		tb.Errorf("status %v (%s), want AUTHORIZED", st.GetStatus(), st.GetReason())
	}
	tok := c.mustGet(tb, 0)
	if _, ok := c.AS.Validate(tok.GetAccessToken()); !ok {
		tb.Error("the token mcpauth serves is not accepted by the authorization server")
	}
}

// TestFaultRedisRestartDuringSlowRefresh (issue 15, case 1): the token
// response is held 3 s; meanwhile Redis restarts empty (the refresh lock is
// gone) and a second replica needs a refresh. The database lease, not
// Redis, decides: the second replica waits for the first one's result
// instead of spending the rotated refresh token.
func TestFaultRedisRestartDuringSlowRefresh(t *testing.T) {
	t.Parallel()
	c, rd, as := faultCluster(t, 2, "")
	old := c.mustGet(t, 0).GetAccessToken()
	c.waitDue(t, 0) // expired: both callers need the refresh
	as.Hold(3 * time.Second)

	var wg sync.WaitGroup
	results := make([]tokResult, 2)
	call := func(i int) {
		defer wg.Done()
		// The caller's deadline: without the database lease the second
		// replica would spend the rotated token, or wait for a lock TTL.
		ctx, cancel := context.WithTimeout(c.ctx(t), 10*time.Second)
		defer cancel()
		t0 := time.Now()
		tok, err := c.get(ctx, i)
		results[i] = tokResult{replica: i, tok: tok, err: err, elapsed: time.Since(t0)}
	}
	wg.Add(1)
	go call(0)
	tokWait(t, "replica 0's refresh to reach the server", 10*time.Second, func() bool { return c.AS.RefreshCount() == 1 })
	rd.Restart()
	wg.Add(1)
	go call(1)
	wg.Wait()
	as.Clear()

	for _, r := range results {
		if r.err != nil {
			t.Fatalf("replica %d: %v", r.replica, r.err)
		}
		if r.tok.GetAccessToken() == old {
			t.Errorf("replica %d served the expired token", r.replica)
		}
	}
	if results[0].tok.GetAccessToken() != results[1].tok.GetAccessToken() {
		t.Error("the replicas serve different tokens: the refresh ran twice")
	}
	if n := c.AS.RefreshCount(); n != 1 {
		t.Errorf("refresh requests at the server = %d, want 1", n)
	}
	c.wantGrantAlive(t)
	t.Logf("replica 0 answered in %v, replica 1 (after the Redis restart) in %v; refreshes %d, reuse %d",
		results[0].elapsed.Round(time.Millisecond), results[1].elapsed.Round(time.Millisecond), c.AS.RefreshCount(), c.AS.ReuseRejections())
}

// TestFaultDatabaseDownDuringRefreshStore (issue 15, case 2): the server
// answers a refresh (rotating the refresh token) while the database is
// unreachable. The answer is served and kept, never thrown away, and
// stored once the database is back; the next refresh uses it.
func TestFaultDatabaseDownDuringRefreshStore(t *testing.T) {
	t.Parallel()
	dsn, pg := faultPostgres(t)
	c, _, as := faultCluster(t, 1, dsn)
	old := c.mustGet(t, 0).GetAccessToken()
	c.waitDue(t, 0)
	as.Hold(2 * time.Second)

	type res struct {
		tok *mcpauthv1.GetAccessTokenResponse
		err error
	}
	done := make(chan res, 1)
	go func() {
		ctx, cancel := context.WithTimeout(c.ctx(t), 20*time.Second)
		defer cancel()
		tok, err := c.get(ctx, 0)
		done <- res{tok, err}
	}()
	tokWait(t, "the refresh to reach the server", 10*time.Second, func() bool { return c.AS.RefreshCount() == 1 })
	pg.Down()
	// The answer arrives while the database is away: it is kept.
	tokWait(t, "the replica to keep the refresh it could not store", 20*time.Second, func() bool {
		return strings.Contains(c.Replicas[0].Logs.String(), "kept in memory")
	})
	as.Clear()
	pg.Up()
	// The caller's answer waits only for its audit event (written once
	// the database is back): it gets the kept token.
	r := <-done
	if r.err != nil {
		t.Fatalf("the refresh answered during the database outage was not served: %v", r.err)
	}
	fresh := r.tok.GetAccessToken()
	if fresh == old {
		t.Fatal("the expired token was served")
	}
	defer func() {
		if t.Failed() {
			t.Log(c.Replicas[0].Logs.String())
		}
	}()
	tokWait(t, "the kept tokens to be stored", 20*time.Second, func() bool {
		st, err := c.Replicas[0].OAuth().GetAuthorizationStatus(c.ctx(t), &mcpauthv1.GetAuthorizationStatusRequest{Name: c.Name})
		d := st.GetExpireTime().AsTime().Sub(r.tok.GetExpireTime().AsTime())
		return err == nil && d.Abs() < time.Second // stored with the database's precision
	})
	// The next refresh spends the stored (newest) refresh token.
	c.waitDue(t, 0)
	if next := c.mustGet(t, 0).GetAccessToken(); next == fresh {
		t.Error("no refresh after the database came back")
	}
	if n := c.AS.RefreshCount(); n != 2 {
		t.Errorf("refresh requests = %d, want 2", n)
	}
	c.wantGrantAlive(t)
	tokWait(t, "one token.refreshed audit event per refresh", 10*time.Second, func() bool {
		return len(c.tokAudit(t, "oauth.token.refreshed")) == 2
	})
}

// TestFaultAuthServerBlackHoled (issue 15, case 4): the authorization
// server swallows every request. While the token is valid every caller on
// every replica gets it after the stale wait (0.5 s), never waiting for
// the hung server; once it expired, callers are answered by their own
// deadline. When the server is back the grant refreshes normally.
func TestFaultAuthServerBlackHoled(t *testing.T) {
	t.Parallel()
	c, _, as := faultCluster(t, 2, "")
	cur := c.mustGet(t, 0).GetAccessToken()
	exp := c.waitDue(t, 1400*time.Millisecond) // due, about 1.4 s left
	as.BlackHole()
	start, results := c.tokCallers(t, 20, []int{0, 1}, 3*time.Second)
	close(start)
	var worst time.Duration
	for _, r := range tokCollect(t, results, 20) {
		if r.err != nil {
			t.Errorf("replica %d: a valid token was withheld: %v", r.replica, r.err)
			continue
		}
		if r.tok.GetAccessToken() != cur {
			t.Errorf("replica %d served another token", r.replica)
		}
		worst = max(worst, r.elapsed)
	}
	// Each caller had a 3 s deadline and got the valid token by it (the
	// hung server would hold it 10 s and more; the stale wait is 0.5 s).
	if time.Now().After(exp) {
		t.Log("note: the token expired while the callers ran")
	}
	// Expired: the caller gets an error by its deadline (gRPC ends the
	// call there), not a token.
	c.waitDue(t, 0)
	if tok, err := c.getBy(t, 1, 2*time.Second); err == nil {
		t.Errorf("an expired token was served: %v", tok.GetExpireTime().AsTime())
	}
	as.Clear()
	tokWait(t, "a refreshed token once the server answers", 60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(c.ctx(t), 5*time.Second)
		defer cancel()
		tok, err := c.get(ctx, 0)
		return err == nil && tok.GetAccessToken() != cur
	})
	c.wantGrantAlive(t)
	t.Logf("slowest of 20 callers with a valid token during the black hole: %v", worst.Round(time.Millisecond))
}

// TestFaultAuthServer503 (issue 15, case 4): the token endpoint answers 503
// for 4 s while callers on two replicas ask 20 times a second. The valid
// token is served throughout and the failed refresh is remembered (a
// backoff held in the refresh lease, honoured by every replica), so the
// server is not hammered.
func TestFaultAuthServer503(t *testing.T) {
	t.Parallel()
	c, _, _ := faultCluster(t, 2, "")
	cur := c.mustGet(t, 0).GetAccessToken()
	c.waitDue(t, 1500*time.Millisecond)
	c.AS.SetTokenStatus(503, "")
	before := len(tokRefreshRequests(c.AS))
	stop := time.Now().Add(4 * time.Second)
	served, withheld := 0, 0
	for i := 0; time.Now().Before(stop); i++ {
		ctx, cancel := context.WithTimeout(c.ctx(t), 2*time.Second)
		tok, err := c.get(ctx, i%2)
		cancel()
		switch {
		case err == nil && tok.GetAccessToken() == cur:
			served++
		case err == nil:
			t.Fatalf("another token served while the server answers 503")
		default:
			withheld++ // expired meanwhile: UNAVAILABLE is the honest answer
		}
		time.Sleep(50 * time.Millisecond)
	}
	requests := len(tokRefreshRequests(c.AS)) - before
	c.AS.SetTokenStatus(0, "")
	t.Logf("4 s of 503: %d refresh requests reached the server; %d reads served the valid token, %d (after expiry) UNAVAILABLE",
		requests, served, withheld)
	// Without a backoff: one refresh (3 attempts) per read once due, about
	// 20 reads a second. With it: a few refresh rounds in all.
	if requests > 12 {
		t.Errorf("%d refresh requests in 4 s of 503s: the failing server is hammered", requests)
	}
	if served == 0 {
		t.Error("the valid token was never served during the 503s")
	}
	tokWait(t, "a refreshed token once the server answers", 60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(c.ctx(t), 5*time.Second)
		defer cancel()
		tok, err := c.get(ctx, 0)
		return err == nil && tok.GetAccessToken() != cur
	})
	c.wantGrantAlive(t)
}

// TestFaultRedisFrozen (issue 15, cases 3 and 5): Redis stops answering
// (SIGSTOP). Tokens, fresh or due, are served by the caller's deadline on every
// replica; an expired one is refreshed under the database lease alone;
// once Redis answers again nothing stalls for a lock TTL.
func TestFaultRedisFrozen(t *testing.T) {
	t.Parallel()
	c, rd, _ := faultCluster(t, 2, "")
	cur := c.mustGet(t, 0).GetAccessToken()
	rd.Stop()
	defer rd.Cont()
	for r := range 2 {
		tok, err := c.getBy(t, r, 3*time.Second)
		if err != nil || tok.GetAccessToken() != cur {
			t.Errorf("replica %d: fresh token not served by the caller's deadline with Redis frozen: %v", r, err)
		}
	}
	c.waitDue(t, 1400*time.Millisecond)
	for r := range 2 {
		tok, err := c.getBy(t, r, 3*time.Second)
		if err != nil || tok.GetAccessToken() == "" {
			t.Errorf("replica %d: due token not served by the caller's deadline with Redis frozen: %v", r, err)
		}
	}
	c.waitDue(t, 0)
	ctx, cancel := context.WithTimeout(c.ctx(t), 15*time.Second)
	defer cancel()
	tok, err := c.get(ctx, 1)
	if err != nil {
		t.Fatalf("expired token not refreshed with Redis frozen: %v", err)
	}
	if tok.GetAccessToken() == cur {
		t.Error("the expired token was served")
	}
	rd.Cont()
	c.waitDue(t, 0)
	if _, err := c.getBy(t, 0, 5*time.Second); err != nil {
		t.Errorf("no refreshed token by the caller's deadline after Redis came back (a lock TTL stall?): %v", err)
	}
	c.wantGrantAlive(t)
}
