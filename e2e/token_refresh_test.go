package e2e

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// tokLifetime is the access-token lifetime of the refresh tests.
const tokLifetime = 2 * time.Second

// tokDueMargin is how close to its expiry the tests wait before releasing
// callers. The service refreshes when less than min(lifetime/4,
// MCPAUTH_REFRESH_MARGIN_MAX) is left. fosite rounds expiries and
// expires_in to whole seconds, so a 2 s token is stored with a lifetime of
// 1 to 2 s and a margin of 0.25 to 0.5 s: 200 ms before expiry it is due for
// sure, and the authorization server still accepts it.
const tokDueMargin = 200 * time.Millisecond

// tokRefreshCheck records the authorization server's counters before a
// refresh round and asserts on their deltas afterwards.
type tokRefreshCheck struct {
	as                        *testauthz.AuthServer
	refreshes, reuse, records int
}

func tokCounters(as *testauthz.AuthServer) tokRefreshCheck {
	return tokRefreshCheck{as: as, refreshes: as.RefreshCount(), reuse: as.ReuseRejections(), records: len(tokRefreshRequests(as))}
}

// want asserts that exactly n refresh requests reached the server since
// the counters were taken, and that none presented a used refresh token.
func (b tokRefreshCheck) want(tb testing.TB, n int) {
	tb.Helper()
	if d := b.as.RefreshCount() - b.refreshes; d != n {
		tb.Errorf("authorization server processed %d refreshes, want %d", d, n)
	}
	if d := len(tokRefreshRequests(b.as)) - b.records; d != n {
		tb.Errorf("authorization server received %d refresh requests, want %d", d, n)
	}
	if d := b.as.ReuseRejections() - b.reuse; d != 0 {
		tb.Errorf("authorization server rejected %d reused refresh tokens (and revoked the family)", d)
	}
}

// tokValid fails unless the authorization server accepts the access token.
func tokValid(tb testing.TB, as *testauthz.AuthServer, tok string) {
	tb.Helper()
	if _, ok := as.Validate(tok); !ok {
		tb.Fatal("the authorization server does not accept the access token mcpauth returned")
	}
}

// TestTokenRefreshSingleFlight: 100 concurrent GetAccessToken calls on an
// expired token in one process cause exactly one refresh at the
// authorization server for it, and every caller gets a token that refresh
// (or, on a slow round, a later one for the next expiry) issued.
//
// Counted per generation, not per round (tokChain): a round on a loaded
// machine may outlast the new 1-2 s token's margin, and a late caller then
// rightly refreshes once more, for the next expiry. Released once the
// token has expired, so that every caller needs the refresh (a due but
// valid token is served while a refresh slower than StaleWait runs on).
func TestTokenRefreshSingleFlight(t *testing.T) {
	t.Parallel()
	c := tokStart(t, tokOptions{AS: testauthz.AuthServerOptions{AccessTokenLifetime: tokLifetime}})
	c.mustGet(t, 0)
	before := len(tokChain(t, c.AS))

	start, results := c.tokCallers(t, 100, []int{0}, 30*time.Second)
	c.waitDue(t, 0)
	close(start)
	rs := tokCollect(t, results, 100)
	chain := tokChain(t, c.AS)
	if t.Failed() {
		t.FailNow()
	}
	if len(chain) == before {
		t.Fatal("no refresh after the token expired")
	}
	got := tokGenerations(t, rs, chain, before)
	t.Logf("%d refreshes for the round; callers got generations %v", len(chain)-before, got)
}

// TestTokenRefreshAcrossReplicas: 100 callers spread over three replicas
// sharing one database and one Redis cause exactly one refresh per expiry,
// three expiries in a row, and all get a token the server issued for it.
//
// Counted per generation, not per round (tokChain): a round on a loaded
// machine may outlast the new 1-2 s token's margin, and a late caller then
// rightly refreshes once more, for the next expiry.
func TestTokenRefreshAcrossReplicas(t *testing.T) {
	t.Parallel()
	c := tokStart(t, tokOptions{AS: testauthz.AuthServerOptions{AccessTokenLifetime: tokLifetime}, Replicas: 3})
	// Access tokens callers got in earlier rounds, and the authorization's.
	earlier := map[string]bool{tokChain(t, c.AS)[0].AccessToken: true}
	for round := 1; round <= 3; round++ {
		start, results := c.tokCallers(t, 100, []int{0, 1, 2}, 30*time.Second)
		// Released once the token has expired, so that every caller needs
		// the refresh (a due but valid token may be served while it runs).
		c.waitDue(t, 0)
		close(start)
		rs := tokCollect(t, results, 100)
		chain := tokChain(t, c.AS)
		if t.Failed() {
			t.FailNow() // the next rounds would report the same refreshes again
		}
		gen := map[string]int{}
		for i, is := range chain {
			gen[is.AccessToken] = i
		}
		got := map[string]bool{}
		perReplica := map[int]int{}
		for _, r := range rs {
			if r.err != nil {
				t.Fatalf("expiry %d: a caller on replica %d: %v", round, r.replica, r.err)
			}
			tok := r.tok.GetAccessToken()
			if _, ok := gen[tok]; !ok {
				t.Fatalf("expiry %d: replica %d returned an access token the server never issued", round, r.replica)
			}
			if earlier[tok] {
				t.Fatalf("expiry %d: replica %d returned the access token of an earlier expiry", round, r.replica)
			}
			got[tok] = true
			perReplica[r.replica]++
		}
		t.Logf("expiry %d: %d refreshes in all so far; callers got %d access token(s)", round, len(chain)-1, len(got))
		if len(perReplica) != 3 {
			t.Fatalf("callers were not spread over the replicas: %v", perReplica)
		}
		for tok := range got {
			earlier[tok] = true
		}
	}
}

// TestTokenRefreshLockHolderCrashed: a replica that took the refresh lock
// and died leaves the lock in Redis until its TTL ends. Callers on every
// replica wait that long, then exactly one of them refreshes; the rotated
// refresh token is stored, so the next expiry refreshes again.
//
// Counted per generation (tokChain): on a loaded machine the callers may
// still be returning when the new 1-2 s token comes due, and a late one
// then rightly refreshes once more, for the next expiry.
func TestTokenRefreshLockHolderCrashed(t *testing.T) {
	t.Parallel()
	const lockTTL = 2 * time.Second
	c := tokStart(t, tokOptions{AS: testauthz.AuthServerOptions{AccessTokenLifetime: tokLifetime}, Replicas: 3,
		Env: map[string]string{"MCPAUTH_REFRESH_LOCK_TTL": lockTTL.String()}})
	c.mustGet(t, 0)
	before := len(tokChain(t, c.AS))
	start, results := c.tokCallers(t, 30, []int{0, 1, 2}, 30*time.Second)
	c.waitDue(t, 0)

	// What statestore.Redis.Lock leaves behind for a holder that never
	// releases: the lock key with the holder's random token and the lease TTL.
	ctx := context.Background()
	ok, err := c.Redis.SetNX(ctx, c.lockKey(), "token-of-a-crashed-replica", lockTTL).Result()
	if err != nil || !ok {
		t.Fatalf("planting the crashed holder's lock: %v %v", ok, err)
	}
	planted := time.Now()
	close(start)
	rs := tokCollect(t, results, 30)
	chain := tokChain(t, c.AS)
	if t.Failed() {
		t.FailNow()
	}
	if len(chain) == before {
		t.Fatal("no refresh after the crashed holder's lock ended")
	}
	got := tokGenerations(t, rs, chain, before)
	t.Logf("%d refreshes after the lock ended; callers got generations %v", len(chain)-before, got)
	if at := chain[before].Requested; at.Before(planted.Add(lockTTL - 50*time.Millisecond)) {
		t.Errorf("the refresh reached the server %s after the lock was planted, before its TTL of %s ended", at.Sub(planted), lockTTL)
	}
	if n, err := c.Redis.Exists(ctx, c.lockKey()).Result(); err != nil || n != 0 {
		t.Errorf("the refresh lock is still held after the refresh (exists=%d, %v)", n, err)
	}

	// No token was lost: the stored refresh token is the rotated one (a
	// refresh presenting a spent one would be a reuse tokChain reports).
	// One caller on a due token: exactly one refresh.
	before = len(chain)
	c.waitDue(t, tokDueMargin)
	next := c.mustGet(t, 1).GetAccessToken()
	chain = tokChain(t, c.AS)
	if len(chain) != before+1 {
		t.Fatalf("%d refreshes for one caller at the next expiry, want 1", len(chain)-before)
	}
	if next != chain[before].AccessToken {
		t.Fatal("the caller at the next expiry did not get the token its refresh issued")
	}
	if st := c.status(t); st.GetStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatalf("status %s after the refreshes", st.GetStatus())
	}
}

// TestTokenRefreshHangingServerAcrossReplicas: while replica 0's refresh
// hangs at the authorization server, replica 1's callers wait on the lock
// instead of sending a second refresh. When replica 0 gives up (its work is
// bounded by the lock TTL) and releases the lock, replica 1 refreshes once,
// with the refresh token the hung request never consumed.
//
// Nothing here depends on how fast the machine is, but one thing no test
// can force: replica 1's callers, released the moment replica 0's request
// hangs, must reach the lock within the lock TTL (3 s), the bound under
// test. What is asserted is ordering, read from Redis's own record of the
// lock (MONITOR, in execution order with its clock) and from the server:
//   - replica 1 polled the lock (EXISTS) while replica 0 held it, and took
//     it only after: it waited instead of refreshing;
//   - the second refresh request reached the server no earlier than the
//     lock TTL after replica 0 took the lock (not the hung request's
//     arrival: replica 0 takes the lock before it reads the credential,
//     takes the database lease and connects);
//   - replica 0's hung request was never answered, so every replica 1
//     caller returned the retry's token: none returned during the hang.
//
// Replica 0's bound is the lock TTL, not the egress client's 10 s header
// timeout: replica 1's refresh, with its budget of two lock TTLs from when
// its callers came, succeeds only if replica 0 freed the database lease
// within it (else replica 1's callers get UNAVAILABLE), so no elapsed time
// is measured here.
func TestTokenRefreshHangingServerAcrossReplicas(t *testing.T) {
	t.Parallel()
	const lockTTL = 3 * time.Second
	c := tokStart(t, tokOptions{AS: testauthz.AuthServerOptions{AccessTokenLifetime: tokLifetime}, Replicas: 2,
		Env: map[string]string{"MCPAUTH_REFRESH_LOCK_TTL": lockTTL.String()}})
	old := c.mustGet(t, 0).GetAccessToken()
	check := tokCounters(c.AS)
	// The token expires first, so nobody can fall back to it.
	c.waitDue(t, 0)

	// Everything is in place before replica 0 takes the lock: the record
	// of the lock key's commands, and replica 1's callers at their barrier.
	lockLog := tokRedisMonitor(t, `"`+c.lockKey()+`"`)
	first, firstDone := c.tokCallers(t, 1, []int{0}, 30*time.Second)
	start, results := c.tokCallers(t, 20, []int{1}, 30*time.Second)
	hung := c.AS.HangTokenRequests(1) // replica 0's refresh; later ones are answered
	close(first)
	select {
	case <-hung:
	case <-time.After(30 * time.Second):
		t.Fatal("replica 0's refresh request never reached the server")
	}
	close(start)

	r0 := tokCollect(t, firstDone, 1)[0]
	// The upstream request's deadline, not the caller's: UNAVAILABLE.
	if info := tokErrorInfo(t, r0.err, codes.Unavailable); info.GetReason() != "UNAVAILABLE" {
		t.Fatalf("replica 0's caller after the hung refresh: reason %q, want UNAVAILABLE", info.GetReason())
	}
	tok := tokSameToken(t, tokCollect(t, results, 20))
	tokValid(t, c.AS, tok)
	if tok == old {
		t.Fatal("replica 1 served the expired token")
	}
	reqs := tokRefreshRequests(c.AS)[check.records:]
	if len(reqs) != 2 {
		t.Fatalf("%d refresh requests, want the hung one and one retry after it was abandoned", len(reqs))
	}
	if reqs[0].Form.Get("refresh_token") != reqs[1].Form.Get("refresh_token") {
		t.Error("the retry did not use the refresh token the hung request left unconsumed")
	}
	if c.AS.RefreshCount()-check.refreshes != 1 || c.AS.ReuseRejections() != check.reuse {
		t.Errorf("server processed %d refreshes with %d reuse rejections, want 1 and 0",
			c.AS.RefreshCount()-check.refreshes, c.AS.ReuseRejections()-check.reuse)
	}
	if last := c.AS.Issued()[len(c.AS.Issued())-1]; last.Grant != "refresh_token" || last.AccessToken != tok {
		t.Error("replica 1's callers did not get the token of the retry")
	}

	// The lock's history: replica 0's acquisition, replica 1's polls while
	// it was held, replica 1's acquisition (the script's SET runs only when
	// the lock is free).
	var acquired []time.Time
	polledHeld := 0
	tokWait(t, "replica 1's lock acquisition in Redis's command stream", 10*time.Second, func() bool {
		acquired, polledHeld = nil, 0
		for _, l := range lockLog.Lines() {
			switch {
			case l.Script && l.Cmd == "set":
				acquired = append(acquired, l.At)
			case l.Cmd == "exists" && len(acquired) == 1:
				polledHeld++
			}
		}
		return len(acquired) >= 2
	})
	if len(acquired) != 2 {
		t.Fatalf("the refresh lock was taken %d times, want twice (replica 0, then replica 1)", len(acquired))
	}
	if polledHeld == 0 {
		t.Error("replica 1 never waited on the refresh lock replica 0 held")
	}
	// Both times are Redis's (its command stream): the lock's TTL is
	// counted on that clock. MONITOR stamps a command a little after the
	// time its expiry was computed from, hence the small allowance.
	if gap := acquired[1].Sub(acquired[0]); gap < lockTTL-50*time.Millisecond {
		t.Errorf("replica 1 took the lock %s after replica 0, before the lock's TTL %s ended", gap, lockTTL)
	}
	if reqs[1].Time.Before(acquired[1]) {
		t.Errorf("the second refresh was sent before replica 1 took the lock (%s earlier)", acquired[1].Sub(reqs[1].Time))
	}
}

// TestTokenRefreshWithoutRotation: a server that does not rotate refresh
// tokens sends none back; mcpauth keeps the original and uses it for every
// refresh.
func TestTokenRefreshWithoutRotation(t *testing.T) {
	t.Parallel()
	c := tokStart(t, tokOptions{AS: testauthz.AuthServerOptions{AccessTokenLifetime: tokLifetime, NoRefreshRotation: true}})
	prev := c.mustGet(t, 0).GetAccessToken()
	check := tokCounters(c.AS)
	for round := 1; round <= 2; round++ {
		c.waitDue(t, tokDueMargin)
		tok := c.mustGet(t, 0).GetAccessToken()
		if tok == prev {
			t.Fatalf("refresh %d: no new access token", round)
		}
		tokValid(t, c.AS, tok)
		prev = tok
	}
	check.want(t, 2)
	reqs := tokRefreshRequests(c.AS)[check.records:]
	first, second := reqs[0].Form.Get("refresh_token"), reqs[1].Form.Get("refresh_token")
	if first == "" || first != second {
		t.Fatal("the second refresh did not present the original refresh token")
	}
	if st := c.status(t); !st.GetHasRefreshToken() {
		t.Fatal("the refresh token was dropped after a response without one")
	}
}
