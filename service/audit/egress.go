package audit

import (
	"context"
	"log/slog"
	"strings"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/reqid"
)

type scopeKey struct{}

// scope is the work ctx is for: a tenant's provider, or a tenant's webhook
// endpoint (endpoint and url set).
type scope struct{ tenant, provider, endpoint, url string }

// WithScope marks ctx as work for one tenant's provider, so events raised
// deep below (an egress block) land in that tenant's audit log.
func WithScope(ctx context.Context, tenant, provider string) context.Context {
	return context.WithValue(ctx, scopeKey{}, scope{tenant: tenant, provider: provider})
}

// WithWebhookScope marks ctx as work on one tenant's webhook endpoint (its
// id, and its URL as validate.MaskURL shows it: no userinfo, path or
// query), so that an egress block of the URL lands in that tenant's audit
// log naming the endpoint.
func WithWebhookScope(ctx context.Context, tenant, endpoint, maskedURL string) context.Context {
	return context.WithValue(ctx, scopeKey{}, scope{tenant: tenant, endpoint: endpoint, url: maskedURL})
}

// EgressBlockHook returns the egress guard's OnBlock hook: it counts the
// block, logs it (naming the tenant in scope) and records an egress.blocked
// audit event for the tenant in scope. It receives only the host and a
// reason, never a path or query.
func EgressBlockHook(a *Auditor, m *metrics.Metrics) func(ctx context.Context, host, reason string) {
	return func(ctx context.Context, host, reason string) {
		m.EgressBlocked.WithLabelValues(reasonLabel(reason)).Inc()
		sc, ok := ctx.Value(scopeKey{}).(scope)
		if !ok || sc.tenant == "" {
			a.log.WarnContext(ctx, "egress blocked outside a tenant scope", "host", host, "reason", reason)
			return
		}
		details := map[string]string{"host": host, "rule": reason}
		attrs := []any{slog.String("tenant", sc.tenant)}
		if sc.provider != "" {
			attrs = append(attrs, slog.String("provider", sc.provider))
		}
		if sc.endpoint != "" {
			details["webhook_endpoint"], details["url"] = sc.endpoint, sc.url
			attrs = append(attrs, slog.String("webhook_endpoint", sc.endpoint))
		}
		attrs = append(attrs, slog.String("host", host), slog.String("reason", reason))
		if id := reqid.From(ctx); id != "" {
			attrs = append(attrs, slog.String("request_id", id))
		}
		a.log.WarnContext(ctx, "egress blocked", attrs...)
		a.Record(ctx, Event{Tenant: sc.tenant, Type: domain.EventEgressBlocked, Provider: sc.provider,
			Outcome: domain.OutcomeDenied, Reason: domain.ReasonEgressBlocked, Details: details})
	}
}

// reasonLabel maps the guard's reason to a fixed label set: reasons can
// carry addresses, which must not become metric labels.
func reasonLabel(reason string) string {
	for _, l := range []string{"loopback", "private", "link-local", "multicast", "unspecified", "https required",
		"scheme", "userinfo", "redirect", "non-canonical", "reserved", "shared"} {
		if strings.Contains(reason, l) {
			return strings.ReplaceAll(l, " ", "_")
		}
	}
	return "other"
}
