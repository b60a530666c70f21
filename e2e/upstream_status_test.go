package e2e

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestUpstreamDefinitiveStatus: a definitive 4xx answer is FAILED_PRECONDITION
// with a precise reason, not UNAVAILABLE (which tells callers to retry): an
// MCP URL answering 404 (tool calls, tool refresh, connectivity check and
// StartAuthorization), and an authorization server whose metadata answers
// 404 at every well-known location. A 503 stays UNAVAILABLE.
func TestUpstreamDefinitiveStatus(t *testing.T) {
	t.Parallel()
	var answer atomic.Int32
	answer.Store(http.StatusNotFound)
	var origin string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/protected" && r.Method == http.MethodPost:
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer resource_metadata=%q`, origin+"/.well-known/oauth-protected-resource/protected"))
			http.Error(w, "authorization required", http.StatusUnauthorized)
		case r.URL.Path == "/.well-known/oauth-protected-resource/protected":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"resource":%q,"authorization_servers":[%q]}`, origin+"/protected", origin+"/as")
		case r.URL.Path == "/failing":
			http.Error(w, "down", http.StatusServiceUnavailable)
		default:
			http.Error(w, "no such page", int(answer.Load())) // the authorization server's metadata too
		}
	}))
	t.Cleanup(srv.Close)
	origin = srv.URL
	s := tlStart(t, nil)
	ctx := Ctx(t, s.AdminKey)
	create := func(id, path string, validate bool) (string, error) {
		resp, err := s.Providers().CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/us-status", ProviderId: id,
			ValidateConnectivity: validate,
			Provider:             &mcpauthv1.Provider{DisplayName: id, ServerIdentifier: id, ServerUrl: origin + path}})
		return resp.GetProvider().GetName(), err
	}
	mustCreate := func(id, path string) string {
		t.Helper()
		name, err := create(id, path, false)
		if err != nil {
			t.Fatalf("CreateProvider %s: %v", id, err)
		}
		return name
	}
	wantReason := func(what string, err error, code codes.Code, reason string) {
		t.Helper()
		info := tlErrorInfo(t, err, code)
		if info.GetReason() != reason {
			t.Errorf("%s: %v: reason %q, want %q", what, err, info.GetReason(), reason)
		}
		if msg := status.Convert(err).Message(); strings.Contains(msg, "no such page") {
			t.Errorf("%s: message carries the upstream body: %q", what, msg)
		}
	}

	_, err := create("checked", "/wrong", true)
	wantReason("CreateProvider validating a 404 URL", err, codes.FailedPrecondition, "SERVER_NOT_FOUND")

	name := mustCreate("wrong", "/wrong")
	_, err = tlCall(ctx, s, name, "echo", map[string]any{"text": "x"})
	wantReason("CallTool on a 404 URL", err, codes.FailedPrecondition, "SERVER_NOT_FOUND")
	_, err = s.Tools().RefreshTools(ctx, &mcpauthv1.RefreshToolsRequest{Name: name})
	wantReason("RefreshTools on a 404 URL", err, codes.FailedPrecondition, "SERVER_NOT_FOUND")
	_, err = s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
	wantReason("StartAuthorization on a 404 URL", err, codes.FailedPrecondition, "SERVER_NOT_FOUND")

	answer.Store(http.StatusGone)
	_, err = tlCall(ctx, s, name, "echo", map[string]any{"text": "x"})
	wantReason("CallTool on a 410 URL", err, codes.FailedPrecondition, "SERVER_NOT_FOUND")

	answer.Store(http.StatusNotFound)
	protected := mustCreate("protected", "/protected")
	_, err = s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: protected, User: "alice"})
	wantReason("StartAuthorization with authorization server metadata answering 404", err, codes.FailedPrecondition, "METADATA_NOT_FOUND")

	failing := mustCreate("failing", "/failing")
	_, err = tlCall(ctx, s, failing, "echo", map[string]any{"text": "x"})
	wantReason("CallTool on a 503 URL", err, codes.Unavailable, "UNAVAILABLE")
	_, err = s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: failing, User: "alice"})
	wantReason("StartAuthorization on a 503 URL", err, codes.Unavailable, "UNAVAILABLE")
}
