package caller

import (
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
