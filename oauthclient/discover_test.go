package oauthclient

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func newTestClient(tb testing.TB, opts ...Option) *Client {
	tb.Helper()
	c, err := New(&http.Client{Timeout: 10 * time.Second}, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// fakeClock is a settable clock safe for concurrent reads.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = f.t.Add(d)
}

// tracePaths renders a trace as "path:ok" items for comparison.
func tracePaths(ts *testServer, tr *Trace) []string {
	var out []string
	for _, s := range tr.Steps {
		p := strings.TrimPrefix(s.URL, ts.URL())
		if s.OK {
			p += " ok"
		}
		out = append(out, s.Action+" "+p)
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDiscoverPathVariants(t *testing.T) {
	t.Parallel()
	const (
		prm      = ActionProtectedResourceMetadata
		asm      = ActionAuthServerMetadata
		probe    = ActionProbe
		defaults = ActionLegacyDefaultEndpoints
	)
	tests := []struct {
		name       string
		setup      func(ts *testServer)
		wantTrace  []string
		wantPRMURL string // relative to the server; "" for legacy
		legacy     bool
		defaults   bool
	}{
		{
			name: "challenge resource_metadata",
			setup: func(ts *testServer) {
				ts.challenge = func() string {
					return `Bearer resource_metadata="` + ts.srv.URL + `/meta/prm", scope="read write"`
				}
				ts.prmPaths["/meta/prm"] = true
				ts.asMetaPaths["/.well-known/oauth-authorization-server"] = ts.srv.URL
			},
			wantTrace: []string{
				probe + " /mcp ok",
				prm + " /meta/prm ok",
				asm + " /.well-known/oauth-authorization-server ok",
			},
			wantPRMURL: "/meta/prm",
		},
		{
			name: "path-inserted protected resource metadata",
			setup: func(ts *testServer) {
				ts.prmPaths["/.well-known/oauth-protected-resource/mcp"] = true
				ts.asMetaPaths["/.well-known/oauth-authorization-server"] = ts.srv.URL
			},
			wantTrace: []string{
				probe + " /mcp ok",
				prm + " /.well-known/oauth-protected-resource/mcp ok",
				asm + " /.well-known/oauth-authorization-server ok",
			},
			wantPRMURL: "/.well-known/oauth-protected-resource/mcp",
		},
		{
			name: "root protected resource metadata",
			setup: func(ts *testServer) {
				ts.prmPaths["/.well-known/oauth-protected-resource"] = true
				ts.asMetaPaths["/.well-known/oauth-authorization-server"] = ts.srv.URL
			},
			wantTrace: []string{
				probe + " /mcp ok",
				prm + " /.well-known/oauth-protected-resource/mcp",
				prm + " /.well-known/oauth-protected-resource ok",
				asm + " /.well-known/oauth-authorization-server ok",
			},
			wantPRMURL: "/.well-known/oauth-protected-resource",
		},
		{
			name: "issuer with path, oauth path-insert",
			setup: func(ts *testServer) {
				ts.issuerPath = "/tenant1"
				ts.prmPaths["/.well-known/oauth-protected-resource/mcp"] = true
				ts.asMetaPaths["/.well-known/oauth-authorization-server/tenant1"] = ts.srv.URL + "/tenant1"
			},
			wantTrace: []string{
				probe + " /mcp ok",
				prm + " /.well-known/oauth-protected-resource/mcp ok",
				asm + " /.well-known/oauth-authorization-server/tenant1 ok",
			},
			wantPRMURL: "/.well-known/oauth-protected-resource/mcp",
		},
		{
			name: "issuer with path, oidc path-insert",
			setup: func(ts *testServer) {
				ts.issuerPath = "/tenant1"
				ts.prmPaths["/.well-known/oauth-protected-resource/mcp"] = true
				ts.asMetaPaths["/.well-known/openid-configuration/tenant1"] = ts.srv.URL + "/tenant1"
			},
			wantTrace: []string{
				probe + " /mcp ok",
				prm + " /.well-known/oauth-protected-resource/mcp ok",
				asm + " /.well-known/oauth-authorization-server/tenant1",
				asm + " /.well-known/openid-configuration/tenant1 ok",
			},
			wantPRMURL: "/.well-known/oauth-protected-resource/mcp",
		},
		{
			name: "issuer with path, oidc path-append",
			setup: func(ts *testServer) {
				ts.issuerPath = "/tenant1"
				ts.prmPaths["/.well-known/oauth-protected-resource/mcp"] = true
				ts.asMetaPaths["/tenant1/.well-known/openid-configuration"] = ts.srv.URL + "/tenant1"
			},
			wantTrace: []string{
				probe + " /mcp ok",
				prm + " /.well-known/oauth-protected-resource/mcp ok",
				asm + " /.well-known/oauth-authorization-server/tenant1",
				asm + " /.well-known/openid-configuration/tenant1",
				asm + " /tenant1/.well-known/openid-configuration ok",
			},
			wantPRMURL: "/.well-known/oauth-protected-resource/mcp",
		},
		{
			name: "issuer without path, oauth",
			setup: func(ts *testServer) {
				ts.prmPaths["/.well-known/oauth-protected-resource/mcp"] = true
				ts.asMetaPaths["/.well-known/oauth-authorization-server"] = ts.srv.URL
			},
			wantTrace: []string{
				probe + " /mcp ok",
				prm + " /.well-known/oauth-protected-resource/mcp ok",
				asm + " /.well-known/oauth-authorization-server ok",
			},
			wantPRMURL: "/.well-known/oauth-protected-resource/mcp",
		},
		{
			name: "issuer without path, oidc",
			setup: func(ts *testServer) {
				ts.prmPaths["/.well-known/oauth-protected-resource/mcp"] = true
				ts.asMetaPaths["/.well-known/openid-configuration"] = ts.srv.URL
			},
			wantTrace: []string{
				probe + " /mcp ok",
				prm + " /.well-known/oauth-protected-resource/mcp ok",
				asm + " /.well-known/oauth-authorization-server",
				asm + " /.well-known/openid-configuration ok",
			},
			wantPRMURL: "/.well-known/oauth-protected-resource/mcp",
		},
		{
			name: "legacy: no protected resource metadata, origin metadata",
			setup: func(ts *testServer) {
				ts.asMetaPaths["/.well-known/oauth-authorization-server"] = ts.srv.URL
			},
			wantTrace: []string{
				probe + " /mcp ok",
				prm + " /.well-known/oauth-protected-resource/mcp",
				prm + " /.well-known/oauth-protected-resource",
				asm + " /.well-known/oauth-authorization-server ok",
			},
			legacy: true,
		},
		{
			name:  "legacy: default endpoints",
			setup: func(ts *testServer) {},
			wantTrace: []string{
				probe + " /mcp ok",
				prm + " /.well-known/oauth-protected-resource/mcp",
				prm + " /.well-known/oauth-protected-resource",
				asm + " /.well-known/oauth-authorization-server",
				asm + " /.well-known/openid-configuration",
				defaults + "  ok",
			},
			legacy:   true,
			defaults: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t)
			ts.config(tt.setup)
			c := newTestClient(t)
			ctx := context.Background()
			var tr Trace
			pr, err := c.Probe(ctx, ts.resource(), nil, &tr)
			if err != nil {
				t.Fatalf("Probe: %v", err)
			}
			if pr.NotRequired || pr.Status != http.StatusUnauthorized {
				t.Fatalf("probe = %+v", pr)
			}
			md, err := c.Discover(ctx, ts.resource(), ts.resource(), pr, &tr)
			if err != nil {
				t.Fatalf("Discover: %v (trace %q)", err, tracePaths(ts, &tr))
			}
			if got := tracePaths(ts, &tr); !equalStrings(got, tt.wantTrace) {
				t.Errorf("trace:\n got %q\nwant %q", got, tt.wantTrace)
			}
			if md.Legacy != tt.legacy || md.DefaultEndpoints != tt.defaults {
				t.Errorf("Legacy=%v DefaultEndpoints=%v, want %v %v", md.Legacy, md.DefaultEndpoints, tt.legacy, tt.defaults)
			}
			wantPRM := ""
			if tt.wantPRMURL != "" {
				wantPRM = ts.URL() + tt.wantPRMURL
			}
			if md.ResourceMetadataURL != wantPRM {
				t.Errorf("ResourceMetadataURL = %q, want %q", md.ResourceMetadataURL, wantPRM)
			}
			if md.Resource != ts.resource() {
				t.Errorf("Resource = %q", md.Resource)
			}
			if md.Issuer != ts.issuer() {
				t.Errorf("Issuer = %q, want %q", md.Issuer, ts.issuer())
			}
			wantAuthz, wantToken := ts.URL()+"/authorize", ts.URL()+"/token"
			if md.AuthorizationEndpoint != wantAuthz || md.TokenEndpoint != wantToken || md.RegistrationEndpoint != ts.URL()+"/register" {
				t.Errorf("endpoints = %q %q %q", md.AuthorizationEndpoint, md.TokenEndpoint, md.RegistrationEndpoint)
			}
			if md.SupportsS256() == tt.defaults {
				t.Errorf("SupportsS256 = %v with default endpoints %v", md.SupportsS256(), tt.defaults)
			}
		})
	}
}

func TestProbeChallengeScopes(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).config(func(ts *testServer) {
		ts.challenge = func() string {
			return `Basic realm="x", Bearer error="invalid_token", resource_metadata="` + ts.srv.URL + `/prm?x=1", scope="read write"`
		}
	})
	c := newTestClient(t)
	pr, err := c.Probe(context.Background(), ts.resource(), map[string]string{"X-Api-Key": "key-value"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pr.ResourceMetadataURL != ts.URL()+"/prm?x=1" || !equalStrings(pr.Scopes, []string{"read", "write"}) || pr.Error != "invalid_token" {
		t.Fatalf("probe = %+v", pr)
	}
}

func TestProbeOpenServer(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).config(func(ts *testServer) { ts.open = true })
	c := newTestClient(t)
	var tr Trace
	pr, err := c.Probe(context.Background(), ts.resource(), nil, &tr)
	if err != nil {
		t.Fatal(err)
	}
	if !pr.NotRequired || pr.Status != http.StatusOK {
		t.Fatalf("probe = %+v", pr)
	}
	ts.mu.Lock()
	ended := ts.sessionsEnded
	ts.mu.Unlock()
	if ended != 1 {
		t.Errorf("sessions ended = %d, want 1", ended)
	}
}

func TestProbeUnexpectedStatus(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	c := newTestClient(t)
	var tr Trace
	_, err := c.Probe(context.Background(), ts.URL()+"/nowhere", nil, &tr)
	var se *StatusError
	if !errors.As(err, &se) || se.Status != http.StatusNotFound {
		t.Fatalf("err = %v, want StatusError 404", err)
	}
	if len(tr.Steps) != 1 || tr.Steps[0].OK || tr.Steps[0].HTTPStatus != 404 {
		t.Errorf("trace = %+v", tr.Steps)
	}
}

func TestDiscoverIssuerMismatchSkipped(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).config(func(ts *testServer) {
		ts.issuerPath = "/tenant1"
		ts.prmPaths["/.well-known/oauth-protected-resource/mcp"] = true
		ts.asMetaPaths["/.well-known/oauth-authorization-server/tenant1"] = "https://evil.example"
		ts.asMetaPaths["/.well-known/openid-configuration/tenant1"] = ts.srv.URL + "/tenant1"
	})
	c := newTestClient(t)
	var tr Trace
	md, err := c.Discover(context.Background(), ts.resource(), ts.resource(), nil, &tr)
	if err != nil {
		t.Fatal(err)
	}
	if md.Issuer != ts.issuer() {
		t.Errorf("Issuer = %q", md.Issuer)
	}
	var skipped *Step
	for i := range tr.Steps {
		if strings.HasSuffix(tr.Steps[i].URL, "/.well-known/oauth-authorization-server/tenant1") {
			skipped = &tr.Steps[i]
		}
	}
	if skipped == nil || skipped.OK || skipped.HTTPStatus != 200 || !strings.Contains(skipped.Detail, "issuer mismatch") {
		t.Fatalf("mismatched document not recorded as skipped: %+v", tr.Steps)
	}
}

func TestDiscoverIssuerMismatchEverywhere(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).config(func(ts *testServer) {
		ts.prmPaths["/.well-known/oauth-protected-resource/mcp"] = true
		ts.asMetaPaths["/.well-known/oauth-authorization-server"] = "https://evil.example"
		ts.asMetaPaths["/.well-known/openid-configuration"] = ts.srv.URL + "/other"
	})
	c := newTestClient(t)
	_, err := c.Discover(context.Background(), ts.resource(), ts.resource(), nil, nil)
	if !errors.Is(err, ErrIssuerMismatch) {
		t.Fatalf("err = %v, want ErrIssuerMismatch", err)
	}
}

func TestDiscoverLegacyRejectedDocumentIsNotReplacedByDefaults(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).config(func(ts *testServer) {
		ts.asMetaPaths["/.well-known/oauth-authorization-server"] = "https://evil.example"
	})
	c := newTestClient(t)
	_, err := c.Discover(context.Background(), ts.resource(), ts.resource(), nil, nil)
	if !errors.Is(err, ErrIssuerMismatch) {
		t.Fatalf("err = %v, want ErrIssuerMismatch", err)
	}
}

func TestDiscoverResourceMismatch(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).modern().config(func(ts *testServer) {
		ts.prmResource = "https://other.example/mcp"
	})
	c := newTestClient(t)
	var tr Trace
	_, err := c.Discover(context.Background(), ts.resource(), ts.resource(), nil, &tr)
	if !errors.Is(err, ErrResourceMismatch) {
		t.Fatalf("err = %v, want ErrResourceMismatch", err)
	}
	// No fallback: the root document and the authorization server are not
	// consulted after a mismatch.
	if n := ts.hitCount("/.well-known/oauth-protected-resource"); n != 0 {
		t.Errorf("root metadata fetched %d times after mismatch", n)
	}
	if n := ts.hitCount("/.well-known/oauth-authorization-server"); n != 0 {
		t.Errorf("authorization server metadata fetched %d times after mismatch", n)
	}
	last := tr.Steps[len(tr.Steps)-1]
	// Both values are shown (DiagnoseProvider hides the provider's path).
	if last.OK || !strings.Contains(last.Detail, "resource mismatch") || !strings.Contains(last.Detail, `"https://other.example/mcp"`) ||
		!strings.Contains(last.Detail, `"`+ts.resource()+`"`) {
		t.Errorf("last step = %+v", last)
	}
}

func TestDiscoverNoPKCE(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).modern().config(func(ts *testServer) { ts.noPKCE = true })
	c := newTestClient(t)
	md, err := c.Discover(context.Background(), ts.resource(), ts.resource(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if md.SupportsS256() {
		t.Fatal("SupportsS256 = true without code_challenge_methods_supported")
	}
	_, challenge, _ := NewPKCE()
	state, _ := NewState()
	req := AuthRequest{Metadata: md, ClientID: "c", RedirectURI: "https://app.example/cb", State: state, CodeChallenge: challenge}
	if _, err := AuthorizationURL(req); !errors.Is(err, ErrNoPKCE) {
		t.Fatalf("AuthorizationURL err = %v, want ErrNoPKCE", err)
	}
	req.PKCEException = true
	if _, err := AuthorizationURL(req); err != nil {
		t.Fatalf("AuthorizationURL with exception: %v", err)
	}
	md.CodeChallengeMethods = []string{"plain"}
	if md.SupportsS256() {
		t.Fatal("SupportsS256 = true with plain only")
	}
}

func TestDiscoverOversizedMetadata(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).modern().config(func(ts *testServer) { ts.metaPad = maxMetadataBytes })
	c := newTestClient(t)
	_, err := c.Discover(context.Background(), ts.resource(), ts.resource(), nil, nil)
	if !errors.Is(err, ErrResponseTooLarge) {
		t.Fatalf("err = %v, want ErrResponseTooLarge", err)
	}
}

func TestDiscoverServerErrorIsTemporaryNotLegacy(t *testing.T) {
	t.Parallel()
	// A 503 at the metadata location must not be read as "no metadata"
	// (which would switch to the legacy rules and another issuer).
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	srv := newRawServer(t, mux)
	c := newTestClient(t)
	_, err := c.Discover(context.Background(), srv+"/mcp", srv+"/mcp", nil, nil)
	var te *TemporaryError
	if !errors.As(err, &te) || te.Status != 503 || te.RetryAfter != 5*time.Second {
		t.Fatalf("err = %v, want TemporaryError 503 RetryAfter 5s", err)
	}
}

// newRawServer starts a loopback server with h and returns its URL.
func newRawServer(tb testing.TB, h http.Handler) string {
	tb.Helper()
	srv := httptest.NewServer(h)
	tb.Cleanup(srv.Close)
	return srv.URL
}

func TestMetadataCacheTTL(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).config(func(ts *testServer) {
		ts.issuerPath = "/tenant1"
		// Root PRM and path-append AS metadata: misses are cached too.
		ts.prmPaths["/.well-known/oauth-protected-resource"] = true
		ts.asMetaPaths["/tenant1/.well-known/openid-configuration"] = ts.srv.URL + "/tenant1"
	})
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	c := newTestClient(t, WithClock(clock.Now), WithMetadataTTL(10*time.Minute))
	ctx := context.Background()
	if _, err := c.Discover(ctx, ts.resource(), ts.resource(), nil, nil); err != nil {
		t.Fatal(err)
	}
	first := ts.totalHits()
	if first != 5 {
		t.Fatalf("first discovery made %d requests, want 5", first)
	}
	clock.Advance(9 * time.Minute)
	var tr Trace
	md, err := c.Discover(ctx, ts.resource(), ts.resource(), nil, &tr)
	if err != nil {
		t.Fatal(err)
	}
	if n := ts.totalHits(); n != first {
		t.Fatalf("second discovery within TTL made %d requests", n-first)
	}
	if md.Issuer != ts.issuer() {
		t.Errorf("cached Issuer = %q", md.Issuer)
	}
	for _, s := range tr.Steps {
		if !strings.HasPrefix(s.Detail, "cached; ") {
			t.Errorf("step not marked cached: %+v", s)
		}
	}
	clock.Advance(2 * time.Minute)
	if _, err := c.Discover(ctx, ts.resource(), ts.resource(), nil, nil); err != nil {
		t.Fatal(err)
	}
	if n := ts.totalHits(); n != 2*first {
		t.Fatalf("discovery after TTL made %d requests, want %d", n-first, first)
	}
}

func TestMetadataCacheBounded(t *testing.T) {
	t.Parallel()
	m := newMetadataCache(3, 10)
	now := time.Unix(0, 0)
	exp := now.Add(time.Hour)
	m.put("a", fetchResult{status: 200, body: []byte("1234")}, exp)
	m.put("b", fetchResult{status: 200, body: []byte("1234")}, exp)
	m.put("c", fetchResult{status: 200, body: []byte("1234")}, exp) // 12 bytes: evicts a
	if _, ok := m.get("a", now); ok {
		t.Error("a not evicted by the byte limit")
	}
	m.put("d", fetchResult{status: 404}, exp)
	m.put("e", fetchResult{status: 404}, exp) // 4 entries: evicts b
	if _, ok := m.get("b", now); ok {
		t.Error("b not evicted by the entry limit")
	}
	if m.len() != 3 {
		t.Errorf("len = %d, want 3", m.len())
	}
	m.put("big", fetchResult{status: 200, body: make([]byte, 11)}, exp)
	if _, ok := m.get("big", now); ok {
		t.Error("an entry over the byte limit was cached")
	}
	if _, ok := m.get("e", exp); ok {
		t.Error("expired entry returned")
	}
}

func TestAuthServerMetadataURLs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		issuer string
		want   []string
	}{
		{"https://as.example", []string{
			"https://as.example/.well-known/oauth-authorization-server",
			"https://as.example/.well-known/openid-configuration",
		}},
		{"https://as.example/", []string{
			"https://as.example/.well-known/oauth-authorization-server",
			"https://as.example/.well-known/openid-configuration",
		}},
		{"https://as.example/t/1/", []string{
			"https://as.example/.well-known/oauth-authorization-server/t/1",
			"https://as.example/.well-known/openid-configuration/t/1",
			"https://as.example/t/1/.well-known/openid-configuration",
		}},
	}
	for _, tt := range tests {
		got, err := AuthServerMetadataURLs(tt.issuer)
		if err != nil || !equalStrings(got, tt.want) {
			t.Errorf("AuthServerMetadataURLs(%q) = %q, %v", tt.issuer, got, err)
		}
	}
	for _, bad := range []string{"", "as.example", "https://as.example/?q=1", "https://as.example/#f", "javascript:alert(1)", "https://u:p@as.example"} {
		if _, err := AuthServerMetadataURLs(bad); err == nil {
			t.Errorf("AuthServerMetadataURLs(%q) accepted", bad)
		}
	}
}

func TestSameIssuerAndResource(t *testing.T) {
	t.Parallel()
	issuers := []struct {
		a, b string
		want bool
	}{
		{"https://as.example", "https://as.example", true},
		{"https://as.example/", "https://as.example", true},
		{"https://as.example/t", "https://as.example/t/", false},
		{"https://AS.example", "https://as.example", false},
		{"https://as.example", "http://as.example", false},
		{"", "", true},
		{"", "https://as.example", false},
	}
	for _, tt := range issuers {
		if got := SameIssuer(tt.a, tt.b); got != tt.want {
			t.Errorf("SameIssuer(%q, %q) = %v", tt.a, tt.b, got)
		}
	}
	resources := []struct {
		a, b string
		want bool
	}{
		{"https://mcp.example/mcp", "https://mcp.example/mcp", true},
		{"HTTPS://MCP.example:443/mcp", "https://mcp.example/mcp", true},
		{"https://mcp.example", "https://mcp.example/", true},
		{"https://mcp.example/mcp/", "https://mcp.example/mcp", false},
		{"https://mcp.example/MCP", "https://mcp.example/mcp", false},
		{"https://mcp.example", "https://mcp.example/mcp", false},
		{"https://mcp.example:8443/mcp", "https://mcp.example/mcp", false},
	}
	for _, tt := range resources {
		if got := SameResource(tt.a, tt.b); got != tt.want {
			t.Errorf("SameResource(%q, %q) = %v", tt.a, tt.b, got)
		}
	}
}

func TestDiscoverCatchAllHTMLIsLegacyDefaults(t *testing.T) {
	t.Parallel()
	srv := newRawServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte("<html>app</html>"))
	}))
	c := newTestClient(t)
	var tr Trace
	md, err := c.Discover(context.Background(), srv+"/mcp", srv+"/mcp", nil, &tr)
	if err != nil {
		t.Fatal(err)
	}
	if !md.Legacy || !md.DefaultEndpoints || md.TokenEndpoint != srv+"/token" || md.Issuer != srv {
		t.Fatalf("metadata = %+v", md)
	}
	if len(tr.Steps) != 5 {
		t.Errorf("trace = %+v", tr.Steps)
	}
}

func TestDiscoverPRMWithoutAuthorizationServers(t *testing.T) {
	t.Parallel()
	srv := newRawServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/.well-known/oauth-protected-resource/mcp" {
			writeJSON(w, 200, map[string]any{"resource": "http://" + r.Host + "/mcp"})
			return
		}
		http.NotFound(w, r)
	}))
	c := newTestClient(t)
	if _, err := c.Discover(context.Background(), srv+"/mcp", srv+"/mcp", nil, nil); err == nil {
		t.Fatal("accepted metadata without authorization_servers")
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	if _, err := New(nil); err == nil {
		t.Error("New(nil) succeeded")
	}
	hc := &http.Client{}
	for _, o := range []Option{WithClock(nil), WithMetadataTTL(-1), WithCacheLimits(0, 1), WithClientInfo("", "1")} {
		if _, err := New(hc, o); err == nil {
			t.Error("invalid option accepted")
		}
	}
}
