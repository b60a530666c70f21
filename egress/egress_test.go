package egress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

// counted is an httptest server on 127.0.0.1 that counts requests.
type counted struct {
	*httptest.Server
	hits atomic.Int64
}

func newCounted(tb testing.TB, h http.HandlerFunc) *counted {
	tb.Helper()
	c := &counted{}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.hits.Add(1)
		if h != nil {
			h(w, r)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	tb.Cleanup(c.Close)
	return c
}

func (c *counted) port() string {
	_, p, _ := net.SplitHostPort(c.Listener.Addr().String())
	return p
}

func newGuard(tb testing.TB, cfg Config) *Guard {
	tb.Helper()
	g, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return g
}

func wantBlocked(tb testing.TB, err error) *BlockedError {
	tb.Helper()
	var be *BlockedError
	if !errors.As(err, &be) {
		tb.Fatalf("error = %v, want *BlockedError", err)
	}
	return be
}

func TestCheckURLRefuses(t *testing.T) {
	t.Parallel()
	g := newGuard(t, Config{})
	tests := []struct {
		name, url, reason string
	}{
		{"loopback http", "http://127.0.0.1/", "https required"},
		{"loopback https", "https://127.0.0.1/", "loopback"},
		{"localhost http", "http://localhost/", "https required"},
		{"localhost https", "https://localhost/", "loopback"},
		{"sub.localhost", "https://a.b.localhost./", "loopback"},
		{"metadata", "https://169.254.169.254/latest/meta-data", "link-local"},
		{"10/8", "https://10.0.0.1/", "private"},
		{"172.16/12", "https://172.16.0.1/", "private"},
		{"192.168/16", "https://192.168.1.1/", "private"},
		{"cgnat", "https://100.64.0.1/", "shared address space"},
		{"ipv6 loopback", "https://[::1]/", "loopback"},
		{"ula", "https://[fc00::1]/", "unique local"},
		{"ipv6 link-local", "https://[fe80::1]/", "link-local"},
		{"ipv6 link-local zone", "https://[fe80::1%25eth0]/", "zone"},
		{"ipv4-mapped loopback", "https://[::ffff:127.0.0.1]/", "ipv4-mapped loopback"},
		{"nat64 loopback", "https://[64:ff9b::7f00:1]/", "nat64 of loopback"},
		{"nat64 metadata", "https://[64:ff9b::a9fe:a9fe]/", "nat64 of link-local"},
		{"6to4", "https://[2002:7f00:1::]/", "6to4"},
		{"ipv6 multicast", "https://[ff02::1]/", "multicast"},
		{"ipv4 multicast", "https://224.0.0.1/", "multicast"},
		{"broadcast", "https://255.255.255.255/", "reserved"},
		{"documentation", "https://192.0.2.1/", "reserved"},
		{"decimal", "https://2130706433/", "non-canonical"},
		{"hex", "https://0x7f000001/", "non-canonical"},
		{"hex upper", "https://0X7F000001/", "non-canonical"},
		{"octal", "https://0177.0.0.1/", "non-canonical"},
		{"short", "https://127.1/", "non-canonical"},
		{"dotted hex", "https://0x7f.0.0.1/", "non-canonical"},
		{"trailing dot ip", "https://127.0.0.1./", "loopback"},
		{"empty hex label", "https://example.0x/", "non-canonical"},
		{"fullwidth digits", "https://\uff11\uff12\uff17.0.0.1/", "loopback"},
		{"percent-encoded host", "https://%31%32%37.0.0.1/", ""},
		{"unspecified v4", "https://0.0.0.0/", "unspecified"},
		{"unspecified v6", "https://[::]/", "unspecified"},
		{"userinfo", "https://user:pass@example.com/", "userinfo"},
		{"userinfo name only", "https://user@example.com/", "userinfo"},
		{"ftp", "ftp://example.com/file", "scheme"},
		{"file", "file:///etc/passwd", "scheme"},
		{"gopher", "gopher://example.com/", "scheme"},
		{"no scheme", "//example.com/", "scheme"},
		{"opaque", "https:example.com", "absolute"},
		{"no host", "https:///path", "missing host"},
		{"public http", "http://example.com/", "https required"},
		{"unparseable", "https://exa mple.com/", "invalid url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			be := wantBlocked(t, g.CheckURL(tt.url))
			if !strings.Contains(be.Reason, tt.reason) {
				t.Errorf("reason = %q, want it to contain %q", be.Reason, tt.reason)
			}
		})
	}
}

func TestCheckURLAccepts(t *testing.T) {
	t.Parallel()
	g := newGuard(t, Config{})
	for _, u := range []string{
		"https://example.com/mcp",
		"HTTPS://EXAMPLE.COM:8443/mcp?x=1",
		"https://93.184.215.14/",
		"https://[2606:4700::1111]/",
		"https://[::ffff:8.8.8.8]/",      // IPv4-mapped public address
		"https://[64:ff9b::808:808]/",    // NAT64 of a public address
		"https://xn--bcher-kva.example/", // punycode
		"https://bücher.example/",
		"https://1password.com/", // numeric first label is a name
	} {
		if err := g.CheckURL(u); err != nil {
			t.Errorf("CheckURL(%q) = %v, want nil", u, err)
		}
	}
}

func TestCheckURLAllowList(t *testing.T) {
	t.Parallel()
	g := newGuard(t, Config{Allow: []string{"localhost", "127.0.0.1", "::1", "10.1.0.0/16"}})
	for _, u := range []string{
		"http://localhost:8080/",
		"http://LOCALHOST./",
		"http://127.0.0.1/",
		"https://127.0.0.1/",
		"http://[::1]:9000/",
		"http://10.1.2.3/",
	} {
		if err := g.CheckURL(u); err != nil {
			t.Errorf("CheckURL(%q) = %v, want nil", u, err)
		}
	}
	for _, u := range []string{
		"http://127.0.0.2/",        // only the listed address
		"https://127.0.0.2/",       // only the listed address
		"http://10.2.0.1/",         // outside the prefix
		"http://example.com/",      // http for a host not listed
		"http://2130706433/",       // obfuscated forms are never allow-listed
		"http://user@localhost/",   // userinfo stays forbidden
		"https://a.localhost/",     // sub-names are not the listed name
		"http://[::ffff:10.2.0.1]", // mapped address outside the prefix
	} {
		wantBlocked(t, g.CheckURL(u))
	}
}

func TestBlockedErrorHasNoPathOrQuery(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []string
	g := newGuard(t, Config{OnBlock: func(_ context.Context, host, reason string) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, host+" "+reason)
	}})
	_, err := g.Client().Get("https://10.0.0.1/secret-path?token=s3cr3t")
	be := wantBlocked(t, err)
	if be.Host != "10.0.0.1" {
		t.Errorf("Host = %q", be.Host)
	}
	if strings.Contains(be.Error(), "secret-path") || strings.Contains(be.Error(), "s3cr3t") {
		t.Errorf("BlockedError leaks the URL: %q", be.Error())
	}
	if want := "egress blocked: 10.0.0.1: address is private"; be.Error() != want {
		t.Errorf("Error() = %q, want %q", be.Error(), want)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || strings.Contains(got[0], "s3cr3t") || strings.Contains(got[0], "secret-path") {
		t.Errorf("OnBlock calls = %q", got)
	}
	if err := g.CheckURL("https://%zz/secret?token=s3cr3t"); err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("CheckURL(invalid) = %v", err)
	}
}

// TestNoConnectionToBlockedTargets sends requests for the local server
// under every spelling of a blocked address with a guard that has no
// allow-list: none may reach it.
func TestNoConnectionToBlockedTargets(t *testing.T) {
	t.Parallel()
	srv := newCounted(t, nil)
	p := srv.port()
	g := newGuard(t, Config{Timeout: 5 * time.Second})
	for _, u := range []string{
		"http://127.0.0.1:" + p + "/",
		"https://127.0.0.1:" + p + "/",
		"http://localhost:" + p + "/",
		"https://localhost:" + p + "/",
		"https://2130706433:" + p + "/",
		"https://0x7f000001:" + p + "/",
		"https://0177.0.0.1:" + p + "/",
		"https://127.1:" + p + "/",
		"https://0.0.0.0:" + p + "/",
		"https://[::ffff:127.0.0.1]:" + p + "/",
		"https://[::1]:" + p + "/",
		"https://user:pw@127.0.0.1:" + p + "/",
	} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			req, err := http.NewRequest(method, u, strings.NewReader("body"))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := g.Client().Do(req)
			if err == nil {
				resp.Body.Close()
				t.Errorf("%s %s succeeded", method, u)
				continue
			}
			wantBlocked(t, err)
		}
	}
	if n := srv.hits.Load(); n != 0 {
		t.Fatalf("server got %d requests, want 0", n)
	}
}

// acceptCounter is a raw TCP listener on 127.0.0.1 that counts accepted
// connections.
type acceptCounter struct {
	ln       net.Listener
	accepted atomic.Int64
}

func newAcceptCounter(tb testing.TB) *acceptCounter {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	a := &acceptCounter{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a.accepted.Add(1)
			c.Close()
		}
	}()
	tb.Cleanup(func() { ln.Close() })
	return a
}

// TestDialerControlBlocksConnectedIP bypasses CheckURL and dials through
// the transport directly: the Control hook must refuse the connection
// before connect(2).
func TestDialerControlBlocksConnectedIP(t *testing.T) {
	t.Parallel()
	ac := newAcceptCounter(t)
	_, port, _ := net.SplitHostPort(ac.ln.Addr().String())
	var blocked atomic.Int64
	g := newGuard(t, Config{OnBlock: func(context.Context, string, string) { blocked.Add(1) }})
	ctx := context.Background()

	for _, addr := range []string{
		"127.0.0.1:" + port,
		"localhost:" + port, // a name resolving to loopback: the DNS-rebinding case
	} {
		conn, err := g.base.DialContext(ctx, "tcp", addr)
		if err == nil {
			conn.Close()
			t.Fatalf("dial %s succeeded", addr)
		}
		be := wantBlocked(t, err)
		if !strings.Contains(be.Reason, "loopback") {
			t.Errorf("dial %s: reason = %q", addr, be.Reason)
		}
	}
	if n := blocked.Load(); n != 2 {
		t.Errorf("OnBlock called %d times, want 2", n)
	}

	// An allow-listed guard reaches the same listener; once it has been
	// accepted, the count proves the refused dials never connected.
	for _, allow := range []string{"127.0.0.1", "localhost", "127.0.0.0/8"} {
		ok := newGuard(t, Config{Allow: []string{allow}})
		addr := "127.0.0.1:" + port
		if allow == "localhost" {
			addr = "localhost:" + port
		}
		conn, err := ok.base.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("allow %q: dial %s: %v", allow, addr, err)
		}
		conn.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for ac.accepted.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := ac.accepted.Load(); n != 3 {
		t.Fatalf("accepted %d connections, want 3 (the allowed ones only)", n)
	}

	// A non-TCP network is refused by the hook as well.
	if _, err := g.safeDialer.DialContext(ctx, "udp", "127.0.0.1:"+port); err == nil {
		t.Error("udp dial succeeded")
	}
}

func TestAllowListedHTTPWorks(t *testing.T) {
	t.Parallel()
	srv := newCounted(t, nil)
	p := srv.port()
	tests := []struct{ allow, url string }{
		{"127.0.0.1", "http://127.0.0.1:" + p + "/"},
		{"127.0.0.0/8", "http://127.0.0.1:" + p + "/"},
		{"localhost", "http://localhost:" + p + "/"},
	}
	for _, tt := range tests {
		g := newGuard(t, Config{Allow: []string{tt.allow}})
		resp, err := g.Client().Get(tt.url)
		if err != nil {
			t.Fatalf("allow %q: GET %s: %v", tt.allow, tt.url, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != "ok" {
			t.Fatalf("allow %q: body %q, %v", tt.allow, b, err)
		}
	}
	if n := srv.hits.Load(); n != int64(len(tests)) {
		t.Fatalf("hits = %d, want %d", n, len(tests))
	}
}

func TestRedirectToBlockedTargetRefused(t *testing.T) {
	t.Parallel()
	// A second loopback server on another address that is not allow-listed
	// stands in for an internal service: it must never be reached.
	internal := &counted{}
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("127.0.0.2 not available: %v", err)
	}
	internal.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		internal.hits.Add(1)
	}))
	internal.Listener.Close()
	internal.Listener = ln
	internal.Start()
	t.Cleanup(internal.Close)

	targets := []string{
		"http://10.0.0.1/",
		"https://10.0.0.1/",
		"http://169.254.169.254/latest/meta-data/",
		"https://169.254.169.254/latest/meta-data/",
		"https://[::1]/",
		"https://2130706433/",
		"ftp://example.com/",
		internal.URL + "/",
		"https://127.0.0.2:" + internal.port() + "/",
	}
	public := newCounted(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, r.URL.Query().Get("to"), http.StatusFound)
	})
	g := newGuard(t, Config{Allow: []string{"127.0.0.1"}})
	for _, to := range targets {
		resp, err := g.Client().Get(public.URL + "/?to=" + url.QueryEscape(to))
		if err == nil {
			resp.Body.Close()
			t.Errorf("redirect to %s followed", to)
			continue
		}
		wantBlocked(t, err)
	}
	if n := internal.hits.Load(); n != 0 {
		t.Fatalf("internal server got %d requests, want 0", n)
	}
	if n := public.hits.Load(); n != int64(len(targets)) {
		t.Fatalf("public server got %d requests, want %d", n, len(targets))
	}
}

func TestRedirectFollowedWhenAllowed(t *testing.T) {
	t.Parallel()
	srv := newCounted(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/from" {
			http.Redirect(w, r, "/to", http.StatusFound)
			return
		}
		_, _ = io.WriteString(w, "landed")
	})
	g := newGuard(t, Config{Allow: []string{"127.0.0.1"}})
	resp, err := g.Client().Get(srv.URL + "/from")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "landed" {
		t.Fatalf("body = %q", b)
	}
}

func TestRedirectOfPostRefused(t *testing.T) {
	t.Parallel()
	target := newCounted(t, nil)
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		src := newCounted(t, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, target.URL+"/token", code)
		})
		g := newGuard(t, Config{Allow: []string{"127.0.0.1"}})
		resp, err := g.Client().Post(src.URL+"/token", "application/x-www-form-urlencoded", strings.NewReader("code=abc"))
		if err == nil {
			resp.Body.Close()
			t.Fatalf("%d: POST redirect followed", code)
		}
		if !errors.Is(err, ErrRedirectRefused) {
			t.Fatalf("%d: error = %v, want ErrRedirectRefused", code, err)
		}
	}
	if n := target.hits.Load(); n != 0 {
		t.Fatalf("redirect target got %d requests, want 0", n)
	}
}

func TestRedirectLoopCapped(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ max, wantHits int }{{0, DefaultMaxRedirects + 1}, {1, 2}, {-1, 1}} {
		srv := newCounted(t, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/loop", http.StatusFound)
		})
		g := newGuard(t, Config{Allow: []string{"127.0.0.1"}, MaxRedirects: tt.max})
		resp, err := g.Client().Get(srv.URL + "/loop")
		if err == nil {
			resp.Body.Close()
			t.Fatalf("max %d: loop did not fail", tt.max)
		}
		if !errors.Is(err, ErrRedirectRefused) {
			t.Fatalf("max %d: error = %v", tt.max, err)
		}
		if n := srv.hits.Load(); n != int64(tt.wantHits) {
			t.Fatalf("max %d: hits = %d, want %d", tt.max, n, tt.wantHits)
		}
	}
}

func TestBodyCap(t *testing.T) {
	t.Parallel()
	const tenMiB = 10 << 20
	srv := newCounted(t, func(w http.ResponseWriter, r *http.Request) {
		n := tenMiB
		switch r.URL.Path {
		case "/exact":
			n = DefaultMaxBodyBytes
		case "/declared":
			w.Header().Set("Content-Length", fmt.Sprint(tenMiB))
		}
		chunk := make([]byte, 32<<10)
		for n > 0 {
			k := min(n, len(chunk))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	g := newGuard(t, Config{Allow: []string{"127.0.0.1"}})
	for _, path := range []string{"/stream", "/declared"} {
		start := time.Now()
		resp, err := g.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !errors.Is(err, ErrBodyTooLarge) {
			t.Fatalf("%s: error = %v, want ErrBodyTooLarge", path, err)
		}
		if len(b) > DefaultMaxBodyBytes {
			t.Fatalf("%s: read %d bytes past the cap", path, len(b))
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("%s: took %v", path, d)
		}
	}
	resp, err := g.Client().Get(srv.URL + "/exact")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || len(b) != DefaultMaxBodyBytes {
		t.Fatalf("exact: %d bytes, %v", len(b), err)
	}
}

func TestHangingServerBoundedByTimeouts(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := newCounted(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/trickle" {
			w.WriteHeader(http.StatusOK)
			for {
				if _, err := w.Write([]byte("x")); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-time.After(20 * time.Millisecond):
				case <-r.Context().Done():
					return
				case <-release:
					return
				}
			}
		}
		select { // never answer
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) }) // runs before srv.Close
	g := newGuard(t, Config{
		Allow:         []string{"127.0.0.1"},
		Timeout:       700 * time.Millisecond,
		HeaderTimeout: 200 * time.Millisecond,
		DialTimeout:   200 * time.Millisecond,
	})

	start := time.Now()
	resp, err := g.Client().Get(srv.URL + "/hang")
	if err == nil {
		resp.Body.Close()
		t.Fatal("hanging server answered")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("header wait took %v", d)
	}

	start = time.Now()
	resp, err = g.Client().Get(srv.URL + "/trickle")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatal("endless body ended without error")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("endless body took %v", d)
	}
}

func TestOAuth2UsesGuard(t *testing.T) {
	t.Parallel()
	tokenSrv := newCounted(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"access_token":"at","token_type":"Bearer","expires_in":3600}`)
	})
	conf := &oauth2.Config{ClientID: "c", Endpoint: oauth2.Endpoint{TokenURL: tokenSrv.URL + "/token"}}

	strict := newGuard(t, Config{})
	ctx := strict.OAuth2Context(context.Background())
	if c, _ := ctx.Value(oauth2.HTTPClient).(*http.Client); c != strict.Client() {
		t.Fatal("OAuth2Context does not carry the guard's client")
	}
	if _, err := conf.Exchange(ctx, "code"); err == nil {
		t.Fatal("exchange with a loopback token endpoint succeeded without an allow-list")
	} else {
		wantBlocked(t, err)
	}
	if n := tokenSrv.hits.Load(); n != 0 {
		t.Fatalf("token endpoint got %d requests, want 0", n)
	}

	dev := newGuard(t, Config{Allow: []string{"127.0.0.1"}})
	tok, err := conf.Exchange(dev.OAuth2Context(context.Background()), "code")
	if err != nil || tok.AccessToken != "at" {
		t.Fatalf("exchange: %v, %v", tok, err)
	}
}

func TestParseAllow(t *testing.T) {
	t.Parallel()
	got, err := ParseAllow(" localhost, 127.0.0.1 ,::1,,127.0.0.9/8, MCP.Internal., ::ffff:10.0.0.1,fd00::/8")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"localhost", "127.0.0.1", "::1", "127.0.0.0/8", "mcp.internal", "10.0.0.1", "fd00::/8"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ParseAllow = %q, want %q", got, want)
	}
	if got, err := ParseAllow(""); err != nil || len(got) != 0 {
		t.Fatalf("ParseAllow(\"\") = %q, %v", got, err)
	}
	for _, bad := range []string{
		"localhost:8080", "*.example.com", "2130706433", "0x7f000001", "127.1",
		"fe80::1%eth0", "10.0.0.0/33", "-bad.example", "bad-.example", "a..b",
		"http://example.com", "exa mple", strings.Repeat("a", 64) + ".example",
	} {
		if _, err := ParseAllow(bad); err == nil {
			t.Errorf("ParseAllow(%q) succeeded", bad)
		}
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{
		{Timeout: -1},
		{HeaderTimeout: -1},
		{DialTimeout: -1},
		{MaxBodyBytes: -1},
		{Allow: []string{"not a host"}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	g := newGuard(t, Config{})
	c := g.Client()
	if c.Timeout != DefaultTimeout || g.cfg.MaxBodyBytes != DefaultMaxBodyBytes || g.cfg.MaxRedirects != DefaultMaxRedirects {
		t.Fatalf("defaults not applied: %+v", g.cfg)
	}
	if g.base.Proxy != nil || g.base.TLSClientConfig.MinVersion < 0x0303 || g.base.MaxResponseHeaderBytes != 64<<10 {
		t.Fatal("transport hardening missing")
	}
}

func FuzzCheckURL(f *testing.F) {
	for _, s := range []string{
		"https://example.com/", "http://127.0.0.1:8080/x?y", "https://[::ffff:127.0.0.1]/",
		"https://0x7f000001/", "https://0177.0.0.1/", "https://127.1", "https://[fe80::1%25eth0]/",
		"https://\uff11\uff12\uff17.0.0.1/", "file:///etc/passwd", "https://u:p@h/", "https:opaque",
		"https://[64:ff9b::7f00:1]/", "https://%31%32%37.0.0.1/", "https://xn--/", "http://localhost./",
	} {
		f.Add(s)
	}
	strict, err := New(Config{})
	if err != nil {
		f.Fatal(err)
	}
	dev, err := New(Config{Allow: []string{"localhost", "127.0.0.0/8", "::1"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		err := strict.CheckURL(raw)
		_ = dev.CheckURL(raw)
		if err != nil {
			var be *BlockedError
			if !errors.As(err, &be) {
				t.Fatalf("CheckURL(%q) = %T, want *BlockedError", raw, err)
			}
			return
		}
		u, perr := url.Parse(raw)
		if perr != nil {
			t.Fatalf("CheckURL(%q) accepted an unparseable URL", raw)
		}
		if !strings.EqualFold(u.Scheme, "https") || u.User != nil || u.Hostname() == "" {
			t.Fatalf("CheckURL(%q) accepted scheme %q, userinfo %v, host %q", raw, u.Scheme, u.User, u.Hostname())
		}
	})
}

// TestCallerBoundClientWaitsPastHeaderTimeout: Client gives up on a server
// that has not sent its headers after HeaderTimeout; CallerBoundClient, with
// the same checks, waits as long as the request's context allows (a tool
// call's headers come when the tool is done). Ordered by events, not by
// durations: the caller-bound request is in the handler before the plain one
// is sent, and is answered only after the plain one has given up.
func TestCallerBoundClientWaitsPastHeaderTimeout(t *testing.T) {
	t.Parallel()
	entered := make(chan string, 2)
	release := make(chan struct{})
	srv := newCounted(t, func(w http.ResponseWriter, r *http.Request) {
		entered <- r.URL.Path
		select {
		case <-release:
			_, _ = io.WriteString(w, "done")
		case <-r.Context().Done():
		}
	})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // runs before srv.Close
	g := newGuard(t, Config{Allow: []string{"127.0.0.1"}, HeaderTimeout: 200 * time.Millisecond})

	type result struct {
		body string
		err  error
	}
	patient := make(chan result, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a safety net, not a bound under test
	defer cancel()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/patient", nil)
		resp, err := g.CallerBoundClient().Do(req)
		if err != nil {
			patient <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		patient <- result{string(b), err}
	}()
	if p := <-entered; p != "/patient" {
		t.Fatalf("handler entered for %s first", p)
	}

	resp, err := g.Client().Get(srv.URL + "/hurried")
	if err == nil {
		resp.Body.Close()
		t.Fatal("Client waited for headers past HeaderTimeout")
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Client: %v, want a header timeout", err)
	}
	// The caller-bound request has now waited longer than HeaderTimeout.
	select {
	case r := <-patient:
		t.Fatalf("CallerBoundClient gave up before the server answered: %q %v", r.body, r.err)
	default:
	}
	unblock()
	if r := <-patient; r.err != nil || r.body != "done" {
		t.Fatalf("CallerBoundClient: %q %v", r.body, r.err)
	}

	// Its requests get the same checks.
	_, err = g.CallerBoundClient().Get("http://10.0.0.1/")
	wantBlocked(t, err)
}
