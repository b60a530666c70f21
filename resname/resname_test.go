package resname

import (
	"encoding/base64"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/mcpauth/mcpauth/apperr"
)

func checkInvalid(tb testing.TB, err error, field, msg string) {
	tb.Helper()
	e, ok := apperr.As(err)
	if !ok || e.Kind != apperr.KindInvalidArgument || e.Field != field || !strings.Contains(e.Message, msg) {
		tb.Fatalf("error = %v, want invalid %s containing %q", err, field, msg)
	}
}

func TestParseTenant(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want, wantMsg string }{
		{"tenants/acme", "acme", ""},
		{"tenants/a-1", "a-1", ""},
		{"tenants/" + strings.Repeat("a", 63), strings.Repeat("a", 63), ""},
		{"", "", "must be of the form tenants/{tenant}"},
		{"tenants/", "", "tenant id is required"},
		{"tenants", "", "must be of the form"},
		{"Tenants/acme", "", "must be of the form"},
		{"tenants/acme/", "", "must be of the form"},
		{"tenants/acme/providers/p", "", "must be of the form"},
		{"/tenants/acme", "", "must be of the form"},
		{"tenants/Acme", "", "tenant id must contain only lower-case"},
		{"tenants/acme-", "", "tenant id must not end with '-'"},
		{"tenants/-acme", "", "tenant id must start with a letter or digit"},
		{"tenants/" + strings.Repeat("a", 64), "", "tenant id must be at most 63"},
		{"tenants/ac%2Fme", "", "tenant id must contain only lower-case"},
		{"tenants/..", "", "tenant id must contain only lower-case"},
	}
	for _, tt := range tests {
		got, err := ParseTenant("parent", tt.in)
		if tt.wantMsg == "" {
			if err != nil || got != tt.want {
				t.Errorf("ParseTenant(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
			if TenantName(got) != tt.in {
				t.Errorf("TenantName(%q) = %q", got, TenantName(got))
			}
			continue
		}
		checkInvalid(t, err, "parent", tt.wantMsg)
	}
}

func TestParseProvider(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, tenant, provider, wantMsg string }{
		{"tenants/acme/providers/github", "acme", "github", ""},
		{"tenants/0/providers/0", "0", "0", ""},
		{"tenants/acme/providers/", "", "", "provider id is required"},
		{"tenants//providers/github", "", "", "tenant id is required"},
		{"tenants/acme/providers/git_hub", "", "", "provider id must contain only lower-case"},
		{"tenants/acme/providers/github/x", "", "", "must be of the form"},
		{"tenants/acme/x/providers/github", "", "", "must be of the form"},
		{"tenants/acme/Providers/github", "", "", "must be of the form"},
		{"tenants/acme", "", "", "must be of the form"},
		{"providers/github", "", "", "must be of the form"},
		{"tenants/acme/providers/providers/x", "", "", "must be of the form"},
		{"tenants/ACME/providers/github", "", "", "tenant id must contain only lower-case"},
	}
	for _, tt := range tests {
		tenant, provider, err := ParseProvider("name", tt.in)
		if tt.wantMsg == "" {
			if err != nil || tenant != tt.tenant || provider != tt.provider {
				t.Errorf("ParseProvider(%q) = %q, %q, %v", tt.in, tenant, provider, err)
			}
			if n := ProviderName(tenant, provider); n != tt.in {
				t.Errorf("ProviderName = %q, want %q", n, tt.in)
			}
			continue
		}
		checkInvalid(t, err, "name", tt.wantMsg)
	}
}

func TestAuditEventName(t *testing.T) {
	t.Parallel()
	if got := AuditEventName("acme", "0f1e"); got != "tenants/acme/auditEvents/0f1e" {
		t.Fatalf("AuditEventName = %q", got)
	}
}

// TestPageTokenWithRowNumberRejected: tokens that carried an audit row
// number (a sequence across tenants) no longer decode.
func TestPageTokenWithRowNumberRejected(t *testing.T) {
	t.Parallel()
	old := base64.RawURLEncoding.EncodeToString([]byte(`{"v":1,"p":"tenants/acme","n":1234}`))
	_, err := DecodePageToken("page_token", "tenants/acme", old)
	checkInvalid(t, err, "page_token", "is not a valid page token")
}

func TestPageToken(t *testing.T) {
	t.Parallel()
	const parent = "tenants/acme"
	for _, tok := range []PageToken{
		{Parent: parent},
		{Parent: parent, After: "github"},
		{Parent: parent, After: "ünïcode/\"quoted\""},
	} {
		s := EncodePageToken(tok)
		if strings.ContainsAny(s, "+/=") {
			t.Errorf("token %q is not unpadded base64url", s)
		}
		got, err := DecodePageToken("page_token", parent, s)
		if err != nil || got != tok {
			t.Errorf("round trip of %+v = %+v, %v", tok, got, err)
		}
	}

	got, err := DecodePageToken("page_token", parent, "")
	if err != nil || got != (PageToken{}) {
		t.Fatalf("empty token = %+v, %v", got, err)
	}

	other := EncodePageToken(PageToken{Parent: "tenants/other", After: "x"})
	_, err = DecodePageToken("page_token", parent, other)
	checkInvalid(t, err, "page_token", "does not belong to this request")

	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, bad := range []string{
		"!!!",
		"eyJ2Ijox",                                 // truncated JSON
		enc(`{"v":2,"p":"tenants/acme"}`),          // unknown version
		enc(`{"p":"tenants/acme"}`),                // no version
		enc(`{"v":1,"p":"tenants/acme","x":1}`),    // unknown field
		enc(`{"v":1,"p":"tenants/acme"}}`),         // trailing data
		enc(`{"v":1,"p":"tenants/acme"} {"v":1}`),  // two documents
		enc(`{"v":1,"p":"tenants/acme","n":1e99}`), // out of range
		enc(`{"v":1,"p":"tenants/acme","k":3}`),    // wrong type
		enc(`null`),                                // not an object
		base64.URLEncoding.EncodeToString([]byte(`{"v":1,"p":"tenants/acme"}x`)), // padded and trailing
		strings.Repeat("A", maxPageTokenLen+1),
	} {
		_, err := DecodePageToken("page_token", parent, bad)
		checkInvalid(t, err, "page_token", "is not a valid page token")
	}
}

func FuzzParseProvider(f *testing.F) {
	for _, s := range []string{
		"tenants/acme/providers/github", "tenants//providers/", "tenants/a/providers/b/providers/c",
		"tenants/A/providers/b", "tenants/a-/providers/b", "tenants/a", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		tenant, provider, err := ParseProvider("name", name)
		if err != nil {
			if _, ok := apperr.As(err); !ok {
				t.Fatalf("error %T is not *apperr.Error", err)
			}
			if tenant != "" || provider != "" {
				t.Fatal("ids returned with an error")
			}
		} else if ProviderName(tenant, provider) != name {
			t.Fatalf("ProviderName(%q, %q) != %q", tenant, provider, name)
		}
		if tn, err := ParseTenant("parent", name); err == nil && TenantName(tn) != name {
			t.Fatalf("TenantName(%q) != %q", tn, name)
		}
	})
}

func FuzzDecodePageToken(f *testing.F) {
	f.Add("tenants/acme", EncodePageToken(PageToken{Parent: "tenants/acme", After: "x"}), "k", int64(7))
	f.Add("tenants/acme", "", "", int64(0))
	f.Add("tenants/b", "eyJ2IjoxLCJwIjoidGVuYW50cy9hIn0", "\xff", int64(-1))
	f.Fuzz(func(t *testing.T, parent, token, after string, n int64) {
		got, err := DecodePageToken("page_token", parent, token)
		if err != nil {
			if _, ok := apperr.As(err); !ok {
				t.Fatalf("error %T is not *apperr.Error", err)
			}
		} else if token != "" && got.Parent != parent {
			t.Fatalf("decoded token for parent %q under parent %q", got.Parent, parent)
		}
		if !utf8.ValidString(parent) || !utf8.ValidString(after) {
			return // JSON replaces invalid UTF-8, so such values do not round-trip
		}
		_ = n // kept so the seed corpus format stays stable
		want := PageToken{Parent: parent, After: after}
		s := EncodePageToken(want)
		if len(s) > maxPageTokenLen {
			return
		}
		if got, err := DecodePageToken("page_token", parent, s); err != nil || got != want {
			t.Fatalf("round trip of %+v = %+v, %v", want, got, err)
		}
		if parent != "" {
			if _, err := DecodePageToken("page_token", parent+"x", s); err == nil {
				t.Fatal("token accepted for another parent")
			}
		}
	})
}
