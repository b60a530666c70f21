package vault

import (
	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/validate"
)

// GrantFor names the grant a call about row acts on for user, by the
// provider's grant scope: a USER provider's grant is the named user's
// connection, and a call without a user is refused; a TENANT provider has
// one grant, and a call naming a user is refused (it would act on the
// tenant-wide grant while the caller believes it acts for that person).
// Both refusals are INVALID_ARGUMENT on field "user" and change nothing.
func GrantFor(row *repository.Provider, user string) (domain.GrantRef, error) {
	ref := domain.GrantRef{Tenant: row.TenantID, Provider: row.ID}
	if !row.GrantScope.PerUser() {
		if user != "" {
			return ref, apperr.Invalid("user", "must be empty: the provider's grant_scope is TENANT (one grant for the whole tenant)")
		}
		return ref, nil
	}
	if user == "" {
		return ref, apperr.Invalid("user", "is required: the provider's grant_scope is USER (each end user has their own connection)")
	}
	if err := validate.UserID("user", user); err != nil {
		return ref, err
	}
	ref.User = user
	return ref, nil
}
