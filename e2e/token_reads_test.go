package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// tokenReadsFlush is the flush interval the crash test runs the binary with.
const tokenReadsFlush = 300 * time.Millisecond

// storedReads sums the provider's stored token-read counts, paging through
// ListTokenReads two rows at a time (so paging is exercised).
func storedReads(tb testing.TB, conn *grpc.ClientConn, key, tenant, provider string) int64 {
	tb.Helper()
	ctx := Ctx(tb, key)
	var n int64
	tok := ""
	for {
		resp, err := mcpauthv1.NewTokenReadServiceClient(conn).ListTokenReads(ctx, &mcpauthv1.ListTokenReadsRequest{
			Parent: "tenants/" + tenant, Provider: provider, PageSize: 2, PageToken: tok})
		if err != nil {
			tb.Fatalf("ListTokenReads: %v", err)
		}
		for _, r := range resp.GetTokenReads() {
			if r.GetProvider() != provider || r.GetActor() != "token-tests" {
				tb.Errorf("token read %+v: want provider %s, actor token-tests", r, provider)
			}
			n += r.GetReadCount()
		}
		if tok = resp.GetNextPageToken(); tok == "" {
			return n
		}
	}
}

// readTokens calls GetAccessToken n times on conn.
func readTokens(tb testing.TB, conn *grpc.ClientConn, key, name string, n int) {
	tb.Helper()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+key)
	oc := mcpauthv1.NewOAuthServiceClient(conn)
	for range n {
		if _, err := oc.GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name}); err != nil {
			tb.Fatalf("GetAccessToken: %v", err)
		}
	}
}

// TestTokenReadsSurviveCrashBounded runs the real mcpauthd binary and
// checks the token-read guarantee of package readlog: counts flushed before
// a kill -9 are kept, the reads of the last flush interval may be lost,
// nothing is ever counted twice, and a SIGTERM drain loses nothing.
func TestTokenReadsSurviveCrashBounded(t *testing.T) {
	c := tokStart(t, tokOptions{})
	for _, r := range c.Replicas {
		r.Stop()
	}
	env := map[string]string{"MCPAUTH_TOKEN_READ_FLUSH_INTERVAL": tokenReadsFlush.String()}
	for k, v := range c.Env {
		env[k] = v
	}
	bin := mcpauthdBinary(t)

	// 1. Reads, then a flush: stored exactly.
	p := startBinary(t, bin, env)
	readTokens(t, p.Conn, c.Key, c.Name, 50)
	start := time.Now()
	tokWait(t, "the first 50 reads to be stored", 30*time.Second, func() bool {
		return storedReads(t, p.Conn, c.Key, c.Tenant, c.Name) == 50
	})
	t.Logf("50 reads visible through ListTokenReads %s after the last one (flush interval %s)", time.Since(start).Round(time.Millisecond), tokenReadsFlush)

	// 2. Reads, then kill -9 at once: at most those reads are lost, none is
	// counted twice (the restarted process may not re-send anything).
	readTokens(t, p.Conn, c.Key, c.Name, 30)
	p.Kill9(t)
	p = startBinary(t, bin, env)
	afterCrash := storedReads(t, p.Conn, c.Key, c.Tenant, c.Name)
	if afterCrash < 50 || afterCrash > 80 {
		t.Fatalf("after kill -9: %d reads stored, want between 50 (the last window lost) and 80 (none lost)", afterCrash)
	}
	t.Logf("kill -9 right after 30 reads: %d of them lost (bound: the reads of the last %s)", 80-afterCrash, tokenReadsFlush)
	// Wait a few flush intervals: the count must not move (nothing replayed).
	time.Sleep(5 * tokenReadsFlush)
	if n := storedReads(t, p.Conn, c.Key, c.Tenant, c.Name); n != afterCrash {
		t.Fatalf("stored reads moved from %d to %d with no reads after the restart", afterCrash, n)
	}

	// 3. Reads, then SIGTERM: the drain stores every one of them.
	readTokens(t, p.Conn, c.Key, c.Name, 40)
	if err := p.Term(t); err != nil {
		t.Fatalf("mcpauthd exit after SIGTERM: %v\n%s", err, p.Logs.String())
	}
	p = startBinary(t, bin, env)
	if n := storedReads(t, p.Conn, c.Key, c.Tenant, c.Name); n != afterCrash+40 {
		t.Fatalf("after SIGTERM: %d reads stored, want %d (every read before a graceful stop)", n, afterCrash+40)
	}
	// A page token is checked; another tenant's provider lists nothing.
	tc := mcpauthv1.NewTokenReadServiceClient(p.Conn)
	if _, err := tc.ListTokenReads(Ctx(t, c.Key), &mcpauthv1.ListTokenReadsRequest{Parent: "tenants/" + c.Tenant,
		PageToken: "not-a-token"}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "page_token") {
		t.Errorf("bad page token: %v, want INVALID_ARGUMENT naming page_token", err)
	}
	if other, err := tc.ListTokenReads(Ctx(t, c.Key), &mcpauthv1.ListTokenReadsRequest{Parent: "tenants/other",
		Provider: c.Name}); err != nil || len(other.GetTokenReads()) != 0 {
		t.Errorf("another tenant listing %s: %v, %d rows", c.Name, err, len(other.GetTokenReads()))
	}
	// Token reads are no longer one audit event each.
	evs, err := mcpauthv1.NewAuditServiceClient(p.Conn).ListAuditEvents(Ctx(t, c.Key), &mcpauthv1.ListAuditEventsRequest{
		Parent: "tenants/" + c.Tenant, EventType: "oauth.token.read"})
	if err != nil || len(evs.GetAuditEvents()) != 0 {
		t.Errorf("oauth.token.read audit events: %v, %d; want none (reads are counted)", err, len(evs.GetAuditEvents()))
	}
}
