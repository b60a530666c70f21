package e2e

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// TestToolsDeadlinesAndSize: a slow tool is cut by the caller's gRPC
// deadline and by the provider's timeout, promptly and on the service side
// too; a result larger than the cap is refused with a precise reason.
func TestToolsDeadlinesAndSize(t *testing.T) {
	t.Parallel()
	const slowTool = 10 * time.Second
	// slowCut separates "cut at the 1s limit" from "waited for the tool".
	const slowCut = slowTool * 7 / 10
	srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{SlowTool: slowTool, HugeTool: true})
	s := tlStart(t, nil)

	t.Run("grpc deadline", func(t *testing.T) {
		t.Parallel()
		name := createProvider(t, s, s.AdminKey, "tl-limits-a", "deadline", srv.URL(), nil)
		ctx, cancel := context.WithTimeout(Ctx(t, s.AdminKey), time.Second)
		defer cancel()
		start := time.Now()
		_, err := tlCall(ctx, s, name, "slow", nil)
		took := time.Since(start)
		c := status.Code(err)
		if c != codes.DeadlineExceeded && !(c == codes.Unavailable && strings.Contains(status.Convert(err).Message(), "did not answer in time")) {
			t.Fatalf("slow tool under a 1s deadline: %v", err)
		}
		// Cut by the deadline, not by the tool finishing (10s): the bound
		// is the tool's own duration, not a latency figure, so a loaded
		// machine cannot make it fail while the behaviour holds.
		if took >= slowCut {
			t.Errorf("the call took %s: it waited for the slow tool instead of the 1s deadline", took)
		}
		// The service itself gave up at the deadline, not when the tool
		// finished: its audit event says so.
		ev := tlWaitEvents(t, s, "tl-limits-a", name, "mcp.tool.called", 1, nil)[0]
		if ev.GetOutcome() != mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE {
			t.Errorf("audit outcome %v", ev.GetOutcome())
		}
		if d, err := time.ParseDuration(ev.GetDetails()["duration_ms"] + "ms"); err != nil || d >= slowCut {
			t.Errorf("the service worked on the call for %q ms", ev.GetDetails()["duration_ms"])
		}
	})

	t.Run("provider timeout", func(t *testing.T) {
		t.Parallel()
		name := createProvider(t, s, s.AdminKey, "tl-limits-b", "timeout", srv.URL(), func(p *mcpauthv1.Provider) {
			p.Timeout = durationpb.New(time.Second)
		})
		start := time.Now()
		_, err := tlCall(Ctx(t, s.AdminKey), s, name, "slow", nil)
		took := time.Since(start)
		c := status.Code(err)
		if c != codes.DeadlineExceeded && !(c == codes.Unavailable && strings.Contains(status.Convert(err).Message(), "did not answer in time")) {
			t.Fatalf("slow tool with a 1s provider timeout: %v", err)
		}
		if took >= slowCut {
			t.Errorf("the call took %s: it waited for the slow tool instead of the 1s provider timeout", took)
		}
		// The provider stays usable.
		tlMustCall(t, s, name, "echo", map[string]any{"text": "after the timeout"})
	})

	t.Run("huge result", func(t *testing.T) {
		t.Parallel()
		// The server builds and marshals the whole 10 MiB result before it
		// sends its headers: about a second under -race, 7-10 s when several
		// suites share the machine. The provider's timeout only has to
		// outlast that; it is not what this case checks.
		name := createProvider(t, s, s.AdminKey, "tl-limits-c", "huge", srv.URL(), func(p *mcpauthv1.Provider) {
			p.Timeout = durationpb.New(2 * time.Minute)
		})
		_, err := tlCall(Ctx(t, s.AdminKey), s, name, "huge", nil)
		tlWantReason(t, err, codes.FailedPrecondition, "RESULT_TOO_LARGE")
		if msg := status.Convert(err).Message(); strings.Contains(msg, "xxxx") || len(msg) > 500 {
			t.Errorf("error message carries the result: %.200q", msg)
		}
		tlWaitEvents(t, s, "tl-limits-c", name, "mcp.tool.called", 1, func(ev *mcpauthv1.AuditEvent) bool {
			return ev.GetReason() == "RESULT_TOO_LARGE"
		})
		// The oversized answer broke only that session.
		tlMustCall(t, s, name, "echo", map[string]any{"text": "after the huge result"})
	})
}

// tlCounter is a live HTTP server that only counts the requests it gets.
type tlCounter struct {
	Port string
	hits atomic.Int64
}

func newTLCounter(tb testing.TB, addr string) *tlCounter {
	tb.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatalf("listen %s: %v", addr, err)
	}
	c := &tlCounter{}
	_, c.Port, _ = net.SplitHostPort(l.Addr().String())
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		c.hits.Add(1)
		http.Error(w, "counted", http.StatusTeapot)
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	tb.Cleanup(srv.Close)
	return c
}

// TestToolsEgressGuard: without an allow-list, tool calls to providers
// that point at the service's own host are refused before any byte reaches
// the server listening there, and the refusal is audited.
func TestToolsEgressGuard(t *testing.T) {
	t.Parallel()
	live := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{})
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(live.Origin(), "http://"))
	urls := map[string]string{
		"ipv4":      "http://127.0.0.1:" + port + "/mcp",
		"localhost": "http://localhost:" + port + "/mcp",
	}
	var live6 *tlCounter
	if l, err := net.Listen("tcp", "[::1]:0"); err == nil {
		l.Close()
		live6 = newTLCounter(t, "[::1]:0")
		urls["ipv6"] = "http://[::1]:" + live6.Port + "/mcp"
	} else {
		t.Log("no IPv6 loopback here: the [::1] case is not run")
	}
	s := tlStart(t, map[string]string{"MCPAUTH_EGRESS_ALLOW": ""})
	ctx := Ctx(t, s.AdminKey)
	for id, u := range urls {
		resp, err := s.Providers().CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/tl-ssrf", ProviderId: id,
			Provider: &mcpauthv1.Provider{DisplayName: id, ServerIdentifier: id, ServerUrl: u, Headers: map[string]string{"X-Api-Key": "k1"}}})
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("%s: CreateProvider: %v", u, err)
			}
			continue // refused at the door: no request can be made either
		}
		name := resp.GetProvider().GetName()
		_, err = tlCall(ctx, s, name, "echo", map[string]any{"text": "x"})
		tlWantReason(t, err, codes.FailedPrecondition, "EGRESS_BLOCKED")
		if msg := status.Convert(err).Message(); strings.Contains(msg, "/mcp") || !strings.Contains(msg, "egress blocked") {
			t.Errorf("%s: message %q", u, msg)
		}
		_, err = s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name})
		tlWantReason(t, err, codes.FailedPrecondition, "EGRESS_BLOCKED")
		events := tlWaitEvents(t, s, "tl-ssrf", name, "egress.blocked", 2, func(ev *mcpauthv1.AuditEvent) bool {
			return ev.GetOutcome() == mcpauthv1.AuditOutcome_AUDIT_OUTCOME_DENIED
		})
		// One event per blocked call (CallTool, RefreshTools), however many
		// requests the MCP client would have tried: let late ones land.
		time.Sleep(300 * time.Millisecond)
		if events = tlEvents(t, s, "tl-ssrf", name, "egress.blocked"); len(events) != 2 {
			t.Errorf("%s: %d egress.blocked events for 2 blocked calls, want 2", u, len(events))
		}
		for _, ev := range events {
			if strings.Contains(tlJSON(ev), "/mcp") || strings.Contains(tlJSON(ev), "k1") {
				t.Errorf("%s: audit event carries the path or a header value: %v", u, ev)
			}
		}
	}
	if n := len(live.Received()); n != 0 {
		t.Errorf("the live server on 127.0.0.1 received %d requests", n)
	}
	if live6 != nil && live6.hits.Load() != 0 {
		t.Errorf("the live server on [::1] received %d requests", live6.hits.Load())
	}
}

// TestToolsValidateConnectivity: CreateProvider with validate_connectivity
// creates the provider only when its server answers, and without the
// option makes no request at all.
func TestToolsValidateConnectivity(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
	protected := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	open := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{RequiredHeader: [2]string{"X-Api-Key", "k1"}})
	untouched := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String() + "/mcp?workspace=secret-ws"
	l.Close()
	s := tlStart(t, nil)
	ctx := Ctx(t, s.AdminKey)
	create := func(id, u string, validate bool, headers map[string]string) (*mcpauthv1.CreateProviderResponse, error) {
		return s.Providers().CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/tl-probe", ProviderId: id,
			ValidateConnectivity: validate,
			Provider:             &mcpauthv1.Provider{DisplayName: id, ServerIdentifier: id, ServerUrl: u, Headers: headers}})
	}

	// A server that demands authorization answered: reachable.
	if _, err := create("protected", protected.URL(), true, nil); err != nil {
		t.Errorf("reachable server behind OAuth: %v", err)
	}
	if len(protected.Received()) == 0 {
		t.Error("validate_connectivity made no request")
	}
	// The probe carries the headers: the custom-header server accepts it.
	if _, err := create("open", open.URL(), true, map[string]string{"X-Api-Key": "k1"}); err != nil {
		t.Errorf("reachable server with custom header: %v", err)
	}
	for _, r := range open.Received() {
		if r.Header.Get("X-Api-Key") != "k1" {
			t.Errorf("probe %s %s without the custom header", r.Method, r.Path)
		}
	}

	_, err = create("closed", closed, true, nil)
	tlWantReason(t, err, codes.FailedPrecondition, "SERVER_UNREACHABLE")
	if strings.Contains(status.Convert(err).Message(), "secret-ws") {
		t.Errorf("the error carries the URL's query: %v", err)
	}
	if _, err := s.Providers().GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: "tenants/tl-probe/providers/closed"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetProvider of the refused provider: %v, want NOT_FOUND", err)
	}
	list, err := s.Providers().ListProviders(ctx, &mcpauthv1.ListProvidersRequest{Parent: "tenants/tl-probe"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.GetProviders()); n != 2 {
		t.Errorf("%d providers in the tenant, want 2", n)
	}

	if _, err := create("untouched", untouched.URL(), false, map[string]string{"X-Api-Key": "k1"}); err != nil {
		t.Fatalf("CreateProvider without validation: %v", err)
	}
	if n := len(untouched.Received()); n != 0 {
		t.Errorf("CreateProvider without validate_connectivity sent %d requests", n)
	}
}
