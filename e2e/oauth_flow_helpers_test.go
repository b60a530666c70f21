package e2e

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"testing"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// Browser is a user agent with its own cookie jar that follows redirects,
// recording every URL it visited.
type Browser struct {
	Client  *http.Client
	Visited []*url.URL
}

// NewBrowser returns a fresh user agent (a fresh cookie jar: another browser).
func NewBrowser(tb testing.TB) *Browser {
	tb.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		tb.Fatal(err)
	}
	b := &Browser{}
	b.Client = &http.Client{Jar: jar, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		b.Visited = append(b.Visited, req.URL)
		if len(via) > 10 {
			return http.ErrUseLastResponse
		}
		return nil
	}}
	return b
}

// Open GETs u, following redirects, and returns the final status and body.
func (b *Browser) Open(tb testing.TB, u string) (int, string, *url.URL) {
	tb.Helper()
	resp, err := b.Client.Get(u)
	if err != nil {
		tb.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Request.URL
}

// createProvider creates a provider for serverURL in tenant and returns its name.
func createProvider(tb testing.TB, s *Service, key, tenant, id, serverURL string, mut func(p *mcpauthv1.Provider)) string {
	tb.Helper()
	p := &mcpauthv1.Provider{DisplayName: id, ServerIdentifier: id, ServerUrl: serverURL}
	if mut != nil {
		mut(p)
	}
	resp, err := s.Providers().CreateProvider(Ctx(tb, key), &mcpauthv1.CreateProviderRequest{Parent: "tenants/" + tenant, ProviderId: id, Provider: p})
	if err != nil {
		tb.Fatalf("CreateProvider: %v", err)
	}
	return resp.GetProvider().GetName()
}
