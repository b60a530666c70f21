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
		RPC: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets(prometheus.ExponentialBuckets(0.001, 2, 15)))),
	}
	r.MustRegister(m.RPC, m.Refreshes, m.RefreshLatency, m.LockWaits, m.TokensServed, m.ReauthRequired, m.EgressBlocked,
		m.CallbackResults, m.ToolCalls, m.AuditPending, m.AuditLost, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// WatchDB exports db's connection pool statistics (go_sql_* with
// db_name=name: open, in use and idle connections, waits, wait time,
// closed connections).
func (m *Metrics) WatchDB(db *sql.DB, name string) error {
	return m.Registry.Register(collectors.NewDBStatsCollector(db, name))
}
