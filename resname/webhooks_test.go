package resname

import (
	"testing"

	"github.com/mcpauth/mcpauth/apperr"
)

// FuzzParseEventNames: the webhook endpoint and audit event parsers accept
// exactly the names their formatters produce, and fail with a field error.
func FuzzParseEventNames(f *testing.F) {
	for _, s := range []string{
		"tenants/acme/webhookEndpoints/ops", "tenants/acme/auditEvents/0123456789abcdef0123456789abcdef",
		"tenants/acme/auditEvents/0123456789ABCDEF0123456789abcdef", "tenants//webhookEndpoints/", "tenants/a/webhookEndpoints/b/c", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if tenant, id, err := ParseWebhookEndpoint("name", name); err != nil {
			if _, ok := apperr.As(err); !ok {
				t.Fatalf("error %T is not *apperr.Error", err)
			}
		} else if WebhookEndpointName(tenant, id) != name {
			t.Fatalf("WebhookEndpointName(%q, %q) != %q", tenant, id, name)
		}
		if tenant, uid, err := ParseAuditEvent("audit_event", name); err != nil {
			if _, ok := apperr.As(err); !ok {
				t.Fatalf("error %T is not *apperr.Error", err)
			}
		} else if AuditEventName(tenant, uid) != name || len(uid) != 32 {
			t.Fatalf("AuditEventName(%q, %q) != %q", tenant, uid, name)
		}
	})
}
