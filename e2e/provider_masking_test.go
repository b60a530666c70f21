package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// provSecrets are distinctive values the masking test stores; none may
// appear anywhere outside the ciphertexts.
var provSecrets = []string{
	"s3cr3t-path",      // URL path
	"QQQ-url-secret",   // URL query
	"hdr-secret-XYZ",   // header value
	"cs-secret-ABC",    // client secret
	"uinfo-secret-UUU", // userinfo of a refused URL
	"crlf-secret-LLL",  // header value of a refused request
}

// provLeakScan collects everything a caller or operator can see.
type provLeakScan struct {
	t      *testing.T
	places map[string]*strings.Builder
}

func (l *provLeakScan) add(place, text string) {
	if l.places[place] == nil {
		l.places[place] = &strings.Builder{}
	}
	l.places[place].WriteString(text)
	l.places[place].WriteByte('\n')
}

// grpc records a gRPC response or error.
func (l *provLeakScan) grpc(what string, m proto.Message, err error) {
	l.t.Helper()
	if err != nil {
		st, _ := status.FromError(err)
		l.add("grpc errors", what+": "+provJSON(l.t, st.Proto()))
		return
	}
	l.add("grpc responses", what+": "+provJSON(l.t, m))
}

// check fails for every secret found anywhere, and checks that each place
// holds text (a scan of nothing proves nothing).
func (l *provLeakScan) check(sanity map[string]string) {
	l.t.Helper()
	for place, b := range l.places {
		text := b.String()
		for _, secret := range provSecrets {
			if i := strings.Index(text, secret); i >= 0 {
				lo, hi := max(0, i-80), min(len(text), i+80)
				l.t.Errorf("%s leaks %q: ...%s...", place, secret, text[lo:hi])
			}
		}
		if want, ok := sanity[place]; ok && !strings.Contains(text, want) {
			l.t.Errorf("%s does not contain %q: the scan did not see the data", place, want)
		}
	}
	for place := range sanity {
		if l.places[place] == nil {
			l.t.Errorf("nothing collected from %s", place)
		}
	}
}

// TestProviderNoLeak stores providers with distinctive secrets through gRPC
// and REST, exercises every provider RPC (and refusals that carry secrets),
// then searches every response, the logs, the audit log and a dump of every
// database row (and the raw SQLite files) for the secrets.
func TestProviderNoLeak(t *testing.T) {
	t.Parallel()
	provEachBackend(t, func(t *testing.T, b provBackend) {
		s := provStart(t, b, Options{})
		key := s.AdminKey
		pc := s.Providers()
		l := &provLeakScan{t: t, places: map[string]*strings.Builder{}}

		secretProvider := func(display, sid, host string) *mcpauthv1.Provider {
			return &mcpauthv1.Provider{
				DisplayName: display, ServerIdentifier: sid,
				ServerUrl:   "https://" + host + "/s3cr3t-path?token=QQQ-url-secret",
				Headers:     map[string]string{"X-Api-Key": "hdr-secret-XYZ", "X-Other": "hdr-secret-XYZ-2"},
				OauthClient: &mcpauthv1.OAuthClient{ClientId: "leak-client", ClientSecret: "cs-secret-ABC"},
			}
		}
		ctx := Ctx(t, key)
		cr, err := pc.CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme", ProviderId: "leak",
			Provider: secretProvider("Leak Probe", "leak", "mcp.leak.example")})
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		l.grpc("create", cr, nil)
		if got := cr.GetProvider().GetMaskedServerUrl(); got != "https://mcp.leak.example/******" {
			t.Fatalf("masked URL = %q", got)
		}
		cr2, err := pc.CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/other", ProviderId: "leak",
			Provider: secretProvider("Leak Probe", "leak", "mcp.leak.example")})
		l.grpc("create in other tenant", cr2, err)
		if err != nil {
			t.Fatalf("create in tenant other: %v", err)
		}

		g, err := pc.GetProvider(ctx, &mcpauthv1.GetProviderRequest{Name: "tenants/acme/providers/leak"})
		l.grpc("get", g, err)
		ls, err := pc.ListProviders(ctx, &mcpauthv1.ListProvidersRequest{Parent: "tenants/acme"})
		l.grpc("list", ls, err)
		up, err := pc.UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
			Provider:   &mcpauthv1.Provider{Name: "tenants/acme/providers/leak", DisplayName: "Leak Probe 2"},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}})
		l.grpc("update display name", up, err)
		up, err = pc.UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
			Provider: &mcpauthv1.Provider{Name: "tenants/acme/providers/leak",
				ServerUrl:   "https://mcp2.leak.example/s3cr3t-path/v2?token=QQQ-url-secret",
				Headers:     map[string]string{"X-Api-Key": "hdr-secret-XYZ-3"},
				OauthClient: &mcpauthv1.OAuthClient{ClientId: "leak-client", ClientSecret: "cs-secret-ABC-2"}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"server_url", "headers", "oauth_client"}}})
		l.grpc("update secrets", up, err)
		if err != nil {
			t.Fatalf("update secrets: %v", err)
		}

		// Refusals whose requests carry the secrets.
		_, err = pc.CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/other",
			Provider: secretProvider("Dup", "dup", "MCP.leak.example:443")})
		if status.Code(err) != codes.AlreadyExists {
			t.Fatalf("duplicate URL: %v", err)
		}
		l.grpc("duplicate url", nil, err)
		for name, u := range map[string]string{
			"userinfo": "https://user:uinfo-secret-UUU@mcp.example/s3cr3t-path?token=QQQ-url-secret",
			"fragment": "https://mcp.example/s3cr3t-path?token=QQQ-url-secret#uinfo-secret-UUU",
			"ftp":      "ftp://mcp.example/s3cr3t-path?token=QQQ-url-secret",
		} {
			p := secretProvider("Bad", "bad", "x")
			p.ServerUrl = u
			_, err = pc.CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme", Provider: p})
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("%s URL: %v", name, err)
			}
			l.grpc("bad url "+name, nil, err)
		}
		p := secretProvider("Bad", "bad", "bad.example")
		p.Headers = map[string]string{"X-Inject": "crlf-secret-LLL\r\nX-Evil: hdr-secret-XYZ"}
		_, err = pc.CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme", Provider: p})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("CRLF header: %v", err)
		}
		l.grpc("crlf header", nil, err)
		p = secretProvider("Bad", "bad", "bad.example")
		p.OauthClient = &mcpauthv1.OAuthClient{ClientSecret: "cs-secret-ABC"}
		_, err = pc.CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme", Provider: p})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("secret without id: %v", err)
		}
		l.grpc("secret without id", nil, err)

		// The same over REST.
		restBody := `{"display_name":"Rest Leak","server_identifier":"rest-leak",` +
			`"server_url":"https://rest.leak.example/s3cr3t-path?token=QQQ-url-secret",` +
			`"headers":{"X-Api-Key":"hdr-secret-XYZ"},` +
			`"oauth_client":{"client_id":"rest-client","client_secret":"cs-secret-ABC"}}`
		for _, r := range []struct{ method, path, body string }{
			{"POST", "/v1/tenants/acme/providers?provider_id=rest-leak", restBody},
			{"GET", "/v1/tenants/acme/providers/rest-leak", ""},
			{"GET", "/v1/tenants/acme/providers", ""},
			{"POST", "/v1/tenants/acme/providers", restBody}, // duplicate
			{"PATCH", "/v1/tenants/acme/providers/rest-leak?update_mask=headers", `{"headers":{"X-Api-Key":"crlf-secret-LLL\r\n"}}`},
			{"PATCH", "/v1/tenants/acme/providers/rest-leak?update_mask=headers", `{"headers":{"X-Api-Key":"hdr-secret-XYZ-4"}}`},
			{"GET", "/v1/tenants/acme/auditEvents", ""},
		} {
			code, _, body := provHTTP(t, s, r.method, r.path, key, r.body, nil)
			l.add("rest bodies", r.method+" "+r.path+" "+string(body))
			if r.method == "POST" && strings.Contains(r.path, "provider_id") && code != 200 {
				t.Fatalf("REST create: %d %s", code, body)
			}
		}

		del, err := pc.DeleteProvider(ctx, &mcpauthv1.DeleteProviderRequest{Name: "tenants/other/providers/leak"})
		l.grpc("delete", del, err)
		if err != nil {
			t.Fatalf("delete: %v", err)
		}
		for _, tenant := range []string{"acme", "other"} {
			for _, e := range provAuditEvents(t, s, key, tenant) {
				l.add("audit events", provJSON(t, e))
			}
		}
		l.add("logs", s.Logs.String())
		l.add("database rows", provDumpDB(t, s))

		sanity := map[string]string{
			"grpc responses": "https://mcp2.leak.example/******",
			"grpc errors":    "provider.server_url",
			"rest bodies":    "https://rest.leak.example/******",
			"audit events":   "provider.credentials.reset",
			"logs":           "CreateProvider",
			"database rows":  "Leak Probe 2",
		}
		if !b.postgres {
			s.Stop() // flush and close the SQLite files before reading them raw
			var raw []byte
			for _, f := range []string{"mcpauth.db", "mcpauth.db-wal", "mcpauth.db-shm"} {
				data, err := os.ReadFile(filepath.Join(s.DataDir, f))
				if err != nil && !os.IsNotExist(err) {
					t.Fatal(err)
				}
				raw = append(raw, data...)
			}
			if !bytes.Contains(raw, []byte("Rest Leak")) {
				t.Fatal("raw SQLite files do not contain the display name: the scan reads the wrong files")
			}
			l.add("raw sqlite files", string(raw))
			sanity["raw sqlite files"] = "rest-leak"
		}
		l.check(sanity)
	})
}
