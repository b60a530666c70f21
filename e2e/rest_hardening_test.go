package e2e

import (
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestRESTMethodOverrideIgnored: the probe's finding. A form POST with
// X-HTTP-Method-Override: DELETE on a provider (which a cross-site page can
// send without a preflight) answers 405 with Allow and deletes nothing; a
// form POST is not served as a GET either, and a wrong method is 405.
func TestRESTMethodOverrideIgnored(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{})
	key := s.AdminKey
	provCreate(t, s, key, "acme", "x", provNewProvider("x"))
	for _, override := range []string{"DELETE", "delete", "PATCH", "GET", ""} {
		code, hdr, body := provHTTP(t, s, "POST", "/v1/tenants/acme/providers/x", key, "", map[string]string{
			"Content-Type": "application/x-www-form-urlencoded", "X-HTTP-Method-Override": override})
		if code != http.StatusMethodNotAllowed || hdr.Get("Allow") != "GET, PATCH, DELETE" {
			t.Errorf("form POST with override %q: %d Allow %q %s; want 405 Allow \"GET, PATCH, DELETE\"", override, code, hdr.Get("Allow"), body)
		}
	}
	provGet(t, s, key, "tenants/acme/providers/x")
	code, hdr, _ := provHTTP(t, s, "PUT", "/v1/tenants/acme/providers", key, `{}`, nil)
	if code != http.StatusMethodNotAllowed || hdr.Get("Allow") != "GET, POST" {
		t.Errorf("PUT on the collection: %d Allow %q, want 405 Allow \"GET, POST\"", code, hdr.Get("Allow"))
	}
	code, hdr, _ = provHTTP(t, s, "DELETE", "/v1/tenants/acme/auditEvents", key, "", nil)
	if code != http.StatusMethodNotAllowed || hdr.Get("Allow") != "GET" {
		t.Errorf("DELETE on audit events: %d Allow %q, want 405 Allow GET", code, hdr.Get("Allow"))
	}
}

// TestRESTBodyLimits: an oversized body answers 413 and a body with data
// after its JSON value 400 INVALID_ARGUMENT, on create, update and a custom
// method, and neither changes anything.
func TestRESTBodyLimits(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{})
	key := s.AdminKey
	before := provCreate(t, s, key, "acme", "x", provNewProvider("x"))
	big := `{"display_name":"` + strings.Repeat("a", 1<<20+1024) + `"}`
	// Each body is one the route accepts on its own.
	routes := []struct{ method, path, body string }{
		{"POST", "/v1/tenants/acme/providers?provider_id=y", `{"display_name":"z","server_identifier":"z","server_url":"https://mcp-z.example.com/mcp"}`},
		{"PATCH", "/v1/tenants/acme/providers/x", `{"display_name":"z"}`},
		{"POST", "/v1/tenants/acme/providers/x:startAuthorization", `{"user":"alice"}`},
	}
	for _, r := range routes {
		if code, _, body := provHTTP(t, s, r.method, r.path, key, big, nil); code != http.StatusRequestEntityTooLarge {
			t.Errorf("%s %s oversized: %d %.200s, want 413", r.method, r.path, code, body)
		}
		for _, tail := range []string{` garbage`, `{"display_name":"z"}`, `]`} {
			code, _, body := provHTTP(t, s, r.method, r.path, key, r.body+tail, nil)
			if e := provRESTErr(t, body); code != http.StatusBadRequest || e.Code != int(codes.InvalidArgument) || strings.Contains(string(body), "garbage") {
				t.Errorf("%s %s with %q after the object: %d %s, want 400 INVALID_ARGUMENT", r.method, r.path, tail, code, body)
			}
		}
	}
	resp, err := s.Providers().ListProviders(Ctx(t, key), &mcpauthv1.ListProvidersRequest{Parent: "tenants/acme"})
	oaMust(t, err)
	if n := len(resp.GetProviders()); n != 1 {
		t.Errorf("%d providers after refused creates, want 1", n)
	}
	if after := provGet(t, s, key, "tenants/acme/providers/x"); after.GetDisplayName() != before.GetDisplayName() {
		t.Errorf("a refused update changed the display name to %q", after.GetDisplayName())
	}
	if st := oaStatusOf(t, s, Ctx(t, key), "tenants/acme/providers/x"); st == mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_PENDING {
		t.Errorf("a refused startAuthorization started a flow")
	}
}
