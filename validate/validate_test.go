package validate

import (
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
)

// checkErr asserts err is nil when wantMsg is "", else an invalid-argument
// error on wantField whose message contains wantMsg.
func checkErr(tb testing.TB, err error, wantField, wantMsg string) {
	tb.Helper()
	if wantMsg == "" {
		if err != nil {
			tb.Fatalf("error = %v, want nil", err)
		}
		return
	}
	e, ok := apperr.As(err)
	if !ok {
		tb.Fatalf("error = %v, want *apperr.Error", err)
	}
	if e.Kind != apperr.KindInvalidArgument || e.Field != wantField || !strings.Contains(e.Message, wantMsg) {
		tb.Fatalf("error = {kind %v field %q message %q}, want field %q message containing %q", e.Kind, e.Field, e.Message, wantField, wantMsg)
	}
}

func TestStringRules(t *testing.T) {
	t.Parallel()
	const f = "provider.x"
	tests := []struct {
		name    string
		fn      func(string, string) error
		in      string
		wantMsg string
	}{
		{"display ok", DisplayName, "My Server", ""},
		{"display unicode", DisplayName, "Notion 工具 🚀", ""},
		{"display 128 runes", DisplayName, strings.Repeat("é", 128), ""},
		{"display empty", DisplayName, "", "is required"},
		{"display too long", DisplayName, strings.Repeat("é", 129), "at most 128 characters"},
		{"display blank", DisplayName, "   ", "must not be blank"},
		{"display newline", DisplayName, "a\nb", "control characters"},
		{"display nul", DisplayName, "a\x00", "control characters"},
		{"display bidi override", DisplayName, "abc\u202Etxt.exe", "control characters"},
		{"display bad utf8", DisplayName, "a\xffb", "valid UTF-8"},

		{"identifier ok", Identifier, "github_server.v2-prod", ""},
		{"identifier 64", Identifier, strings.Repeat("a", 64), ""},
		{"identifier empty", Identifier, "", "is required"},
		{"identifier 65", Identifier, strings.Repeat("a", 65), "at most 64"},
		{"identifier leading dot", Identifier, ".hidden", "start with a letter or digit"},
		{"identifier leading dash", Identifier, "-x", "start with a letter or digit"},
		{"identifier slash", Identifier, "a/b", "only letters, digits"},
		{"identifier space", Identifier, "a b", "only letters, digits"},
		{"identifier unicode", Identifier, "café", "only letters, digits"},

		{"resource id ok", ResourceID, "acme-01", ""},
		{"resource id digit first", ResourceID, "1acme", ""},
		{"resource id 63", ResourceID, strings.Repeat("a", 63), ""},
		{"resource id empty", ResourceID, "", "is required"},
		{"resource id 64", ResourceID, strings.Repeat("a", 64), "at most 63"},
		{"resource id upper", ResourceID, "Acme", "lower-case"},
		{"resource id underscore", ResourceID, "a_b", "lower-case"},
		{"resource id leading dash", ResourceID, "-a", "start with a letter or digit"},
		{"resource id trailing dash", ResourceID, "a-", "must not end with '-'"},
		{"resource id slash", ResourceID, "a/b", "lower-case"},

		{"user ok", UserID, "user-42@example.com", ""},
		{"user with space", UserID, "Jane Doe", ""},
		{"user empty", UserID, "", "is required"},
		{"user too long", UserID, strings.Repeat("a", 257), "at most 256 bytes"},
		{"user tab", UserID, "a\tb", "printable"},
		{"user nbsp", UserID, "a\u00a0b", "printable"},
		{"user zero width", UserID, "a\u200bb", "printable"},
		{"user blank", UserID, "  ", "must not be blank"},
		{"user bad utf8", UserID, "\xc3", "valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			checkErr(t, tt.fn(f, tt.in), f, tt.wantMsg)
		})
	}
}

func TestServerURL(t *testing.T) {
	t.Parallel()
	const f = "provider.server_url"
	tests := []struct {
		in, wantMsg string
	}{
		{"https://mcp.example.com/mcp", ""},
		{"  https://mcp.example.com/mcp\n", ""},
		{"HTTP://MCP.EXAMPLE.COM:8080/", ""},
		{"https://mcp.example.com/mcp?api_key=x", ""},
		{"https://127.0.0.1:8443/", ""},
		{"https://[2001:db8::1]:8443/mcp", ""},
		{"https://bücher.example/mcp", ""},
		{"https://my_host.internal/", ""},
		{"", "is required"},
		{"   ", "is required"},
		{"https://example.com/" + strings.Repeat("a", 2048), "at most 2048 bytes"},
		{"ftp://example.com/", "must use http or https"},
		{"javascript:alert(1)", "must use http or https"},
		{"file:///etc/passwd", "must use http or https"},
		{"example.com/mcp", "must use http or https"},
		{"//example.com/mcp", "must use http or https"},
		{"https:example.com", "must include a host"},
		{"https:///path", "must include a host"},
		{"https://user:pass@example.com/", "must not contain userinfo"},
		{"https://@example.com/", "must not contain userinfo"},
		{"https://example.com/#frag", "must not contain a fragment"},
		{"https://example.com/#", "must not contain a fragment"},
		{"https://exa mple.com/", "spaces or control characters"},
		{"https://example.com/a\r\nX-Injected: 1", "spaces or control characters"},
		{"https://example.com/\x00", "spaces or control characters"},
		{"https://example.com/\u202e", "spaces or control characters"},
		{"https://example.com/\xff", "valid UTF-8"},
		{"https://example.com:0/", "port between 1 and 65535"},
		{"https://example.com:65536/", "port between 1 and 65535"},
		{"https://example.com:/", "port between 1 and 65535"},
		{"https://[fe80::1%25eth0]/", "IP zone"},
		{"https://-bad.example/", "valid host"},
		{"https://a..b/", "valid host"},
		{"https://2130706433/", "valid host"},
		{"https://0x7f000001/", "valid host"},
		{"https://127.1/", "valid host"},
		{"https://exa%41mple.com/", "valid URL"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			u, err := ServerURL(f, tt.in)
			checkErr(t, err, f, tt.wantMsg)
			if err == nil && u == nil {
				t.Fatal("nil URL without error")
			}
			if err != nil && strings.Contains(err.Error(), "api_key") {
				t.Fatal("error repeats the URL")
			}
		})
	}
}

func mustURL(tb testing.TB, s string) *url.URL {
	tb.Helper()
	u, err := url.Parse(s)
	if err != nil {
		tb.Fatal(err)
	}
	return u
}

func TestNormalizeCanonicalMask(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, norm, resource, mask string
	}{
		{"https://mcp.example.com/mcp", "https://mcp.example.com/mcp", "https://mcp.example.com/mcp", "https://mcp.example.com/******"},
		{"HTTPS://MCP.Example.COM:443/MCP/", "https://mcp.example.com/MCP", "https://mcp.example.com/MCP", "https://mcp.example.com/******"},
		{"https://mcp.example.com/", "https://mcp.example.com", "https://mcp.example.com", "https://mcp.example.com"},
		{"https://mcp.example.com", "https://mcp.example.com", "https://mcp.example.com", "https://mcp.example.com"},
		{"https://mcp.example.com//", "https://mcp.example.com", "https://mcp.example.com", "https://mcp.example.com/******"},
		{"http://mcp.example.com:80/a", "http://mcp.example.com/a", "http://mcp.example.com/a", "http://mcp.example.com/******"},
		{"http://mcp.example.com:443/a", "http://mcp.example.com:443/a", "http://mcp.example.com:443/a", "http://mcp.example.com:443/******"},
		{"https://mcp.example.com:8443/a/b/?x=1&Y=2", "https://mcp.example.com:8443/a/b?x=1&Y=2", "https://mcp.example.com:8443/a/b", "https://mcp.example.com:8443/******"},
		{"https://mcp.example.com?", "https://mcp.example.com", "https://mcp.example.com", "https://mcp.example.com/******"},
		{"https://user:pw@mcp.example.com/", "https://mcp.example.com", "https://mcp.example.com", "https://mcp.example.com/******"},
		{"https://mcp.example.com/a%2Fb/", "https://mcp.example.com/a%2Fb", "https://mcp.example.com/a%2Fb", "https://mcp.example.com/******"},
		{"https://Bücher.Example/x", "https://xn--bcher-kva.example/x", "https://xn--bcher-kva.example/x", "https://xn--bcher-kva.example/******"},
		{"https://[2001:DB8::1]:443/", "https://[2001:db8::1]", "https://[2001:db8::1]", "https://[2001:db8::1]"},
		{"https://[2001:db8::1]:8443/m", "https://[2001:db8::1]:8443/m", "https://[2001:db8::1]:8443/m", "https://[2001:db8::1]:8443/******"},
		{"https://mcp.example.com/p#frag", "https://mcp.example.com/p", "https://mcp.example.com/p", "https://mcp.example.com/******"},
	}
	for _, tt := range tests {
		u := mustURL(t, tt.in)
		if got := NormalizeURL(u); got != tt.norm {
			t.Errorf("NormalizeURL(%q) = %q, want %q", tt.in, got, tt.norm)
		}
		if got := CanonicalResource(u); got != tt.resource {
			t.Errorf("CanonicalResource(%q) = %q, want %q", tt.in, got, tt.resource)
		}
		if got := MaskURL(u); got != tt.mask {
			t.Errorf("MaskURL(%q) = %q, want %q", tt.in, got, tt.mask)
		}
	}
	if MaskURL(nil) != "******" || MaskURL(mustURL(t, "mailto:a@b")) != "******" || NormalizeURL(nil) != "" {
		t.Error("nil or host-less URLs not fully masked")
	}
}

func TestHeaders(t *testing.T) {
	t.Parallel()
	const f = "provider.headers"
	tests := []struct {
		name      string
		in        map[string]string
		allowAuth bool
		wantField string
		wantMsg   string
	}{
		{"ok", map[string]string{"x-api-key": "k", "Cookie": "a=b", "X-Tab": "a\tb"}, false, "", ""},
		{"empty", map[string]string{}, false, "", ""},
		{"nil", nil, false, "", ""},
		{"authorization denied", map[string]string{"authorization": "Bearer x"}, false, f + `["authorization"]`, "not allowed"},
		{"authorization allowed", map[string]string{"Authorization": "Bearer x"}, true, "", ""},
		{"host", map[string]string{"Host": "evil"}, true, f + `["Host"]`, "not allowed"},
		{"connection", map[string]string{"connection": "close"}, true, f + `["connection"]`, "not allowed"},
		{"te", map[string]string{"TE": "trailers"}, true, f + `["TE"]`, "not allowed"},
		{"transfer-encoding", map[string]string{"Transfer-Encoding": "chunked"}, true, f + `["Transfer-Encoding"]`, "not allowed"},
		{"proxy-authorization", map[string]string{"Proxy-Authorization": "x"}, true, f + `["Proxy-Authorization"]`, "not allowed"},
		{"content-length", map[string]string{"Content-Length": "1"}, true, f + `["Content-Length"]`, "not allowed"},
		{"mcp session", map[string]string{"Mcp-Session-Id": "1"}, true, f + `["Mcp-Session-Id"]`, "not allowed"},
		{"crlf value", map[string]string{"X-Key": "a\r\nHost: evil"}, false, f + `["X-Key"]`, "CR, LF, NUL"},
		{"nul value", map[string]string{"X-Key": "a\x00"}, false, f + `["X-Key"]`, "CR, LF, NUL"},
		{"long value", map[string]string{"X-Key": strings.Repeat("v", 8193)}, false, f + `["X-Key"]`, "at most 8192 bytes"},
		{"max value", map[string]string{"X-Key": strings.Repeat("v", 8192)}, false, "", ""},
		{"bad name", map[string]string{"X Key": "v"}, false, f + `["X Key"]`, "HTTP token"},
		{"colon name", map[string]string{"X-Key:": "v"}, false, f + `["X-Key:"]`, "HTTP token"},
		{"empty name", map[string]string{"": "v"}, false, f + `[""]`, "must not be empty"},
		{"long name", map[string]string{strings.Repeat("n", 129): "v"}, false, f + `["` + strings.Repeat("n", 128) + `"]`, "at most 128"},
		{"duplicate", map[string]string{"X-Key": "a", "x-key": "b"}, false, f + `["x-key"]`, "duplicates"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fn := Headers
			if tt.allowAuth {
				fn = HeadersAllowingAuthorization
			}
			got, err := fn(f, tt.in)
			checkErr(t, err, tt.wantField, tt.wantMsg)
			if err != nil {
				for _, v := range tt.in {
					if len(v) >= 4 && strings.Contains(err.Error(), v) {
						t.Errorf("error %q repeats a header value", err)
					}
				}
				return
			}
			if len(got) != len(tt.in) {
				t.Errorf("got %d headers, want %d", len(got), len(tt.in))
			}
		})
	}
	got, err := Headers(f, map[string]string{"x-api-key": "k"})
	if err != nil || got["X-Api-Key"] != "k" {
		t.Errorf("canonical names: %v, %v", got, err)
	}
	many := map[string]string{}
	for i := range 33 {
		many["X-H"+strings.Repeat("a", i)] = "v"
	}
	_, err = Headers(f, many)
	checkErr(t, err, f, "at most 32 headers")
}

func TestTimeoutPageSizeScopes(t *testing.T) {
	t.Parallel()
	checkErr(t, Timeout("t", 5*time.Second, time.Second, time.Minute), "", "")
	checkErr(t, Timeout("t", time.Second, time.Second, time.Minute), "", "")
	checkErr(t, Timeout("t", time.Minute, time.Second, time.Minute), "", "")
	checkErr(t, Timeout("t", 0, time.Second, time.Minute), "t", "between 1s and 1m0s")
	checkErr(t, Timeout("t", 2*time.Minute, time.Second, time.Minute), "t", "between 1s and 1m0s")

	for _, tt := range []struct {
		in      int32
		want    int
		wantMsg string
	}{
		{0, 50, ""}, {1, 1, ""}, {500, 500, ""}, {501, 0, "at most 500"}, {-1, 0, "must not be negative"},
	} {
		got, err := PageSize("page_size", tt.in)
		checkErr(t, err, "page_size", tt.wantMsg)
		if got != tt.want {
			t.Errorf("PageSize(%d) = %d, want %d", tt.in, got, tt.want)
		}
	}

	checkErr(t, Scopes("scopes", nil), "", "")
	checkErr(t, Scopes("scopes", []string{"read", "mcp:tools", "https://graph.example/.default", "a!#[]~"}), "", "")
	checkErr(t, Scopes("scopes", []string{"read", ""}), "scopes[1]", "must not be empty")
	checkErr(t, Scopes("scopes", []string{"read write"}), "scopes[0]", "printable ASCII")
	checkErr(t, Scopes("scopes", []string{`a"b`}), "scopes[0]", "printable ASCII")
	checkErr(t, Scopes("scopes", []string{`a\b`}), "scopes[0]", "printable ASCII")
	checkErr(t, Scopes("scopes", []string{"é"}), "scopes[0]", "printable ASCII")
	checkErr(t, Scopes("scopes", []string{strings.Repeat("s", 257)}), "scopes[0]", "at most 256")
	checkErr(t, Scopes("scopes", make([]string, 65)), "scopes", "at most 64 scopes")
}

func TestReturnURL(t *testing.T) {
	t.Parallel()
	allowed := []string{"https://console.example.com", "http://localhost:3000", "https://app.example.com:443/"}
	const f = "return_url"
	tests := []struct{ in, wantMsg string }{
		{"https://console.example.com/providers/1?done=1#tab", ""},
		{"HTTPS://CONSOLE.example.com:443/x", ""},
		{"https://app.example.com/", ""},
		{"http://localhost:3000/cb", ""},
		{"", "is required"},
		{"http://console.example.com/", "must use https"},
		{"javascript:alert(1)", "must use https"},
		{"//console.example.com/", "must use https"},
		{"https://evil.example/", "origin is not allowed"},
		{"https://console.example.com.evil.example/", "origin is not allowed"},
		{"https://console.example.com:8443/", "origin is not allowed"},
		{"http://localhost:3001/", "origin is not allowed"},
		{"https://console.example.com@evil.example/", "userinfo"},
		{`https://evil.example\@console.example.com/`, "backslash"},
		{"https://console.example.com/\n", "control characters"},
		{"https://console.example.com/" + strings.Repeat("a", 2048), "at most 2048 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			checkErr(t, ReturnURL(f, tt.in, allowed), f, tt.wantMsg)
		})
	}
	checkErr(t, ReturnURL(f, "https://console.example.com/", nil), f, "origin is not allowed")
}

func FuzzServerURL(f *testing.F) {
	for _, s := range []string{
		"https://mcp.example.com/mcp", "HTTP://A.B:80//x//?q#f", "https://[2001:db8::1]:443/", "https://bücher.example/ä/",
		"https://mcp.example.com/a%2Fb/", "https://a.b/%zz", "https://u:p@h/", "https://h/;x=1?y", "https://h/a/../b/./c",
		"https://h?", "https://h/?#", "https://xn--bcher-kva.example", "http://127.0.0.1:8080/mcp/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := ServerURL("f", raw)
		if p, perr := url.Parse(raw); perr == nil {
			_ = NormalizeURL(p)
			_ = CanonicalResource(p)
			checkMask(t, raw, MaskURL(p))
		}
		if err != nil {
			if _, ok := apperr.As(err); !ok {
				t.Fatalf("ServerURL(%q) error %T is not *apperr.Error", raw, err)
			}
			return
		}
		n := NormalizeURL(u)
		u2, err := url.Parse(n)
		if err != nil {
			t.Fatalf("NormalizeURL(%q) = %q does not parse: %v", raw, n, err)
		}
		if n2 := NormalizeURL(u2); n2 != n {
			t.Fatalf("NormalizeURL not idempotent for %q: %q then %q", raw, n, n2)
		}
		if _, err := ServerURL("f", n); err != nil {
			t.Fatalf("normalised %q of %q is not a valid server URL: %v", n, raw, err)
		}
		c := CanonicalResource(u)
		if strings.ContainsAny(c, "?#") || (strings.HasSuffix(c, "/") && !strings.HasSuffix(c, "//")) {
			t.Fatalf("CanonicalResource(%q) = %q has a query, fragment or trailing slash", raw, c)
		}
		if u3, err := url.Parse(c); err != nil || CanonicalResource(u3) != c {
			t.Fatalf("CanonicalResource(%q) = %q is not stable", raw, c)
		}
		checkMask(t, raw, MaskURL(u))
	})
}

// checkMask asserts a masked URL shows at most scheme, host and port.
func checkMask(t *testing.T, raw, m string) {
	t.Helper()
	if m == "******" {
		return
	}
	mu, err := url.Parse(m)
	if err != nil {
		t.Fatalf("MaskURL(%q) = %q does not parse: %v", raw, m, err)
	}
	if mu.User != nil || mu.RawQuery != "" || mu.ForceQuery || mu.Fragment != "" || mu.Opaque != "" ||
		(mu.Path != "" && mu.Path != "/******") {
		t.Fatalf("MaskURL(%q) = %q shows more than scheme and host", raw, m)
	}
}

func FuzzHeaders(f *testing.F) {
	f.Add("X-Api-Key", "secret", "x-api-key", "other")
	f.Add("Authorization", "Bearer t", "Host", "h")
	f.Add("X-A", "a\r\nb", "", "")
	f.Add("TE", "trailers", "x y", "\x00")
	f.Fuzz(func(t *testing.T, n1, v1, n2, v2 string) {
		in := map[string]string{n1: v1, n2: v2}
		for _, allow := range []bool{false, true} {
			fn := Headers
			if allow {
				fn = HeadersAllowingAuthorization
			}
			out, err := fn("h", in)
			if err != nil {
				e, ok := apperr.As(err)
				if !ok || e.Kind != apperr.KindInvalidArgument {
					t.Fatalf("error %v is not invalid-argument", err)
				}
				// The error names the header (quoted); what a value shares
				// with a quoted name is there legitimately
				// (FuzzHeaders/fb359fb241cac5d4, e22d357f00100f7d), so the
				// names are taken out before looking for the values.
				msg := e.Error()
				for _, n := range []string{n1, n2} {
					msg = strings.ReplaceAll(msg, strconv.Quote(n), `""`)
				}
				for _, v := range []string{v1, v2} {
					if len(v) >= 8 && strings.Contains(msg, v) {
						t.Fatalf("error %q repeats a header value", e.Error())
					}
				}
				continue
			}
			for name, v := range out {
				if !isToken(name) || deniedHeaders[name] || strings.ContainsAny(v, "\r\n\x00") {
					t.Fatalf("accepted %q: %q", name, v)
				}
				if name == "Authorization" && !allow {
					t.Fatal("accepted Authorization")
				}
			}
		}
	})
}

func TestWithinServer(t *testing.T) {
	t.Parallel()
	must := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	for _, c := range []struct {
		server, target string
		want           bool
	}{
		{"https://mcp.example.com/mcp", "https://mcp.example.com/mcp", true},
		{"https://mcp.example.com/mcp", "https://MCP.example.com:443/mcp?x=1", true},
		{"https://mcp.example.com/mcp/", "https://mcp.example.com/mcp/sub", true},
		{"https://mcp.example.com", "https://mcp.example.com/anything", true},
		{"https://mcp.example.com/mcp", "https://mcp.example.com/mcpx", false},
		{"https://mcp.example.com/mcp", "https://mcp.example.com/admin", false},
		{"https://mcp.example.com/mcp", "https://mcp.example.com/mcp/../admin", false},
		{"https://mcp.example.com/mcp", "https://mcp.example.com/mcp/%2E%2E/admin", false},
		{"https://mcp.example.com/mcp", "http://mcp.example.com/mcp", false},
		{"https://mcp.example.com/mcp", "https://mcp.example.com:8443/mcp", false},
		{"https://mcp.example.com/mcp", "https://as.example.com/mcp", false},
		{"https://mcp.example.com/mcp", "https://user@mcp.example.com/mcp", false},
	} {
		if got := WithinServer(must(c.server), must(c.target)); got != c.want {
			t.Errorf("WithinServer(%q, %q) = %v, want %v", c.server, c.target, got, c.want)
		}
	}
}
