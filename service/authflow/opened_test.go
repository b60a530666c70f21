package authflow

import (
	"sync/atomic"
	"testing"

	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/vault"
)

// countingCipher is a real keyring that counts decryptions.
type countingCipher struct {
	*keyring.Keyring
	opens atomic.Int64
}

func (c *countingCipher) Open(s keyring.Scope, ct []byte) ([]byte, error) {
	c.opens.Add(1)
	return c.Keyring.Open(s, ct)
}

// TestOpenedDecryptsEachRowOnce: the row a cached read hands out again is
// not decrypted again; a row read anew (another pointer, as after any
// change) is, and gives its own contents; a registration handed out is the
// caller's to modify.
func TestOpenedDecryptsEachRowOnce(t *testing.T) {
	spec, err := keyring.GenerateSpec(1)
	if err != nil {
		t.Fatal(err)
	}
	k, err := keyring.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	c := &countingCipher{Keyring: k}
	row := func(url string) *repository.Provider {
		ct, err := k.Seal(keyring.Scope{Tenant: "acme", Provider: "files", Field: vault.FieldServerURL}, []byte(url))
		if err != nil {
			t.Fatal(err)
		}
		return &repository.Provider{TenantID: "acme", ID: "files", ServerURL: ct}
	}
	o := newOpened()
	first := row("https://mcp.example.com/a")
	for range 3 {
		d, err := o.provider(c, first)
		if err != nil || d.URL.String() != "https://mcp.example.com/a" {
			t.Fatalf("provider = %v, %v", d, err)
		}
	}
	if n := c.opens.Load(); n != 1 {
		t.Errorf("3 opens of one row decrypted %d times, want 1", n)
	}
	if d, err := o.provider(c, row("https://mcp.example.com/b")); err != nil || d.URL.String() != "https://mcp.example.com/b" {
		t.Fatalf("a row read anew = %v, %v; want its own URL", d, err)
	}
	if n := c.opens.Load(); n != 2 {
		t.Errorf("a row read anew: %d decryptions in all, want 2", n)
	}

	sealed, err := vault.SealRegistration(k, "acme", "files", "https://as.example.com",
		&oauthclient.Registration{ClientID: "client-1", AuthMethod: oauthclient.AuthNone})
	if err != nil {
		t.Fatal(err)
	}
	reg := &repository.ClientRegistration{TenantID: "acme", ProviderID: "files", Issuer: "https://as.example.com", ClientID: "client-1", Secret: sealed}
	a, err := o.registration(c, reg)
	if err != nil || a.AuthMethod != oauthclient.AuthNone {
		t.Fatalf("registration = %+v, %v", a, err)
	}
	a.AuthMethod = "changed by a caller"
	b, err := o.registration(c, reg)
	if err != nil || b.AuthMethod != oauthclient.AuthNone {
		t.Errorf("a caller's change to its registration reached the next caller: %+v, %v", b, err)
	}
	if n := c.opens.Load(); n != 3 {
		t.Errorf("two reads of one registration row: %d decryptions in all, want 3", n)
	}
}
