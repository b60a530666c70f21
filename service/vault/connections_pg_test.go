package vault

import (
	"context"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/internal/testenv"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
)

// TestConnectionCiphertextMovedToAnotherUser: on a real PostgreSQL, alice's
// and bob's connections to one provider are stored sealed for each of them;
// alice's token ciphertext copied into bob's row (an attacker with write
// access to the table, or a bug) does not open as bob's, while each row
// still opens as its own user's.
func TestConnectionCiphertextMovedToAnotherUser(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := repository.Open(ctx, testenv.PostgresDSN(t), repository.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	k := testKeys(t)
	row := providerRow(t, k, "https://mcp.example.com/mcp", "", "")
	row.DisplayName, row.ServerIdentifier, row.URLHash, row.Version, row.GrantScope = "P1", "p1", "h-p1", 1, domain.ScopeUser
	if err := s.CreateProvider(ctx, row); err != nil {
		t.Fatal(err)
	}
	alice := domain.GrantRef{Tenant: "t1", Provider: "p1", User: "alice"}
	bob := domain.GrantRef{Tenant: "t1", Provider: "p1", User: "bob"}
	for _, g := range []domain.GrantRef{alice, bob} {
		ct, err := SealTokens(k, g, &oauthclient.Tokens{AccessToken: secret.New("access-of-" + g.User), TokenType: "Bearer"},
			Grant{Issuer: "https://as.example.com"}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		c := &repository.Credential{TenantID: g.Tenant, ProviderID: g.Provider, UserID: g.User, Tokens: ct,
			Status: domain.StatusAuthorized, KeyID: k.PrimaryID(), Scopes: "[]"}
		if _, err := s.PutCredential(ctx, c, 0); err != nil {
			t.Fatal(err)
		}
	}
	open := func(g domain.GrantRef) (*Held, error) {
		t.Helper()
		c, err := s.GetCredential(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		return OpenTokens(k, c)
	}
	for _, g := range []domain.GrantRef{alice, bob} {
		h, err := open(g)
		if err != nil || h.Tokens.AccessToken.Reveal() != "access-of-"+g.User {
			t.Fatalf("%s's own row: %v", g.User, err)
		}
	}
	// Copy alice's ciphertext over bob's, in the database itself.
	if err := s.DB().Exec(`UPDATE credentials SET tokens = (SELECT tokens FROM credentials WHERE tenant_id = 't1' AND provider_id = 'p1' AND user_id = 'alice')
		WHERE tenant_id = 't1' AND provider_id = 'p1' AND user_id = 'bob'`).Error; err != nil {
		t.Fatal(err)
	}
	h, err := open(bob)
	if err == nil {
		t.Fatalf("alice's ciphertext opened as bob's: %q", h.Tokens.AccessToken.Reveal())
	}
	if h, err := open(alice); err != nil || h.Tokens.AccessToken.Reveal() != "access-of-alice" {
		t.Fatalf("alice's row after the copy: %v", err)
	}
}
