package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// oaWantBlocked fails tb unless err is an egress refusal (FAILED_PRECONDITION
// EGRESS_BLOCKED, or UNAVAILABLE, saying "egress blocked").
func oaWantBlocked(tb testing.TB, err error) {
	tb.Helper()
	c, _ := oaCode(err)
	if (c != codes.FailedPrecondition && c != codes.Unavailable) || !strings.Contains(status.Convert(err).Message(), "egress blocked") {
		tb.Fatalf("want an egress refusal, got %v", err)
	}
}

// oaLoopbackName returns a host name other than localhost that the system
// resolver maps to a loopback address (from /etc/hosts), or "".
func oaLoopbackName() string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, n := range []string{"vm", "runsc", "ip6-localhost", "ip6-loopback"} {
		addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", n)
		if err == nil && len(addrs) > 0 && addrs[0].IsLoopback() {
			return n
		}
	}
	return ""
}

// TestOAuthEgressProviderURL: without an allow-list, provider URLs that
// point into the service's own network never get a request: StartAuthorization
// is refused, a live server listening there sees no request, and the block
// is audited.
func TestOAuthEgressProviderURL(t *testing.T) {
	t.Parallel()
	live := newOACounter(t, "tcp", "127.0.0.1:0")
	var live6 *oaCounter
	if l, err := net.Listen("tcp", "[::1]:0"); err == nil {
		l.Close()
		live6 = newOACounter(t, "tcp", "[::1]:0")
	}
	p6 := live.Port
	if live6 != nil {
		p6 = live6.Port
	}
	s := Start(t, Options{})
	ctx := Ctx(t, s.AdminKey)
	urls := []string{
		"http://127.0.0.1:" + live.Port + "/mcp",
		"https://127.0.0.1:" + live.Port + "/mcp",
		"http://localhost:" + live.Port + "/mcp",
		"https://localhost:" + live.Port + "/mcp",
		"https://169.254.169.254/latest/meta-data/",
		"https://10.0.0.1/mcp",
		"https://100.64.0.1/mcp",
		"https://[::1]:" + p6 + "/mcp",
		"https://[::ffff:127.0.0.1]:" + live.Port + "/mcp",
		"https://[64:ff9b::7f00:1]:" + live.Port + "/mcp",
		"http://2130706433/mcp",
		"http://0x7f000001/mcp",
		"https://2130706433:" + live.Port + "/mcp",
		"https://127.1:" + live.Port + "/mcp",
	}
	if n := oaLoopbackName(); n != "" {
		// Passes the URL rules; refused when the socket connects.
		urls = append(urls, "https://"+n+":"+live.Port+"/mcp")
	}
	for i, u := range urls {
		id := "ssrf-" + string(rune('a'+i))
		resp, err := s.Providers().CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme", ProviderId: id,
			Provider: &mcpauthv1.Provider{DisplayName: id, ServerIdentifier: id, ServerUrl: u}})
		if err != nil {
			// Refusing the URL at the door is as good: no request is ever made.
			if c, _ := oaCode(err); c != codes.InvalidArgument {
				t.Errorf("%s: CreateProvider: %v", u, err)
			}
			t.Logf("%s: refused by CreateProvider: %v", u, status.Convert(err).Message())
			continue
		}
		name := resp.GetProvider().GetName()
		_, err = s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
		if err == nil {
			t.Errorf("%s: StartAuthorization succeeded", u)
			continue
		}
		c, _ := oaCode(err)
		if (c != codes.FailedPrecondition && c != codes.Unavailable) || !strings.Contains(status.Convert(err).Message(), "egress blocked") {
			t.Errorf("%s: want an egress refusal, got %v", u, err)
		}
		if st := oaStatusOf(t, s, ctx, name); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED {
			t.Errorf("%s: status %v", u, st)
		}
		found := false
		for _, ev := range oaEvents(t, s, "acme", "egress.blocked") {
			if ev.GetProvider() == name && ev.GetOutcome() == mcpauthv1.AuditOutcome_AUDIT_OUTCOME_DENIED {
				found = true
				if strings.Contains(protoText(ev), "/mcp") {
					t.Errorf("%s: the audit event carries the URL path: %v", u, ev)
				}
			}
		}
		if !found {
			t.Errorf("%s: no egress.blocked audit event", u)
		}
		// The diagnosis is refused the same way.
		diag, err := s.OAuth().DiagnoseProvider(ctx, &mcpauthv1.DiagnoseProviderRequest{Name: name})
		if err != nil || diag.GetReady() || !strings.Contains(diag.GetBlockingProblem(), "egress blocked") {
			t.Errorf("%s: DiagnoseProvider %v, %v", u, diag, err)
		}
	}
	if n := live.Hits(); n != 0 {
		t.Errorf("the loopback server received %d requests", n)
	}
	if live6 != nil && live6.Hits() != 0 {
		t.Errorf("the IPv6 loopback server received %d requests", live6.Hits())
	}
}

func protoText(ev *mcpauthv1.AuditEvent) string {
	raw, _ := json.Marshal(ev)
	return string(raw)
}

// oaFake is a hand-written MCP server and authorization server on
// 127.0.0.1 whose metadata a test controls, to play a hostile server.
type oaFake struct {
	URL string
	Mux *http.ServeMux
}

// newOAFake serves /mcp answering 401 with resource_metadata pointing at
// /prm, and a protected-resource metadata document at /prm naming itself
// as the authorization server, unless the test registers its own /prm.
func newOAFake(tb testing.TB) *oaFake {
	tb.Helper()
	f := &oaFake{Mux: http.NewServeMux()}
	srv := httptest.NewServer(f.Mux)
	tb.Cleanup(srv.Close)
	f.URL = srv.URL
	f.Mux.HandleFunc("/mcp", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer resource_metadata="`+f.URL+`/prm"`)
		w.WriteHeader(http.StatusUnauthorized)
	})
	return f
}

// PRM serves a protected-resource metadata document naming issuer.
func (f *oaFake) PRM(issuer string) {
	f.Mux.HandleFunc("/prm", func(w http.ResponseWriter, _ *http.Request) {
		oaJSON(w, map[string]any{"resource": f.URL + "/mcp", "authorization_servers": []string{issuer}})
	})
}

// ASMetadata serves RFC 8414 metadata for issuer f.URL with the given
// endpoints overriding the defaults on f.URL.
func (f *oaFake) ASMetadata(over map[string]any) {
	doc := map[string]any{
		"issuer":                           f.URL,
		"authorization_endpoint":           f.URL + "/authorize",
		"token_endpoint":                   f.URL + "/token",
		"response_types_supported":         []string{"code"},
		"code_challenge_methods_supported": []string{"S256"},
	}
	for k, v := range over {
		doc[k] = v
	}
	f.Mux.HandleFunc("/.well-known/oauth-authorization-server", func(w http.ResponseWriter, _ *http.Request) { oaJSON(w, doc) })
}

func oaJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// TestOAuthEgressMetadata: with only 127.0.0.1 allowed, a hostile server on
// 127.0.0.1 cannot use its metadata to make mcpauth reach other addresses:
// endpoints or issuers on blocked addresses, redirects to them, oversized
// documents and hanging answers are all refused, within bounded time.
func TestOAuthEgressMetadata(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{Env: oaAllowEnv()})
	// Every subtest makes its own caller context: parallel subtests may
	// start long after this function returns.
	newProvider := func(t *testing.T, f *oaFake, id string, mut func(*mcpauthv1.Provider)) string {
		return createProvider(t, s, s.AdminKey, "acme", id, f.URL+"/mcp", mut)
	}
	start := func(ctx context.Context, name string) error {
		_, err := s.OAuth().StartAuthorization(ctx, &mcpauthv1.StartAuthorizationRequest{Name: name, User: "alice"})
		return err
	}
	blockedEndpoints := []struct {
		id   string
		over map[string]any
	}{
		{"token-private", map[string]any{"token_endpoint": "https://10.0.0.1/token"}},
		{"token-metadata-ip", map[string]any{"token_endpoint": "https://169.254.169.254/token"}},
		{"authorize-private", map[string]any{"authorization_endpoint": "https://10.0.0.1/authorize"}},
		{"authorize-metadata-ip", map[string]any{"authorization_endpoint": "https://169.254.169.254/authorize"}},
		{"register-metadata-ip", map[string]any{"registration_endpoint": "https://169.254.169.254/register"}},
		{"token-decimal", map[string]any{"token_endpoint": "https://2130706433/token"}},
	}
	for _, tc := range blockedEndpoints {
		t.Run("endpoint "+tc.id, func(t *testing.T) {
			t.Parallel()
			ctx := Ctx(t, s.AdminKey)
			f := newOAFake(t)
			f.PRM(f.URL)
			f.ASMetadata(tc.over)
			name := newProvider(t, f, tc.id, func(p *mcpauthv1.Provider) {
				p.OauthClient = &mcpauthv1.OAuthClient{ClientId: "pre", ClientSecret: "pre-secret"}
			})
			oaWantBlocked(t, start(ctx, name))
			if st := oaStatusOf(t, s, ctx, name); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED {
				t.Errorf("status %v", st)
			}
			oaWantProviderEvent(t, s, name, "egress.blocked")
		})
	}
	for i, issuer := range []string{"https://10.0.0.1", "https://169.254.169.254", "http://2130706433", "https://0x7f000001", "https://[fd00::1]"} {
		t.Run("issuer "+issuer, func(t *testing.T) {
			t.Parallel()
			ctx := Ctx(t, s.AdminKey)
			f := newOAFake(t)
			f.PRM(issuer)
			name := newProvider(t, f, "issuer-"+strconv.Itoa(i), nil)
			oaWantBlocked(t, start(ctx, name))
			oaWantProviderEvent(t, s, name, "egress.blocked")
		})
	}
	for i, target := range []string{"http://169.254.169.254/latest/meta-data/", "https://169.254.169.254/latest/meta-data/", "https://10.0.0.1/prm"} {
		t.Run("redirect to "+target, func(t *testing.T) {
			t.Parallel()
			ctx := Ctx(t, s.AdminKey)
			f := newOAFake(t)
			f.Mux.HandleFunc("/prm", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, target, http.StatusFound) })
			name := newProvider(t, f, "redirect-"+strconv.Itoa(i), nil)
			oaWantBlocked(t, start(ctx, name))
			oaWantProviderEvent(t, s, name, "egress.blocked")
		})
	}
	t.Run("oversized prm", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t, s.AdminKey)
		f := newOAFake(t)
		f.Mux.HandleFunc("/prm", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"resource":"` + f.URL + `/mcp","authorization_servers":["` + f.URL + `"],"x":"`))
			chunk := []byte(strings.Repeat("a", 64<<10))
			for range 32 { // 2 MiB
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
			_, _ = w.Write([]byte(`"}`))
		})
		name := newProvider(t, f, "oversized", nil)
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		t0 := time.Now()
		err := start(cctx, name)
		if err == nil {
			t.Fatal("an oversized metadata document was accepted")
		}
		if c, _ := oaCode(err); c == codes.DeadlineExceeded || time.Since(t0) > 3*time.Second {
			t.Errorf("refused only after %s: %v", time.Since(t0), err)
		}
		t.Logf("oversized document refused in %s: %v", time.Since(t0).Round(time.Millisecond), err)
		if !strings.Contains(status.Convert(err).Message(), "too large") {
			t.Errorf("error does not say the document is too large: %v", err)
		}
	})
	t.Run("hanging metadata, caller deadline", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t, s.AdminKey)
		f := newOAFake(t)
		f.Mux.HandleFunc("/prm", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
		name := newProvider(t, f, "hang-deadline", nil)
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		t0 := time.Now()
		err := start(cctx, name)
		if err == nil || !oaIsTimeout(err) {
			t.Fatalf("want DEADLINE_EXCEEDED or UNAVAILABLE, got %v", err)
		}
		if d := time.Since(t0); d > 5*time.Second {
			t.Errorf("returned after %s", d)
		}
		if st := oaStatusOf(t, s, ctx, name); st != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED {
			t.Errorf("status %v", st)
		}
	})
	t.Run("hanging metadata, no caller deadline", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t, s.AdminKey)
		f := newOAFake(t)
		f.Mux.HandleFunc("/prm", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
		name := newProvider(t, f, "hang-egress", nil)
		t0 := time.Now()
		err := start(ctx, name) // Ctx allows 30s: the egress header timeout (10s) must end it first
		if err == nil || !oaIsTimeout(err) {
			t.Fatalf("want DEADLINE_EXCEEDED or UNAVAILABLE from the egress timeout, got %v", err)
		}
		if d := time.Since(t0); d > 15*time.Second {
			t.Errorf("returned after %s", d)
		}
		t.Logf("hanging server abandoned after %s", time.Since(t0).Round(time.Millisecond))
	})
}

// oaWantProviderEvent fails tb unless an event of typ exists for the
// provider name in its tenant.
func oaWantProviderEvent(tb testing.TB, s *Service, name, typ string) {
	tb.Helper()
	tenant := strings.Split(name, "/")[1]
	for _, ev := range oaEvents(tb, s, tenant, typ) {
		if ev.GetProvider() == name {
			return
		}
	}
	tb.Errorf("no %s audit event for %s", typ, name)
}
