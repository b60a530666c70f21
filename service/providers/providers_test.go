package providers

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/reqid"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/service/servicetest"
	"github.com/mcpauth/mcpauth/service/vault"
)

func TestNew(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for name, drop := range map[string]func(*Deps){
		"store":  func(d *Deps) { d.Store = nil },
		"cipher": func(d *Deps) { d.Cipher = nil },
		"audit":  func(d *Deps) { d.Audit = nil },
		"log":    func(d *Deps) { d.Log = nil },
	} {
		d := e.deps
		drop(&d)
		if _, err := New(d); err == nil {
			t.Errorf("New without %s succeeded", name)
		}
	}
	d := e.deps
	d.Now, d.Revoker, d.Prober = nil, nil, nil
	svc, err := New(d)
	if err != nil {
		t.Fatalf("New without the optional dependencies: %v", err)
	}
	if svc.now == nil {
		t.Error("Now does not default to the real clock")
	}
}

func TestCreate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := reqid.With(caller.WithIdentity(context.Background(), caller.NewIdentity("alice", []string{"t1"}, nil)), "req-1")

	v, err := e.svc.Create(ctx, CreateInput{Tenant: "t1", ID: "linear", Fields: linear()})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	fp := func(value string) string { return e.keys.ShortFingerprint("t1", vault.PurposeHeader, []byte(value)) }
	stamp := epoch.Truncate(time.Microsecond)
	want := &View{Tenant: "t1", ID: "linear", DisplayName: "Linear", ServerIdentifier: "linear",
		MaskedServerURL: "https://mcp.linear.app/******", Icon: "https://linear.app/icon.png",
		Timeout: DefaultTimeout, SSEReadTimeout: DefaultSSEReadTimeout, Status: domain.StatusUnauthorized,
		Headers:     []HeaderInfo{{Name: "X-Api-Key", ValueSet: true, Fingerprint: fp("hdr-secret")}, {Name: "X-Empty", Fingerprint: fp("")}},
		OAuthClient: &OAuthClientView{ClientID: "client-1", ClientSecretSet: true, Scopes: []string{"read"}},
		CreateTime:  stamp, UpdateTime: stamp, Etag: `"v1"`}
	if !reflect.DeepEqual(v, want) {
		t.Errorf("view = %+v\nwant   %+v", v, want)
	}
	if got, err := e.svc.Get(ctx, "t1", "linear"); err != nil || !reflect.DeepEqual(got, v) {
		t.Errorf("Get = %+v, %v; want the view Create returned", got, err)
	}
	if shown := fmt.Sprintf("%+v %+v %+v", *v, v.Headers, *v.OAuthClient); strings.Contains(shown, "hdr-secret") || strings.Contains(shown, "client-secret") || strings.Contains(shown, "url-secret") {
		t.Errorf("the view shows a secret: %s", shown)
	}

	row := e.row(t, "t1", "linear")
	for name, ct := range map[string][]byte{"server_url": row.ServerURL, "headers": row.Headers, "client_secret": row.ClientSecret} {
		if len(ct) == 0 || strings.Contains(string(ct), "secret") {
			t.Errorf("stored %s is not a ciphertext: %q", name, ct)
		}
	}
	wantHash := e.keys.Fingerprint("t1", vault.PurposeURL, []byte("https://mcp.linear.app/mcp?key=url-secret"))
	if row.KeyID != 1 || row.URLHash != wantHash || row.ClientID != "client-1" || row.Scopes != `["read"]` ||
		row.Compat != "{}" || row.TimeoutMS != 30000 || row.SSEReadTimeoutMS != 300000 || row.Version != 1 {
		t.Errorf("stored row = %+v", row)
	}
	d, err := vault.OpenProvider(e.keys, row)
	if err != nil {
		t.Fatal(err)
	}
	if d.Headers["X-Api-Key"] != "hdr-secret" || d.ClientSecret.Reveal() != "client-secret" {
		t.Errorf("stored secrets open as %v and %q", d.Headers, d.ClientSecret.Reveal())
	}

	wantEvent := repository.AuditEvent{ID: 1, TenantID: "t1", CreatedAt: epoch, EventType: "provider.created", Actor: "alice",
		ProviderID: "linear", Outcome: int32(domain.OutcomeSuccess), RequestID: "req-1", Details: "{}"}
	events := e.store.Events()
	for i := range events {
		events[i].UID = "" // random idempotency key
	}
	if len(events) != 1 || events[0] != wantEvent {
		t.Errorf("audit = %+v, want %+v", events, wantEvent)
	}
}

func TestCreateGeneratesID(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.create(t, "t1", "", named("a")), e.create(t, "t1", "", named("b"))
	re := regexp.MustCompile(`^p[a-z2-7]{19}$`)
	if !re.MatchString(a.ID) || !re.MatchString(b.ID) || a.ID == b.ID {
		t.Errorf("generated ids %q and %q, want two distinct ids matching %s", a.ID, b.ID, re)
	}
}

func TestCreateCompat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		compat      domain.Compat
		want        domain.Compat
		wantDetails string
	}{
		{"canonical", domain.Compat{ResourceMode: domain.ResourceCanonical},
			domain.Compat{ResourceMode: domain.ResourceCanonical}, "{}"},
		{"override and client_secret_post",
			domain.Compat{ResourceMode: domain.ResourceOverride, ResourceOverride: "https://api.example.com/v1", TokenEndpointAuth: "client_secret_post"},
			domain.Compat{ResourceMode: domain.ResourceOverride, ResourceOverride: "https://api.example.com/v1", TokenEndpointAuth: "client_secret_post"},
			`{"compat.resource":"override","compat.token_endpoint_auth_method":"client_secret_post"}`},
		{"override with a URN", domain.Compat{ResourceMode: domain.ResourceOverride, ResourceOverride: "urn:example:api"},
			domain.Compat{ResourceMode: domain.ResourceOverride, ResourceOverride: "urn:example:api"}, `{"compat.resource":"override"}`},
		{"omit, no PKCE metadata, extra parameters",
			domain.Compat{ResourceMode: domain.ResourceOmit, AllowMissingPKCE: true, TokenEndpointAuth: "none",
				ExtraParams: map[string]string{"audience": "https://api", "prompt": "consent", "x_tenant.id-1": ""}},
			domain.Compat{ResourceMode: domain.ResourceOmit, AllowMissingPKCE: true, TokenEndpointAuth: "none",
				ExtraParams: map[string]string{"audience": "https://api", "prompt": "consent", "x_tenant.id-1": ""}},
			`{"compat.allow_missing_pkce_metadata":"true","compat.extra_authorization_params":"audience,prompt,x_tenant.id-1",` +
				`"compat.resource":"omit","compat.token_endpoint_auth_method":"none"}`},
		{"client_secret_basic", domain.Compat{TokenEndpointAuth: "client_secret_basic"},
			domain.Compat{TokenEndpointAuth: "client_secret_basic"}, `{"compat.token_endpoint_auth_method":"client_secret_basic"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			f := named("p")
			f.Compat = tt.compat
			v := e.create(t, "t1", "p", f)
			if !reflect.DeepEqual(v.Compat, tt.want) {
				t.Errorf("view compat = %+v, want %+v", v.Compat, tt.want)
			}
			if got := vault.ParseCompat(e.row(t, "t1", "p").Compat); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("stored compat = %+v, want %+v", got, tt.want)
			}
			if events := e.eventsOf(domain.EventProviderCreated); len(events) != 1 || events[0].Details != tt.wantDetails {
				t.Errorf("audit = %+v, want details %s", events, tt.wantDetails)
			}
		})
	}
}

func dur(d time.Duration) *time.Duration { return &d }

// invalidCases are bad fields and the field path each must be refused on.
var invalidCases = []struct {
	name   string
	mutate func(f *Fields)
	field  string
}{
	{"no display name", func(f *Fields) { f.DisplayName = "" }, "provider.display_name"},
	{"blank display name", func(f *Fields) { f.DisplayName = " \t " }, "provider.display_name"},
	{"display name with bidi override", func(f *Fields) { f.DisplayName = "evil\u202e" }, "provider.display_name"},
	{"bad server identifier", func(f *Fields) { f.ServerIdentifier = "has space" }, "provider.server_identifier"},
	{"no server url", func(f *Fields) { f.ServerURL = "" }, "provider.server_url"},
	{"ftp server url", func(f *Fields) { f.ServerURL = "ftp://mcp.example.com" }, "provider.server_url"},
	{"server url with userinfo", func(f *Fields) { f.ServerURL = "https://u:p@mcp.example.com" }, "provider.server_url"},
	{"server url with fragment", func(f *Fields) { f.ServerURL = "https://mcp.example.com/#x" }, "provider.server_url"},
	{"denied header", func(f *Fields) { f.Headers = map[string]string{"Host": "x"} }, `provider.headers["Host"]`},
	{"authorization header", func(f *Fields) { f.Headers = map[string]string{"authorization": "Bearer x"} }, `provider.headers["authorization"]`},
	{"header value with newline", func(f *Fields) { f.Headers = map[string]string{"X-A": "a\r\nX-B: b"} }, `provider.headers["X-A"]`},
	{"icon with control character", func(f *Fields) { f.Icon = "a\x07" }, "provider.icon"},
	{"javascript icon", func(f *Fields) { f.Icon = "javascript:alert(1)" }, "provider.icon"},
	{"javascript icon in capitals", func(f *Fields) { f.Icon = "JAVASCRIPT:alert(1)" }, "provider.icon"},
	{"html data icon", func(f *Fields) { f.Icon = "data:text/html,<script>alert(1)</script>" }, "provider.icon"},
	{"svg data icon", func(f *Fields) { f.Icon = "data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+" }, "provider.icon"},
	{"http icon", func(f *Fields) { f.Icon = "http://linear.app/icon.png" }, "provider.icon"},
	{"icon with userinfo", func(f *Fields) { f.Icon = "https://u:p@linear.app/icon.png" }, "provider.icon"},
	{"oversized icon", func(f *Fields) { f.Icon = "https://linear.app/" + strings.Repeat("i", 2048) }, "provider.icon"},
	{"timeout below a second", func(f *Fields) { f.Timeout = dur(999 * time.Millisecond) }, "provider.timeout"},
	{"timeout above ten minutes", func(f *Fields) { f.Timeout = dur(MaxTimeout + 1) }, "provider.timeout"},
	{"zero sse read timeout", func(f *Fields) { f.SSEReadTimeout = dur(0) }, "provider.sse_read_timeout"},
	{"sse read timeout above an hour", func(f *Fields) { f.SSEReadTimeout = dur(MaxSSEReadTimeout + 1) }, "provider.sse_read_timeout"},
	{"client id with space", func(f *Fields) { f.OAuthClient.ClientID = "a b" }, "provider.oauth_client.client_id"},
	{"client id not ASCII", func(f *Fields) { f.OAuthClient.ClientID = "clïent" }, "provider.oauth_client.client_id"},
	{"client id too long", func(f *Fields) { f.OAuthClient.ClientID = strings.Repeat("c", maxClientIDLen+1) }, "provider.oauth_client.client_id"},
	{"client secret too long", func(f *Fields) { f.OAuthClient.ClientSecret = strings.Repeat("s", maxClientSecretLen+1) }, "provider.oauth_client.client_secret"},
	{"client secret with newline", func(f *Fields) { f.OAuthClient.ClientSecret = "s\n" }, "provider.oauth_client.client_secret"},
	{"client secret without client id", func(f *Fields) { f.OAuthClient.ClientID = "" }, "provider.oauth_client.client_id"},
	{"empty scope", func(f *Fields) { f.OAuthClient.Scopes = []string{"read", ""} }, "provider.oauth_client.scopes[1]"},
	{"scope with quote", func(f *Fields) { f.OAuthClient.Scopes = []string{`a"b`} }, "provider.oauth_client.scopes[0]"},
	{"resource override without override mode", func(f *Fields) {
		f.Compat = domain.Compat{ResourceMode: domain.ResourceOmit, ResourceOverride: "https://api"}
	}, "provider.compatibility.resource_override"},
	{"resource override in zero mode", func(f *Fields) { f.Compat.ResourceOverride = "https://api" }, "provider.compatibility.resource_override"},
	{"override mode without override", func(f *Fields) { f.Compat.ResourceMode = domain.ResourceOverride }, "provider.compatibility.resource_override"},
	{"relative resource override", func(f *Fields) {
		f.Compat = domain.Compat{ResourceMode: domain.ResourceOverride, ResourceOverride: "/api"}
	}, "provider.compatibility.resource_override"},
	{"resource override with fragment", func(f *Fields) {
		f.Compat = domain.Compat{ResourceMode: domain.ResourceOverride, ResourceOverride: "https://api#x"}
	}, "provider.compatibility.resource_override"},
	{"resource override too long", func(f *Fields) {
		f.Compat = domain.Compat{ResourceMode: domain.ResourceOverride, ResourceOverride: "https://api/" + strings.Repeat("a", 2048)}
	}, "provider.compatibility.resource_override"},
	{"unknown resource mode", func(f *Fields) { f.Compat.ResourceMode = 9 }, "provider.compatibility.resource_mode"},
	{"unknown token endpoint auth", func(f *Fields) { f.Compat.TokenEndpointAuth = "private_key_jwt" },
		"provider.compatibility.token_endpoint_auth_method"},
	{"too many extra parameters", func(f *Fields) {
		f.Compat.ExtraParams = map[string]string{}
		for i := range maxExtraParams + 1 {
			f.Compat.ExtraParams[fmt.Sprintf("p%d", i)] = "v"
		}
	}, "provider.compatibility.extra_authorization_params"},
	{"extra parameter without name", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"": "v"} },
		`provider.compatibility.extra_authorization_params[""]`},
	{"extra parameter name with space", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"a b": "v"} },
		`provider.compatibility.extra_authorization_params["a b"]`},
	{"extra parameter name not ASCII", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"é": "v"} },
		`provider.compatibility.extra_authorization_params["é"]`},
	{"extra parameter name too long", func(f *Fields) { f.Compat.ExtraParams = map[string]string{strings.Repeat("n", 65): "v"} },
		fmt.Sprintf("provider.compatibility.extra_authorization_params[%q]", strings.Repeat("n", 64))}, // cut in the field path
	{"protocol parameter", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"redirect_uri": "https://evil"} },
		`provider.compatibility.extra_authorization_params["redirect_uri"]`},
	{"protocol parameter in another case", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"Code_Challenge": "x"} },
		`provider.compatibility.extra_authorization_params["Code_Challenge"]`},
	{"response_mode", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"response_mode": "form_post"} },
		`provider.compatibility.extra_authorization_params["response_mode"]`},
	{"response_mode in capitals", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"RESPONSE_MODE": "fragment"} },
		`provider.compatibility.extra_authorization_params["RESPONSE_MODE"]`},
	{"JARM response_mode", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"Response_Mode": "query.jwt"} },
		`provider.compatibility.extra_authorization_params["Response_Mode"]`},
	{"request_uri", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"Request_URI": "urn:x"} },
		`provider.compatibility.extra_authorization_params["Request_URI"]`},
	{"request object", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"request": "eyJ"} },
		`provider.compatibility.extra_authorization_params["request"]`},
	{"fixed nonce", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"nonce": "n"} },
		`provider.compatibility.extra_authorization_params["nonce"]`},
	{"dpop_jkt", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"dpop_jkt": "k"} },
		`provider.compatibility.extra_authorization_params["dpop_jkt"]`},
	{"client secret in the URL", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"client_secret": "s"} },
		`provider.compatibility.extra_authorization_params["client_secret"]`},
	{"client assertion type", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"Client_Assertion_Type": "x"} },
		`provider.compatibility.extra_authorization_params["Client_Assertion_Type"]`},
	{"extra parameter value too long", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"audience": strings.Repeat("v", 513)} },
		`provider.compatibility.extra_authorization_params["audience"]`},
	{"extra parameter value with newline", func(f *Fields) { f.Compat.ExtraParams = map[string]string{"audience": "a\nb"} },
		`provider.compatibility.extra_authorization_params["audience"]`},
}

// TestCreateInvalid checks that every bad field is refused on its exact
// path before anything is read or written.
func TestCreateInvalid(t *testing.T) {
	t.Parallel()
	cases := append(invalidCases[:len(invalidCases):len(invalidCases)], struct {
		name   string
		mutate func(f *Fields)
		field  string
	}{"bad provider id", nil, "provider_id"})
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			in := CreateInput{Tenant: "t1", ID: "linear", Fields: linear(), ValidateConnectivity: true}
			if tt.mutate != nil {
				tt.mutate(&in.Fields)
			} else {
				in.ID = "Not_An_ID"
			}
			_, err := e.svc.Create(context.Background(), in)
			wantErr(t, err, apperr.KindInvalidArgument, tt.field)
			if n := e.store.Calls("FindProviderByURLHash") + e.store.Calls("CreateProvider"); n != 0 {
				t.Errorf("the store was used %d times for a bad provider", n)
			}
			if len(e.prober.probed) != 0 || len(e.store.Events()) != 0 {
				t.Errorf("probes %v and events %v for a bad provider", e.prober.probed, e.store.Events())
			}
		})
	}
}

// TestCreateConflicts checks uniqueness within a tenant: id, display name,
// server identifier and server URL (after normalisation).
func TestCreateConflicts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, tenant, id string
		fields           func() Fields
		field            string
		// storeCreates counts the CreateProvider calls, the first
		// provider's included: the URL check refuses before the store.
		storeCreates int
	}{
		{"same id", "t1", "linear", func() Fields { return named("other") }, "provider_id", 2},
		{"same display name", "t1", "other", func() Fields { f := named("other"); f.DisplayName = "Linear"; return f }, "provider.display_name", 2},
		{"same server identifier", "t1", "other", func() Fields { f := named("other"); f.ServerIdentifier = "linear"; return f }, "provider.server_identifier", 2},
		{"same display name in another case", "t1", "other", func() Fields { f := named("other"); f.DisplayName = "LINEAR"; return f }, "provider.display_name", 2},
		{"same display name trimmed, in another case", "t1", "other", func() Fields { f := named("other"); f.DisplayName = " lInEaR "; return f }, "provider.display_name", 2},
		{"same server identifier in another case", "t1", "other", func() Fields { f := named("other"); f.ServerIdentifier = "Linear"; return f }, "provider.server_identifier", 2},
		{"same server url spelled differently", "t1", "other", func() Fields {
			f := named("other")
			f.ServerURL = "HTTPS://MCP.Linear.App:443/mcp/?key=url-secret"
			return f
		}, "provider.server_url", 1},
		{"everything the same in another tenant", "t2", "linear", linear, "", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.create(t, "t1", "linear", linear())
			_, err := e.svc.Create(context.Background(), CreateInput{Tenant: tt.tenant, ID: tt.id, Fields: tt.fields()})
			wantEvents := 2
			if tt.field != "" {
				wantErr(t, err, apperr.KindAlreadyExists, tt.field)
				wantEvents = 1
			} else if err != nil {
				t.Fatalf("Create: %v", err)
			}
			if got := e.store.Calls("CreateProvider"); got != tt.storeCreates {
				t.Errorf("CreateProvider called %d times, want %d", got, tt.storeCreates)
			}
			if got := len(e.store.Events()); got != wantEvents {
				t.Errorf("%d audit events, want %d", got, wantEvents)
			}
		})
	}
}

// TestCreateConnectivityEgressAudited checks that the probe runs in the
// tenant's audit scope: a request the egress guard blocks is filed as an
// egress.blocked event of the tenant, under the requested provider id.
func TestCreateConnectivityEgressAudited(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	auditor := e.deps.Audit.(*audit.Auditor)
	block := audit.EgressBlockHook(auditor, metrics.New())
	e.prober.onProbe = func(ctx context.Context) { block(ctx, "10.1.2.3", "private address") }
	e.prober.err = apperr.FailedPrecondition(domain.ReasonEgressBlocked, "the MCP server's address is not allowed")
	_, err := e.svc.Create(context.Background(), CreateInput{Tenant: "t1", ID: "linear", Fields: linear(), ValidateConnectivity: true})
	wantErr(t, err, apperr.KindFailedPrecondition, "")
	auditor.Close()
	events := e.eventsOf(domain.EventEgressBlocked)
	if len(events) != 1 || events[0].TenantID != "t1" || events[0].ProviderID != "linear" || events[0].Reason != domain.ReasonEgressBlocked ||
		!strings.Contains(events[0].Details, "10.1.2.3") {
		t.Fatalf("egress.blocked events = %+v, want one for t1/linear", events)
	}
	if n := e.store.Calls("CreateProvider"); n != 0 || len(e.eventsOf(domain.EventProviderCreated)) != 0 {
		t.Errorf("a blocked probe stored %d providers", n)
	}
}

// TestURLUniqueAcrossKeys checks that a URL hashed under an older key is
// still found once a new primary key hashes new URLs.
func TestURLUniqueAcrossKeys(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	spec1 := genSpec(t, 1)
	old := parseKeys(t, spec1)
	first := e.with(t, old)
	if _, err := first.Create(context.Background(), CreateInput{Tenant: "t1", ID: "linear", Fields: linear()}); err != nil {
		t.Fatal(err)
	}
	rotated := e.with(t, parseKeys(t, genSpec(t, 2), spec1))
	f := named("other")
	f.ServerURL = "https://mcp.linear.app/mcp/?key=url-secret"
	_, err := rotated.Create(context.Background(), CreateInput{Tenant: "t1", ID: "other", Fields: f})
	wantErr(t, err, apperr.KindAlreadyExists, "provider.server_url")

	if _, err := rotated.Create(context.Background(), CreateInput{Tenant: "t1", ID: "other", Fields: named("other")}); err != nil {
		t.Fatal(err)
	}
	_, err = rotated.Update(context.Background(), UpdateInput{Tenant: "t1", ID: "other", Fields: f, Paths: []string{PathServerURL}})
	wantErr(t, err, apperr.KindAlreadyExists, "provider.server_url")
}

// TestCreateConnectivity checks the optional probe: it runs before
// anything is stored, with the full URL and the headers.
func TestCreateConnectivity(t *testing.T) {
	t.Parallel()
	unreachable := apperr.FailedPrecondition(domain.ReasonServerUnreachable, "the MCP server did not answer")
	tests := []struct {
		name         string
		noProber     bool
		probeErr     error
		authRequired bool
		statusFails  bool
		validate     bool
		wantReason   string
		wantProbes   int
		wantStatus   domain.AuthStatus
	}{
		{name: "server answers without asking for authorization", validate: true, wantProbes: 1, wantStatus: domain.StatusNotRequired},
		{name: "server asks for authorization", validate: true, authRequired: true, wantProbes: 1, wantStatus: domain.StatusUnauthorized},
		{name: "status cannot be recorded", validate: true, statusFails: true, wantProbes: 1, wantStatus: domain.StatusUnauthorized},
		{name: "probe fails", validate: true, probeErr: unreachable, wantReason: domain.ReasonServerUnreachable, wantProbes: 1},
		{name: "no prober", validate: true, noProber: true, wantReason: domain.ReasonProbeUnavailable},
		{name: "not asked for", probeErr: unreachable, wantStatus: domain.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, dropIf(tt.noProber, noProber))
			e.prober.err, e.prober.authRequired = tt.probeErr, tt.authRequired
			if tt.statusFails {
				e.store.FailOn("SetGrantStatus", errors.New("database unreachable"))
			}
			v, err := e.svc.Create(context.Background(), CreateInput{Tenant: "t1", ID: "linear", Fields: linear(), ValidateConnectivity: tt.validate})
			stored := e.store.Calls("CreateProvider")
			if tt.wantReason != "" {
				wantErr(t, err, apperr.KindFailedPrecondition, "")
				if ae, _ := apperr.As(err); ae.Reason != tt.wantReason {
					t.Errorf("reason = %q, want %q", ae.Reason, tt.wantReason)
				}
				if stored != 0 || len(e.store.Events()) != 0 {
					t.Errorf("stored %d providers and %d events after a failed probe", stored, len(e.store.Events()))
				}
			} else if err != nil || stored != 1 {
				t.Fatalf("Create = %v, %d stored", err, stored)
			} else {
				e.store.FailOn("SetGrantStatus", nil)
				got, err := e.svc.Get(context.Background(), "t1", "linear")
				if err != nil || v.Status != tt.wantStatus || got.Status != tt.wantStatus {
					t.Errorf("status created %v, read %v (%v); want %v", v.Status, got.Status, err, tt.wantStatus)
				}
			}
			if len(e.prober.probed) != tt.wantProbes {
				t.Fatalf("probes = %+v, want %d", e.prober.probed, tt.wantProbes)
			}
			if tt.wantProbes > 0 {
				want := probe{"https://mcp.linear.app/mcp?key=url-secret", map[string]string{"X-Api-Key": "hdr-secret", "X-Empty": ""}}
				if got := e.prober.probed[0]; !reflect.DeepEqual(got, want) {
					t.Errorf("probed %+v, want %+v", got, want)
				}
			}
		})
	}
}

func TestCreateStoreFailures(t *testing.T) {
	t.Parallel()
	for _, method := range []string{"FindProviderByURLHash", "CreateProvider"} {
		t.Run(method, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.store.FailOn(method, servicetest.ErrInjected)
			_, err := e.svc.Create(context.Background(), CreateInput{Tenant: "t1", ID: "linear", Fields: linear()})
			if !errors.Is(err, servicetest.ErrInjected) {
				t.Errorf("err = %v, want the store's", err)
			}
			if len(e.store.Events()) != 0 {
				t.Errorf("audit = %+v after a failed create", e.store.Events())
			}
		})
	}
}

func TestGetAndList(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, id := range []string{"e", "a", "d", "b", "c"} {
		e.create(t, "t1", id, named(id))
	}
	e.create(t, "t2", "a", named("a"))
	ctx := context.Background()

	_, err := e.svc.Get(ctx, "t1", "zz")
	wantErr(t, err, apperr.KindNotFound, "")
	_, err = e.svc.Get(ctx, "t3", "a")
	wantErr(t, err, apperr.KindNotFound, "")

	pages := []struct {
		after string
		limit int
		want  []string
		more  bool
	}{
		{"", 2, []string{"a", "b"}, true},
		{"b", 2, []string{"c", "d"}, true},
		{"d", 2, []string{"e"}, false},
		{"", 5, []string{"a", "b", "c", "d", "e"}, false},
		{"e", 5, []string{}, false},
	}
	for _, p := range pages {
		views, more, err := e.svc.List(ctx, "t1", p.after, p.limit)
		if err != nil {
			t.Fatalf("List(after %q, %d): %v", p.after, p.limit, err)
		}
		got := []string{}
		for _, v := range views {
			got = append(got, v.ID)
			if v.Tenant != "t1" || v.MaskedServerURL != "https://"+v.ID+".example.com/******" {
				t.Errorf("listed %+v", v)
			}
		}
		if !reflect.DeepEqual(got, p.want) || more != p.more {
			t.Errorf("List(after %q, %d) = %v, more %v; want %v, more %v", p.after, p.limit, got, more, p.want, p.more)
		}
	}

	e.store.FailOn("ListProviders", servicetest.ErrInjected)
	if _, _, err := e.svc.List(ctx, "t1", "", 2); !errors.Is(err, servicetest.ErrInjected) {
		t.Errorf("List = %v, want the store's error", err)
	}
}

// TestUnreadableRow checks that a stored row whose ciphertexts do not open
// is an internal error, never a view with holes.
func TestUnreadableRow(t *testing.T) {
	t.Parallel()
	foreign := parseKeys(t, genSpec(t, 9))
	tests := []struct {
		name    string
		corrupt func(e *env, row *repository.Provider)
		paths   []string
	}{
		{"url too short to be a ciphertext", func(e *env, r *repository.Provider) { r.ServerURL = []byte("x") }, []string{PathServerURL}},
		{"url of another provider", func(e *env, r *repository.Provider) {
			r.ServerURL = sealFor(t, e.keys, &repository.Provider{TenantID: r.TenantID, ID: "other"}, vault.FieldServerURL, "https://x")
		}, []string{PathDisplayName}},
		{"headers under an unknown key", func(e *env, r *repository.Provider) { r.Headers = sealFor(t, foreign, r, vault.FieldHeaders, "{}") }, []string{PathDisplayName}},
		{"headers too short", func(e *env, r *repository.Provider) { r.Headers = []byte("x") }, []string{PathDisplayName}},
		{"client secret under an unknown key", func(e *env, r *repository.Provider) {
			r.ClientSecret = sealFor(t, foreign, r, vault.FieldClientSecret, "s")
		},
			[]string{PathIcon}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.create(t, "t1", "linear", linear())
			e.rewriteRow(t, "t1", "linear", func(r *repository.Provider) { tt.corrupt(e, r) })
			ctx := context.Background()
			_, err := e.svc.Get(ctx, "t1", "linear")
			wantErr(t, err, apperr.KindInternal, "")
			_, _, err = e.svc.List(ctx, "t1", "", 10)
			wantErr(t, err, apperr.KindInternal, "")
			f := linear()
			f.ServerURL = "https://new.example.com/mcp"
			_, err = e.svc.Update(ctx, UpdateInput{Tenant: "t1", ID: "linear", Fields: f, Paths: tt.paths})
			wantErr(t, err, apperr.KindInternal, "")
			// One UpdateProvider: rewriteRow's.
			if n := e.store.Calls("UpdateProvider") + e.store.Calls("UpdateProviderResettingCredentials"); n != 1 || len(e.store.Events()) != 1 {
				t.Errorf("an update of an unreadable row was stored (%d writes) or audited (%v)", n, e.store.Events())
			}
		})
	}
}

func TestDelete(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		etag        string
		noRevoker   bool
		confirm     bool
		wantRevoked bool
		wantErr     apperr.Kind
	}{
		{name: "revoked at the server", confirm: true, wantRevoked: true},
		{name: "matching etag", etag: `"v1"`, confirm: true, wantRevoked: true},
		{name: "server did not confirm", confirm: false},
		{name: "no revoker", noRevoker: true},
		{name: "stale etag", etag: `"v0"`, confirm: true, wantErr: apperr.KindAborted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, dropIf(tt.noRevoker, noRevoker))
			e.revoker.confirm = tt.confirm
			e.create(t, "t1", "linear", linear())
			e.create(t, "t1", "other", named("other"))
			e.authorize(t, "t1", "linear")

			revoked, err := e.svc.Delete(context.Background(), "t1", "linear", tt.etag)
			if tt.wantErr != 0 {
				wantErr(t, err, tt.wantErr, "")
				e.row(t, "t1", "linear")
				if len(e.revoker.revocations()) != 0 || len(e.eventsOf(domain.EventProviderDeleted)) != 0 {
					t.Errorf("a refused delete revoked (%v) or was audited", e.revoker.revocations())
				}
				return
			}
			if err != nil || revoked != tt.wantRevoked {
				t.Fatalf("Delete = %v, %v; want %v", revoked, err, tt.wantRevoked)
			}
			_, err = e.store.GetProvider(context.Background(), "t1", "linear")
			wantErr(t, err, apperr.KindNotFound, "")
			if g, r, tl := e.held("t1", "linear"); g || r || tl {
				t.Errorf("grant %v, registration %v, tools %v left after delete", g, r, tl)
			}
			e.row(t, "t1", "other")
			if want := []revocation{{"t1", "linear", true}}; !tt.noRevoker && !reflect.DeepEqual(e.revoker.revocations(), want) {
				t.Errorf("revocations = %+v, want %+v (before the grant was dropped)", e.revoker.revocations(), want)
			}
			events := e.eventsOf(domain.EventProviderDeleted)
			// The event commits with the deletion, before the server is
			// asked to revoke: its answer is the call's result.
			wantDetails := "{}"
			if len(events) != 1 || events[0].ProviderID != "linear" || events[0].Details != wantDetails {
				t.Errorf("audit = %+v, want one deletion with %s", events, wantDetails)
			}
		})
	}
}

func TestDeleteFailures(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.create(t, "t1", "linear", linear())
	_, err := e.svc.Delete(context.Background(), "t1", "nope", "")
	wantErr(t, err, apperr.KindNotFound, "")

	e.store.FailOn("DeleteProvider", servicetest.ErrInjected)
	if _, err := e.svc.Delete(context.Background(), "t1", "linear", ""); !errors.Is(err, servicetest.ErrInjected) {
		t.Errorf("Delete = %v, want the store's error", err)
	}
	e.row(t, "t1", "linear")
	if got := len(e.eventsOf(domain.EventProviderDeleted)); got != 0 {
		t.Errorf("%d deletions audited after a failed delete", got)
	}
}

// sealFor seals v for row's tenant, provider and field with k.
func sealFor(tb testing.TB, k *keyring.Keyring, row *repository.Provider, field, v string) []byte {
	tb.Helper()
	ct, err := k.Seal(keyring.Scope{Tenant: row.TenantID, Provider: row.ID, Field: field}, []byte(v))
	if err != nil {
		tb.Fatal(err)
	}
	return ct
}
