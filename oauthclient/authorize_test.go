package oauthclient

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestNewPKCE(t *testing.T) {
	t.Parallel()
	v, ch, err := NewPKCE()
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Reveal()) != 43 || len(ch) != 43 {
		t.Fatalf("verifier %d chars, challenge %d chars; want 43", len(v.Reveal()), len(ch))
	}
	sum := sha256.Sum256([]byte(v.Reveal()))
	if base64.RawURLEncoding.EncodeToString(sum[:]) != ch {
		t.Fatal("challenge is not S256 of the verifier")
	}
	v2, _, _ := NewPKCE()
	if v2.Reveal() == v.Reveal() {
		t.Fatal("verifiers repeat")
	}
	if v.String() == v.Reveal() {
		t.Fatal("verifier prints in clear")
	}
}

func TestNewState(t *testing.T) {
	t.Parallel()
	s1, err := NewState()
	if err != nil {
		t.Fatal(err)
	}
	b, err := base64.RawURLEncoding.DecodeString(s1)
	if err != nil || len(b) < 32 {
		t.Fatalf("state %q: %d bytes, %v", s1, len(b), err)
	}
	if s2, _ := NewState(); s2 == s1 {
		t.Fatal("states repeat")
	}
}

func TestSelectScopes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                  string
		probe, prm, as, extra []string
		want                  []string
	}{
		{"nothing: omit", nil, nil, nil, nil, nil},
		{"challenge wins over prm", []string{"a", "b"}, []string{"x", "y"}, nil, nil, []string{"a", "b"}},
		{"prm when no challenge", nil, []string{"x", "y"}, nil, nil, []string{"x", "y"}},
		{"offline_access when advertised", []string{"a"}, nil, []string{"a", OfflineAccess}, nil, []string{"a", OfflineAccess}},
		{"offline_access not advertised", []string{"a"}, nil, []string{"a"}, nil, []string{"a"}},
		{"offline_access alone", nil, nil, []string{OfflineAccess}, nil, []string{OfflineAccess}},
		{"extra union, dedupe, order", []string{"a", "b"}, nil, nil, []string{"b", "c", "a", "d"}, []string{"a", "b", "c", "d"}},
		{"offline_access already present", []string{OfflineAccess, "a"}, nil, []string{OfflineAccess}, []string{OfflineAccess}, []string{OfflineAccess, "a"}},
		{"duplicates in challenge", []string{"a", "a"}, nil, nil, nil, []string{"a"}},
		{"invalid tokens dropped", []string{"a", `b"c`, "", "d\\e"}, nil, nil, []string{"ok", "x y"}, []string{"a", "ok"}},
		{"empty challenge falls to prm", []string{}, []string{"x"}, nil, nil, []string{"x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := SelectScopes(tt.probe, tt.prm, tt.as, tt.extra)
			if !equalStrings(got, tt.want) || (tt.want == nil) != (got == nil) {
				t.Errorf("SelectScopes = %q, want %q", got, tt.want)
			}
		})
	}
}

func testAuthRequest(tb testing.TB) AuthRequest {
	tb.Helper()
	_, ch, _ := NewPKCE()
	st, _ := NewState()
	return AuthRequest{
		Metadata: &Metadata{
			AuthorizationEndpoint: "https://as.example/authorize?tenant=t1&state=stale",
			CodeChallengeMethods:  []string{"S256"},
		},
		ClientID:      "client-1",
		RedirectURI:   "https://console.example/cb",
		State:         st,
		CodeChallenge: ch,
		Scopes:        []string{"tools:read", OfflineAccess},
		Resource:      "https://mcp.example/mcp",
		Extra:         map[string]string{"prompt": "consent"},
	}
}

func TestAuthorizationURL(t *testing.T) {
	t.Parallel()
	r := testAuthRequest(t)
	raw, err := AuthorizationURL(r)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme != "https" || u.Host != "as.example" || u.Path != "/authorize" {
		t.Errorf("endpoint = %s", raw)
	}
	q := u.Query()
	want := map[string]string{
		"response_type":         "code",
		"client_id":             "client-1",
		"redirect_uri":          "https://console.example/cb",
		"state":                 r.State,
		"code_challenge":        r.CodeChallenge,
		"code_challenge_method": "S256",
		"resource":              "https://mcp.example/mcp",
		"scope":                 "tools:read offline_access",
		"prompt":                "consent",
		"tenant":                "t1",
	}
	for k, v := range want {
		if got := q[k]; len(got) != 1 || got[0] != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if len(q) != len(want) {
		t.Errorf("unexpected parameters: %v", q)
	}

	r.Resource, r.Scopes = "", nil
	raw, err = AuthorizationURL(r)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(raw, "resource=") || strings.Contains(raw, "scope=") {
		t.Errorf("empty resource and scopes not omitted: %s", raw)
	}
}

func TestAuthorizationURLReservedExtra(t *testing.T) {
	t.Parallel()
	for _, k := range []string{
		"response_type", "client_id", "redirect_uri", "state", "code_challenge",
		"code_challenge_method", "resource", "scope", "Scope", "REDIRECT_URI",
		"request", "request_uri", "response_mode", "code_verifier", "client_secret",
		"Response_Mode", "nonce", "NONCE", "dpop_jkt", "client_assertion", "client_assertion_type",
	} {
		r := testAuthRequest(t)
		r.Extra = map[string]string{k: "attacker"}
		if _, err := AuthorizationURL(r); !errors.Is(err, ErrReservedParameter) {
			t.Errorf("extra %q: err = %v, want ErrReservedParameter", k, err)
		}
	}
}

func TestAuthorizationURLInvalid(t *testing.T) {
	t.Parallel()
	tests := map[string]func(r *AuthRequest){
		"no metadata":     func(r *AuthRequest) { r.Metadata = nil },
		"no client":       func(r *AuthRequest) { r.ClientID = "" },
		"no redirect":     func(r *AuthRequest) { r.RedirectURI = "" },
		"short state":     func(r *AuthRequest) { r.State = "abc" },
		"plain challenge": func(r *AuthRequest) { r.CodeChallenge = "short" },
		"bad endpoint":    func(r *AuthRequest) { r.Metadata.AuthorizationEndpoint = "javascript:alert(1)" },
		"empty extra key": func(r *AuthRequest) { r.Extra = map[string]string{"": "x"} },
	}
	for name, mutate := range tests {
		r := testAuthRequest(t)
		mutate(&r)
		if _, err := AuthorizationURL(r); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestCheckIssuer(t *testing.T) {
	t.Parallel()
	const issuer = "https://as.example/t1"
	tests := []struct {
		name      string
		supported bool
		iss       string
		present   bool
		wantErr   bool
	}{
		{"supported, present, equal", true, issuer, true, false},
		{"supported, present, different", true, "https://evil.example/t1", true, true},
		{"supported, absent", true, "", false, true},
		{"unsupported, present, equal", false, issuer, true, false},
		{"unsupported, present, different", false, "https://evil.example", true, true},
		{"unsupported, absent", false, "", false, false},
		{"supported, present, trailing slash", true, issuer + "/", true, true},
		{"supported, present empty", true, "", true, true},
	}
	for _, tt := range tests {
		err := CheckIssuer(issuer, tt.supported, tt.iss, tt.present)
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: err = %v, want error %v", tt.name, err, tt.wantErr)
		}
		if err != nil && !errors.Is(err, ErrIssuerMismatch) {
			t.Errorf("%s: err = %v, not ErrIssuerMismatch", tt.name, err)
		}
	}
	if err := CheckIssuer("", false, "https://as.example", true); !errors.Is(err, ErrIssuerMismatch) {
		t.Errorf("unknown issuer with iss present: err = %v", err)
	}
}

func TestParseChallenge(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		headers []string
		want    Challenge
		wantErr error
		anyErr  bool
	}{
		{
			name:    "insufficient_scope",
			headers: []string{`Bearer error="insufficient_scope", scope="files:read files:write", resource_metadata="https://mcp.example/.well-known/oauth-protected-resource", error_description="need more"`},
			want:    Challenge{Error: "insufficient_scope", Scope: []string{"files:read", "files:write"}, ResourceMetadata: "https://mcp.example/.well-known/oauth-protected-resource"},
		},
		{
			name:    "bearer after basic, separate headers",
			headers: []string{`Basic realm="r"`, `bearer realm="mcp", scope=read`},
			want:    Challenge{Scope: []string{"read"}},
		},
		{
			name:    "bearer after another scheme in one header",
			headers: []string{`DPoP algs="ES256", Bearer resource_metadata="https://x.example/prm"`},
			want:    Challenge{ResourceMetadata: "https://x.example/prm"},
		},
		{name: "bare bearer", headers: []string{`Bearer`}, want: Challenge{}},
		{name: "no bearer", headers: []string{`Basic realm="r"`}, wantErr: ErrNoBearerChallenge},
		{name: "empty", headers: nil, wantErr: ErrNoBearerChallenge},
		{name: "unterminated quote", headers: []string{`Bearer scope="abc`}, anyErr: true},
		{name: "too long", headers: []string{"Bearer scope=" + strings.Repeat("a", maxChallengeHeaderBytes)}, anyErr: true},
		{
			name:    "hostile error code",
			headers: []string{`Bearer error="<script>alert(1)</script>"`},
			want:    Challenge{Error: "unrecognised"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseChallenge(tt.headers)
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			case tt.anyErr:
				if err == nil {
					t.Fatalf("accepted %q", tt.headers)
				}
				if strings.Contains(err.Error(), "abc") {
					t.Errorf("error quotes the header: %v", err)
				}
				return
			case err != nil:
				t.Fatalf("err = %v", err)
			}
			if got.Error != tt.want.Error || got.ResourceMetadata != tt.want.ResourceMetadata || !equalStrings(got.Scope, tt.want.Scope) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	now := mustTime(t, "Sun, 01 Mar 2026 12:00:00 GMT")
	tests := map[string]int64{
		"":                              0,
		"10":                            10,
		"-5":                            0,
		"abc":                           0,
		"999999999999":                  86400,
		"Sun, 01 Mar 2026 12:01:00 GMT": 60,
		"Sun, 01 Mar 2026 11:00:00 GMT": 0,
	}
	for in, want := range tests {
		if got := retryAfter(in, now); int64(got.Seconds()) != want {
			t.Errorf("retryAfter(%q) = %v, want %ds", in, got, want)
		}
	}
}
