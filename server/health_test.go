package server

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestHealthPollerPerService: each service's status follows only the
// dependencies it needs, "" and Ready follow all of them, and a recovered
// dependency turns them back.
func TestHealthPollerPerService(t *testing.T) {
	t.Parallel()
	var dbDown, stateDown atomic.Bool
	probe := func(down *atomic.Bool) func(context.Context) error {
		return func(context.Context) error {
			if down.Load() {
				return errors.New("connection refused")
			}
			return nil
		}
	}
	r, err := NewReadiness(time.Second, Dependency{Name: "db", Probe: probe(&dbDown)}, Dependency{Name: "state", Probe: probe(&stateDown)})
	if err != nil {
		t.Fatal(err)
	}
	hs := health.NewServer()
	needs := map[string][]string{"a": {"db"}, "b": {"db", "state"}}
	p, err := NewHealthPoller(r, hs, needs, time.Second, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	check := func(want map[string]healthpb.HealthCheckResponse_ServingStatus, ready bool) {
		t.Helper()
		p.Poll(context.Background())
		for svc, st := range want {
			resp, err := hs.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
			if err != nil || resp.GetStatus() != st {
				t.Errorf("service %q: %v %v, want %v", svc, resp.GetStatus(), err, st)
			}
		}
		if err := r.Ready(context.Background()); (err == nil) != ready {
			t.Errorf("Ready = %v, want ready %v", err, ready)
		}
	}
	const up, down = healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING
	check(map[string]healthpb.HealthCheckResponse_ServingStatus{"": up, "a": up, "b": up}, true)
	stateDown.Store(true)
	check(map[string]healthpb.HealthCheckResponse_ServingStatus{"": down, "a": up, "b": down}, false)
	dbDown.Store(true)
	check(map[string]healthpb.HealthCheckResponse_ServingStatus{"": down, "a": down, "b": down}, false)
	dbDown.Store(false)
	stateDown.Store(false)
	check(map[string]healthpb.HealthCheckResponse_ServingStatus{"": up, "a": up, "b": up}, true)

	if _, err := NewHealthPoller(r, hs, map[string][]string{"c": {"nope"}}, time.Second, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("a service needing an unknown dependency was accepted")
	}
}
