package e2e

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// Bad-input tests of the OAuth, audit and tool RPCs and of the browser
// routes (provider RPCs: provider_validation_test.go). Each case asserts
// the refusal (gRPC code and the exact BadRequest field, or the page's
// status and reason code) and that the refusal changed nothing: no row of
// providers, credentials, client_registrations, tool_lists or audit_events
// (other than the events a refusal is documented to write), no Redis key
// under the service's prefix, and no request to the test authorization
// server or MCP server. Names start with "bi".

// biReturnOrigin is the only origin StartAuthorization may return to.
const biReturnOrigin = "https://console.example"

// biTables are the tables whose rows must not change.
var biTables = []string{"providers", "credentials", "client_registrations", "tool_lists", "audit_events"}

// biWorld is one service with an authorized provider, a tool list, and a
// pending flow whose browser reached the authorization server.
type biWorld struct {
	S      *Service
	AS     *testauthz.AuthServer
	MCP    *testauthz.MCPServer
	Redis  redis.UniversalClient
	Prefix string
	// Admin may do everything everywhere; Reader may only read providers
	// of tenant acme.
	Admin, Reader context.Context
	// Name is tenants/acme/providers/docs.
	Name string
	// Callback is the pending flow's callback URL (code, state, iss) and
	// Handle its authorize route handle: both still live.
	Callback *url.URL
	Handle   string
	// Token is a page token of acme's unfiltered audit list.
	Token string
}

// biSetup starts the world. Its service is on a fresh PostgreSQL schema
// and a Redis prefix of the test's own, so the whole tables and the whole
// prefix belong to the test.
func biSetup(t *testing.T) *biWorld {
	t.Helper()
	w := &biWorld{}
	w.AS = testauthz.NewAuthServer(t, testauthz.AuthServerOptions{DCR: true})
	w.MCP = testauthz.NewMCPServer(t, testauthz.MCPServerOptions{Auth: w.AS})
	var redisURL string
	redisURL, w.Redis, w.Prefix = oaRedis(t)
	admin, adminKey := NewCaller(t, "admin", []string{"*"}, caller.All...)
	reader, readerKey := NewCaller(t, "reader", []string{"acme"}, caller.ProvidersRead)
	w.S = Start(t, Options{Postgres: true, RedisURL: redisURL, Callers: &caller.File{Callers: []caller.FileCaller{admin, reader}},
		Env: oaAllowEnv("MCPAUTH_RETURN_ORIGINS", biReturnOrigin)})
	w.S.AdminKey = adminKey
	w.Admin, w.Reader = Ctx(t, adminKey), Ctx(t, readerKey)
	w.Name = createProvider(t, w.S, adminKey, "acme", "docs", w.MCP.URL(), nil)
	createProvider(t, w.S, adminKey, "other", "docs", w.MCP.URL(), nil)
	tlAuthorize(t, w.S, w.Name)
	if _, err := w.S.Tools().RefreshTools(w.Admin, &mcpauthv1.RefreshToolsRequest{Name: w.Name}); err != nil {
		t.Fatalf("RefreshTools: %v", err)
	}
	start, err := w.S.OAuth().StartAuthorization(w.Admin, &mcpauthv1.StartAuthorizationRequest{Name: w.Name, User: "bob",
		ReturnUrl: biReturnOrigin + "/done"})
	if err != nil {
		t.Fatalf("StartAuthorization: %v", err)
	}
	au, err := url.Parse(start.GetAuthorizationUrl())
	oaMust(t, err)
	w.Handle = au.Path[strings.LastIndex(au.Path, "/")+1:]
	second, err := w.S.OAuth().StartAuthorization(w.Admin, &mcpauthv1.StartAuthorizationRequest{Name: w.Name, User: "carol"})
	if err != nil {
		t.Fatalf("StartAuthorization: %v", err)
	}
	w.Callback = oaToCallback(t, NewBrowser(t), second.GetAuthorizationUrl())
	// The starts' events are stored just after the starts answered: the
	// cases compare the audit log before and after each call.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		users := map[string]bool{}
		for _, ev := range oaEvents(t, w.S, "acme", "oauth.authorization.started") {
			users[ev.GetDetails()["user"]] = true
		}
		if users["bob"] && users["carol"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the starts for bob and carol are not audited: %v", users)
		}
	}
	page, err := w.S.Audit().ListAuditEvents(w.Admin, &mcpauthv1.ListAuditEventsRequest{Parent: "tenants/acme", PageSize: 1})
	if err != nil || page.GetNextPageToken() == "" {
		t.Fatalf("ListAuditEvents: %v (token %q)", err, page.GetNextPageToken())
	}
	w.Token = page.GetNextPageToken()
	return w
}

// biState is what must not change.
type biState struct {
	rows map[string][]string
	// types maps each audit_events row to its event type.
	types    map[string]string
	keys     []string
	as, mcp  int
	asReqs   []string
	mcpPaths []string
}

// snap records the rows of biTables, the Redis keys under the prefix (with
// their values) and the requests the test servers received.
func (w *biWorld) snap(t *testing.T) biState {
	t.Helper()
	st := biState{rows: map[string][]string{}, types: map[string]string{}}
	for _, table := range biTables {
		for _, r := range provTableRows(t, w.S, table) {
			row := fmt.Sprintf("%v", r)
			st.rows[table] = append(st.rows[table], row)
			if typ, ok := r["event_type"].([]byte); ok {
				st.types[row] = string(typ)
			} else {
				st.types[row] = fmt.Sprint(r["event_type"])
			}
		}
		slices.Sort(st.rows[table])
	}
	// Each key with a digest of its value: a refusal must not rewrite a
	// flow record either.
	for _, k := range oaRedisKeys(t, w.Redis, w.Prefix+"*") {
		v, err := w.Redis.Dump(context.Background(), k).Bytes()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatalf("redis dump %s: %v", k, err)
		}
		st.keys = append(st.keys, fmt.Sprintf("%s=%x", k, sha256.Sum256(v)))
	}
	slices.Sort(st.keys)
	for _, r := range w.AS.Requests() {
		st.asReqs = append(st.asReqs, r.Method+" "+r.Path)
	}
	for _, r := range w.MCP.Received() {
		st.mcpPaths = append(st.mcpPaths, r.Method+" "+r.Path)
	}
	st.as, st.mcp = len(st.asReqs), len(st.mcpPaths)
	return st
}

// unchanged fails t unless the state equals before, except for new audit
// events of exactly the types in audits (in any order).
func (w *biWorld) unchanged(t *testing.T, before biState, audits ...string) {
	t.Helper()
	after := w.snap(t)
	for _, table := range biTables {
		b, a := before.rows[table], after.rows[table]
		if table != "audit_events" {
			if !slices.Equal(b, a) {
				t.Errorf("table %s changed:\nbefore %q\nafter  %q", table, b, a)
			}
			continue
		}
		var added []string
		for _, r := range a {
			if i := slices.Index(b, r); i >= 0 {
				b = slices.Delete(slices.Clone(b), i, i+1)
				continue
			}
			added = append(added, r)
		}
		if len(b) != 0 {
			t.Errorf("audit events removed or changed: %q", b)
		}
		var types []string
		for _, r := range added {
			types = append(types, after.types[r])
		}
		want := slices.Clone(audits)
		slices.Sort(types)
		slices.Sort(want)
		if !slices.Equal(types, want) {
			t.Errorf("new audit events %q, want %q (%q)", types, want, added)
		}
	}
	if !slices.Equal(before.keys, after.keys) {
		t.Errorf("Redis keys changed:\nbefore %q\nafter  %q", before.keys, after.keys)
	}
	if after.as != before.as {
		t.Errorf("authorization server got %d new requests: %q", after.as-before.as, after.asReqs[before.as:])
	}
	if after.mcp != before.mcp {
		t.Errorf("MCP server got %d new requests: %q", after.mcp-before.mcp, after.mcpPaths[before.mcp:])
	}
}

// biRPC is one refused call. field is the BadRequest field of an
// INVALID_ARGUMENT (other codes carry none); audits are the event types the
// refusal writes; reader runs the call as the read-only caller.
type biRPC struct {
	name   string
	code   codes.Code
	field  string
	audits []string
	reader bool
	skip   string
	call   func(ctx context.Context, w *biWorld) error
}

// biInvalid builds an INVALID_ARGUMENT case.
func biInvalid(name, field string, call func(ctx context.Context, w *biWorld) error) biRPC {
	return biRPC{name: name, code: codes.InvalidArgument, field: field, call: call}
}

// biRun runs each case in order on one world and checks the answer and
// that nothing changed. The cases run one after another: the Redis prefix
// and the test servers' request logs are shared by the whole world.
func biRun(t *testing.T, w *biWorld, cases []biRPC) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.skip != "" {
				t.Skip(tc.skip)
			}
			ctx := w.Admin
			if tc.reader {
				ctx = w.Reader
			}
			before := w.snap(t)
			err := tc.call(ctx, w)
			st := provStatus(t, err, tc.code)
			fields := provViolations(st)
			switch {
			case tc.code == codes.InvalidArgument && (len(fields) != 1 || fields[0] != tc.field):
				t.Errorf("field violations = %q, want [%q] (message %q)", fields, tc.field, st.Message())
			case tc.code == codes.InvalidArgument && provErrorReason(st) != "INVALID_ARGUMENT":
				t.Errorf("reason = %q", provErrorReason(st))
			case tc.code != codes.InvalidArgument && len(fields) != 0:
				t.Errorf("%v carries field violations %q", tc.code, fields)
			}
			w.unchanged(t, before, tc.audits...)
		})
	}
}

// biBadNames are malformed provider names, each refused on field "name".
var biBadNames = map[string]string{
	"empty":             "",
	"no collection":     "acme/docs",
	"empty id":          "tenants/acme/providers/",
	"upper-case tenant": "tenants/ACME/providers/docs",
	"upper-case id":     "tenants/acme/providers/Docs",
	"extra segment":     "tenants/acme/providers/docs/x",
	"overlong id":       "tenants/acme/providers/" + strings.Repeat("a", 64),
	"control character": "tenants/acme/providers/do\x00cs",
	"path traversal":    "tenants/acme/providers/../docs",
}

// biNameCases builds, for one RPC taking a provider name, a case per bad
// name, NOT_FOUND for a missing provider and PERMISSION_DENIED (with its
// permission.denied event) for a caller without the permission, and for a
// tenant the caller has no access to.
func biNameCases(rpc string, call func(ctx context.Context, w *biWorld, name string) error) []biRPC {
	var out []biRPC
	for _, k := range slices.Sorted(maps.Keys(biBadNames)) {
		name := biBadNames[k]
		out = append(out, biInvalid(rpc+"/name "+k, "name", func(ctx context.Context, w *biWorld) error { return call(ctx, w, name) }))
	}
	out = append(out,
		biRPC{name: rpc + "/bad name before permission", code: codes.InvalidArgument, field: "name", reader: true,
			call: func(ctx context.Context, w *biWorld) error { return call(ctx, w, "tenants/other/docs") }},
		biRPC{name: rpc + "/missing provider", code: codes.NotFound,
			call: func(ctx context.Context, w *biWorld) error { return call(ctx, w, "tenants/acme/providers/missing") }},
		biRPC{name: rpc + "/other tenant", code: codes.PermissionDenied, reader: true, audits: []string{"permission.denied"},
			call: func(ctx context.Context, w *biWorld) error { return call(ctx, w, "tenants/other/providers/docs") }},
	)
	return out
}

// biStart builds a StartAuthorization case from a valid request after edit.
func biStart(name, field string, edit func(*mcpauthv1.StartAuthorizationRequest)) biRPC {
	return biInvalid("StartAuthorization/"+name, field, func(ctx context.Context, w *biWorld) error {
		req := &mcpauthv1.StartAuthorizationRequest{Name: w.Name, User: "alice", ReturnUrl: biReturnOrigin + "/back"}
		edit(req)
		_, err := w.S.OAuth().StartAuthorization(ctx, req)
		return err
	})
}

func biUser(u string) func(*mcpauthv1.StartAuthorizationRequest) {
	return func(r *mcpauthv1.StartAuthorizationRequest) { r.User = u }
}

func biReturn(u string) func(*mcpauthv1.StartAuthorizationRequest) {
	return func(r *mcpauthv1.StartAuthorizationRequest) { r.ReturnUrl = u }
}

func biScopes(s ...string) func(*mcpauthv1.StartAuthorizationRequest) {
	return func(r *mcpauthv1.StartAuthorizationRequest) { r.AdditionalScopes = s }
}

// TestBadInputOAuth: every OAuthService RPC refuses bad input without a
// change or an outbound request.
func TestBadInputOAuth(t *testing.T) {
	t.Parallel()
	w := biSetup(t)
	oc := w.S.OAuth()
	many := make([]string, 65)
	for i := range many {
		many[i] = fmt.Sprint("s", i)
	}
	cases := []biRPC{
		biStart("user missing", "user", biUser("")),
		biStart("user blank", "user", biUser("   ")),
		biStart("user over 256 bytes", "user", biUser(strings.Repeat("u", 257))),
		biStart("user with BEL", "user", biUser("al\x07ice")),
		biStart("user with newline", "user", biUser("alice\nbob")),
		biStart("user with NUL", "user", biUser("alice\x00")),
		biStart("user with bidi override", "user", biUser("alice\u202e")),
		biStart("return url other origin", "return_url", biReturn("https://evil.example/back")),
		biStart("return url javascript", "return_url", biReturn("javascript:alert(1)")),
		biStart("return url userinfo", "return_url", biReturn("https://user@console.example/back")),
		biStart("return url userinfo to other host", "return_url", biReturn("https://console.example@evil.example/back")),
		biStart("return url backslash", "return_url", biReturn(`https://console.example\@evil.example/`)),
		biStart("return url http", "return_url", biReturn("http://console.example/back")),
		biStart("return url other port", "return_url", biReturn("https://console.example:8443/back")),
		biStart("return url relative", "return_url", biReturn("/back")),
		biStart("return url protocol relative", "return_url", biReturn("//evil.example/back")),
		biStart("return url data", "return_url", biReturn("data:text/html,<script>alert(1)</script>")),
		biStart("return url with space", "return_url", biReturn("https://console.example/a b")),
		biStart("return url over 2 KiB", "return_url", biReturn(biReturnOrigin+"/"+strings.Repeat("a", 2048))),
		biStart("scope empty", "additional_scopes[0]", biScopes("")),
		biStart("scope with space", "additional_scopes[1]", biScopes("ok", "a b")),
		biStart("scope with quote", "additional_scopes[0]", biScopes(`a"b`)),
		biStart("scope with backslash", "additional_scopes[0]", biScopes(`a\b`)),
		biStart("scope non-ASCII", "additional_scopes[0]", biScopes("é")),
		biStart("scope over 256", "additional_scopes[0]", biScopes(strings.Repeat("s", 257))),
		biStart("too many scopes", "additional_scopes", biScopes(many...)),
		{name: "GetAccessToken/without tokens.read", code: codes.PermissionDenied, reader: true, audits: []string{"permission.denied"},
			call: func(ctx context.Context, w *biWorld) error {
				_, err := oc.GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: w.Name})
				return err
			}},
		{name: "RevokeAuthorization/without authorize", code: codes.PermissionDenied, reader: true, audits: []string{"permission.denied"},
			call: func(ctx context.Context, w *biWorld) error {
				_, err := oc.RevokeAuthorization(ctx, &mcpauthv1.RevokeAuthorizationRequest{Name: w.Name})
				return err
			}},
	}
	cases = append(cases, biNameCases("StartAuthorization", func(ctx context.Context, w *biWorld, name string) error {
		_, err := oc.StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
		return err
	})...)
	cases = append(cases, biNameCases("GetAuthorizationStatus", func(ctx context.Context, w *biWorld, name string) error {
		_, err := oc.GetAuthorizationStatus(ctx, &mcpauthv1.GetAuthorizationStatusRequest{Name: name})
		return err
	})...)
	cases = append(cases, biNameCases("GetAccessToken", func(ctx context.Context, w *biWorld, name string) error {
		_, err := oc.GetAccessToken(ctx, &mcpauthv1.GetAccessTokenRequest{Name: name})
		return err
	})...)
	cases = append(cases, biNameCases("RevokeAuthorization", func(ctx context.Context, w *biWorld, name string) error {
		_, err := oc.RevokeAuthorization(ctx, &mcpauthv1.RevokeAuthorizationRequest{Name: name})
		return err
	})...)
	cases = append(cases, biNameCases("DiagnoseProvider", func(ctx context.Context, w *biWorld, name string) error {
		_, err := oc.DiagnoseProvider(ctx, &mcpauthv1.DiagnoseProviderRequest{Name: name})
		return err
	})...)
	biRun(t, w, cases)
}

// biList builds a ListAuditEvents case; edit receives the world (for its
// page token).
func biList(name, field string, edit func(w *biWorld, r *mcpauthv1.ListAuditEventsRequest)) biRPC {
	return biInvalid("ListAuditEvents/"+name, field, func(ctx context.Context, w *biWorld) error {
		req := &mcpauthv1.ListAuditEventsRequest{Parent: "tenants/acme", PageSize: 1}
		edit(w, req)
		_, err := w.S.Audit().ListAuditEvents(ctx, req)
		return err
	})
}

// TestBadInputAudit: ListAuditEvents refuses bad input without a change.
func TestBadInputAudit(t *testing.T) {
	t.Parallel()
	w := biSetup(t)
	parent := func(p string) func(*biWorld, *mcpauthv1.ListAuditEventsRequest) {
		return func(_ *biWorld, r *mcpauthv1.ListAuditEventsRequest) { r.Parent = p }
	}
	withToken := func(edit func(r *mcpauthv1.ListAuditEventsRequest)) func(*biWorld, *mcpauthv1.ListAuditEventsRequest) {
		return func(w *biWorld, r *mcpauthv1.ListAuditEventsRequest) { r.PageToken = w.Token; edit(r) }
	}
	cases := []biRPC{
		biList("empty parent", "parent", parent("")),
		biList("parent without collection", "parent", parent("acme")),
		biList("parent misspelt", "parent", parent("tenant/acme")),
		biList("parent upper case", "parent", parent("tenants/ACME")),
		biList("parent is a provider", "parent", parent("tenants/acme/providers/docs")),
		biList("parent overlong", "parent", parent("tenants/"+strings.Repeat("a", 64))),
		biList("parent control character", "parent", parent("tenants/ac\x00me")),
		biList("page size -1", "page_size", func(_ *biWorld, r *mcpauthv1.ListAuditEventsRequest) { r.PageSize = -1 }),
		biList("page size 501", "page_size", func(_ *biWorld, r *mcpauthv1.ListAuditEventsRequest) { r.PageSize = 501 }),
		biList("malformed page token", "page_token", func(_ *biWorld, r *mcpauthv1.ListAuditEventsRequest) { r.PageToken = "!!not-a-token!!" }),
		biList("base64 garbage page token", "page_token", func(_ *biWorld, r *mcpauthv1.ListAuditEventsRequest) { r.PageToken = "eyJ2IjoyfQ" }),
		biList("truncated page token", "page_token", func(w *biWorld, r *mcpauthv1.ListAuditEventsRequest) { r.PageToken = w.Token[:len(w.Token)/2] }),
		biList("page token of another tenant", "page_token", withToken(func(r *mcpauthv1.ListAuditEventsRequest) { r.Parent = "tenants/other" })),
		biList("page token of another provider filter", "page_token", withToken(func(r *mcpauthv1.ListAuditEventsRequest) { r.Provider = "tenants/acme/providers/docs" })),
		biList("page token of another event_type filter", "page_token", withToken(func(r *mcpauthv1.ListAuditEventsRequest) { r.EventType = "provider.created" })),
		biList("page token of another type filter", "page_token", withToken(func(r *mcpauthv1.ListAuditEventsRequest) {
			r.Type = mcpauthv1.AuditEventType_AUDIT_EVENT_TYPE_PROVIDER_CREATED
		})),
		biList("provider without collection", "provider", func(_ *biWorld, r *mcpauthv1.ListAuditEventsRequest) { r.Provider = "docs" }),
		biList("provider empty id", "provider", func(_ *biWorld, r *mcpauthv1.ListAuditEventsRequest) { r.Provider = "tenants/acme/providers/" }),
		biList("provider upper case", "provider", func(_ *biWorld, r *mcpauthv1.ListAuditEventsRequest) { r.Provider = "tenants/acme/providers/Docs" }),
		biList("provider extra segment", "provider", func(_ *biWorld, r *mcpauthv1.ListAuditEventsRequest) { r.Provider = "tenants/acme/providers/docs/x" }),
		biList("event_type over 64", "event_type", func(_ *biWorld, r *mcpauthv1.ListAuditEventsRequest) { r.EventType = strings.Repeat("e", 65) }),
		biList("unknown type enum", "type", func(_ *biWorld, r *mcpauthv1.ListAuditEventsRequest) { r.Type = 9999 }),
		biList("negative type enum", "type", func(_ *biWorld, r *mcpauthv1.ListAuditEventsRequest) { r.Type = -1 }),
		biList("type disagreeing with event_type", "type", func(_ *biWorld, r *mcpauthv1.ListAuditEventsRequest) {
			r.EventType, r.Type = "provider.deleted", mcpauthv1.AuditEventType_AUDIT_EVENT_TYPE_PROVIDER_CREATED
		}),
		{name: "ListAuditEvents/without audit.read", code: codes.PermissionDenied, reader: true, audits: []string{"permission.denied"},
			call: func(ctx context.Context, w *biWorld) error {
				_, err := w.S.Audit().ListAuditEvents(ctx, &mcpauthv1.ListAuditEventsRequest{Parent: "tenants/acme"})
				return err
			}},
		{name: "ListAuditEvents/bad parent before permission", code: codes.InvalidArgument, field: "parent", reader: true,
			call: func(ctx context.Context, w *biWorld) error {
				_, err := w.S.Audit().ListAuditEvents(ctx, &mcpauthv1.ListAuditEventsRequest{Parent: "tenants/"})
				return err
			}},
	}
	biRun(t, w, cases)
}

// biCall builds a CallTool case on the authorized provider.
func biCall(name, field, tool string, args *structpb.Struct) biRPC {
	return biInvalid("CallTool/"+name, field, func(ctx context.Context, w *biWorld) error {
		_, err := w.S.Tools().CallTool(ctx, &mcpauthv1.CallToolRequest{Name: w.Name, Tool: tool, Arguments: args})
		return err
	})
}

// TestBadInputTools: the MCPToolService RPCs refuse bad input without a
// change or a request to the MCP server.
func TestBadInputTools(t *testing.T) {
	t.Parallel()
	w := biSetup(t)
	tc := w.S.Tools()
	big, err := structpb.NewStruct(map[string]any{"text": strings.Repeat("x", 1<<20)})
	oaMust(t, err)
	cases := []biRPC{
		biCall("empty tool", "tool", "", nil),
		biCall("tool over 128", "tool", strings.Repeat("t", 129), nil),
		biCall("tool with NUL", "tool", "ec\x00ho", nil),
		biCall("tool with newline", "tool", "echo\n", nil),
		biCall("tool with DEL", "tool", "echo\x7f", nil),
		biCall("tool with C1 control", "tool", "echo\u0085", nil),
		// Over the 1 MiB message limit: refused by the transport, with
		// RESOURCE_EXHAUSTED and no field, before the service sees it.
		{name: "CallTool/arguments over 1 MiB", code: codes.ResourceExhausted, call: func(ctx context.Context, w *biWorld) error {
			_, err := tc.CallTool(ctx, &mcpauthv1.CallToolRequest{Name: w.Name, Tool: "echo", Arguments: big})
			return err
		}},
		{name: "CallTool/without tools.call", code: codes.PermissionDenied, reader: true, audits: []string{"permission.denied"},
			call: func(ctx context.Context, w *biWorld) error {
				_, err := tc.CallTool(ctx, &mcpauthv1.CallToolRequest{Name: w.Name, Tool: "echo"})
				return err
			}},
		{name: "RefreshTools/without tools.call", code: codes.PermissionDenied, reader: true, audits: []string{"permission.denied"},
			call: func(ctx context.Context, w *biWorld) error {
				_, err := tc.RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: w.Name})
				return err
			}},
	}
	cases = append(cases, biNameCases("RefreshTools", func(ctx context.Context, w *biWorld, name string) error {
		_, err := tc.RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name})
		return err
	})...)
	cases = append(cases, biNameCases("ListTools", func(ctx context.Context, w *biWorld, name string) error {
		_, err := tc.ListTools(ctx, &mcpauthv1.ListToolsRequest{Name: name})
		return err
	})...)
	cases = append(cases, biNameCases("CallTool", func(ctx context.Context, w *biWorld, name string) error {
		_, err := tc.CallTool(ctx, &mcpauthv1.CallToolRequest{Name: name, Tool: "echo"})
		return err
	})...)
	biRun(t, w, cases)
}

// biRoute is one refused browser request: the path and query, the status
// and the reason code the page shows, and the audit events it writes.
type biRoute struct {
	name   string
	target string
	code   int
	reason string
	audits []string
}

// TestBadInputBrowser: the authorize and callback routes refuse bad input
// with a no-store page naming the reason, without a change or an outbound
// request; the pending flow stays usable.
func TestBadInputBrowser(t *testing.T) {
	t.Parallel()
	w := biSetup(t)
	q := w.Callback.Query()
	state, code, iss := q.Get("state"), q.Get("code"), q.Get("iss")
	enc := url.QueryEscape
	cases := []biRoute{
		{"authorize/unknown", "/v1/oauth/authorize/unknown-flow", http.StatusBadRequest, "FLOW_EXPIRED_OR_USED", nil},
		{"authorize/overlong", "/v1/oauth/authorize/" + strings.Repeat("a", 4096), http.StatusBadRequest, "FLOW_EXPIRED_OR_USED", nil},
		{"authorize/live handle altered", "/v1/oauth/authorize/" + w.Handle[:len(w.Handle)-1] + "x", http.StatusBadRequest, "FLOW_EXPIRED_OR_USED", nil},
		{"authorize/live handle with suffix", "/v1/oauth/authorize/" + w.Handle + "x", http.StatusBadRequest, "FLOW_EXPIRED_OR_USED", nil},
		{"authorize/NUL", "/v1/oauth/authorize/a%00b", http.StatusBadRequest, "FLOW_EXPIRED_OR_USED", nil},
		{"authorize/escaped slash", "/v1/oauth/authorize/a%2Fb", http.StatusBadRequest, "FLOW_EXPIRED_OR_USED", nil},
		{"authorize/markup", "/v1/oauth/authorize/%3Cscript%3Ealert(1)%3C%2Fscript%3E", http.StatusBadRequest, "FLOW_EXPIRED_OR_USED", nil},
		{"authorize/bidi and spaces", "/v1/oauth/authorize/%E2%80%AE%20x", http.StatusBadRequest, "FLOW_EXPIRED_OR_USED", nil},
		{"authorize/redis glob", "/v1/oauth/authorize/*", http.StatusBadRequest, "FLOW_EXPIRED_OR_USED", nil},
	}
	for _, path := range []string{callbackPath, "/console/api/mcp/oauth/callback"} {
		cb := func(query string) string { return path + "?" + query }
		cases = append(cases,
			biRoute{path + "/no parameters", cb(""), http.StatusBadRequest, "MISSING_STATE", nil},
			biRoute{path + "/code without state", cb("code=" + enc(code) + "&iss=" + enc(iss)), http.StatusBadRequest, "MISSING_STATE", nil},
			biRoute{path + "/empty state", cb("state=&code=" + enc(code)), http.StatusBadRequest, "MISSING_STATE", nil},
			biRoute{path + "/overlong state", cb("state=" + strings.Repeat("s", 513) + "&code=" + enc(code)), http.StatusBadRequest, "MISSING_STATE", nil},
			biRoute{path + "/overlong live state", cb("state=" + enc(state+strings.Repeat("s", 513)) + "&code=" + enc(code)), http.StatusBadRequest, "MISSING_STATE", nil},
			biRoute{path + "/unknown state", cb("state=unknown-state&code=" + enc(code) + "&iss=" + enc(iss)), http.StatusBadRequest, "STATE_INVALID", nil},
			biRoute{path + "/redis glob state", cb("state=*&code=x"), http.StatusBadRequest, "STATE_INVALID", nil},
			biRoute{path + "/error without state", cb("error=access_denied&error_description=no"), http.StatusBadRequest, "MISSING_STATE", nil},
			biRoute{path + "/error with unknown state", cb("error=access_denied&state=unknown"), http.StatusBadRequest, "STATE_INVALID", nil},
			biRoute{path + "/repeated state", cb("state=" + enc(state) + "&state=" + enc(state) + "&code=" + enc(code)), http.StatusBadRequest, "DUPLICATE_PARAMETER", nil},
			biRoute{path + "/repeated code", cb("state=" + enc(state) + "&code=" + enc(code) + "&code=x&iss=" + enc(iss)), http.StatusBadRequest, "DUPLICATE_PARAMETER", nil},
			biRoute{path + "/repeated iss", cb("state=" + enc(state) + "&code=" + enc(code) + "&iss=" + enc(iss) + "&iss=https://evil.example"), http.StatusBadRequest, "DUPLICATE_PARAMETER", nil},
			biRoute{path + "/repeated error", cb("state=" + enc(state) + "&error=a&error=b"), http.StatusBadRequest, "DUPLICATE_PARAMETER", nil},
			biRoute{path + "/repeated parameters without state", cb("code=a&code=b"), http.StatusBadRequest, "DUPLICATE_PARAMETER", nil},
			// The live state from a browser without the flow cookie: refused,
			// and documented to write oauth.callback.failed; the flow stays.
			biRoute{path + "/live state in another browser", cb(w.Callback.RawQuery), http.StatusBadRequest, "BROWSER_MISMATCH", []string{"oauth.callback.failed"}},
		)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := w.snap(t)
			b := NewBrowser(t)
			b.Client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
			p := oaOpen(t, b, w.S.HTTPURL+tc.target)
			if p.Code != tc.code || p.Reason != tc.reason {
				t.Errorf("got %d reason %q (title %q), want %d %s", p.Code, p.Reason, p.Title, tc.code, tc.reason)
			}
			if cc := p.Header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", cc)
			}
			if loc := p.Header.Get("Location"); loc != "" {
				t.Errorf("refusal redirects to %s", loc)
			}
			w.unchanged(t, before, tc.audits...)
		})
	}
	// Nothing above consumed the pending flow: its own browser can still
	// open the authorize link.
	t.Run("pending flow intact", func(t *testing.T) {
		b := NewBrowser(t)
		b.Client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		p := oaOpen(t, b, w.S.HTTPURL+"/v1/oauth/authorize/"+w.Handle)
		if p.Code != http.StatusFound {
			t.Fatalf("authorize link after the refusals: %d reason %q", p.Code, p.Reason)
		}
	})
}
