package tools_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	dto "github.com/prometheus/client_model/go"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/mcpclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/servicetest"
	"github.com/mcpauth/mcpauth/service/tools"
	"github.com/mcpauth/mcpauth/service/vault"
)

func TestNewRequiresDependencies(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cases := map[string]func(d *tools.Deps){
		"store":   func(d *tools.Deps) { d.Store = nil },
		"cipher":  func(d *tools.Deps) { d.Cipher = nil },
		"grants":  func(d *tools.Deps) { d.Grants = nil },
		"mcp":     func(d *tools.Deps) { d.MCP = nil },
		"audit":   func(d *tools.Deps) { d.Audit = nil },
		"log":     func(d *tools.Deps) { d.Log = nil },
		"metrics": func(d *tools.Deps) { d.Metrics = nil },
	}
	for name, edit := range cases {
		t.Run("without "+name, func(t *testing.T) {
			t.Parallel()
			d := e.deps()
			edit(&d)
			if s, err := tools.New(d); err == nil || s != nil {
				t.Fatalf("New() = %v, %v; want an error", s, err)
			}
		})
	}
}

func TestNewDefaultsOptionalDependencies(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addProvider(t, provider{id: "p"})
	srv := e.serve(serverURL, nil, echoTool("echo"))
	svc := e.tools(t, func(d *tools.Deps) { d.Now, d.Starter, d.MaxResultBytes = nil, nil, 0 })

	before := time.Now().UTC().Truncate(time.Microsecond)
	list, err := svc.Refresh(context.Background(), tenant, "p", "")
	if err != nil {
		t.Fatal(err)
	}
	if list.FetchedAt.Before(before) || list.FetchedAt.After(time.Now()) {
		t.Errorf("FetchedAt = %v, want the real time (Now defaults to time.Now)", list.FetchedAt)
	}
	if got := srv.Requests()[0].Target.MaxResultBytes; got != 4<<20 {
		t.Errorf("MaxResultBytes on the wire = %d, want the 4 MiB default", got)
	}
}

func searchTool() fakeTool {
	return fakeTool{def: &mcp.Tool{
		Name: "search", Title: "Search", Description: "Full-text search",
		InputSchema: map[string]any{"type": "object", "properties": map[string]any{"q": map[string]any{"type": "string"}},
			"required": []any{"q"}},
		OutputSchema: map[string]any{"type": "object", "properties": map[string]any{"hits": map[string]any{"type": "integer"}}},
		Annotations:  &mcp.ToolAnnotations{ReadOnlyHint: true, Title: "Search docs"},
	}}
}

func TestRefreshListsAndStoresTools(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addProvider(t, provider{id: "p", headers: map[string]string{"X-Api-Key": "k1"}})
	e.authorize(t, e.grants, "p", "read")
	srv := e.serve(serverURL, e.as, searchTool(), echoTool("echo"))
	srv.needHeaders = map[string]string{"X-Api-Key": "k1"}

	list, err := e.svc.Refresh(agent(caller.ToolsCall), tenant, "p", "u")
	if err != nil {
		t.Fatal(err)
	}
	want := t0.Truncate(time.Microsecond)
	if !list.FetchedAt.Equal(want) || list.FetchedAt.Location() != time.UTC {
		t.Errorf("FetchedAt = %v, want %v in UTC (microseconds, as PostgreSQL keeps)", list.FetchedAt, want)
	}
	if got := []string{list.Tools[0].Name, list.Tools[1].Name}; len(list.Tools) != 2 || !slices.Equal(got, []string{"search", "echo"}) {
		t.Fatalf("tools = %+v, want search and echo in the server's order", list.Tools)
	}
	s := list.Tools[0]
	if s.Title != "Search" || s.Description != "Full-text search" {
		t.Errorf("search = %+v", s)
	}
	if !reflect.DeepEqual(s.InputSchema, searchTool().def.InputSchema) || !reflect.DeepEqual(s.OutputSchema, searchTool().def.OutputSchema) {
		t.Errorf("schemas = %v / %v, want the server's", s.InputSchema, s.OutputSchema)
	}
	if s.Annotations["readOnlyHint"] != true || s.Annotations["title"] != "Search docs" {
		t.Errorf("annotations = %v", s.Annotations)
	}
	if echo := list.Tools[1]; echo.OutputSchema != nil || echo.Annotations != nil || echo.InputSchema["type"] != "object" {
		t.Errorf("echo = %+v, want absent schema and annotations as nil", echo)
	}

	row, err := e.store.GetTools(context.Background(), domain.TenantGrant(tenant, "p"))
	if err != nil || !row.FetchedAt.Equal(want) {
		t.Fatalf("stored tool list = %+v, %v; want one fetched at %v", row, err, want)
	}
	stored, err := e.svc.Stored(context.Background(), tenant, "p", "")
	if err != nil || !reflect.DeepEqual(stored, list) {
		t.Errorf("Stored() = %+v, %v; want what Refresh returned", stored, err)
	}

	req := srv.Requests()
	if len(req) != 1 || req[0].Op != "tools/list" || req[0].Token != "at-1" || req[0].Headers["X-Api-Key"] != "k1" {
		t.Errorf("server saw %+v, want one tools/list with the token and the header", req)
	}
	ev, details := e.lastEvent(t, domain.EventToolsRefreshed)
	if ev.Outcome != int32(domain.OutcomeSuccess) || details["count"] != "2" || ev.Actor != "agent" || ev.ProviderID != "p" {
		t.Errorf("audit = %+v %v", ev, details)
	}

	// A later refresh replaces the list and its fetch time.
	e.clock.Advance(90 * time.Second)
	srv.tools = srv.tools[:1]
	if list, err = e.svc.Refresh(context.Background(), tenant, "p", ""); err != nil {
		t.Fatal(err)
	}
	stored, _ = e.svc.Stored(context.Background(), tenant, "p", "")
	if len(stored.Tools) != 1 || !stored.FetchedAt.Equal(want.Add(90*time.Second)) || !stored.FetchedAt.Equal(list.FetchedAt) {
		t.Errorf("after a second refresh Stored() = %+v", stored)
	}
}

func TestRefreshFailures(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		setup  func(t *testing.T, e *env)
		kind   apperr.Kind
		reason string
		// audited is whether a failed mcp.tools.refreshed event is written.
		audited bool
	}{
		{"provider missing", func(*testing.T, *env) {}, apperr.KindNotFound, domain.ReasonNotFound, false},
		{"server unreachable", func(t *testing.T, e *env) { e.addProvider(t, provider{id: "p", url: "https://gone.example.com/mcp"}) },
			apperr.KindUnavailable, domain.ReasonUnavailable, true},
		{"server demands authorization", func(t *testing.T, e *env) {
			e.addProvider(t, provider{id: "p"})
			e.serve(serverURL, e.as, searchTool())
		}, apperr.KindFailedPrecondition, domain.ReasonNotAuthorized, true},
		{"tool list cannot be stored", func(t *testing.T, e *env) {
			e.addProvider(t, provider{id: "p"})
			e.serve(serverURL, nil, searchTool())
			e.store.FailOn("PutTools", apperr.Unavailable(servicetest.ErrInjected, "database down"))
		}, apperr.KindUnavailable, domain.ReasonUnavailable, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			tc.setup(t, e)
			_, err := e.svc.Refresh(context.Background(), tenant, "p", "")
			wantErr(t, err, tc.kind, tc.reason)
			if _, gerr := e.store.GetTools(context.Background(), domain.TenantGrant(tenant, "p")); apperr.KindOf(gerr) != apperr.KindNotFound {
				t.Errorf("a tool list was stored: %v", gerr)
			}
			evs := e.events(domain.EventToolsRefreshed)
			if !tc.audited {
				if len(evs) != 0 {
					t.Errorf("audit = %+v, want none", evs)
				}
				return
			}
			if len(evs) != 1 || evs[0].Outcome != int32(domain.OutcomeFailure) || evs[0].Reason != tc.reason {
				t.Errorf("audit = %+v, want one failure with reason %s", evs, tc.reason)
			}
		})
	}
}

func TestStored(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		setup  func(t *testing.T, e *env)
		check  func(t *testing.T, l *tools.List, err error)
		kind   apperr.Kind
		reason string
	}{
		{name: "never fetched", setup: func(t *testing.T, e *env) { e.addProvider(t, provider{id: "p"}) },
			check: func(t *testing.T, l *tools.List, err error) {
				if err != nil || len(l.Tools) != 0 || !l.FetchedAt.IsZero() {
					t.Errorf("Stored() = %+v, %v; want an empty list", l, err)
				}
			}},
		{name: "provider missing", setup: func(*testing.T, *env) {}, kind: apperr.KindNotFound, reason: domain.ReasonNotFound},
		{name: "stored list corrupt", setup: func(t *testing.T, e *env) {
			e.addProvider(t, provider{id: "p"})
			if stored, err := e.store.PutTools(context.Background(), &repository.ToolList{TenantID: tenant, ProviderID: "p", Tools: "{not json", FetchedAt: t0}, 1); err != nil || !stored {
				t.Fatal(stored, err)
			}
		}, kind: apperr.KindInternal, reason: domain.ReasonInternal},
		{name: "store failing", setup: func(t *testing.T, e *env) {
			e.addProvider(t, provider{id: "p"})
			e.store.FailOn("GetTools", apperr.Unavailable(servicetest.ErrInjected, "database down"))
		}, kind: apperr.KindUnavailable, reason: domain.ReasonUnavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			tc.setup(t, e)
			l, err := e.svc.Stored(context.Background(), tenant, "p", "")
			if tc.check != nil {
				tc.check(t, l, err)
				return
			}
			wantErr(t, err, tc.kind, tc.reason)
		})
	}
}

// counter reads one ToolCalls counter.
func counter(tb testing.TB, e *env, outcome string) float64 {
	tb.Helper()
	var m dto.Metric
	if err := e.metrics.ToolCalls.WithLabelValues(outcome).Write(&m); err != nil {
		tb.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// wantNoLeak checks that no audit event carries any of the values.
func wantNoLeak(tb testing.TB, e *env, values ...string) {
	tb.Helper()
	for _, ev := range e.store.Events() {
		for _, v := range values {
			if strings.Contains(ev.Details, v) || strings.Contains(ev.Reason, v) {
				tb.Errorf("audit event %s carries %q: %s", ev.EventType, v, ev.Details)
			}
		}
	}
}

func TestCallSendsTokenAndHeadersTogether(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	headers := map[string]string{"X-Tenant-Key": "hk", "X-Region": "eu"}
	e.addProvider(t, provider{id: "p", headers: headers})
	e.authorize(t, e.grants, "p", "read")
	report := fakeTool{def: &mcp.Tool{Name: "report", InputSchema: map[string]any{"type": "object"}}, scopes: []string{"read"},
		run: func(_ context.Context, args map[string]any) (*mcp.CallToolResult, error) {
			return &mcp.CallToolResult{
				Content:           []mcp.Content{&mcp.TextContent{Text: "secret-result-text"}, &mcp.ImageContent{Data: []byte{1, 2}, MIMEType: "image/png"}},
				StructuredContent: map[string]any{"total": 3, "query": args["query"]},
			}, nil
		}}
	srv := e.serve(serverURL, e.as, report)
	srv.needHeaders = headers
	args := map[string]any{"query": "secret-arg-value", "limit": 5}

	res, err := e.call(agent(caller.ToolsCall), "report", args)
	if err != nil {
		t.Fatal(err)
	}
	if res.IsError || len(res.Content) != 2 || res.Content[0]["type"] != "text" || res.Content[0]["text"] != "secret-result-text" ||
		res.Content[1]["type"] != "image" || res.Content[1]["mimeType"] != "image/png" || res.Content[1]["data"] != "AQI=" {
		t.Errorf("content = %+v, want the server's blocks field for field", res.Content)
	}
	if want := map[string]any{"total": 3.0, "query": "secret-arg-value"}; !reflect.DeepEqual(res.StructuredContent, want) {
		t.Errorf("structured content = %v, want %v", res.StructuredContent, want)
	}

	req := srv.Requests()
	if len(req) != 1 {
		t.Fatalf("server saw %d requests, want 1", len(req))
	}
	r := req[0]
	if r.Token != "at-1" || !maps.Equal(r.Headers, headers) || r.Tool != "report" || !reflect.DeepEqual(r.Args, args) {
		t.Errorf("server saw %+v, want the token, the headers, the tool and its arguments", r)
	}
	wantTarget := mcpclient.Target{URL: serverURL, Timeout: 2500 * time.Millisecond, SSEReadTimeout: 700 * time.Millisecond, MaxResultBytes: 4 << 20}
	if r.Target != wantTarget {
		t.Errorf("target = %+v, want %+v", r.Target, wantTarget)
	}
	if strings.Contains(r.Key, "at-1") || !strings.Contains(r.Key, tenant) {
		t.Errorf("session key %q must name the tenant and never the token", r.Key)
	}

	// A second call reuses the held token and the same session.
	if _, err := e.call(agent(caller.ToolsCall), "report", args); err != nil {
		t.Fatal(err)
	}
	req = srv.Requests()
	if req[1].Token != "at-1" || req[1].Key != r.Key || e.as.Refreshes() != 0 {
		t.Errorf("second call sent %q with key %q (first %q), refreshes %d", req[1].Token, req[1].Key, r.Key, e.as.Refreshes())
	}

	evs := e.events(domain.EventToolCalled)
	if len(evs) != 2 {
		t.Fatalf("audit = %+v, want 2 tool calls", evs)
	}
	ev, details := e.lastEvent(t, domain.EventToolCalled)
	if ev.Outcome != int32(domain.OutcomeSuccess) || ev.Actor != "agent" || ev.ProviderID != "p" || details["tool"] != "report" {
		t.Errorf("audit = %+v %v", ev, details)
	}
	if keys := slices.Sorted(maps.Keys(details)); !slices.Equal(keys, []string{"duration_ms", "tool"}) {
		t.Errorf("audit details %v, want tool and duration_ms only", details)
	}
	wantNoLeak(t, e, "secret-arg-value", "secret-result-text", "at-1", "hk")
	if got := counter(t, e, "success"); got != 2 {
		t.Errorf("tool_calls{success} = %v, want 2", got)
	}
}

func TestCallToolErrorResult(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addProvider(t, provider{id: "p"})
	e.serve(serverURL, nil, fakeTool{def: &mcp.Tool{Name: "quota", InputSchema: map[string]any{"type": "object"}},
		run: func(context.Context, map[string]any) (*mcp.CallToolResult, error) {
			return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: "quota exceeded"}}}, nil
		}})

	res, err := e.call(context.Background(), "quota", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.IsError || res.Content[0]["text"] != "quota exceeded" || res.StructuredContent != nil {
		t.Errorf("result = %+v, want the tool's error as a result", res)
	}
	ev, details := e.lastEvent(t, domain.EventToolCalled)
	if ev.Outcome != int32(domain.OutcomeSuccess) || details["is_error"] != "true" || ev.Actor != "anonymous" {
		t.Errorf("audit = %+v %v, want a delivered call flagged is_error", ev, details)
	}
	if counter(t, e, "tool_error") != 1 || counter(t, e, "success") != 0 {
		t.Errorf("tool_calls = tool_error %v success %v", counter(t, e, "tool_error"), counter(t, e, "success"))
	}
}

func TestCallWithoutGrantSendsHeadersOnly(t *testing.T) {
	t.Parallel()
	setStatus := func(to domain.AuthStatus) func(t *testing.T, e *env) {
		return func(t *testing.T, e *env) {
			if ok, err := e.store.SetGrantStatus(context.Background(), domain.TenantGrant(tenant, "p"), []domain.AuthStatus{domain.StatusUnauthorized}, to, "", 1); !ok || err != nil {
				t.Fatalf("SetGrantStatus = %v, %v", ok, err)
			}
		}
	}
	cases := []struct {
		name      string
		setup     func(t *testing.T, e *env)
		protected bool
	}{
		{"never authorized", func(*testing.T, *env) {}, false},
		{"not required", setStatus(domain.StatusNotRequired), false},
		{"authorization pending", setStatus(domain.StatusPending), false},
		{"never authorized, server demands a token", func(*testing.T, *env) {}, true},
		{"not required, server demands a token now", setStatus(domain.StatusNotRequired), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.addProvider(t, provider{id: "p", headers: map[string]string{"X-Api-Key": "k1"}})
			tc.setup(t, e)
			var as *authServer
			if tc.protected {
				as = e.as
			}
			srv := e.serve(serverURL, as, echoTool("echo"))
			srv.needHeaders = map[string]string{"X-Api-Key": "k1"}

			res, err := e.call(context.Background(), "echo", map[string]any{"x": 1})
			if tc.protected {
				wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonNotAuthorized)
			} else if err != nil || res.Content[0]["text"] != `echo {"x":1}` {
				t.Fatalf("Call() = %+v, %v", res, err)
			}
			req := srv.Requests()
			if len(req) != 1 || req[0].Token != "" || req[0].Headers["X-Api-Key"] != "k1" {
				t.Errorf("server saw %+v, want one request with the header and no token", req)
			}
			if e.as.Refreshes() != 0 {
				t.Errorf("refreshes = %d, want 0", e.as.Refreshes())
			}
		})
	}
}

// authorizedEnv is an env whose provider "p" holds at-1 (scope "read")
// for the server at serverURL, with the echo tool.
func authorizedEnv(tb testing.TB) (*env, *mcpServer) {
	tb.Helper()
	e := newEnv(tb)
	e.addProvider(tb, provider{id: "p", scopes: []string{"read"}})
	e.authorize(tb, e.grants, "p", "read")
	return e, e.serve(serverURL, e.as, echoTool("echo"))
}

// ops runs each of Call and Refresh, which share the 401 handling.
var ops = []struct {
	name string
	run  func(ctx context.Context, e *env) error
}{
	{"call", func(ctx context.Context, e *env) error { _, err := e.call(ctx, "echo", nil); return err }},
	{"refresh", func(ctx context.Context, e *env) error { _, err := e.svc.Refresh(ctx, tenant, "p", "u"); return err }},
}

func TestUnauthorizedRefreshesOnceAndRetriesWithTheNewToken(t *testing.T) {
	t.Parallel()
	for _, op := range ops {
		t.Run(op.name, func(t *testing.T) {
			t.Parallel()
			e, srv := authorizedEnv(t)
			_, _, gen := e.credStatus(t, "p")
			e.as.Expire("at-1") // still fresh for the broker, dead for the server

			if err := op.run(context.Background(), e); err != nil {
				t.Fatal(err)
			}
			wantTokens(t, srv, "at-1", "at-2")
			if req := srv.Requests(); req[0].Key == req[1].Key {
				t.Errorf("retry reused session key %q of the rejected token", req[1].Key)
			}
			if st, _, g := e.credStatus(t, "p"); st != domain.StatusAuthorized || g != gen+1 || e.as.Refreshes() != 1 {
				t.Errorf("grant %v generation %d (was %d), refreshes %d; want one stored refresh", st, g, gen, e.as.Refreshes())
			}
			if evs := e.events(domain.EventTokenRefreshed); len(evs) != 1 {
				t.Errorf("refresh audit = %+v", evs)
			}

			// The refreshed token is what later calls use.
			if err := op.run(context.Background(), e); err != nil {
				t.Fatal(err)
			}
			wantTokens(t, srv, "at-1", "at-2", "at-2")
		})
	}
}

func TestUnauthorizedAfterRefresh(t *testing.T) {
	t.Parallel()
	t.Run("bearer challenge marks the grant dead", func(t *testing.T) {
		t.Parallel()
		e, srv := authorizedEnv(t)
		srv.rejectTokens = true

		_, err := e.call(context.Background(), "echo", nil)
		wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonReauthRequired)
		wantTokens(t, srv, "at-1", "at-2")
		st, reason, _ := e.credStatus(t, "p")
		if st != domain.StatusReauthRequired || reason != domain.ReasonMCPServerRejectedToken || len(e.store.Credential(tenant, "p").Tokens) != 0 {
			t.Errorf("grant = %v %s, want REAUTH_REQUIRED %s without tokens", st, reason, domain.ReasonMCPServerRejectedToken)
		}
		if ev, _ := e.lastEvent(t, domain.EventReauthRequired); ev.Reason != domain.ReasonMCPServerRejectedToken {
			t.Errorf("reauth audit reason = %s", ev.Reason)
		}
		if ev, _ := e.lastEvent(t, domain.EventToolCalled); ev.Outcome != int32(domain.OutcomeFailure) || ev.Reason != domain.ReasonReauthRequired {
			t.Errorf("tool audit = %+v", ev)
		}
		if counter(t, e, "error") != 1 {
			t.Errorf("tool_calls{error} = %v", counter(t, e, "error"))
		}

		// The dead grant is not tried again.
		_, err = e.call(context.Background(), "echo", nil)
		wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonReauthRequired)
		if n := len(srv.Requests()); n != 2 {
			t.Errorf("server saw %d requests, want no more after the grant died", n)
		}
	})
	t.Run("no bearer challenge keeps the grant", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		e.addProvider(t, provider{id: "p", headers: map[string]string{"X-Api-Key": "stale"}})
		e.authorize(t, e.grants, "p", "read")
		srv := e.serve(serverURL, e.as, echoTool("echo"))
		srv.needHeaders = map[string]string{"X-Api-Key": "rotated"}

		_, err := e.call(context.Background(), "echo", nil)
		wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonNotAuthorized)
		wantTokens(t, srv, "at-1", "at-2")
		if st, reason, _ := e.credStatus(t, "p"); st != domain.StatusAuthorized || reason != "" {
			t.Errorf("grant = %v %q, want it kept AUTHORIZED", st, reason)
		}
		if evs := e.events(domain.EventReauthRequired); len(evs) != 0 {
			t.Errorf("reauth audit = %+v, want none", evs)
		}
	})
	t.Run("a newer grant stored meanwhile survives", func(t *testing.T) {
		t.Parallel()
		e, srv := authorizedEnv(t)
		other := e.replica(t, 0)
		srv.set(func(s *mcpServer) {
			s.rejectTokens = true
			s.onRequest = func(n int) {
				if n == 2 { // while the refreshed token is being rejected, a new authorization completes
					e.authorize(t, other, "p", "read")
				}
			}
		})

		_, err := e.call(context.Background(), "echo", nil)
		wantErr(t, err, apperr.KindAborted, domain.ReasonAborted)
		if st, _, gen := e.credStatus(t, "p"); st != domain.StatusAuthorized || gen != 3 {
			t.Errorf("grant = %v generation %d, want the new authorization (generation 3) intact", st, gen)
		}
		if evs := e.events(domain.EventReauthRequired); len(evs) != 0 {
			t.Errorf("reauth audit = %+v, want none", evs)
		}
		srv.set(func(s *mcpServer) { s.rejectTokens, s.onRequest = false, nil })
		if _, err := e.call(context.Background(), "echo", nil); err != nil {
			t.Fatal(err)
		}
		wantTokens(t, srv, "at-1", "at-2", "at-3")
	})
}

func TestUnauthorizedRefreshFails(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		breakAS    func(e *env)
		kind       apperr.Kind
		reason     string
		wantStatus domain.AuthStatus
		wantReason string
	}{
		{"authorization server down", func(e *env) { e.as.Fail(errors.New("dial tcp: connection refused")) },
			apperr.KindUnavailable, domain.ReasonUnavailable, domain.StatusAuthorized, ""},
		{"refresh token revoked", func(e *env) { _ = e.as.Revoke(context.Background(), nil, nil, secret.New("rt-1"), "refresh_token") },
			apperr.KindFailedPrecondition, domain.ReasonReauthRequired, domain.StatusReauthRequired, domain.ReasonInvalidGrant},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e, srv := authorizedEnv(t)
			e.as.Expire("at-1")
			tc.breakAS(e)

			_, err := e.call(context.Background(), "echo", nil)
			wantErr(t, err, tc.kind, tc.reason)
			wantTokens(t, srv, "at-1")
			if st, reason, _ := e.credStatus(t, "p"); st != tc.wantStatus || reason != tc.wantReason {
				t.Errorf("grant = %v %q, want %v %q", st, reason, tc.wantStatus, tc.wantReason)
			}
		})
	}
}

// stepUpEnv is an env whose provider (configured and granted scope "read")
// has a tool needing "read write".
func stepUpEnv(tb testing.TB) (*env, *mcpServer) {
	tb.Helper()
	e := newEnv(tb)
	e.addProvider(tb, provider{id: "p", scopes: []string{"read"}})
	e.authorize(tb, e.grants, "p", "read")
	return e, e.serve(serverURL, e.as, echoTool("write_doc", "read", "write"))
}

func TestInsufficientScopeAnswersWithStepUp(t *testing.T) {
	t.Parallel()
	may := agent(caller.ToolsCall, caller.Authorize)
	cases := []struct {
		name    string
		ctx     context.Context
		user    string
		edit    func(t *testing.T, e *env) *tools.Service
		wantURL bool
	}{
		{name: "caller may authorize", ctx: may, user: "u", wantURL: true},
		{name: "caller may only call tools", ctx: agent(caller.ToolsCall), user: "u"},
		{name: "caller authorizes another tenant", user: "u",
			ctx: caller.WithIdentity(context.Background(), caller.NewIdentity("agent", []string{"other"}, caller.All))},
		{name: "no caller", ctx: context.Background(), user: "u"},
		{name: "no user named", ctx: may},
		{name: "no starter", ctx: may, user: "u", edit: func(t *testing.T, e *env) *tools.Service {
			return e.tools(t, func(d *tools.Deps) { d.Starter = nil })
		}},
		{name: "flow cannot start", ctx: may, user: "u", edit: func(_ *testing.T, e *env) *tools.Service {
			e.starter.fail = apperr.Unavailable(errors.New("discovery failed"), "authorization server unreachable")
			return e.svc
		}},
		{name: "server asks for no authorization", ctx: may, user: "u", edit: func(_ *testing.T, e *env) *tools.Service {
			e.starter.notRequired = true
			return e.svc
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e, srv := stepUpEnv(t)
			svc := e.svc
			if tc.edit != nil {
				svc = tc.edit(t, e)
			}
			_, err := svc.Call(tc.ctx, tools.CallInput{Tenant: tenant, Provider: "p", Tool: "write_doc", User: tc.user})
			ae := wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonInsufficientScope)
			want := map[string]string{"missing_scopes": "write", "required_scopes": "read write", "granted_scopes": "read", "step_up_scopes": "read write"}
			if tc.wantURL {
				want["authorization_url"] = "https://mcpauth.example.com/oauth/authorize/flow-1?scope=read+write"
				want["authorization_expire_time"] = t0.Add(10 * time.Minute).Format(time.RFC3339)
			}
			if !maps.Equal(ae.Metadata, want) {
				t.Errorf("metadata = %v\nwant       %v", ae.Metadata, want)
			}
			if flows := e.starter.Flows(); tc.wantURL && (len(flows) != 1 || flows[0].User != "u" || flows[0].Provider != "p" ||
				!slices.Equal(flows[0].AdditionalScopes, []string{"read", "write"})) {
				t.Errorf("flows = %+v, want one for user u asking for the granted and the missing scopes", flows)
			}
			wantTokens(t, srv, "at-1") // a 403 is not retried and refreshes nothing
			if e.as.Refreshes() != 0 {
				t.Errorf("refreshes = %d", e.as.Refreshes())
			}
			ev, details := e.lastEvent(t, domain.EventStepUpRequired)
			if ev.Reason != domain.ReasonInsufficientScope || details["missing_scopes"] != "write" || ev.Outcome != int32(domain.OutcomeFailure) {
				t.Errorf("step-up audit = %+v %v", ev, details)
			}
			if ev, _ := e.lastEvent(t, domain.EventToolCalled); ev.Reason != domain.ReasonInsufficientScope {
				t.Errorf("tool audit reason = %s", ev.Reason)
			}
			if st, _, _ := e.credStatus(t, "p"); st != domain.StatusAuthorized {
				t.Errorf("grant = %v, want it kept", st)
			}
		})
	}
}

func TestInsufficientScopeAlreadyGrantedIsALoop(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addProvider(t, provider{id: "p", scopes: []string{"read"}})
	e.authorize(t, e.grants, "p", "read", "write")
	e.as.SetScopes("at-1", "read") // the token does not carry what the server said was granted
	e.serve(serverURL, e.as, echoTool("write_doc", "write"))

	_, err := e.call(agent(caller.ToolsCall, caller.Authorize), "write_doc", nil)
	ae := wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonInsufficientScopeLoop)
	if want := map[string]string{"required_scopes": "write"}; !maps.Equal(ae.Metadata, want) {
		t.Errorf("metadata = %v, want %v", ae.Metadata, want)
	}
	if flows := e.starter.Flows(); len(flows) != 0 {
		t.Errorf("flows = %+v, want none: re-authorizing would not help", flows)
	}
	if ev, _ := e.lastEvent(t, domain.EventStepUpRequired); ev.Reason != domain.ReasonStepUpLoop {
		t.Errorf("step-up audit reason = %s, want %s", ev.Reason, domain.ReasonStepUpLoop)
	}
}

func TestForbiddenWithoutInsufficientScope(t *testing.T) {
	t.Parallel()
	e, srv := authorizedEnv(t)
	srv.tools = append(srv.tools, fakeTool{def: &mcp.Tool{Name: "admin"}, forbidden: true})

	_, err := e.call(agent(caller.ToolsCall, caller.Authorize), "admin", nil)
	wantErr(t, err, apperr.KindPermissionDenied, domain.ReasonPermissionDenied)
	if evs := e.events(domain.EventStepUpRequired); len(evs) != 0 || len(e.starter.Flows()) != 0 {
		t.Errorf("step-up audit %+v / flows %+v, want none", evs, e.starter.Flows())
	}
	if st, _, _ := e.credStatus(t, "p"); st != domain.StatusAuthorized || e.as.Refreshes() != 0 {
		t.Errorf("grant = %v, refreshes %d; want it untouched", st, e.as.Refreshes())
	}
}

const otherURL = "https://other.example.com/mcp"

func TestTokensGrantedForAnotherServerAreNeverSent(t *testing.T) {
	t.Parallel()
	for _, protected := range []bool{false, true} {
		t.Run(fmt.Sprintf("new server protected=%v", protected), func(t *testing.T) {
			t.Parallel()
			e, old := authorizedEnv(t)
			e.moveServer(t, "p", otherURL)
			var as *authServer
			if protected {
				as = e.as
			}
			moved := e.serve(otherURL, as, echoTool("echo"))

			_, err := e.call(context.Background(), "echo", nil)
			if protected {
				wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonNotAuthorized)
			} else if err != nil {
				t.Fatal(err)
			}
			wantTokens(t, moved, "")
			wantTokens(t, old)
			if e.as.Refreshes() != 0 {
				t.Errorf("refreshes = %d, want none for a token that may not be sent", e.as.Refreshes())
			}
		})
	}
}

func TestTokenRefreshedForAnotherServerIsNotSent(t *testing.T) {
	t.Parallel()
	e, srv := authorizedEnv(t)
	other := e.replica(t, 0)
	e.as.Expire("at-1")
	e.serve(otherURL, e.as, echoTool("echo"))
	srv.onRequest = func(n int) {
		if n == 1 { // meanwhile the provider moves and is authorized for its new server
			e.moveServer(t, "p", otherURL)
			e.authorize(t, other, "p", "read")
		}
	}

	_, err := e.call(context.Background(), "echo", nil)
	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonReauthRequired)
	wantTokens(t, srv, "at-1")
	if st, _, gen := e.credStatus(t, "p"); st != domain.StatusAuthorized || gen != 2 {
		t.Errorf("grant = %v generation %d, want the new server's grant kept", st, gen)
	}
}

func TestTokenCachedBeforeANewerGrantIsNotSent(t *testing.T) {
	t.Parallel()
	e, srv := authorizedEnv(t)
	if _, err := e.call(context.Background(), "echo", nil); err != nil {
		t.Fatal(err)
	}
	e.authorize(t, e.replica(t, 0), "p", "read") // on another replica: this one's cache still holds at-1
	if tok, err := e.grants.Get(context.Background(), domain.TenantGrant(tenant, "p")); err != nil || tok.AccessToken.Reveal() != "at-1" {
		t.Fatalf("precondition: cached token = %v, %v; want at-1", tok, err)
	}

	if _, err := e.call(context.Background(), "echo", nil); err != nil {
		t.Fatal(err)
	}
	wantTokens(t, srv, "at-1", "at-2")
	if e.as.Refreshes() != 0 {
		t.Errorf("refreshes = %d", e.as.Refreshes())
	}
}

func TestBrokenGrantFailsWithoutContactingTheServer(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		breakG func(t *testing.T, e *env)
		kind   apperr.Kind
		reason string
	}{
		{"reauth required", func(t *testing.T, e *env) {
			_, _, gen := e.credStatus(t, "p")
			if err := e.grants.MarkReauth(context.Background(), domain.TenantGrant(tenant, "p"), domain.ReasonInvalidGrant, gen); apperr.KindOf(err) != apperr.KindFailedPrecondition {
				t.Fatalf("MarkReauth = %v", err)
			}
		}, apperr.KindFailedPrecondition, domain.ReasonReauthRequired},
		{"credential unreadable", func(t *testing.T, e *env) {
			e.grants.Forget(domain.TenantGrant(tenant, "p"))
			e.store.FailOn("GetCredential", apperr.Unavailable(servicetest.ErrInjected, "database down"))
		}, apperr.KindUnavailable, domain.ReasonUnavailable},
		{"provider unreadable", func(t *testing.T, e *env) {
			e.store.FailOn("GetProvider", apperr.Unavailable(servicetest.ErrInjected, "database down"))
		}, apperr.KindUnavailable, domain.ReasonUnavailable},
		{"server URL sealed for another provider", func(t *testing.T, e *env) {
			e.update(t, "p", func(row *repository.Provider) {
				row.ServerURL = e.seal(t, "q", vault.FieldServerURL, []byte(serverURL))
			})
		}, apperr.KindInternal, domain.ReasonInternal},
	}
	for _, tc := range cases {
		for _, op := range ops {
			t.Run(tc.name+"/"+op.name, func(t *testing.T) {
				t.Parallel()
				e, srv := authorizedEnv(t)
				tc.breakG(t, e)
				wantErr(t, op.run(context.Background(), e), tc.kind, tc.reason)
				wantTokens(t, srv)
				if op.name != "call" {
					return
				}
				// The refused call is audited once, with the refusal's reason.
				evs := e.events(domain.EventToolCalled)
				if len(evs) != 1 || evs[0].Outcome != int32(domain.OutcomeFailure) || evs[0].Reason != tc.reason {
					t.Fatalf("tool call audit events = %+v, want one failure with reason %s", evs, tc.reason)
				}
				if _, d := e.lastEvent(t, domain.EventToolCalled); d["refused"] != "before_server" || d["tool"] != "echo" {
					t.Errorf("refused call details = %v", d)
				}
			})
		}
	}
}

func TestCallMapsServerErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		err    error
		kind   apperr.Kind
		reason string
		// public is a substring of the public message.
		public string
	}{
		{"result too large", fmt.Errorf("mcpclient: call tool: result too large: %w", mcpclient.ErrResultTooLarge),
			apperr.KindFailedPrecondition, domain.ReasonResultTooLarge, "exceeds 1024 bytes"},
		{"deadline", fmt.Errorf("mcpclient: call tool: no answer within 2.5s: %w", context.DeadlineExceeded),
			apperr.KindUnavailable, domain.ReasonUnavailable, "did not answer in time"},
		{"unreachable", fmt.Errorf("mcpclient: call tool: server answered 502: %w", mcpclient.ErrUnreachable),
			apperr.KindUnavailable, domain.ReasonUnavailable, "could not be reached"},
		// Definitive answers of the endpoint: retrying cannot help.
		{"not found", &mcpclient.StatusError{Op: "tools/call", Status: 404},
			apperr.KindFailedPrecondition, domain.ReasonServerNotFound, "answered 404: no MCP endpoint"},
		{"gone", &mcpclient.StatusError{Op: "tools/call", Status: 410},
			apperr.KindFailedPrecondition, domain.ReasonServerNotFound, "answered 410"},
		{"bad request", &mcpclient.StatusError{Op: "tools/call", Status: 400},
			apperr.KindFailedPrecondition, domain.ReasonServerRequestRejected, "answered 400"},
		{"other client error", &mcpclient.StatusError{Op: "tools/call", Status: 415},
			apperr.KindUnavailable, domain.ReasonUnavailable, "could not be reached"},
		{"generic", errBoom, apperr.KindUnavailable, domain.ReasonUnavailable, "could not be reached"},
		{"already classified", apperr.Aborted("session reset"), apperr.KindAborted, domain.ReasonAborted, "session reset"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.addProvider(t, provider{id: "p"})
			srv := e.serve(serverURL, nil, failingTool("t", tc.err))
			svc := e.tools(t, func(d *tools.Deps) { d.MaxResultBytes = 1 << 10 })

			_, err := svc.Call(context.Background(), tools.CallInput{Tenant: tenant, Provider: "p", Tool: "t"})
			wantErr(t, err, tc.kind, tc.reason)
			if pub := apperr.PublicMessage(err); !strings.Contains(pub, tc.public) || strings.Contains(pub, "secret") {
				t.Errorf("public message %q, want it to contain %q and no upstream text", pub, tc.public)
			}
			if got := srv.Requests()[0].Target.MaxResultBytes; got != 1<<10 {
				t.Errorf("MaxResultBytes on the wire = %d", got)
			}
			if ev, _ := e.lastEvent(t, domain.EventToolCalled); ev.Outcome != int32(domain.OutcomeFailure) || ev.Reason != tc.reason {
				t.Errorf("audit = %+v", ev)
			}
		})
	}
	t.Run("unknown tool", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		e.addProvider(t, provider{id: "p"})
		e.serve(serverURL, nil)
		_, err := e.call(context.Background(), "nope", nil)
		wantErr(t, err, apperr.KindUnavailable, domain.ReasonUnavailable)
	})
	t.Run("canceled by the caller", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		e.addProvider(t, provider{id: "p"})
		e.serve(serverURL, nil, echoTool("echo"))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := e.call(ctx, "echo", nil)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("error = %v, want context.Canceled unchanged", err)
		}
		if _, ok := apperr.As(err); ok {
			t.Errorf("error %v was classified; a caller's cancellation is not the server's failure", err)
		}
	})
}

func TestCallBlockedByEgressPolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const blockedURL = "https://10.1.2.3/mcp"
	e.addProvider(t, provider{id: "p", url: blockedURL})
	srv := e.serve(blockedURL, nil, echoTool("echo"))

	_, err := e.call(context.Background(), "echo", nil)
	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonEgressBlocked)
	wantTokens(t, srv)
	ev, details := e.lastEvent(t, domain.EventEgressBlocked)
	if ev.ProviderID != "p" || details["host"] != "10.1.2.3" || details["rule"] == "" {
		t.Fatalf("egress audit = %+v %v, want the block filed under the provider with host and rule", ev, details)
	}
	pub := apperr.PublicMessage(err)
	if !strings.Contains(pub, "10.1.2.3") || !strings.Contains(pub, details["rule"]) || strings.Contains(pub, "/mcp") {
		t.Errorf("public message %q, want host and rule (%s) only", pub, details["rule"])
	}
	if ev, _ := e.lastEvent(t, domain.EventToolCalled); ev.Reason != domain.ReasonEgressBlocked {
		t.Errorf("tool audit reason = %s", ev.Reason)
	}
}

func TestCallValidatesToolName(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, tool string
	}{
		{name: "empty"},
		{name: "129 characters", tool: strings.Repeat("a", 129)},
		{name: "NUL", tool: "a\x00b"},
		{name: "newline", tool: "a\nb"},
		{name: "carriage return", tool: "a\rb"},
		{name: "tab", tool: "a\tb"},
		{name: "escape sequence", tool: "\x1b[2Jfake"},
		{name: "DEL", tool: "a\x7fb"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e, srv := authorizedEnv(t)
			_, err := e.call(context.Background(), tc.tool, nil)
			if ae := wantErr(t, err, apperr.KindInvalidArgument, domain.ReasonInvalidArgument); ae.Field != "tool" {
				t.Errorf("field = %q, want tool", ae.Field)
			}
			wantTokens(t, srv)
			if evs := e.store.Events(); len(evs) != 0 {
				t.Errorf("audit = %+v, want none for a refused request", evs)
			}
		})
	}
	t.Run("128 characters", func(t *testing.T) {
		t.Parallel()
		e, srv := authorizedEnv(t)
		long := strings.Repeat("a", 128)
		srv.tools = append(srv.tools, echoTool(long))
		if _, err := e.call(context.Background(), long, nil); err != nil {
			t.Fatal(err)
		}
		if req := srv.Requests(); len(req) != 1 || req[0].Tool != long {
			t.Errorf("server saw %+v", req)
		}
	})
}

func TestProbeServer(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		url    string
		setup  func(e *env)
		reason string // "" for reachable
		// authRequired is whether the server asked for authorization.
		authRequired bool
	}{
		{name: "answers", url: serverURL, setup: func(e *env) { e.serve(serverURL, nil) }},
		{name: "asks for authorization", url: serverURL, setup: func(e *env) { e.serve(serverURL, e.as) }, authRequired: true},
		{name: "refuses the headers", url: serverURL, setup: func(e *env) {
			e.serve(serverURL, nil).needHeaders = map[string]string{"X-Api-Key": "other"}
		}, authRequired: true},
		{name: "no such host", url: "https://gone.example.com/mcp", setup: func(*env) {}, reason: domain.ReasonServerUnreachable},
		{name: "server failing", url: serverURL, setup: func(e *env) {
			e.serve(serverURL, nil).down = fmt.Errorf("mcpclient: ping: server answered 503: %w", mcpclient.ErrUnreachable)
		}, reason: domain.ReasonServerUnreachable},
		{name: "no MCP endpoint", url: serverURL, setup: func(e *env) {
			e.serve(serverURL, nil).down = &mcpclient.StatusError{Op: "initialize", Status: 404}
		}, reason: domain.ReasonServerNotFound},
		{name: "egress blocked", url: "https://127.0.0.1/mcp", setup: func(e *env) { e.serve("https://127.0.0.1/mcp", nil) },
			reason: domain.ReasonEgressBlocked},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			tc.setup(e)
			headers := map[string]string{"X-Api-Key": "k1"}
			authRequired, err := e.svc.ProbeServer(context.Background(), tc.url, headers)
			if tc.reason != "" {
				wantErr(t, err, apperr.KindFailedPrecondition, tc.reason)
				return
			}
			if err != nil || authRequired != tc.authRequired {
				t.Fatalf("ProbeServer() = %v, %v; want reachable, authorization required %v", authRequired, err, tc.authRequired)
			}
			req := e.net.server(tc.url).Requests()
			want := mcpclient.Target{URL: tc.url, Timeout: 15 * time.Second, MaxResultBytes: 1 << 20}
			if len(req) != 1 || req[0].Op != "probe" || req[0].Target != want || req[0].Token != "" || !maps.Equal(req[0].Headers, headers) {
				t.Errorf("server saw %+v, want one probe with the headers and no token", req)
			}
		})
	}
}

// The step-up URL should request every scope the answer tells the caller to
// request (step_up_scopes): a flow that asks for the configured scopes plus
// the missing ones only drops scopes granted by an earlier step-up, and the
// next tool needing them steps up again, endlessly alternating.
func TestStepUpURLKeepsScopesGrantedEarlier(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addProvider(t, provider{id: "p", scopes: []string{"read"}})
	e.authorize(t, e.grants, "p", "read", "write") // "write" came from an earlier step-up
	e.serve(serverURL, e.as, echoTool("admin", "admin"))

	_, err := e.call(agent(caller.ToolsCall, caller.Authorize), "admin", nil)
	ae := wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonInsufficientScope)
	u, perr := url.Parse(ae.Metadata["authorization_url"])
	if perr != nil {
		t.Fatal(perr)
	}
	requested := strings.Fields(u.Query().Get("scope"))
	for _, sc := range strings.Fields(ae.Metadata["step_up_scopes"]) {
		if !slices.Contains(requested, sc) {
			t.Errorf("authorization URL requests %q, missing %q of step_up_scopes %q", requested, sc, ae.Metadata["step_up_scopes"])
		}
	}
}

// TestCallsValidateTheUser: the person a call is made for follows the rule
// StartAuthorization applies (it can reach the audit log and a step-up
// flow); a bad one is refused before anything is sent or recorded.
func TestCallsValidateTheUser(t *testing.T) {
	t.Parallel()
	for _, user := range []string{"a\x00b", "line\nbreak", "\u202eevil", " ", strings.Repeat("u", 257)} {
		t.Run(fmt.Sprintf("%q", user), func(t *testing.T) {
			t.Parallel()
			e, srv := authorizedEnv(t)
			_, err := e.svc.Call(context.Background(), tools.CallInput{Tenant: tenant, Provider: "p", Tool: "echo", User: user})
			if ae := wantErr(t, err, apperr.KindInvalidArgument, domain.ReasonInvalidArgument); ae.Field != "user" {
				t.Errorf("Call: field = %q, want user", ae.Field)
			}
			_, err = e.svc.Refresh(context.Background(), tenant, "p", user)
			if ae := wantErr(t, err, apperr.KindInvalidArgument, domain.ReasonInvalidArgument); ae.Field != "user" {
				t.Errorf("Refresh: field = %q, want user", ae.Field)
			}
			wantTokens(t, srv)
			if evs := e.store.Events(); len(evs) != 0 {
				t.Errorf("audit = %+v, want none for a refused request", evs)
			}
		})
	}
}

// TestStepUpIsBounded: each 403 insufficient_scope is recorded; after
// MaxStepUpAttempts authorizations completed while one was outstanding,
// the answer is STEP_UP_EXHAUSTED and no further flow is started.
func TestStepUpIsBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addProvider(t, provider{id: "p", scopes: []string{"read"}})
	e.authorize(t, e.grants, "p", "read")
	e.serve(serverURL, e.as, echoTool("write_doc", "read", "write"), echoTool("read_doc", "read"))
	may := agent(caller.ToolsCall, caller.Authorize)
	_, err := e.svc.Call(may, tools.CallInput{Tenant: tenant, Provider: "p", Tool: "write_doc", User: "u"})
	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonInsufficientScope)
	ch, err := e.store.GetChallenge(context.Background(), domain.TenantGrant(tenant, "p"))
	if err != nil || ch.HTTPStatus != 403 || ch.Error != "insufficient_scope" || ch.Scope != "read write" {
		t.Fatalf("recorded challenge %+v, %v", ch, err)
	}
	for range domain.MaxStepUpAttempts {
		if err := e.store.CountStepUp(context.Background(), domain.TenantGrant(tenant, "p")); err != nil {
			t.Fatal(err)
		}
	}
	flows := len(e.starter.Flows())
	_, err = e.svc.Call(may, tools.CallInput{Tenant: tenant, Provider: "p", Tool: "write_doc", User: "u"})
	wantErr(t, err, apperr.KindFailedPrecondition, domain.ReasonStepUpExhausted)
	if n := len(e.starter.Flows()); n != flows {
		t.Fatalf("%d more flows started after the bound", n-flows)
	}
	if ev, _ := e.lastEvent(t, domain.EventStepUpRequired); ev.Reason != domain.ReasonStepUpExhausted {
		t.Fatalf("step-up audit reason %s", ev.Reason)
	}
	// A successful authorized request starts the count again.
	if _, err := e.svc.Call(may, tools.CallInput{Tenant: tenant, Provider: "p", Tool: "read_doc", User: "u"}); err != nil {
		t.Fatalf("read_doc: %v", err)
	}
	if _, err := e.store.GetChallenge(context.Background(), domain.TenantGrant(tenant, "p")); apperr.KindOf(err) != apperr.KindNotFound {
		t.Fatalf("challenge after a success: %v", err)
	}
}

// TestSharedToolList: on a USER provider whose list is declared shared,
// one user's Refresh (with that user's token) fills the list every
// connected user's Stored reads, with no request to the server; a user
// without a connection is NOT_AUTHORIZED, shared or not; per connection
// (the setting off), each user reads only what was fetched with their own
// connection, and the shared list is gone.
func TestSharedToolList(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addProvider(t, provider{id: "p"})
	e.update(t, "p", func(row *repository.Provider) { row.GrantScope, row.SharedToolList = domain.ScopeUser, true })
	srv := e.serve(serverURL, e.as, echoTool("echo"))
	grant := vault.Grant{RegMethod: domain.RegPreRegistered, ClientID: clientID, Issuer: issuer, TokenEndpoint: tokenEndpoint}
	tokens := map[string]string{}
	for _, user := range []string{"alice", "bob"} {
		toks := e.as.Issue(nil)
		if err := e.grants.StoreNew(context.Background(), e.row(t, "p"), user, grant, toks); err != nil {
			t.Fatal(err)
		}
		tokens[user] = toks.AccessToken.Reveal()
	}
	ctx := context.Background()
	fetched, err := e.svc.Refresh(ctx, tenant, "p", "alice")
	if err != nil || len(fetched.Tools) != 1 {
		t.Fatalf("alice's Refresh: %+v %v", fetched, err)
	}
	if got := srv.Tokens(); len(got) != 1 || got[0] != tokens["alice"] {
		t.Fatalf("the server saw %d requests; the fetch must carry alice's token", len(got))
	}
	bobs, err := e.svc.Stored(ctx, tenant, "p", "bob")
	if err != nil || len(bobs.Tools) != 1 || !bobs.FetchedAt.Equal(fetched.FetchedAt) {
		t.Fatalf("bob's Stored: %+v %v", bobs, err)
	}
	if n := len(srv.Requests()); n != 1 {
		t.Fatalf("bob's read reached the server: %d requests", n)
	}
	if _, err := e.svc.Stored(ctx, tenant, "p", "carol"); !notAuthorized(err) {
		t.Fatalf("carol's Stored of the shared list: %v", err)
	}

	e.update(t, "p", func(row *repository.Provider) { row.SharedToolList = false })
	if l, err := e.svc.Stored(ctx, tenant, "p", "bob"); err != nil || len(l.Tools) != 0 {
		t.Fatalf("bob's Stored once the list is per connection: %+v %v", l, err)
	}
	if _, err := e.svc.Refresh(ctx, tenant, "p", "bob"); err != nil {
		t.Fatal(err)
	}
	if got := srv.Tokens(); len(got) != 2 || got[1] != tokens["bob"] {
		t.Fatal("bob's own fetch must carry bob's token")
	}
	if l, err := e.svc.Stored(ctx, tenant, "p", "bob"); err != nil || len(l.Tools) != 1 {
		t.Fatalf("bob's own list: %+v %v", l, err)
	}
	if _, err := e.svc.Stored(ctx, tenant, "p", "carol"); !notAuthorized(err) {
		t.Fatalf("carol's Stored per connection: %v", err)
	}
}

// notAuthorized reports whether err is FAILED_PRECONDITION NOT_AUTHORIZED.
func notAuthorized(err error) bool {
	e, ok := apperr.As(err)
	return ok && e.Kind == apperr.KindFailedPrecondition && e.Reason == domain.ReasonNotAuthorized
}

// sharingTurnedOff is a Connector that turns the provider's shared tool
// list off while the tools are being listed: the change a replica makes
// while another's refresh is under way.
type sharingTurnedOff struct {
	tools.Connector
	during func()
}

func (c sharingTurnedOff) ListTools(ctx context.Context, key string, t mcpclient.Target, cr mcpclient.Credentials) ([]*mcp.Tool, error) {
	c.during()
	return c.Connector.ListTools(ctx, key, t, cr)
}

// TestSharedToolListTurnedOffDuringRefresh: a refresh that started while
// the list was shared and ends after sharing was turned off stores no
// shared list (docs/design.md: turning sharing on again never serves a
// list from an earlier period), though it still answers its caller.
func TestSharedToolListTurnedOffDuringRefresh(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addProvider(t, provider{id: "p"})
	e.update(t, "p", func(row *repository.Provider) { row.GrantScope, row.SharedToolList = domain.ScopeUser, true })
	e.serve(serverURL, e.as, echoTool("echo"))
	grant := vault.Grant{RegMethod: domain.RegPreRegistered, ClientID: clientID, Issuer: issuer, TokenEndpoint: tokenEndpoint}
	for _, user := range []string{"alice", "bob"} {
		if err := e.grants.StoreNew(context.Background(), e.row(t, "p"), user, grant, e.as.Issue(nil)); err != nil {
			t.Fatal(err)
		}
	}
	svc := e.tools(t, func(d *tools.Deps) {
		d.MCP = sharingTurnedOff{Connector: d.MCP, during: func() {
			e.update(t, "p", func(row *repository.Provider) { row.SharedToolList = false })
		}}
	})
	ctx := context.Background()
	fetched, err := svc.Refresh(ctx, tenant, "p", "alice")
	if err != nil || len(fetched.Tools) != 1 {
		t.Fatalf("alice's Refresh: %+v %v", fetched, err)
	}
	if tl, err := e.store.GetTools(ctx, domain.TenantGrant(tenant, "p")); apperr.KindOf(err) != apperr.KindNotFound {
		t.Fatalf("a shared list was stored after sharing was turned off: %+v %v", tl, err)
	}
	e.update(t, "p", func(row *repository.Provider) { row.SharedToolList = true })
	if l, err := e.svc.Stored(ctx, tenant, "p", "bob"); err != nil || len(l.Tools) != 0 {
		t.Fatalf("bob's Stored once sharing is on again: %+v %v (a list from the earlier period)", l, err)
	}
}

// TestToolListFromMovedServerNotStored: a refresh whose tools/list is
// answered by the provider's old server, while the provider is moved to
// another server (its tool lists cleared), stores no list, for the tenant
// grant and for a user's, though it still answers its caller.
func TestToolListFromMovedServerNotStored(t *testing.T) {
	t.Parallel()
	for _, user := range []string{"", "alice"} {
		t.Run("user="+user, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.addProvider(t, provider{id: "p"})
			if user != "" {
				e.update(t, "p", func(row *repository.Provider) { row.GrantScope = domain.ScopeUser })
				grant := vault.Grant{RegMethod: domain.RegPreRegistered, ClientID: clientID, Issuer: issuer, TokenEndpoint: tokenEndpoint}
				if err := e.grants.StoreNew(context.Background(), e.row(t, "p"), user, grant, e.as.Issue(nil)); err != nil {
					t.Fatal(err)
				}
			} else {
				e.authorize(t, e.grants, "p", "read")
			}
			e.serve(serverURL, e.as, echoTool("echo"))
			svc := e.tools(t, func(d *tools.Deps) {
				d.MCP = sharingTurnedOff{Connector: d.MCP, during: func() {
					row := e.row(t, "p")
					newURL := "https://moved.example.com/mcp"
					row.ServerURL = e.seal(t, "p", vault.FieldServerURL, []byte(newURL))
					row.URLHash = e.keys.Fingerprint(tenant, vault.PurposeURL, []byte(newURL))
					if err := e.store.UpdateProviderResettingCredentials(context.Background(), row, row.Version); err != nil {
						t.Error(err)
					}
				}}
			})
			ctx := context.Background()
			fetched, err := svc.Refresh(ctx, tenant, "p", user)
			if err != nil || len(fetched.Tools) != 1 {
				t.Fatalf("Refresh: %+v %v", fetched, err)
			}
			ref := domain.GrantRef{Tenant: tenant, Provider: "p", User: user}
			if tl, err := e.store.GetTools(ctx, ref); apperr.KindOf(err) != apperr.KindNotFound {
				t.Fatalf("the old server's list was stored after the move: %+v %v", tl, err)
			}
		})
	}
}
