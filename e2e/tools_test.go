package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// tlAllToolNames are the tools every testauthz MCP server has.
func tlAllToolNames() []string {
	names := []string{"add", "echo", "whoami"}
	for i := range testauthz.DummyToolCount {
		names = append(names, fmt.Sprintf("dummy_%02d", i))
	}
	slices.Sort(names)
	return names
}

func tlToolNames(tools []*mcpauthv1.Tool) []string {
	var out []string
	for _, t := range tools {
		out = append(out, t.GetName())
	}
	slices.Sort(out)
	return out
}

// TestToolsOAuthAndHeaders: an MCP server that wants an OAuth token AND a
// custom header gets both on every request. RefreshTools walks every page
// of tools/list; ListTools answers from storage without connecting;
// CallTool returns the result faithfully.
func TestToolsOAuthAndHeaders(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
	srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as, RequiredHeader: [2]string{"X-Api-Key", "k1"}, PageSize: 7})
	s := tlStart(t, nil)
	ctx := Ctx(t, s.AdminKey)
	name := createProvider(t, s, s.AdminKey, "tl-both", "docs", srv.URL(), func(p *mcpauthv1.Provider) {
		p.Headers = map[string]string{"X-Api-Key": "k1"}
	})
	tlAuthorize(t, s, name)
	// Requests before this point are the authorization's discovery probe,
	// which carries the headers but no token yet.
	authorizedFrom := len(tlRPCs(srv, ""))

	refreshed, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name})
	if err != nil {
		t.Fatalf("RefreshTools: %v", err)
	}
	if got, want := tlToolNames(refreshed.GetTools()), tlAllToolNames(); !slices.Equal(got, want) {
		t.Fatalf("RefreshTools returned %d tools %v, want %d %v", len(got), got, len(want), want)
	}
	if refreshed.GetFetchTime() == nil {
		t.Error("RefreshTools: no fetch_time")
	}
	pages := tlRPCs(srv, "tools/list")
	if want := (len(tlAllToolNames()) + 6) / 7; len(pages) < want {
		t.Errorf("the server saw %d tools/list requests, want at least %d pages of 7", len(pages), want)
	}
	for _, tool := range refreshed.GetTools() {
		if tool.GetName() == "echo" {
			if tool.GetDescription() != "Returns its text argument." || tool.GetInputSchema().GetFields()["properties"] == nil {
				t.Errorf("echo tool not faithful: %v", tool)
			}
		}
	}

	before := len(srv.Received())
	listed, err := s.Tools().ListTools(ctx, &mcpauthv1.ListToolsRequest{Name: name})
	if err != nil {
		t.Fatalf("ListTools: %v", err)
	}
	if after := len(srv.Received()); after != before {
		t.Errorf("ListTools made %d requests to the MCP server, want none", after-before)
	}
	if len(listed.GetTools()) != len(refreshed.GetTools()) {
		t.Fatalf("ListTools returned %d tools, RefreshTools %d", len(listed.GetTools()), len(refreshed.GetTools()))
	}
	for i := range listed.GetTools() {
		if !proto.Equal(listed.GetTools()[i], refreshed.GetTools()[i]) {
			t.Errorf("stored tool %d differs: %v vs %v", i, listed.GetTools()[i], refreshed.GetTools()[i])
		}
	}
	if !listed.GetFetchTime().AsTime().Equal(refreshed.GetFetchTime().AsTime()) {
		t.Errorf("ListTools fetch_time %v, RefreshTools %v", listed.GetFetchTime().AsTime(), refreshed.GetFetchTime().AsTime())
	}

	text := "héllo, 世界 \"quoted\" <tag>"
	echo := tlMustCall(t, s, name, "echo", map[string]any{"text": text})
	if echo.GetIsError() || len(echo.GetContent()) != 1 {
		t.Fatalf("echo result: %v", echo)
	}
	c := echo.GetContent()[0].AsMap()
	if c["type"] != "text" || c["text"] != text {
		t.Errorf("echo content %v, want text %q", c, text)
	}
	if got := echo.GetStructuredContent().AsMap(); len(got) != 1 || got["text"] != text {
		t.Errorf("echo structured content %v", got)
	}
	sum := tlMustCall(t, s, name, "add", map[string]any{"a": 2.5, "b": 4})
	if got := sum.GetStructuredContent().AsMap()["sum"]; got != 6.5 {
		t.Errorf("add structured content %v", sum.GetStructuredContent())
	}

	who := tlMustCall(t, s, name, "whoami", nil)
	if got := who.GetStructuredContent().AsMap(); got["subject"] != "alice" || got["header"] != "k1" {
		t.Errorf("whoami %v, want subject alice and header k1", got)
	}

	tok, err := s.OAuth().GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name})
	if err != nil {
		t.Fatalf("GetAccessToken: %v", err)
	}
	calls := tlRPCs(srv, "tools/call")
	var echoCall *tlRPC
	for i := range calls {
		if calls[i].Tool == "echo" {
			echoCall = &calls[i]
		}
	}
	if echoCall == nil {
		t.Fatalf("the server recorded no tools/call of echo among %d calls", len(calls))
	}
	if got := echoCall.Header.Get("Authorization"); got != "Bearer "+tok.GetAccessToken() {
		t.Errorf("tools/call Authorization %q, want the stored bearer token", got)
	}
	if got := echoCall.Header.Get("X-Api-Key"); got != "k1" {
		t.Errorf("tools/call X-Api-Key %q, want k1", got)
	}
	// Every request of the tool calls carried both credentials.
	for _, r := range tlRPCs(srv, "")[authorizedFrom:] {
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") || r.Header.Get("X-Api-Key") != "k1" {
			t.Errorf("%s request lacks a credential: Authorization set %t, X-Api-Key %q", r.Method,
				r.Header.Get("Authorization") != "", r.Header.Get("X-Api-Key"))
		}
	}
}

// TestToolsWithoutOAuth: servers that need no OAuth work with the
// provider's headers only, and a refused header is a clear precondition
// failure rather than an outage.
func TestToolsWithoutOAuth(t *testing.T) {
	t.Parallel()
	s := tlStart(t, nil)
	ctx := Ctx(t, s.AdminKey)

	t.Run("no auth", func(t *testing.T) {
		t.Parallel()
		srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{})
		name := createProvider(t, s, s.AdminKey, "tl-noauth", "open", srv.URL(), func(p *mcpauthv1.Provider) {
			p.Headers = map[string]string{"X-Trace": "t1"}
		})
		if _, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name}); err != nil {
			t.Fatalf("RefreshTools: %v", err)
		}
		res := tlMustCall(t, s, name, "echo", map[string]any{"text": "open"})
		if res.GetStructuredContent().AsMap()["text"] != "open" {
			t.Errorf("echo: %v", res)
		}
		st := tlStatus(t, s, name).GetStatus()
		if st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED && st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_NOT_REQUIRED {
			t.Errorf("status %v after calls without authorization", st)
		}
		for _, r := range tlRPCs(srv, "") {
			if r.Header.Get("Authorization") != "" {
				t.Errorf("%s request carried an Authorization header", r.Method)
			}
			if r.Header.Get("X-Trace") != "t1" {
				t.Errorf("%s request lacks the custom header", r.Method)
			}
		}
	})

	t.Run("custom header only", func(t *testing.T) {
		t.Parallel()
		srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{RequiredHeader: [2]string{"X-Api-Key", "k1"}})
		name := createProvider(t, s, s.AdminKey, "tl-noauth", "keyed", srv.URL(), func(p *mcpauthv1.Provider) {
			p.Headers = map[string]string{"X-Api-Key": "k1"}
		})
		rt, err := s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name})
		if err != nil {
			t.Fatalf("RefreshTools: %v", err)
		}
		if len(rt.GetTools()) != len(tlAllToolNames()) {
			t.Errorf("%d tools", len(rt.GetTools()))
		}
		who := tlMustCall(t, s, name, "whoami", nil)
		if got := who.GetStructuredContent().AsMap(); got["header"] != "k1" || got["subject"] != "" {
			t.Errorf("whoami %v, want header k1 and no subject", got)
		}
	})

	t.Run("wrong header", func(t *testing.T) {
		t.Parallel()
		srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{RequiredHeader: [2]string{"X-Api-Key", "k1"}})
		name := createProvider(t, s, s.AdminKey, "tl-noauth", "wrong", srv.URL(), func(p *mcpauthv1.Provider) {
			p.Headers = map[string]string{"X-Api-Key": "not-k1"}
		})
		_, err := tlCall(ctx, s, name, "echo", map[string]any{"text": "x"})
		info := tlWantReason(t, err, codes.FailedPrecondition, "NOT_AUTHORIZED")
		if info.GetMetadata()["provider"] != name {
			t.Errorf("ErrorInfo metadata %v does not name the provider", info.GetMetadata())
		}
		_, err = s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name})
		tlWantReason(t, err, codes.FailedPrecondition, "NOT_AUTHORIZED")
		if st := tlStatus(t, s, name).GetStatus(); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED {
			t.Errorf("status %v", st)
		}
		if n := len(tlRPCs(srv, "tools/call")); n != 0 {
			t.Errorf("%d tools/call requests got past the header check", n)
		}
		// Nothing of the header's value travels back to the caller.
		if strings.Contains(err.Error(), "not-k1") {
			t.Errorf("error carries the header value: %v", err)
		}
	})
}

// TestToolsAuditNoArguments: every CallTool is audited with tool name,
// outcome and duration, and neither the arguments nor the result appear
// in any audit event or log line.
func TestToolsAuditNoArguments(t *testing.T) {
	t.Parallel()
	as := testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
	srv := testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: as})
	s := tlStart(t, nil)
	name := createProvider(t, s, s.AdminKey, "tl-audit", "docs", srv.URL(), nil)
	tlAuthorize(t, s, name)

	const marker = "tl-distinctive-argument-7f3a9c"
	res := tlMustCall(t, s, name, "echo", map[string]any{"text": marker})
	if res.GetStructuredContent().AsMap()["text"] != marker {
		t.Fatalf("echo: %v", res)
	}
	// A tool that reports failure, with the marker in its arguments: the
	// server answers a result with isError, not a protocol error.
	bad, err := tlCall(Ctx(t, s.AdminKey), s, name, "add", map[string]any{"a": marker, "b": 1})
	if err != nil {
		t.Fatalf("CallTool add with bad arguments: %v", err)
	}
	if !bad.GetIsError() {
		t.Errorf("add with a string argument: is_error false: %v", bad)
	}

	ok := tlWaitEvents(t, s, "tl-audit", name, "mcp.tool.called", 1, func(ev *mcpauthv1.AuditEvent) bool {
		return ev.GetDetails()["tool"] == "echo"
	})[0]
	if ok.GetOutcome() != mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS || ok.GetDetails()["duration_ms"] == "" ||
		ok.GetActor() == "" || ok.GetRequestId() == "" || ok.GetProvider() != name {
		t.Errorf("echo audit event incomplete: %v", ok)
	}
	toolErr := tlWaitEvents(t, s, "tl-audit", name, "mcp.tool.called", 1, func(ev *mcpauthv1.AuditEvent) bool {
		return ev.GetDetails()["tool"] == "add"
	})[0]
	if toolErr.GetDetails()["is_error"] != "true" {
		t.Errorf("add audit event does not record the tool error: %v", toolErr)
	}

	for _, ev := range tlEvents(t, s, "tl-audit", "", "") {
		if strings.Contains(tlJSON(ev), marker) {
			t.Errorf("audit event %s carries the argument/result: %v", ev.GetEventType(), ev)
		}
	}
	if strings.Contains(s.Logs.String(), marker) {
		for _, line := range strings.Split(s.Logs.String(), "\n") {
			if strings.Contains(line, marker) {
				t.Errorf("log line carries the argument/result: %s", line)
			}
		}
	}
	// The check above read real output: the calls were logged (at debug level).
	if !strings.Contains(s.Logs.String(), "/mcpauth.v1.MCPToolService/CallTool") {
		t.Error("no log line for the CallTool requests: the log check proves nothing")
	}
}
