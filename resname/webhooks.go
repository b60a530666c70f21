package resname

import (
	"strings"

	"github.com/mcpauth/mcpauth/apperr"
)

const webhookInfix = "/webhookEndpoints/"

// WebhookEndpointName formats "tenants/{tenant}/webhookEndpoints/{id}".
func WebhookEndpointName(tenant, id string) string {
	return tenantsPrefix + tenant + webhookInfix + id
}

// ParseWebhookEndpoint parses "tenants/{tenant}/webhookEndpoints/{id}".
// Errors name field.
func ParseWebhookEndpoint(field, name string) (tenant, id string, err error) {
	return parseChild(field, name, webhookInfix, "tenants/{tenant}/webhookEndpoints/{id}", "webhook endpoint")
}

// ParseAuditEvent parses "tenants/{tenant}/auditEvents/{id}": the id is the
// event's public id, 32 lower-case hex digits. Errors name field.
func ParseAuditEvent(field, name string) (tenant, uid string, err error) {
	const form = "tenants/{tenant}/auditEvents/{id}"
	rest, ok := strings.CutPrefix(name, tenantsPrefix)
	if !ok {
		return "", "", apperr.Invalid(field, "must be of the form %s", form)
	}
	tenant, uid, ok = strings.Cut(rest, auditEventInfix)
	if !ok || strings.Contains(tenant, "/") {
		return "", "", apperr.Invalid(field, "must be of the form %s", form)
	}
	if err := segment(field, "tenant", tenant); err != nil {
		return "", "", err
	}
	if len(uid) != 32 || strings.Trim(uid, "0123456789abcdef") != "" {
		return "", "", apperr.Invalid(field, "event id must be 32 lower-case hex digits")
	}
	return tenant, uid, nil
}

func parseChild(field, name, infix, form, what string) (tenant, id string, err error) {
	rest, ok := strings.CutPrefix(name, tenantsPrefix)
	if !ok {
		return "", "", apperr.Invalid(field, "must be of the form %s", form)
	}
	tenant, id, ok = strings.Cut(rest, infix)
	if !ok || strings.Contains(tenant, "/") || strings.Contains(id, "/") {
		return "", "", apperr.Invalid(field, "must be of the form %s", form)
	}
	if err := segment(field, "tenant", tenant); err != nil {
		return "", "", err
	}
	if err := segment(field, what, id); err != nil {
		return "", "", err
	}
	return tenant, id, nil
}
