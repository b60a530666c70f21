package e2e

import (
	"net/http"
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestOAuthIssParameter checks the RFC 9207 mix-up defence at the
// callback: supported and present must match, supported and absent is
// refused, unsupported but present must match, unsupported and absent
// proceeds. A refused response never reaches the token endpoint.
func TestOAuthIssParameter(t *testing.T) {
	t.Parallel()
	const evil = "https://evil.example"
	cases := []struct {
		name      string
		supported bool
		// redirectIss: nil follows the metadata; else the value sent ("" none).
		redirectIss func(as *testauthz.AuthServer) *string
		ok          bool
	}{
		{name: "supported, present, equal", supported: true, ok: true},
		{name: "supported, absent", supported: true, redirectIss: func(*testauthz.AuthServer) *string { return ptr("") }},
		{name: "supported, mismatch", supported: true, redirectIss: func(*testauthz.AuthServer) *string { return ptr(evil) }},
		{name: "supported, issuer with trailing slash", supported: true,
			redirectIss: func(as *testauthz.AuthServer) *string { return ptr(as.URL + "/") }},
		{name: "unsupported, present, mismatch", redirectIss: func(*testauthz.AuthServer) *string { return ptr(evil) }},
		{name: "unsupported, present, equal", redirectIss: func(as *testauthz.AuthServer) *string { return ptr(as.URL) }, ok: true},
		{name: "unsupported, absent", ok: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, IssParameter: tc.supported}, testauthz.MCPServerOptions{}, Options{}, nil)
			if tc.redirectIss != nil {
				f.AS.SetRedirectIss(*tc.redirectIss(f.AS))
			}
			start := f.Start(t)
			b := NewBrowser(t)
			cb := oaToCallback(t, b, start.GetAuthorizationUrl())
			p := oaOpen(t, b, cb.String())
			if tc.ok {
				if p.Code != http.StatusOK || p.Title != "Authorization complete" {
					t.Fatalf("result %d %q %q", p.Code, p.Title, p.Reason)
				}
				if n := f.AS.Counts("/token"); n != 1 {
					t.Errorf("%d token requests", n)
				}
				return
			}
			oaFailed(t, p, "ISSUER_MISMATCH")
			if n := f.AS.Counts("/token"); n != 0 {
				t.Errorf("the code went to the token endpoint %d times after an iss failure", n)
			}
			if st := f.Status(t); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED {
				t.Errorf("status %v", st)
			}
			oaWantEvent(t, f.S, "acme", "oauth.callback.failed", "ISSUER_MISMATCH")
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestOAuthIssMismatchHidesError: after an iss mismatch nothing the
// authorization response says is shown, not even its error.
func TestOAuthIssMismatchHidesError(t *testing.T) {
	t.Parallel()
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true, Deny: true}, testauthz.MCPServerOptions{}, Options{}, nil)
	f.AS.SetRedirectIss("https://evil.example")
	start := f.Start(t)
	b := NewBrowser(t)
	cb := oaToCallback(t, b, start.GetAuthorizationUrl())
	if cb.Query().Get("error") != "access_denied" || cb.Query().Get("error_description") == "" {
		t.Fatalf("the authorization server did not answer an error with a description: %s", cb.Query())
	}
	q := cb.Query()
	q.Set("error_description", "Call +1-555-0100 and read out your code")
	cb.RawQuery = q.Encode()
	p := oaOpen(t, b, cb.String())
	oaFailed(t, p, "ISSUER_MISMATCH")
	if p.Detail != "" || strings.Contains(p.Body, "555-0100") || strings.Contains(p.Body, "access_denied") {
		t.Errorf("the page reflects the response of an unexpected issuer: %s", p.Body)
	}
}
