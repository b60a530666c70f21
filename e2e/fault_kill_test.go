package e2e

import (
	"context"
	"crypto/sha256"
	"maps"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
	"github.com/mcpauth/mcpauth/repository"
)

// TestFaultKill9DuringLeaseTakeover (issue 15: kill -9 mid-refresh and
// during the takeover of its lease) runs the real mcpauthd binary as three
// replicas on PostgreSQL and a private Redis, against the rotating
// authorization server with reuse detection. Replica 1 is killed while its
// refresh request is on its way (the proxy swallows it, so the server never
// rotates for it); replica 2 takes the expired lease over and is killed
// during the takeover; replica 3 takes over again and refreshes. Meanwhile
// reads of the expired token are refused (gRPC bounds each by its
// deadline); the server sees exactly one refresh and no reuse, and the
// grant stays alive.
func TestFaultKill9DuringLeaseTakeover(t *testing.T) {
	t.Parallel()
	env := map[string]string{"MCPAUTH_REFRESH_LOCK_TTL": "2s"} // lease: 2 s + 10 s
	c, _, as := faultClusterEnv(t, 1, "", env)
	env = maps.Clone(c.Env)
	bin := mcpauthdBinary(t)
	procs := []*binProc{startBinary(t, bin, env), startBinary(t, bin, env)}
	// leaseHolder is the holder of the grant's unexpired refresh lease, "" if none.
	leaseHolder := func() string {
		var rows []repository.RefreshLease
		if err := c.Replicas[0].Store().DB().Where("tenant_id = ? AND provider_id = ?", c.Tenant, c.ID).Find(&rows).Error; err != nil {
			t.Fatal(err)
		}
		if len(rows) == 0 || rows[0].Holder == "backoff" || time.Now().After(rows[0].ExpiresAt) {
			return ""
		}
		return rows[0].Holder
	}
	get := func(p *binProc, d time.Duration) (*mcpauthv1.GetAccessTokenResponse, error) {
		ctx, cancel := context.WithTimeout(c.ctx(t), d)
		defer cancel()
		return mcpauthv1.NewOAuthServiceClient(p.Conn).GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: c.Name})
	}
	old := c.mustGet(t, 0).GetAccessToken()
	c.waitDue(t, 0) // expired: a read must refresh
	before := c.AS.RefreshCount()
	as.BlackHole()

	// Replica 1 takes the lease and sends its refresh into the black hole.
	go func() { _, _ = get(procs[0], 30*time.Second) }()
	tokWait(t, "replica 1 to hold the refresh lease", 20*time.Second, func() bool { return leaseHolder() != "" })
	first := leaseHolder()
	t0 := time.Now()
	procs[0].Kill9(t)
	// Its request dies with the proxy's connections: the server never got it.
	as.Down()
	as.Clear()
	as.Up()

	// Replica 2 waits for the dead holder's lease to expire, takes it over
	// and is killed during the takeover, before its refresh.
	as.BlackHole()
	stop := make(chan struct{})
	go func() {
		// Reads on replica 2 are refused (UNAVAILABLE) while the dead
		// holder's lease runs; one of them takes it over once it expired.
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = get(procs[1], 5*time.Second)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	tokWait(t, "replica 2 to take the lease over", 60*time.Second, func() bool {
		h := leaseHolder()
		return h != "" && h != first
	})
	killed2 := time.Since(t0)
	procs[1].Kill9(t)
	close(stop)
	as.Down()
	as.Clear()
	as.Up()

	// Replica 3 takes over once more and refreshes; its callers are
	// answered by their deadline meanwhile (UNAVAILABLE while the token is
	// expired and the lease is a dead replica's).
	p3 := startBinary(t, bin, env)
	var fresh string
	refused := map[codes.Code]int{}
	tokWait(t, "a refreshed token from replica 3", 90*time.Second, func() bool {
		tok, err := get(p3, 5*time.Second)
		switch status.Code(err) {
		case codes.OK:
			fresh = tok.GetAccessToken()
			return true
		default:
			// UNAVAILABLE, or DEADLINE_EXCEEDED at the caller's deadline
			// (the gRPC deadline bounds every call): the token is expired
			// and the dead replica's lease has not run out yet.
			refused[status.Code(err)]++
		}
		time.Sleep(200 * time.Millisecond)
		return false
	})
	if fresh == old {
		t.Error("replica 3 served the expired token")
	}
	if n := c.AS.RefreshCount() - before; n != 1 {
		t.Errorf("refresh requests at the server since the black hole = %d, want 1 (the two killed replicas' never arrived)", n)
		for _, r := range tokRefreshRequests(c.AS) {
			h := sha256.Sum256([]byte(r.Form.Get("refresh_token")))
			t.Logf("refresh request at %v after the first kill (second kill at %v), refresh token #%x", r.Time.Sub(t0), killed2, h[:4])
		}
	}
	c.wantGrantAlive(t)
	t.Logf("two replicas killed mid-refresh and mid-takeover; replica 3 refreshed after refused reads %v; refreshes since the black hole %d, reuse %d",
		refused, c.AS.RefreshCount()-before, c.AS.ReuseRejections())
}
