package oauthclient

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func mustTime(tb testing.TB, s string) time.Time {
	tb.Helper()
	t, err := http.ParseTime(s)
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

func FuzzParseChallenge(f *testing.F) {
	for _, s := range []string{
		`Bearer error="insufficient_scope", scope="a b", resource_metadata="https://x.example/prm"`,
		`Basic realm="x", Bearer realm="y"`,
		`Bearer`,
		`Bearer abc==`,
		`Bearer scope="a\"b"`,
		`, ,`,
		`"Bearer"`,
		`Bearer a=b,,c=d`,
		`Bearer error="<script>alert(1)</script>", scope="ok bad\"x \u00e9"`,
		`Bearer realm="unterminated`,
		"Bearer error=\"a\x00b\r\nX-Injected: 1\"",
		`Bearer resource_metadata="https://x.example/prm", resource_metadata="https://evil.example/prm"`,
		`DPoP algs="ES256 PS256", Bearer scope=x`,
	} {
		f.Add(s, "")
	}
	f.Fuzz(func(t *testing.T, h1, h2 string) {
		ch, err := ParseChallenge([]string{h1, h2})
		if err != nil {
			// Header text is upstream data: the error is one of a fixed set
			// and never quotes it.
			switch err.Error() {
			case ErrNoBearerChallenge.Error(), "malformed WWW-Authenticate header", "WWW-Authenticate header too long":
			default:
				t.Fatalf("unexpected error %q", err)
			}
			if ch.Error != "" || ch.Scope != nil || ch.ResourceMetadata != "" {
				t.Fatalf("challenge %+v returned with error %v", ch, err)
			}
			return
		}
		for _, s := range ch.Scope {
			if !validScopeToken(s) {
				t.Fatalf("invalid scope token %q returned", s)
			}
		}
		if ch.Error != sanitizeCode(ch.Error) {
			t.Fatalf("unsanitised error code %q", ch.Error)
		}
	})
}

func FuzzMetadataJSON(f *testing.F) {
	for _, s := range []string{
		`{"resource":"https://mcp.example/mcp","authorization_servers":["https://as.example"],"scopes_supported":["a"]}`,
		`{"issuer":"https://as.example","authorization_endpoint":"https://as.example/a","token_endpoint":"https://as.example/t","code_challenge_methods_supported":["S256"]}`,
		`{"issuer":1}`,
		`[]`,
		`null`,
		`{"authorization_servers":[null,"javascript:alert(1)"]}`,
		`{"access_token":"a","expires_in":"3600","token_type":"bearer"}`,
		`{"expires_in":1e308}`,
		`{} {}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if prm, err := decodePRM(body); err == nil {
			if validatePRM(prm) == nil {
				for _, as := range prm.AuthorizationServers {
					if _, err := AuthServerMetadataURLs(as); err != nil && !strings.Contains(err.Error(), "query") {
						t.Fatalf("validated authorization server %q has no metadata urls: %v", as, err)
					}
				}
			}
			_ = SameResource(prm.Resource, "https://mcp.example/mcp")
			_ = splitScopeList(prm.ScopesSupported)
		}
		if asm, err := decodeAuthServerMeta(body); err == nil {
			if validateAuthServerMeta(asm, "https://as.example") == nil {
				md := metadataFrom(asm)
				_ = md.SupportsS256()
				for _, e := range []string{md.AuthorizationEndpoint, md.TokenEndpoint} {
					if checkEndpoint("e", e) != nil {
						t.Fatalf("validated endpoint %q is invalid", e)
					}
				}
			}
		}
		for _, ct := range []string{"application/json", "application/x-www-form-urlencoded"} {
			if tr, err := parseTokenResponse(ct, body); err == nil && tr.ExpiresIn < 0 {
				t.Fatalf("negative expires_in %d", tr.ExpiresIn)
			}
		}
	})
}
