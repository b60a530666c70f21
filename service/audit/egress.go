package audit

import (
	"context"
	"strings"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/metrics"
)

type scopeKey struct{}

type scope struct{ tenant, provider string }

// WithScope marks ctx as work for one tenant's provider, so events raised
// deep below (an egress block) land in that tenant's audit log.
func WithScope(ctx context.Context, tenant, provider string) context.Context {
	return context.WithValue(ctx, scopeKey{}, scope{tenant, provider})
}

// EgressBlockHook returns the egress guard's OnBlock hook: it counts the
// block and records an egress.blocked audit event for the tenant in scope.
// It receives only the host and a reason, never a path or query.
func EgressBlockHook(a *Auditor, m *metrics.Metrics) func(ctx context.Context, host, reason string) {
	return func(ctx context.Context, host, reason string) {
		m.EgressBlocked.WithLabelValues(reasonLabel(reason)).Inc()
		sc, ok := ctx.Value(scopeKey{}).(scope)
		if !ok || sc.tenant == "" {
			a.log.WarnContext(ctx, "egress blocked outside a tenant scope", "host", host, "reason", reason)
			return
		}
		a.Record(ctx, Event{Tenant: sc.tenant, Type: domain.EventEgressBlocked, Provider: sc.provider,
			Outcome: domain.OutcomeDenied, Reason: domain.ReasonEgressBlocked,
			Details: map[string]string{"host": host, "rule": reason}})
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
