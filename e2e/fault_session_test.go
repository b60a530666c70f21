package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// TestFaultSharedSession401 (issue 15, case 6): calls share one MCP session
// (the official go-sdk client against a go-sdk server). While slow calls are
// in flight, the authorization server revokes the access tokens: the next
// calls get 401, and the go-sdk client marks the whole session failed,
// which used to fail the in-flight calls of other callers with a spurious
// UNAVAILABLE. Every call must succeed: the 401 is answered by one refresh
// and the calls cut off with the session are made again on a fresh one.
func TestFaultSharedSession401(t *testing.T) {
	t.Parallel()
	c, _, _ := faultCluster(t, 1, "")
	s := c.Replicas[0]
	mcp := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: c.AS, SlowTool: 1500 * time.Millisecond})
	name := c.authorize(t, s, c.Tenant, "slow", mcp.URL())
	const rounds, slow, fast = 4, 4, 4
	var mu sync.Mutex
	codesSeen := map[codes.Code]int{}
	for round := range rounds {
		var wg sync.WaitGroup
		call := func(tool string) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(c.ctx(t), 20*time.Second)
			defer cancel()
			args := map[string]any{}
			if tool == "echo" {
				args["text"] = "hi"
			}
			_, err := tlCall(ctx, s, name, tool, args)
			mu.Lock()
			codesSeen[status.Code(err)]++
			mu.Unlock()
			if err != nil {
				t.Errorf("round %d: %s call failed: %v", round, tool, err)
			}
		}
		before := len(mcp.Received())
		wg.Add(slow)
		for range slow {
			go call("slow")
		}
		tokWait(t, "the slow calls to reach the server", 10*time.Second, func() bool { return len(mcp.Received()) >= before+slow })
		c.AS.RevokeAccessTokens()
		wg.Add(fast)
		for range fast {
			go call("echo")
		}
		wg.Wait()
	}
	t.Logf("%d rounds of %d slow + %d fast calls with the access token revoked mid-flight: results by code %v; refreshes %d",
		rounds, slow, fast, codesSeen, c.AS.RefreshCount())
	if n := codesSeen[codes.Unavailable]; n != 0 {
		t.Errorf("%d spurious UNAVAILABLE", n)
	}
	if c.AS.ReuseRejections() != 0 {
		t.Errorf("refresh token reuse: %d", c.AS.ReuseRejections())
	}
	c.wantGrantAlive(t)
}
