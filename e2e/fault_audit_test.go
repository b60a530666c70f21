package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestFaultAuditThroughDatabaseOutage (issue 15, case 10): tool calls go on
// while the database is unreachable. Every call is answered by its own
// deadline (the audit write does not hold it), and once the database is
// back each answered call has exactly one mcp.tool.called event: none
// dropped, none doubled. (That the held events have no time limit at all
// is TestRecordHeldThroughLongOutage in service/audit; MCPAUTH_FAULT_OUTAGE=35s here
// outlasts the old 30 s window, at the cost of suite time.)
func TestFaultAuditThroughDatabaseOutage(t *testing.T) {
	t.Parallel()
	dsn, pg := faultPostgres(t)
	// A longer token cache lets some calls succeed without the database.
	c, _, _ := faultClusterEnv(t, 1, dsn, map[string]string{"MCPAUTH_TOKEN_CACHE_TTL": "10s"})
	s := c.Replicas[0]
	call := func() error {
		ctx, cancel := context.WithTimeout(c.ctx(t), 5*time.Second)
		defer cancel()
		_, err := tlCall(ctx, s, c.Name, "echo", map[string]any{"text": "hi"})
		return err
	}
	if err := call(); err != nil {
		t.Fatalf("tool call before the outage: %v", err)
	}
	outage := 12 * time.Second
	if d, err := time.ParseDuration(os.Getenv("MCPAUTH_FAULT_OUTAGE")); err == nil {
		outage = d
	}
	answered, ok := 1, 1
	pg.Down()
	for end := time.Now().Add(outage); time.Now().Before(end); {
		err := call()
		switch status.Code(err) {
		case codes.OK:
			ok++
		case codes.DeadlineExceeded:
			t.Errorf("a tool call was not answered by its deadline: %v", err)
			continue // not acknowledged: it may or may not be audited
		}
		answered++
		time.Sleep(250 * time.Millisecond)
	}
	pg.Up()
	t.Logf("%d tool calls answered during a %v database outage (%d OK)", answered-1, outage, ok-1)
	tokWait(t, "one audit event per answered call", 60*time.Second, func() bool {
		return len(c.tokAudit(t, "mcp.tool.called")) >= answered
	})
	events := c.tokAudit(t, "mcp.tool.called")
	seen := map[string]bool{}
	for _, e := range events {
		if seen[e.GetRequestId()] {
			t.Errorf("request %s audited twice", e.GetRequestId())
		}
		seen[e.GetRequestId()] = true
	}
	if len(events) != answered {
		t.Errorf("%d mcp.tool.called events, want %d (one per answered call)", len(events), answered)
	}
	if l := s.Logs.String(); strings.Contains(l, "AUDIT EVENT LOST") {
		t.Errorf("an audit event was reported lost")
	}
}
