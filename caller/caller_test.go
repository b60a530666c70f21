package caller

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFromFile(t *testing.T) {
	t.Parallel()
	key, hash, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	a, err := FromFile(File{Callers: []FileCaller{{Name: "console", KeySHA256: hash, Tenants: []string{"acme"}, Permissions: []string{"providers.read"}}}})
	if err != nil {
		t.Fatal(err)
	}
	id, ok := a.Authenticate(key)
	if !ok || id.Name != "console" {
		t.Fatalf("Authenticate = %v %v", id, ok)
	}
	if _, ok := a.Authenticate(key + "x"); ok {
		t.Fatal("a different key authenticated")
	}
	if _, ok := a.Authenticate(""); ok {
		t.Fatal("an empty key authenticated")
	}
	checks := []struct {
		tenant string
		perm   Permission
		want   bool
	}{
		{"acme", ProvidersRead, true},
		{"acme", ProvidersWrite, false},
		{"other", ProvidersRead, false},
		{"", ProvidersRead, false},
	}
	for _, c := range checks {
		if got := id.Allows(c.tenant, c.perm); got != c.want {
			t.Errorf("Allows(%q, %q) = %v", c.tenant, c.perm, got)
		}
	}
}

func TestFromFileRejects(t *testing.T) {
	t.Parallel()
	_, hash, _ := NewKey()
	tests := map[string]File{
		"no callers":         {},
		"no name":            {Callers: []FileCaller{{KeySHA256: hash, Tenants: []string{"a"}}}},
		"short hash":         {Callers: []FileCaller{{Name: "x", KeySHA256: "abcd", Tenants: []string{"a"}}}},
		"no tenants":         {Callers: []FileCaller{{Name: "x", KeySHA256: hash}}},
		"unknown permission": {Callers: []FileCaller{{Name: "x", KeySHA256: hash, Tenants: []string{"a"}, Permissions: []string{"root"}}}},
		"duplicate name": {Callers: []FileCaller{{Name: "x", KeySHA256: hash, Tenants: []string{"a"}},
			{Name: "x", KeySHA256: strings.Repeat("0", 64), Tenants: []string{"a"}}}},
		"duplicate key": {Callers: []FileCaller{{Name: "x", KeySHA256: hash, Tenants: []string{"a"}},
			{Name: "y", KeySHA256: hash, Tenants: []string{"a"}}}},
	}
	for name, f := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if _, err := FromFile(f); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// TestUnknownPermissionListsValid checks that the error refusing an unknown
// permission names every valid one, so an operator can fix the file from
// the message alone.
func TestUnknownPermissionListsValid(t *testing.T) {
	t.Parallel()
	_, hash, _ := NewKey()
	_, err := FromFile(File{Callers: []FileCaller{{Name: "x", KeySHA256: hash, Tenants: []string{"a"}, Permissions: []string{"providers.read", "fly"}}}})
	if err == nil {
		t.Fatal("accepted an unknown permission")
	}
	msg := err.Error()
	if !strings.Contains(msg, `unknown permission "fly"`) {
		t.Errorf("error %q does not name the unknown permission", msg)
	}
	for _, p := range All {
		if !strings.Contains(msg, string(p)) {
			t.Errorf("error %q does not list valid permission %q", msg, p)
		}
	}
	if !strings.Contains(msg, `"*"`) {
		t.Errorf("error %q does not mention \"*\"", msg)
	}
}

func TestAdminKeyFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "d", "admin.key")
	a, created, err := LoadOrCreateAdmin(path)
	if err != nil || !created {
		t.Fatalf("created=%v err=%v", created, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v err %v", fi.Mode(), err)
	}
	raw, _ := os.ReadFile(path)
	id, ok := a.Authenticate(strings.TrimSpace(string(raw)))
	if !ok || !id.Allows("any-tenant", AuditRead) {
		t.Fatal("admin key does not authenticate with every permission")
	}
	b, created, err := LoadOrCreateAdmin(path)
	if err != nil || created {
		t.Fatalf("second load created=%v err=%v", created, err)
	}
	if _, ok := b.Authenticate(strings.TrimSpace(string(raw))); !ok {
		t.Fatal("reloaded key differs")
	}
}

func TestCertEntries(t *testing.T) {
	t.Parallel()
	_, hash, _ := NewKey()
	base := func(c FileCaller) FileCaller {
		c.Tenants, c.Permissions = []string{"acme"}, []string{"providers.read"}
		return c
	}
	for _, tt := range []struct {
		c    FileCaller
		want string
	}{
		{base(FileCaller{Name: "a"}), "set exactly one of key_sha256, cert_uri, cert_subject"},
		{base(FileCaller{Name: "a", KeySHA256: hash, CertURI: "spiffe://t/a"}), "set exactly one"},
		{base(FileCaller{Name: "a", CertURI: "not a uri"}), "cert_uri must be an absolute URI"},
	} {
		if _, err := FromFile(File{Callers: []FileCaller{tt.c}}); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want %q", tt.c, err, tt.want)
		}
	}
	dup := []FileCaller{base(FileCaller{Name: "a", CertSubject: "CN=x"}), base(FileCaller{Name: "b", CertSubject: "CN=x"})}
	if _, err := FromFile(File{Callers: dup}); err == nil || !strings.Contains(err.Error(), "cert_subject used twice") {
		t.Errorf("duplicate subject: %v", err)
	}
	a, err := FromFile(File{Callers: []FileCaller{
		base(FileCaller{Name: "spiffe", CertURI: "spiffe://acme.test/billing"}),
		base(FileCaller{Name: "subject", CertSubject: "CN=ops,O=acme"}),
	}})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://acme.test/billing")
	other, _ := url.Parse("spiffe://acme.test/other")
	for _, tt := range []struct {
		cert *x509.Certificate
		want string
	}{
		{&x509.Certificate{URIs: []*url.URL{other, u}}, "spiffe"},
		{&x509.Certificate{Subject: pkix.Name{CommonName: "ops", Organization: []string{"acme"}}}, "subject"},
		{&x509.Certificate{URIs: []*url.URL{other}, Subject: pkix.Name{CommonName: "ops"}}, ""},
		{nil, ""},
	} {
		got := ""
		if id, ok := a.AuthenticateCert(tt.cert); ok {
			got = id.Name
		}
		if got != tt.want {
			t.Errorf("cert %v: identity %q, want %q", tt.cert, got, tt.want)
		}
	}
	if id, ok := a.Authenticate(""); ok || id != nil {
		t.Error("empty key authenticated")
	}
}
