package e2e

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestOAuthCallbackRepeatedParams: a callback whose state, iss, code, error
// or error_description appears twice (RFC 6749 section 3.1), on either
// callback path and from either browser, gets the failure page with
// DUPLICATE_PARAMETER and consumes nothing: no token request, the cookie is
// kept, and the browser that started the flow still completes it.
func TestOAuthCallbackRepeatedParams(t *testing.T) {
	t.Parallel()
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true}, testauthz.MCPServerOptions{}, Options{}, nil)
	start := f.Start(t)
	b := NewBrowser(t)
	cb := oaToCallback(t, b, start.GetAuthorizationUrl())
	q := cb.Query()
	for _, param := range []string{"state", "iss", "code", "error", "error_description"} {
		for _, path := range []string{callbackPath, "/console/api/mcp/oauth/callback"} {
			for _, agent := range []*Browser{b, NewBrowser(t)} {
				forged := url.Values{}
				for k, v := range q {
					forged[k] = append([]string(nil), v...)
				}
				// The repeated value is the genuine one as well as a
				// different one: neither order nor equality makes it pass.
				forged[param] = append(forged[param], "x", q.Get(param))
				u := f.S.HTTPURL + path + "?" + forged.Encode()
				p := oaOpen(t, agent, u)
				oaFailed(t, p, "DUPLICATE_PARAMETER")
				if p.Code != http.StatusBadRequest {
					t.Errorf("%s repeated on %s: status %d, want 400", param, path, p.Code)
				}
				if sc := p.Header.Values("Set-Cookie"); len(sc) != 0 {
					t.Errorf("%s repeated on %s: the refusal touched cookies: %v", param, path, sc)
				}
			}
		}
	}
	// A percent-encoded name is the same parameter.
	oaFailed(t, oaOpen(t, b, f.S.HTTPURL+callbackPath+"?"+cb.RawQuery+"&st%61te=x"), "DUPLICATE_PARAMETER")
	if n := f.AS.Counts("/token"); n != 0 {
		t.Fatalf("%d token requests after refused callbacks", n)
	}
	if st := f.Status(t); st == mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatalf("status %v after refused callbacks", st)
	}
	p := oaOpen(t, b, cb.String())
	if p.Code != http.StatusOK || p.Title != "Authorization complete" {
		t.Fatalf("the genuine callback after the refused ones: %d %q reason %q", p.Code, p.Title, p.Reason)
	}
	if st := f.Status(t); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
		t.Fatalf("status after the genuine callback = %v", st)
	}
	if strings.Contains(p.Body, "DUPLICATE") {
		t.Errorf("success page mentions the refusal: %s", p.Body)
	}
}
