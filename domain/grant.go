package domain

import (
	"strconv"
	"strings"
)

// GrantRef names one grant: the tokens a tenant holds for a provider, either
// tenant-wide (User empty) or for one end user of the calling platform. It
// is the key of every per-grant row (credential, refresh lease, challenge,
// tool list) and of every per-grant lock, cache entry and ciphertext scope.
type GrantRef struct {
	// Tenant owns the grant; never empty.
	Tenant string
	// Provider is the provider the grant is for.
	Provider string
	// User is the calling platform's end-user id for a per-user grant, or
	// empty for the provider's tenant-wide grant.
	User string
}

// TenantGrant is the tenant-wide grant of a provider.
func TenantGrant(tenant, provider string) GrantRef {
	return GrantRef{Tenant: tenant, Provider: provider}
}

// Key is a string that identifies the grant among all grants, for caches,
// singleflight groups and lock names. The tenant-wide grant keeps the
// "tenant/provider" form it always had (tenant and provider ids are
// resource ids: no "/" and no NUL); a user's grant is a NUL followed by the
// three length-prefixed parts, so no two grants share a key whatever the
// user id holds.
func (g GrantRef) Key() string {
	if g.User == "" {
		return g.Tenant + "/" + g.Provider
	}
	var b strings.Builder
	b.Grow(len(g.Tenant) + len(g.Provider) + len(g.User) + 16)
	b.WriteByte(0)
	b.WriteString(lenPrefix(g.Tenant))
	b.WriteString(lenPrefix(g.Provider))
	b.WriteString(lenPrefix(g.User))
	return b.String()
}

// lenPrefix writes s as "<len>:<s>", so a user id holding "/" or ":" cannot
// make two keys equal.
func lenPrefix(s string) string {
	return strconv.Itoa(len(s)) + ":" + s
}

// GrantScope says whose grants a provider holds. The values are stored
// (providers.grant_scope); never change them.
type GrantScope string

// The grant scopes.
const (
	// ScopeTenant: one grant per provider, shared by every caller of the
	// tenant (a service account). The default; rows written before grant
	// scopes existed read as it.
	ScopeTenant GrantScope = "TENANT"
	// ScopeUser: one grant per end user of the calling platform (a
	// connection); every grant-using call names its user.
	ScopeUser GrantScope = "USER"
)

// PerUser reports whether the provider's grants belong to end users. An
// empty scope (a row read without the column) is tenant-wide.
func (s GrantScope) PerUser() bool { return s == ScopeUser }
