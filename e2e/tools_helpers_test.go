package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// Helpers of the MCPToolService end-to-end tests. Names start with "tl" so
// they do not collide with the other e2e helpers of the package.

// tlStart runs mcpauth on a fresh PostgreSQL schema and a Redis key prefix
// of its own, with the egress guard letting 127.0.0.1 through over http
// (the test servers). env adds or overrides settings; an empty value
// removes one (MCPAUTH_EGRESS_ALLOW: "" keeps the guard strict).
func tlStart(tb testing.TB, env map[string]string) *Service {
	tb.Helper()
	e := map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1"}
	for k, v := range env {
		if v == "" {
			delete(e, k)
			continue
		}
		e[k] = v
	}
	_, prefix := testenv.Redis(tb)
	return Start(tb, Options{Postgres: true, RedisURL: testenv.RedisURLWithPrefix(tb, prefix), Env: e})
}

// tlAuthorize runs StartAuthorization for the provider (with
// additionalScopes, for a step-up) and completes the flow with a fresh
// user agent. It returns the scopes StartAuthorization said it requests.
func tlAuthorize(tb testing.TB, s *Service, name string, additionalScopes ...string) []string {
	tb.Helper()
	start, err := s.OAuth().StartAuthorization(Ctx(tb, s.AdminKey), &mcpauthv1.StartAuthorizationRequest{
		Name: name, User: "alice", AdditionalScopes: additionalScopes})
	if err != nil {
		tb.Fatalf("StartAuthorization %s: %v", name, err)
	}
	code, body, final := NewBrowser(tb).Open(tb, start.GetAuthorizationUrl())
	if code != 200 || !strings.Contains(body, "Authorization complete") {
		tb.Fatalf("authorizing %s: final page %s: %d %s", name, final, code, body)
	}
	return start.GetScopes()
}

// tlCall calls a tool through mcpauth.
func tlCall(ctx context.Context, s *Service, name, tool string, args map[string]any) (*mcpauthv1.CallToolResponse, error) {
	var st *structpb.Struct
	if args != nil {
		var err error
		if st, err = structpb.NewStruct(args); err != nil {
			return nil, err
		}
	}
	return s.Tools().CallTool(ctx, &mcpauthv1.CallToolRequest{Name: name, Tool: tool, Arguments: st})
}

// tlMustCall is tlCall that fails the test on error.
func tlMustCall(tb testing.TB, s *Service, name, tool string, args map[string]any) *mcpauthv1.CallToolResponse {
	tb.Helper()
	resp, err := tlCall(Ctx(tb, s.AdminKey), s, name, tool, args)
	if err != nil {
		tb.Fatalf("CallTool %s on %s: %v", tool, name, err)
	}
	return resp
}

// tlErrorInfo checks that err is a gRPC status with code and returns its
// google.rpc.ErrorInfo detail, failing when there is none.
func tlErrorInfo(tb testing.TB, err error, code codes.Code) *errdetails.ErrorInfo {
	tb.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		tb.Fatalf("error %v, want code %s", err, code)
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	tb.Fatalf("error %v carries no ErrorInfo", err)
	return nil
}

// tlWantReason checks err's code and ErrorInfo reason and returns the
// ErrorInfo.
func tlWantReason(tb testing.TB, err error, code codes.Code, reason string) *errdetails.ErrorInfo {
	tb.Helper()
	info := tlErrorInfo(tb, err, code)
	if info.GetReason() != reason {
		tb.Fatalf("error %v: reason %q, want %q", err, info.GetReason(), reason)
	}
	return info
}

// tlStatus returns the provider's authorization status.
func tlStatus(tb testing.TB, s *Service, name string) *mcpauthv1.GetAuthorizationStatusResponse {
	tb.Helper()
	st, err := s.OAuth().GetAuthorizationStatus(Ctx(tb, s.AdminKey), &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
	if err != nil {
		tb.Fatalf("GetAuthorizationStatus %s: %v", name, err)
	}
	return st
}

// tlEvents lists the tenant's audit events, newest first, optionally only
// those of one provider (its resource name) and one type.
func tlEvents(tb testing.TB, s *Service, tenant, provider, eventType string) []*mcpauthv1.AuditEvent {
	tb.Helper()
	var out []*mcpauthv1.AuditEvent
	token := ""
	for {
		resp, err := s.Audit().ListAuditEvents(Ctx(tb, s.AdminKey), &mcpauthv1.ListAuditEventsRequest{
			Parent: "tenants/" + tenant, Provider: provider, EventType: eventType, PageSize: 500, PageToken: token})
		if err != nil {
			tb.Fatalf("ListAuditEvents: %v", err)
		}
		out = append(out, resp.GetAuditEvents()...)
		if token = resp.GetNextPageToken(); token == "" {
			return out
		}
	}
}

// tlWaitEvents polls until at least n events match and returns them. Audit
// events of a call may be written just after its answer.
func tlWaitEvents(tb testing.TB, s *Service, tenant, provider, eventType string, n int, match func(*mcpauthv1.AuditEvent) bool) []*mcpauthv1.AuditEvent {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got []*mcpauthv1.AuditEvent
		for _, ev := range tlEvents(tb, s, tenant, provider, eventType) {
			if match == nil || match(ev) {
				got = append(got, ev)
			}
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%d %s events for %s, want at least %d: %v", len(got), eventType, provider, n, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tlRPC is the JSON-RPC view of a request an MCP server recorded.
type tlRPC struct {
	testauthz.RecordedRequest
	Method string
	Tool   string
}

// tlRPCs returns the JSON-RPC requests (POSTs to the MCP endpoint) the
// server received, oldest first, with their method and, for tools/call,
// the tool name. method filters when not empty.
func tlRPCs(m *testauthz.MCPServer, method string) []tlRPC {
	path := strings.TrimPrefix(m.URL(), m.Origin())
	var out []tlRPC
	for _, r := range m.Received() {
		if r.Method != "POST" || r.Path != path {
			continue
		}
		var msg struct {
			Method string `json:"method"`
			Params struct {
				Name string `json:"name"`
			} `json:"params"`
		}
		_ = json.Unmarshal(r.Body, &msg)
		if method != "" && msg.Method != method {
			continue
		}
		out = append(out, tlRPC{RecordedRequest: r, Method: msg.Method, Tool: msg.Params.Name})
	}
	return out
}

// tlJSON renders a proto message as JSON for substring checks.
func tlJSON(m proto.Message) string { return protojson.Format(m) }
