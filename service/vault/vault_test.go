package vault

import (
	"errors"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
)

// testKeys returns a real keyring holding one fresh key with id 1.
func testKeys(tb testing.TB) *keyring.Keyring {
	tb.Helper()
	spec, err := keyring.GenerateSpec(1)
	if err != nil {
		tb.Fatal(err)
	}
	k, err := keyring.Parse(spec)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func seal(tb testing.TB, k *keyring.Keyring, tenant, provider, field, plaintext string) []byte {
	tb.Helper()
	ct, err := k.Seal(keyring.Scope{Tenant: tenant, Provider: provider, Field: field}, []byte(plaintext))
	if err != nil {
		tb.Fatal(err)
	}
	return ct
}

// providerRow builds a provider row of tenant t1 with its secrets sealed as
// the providers use case seals them.
func providerRow(tb testing.TB, k *keyring.Keyring, rawURL, headersJSON, clientSecret string) *repository.Provider {
	tb.Helper()
	row := &repository.Provider{TenantID: "t1", ID: "p1", KeyID: k.PrimaryID(), Scopes: `["read","write"]`,
		ServerURL: seal(tb, k, "t1", "p1", FieldServerURL, rawURL)}
	if headersJSON != "" {
		row.Headers = seal(tb, k, "t1", "p1", FieldHeaders, headersJSON)
	}
	if clientSecret != "" {
		row.ClientSecret = seal(tb, k, "t1", "p1", FieldClientSecret, clientSecret)
	}
	return row
}

func wantKind(tb testing.TB, err error, kind apperr.Kind) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("err = nil, want %v", kind)
	}
	if got := apperr.KindOf(err); got != kind {
		tb.Fatalf("kind = %v (%v), want %v", got, err, kind)
	}
}

func TestOpenProvider(t *testing.T) {
	t.Parallel()
	k := testKeys(t)
	compat := domain.Compat{ResourceMode: domain.ResourceOverride, ResourceOverride: "https://api.example.com", AllowMissingPKCE: true}
	row := providerRow(t, k, "HTTPS://MCP.Example.com:443/mcp/?key=abc", `{"X-Api-Key":"s3cret"}`, "client-secret")
	row.Compat = JSONCompat(compat)

	d, err := OpenProvider(k, row)
	if err != nil {
		t.Fatalf("OpenProvider: %v", err)
	}
	if d.Row != row {
		t.Error("Row is not the row opened")
	}
	if got := d.URL.String(); got != "https://MCP.Example.com:443/mcp/?key=abc" {
		t.Errorf("URL = %q", got)
	}
	if d.Resource != "https://mcp.example.com/mcp" {
		t.Errorf("Resource = %q, want the canonical URI", d.Resource)
	}
	if !reflect.DeepEqual(d.Headers, map[string]string{"X-Api-Key": "s3cret"}) {
		t.Errorf("Headers = %v", d.Headers)
	}
	if d.ClientSecret.Reveal() != "client-secret" {
		t.Errorf("ClientSecret = %q", d.ClientSecret.Reveal())
	}
	if !reflect.DeepEqual(d.Scopes, []string{"read", "write"}) {
		t.Errorf("Scopes = %v", d.Scopes)
	}
	if !reflect.DeepEqual(d.Compat, compat) {
		t.Errorf("Compat = %+v, want %+v", d.Compat, compat)
	}

	bare, err := OpenProvider(k, providerRow(t, k, "https://mcp.example.com", "", ""))
	if err != nil {
		t.Fatalf("OpenProvider without headers and secret: %v", err)
	}
	if bare.Headers != nil || !bare.ClientSecret.IsZero() || !bare.Compat.IsZero() {
		t.Errorf("provider without headers, secret or compat opened as %+v", bare)
	}
}

func TestOpenProviderFailures(t *testing.T) {
	t.Parallel()
	k := testKeys(t)
	other := testKeys(t)
	tests := []struct {
		name   string
		mutate func(row *repository.Provider)
		want   string
	}{
		{"url sealed for another provider", func(r *repository.Provider) {
			r.ServerURL = seal(t, k, "t1", "p2", FieldServerURL, "https://mcp.example.com")
		}, "opening server url"},
		{"url under a key not in the keyring", func(r *repository.Provider) {
			r.ServerURL = seal(t, other, "t1", "p1", FieldServerURL, "https://mcp.example.com")
		}, "opening server url"},
		{"url that does not parse", func(r *repository.Provider) {
			r.ServerURL = seal(t, k, "t1", "p1", FieldServerURL, "http://[::1")
		}, "parsing stored server url"},
		{"headers sealed as another field", func(r *repository.Provider) {
			r.Headers = seal(t, k, "t1", "p1", FieldClientSecret, `{"A":"b"}`)
		}, "opening headers"},
		{"headers that are not JSON", func(r *repository.Provider) {
			r.Headers = seal(t, k, "t1", "p1", FieldHeaders, "not json")
		}, "decoding headers"},
		{"client secret moved to another tenant", func(r *repository.Provider) {
			r.ClientSecret = seal(t, k, "t2", "p1", FieldClientSecret, "s")
		}, "opening client secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			row := providerRow(t, k, "https://mcp.example.com", `{"A":"b"}`, "s")
			tt.mutate(row)
			_, err := OpenProvider(k, row)
			wantKind(t, err, apperr.KindInternal)
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to say %q", err, tt.want)
			}
		})
	}
}

func TestResourceParam(t *testing.T) {
	t.Parallel()
	u, _ := url.Parse("https://MCP.example.com/mcp/?x=1")
	tests := []struct {
		name   string
		compat domain.Compat
		want   string
	}{
		{"zero mode sends the canonical URI", domain.Compat{}, "https://mcp.example.com/mcp"},
		{"canonical", domain.Compat{ResourceMode: domain.ResourceCanonical}, "https://mcp.example.com/mcp"},
		{"omit", domain.Compat{ResourceMode: domain.ResourceOmit}, ""},
		{"override", domain.Compat{ResourceMode: domain.ResourceOverride, ResourceOverride: "urn:example:api"}, "urn:example:api"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := &Provider{URL: u, Resource: "https://mcp.example.com/mcp", Compat: tt.compat}
			if got := d.ResourceParam(); got != tt.want {
				t.Errorf("ResourceParam = %q, want %q", got, tt.want)
			}
		})
	}
}

func testGrant() Grant {
	return Grant{Issuer: "https://as.example.com", TokenEndpoint: "https://as.example.com/token",
		RevocationEndpoint: "https://as.example.com/revoke", RegMethod: domain.RegDynamic, ClientID: "c1",
		AuthMethod: "client_secret_basic", Resource: "https://mcp.example.com/mcp", Server: "https://mcp.example.com/mcp"}
}

func TestTokensRoundTrip(t *testing.T) {
	t.Parallel()
	k := testKeys(t)
	issued := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	expires := issued.Add(time.Hour)
	tests := []struct {
		name      string
		tokens    *oauthclient.Tokens
		expiresAt *time.Time
		scopes    string
	}{
		{"access and refresh", &oauthclient.Tokens{AccessToken: secret.New("at-1"), RefreshToken: secret.New("rt-1"), TokenType: "Bearer"},
			&expires, `["read"]`},
		{"access only, no expiry", &oauthclient.Tokens{AccessToken: secret.New("at-2")}, nil, "[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ct, err := SealTokens(k, domain.TenantGrant("t1", "p1"), tt.tokens, testGrant(), issued)
			if err != nil {
				t.Fatalf("SealTokens: %v", err)
			}
			if strings.Contains(string(ct), tt.tokens.AccessToken.Reveal()) {
				t.Fatal("ciphertext holds the access token in clear")
			}
			h, err := OpenTokens(k, &repository.Credential{TenantID: "t1", ProviderID: "p1", Tokens: ct, Scopes: tt.scopes, ExpiresAt: tt.expiresAt})
			if err != nil {
				t.Fatalf("OpenTokens: %v", err)
			}
			got := h.Tokens
			if got.AccessToken.Reveal() != tt.tokens.AccessToken.Reveal() || got.RefreshToken.Reveal() != tt.tokens.RefreshToken.Reveal() ||
				got.TokenType != tt.tokens.TokenType {
				t.Errorf("tokens = %q/%q/%q", got.AccessToken.Reveal(), got.RefreshToken.Reveal(), got.TokenType)
			}
			if !reflect.DeepEqual(got.Scopes, ParseList(tt.scopes)) {
				t.Errorf("Scopes = %v, want those of the row %s", got.Scopes, tt.scopes)
			}
			wantExp := time.Time{}
			if tt.expiresAt != nil {
				wantExp = *tt.expiresAt
			}
			if !got.ExpiresAt.Equal(wantExp) {
				t.Errorf("ExpiresAt = %v, want %v", got.ExpiresAt, wantExp)
			}
			if h.Grant != testGrant() || !h.IssuedAt.Equal(issued) {
				t.Errorf("grant %+v issued %v, want %+v issued %v", h.Grant, h.IssuedAt, testGrant(), issued)
			}
		})
	}
}

// TestTokensBoundToScope checks the associated data: a token set copied to
// another tenant, provider or field does not open.
func TestTokensBoundToScope(t *testing.T) {
	t.Parallel()
	k := testKeys(t)
	ct, err := SealTokens(k, domain.TenantGrant("t1", "p1"), &oauthclient.Tokens{AccessToken: secret.New("at")}, testGrant(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, tenant, provider string }{
		{"another tenant", "t2", "p1"},
		{"another provider", "t1", "p2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := OpenTokens(k, &repository.Credential{TenantID: tt.tenant, ProviderID: tt.provider, Tokens: ct})
			wantKind(t, err, apperr.KindInternal)
			if !errors.Is(err, keyring.ErrDecrypt) {
				t.Errorf("err = %v, want keyring.ErrDecrypt", err)
			}
		})
	}
	t.Run("another field", func(t *testing.T) {
		t.Parallel()
		_, err := OpenRegistration(k, &repository.ClientRegistration{TenantID: "t1", ProviderID: "p1", Issuer: "https://as", Secret: ct})
		if !errors.Is(err, keyring.ErrDecrypt) {
			t.Errorf("tokens opened as a registration: err = %v", err)
		}
	})
}

func TestOpenTokensFailures(t *testing.T) {
	t.Parallel()
	k := testKeys(t)
	t.Run("no tokens", func(t *testing.T) {
		t.Parallel()
		for _, tokens := range [][]byte{nil, {}} {
			_, err := OpenTokens(k, &repository.Credential{TenantID: "t1", ProviderID: "p1", Tokens: tokens})
			wantKind(t, err, apperr.KindFailedPrecondition)
			if e, _ := apperr.As(err); e.Reason != domain.ReasonReauthRequired {
				t.Errorf("reason = %q, want %q", e.Reason, domain.ReasonReauthRequired)
			}
		}
	})
}

// TestOpenUndecodable checks that a ciphertext that opens but does not
// hold what its field holds is an internal error.
func TestOpenUndecodable(t *testing.T) {
	t.Parallel()
	k := testKeys(t)
	const issuer = "https://as.example.com"
	tests := []struct {
		name string
		open func(ct []byte) error
		// field is the scope field the garbage is sealed for.
		field, want string
	}{
		{"tokens", func(ct []byte) error {
			_, err := OpenTokens(k, &repository.Credential{TenantID: "t1", ProviderID: "p1", Tokens: ct})
			return err
		}, FieldTokens, "decoding tokens"},
		{"registration", func(ct []byte) error {
			_, err := OpenRegistration(k, &repository.ClientRegistration{TenantID: "t1", ProviderID: "p1", Issuer: issuer, Secret: ct})
			return err
		}, RegistrationScope("t1", "p1", issuer).Field, "decoding registration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.open(seal(t, k, "t1", "p1", tt.field, "[1,2]"))
			wantKind(t, err, apperr.KindInternal)
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestRegistrationRoundTrip(t *testing.T) {
	t.Parallel()
	k := testKeys(t)
	const issuer = "https://as.example.com"
	expires := time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC)
	reg := &oauthclient.Registration{Method: domain.RegDynamic, ClientID: "dcr-1", ClientSecret: secret.New("dcr-secret"),
		AuthMethod: "client_secret_post", RedirectURI: "https://mcpauth.example/cb", ExpiresAt: expires}
	ct, err := SealRegistration(k, "t1", "p1", issuer, reg)
	if err != nil {
		t.Fatalf("SealRegistration: %v", err)
	}
	row := &repository.ClientRegistration{TenantID: "t1", ProviderID: "p1", Issuer: issuer, Method: reg.Method,
		ClientID: reg.ClientID, RedirectURI: reg.RedirectURI, Secret: ct}
	got, err := OpenRegistration(k, row)
	if err != nil {
		t.Fatalf("OpenRegistration: %v", err)
	}
	if got.Method != reg.Method || got.ClientID != reg.ClientID || got.RedirectURI != reg.RedirectURI ||
		got.ClientSecret.Reveal() != "dcr-secret" || got.AuthMethod != reg.AuthMethod || !got.ExpiresAt.Equal(expires) {
		t.Errorf("OpenRegistration = %+v, want %+v", got, reg)
	}

	t.Run("without a secret", func(t *testing.T) {
		t.Parallel()
		got, err := OpenRegistration(k, &repository.ClientRegistration{TenantID: "t1", ProviderID: "p1", Issuer: issuer,
			Method: domain.RegCIMD, ClientID: "https://mcpauth.example/client.json"})
		if err != nil {
			t.Fatalf("OpenRegistration: %v", err)
		}
		if got.ClientID != "https://mcpauth.example/client.json" || !got.ClientSecret.IsZero() || got.AuthMethod != "" {
			t.Errorf("OpenRegistration = %+v", got)
		}
	})
	t.Run("bound to its issuer", func(t *testing.T) {
		t.Parallel()
		moved := *row
		moved.Issuer = "https://evil.example.com"
		_, err := OpenRegistration(k, &moved)
		wantKind(t, err, apperr.KindInternal)
	})
}

// TestSealWithoutTenant checks that a sealing failure of the cipher is an
// internal error.
func TestSealWithoutTenant(t *testing.T) {
	t.Parallel()
	k := testKeys(t)
	_, err := SealTokens(k, domain.TenantGrant("", "p1"), &oauthclient.Tokens{AccessToken: secret.New("at")}, Grant{}, time.Now())
	wantKind(t, err, apperr.KindInternal)
	_, err = SealRegistration(k, "", "p1", "https://as", &oauthclient.Registration{})
	wantKind(t, err, apperr.KindInternal)
}

func TestGrantedFor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, server, providerURL string
		want                      bool
	}{
		{"same server", "https://mcp.example.com/mcp", "https://mcp.example.com/mcp", true},
		{"same server spelled differently", "https://mcp.example.com/mcp", "HTTPS://MCP.example.com:443/mcp/", true},
		{"query is part of the server", "https://mcp.example.com/mcp?k=1", "https://mcp.example.com/mcp?k=1", true},
		{"another server", "https://mcp.example.com/mcp", "https://other.example.com/mcp", false},
		{"another query", "https://mcp.example.com/mcp?k=1", "https://mcp.example.com/mcp?k=2", false},
		{"grant without a server", "", "https://mcp.example.com/mcp", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u, err := url.Parse(tt.providerURL)
			if err != nil {
				t.Fatal(err)
			}
			if got := (Grant{Server: tt.server}).GrantedFor(&Provider{URL: u}); got != tt.want {
				t.Errorf("GrantedFor = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestJSONHelpers(t *testing.T) {
	t.Parallel()
	t.Run("lists", func(t *testing.T) {
		t.Parallel()
		for _, tt := range []struct {
			in   []string
			want string
		}{{nil, "[]"}, {[]string{}, "[]"}, {[]string{"a", "b c"}, `["a","b c"]`}} {
			got := JSONList(tt.in)
			if got != tt.want {
				t.Errorf("JSONList(%q) = %s, want %s", tt.in, got, tt.want)
			}
			if back := ParseList(got); len(back) != len(tt.in) || (len(back) > 0 && !reflect.DeepEqual(back, tt.in)) {
				t.Errorf("ParseList(%s) = %q, want %q", got, back, tt.in)
			}
		}
		for _, bad := range []string{"", "not json", `{"a":1}`} {
			if got := ParseList(bad); got != nil {
				t.Errorf("ParseList(%q) = %q, want nil", bad, got)
			}
		}
	})
	t.Run("compat", func(t *testing.T) {
		t.Parallel()
		c := domain.Compat{ResourceMode: domain.ResourceOmit, AllowMissingPKCE: true, ExtraParams: map[string]string{"audience": "x"},
			TokenEndpointAuth: "client_secret_post"}
		if got := ParseCompat(JSONCompat(c)); !reflect.DeepEqual(got, c) {
			t.Errorf("round trip = %+v, want %+v", got, c)
		}
		if got := JSONCompat(domain.Compat{}); got != "{}" {
			t.Errorf("JSONCompat(zero) = %s, want {}", got)
		}
		for _, bad := range []string{"", "not json", "[]"} {
			if got := ParseCompat(bad); !reflect.DeepEqual(got, domain.Compat{}) {
				t.Errorf("ParseCompat(%q) = %+v, want the zero profile", bad, got)
			}
		}
	})
	t.Run("expiry", func(t *testing.T) {
		t.Parallel()
		if ExpiresPtr(time.Time{}) != nil {
			t.Error("ExpiresPtr(zero) is not nil")
		}
		local := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("X", 3600))
		p := ExpiresPtr(local)
		if p == nil || !p.Equal(local) || p.Location() != time.UTC {
			t.Errorf("ExpiresPtr(%v) = %v, want the same instant in UTC", local, p)
		}
	})
}
