package e2e

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestClientIDMetadataDocument: with an https public URL, mcpauth serves
// its own Client ID Metadata Document and, for an authorization server that
// advertises client_id_metadata_document_supported (and offers no DCR),
// uses the document's URL as client_id.
func TestClientIDMetadataDocument(t *testing.T) {
	t.Parallel()
	const public = "https://auth.mcpauth.test"
	// A minimal protected resource + authorization server metadata: the
	// test only follows mcpauth to the authorization endpoint.
	var mu sync.Mutex
	var authorizeQuery url.Values
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	mux.HandleFunc("POST /mcp", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer resource_metadata="`+srv.URL+`/.well-known/oauth-protected-resource/mcp"`)
		w.WriteHeader(http.StatusUnauthorized)
	})
	writeJSON := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /.well-known/oauth-protected-resource/mcp", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"resource": srv.URL + "/mcp", "authorization_servers": []string{srv.URL}})
	})
	mux.HandleFunc("GET /.well-known/oauth-authorization-server", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"issuer": srv.URL, "authorization_endpoint": srv.URL + "/authorize",
			"token_endpoint": srv.URL + "/token", "code_challenge_methods_supported": []string{"S256"},
			"response_types_supported": []string{"code"}, "client_id_metadata_document_supported": true})
	})
	mux.HandleFunc("GET /authorize", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		authorizeQuery = r.URL.Query()
		mu.Unlock()
		_, _ = w.Write([]byte("consent page"))
	})

	s := Start(t, Options{Env: map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1", "MCPAUTH_PUBLIC_URL": public}})
	docURL := public + "/v1/oauth/client-metadata.json"

	resp, err := http.Get(s.HTTPURL + "/v1/oauth/client-metadata.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if doc["client_id"] != docURL || doc["token_endpoint_auth_method"] != "none" {
		t.Fatalf("document %v", doc)
	}
	if uris, _ := doc["redirect_uris"].([]any); len(uris) != 1 || uris[0] != public+"/v1/oauth/callback" {
		t.Fatalf("redirect_uris %v", doc["redirect_uris"])
	}

	name := createProvider(t, s, s.AdminKey, "cimd", "docs", srv.URL+"/mcp", nil)
	start := cimdStart(t, s, name)
	if start.GetRegistrationMethod() != "client_id_metadata_document" {
		t.Fatalf("registration method %q", start.GetRegistrationMethod())
	}
	// The authorization URL is on the (https) public URL: reach the same
	// route on the test listener.
	local := strings.Replace(start.GetAuthorizationUrl(), public, s.HTTPURL, 1)
	code, body, _ := NewBrowser(t).Open(t, local)
	if code != 200 || body != "consent page" {
		t.Fatalf("authorize: %d %q", code, body)
	}
	mu.Lock()
	defer mu.Unlock()
	if authorizeQuery.Get("client_id") != docURL || authorizeQuery.Get("redirect_uri") != public+"/v1/oauth/callback" {
		t.Fatalf("authorization request %v", authorizeQuery)
	}
}

// cimdStart checks that DiagnoseProvider sees a provider ready with a
// Client ID Metadata Document client and starts its authorization for
// alice.
func cimdStart(t *testing.T, s *Service, name string) *mcpauthv1.StartAuthorizationResponse {
	t.Helper()
	ctx := Ctx(t, s.AdminKey)
	d, err := s.OAuth().DiagnoseProvider(ctx, &mcpauthv1.DiagnoseProviderRequest{Name: name})
	if err != nil || !d.GetReady() || d.GetRegistrationMethod() != "client_id_metadata_document" {
		t.Fatalf("diagnose: %v ready=%v method=%q problem=%q", err, d.GetReady(), d.GetRegistrationMethod(), d.GetBlockingProblem())
	}
	start, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	return start
}
