package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// provBadInput is one invalid request.
type provBadInput struct {
	name  string
	field string
	call  func(ctx context.Context, pc mcpauthv1.MCPProviderServiceClient) error
}

// provBadCreate builds a case that creates a valid provider after edit.
func provBadCreate(name, field string, edit func(*mcpauthv1.CreateProviderRequest)) provBadInput {
	return provBadInput{name: "create/" + name, field: field, call: func(ctx context.Context, pc mcpauthv1.MCPProviderServiceClient) error {
		req := &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme", ProviderId: "new", Provider: &mcpauthv1.Provider{
			DisplayName: "New", ServerIdentifier: "new", ServerUrl: "https://new.example.com/mcp",
			Headers: map[string]string{"X-Ok": "fine"}}}
		edit(req)
		_, err := pc.CreateProvider(ctx, req)
		return err
	}}
}

// provBadUpdate builds a case that updates the provider "base" with p
// (name filled in) and paths.
func provBadUpdate(name, field string, paths []string, p *mcpauthv1.Provider) provBadInput {
	return provBadInput{name: "update/" + name, field: field, call: func(ctx context.Context, pc mcpauthv1.MCPProviderServiceClient) error {
		p := proto.Clone(p).(*mcpauthv1.Provider)
		if p.Name == "" {
			p.Name = "tenants/acme/providers/base"
		}
		var mask *fieldmaskpb.FieldMask
		if paths != nil {
			mask = &fieldmaskpb.FieldMask{Paths: paths}
		}
		_, err := pc.UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{Provider: p, UpdateMask: mask})
		return err
	}}
}

// provBadList builds a ListProviders case.
func provBadList(name, field string, req *mcpauthv1.ListProvidersRequest) provBadInput {
	return provBadInput{name: "list/" + name, field: field, call: func(ctx context.Context, pc mcpauthv1.MCPProviderServiceClient) error {
		_, err := pc.ListProviders(ctx, req)
		return err
	}}
}

func provSetURL(u string) func(*mcpauthv1.CreateProviderRequest) {
	return func(r *mcpauthv1.CreateProviderRequest) { r.Provider.ServerUrl = u }
}

func provSetHeaders(h map[string]string) func(*mcpauthv1.CreateProviderRequest) {
	return func(r *mcpauthv1.CreateProviderRequest) { r.Provider.Headers = h }
}

func provBadInputs() []provBadInput {
	manyHeaders := map[string]string{}
	for i := range 33 {
		manyHeaders[fmt.Sprintf("X-H%02d", i)] = "v"
	}
	return []provBadInput{
		provBadCreate("ftp url", "provider.server_url", provSetURL("ftp://example.com/mcp")),
		provBadCreate("url with userinfo", "provider.server_url", provSetURL("https://user:pw@example.com/mcp")),
		provBadCreate("url with user only", "provider.server_url", provSetURL("https://user@example.com/mcp")),
		provBadCreate("url with fragment", "provider.server_url", provSetURL("https://example.com/mcp#frag")),
		provBadCreate("url over 2 KiB", "provider.server_url", provSetURL("https://example.com/"+strings.Repeat("a", 2048))),
		provBadCreate("javascript url", "provider.server_url", provSetURL("javascript:alert(1)")),
		provBadCreate("empty url", "provider.server_url", provSetURL("")),
		provBadCreate("url without host", "provider.server_url", provSetURL("https:///mcp")),
		provBadCreate("relative url", "provider.server_url", provSetURL("/mcp")),
		provBadCreate("url with space", "provider.server_url", provSetURL("https://example.com/a b")),
		provBadCreate("url with bad port", "provider.server_url", provSetURL("https://example.com:99999/")),
		provBadCreate("display name empty", "provider.display_name", func(r *mcpauthv1.CreateProviderRequest) { r.Provider.DisplayName = "" }),
		provBadCreate("display name blank", "provider.display_name", func(r *mcpauthv1.CreateProviderRequest) { r.Provider.DisplayName = "   " }),
		provBadCreate("display name too long", "provider.display_name", func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.DisplayName = strings.Repeat("é", 129)
		}),
		provBadCreate("display name control char", "provider.display_name", func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.DisplayName = "bell\x07name"
		}),
		provBadCreate("display name bidi override", "provider.display_name", func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.DisplayName = "abc\u202etxt"
		}),
		provBadCreate("identifier charset", "provider.server_identifier", func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.ServerIdentifier = "has space"
		}),
		provBadCreate("identifier slash", "provider.server_identifier", func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.ServerIdentifier = "a/b"
		}),
		provBadCreate("identifier too long", "provider.server_identifier", func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.ServerIdentifier = strings.Repeat("a", 65)
		}),
		provBadCreate("identifier empty", "provider.server_identifier", func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.ServerIdentifier = ""
		}),
		provBadCreate("header name with space", `provider.headers["Bad Header"]`, provSetHeaders(map[string]string{"Bad Header": "v"})),
		provBadCreate("header name with colon", `provider.headers["X-A:b"]`, provSetHeaders(map[string]string{"X-A:b": "v"})),
		provBadCreate("header Host", `provider.headers["Host"]`, provSetHeaders(map[string]string{"Host": "evil.example"})),
		provBadCreate("header host lower case", `provider.headers["host"]`, provSetHeaders(map[string]string{"host": "evil.example"})),
		provBadCreate("header Connection", `provider.headers["Connection"]`, provSetHeaders(map[string]string{"Connection": "close"})),
		provBadCreate("header Transfer-Encoding", `provider.headers["Transfer-Encoding"]`, provSetHeaders(map[string]string{"Transfer-Encoding": "chunked"})),
		provBadCreate("header Proxy-Authorization", `provider.headers["Proxy-Authorization"]`, provSetHeaders(map[string]string{"Proxy-Authorization": "Basic x"})),
		provBadCreate("header Authorization", `provider.headers["Authorization"]`, provSetHeaders(map[string]string{"Authorization": "Bearer x"})),
		provBadCreate("header value CR LF", `provider.headers["X-Inject"]`, provSetHeaders(map[string]string{"X-Inject": "v\r\nX-Evil: 1"})),
		provBadCreate("header value LF", `provider.headers["X-Inject"]`, provSetHeaders(map[string]string{"X-Inject": "v\nx"})),
		provBadCreate("too many headers", "provider.headers", provSetHeaders(manyHeaders)),
		provBadCreate("header names equal after canonicalisation", `provider.headers["x-a"]`, provSetHeaders(map[string]string{"X-A": "1", "x-a": "2"})),
		provBadCreate("header value over 8 KiB", `provider.headers["X-Big"]`, provSetHeaders(map[string]string{"X-Big": strings.Repeat("v", 8<<10+1)})),
		provBadCreate("header Mcp-Session-Id", `provider.headers["Mcp-Session-Id"]`, provSetHeaders(map[string]string{"Mcp-Session-Id": "s"})),
		provBadCreate("url with ipv6 zone", "provider.server_url", provSetURL("https://[fe80::1%25eth0]/mcp")),
		provBadCreate("icon over 2 KiB", "provider.icon", func(r *mcpauthv1.CreateProviderRequest) { r.Provider.Icon = strings.Repeat("i", 2049) }),
		provBadCreate("icon javascript", "provider.icon", func(r *mcpauthv1.CreateProviderRequest) { r.Provider.Icon = "JavaScript:alert(1)" }),
		provBadCreate("icon data html", "provider.icon", func(r *mcpauthv1.CreateProviderRequest) { r.Provider.Icon = "data:text/html,<script>alert(1)</script>" }),
		provBadCreate("icon data svg", "provider.icon", func(r *mcpauthv1.CreateProviderRequest) { r.Provider.Icon = "data:image/svg+xml;base64,PHN2Zy8+" }),
		provBadCreate("icon http", "provider.icon", func(r *mcpauthv1.CreateProviderRequest) { r.Provider.Icon = "http://example.com/i.png" }),
		provBadCreate("icon userinfo", "provider.icon", func(r *mcpauthv1.CreateProviderRequest) { r.Provider.Icon = "https://u:p@example.com/i.png" }),
		provBadCreate("too many extra params", "provider.compatibility.extra_authorization_params", func(r *mcpauthv1.CreateProviderRequest) {
			m := map[string]string{}
			for i := range 17 {
				m[fmt.Sprintf("p%d", i)] = "v"
			}
			r.Provider.Compatibility = &mcpauthv1.CompatibilityProfile{ExtraAuthorizationParams: m}
		}),
		provBadCreate("timeout 0.5s", "provider.timeout", func(r *mcpauthv1.CreateProviderRequest) { r.Provider.Timeout = provDur(500 * time.Millisecond) }),
		provBadCreate("timeout 11m", "provider.timeout", func(r *mcpauthv1.CreateProviderRequest) { r.Provider.Timeout = provDur(11 * time.Minute) }),
		provBadCreate("timeout negative", "provider.timeout", func(r *mcpauthv1.CreateProviderRequest) { r.Provider.Timeout = provDur(-time.Second) }),
		provBadCreate("timeout invalid duration", "provider.timeout", func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.Timeout = &durationpb.Duration{Seconds: 1, Nanos: -1}
		}),
		provBadCreate("sse read timeout 2h", "provider.sse_read_timeout", func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.SseReadTimeout = provDur(2 * time.Hour)
		}),
		provBadCreate("provider id upper case", "provider_id", func(r *mcpauthv1.CreateProviderRequest) { r.ProviderId = "Upper" }),
		provBadCreate("provider id trailing dash", "provider_id", func(r *mcpauthv1.CreateProviderRequest) { r.ProviderId = "abc-" }),
		provBadCreate("provider id too long", "provider_id", func(r *mcpauthv1.CreateProviderRequest) { r.ProviderId = strings.Repeat("a", 64) }),
		provBadCreate("bad parent", "parent", func(r *mcpauthv1.CreateProviderRequest) { r.Parent = "tenant/acme" }),
		provBadCreate("parent with provider", "parent", func(r *mcpauthv1.CreateProviderRequest) { r.Parent = "tenants/acme/providers/x" }),
		provBadCreate("parent upper case tenant", "parent", func(r *mcpauthv1.CreateProviderRequest) { r.Parent = "tenants/ACME" }),
		provBadCreate("no provider", "provider", func(r *mcpauthv1.CreateProviderRequest) { r.Provider = nil }),
		provBadCreate("compat extra param state", `provider.compatibility.extra_authorization_params["state"]`, func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.Compatibility = &mcpauthv1.CompatibilityProfile{ExtraAuthorizationParams: map[string]string{"state": "fixed"}}
		}),
		provBadCreate("compat extra param redirect_uri upper case", `provider.compatibility.extra_authorization_params["Redirect_URI"]`, func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.Compatibility = &mcpauthv1.CompatibilityProfile{ExtraAuthorizationParams: map[string]string{"Redirect_URI": "https://evil.example/"}}
		}),
		provBadCreate("compat override without mode", "provider.compatibility.resource_override", func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.Compatibility = &mcpauthv1.CompatibilityProfile{ResourceOverride: "https://api.example.com"}
		}),
		provBadCreate("compat unknown auth method", "provider.compatibility.token_endpoint_auth_method", func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.Compatibility = &mcpauthv1.CompatibilityProfile{TokenEndpointAuthMethod: "private_key_jwt"}
		}),
		provBadCreate("client secret without client id", "provider.oauth_client.client_id", func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.OauthClient = &mcpauthv1.OAuthClient{ClientSecret: "s"}
		}),
		provBadCreate("client id with space", "provider.oauth_client.client_id", func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.OauthClient = &mcpauthv1.OAuthClient{ClientId: "a b"}
		}),
		provBadCreate("scope with space", "provider.oauth_client.scopes[1]", func(r *mcpauthv1.CreateProviderRequest) {
			r.Provider.OauthClient = &mcpauthv1.OAuthClient{ClientId: "c", Scopes: []string{"ok", "a b"}}
		}),

		provBadUpdate("unknown mask path", "update_mask", []string{"display_name", "bogus"}, &mcpauthv1.Provider{DisplayName: "Changed"}),
		provBadUpdate("camel-case mask path", "update_mask", []string{"displayName"}, &mcpauthv1.Provider{DisplayName: "Changed"}),
		provBadUpdate("mask of name and etag only", "update_mask", []string{"name", "etag"}, &mcpauthv1.Provider{DisplayName: "Changed"}),
		provBadUpdate("output-only mask path", "update_mask", []string{"authorization_status"}, &mcpauthv1.Provider{}),
		provBadUpdate("empty mask", "update_mask", []string{}, &mcpauthv1.Provider{DisplayName: "Changed"}),
		provBadUpdate("no mask", "update_mask", nil, &mcpauthv1.Provider{DisplayName: "Changed"}),
		provBadUpdate("ftp url", "provider.server_url", []string{"server_url"}, &mcpauthv1.Provider{ServerUrl: "ftp://example.com/"}),
		provBadUpdate("url with fragment", "provider.server_url", []string{"server_url"}, &mcpauthv1.Provider{ServerUrl: "https://example.com/#x"}),
		provBadUpdate("display name empty", "provider.display_name", []string{"display_name"}, &mcpauthv1.Provider{}),
		provBadUpdate("header Host", `provider.headers["Host"]`, []string{"headers"}, &mcpauthv1.Provider{Headers: map[string]string{"Host": "x"}}),
		provBadUpdate("timeout 11m", "provider.timeout", []string{"timeout"}, &mcpauthv1.Provider{Timeout: provDur(11 * time.Minute)}),
		provBadUpdate("secret without id", "provider.oauth_client.client_id", []string{"oauth_client"},
			&mcpauthv1.Provider{OauthClient: &mcpauthv1.OAuthClient{ClientSecret: "s"}}),
		provBadUpdate("clearing the id of a stored secret", "provider.oauth_client.client_id", []string{"oauth_client.client_id"},
			&mcpauthv1.Provider{OauthClient: &mcpauthv1.OAuthClient{}}),
		provBadUpdate("compat extra param state", `provider.compatibility.extra_authorization_params["state"]`, []string{"compatibility"},
			&mcpauthv1.Provider{Compatibility: &mcpauthv1.CompatibilityProfile{ExtraAuthorizationParams: map[string]string{"state": "x"}}}),
		provBadUpdate("secret for a provider without client id", "provider.oauth_client.client_id", []string{"oauth_client.client_secret"},
			&mcpauthv1.Provider{Name: "tenants/acme/providers/noclient", OauthClient: &mcpauthv1.OAuthClient{ClientSecret: "s"}}),
		provBadUpdate("bad name", "provider.name", []string{"display_name"}, &mcpauthv1.Provider{Name: "tenants/acme/base", DisplayName: "x"}),

		provBadList("page size 501", "page_size", &mcpauthv1.ListProvidersRequest{Parent: "tenants/acme", PageSize: 501}),
		provBadList("page size -1", "page_size", &mcpauthv1.ListProvidersRequest{Parent: "tenants/acme", PageSize: -1}),
		provBadList("malformed page token", "page_token", &mcpauthv1.ListProvidersRequest{Parent: "tenants/acme", PageToken: "!!not-a-token!!"}),
		provBadList("base64 garbage page token", "page_token", &mcpauthv1.ListProvidersRequest{Parent: "tenants/acme", PageToken: "eyJ2IjoyfQ"}),
		provBadList("bad parent", "parent", &mcpauthv1.ListProvidersRequest{Parent: "acme"}),
		provBadList("empty parent", "parent", &mcpauthv1.ListProvidersRequest{}),
	}
}

// TestProviderValidation sends each bad input and checks INVALID_ARGUMENT,
// the exact field in the google.rpc.BadRequest detail, and that nothing
// changed: no provider row, no audit event, the existing provider intact.
func TestProviderValidation(t *testing.T) {
	t.Parallel()
	cases := provBadInputs()
	if len(cases) < 25 {
		t.Fatalf("only %d cases", len(cases))
	}
	provEachBackend(t, func(t *testing.T, b provBackend) {
		s := provStart(t, b, Options{})
		key := s.AdminKey
		provCreate(t, s, key, "acme", "base", &mcpauthv1.Provider{
			DisplayName: "Base", ServerIdentifier: "base", ServerUrl: "https://base.example.com/mcp",
			Headers:     map[string]string{"X-Api-Key": "k"},
			OauthClient: &mcpauthv1.OAuthClient{ClientId: "cid", ClientSecret: "cs"},
		})
		provCreate(t, s, key, "acme", "noclient", provNewProvider("noclient"))
		noclient := provGet(t, s, key, "tenants/acme/providers/noclient")
		base := provGet(t, s, key, "tenants/acme/providers/base")
		baseRow := provRow(t, s, "acme", "base")
		providers, events := provRowCount(t, s, "providers"), provRowCount(t, s, "audit_events")
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				st := provWantField(t, tc.call(Ctx(t, key), s.Providers()), codes.InvalidArgument, tc.field)
				if provErrorReason(st) != "INVALID_ARGUMENT" {
					t.Errorf("reason = %q", provErrorReason(st))
				}
				if !strings.HasPrefix(st.Message(), tc.field+": ") {
					t.Errorf("message %q does not name %s", st.Message(), tc.field)
				}
				if n := provRowCount(t, s, "providers"); n != providers {
					t.Fatalf("providers %d -> %d", providers, n)
				}
				if n := provRowCount(t, s, "audit_events"); n != events {
					t.Fatalf("audit events %d -> %d", events, n)
				}
				if got := provGet(t, s, key, "tenants/acme/providers/base"); !proto.Equal(got, base) {
					t.Fatalf("base provider changed: %v, want %v", got, base)
				}
				if got := provGet(t, s, key, "tenants/acme/providers/noclient"); !proto.Equal(got, noclient) {
					t.Fatalf("provider noclient changed: %v, want %v", got, noclient)
				}
				row := provRow(t, s, "acme", "base")
				if string(row.ServerURL) != string(baseRow.ServerURL) || string(row.Headers) != string(baseRow.Headers) ||
					string(row.ClientSecret) != string(baseRow.ClientSecret) || row.Version != baseRow.Version {
					t.Fatal("base provider's stored row changed")
				}
			})
		}
	})
}

// TestProviderDuplicates checks per-tenant uniqueness of display name,
// server identifier, id and normalised server URL, on create and update.
func TestProviderDuplicates(t *testing.T) {
	t.Parallel()
	provEachBackend(t, func(t *testing.T, b provBackend) {
		s := provStart(t, b, Options{})
		key := s.AdminKey
		pc := s.Providers()
		provCreate(t, s, key, "acme", "first", &mcpauthv1.Provider{
			DisplayName: "First", ServerIdentifier: "first", ServerUrl: "HTTPS://Host.Example.com:443/path/"})
		provCreate(t, s, key, "acme", "second", provNewProvider("second"))
		providers, events := provRowCount(t, s, "providers"), provRowCount(t, s, "audit_events")

		tests := []struct {
			name, field string
			p           *mcpauthv1.Provider
			id          string
		}{
			{"same display name", "provider.display_name", &mcpauthv1.Provider{DisplayName: "First", ServerIdentifier: "x1", ServerUrl: "https://x1.example.com/"}, "x1"},
			{"same identifier", "provider.server_identifier", &mcpauthv1.Provider{DisplayName: "X2", ServerIdentifier: "first", ServerUrl: "https://x2.example.com/"}, "x2"},
			{"display name in another case", "provider.display_name", &mcpauthv1.Provider{DisplayName: "FIRST", ServerIdentifier: "x7", ServerUrl: "https://x7.example.com/"}, "x7"},
			{"identifier in another case", "provider.server_identifier", &mcpauthv1.Provider{DisplayName: "X8", ServerIdentifier: "First", ServerUrl: "https://x8.example.com/"}, "x8"},
			{"same url", "provider.server_url", &mcpauthv1.Provider{DisplayName: "X3", ServerIdentifier: "x3", ServerUrl: "HTTPS://Host.Example.com:443/path/"}, "x3"},
			{"url variant", "provider.server_url", &mcpauthv1.Provider{DisplayName: "X4", ServerIdentifier: "x4", ServerUrl: "https://host.example.com/path"}, "x4"},
			{"url variant with spaces around", "provider.server_url", &mcpauthv1.Provider{DisplayName: "X5", ServerIdentifier: "x5", ServerUrl: " https://host.example.com:443/path// "}, "x5"},
			{"same id", "provider_id", provNewProvider("x6"), "first"},
		}
		for _, tt := range tests {
			t.Run("create/"+tt.name, func(t *testing.T) {
				_, err := pc.CreateProvider(Ctx(t, key), &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme", ProviderId: tt.id, Provider: tt.p})
				st := provWantField(t, err, codes.AlreadyExists, tt.field)
				if provErrorReason(st) != "ALREADY_EXISTS" {
					t.Errorf("reason = %q", provErrorReason(st))
				}
				if n := provRowCount(t, s, "providers"); n != providers {
					t.Fatalf("providers %d -> %d", providers, n)
				}
				if n := provRowCount(t, s, "audit_events"); n != events {
					t.Fatalf("audit events %d -> %d", events, n)
				}
			})
		}
		updates := []struct {
			name, field, path string
			p                 *mcpauthv1.Provider
		}{
			{"display name", "provider.display_name", "display_name", &mcpauthv1.Provider{DisplayName: "First"}},
			{"identifier", "provider.server_identifier", "server_identifier", &mcpauthv1.Provider{ServerIdentifier: "first"}},
			{"display name in another case", "provider.display_name", "display_name", &mcpauthv1.Provider{DisplayName: "fIRST"}},
			{"identifier in another case", "provider.server_identifier", "server_identifier", &mcpauthv1.Provider{ServerIdentifier: "FIRST"}},
			{"url variant", "provider.server_url", "server_url", &mcpauthv1.Provider{ServerUrl: "https://HOST.example.com/path"}},
		}
		second := provGet(t, s, key, "tenants/acme/providers/second")
		for _, tt := range updates {
			t.Run("update/"+tt.name, func(t *testing.T) {
				p := proto.Clone(tt.p).(*mcpauthv1.Provider)
				p.Name = second.GetName()
				_, err := pc.UpdateProvider(Ctx(t, key), &mcpauthv1.UpdateProviderRequest{Provider: p, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{tt.path}}})
				provWantField(t, err, codes.AlreadyExists, tt.field)
				if got := provGet(t, s, key, second.GetName()); !proto.Equal(got, second) {
					t.Fatalf("refused update changed the provider: %v", got)
				}
			})
		}

		// A provider may keep its own URL in another spelling.
		if _, err := pc.UpdateProvider(Ctx(t, key), &mcpauthv1.UpdateProviderRequest{
			Provider:   &mcpauthv1.Provider{Name: "tenants/acme/providers/first", ServerUrl: "https://host.example.com/path", DisplayName: "First"},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"server_url", "display_name"}}}); err != nil {
			t.Fatalf("re-spelling a provider's own URL and name: %v", err)
		}
		// The same values in another tenant are fine.
		for _, tt := range tests {
			p := proto.Clone(tt.p).(*mcpauthv1.Provider)
			p.DisplayName, p.ServerIdentifier = "First", "first"
			if tt.id == "first" {
				continue
			}
			provCreate(t, s, key, "other-"+tt.id, "first", p)
		}
		// A different path or query on the same host is another server.
		for i, u := range []string{"https://host.example.com/path2", "https://host.example.com/path?x=1", "http://host.example.com/path", "https://host.example.com:8443/path", "https://host.example.com/Path"} {
			provCreate(t, s, key, "acme", fmt.Sprintf("v%d", i), &mcpauthv1.Provider{DisplayName: fmt.Sprint("V", i), ServerIdentifier: fmt.Sprint("v", i), ServerUrl: u})
		}
	})
}
