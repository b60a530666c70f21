package audit

import (
	"context"
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/reqid"
	"github.com/mcpauth/mcpauth/service/servicetest"
)

// blockedCount reads mcpauth_egress_blocked_total{reason=label} from the
// registry.
func blockedCount(t *testing.T, m *metrics.Metrics, label string) float64 {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "mcpauth_egress_blocked_total" {
			continue
		}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == label {
					return s.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestEgressBlockHook(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		ctx       context.Context
		want      *repository.AuditEvent
		wantWarns int
		// wantLog is the in-scope warning, after its time.
		wantLog string
	}{
		{
			name: "in a tenant scope",
			ctx:  WithScope(context.Background(), "t1", "p1"),
			want: &repository.AuditEvent{ID: 1, TenantID: "t1", CreatedAt: epoch.UTC(), EventType: "egress.blocked", Actor: "anonymous",
				ProviderID: "p1", Outcome: int32(domain.OutcomeDenied), Reason: domain.ReasonEgressBlocked,
				Details: `{"host":"10.0.0.7","rule":"connected address 10.0.0.7 is private"}`},
			wantLog: `level=WARN msg="egress blocked" tenant=t1 provider=p1 host=10.0.0.7 reason="connected address 10.0.0.7 is private"`,
		},
		{
			name: "in a webhook endpoint's scope",
			ctx:  reqid.With(WithWebhookScope(context.Background(), "t1", "hook", "https://hooks.example.com/******"), "req-1"),
			want: &repository.AuditEvent{ID: 1, TenantID: "t1", CreatedAt: epoch.UTC(), EventType: "egress.blocked", Actor: "anonymous",
				Outcome: int32(domain.OutcomeDenied), Reason: domain.ReasonEgressBlocked, RequestID: "req-1",
				Details: `{"host":"10.0.0.7","rule":"connected address 10.0.0.7 is private","url":"https://hooks.example.com/******","webhook_endpoint":"hook"}`},
			wantLog: `level=WARN msg="egress blocked" tenant=t1 webhook_endpoint=hook host=10.0.0.7 ` +
				`reason="connected address 10.0.0.7 is private" request_id=req-1`,
		},
		{name: "outside a scope", ctx: context.Background(), wantWarns: 1},
		{name: "scope without a tenant", ctx: WithScope(context.Background(), "", "p1"), wantWarns: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := servicetest.NewStore(nil)
			a, logs := newAuditor(t, st)
			m := metrics.New()
			hook := EgressBlockHook(a, m)

			hook(tt.ctx, "10.0.0.7", "connected address 10.0.0.7 is private")

			events := withoutUIDs(st.Events())
			switch {
			case tt.want == nil && len(events) != 0:
				t.Errorf("stored %+v, want no event", events)
			case tt.want != nil && (len(events) != 1 || events[0] != *tt.want):
				t.Errorf("stored %+v, want %+v", events, *tt.want)
			}
			if got := strings.Count(logs.String(), "egress blocked outside a tenant scope"); got != tt.wantWarns {
				t.Errorf("%d warnings, want %d:\n%s", got, tt.wantWarns, logs)
			}
			if _, line, _ := strings.Cut(strings.TrimSpace(logs.String()), " "); tt.wantLog != "" && line != tt.wantLog {
				t.Errorf("logged %q, want %q after the time", line, tt.wantLog)
			}
			if got := blockedCount(t, m, "private"); got != 1 {
				t.Errorf("egress_blocked_total{reason=private} = %v, want 1", got)
			}
		})
	}
}

// TestReasonLabel maps the egress guard's reasons, which may carry
// addresses, to the fixed label set.
func TestReasonLabel(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"address is loopback":                                        "loopback",
		"connected address 127.0.0.1 is loopback":                    "loopback",
		"connected address 192.168.1.2 is private":                   "private",
		"connected address fe80::1 is link-local":                    "link-local",
		"address is multicast":                                       "multicast",
		"connected address 0.0.0.0 is unspecified":                   "unspecified",
		"https required":                                             "https_required",
		"scheme must be http or https":                               "scheme",
		"userinfo not allowed":                                       "userinfo",
		"redirect refused":                                           "redirect",
		"non-canonical ip address":                                   "non-canonical",
		"address is reserved":                                        "reserved",
		"connected address 100.64.0.1 is shared address space":       "shared",
		"connected address ::ffff:127.0.0.1 is ipv4-mapped loopback": "loopback",
		"connected address 64:ff9b::a00:1 is nat64 of private":       "private",
		"invalid host":                                               "other",
		"network udp not allowed":                                    "other",
		"":                                                           "other",
		"address is teredo":                                          "other",
		"connected address 2002::1 is 6to4":                          "other",
	}
	for reason, want := range tests {
		if got := reasonLabel(reason); got != want {
			t.Errorf("reasonLabel(%q) = %q, want %q", reason, got, want)
		}
	}
}
