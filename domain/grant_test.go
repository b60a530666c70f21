package domain

import "testing"

func TestGrantRefKey(t *testing.T) {
	t.Parallel()
	if got := TenantGrant("acme", "notion").Key(); got != "acme/notion" {
		t.Errorf("tenant grant key = %q, want the tenant/provider form", got)
	}
	// Keys of different grants never collide, whatever the user id holds.
	refs := []GrantRef{
		TenantGrant("acme", "notion"),
		{Tenant: "acme", Provider: "notion", User: "alice"},
		{Tenant: "acme", Provider: "notion", User: "Alice"},
		{Tenant: "acme", Provider: "notion", User: "u:5:alice"},
		{Tenant: "acme", Provider: "notion", User: "a/b"},
		{Tenant: "acme", Provider: "notion/u:1:a", User: ""},
		{Tenant: "acme", Provider: "notion", User: "1:a"},
		{Tenant: "acme", Provider: "notion", User: "a"},
	}
	seen := map[string]GrantRef{}
	for _, r := range refs {
		k := r.Key()
		if prev, ok := seen[k]; ok {
			t.Errorf("%+v and %+v share the key %q", prev, r, k)
		}
		seen[k] = r
	}
}
