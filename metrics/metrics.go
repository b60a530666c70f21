// Package metrics defines mcpauth's Prometheus metrics. Labels carry only
// bounded, non-secret values (outcomes, methods, reasons): never a tenant
// id, provider id, URL or token.
package metrics

import (
	"database/sql"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics holds every collector of the service.
type Metrics struct {
	Registry        *prometheus.Registry
	Refreshes       *prometheus.CounterVec
	RefreshLatency  prometheus.Histogram
	LockWaits       prometheus.Histogram
	TokensServed    prometheus.Counter
	ReauthRequired  prometheus.Counter
	EgressBlocked   *prometheus.CounterVec
	CallbackResults *prometheus.CounterVec
	ToolCalls       *prometheus.CounterVec
	// AuditPending is the audit events held in memory, recorded but not
	// yet stored (they pile up while the database is unreachable).
	AuditPending prometheus.Gauge
	// AuditLost counts audit events that will never be stored, by reason:
	// buffer_full (the bound of held events was reached), refused (the
	// database rejected the event itself), shutdown (unstored when the
	// drain ended).
	AuditLost *prometheus.CounterVec
	// WebhookAttempts counts webhook delivery attempts by outcome
	// (delivered; failed, to be tried again; dead, the last attempt
	// failed) and class (the receiver's answer as 1xx to 5xx; blocked when
	// the egress policy refused the connection; error for no answer).
	WebhookAttempts *prometheus.CounterVec
	// WebhookAttemptDuration is the duration of webhook requests, from
	// sending to the receiver's answer (or the error).
	WebhookAttemptDuration prometheus.Histogram
	// WebhookDeliveryLag is, for each delivered webhook message, the time
	// from its event to the receiver's 2xx answer, retries included.
	WebhookDeliveryLag prometheus.Histogram
	// RPC is the per-RPC RED metrics of the gRPC server (grpc_server_started_total,
	// grpc_server_handled_total by code, grpc_server_handling_seconds), labelled
	// by service, method and code only.
	RPC *grpcprom.ServerMetrics
}

// New registers the collectors on a fresh registry (plus the Go and process
// collectors).
func New() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		Refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpauth_token_refreshes_total", Help: "Token refreshes at authorization servers, by outcome.",
		}, []string{"outcome"}),
		RefreshLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mcpauth_token_refresh_duration_seconds", Help: "Duration of refresh requests to authorization servers.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
		LockWaits: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mcpauth_refresh_lock_wait_seconds", Help: "Time spent waiting for another replica's refresh of the same provider.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		TokensServed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mcpauth_tokens_served_total", Help: "Access tokens handed to callers or used for MCP calls.",
		}),
		ReauthRequired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mcpauth_reauth_required_total", Help: "Authorizations that became REAUTH_REQUIRED.",
		}),
		EgressBlocked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpauth_egress_blocked_total", Help: "Outbound requests refused by the egress guard, by reason.",
		}, []string{"reason"}),
		CallbackResults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpauth_oauth_callbacks_total", Help: "OAuth callbacks, by result reason.",
		}, []string{"result"}),
		ToolCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpauth_tool_calls_total", Help: "MCP tool calls, by outcome.",
		}, []string{"outcome"}),
		AuditPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mcpauth_audit_events_pending", Help: "Audit events held in memory, not yet stored.",
		}),
		AuditLost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpauth_audit_events_lost_total", Help: "Audit events that will never be stored, by reason.",
		}, []string{"reason"}),
		WebhookAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpauth_webhook_attempts_total", Help: "Webhook delivery attempts, by outcome and class of the receiver's answer.",
		}, []string{"outcome", "class"}),
		WebhookAttemptDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mcpauth_webhook_attempt_duration_seconds", Help: "Duration of webhook delivery requests.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
		WebhookDeliveryLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mcpauth_webhook_delivery_lag_seconds", Help: "Time from an event to its webhook delivery's success, retries included.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400},
		}),
		RPC: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets(prometheus.ExponentialBuckets(0.001, 2, 15)))),
	}
	r.MustRegister(m.RPC, m.Refreshes, m.RefreshLatency, m.LockWaits, m.TokensServed, m.ReauthRequired, m.EgressBlocked,
		m.CallbackResults, m.ToolCalls, m.AuditPending, m.AuditLost,
		m.WebhookAttempts, m.WebhookAttemptDuration, m.WebhookDeliveryLag, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// WatchDB exports db's connection pool statistics (go_sql_* with
// db_name=name: open, in use and idle connections, waits, wait time,
// closed connections).
func (m *Metrics) WatchDB(db *sql.DB, name string) error {
	return m.Registry.Register(collectors.NewDBStatsCollector(db, name))
}
