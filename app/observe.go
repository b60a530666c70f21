package app

import (
	"context"
	"net/http"
	"os"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"

	"github.com/mcpauth/mcpauth/server"
	"github.com/mcpauth/mcpauth/telemetry"
	"github.com/mcpauth/mcpauth/version"
)

// Names of the dependencies in health answers and logs.
const (
	depDatabase = "database"
	depState    = "redis"
)

// setupTracing picks the tracer provider: the given one, else the exporter
// the OTEL_* environment configures. With tracing off nothing is
// instrumented (a.tracer stays nil), so the hot paths pay nothing for it.
func (a *App) setupTracing(ctx context.Context, tp trace.TracerProvider) error {
	if tp == nil {
		var shutdown func(context.Context) error
		var err error
		tp, shutdown, err = telemetry.NewTracerProvider(ctx, os.Getenv, version.String())
		if err != nil {
			return err
		}
		a.traceShutdown = shutdown
		if _, off := tp.(noop.TracerProvider); off {
			return nil
		}
		a.log.Info("tracing on: spans are exported as the OTEL_* environment variables say")
	}
	a.tracer = tp
	return nil
}

// instrumentStore exports the database pool statistics and, with tracing
// on, traces every query (statements with placeholders, never the values).
func (a *App) instrumentStore() error {
	sqlDB, err := a.store.DB().DB()
	if err != nil {
		return err
	}
	if err := a.metrics.WatchDB(sqlDB, "mcpauth"); err != nil {
		return err
	}
	if a.tracer == nil {
		return nil
	}
	return a.store.Trace(a.tracer)
}

// traceTransport is the egress guard's Instrument hook.
func (a *App) traceTransport(rt http.RoundTripper) http.RoundTripper {
	if a.tracer == nil {
		return rt
	}
	return telemetry.Transport(rt, a.tracer)
}

// grpcServerTracing is the server option adding spans to every RPC (method,
// code, message sizes; no message content or metadata).
func (a *App) grpcServerTracing() []grpc.ServerOption {
	if a.tracer == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(a.tracer),
		otelgrpc.WithPropagators(telemetry.Propagator()), otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider())))}
}

// grpcClientTracing is the gateway connection's option carrying the HTTP
// span's context to the in-process gRPC server.
func (a *App) grpcClientTracing() []grpc.DialOption {
	if a.tracer == nil {
		return nil
	}
	return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(a.tracer),
		otelgrpc.WithPropagators(telemetry.Propagator()), otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider())))}
}

// setupHealth builds the one readiness check behind /readyz and gRPC
// health (polled every MCPAUTH_HEALTH_INTERVAL) and returns /readyz's probe.
func (a *App) setupHealth() (func(context.Context) error, error) {
	r, err := server.NewReadiness(2*time.Second,
		server.Dependency{Name: depDatabase, Probe: a.store.Ping},
		server.Dependency{Name: depState, Probe: a.flows.Ping})
	if err != nil {
		return nil, err
	}
	a.poller, err = server.NewHealthPoller(r, a.health, server.HealthNeeds(depDatabase, depState), a.cfg.HealthInterval, a.log)
	if err != nil {
		return nil, err
	}
	return r.Ready, nil
}
