package e2e

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// provDecode unmarshals a REST body into m.
func provDecode(tb testing.TB, body []byte, m proto.Message) {
	tb.Helper()
	if err := protojson.Unmarshal(body, m); err != nil {
		tb.Fatalf("decoding %s: %v", body, err)
	}
}

// provRESTError is the gateway's JSON error body.
type provRESTError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Details []struct {
		Type            string `json:"@type"`
		Reason          string `json:"reason"`
		FieldViolations []struct {
			Field string `json:"field"`
		} `json:"field_violations"`
	} `json:"details"`
}

func provRESTErr(tb testing.TB, body []byte) provRESTError {
	tb.Helper()
	var e provRESTError
	if err := json.Unmarshal(body, &e); err != nil {
		tb.Fatalf("error body %s: %v", body, err)
	}
	return e
}

// TestProviderREST runs create, get, list, update and delete through the
// REST gateway and checks they agree with gRPC.
func TestProviderREST(t *testing.T) {
	t.Parallel()
	provEachBackend(t, func(t *testing.T, b provBackend) {
		s := provStart(t, b, Options{})
		key := s.AdminKey

		code, hdr, body := provHTTP(t, s, "POST", "/v1/tenants/acme/providers?provider_id=linear", key,
			`{"display_name":"Linear","server_identifier":"linear","server_url":"https://mcp.linear.example/sse?key=rest-url-secret",`+
				`"headers":{"x-team":"rest-header-secret"},"timeout":"45s","oauth_client":{"client_id":"lin","client_secret":"rest-client-secret"}}`, nil)
		if code != http.StatusOK {
			t.Fatalf("POST: %d %s", code, body)
		}
		if hdr.Get("X-Content-Type-Options") != "nosniff" || hdr.Get("X-Request-Id") == "" {
			t.Errorf("response headers %v lack nosniff or X-Request-Id", hdr)
		}
		var createResp mcpauthv1.CreateProviderResponse
		provDecode(t, body, &createResp)
		created := createResp.GetProvider()
		if created.GetName() != "tenants/acme/providers/linear" || created.GetMaskedServerUrl() != "https://mcp.linear.example/******" ||
			created.GetTimeout().AsDuration().Seconds() != 45 || !created.GetOauthClient().GetClientSecretSet() ||
			len(created.GetHeaderInfo()) != 1 || created.GetHeaderInfo()[0].GetName() != "X-Team" {
			t.Fatalf("created over REST: %v", created)
		}
		for _, secret := range []string{"rest-url-secret", "rest-header-secret", "rest-client-secret", `"server_url"`, `"client_secret"`} {
			if strings.Contains(string(body), secret) {
				t.Fatalf("REST create response contains %s: %s", secret, body)
			}
		}
		// Bodies use proto field names.
		if !strings.Contains(string(body), `"masked_server_url"`) {
			t.Errorf("body does not use proto names: %s", body)
		}

		grpcView := provGet(t, s, key, "tenants/acme/providers/linear")
		code, _, body = provHTTP(t, s, "GET", "/v1/tenants/acme/providers/linear", key, "", nil)
		if code != http.StatusOK {
			t.Fatalf("GET: %d %s", code, body)
		}
		var getResp mcpauthv1.GetProviderResponse
		provDecode(t, body, &getResp)
		got := getResp.GetProvider()
		if !proto.Equal(got, grpcView) || !proto.Equal(got, created) {
			t.Fatalf("REST GET = %v, gRPC = %v, created = %v", got, grpcView, created)
		}

		for i := range 4 {
			provCreate(t, s, key, "acme", "extra-"+string(rune('a'+i)), provNewProvider("extra-"+string(rune('a'+i))))
		}
		var names []string
		tok := ""
		for pages := 0; ; pages++ {
			q := url.Values{"page_size": {"2"}}
			if tok != "" {
				q.Set("page_token", tok)
			}
			code, _, body = provHTTP(t, s, "GET", "/v1/tenants/acme/providers?"+q.Encode(), key, "", nil)
			if code != http.StatusOK {
				t.Fatalf("list: %d %s", code, body)
			}
			var resp mcpauthv1.ListProvidersResponse
			provDecode(t, body, &resp)
			for _, p := range resp.GetProviders() {
				names = append(names, p.GetName())
			}
			if tok = resp.GetNextPageToken(); tok == "" {
				if pages != 2 {
					t.Errorf("5 providers in pages of 2 took %d pages", pages+1)
				}
				break
			}
		}
		want := []string{"tenants/acme/providers/extra-a", "tenants/acme/providers/extra-b", "tenants/acme/providers/extra-c",
			"tenants/acme/providers/extra-d", "tenants/acme/providers/linear"}
		if strings.Join(names, ",") != strings.Join(want, ",") {
			t.Fatalf("REST list = %v, want %v", names, want)
		}

		code, _, body = provHTTP(t, s, "PATCH", "/v1/tenants/acme/providers/linear?update_mask=display_name", key,
			`{"display_name":"Linear (prod)","server_identifier":"ignored","etag":`+provJSONString(created.GetEtag())+`}`, nil)
		if code != http.StatusOK {
			t.Fatalf("PATCH: %d %s", code, body)
		}
		var updResp mcpauthv1.UpdateProviderResponse
		provDecode(t, body, &updResp)
		upd := updResp.GetProvider()
		if upd.GetDisplayName() != "Linear (prod)" || upd.GetServerIdentifier() != "linear" || upd.GetEtag() == created.GetEtag() {
			t.Fatalf("PATCH result %v", upd)
		}
		code, _, body = provHTTP(t, s, "PATCH", "/v1/tenants/acme/providers/linear?update_mask=display_name", key,
			`{"display_name":"Stale","etag":`+provJSONString(created.GetEtag())+`}`, nil)
		if code != http.StatusConflict {
			t.Fatalf("PATCH with a stale etag: %d %s, want 409", code, body)
		}
		// Without update_mask the gateway infers it from the body, etag
		// included: the etag guards the update and is not a field to change.
		code, _, body = provHTTP(t, s, "PATCH", "/v1/tenants/acme/providers/linear", key,
			`{"icon":"L","etag":`+provJSONString(created.GetEtag())+`}`, nil)
		if code != http.StatusConflict {
			t.Fatalf("PATCH with a stale etag and no mask: %d %s, want 409", code, body)
		}
		code, _, body = provHTTP(t, s, "PATCH", "/v1/tenants/acme/providers/linear", key,
			`{"icon":"L","etag":`+provJSONString(upd.GetEtag())+`}`, nil)
		if code != http.StatusOK {
			t.Fatalf("PATCH with the current etag and no mask: %d %s", code, body)
		}
		provDecode(t, body, &updResp)
		if got := updResp.GetProvider(); got.GetIcon() != "L" || got.GetDisplayName() != "Linear (prod)" {
			t.Fatalf("PATCH without mask: %v", got)
		}

		code, _, body = provHTTP(t, s, "POST", "/v1/tenants/acme/providers", key,
			`{"display_name":"Bad","server_identifier":"bad","server_url":"ftp://example.com"}`, nil)
		e := provRESTErr(t, body)
		if code != http.StatusBadRequest || e.Code != 3 {
			t.Fatalf("bad URL over REST: %d %s", code, body)
		}
		var fields []string
		for _, d := range e.Details {
			for _, v := range d.FieldViolations {
				fields = append(fields, v.Field)
			}
		}
		if len(fields) != 1 || fields[0] != "provider.server_url" {
			t.Fatalf("REST error field violations = %v in %s", fields, body)
		}

		code, _, body = provHTTP(t, s, "DELETE", "/v1/tenants/acme/providers/linear", key, "", nil)
		if code != http.StatusOK {
			t.Fatalf("DELETE: %d %s", code, body)
		}
		code, _, body = provHTTP(t, s, "GET", "/v1/tenants/acme/providers/linear", key, "", nil)
		if code != http.StatusNotFound || provRESTErr(t, body).Code != 5 {
			t.Fatalf("GET after DELETE: %d %s", code, body)
		}
	})
}

func provJSONString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestProviderRESTHeaders checks that only the real Authorization and
// X-Request-Id headers reach gRPC metadata: Grpc-Metadata-* headers cannot
// inject an identity or a request id.
func TestProviderRESTHeaders(t *testing.T) {
	t.Parallel()
	provEachBackend(t, func(t *testing.T, b provBackend) {
		s := provStart(t, b, Options{})
		key := s.AdminKey
		provCreate(t, s, key, "acme", "p1", provNewProvider("p1"))
		const path = "/v1/tenants/acme/providers/p1"

		unauth := []struct {
			name string
			key  string
			hdr  map[string]string
		}{
			{"no key", "", nil},
			{"bad key", "wrong", nil},
			{"grpc-metadata authorization only", "", map[string]string{"Grpc-Metadata-Authorization": "Bearer " + key}},
			{"grpc-metadata authorization lower case", "", map[string]string{"grpc-metadata-authorization": "Bearer " + key}},
			{"basic authorization and grpc-metadata bearer", "", map[string]string{"Authorization": "Basic " + key, "Grpc-Metadata-Authorization": "Bearer " + key}},
			{"bad key and grpc-metadata bearer", "wrong", map[string]string{"Grpc-Metadata-Authorization": "Bearer " + key}},
		}
		for _, tt := range unauth {
			t.Run(tt.name, func(t *testing.T) {
				code, _, body := provHTTP(t, s, "GET", path, tt.key, "", tt.hdr)
				if code != http.StatusUnauthorized || provRESTErr(t, body).Code != 16 {
					t.Fatalf("status %d %s, want 401 UNAUTHENTICATED", code, body)
				}
			})
		}

		// The request id: the real X-Request-Id header is honoured (so the
		// check below can see an injected one), Grpc-Metadata-X-Request-Id
		// is not.
		rename := func(t *testing.T, display string, hdr map[string]string) (string, string) {
			t.Helper()
			code, h, body := provHTTP(t, s, "PATCH", path+"?update_mask=display_name", key, `{"display_name":`+provJSONString(display)+`}`, hdr)
			if code != http.StatusOK {
				t.Fatalf("PATCH: %d %s", code, body)
			}
			var audited string
			for _, e := range provAuditEvents(t, s, key, "acme") {
				if e.GetEventType() == "provider.updated" && audited == "" {
					audited = e.GetRequestId()
				}
			}
			return h.Get("X-Request-Id"), audited
		}
		respID, auditID := rename(t, "Real id", map[string]string{"X-Request-Id": "client-chosen-id-1"})
		if respID != "client-chosen-id-1" || auditID != "client-chosen-id-1" {
			t.Fatalf("X-Request-Id not honoured: response %q, audit %q", respID, auditID)
		}
		respID, auditID = rename(t, "Injected id", map[string]string{
			"Grpc-Metadata-X-Request-Id": "injected-id-2", "Grpc-Metadata-Caller": "admin", "Grpc-Metadata-X-Tenant": "other"})
		if respID == "injected-id-2" || auditID == "injected-id-2" || respID == "" || respID != auditID {
			t.Fatalf("Grpc-Metadata-X-Request-Id reached the service: response %q, audit %q", respID, auditID)
		}
		if strings.Contains(s.Logs.String(), "injected-id-2") {
			t.Fatal("injected request id appears in the logs")
		}
	})
}

// TestProviderRESTCORS checks that CORS is closed unless origins are
// configured, and then open to exactly those origins.
func TestProviderRESTCORS(t *testing.T) {
	t.Parallel()
	preflight := map[string]string{"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
	withOrigin := func(o string, h map[string]string) map[string]string {
		out := map[string]string{"Origin": o}
		for k, v := range h {
			out[k] = v
		}
		return out
	}
	provEachBackend(t, func(t *testing.T, b provBackend) {
		t.Run("closed by default", func(t *testing.T) {
			t.Parallel()
			s := provStart(t, b, Options{})
			code, h, body := provHTTP(t, s, "GET", "/v1/tenants/acme/providers", s.AdminKey, "", withOrigin("https://console.example", nil))
			if code != http.StatusOK || h.Get("Access-Control-Allow-Origin") != "" {
				t.Fatalf("GET with Origin: %d, Access-Control-Allow-Origin %q (%s)", code, h.Get("Access-Control-Allow-Origin"), body)
			}
			code, h, _ = provHTTP(t, s, "OPTIONS", "/v1/tenants/acme/providers", "", "", withOrigin("https://console.example", preflight))
			if code != http.StatusForbidden || h.Get("Access-Control-Allow-Origin") != "" {
				t.Fatalf("preflight: %d, Access-Control-Allow-Origin %q; want 403 and none", code, h.Get("Access-Control-Allow-Origin"))
			}
		})
		t.Run("allow-listed origin", func(t *testing.T) {
			t.Parallel()
			// Configured origins may carry a trailing slash or upper case
			// (the configuration accepts both); browsers send neither.
			s := provStart(t, b, Options{Env: map[string]string{"MCPAUTH_CORS_ORIGINS": "https://console.example/,http://localhost:3000,HTTPS://Admin.Example"}})
			for _, origin := range []string{"https://console.example", "http://localhost:3000", "https://admin.example"} {
				code, h, body := provHTTP(t, s, "GET", "/v1/tenants/acme/providers", s.AdminKey, "", withOrigin(origin, nil))
				if code != http.StatusOK || h.Get("Access-Control-Allow-Origin") != origin || !strings.Contains(h.Get("Vary"), "Origin") {
					t.Fatalf("GET from %s: %d, headers %v (%s)", origin, code, h, body)
				}
				code, h, _ = provHTTP(t, s, "OPTIONS", "/v1/tenants/acme/providers", "", "", withOrigin(origin, preflight))
				if code != http.StatusNoContent || h.Get("Access-Control-Allow-Origin") != origin ||
					!strings.Contains(strings.ToLower(h.Get("Access-Control-Allow-Headers")), "authorization") ||
					!strings.Contains(h.Get("Access-Control-Allow-Methods"), "POST") {
					t.Fatalf("preflight from %s: %d, headers %v", origin, code, h)
				}
			}
			for _, origin := range []string{"https://evil.example", "https://console.example.evil.example", "http://console.example", "null", "https://console.example:8443"} {
				code, h, _ := provHTTP(t, s, "GET", "/v1/tenants/acme/providers", s.AdminKey, "", withOrigin(origin, nil))
				if code != http.StatusOK || h.Get("Access-Control-Allow-Origin") != "" {
					t.Errorf("GET from %s: %d, Access-Control-Allow-Origin %q", origin, code, h.Get("Access-Control-Allow-Origin"))
				}
				code, h, _ = provHTTP(t, s, "OPTIONS", "/v1/tenants/acme/providers", "", "", withOrigin(origin, preflight))
				if code != http.StatusForbidden || h.Get("Access-Control-Allow-Origin") != "" {
					t.Errorf("preflight from %s: %d, Access-Control-Allow-Origin %q", origin, code, h.Get("Access-Control-Allow-Origin"))
				}
			}
			// CORS never replaces authentication.
			code, _, _ := provHTTP(t, s, "GET", "/v1/tenants/acme/providers", "", "", withOrigin("https://console.example", nil))
			if code != http.StatusUnauthorized {
				t.Fatalf("allowed origin without a key: %d, want 401", code)
			}
		})
	})
}
