package resname

import (
	"strings"

	"github.com/mcpauth/mcpauth/apperr"
)

// connectionsInfix separates a provider's name from its connection's id.
const connectionsInfix = "/connections/"

// ConnectionName formats
// "tenants/{tenant}/providers/{provider}/connections/{connection}".
func ConnectionName(tenant, provider, id string) string {
	return ProviderName(tenant, provider) + connectionsInfix + id
}

// ParseConnection parses
// "tenants/{tenant}/providers/{provider}/connections/{connection}"; the
// three ids must satisfy validate.ResourceID (whether a connection id has
// the shape of one is the use case's question: an id of another shape
// names no connection). Errors name field.
func ParseConnection(field, name string) (tenant, provider, id string, err error) {
	parent, id, ok := strings.Cut(name, connectionsInfix)
	if !ok || strings.Contains(id, "/") {
		return "", "", "", apperr.Invalid(field, "must be of the form tenants/{tenant}/providers/{provider}/connections/{connection}")
	}
	if tenant, provider, err = ParseProvider(field, parent); err != nil {
		return "", "", "", err
	}
	if err := segment(field, "connection", id); err != nil {
		return "", "", "", err
	}
	return tenant, provider, id, nil
}

// AllProviders is the provider id of a parent that lists across all of a
// tenant's providers (AIP-159): tenants/{tenant}/providers/-.
const AllProviders = "-"

// ParseProviderOrAll is ParseProvider that also accepts
// tenants/{tenant}/providers/- (provider AllProviders).
func ParseProviderOrAll(field, name string) (tenant, provider string, err error) {
	if t, ok := strings.CutSuffix(name, providersInfix+AllProviders); ok {
		tenant, err := ParseTenant(field, t)
		if err != nil {
			return "", "", apperr.Invalid(field, "must be of the form tenants/{tenant}/providers/{provider} or tenants/{tenant}/providers/-")
		}
		return tenant, AllProviders, nil
	}
	return ParseProvider(field, name)
}
