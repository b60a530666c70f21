package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// Dependency is something the service cannot answer without: a name for
// the logs and a probe that fails while it is unreachable.
type Dependency struct {
	Name  string
	Probe func(ctx context.Context) error
}

// HealthSetter is where the poller publishes serving statuses
// (*health.Server of grpc-go).
type HealthSetter interface {
	SetServingStatus(service string, status healthpb.HealthCheckResponse_ServingStatus)
}

// Readiness probes the dependencies: /readyz asks it on every request, the
// gRPC health poller on an interval, so both answer from the same checks.
type Readiness struct {
	deps    []Dependency
	timeout time.Duration
}

// NewReadiness returns a checker of deps; each probe gets at most timeout.
func NewReadiness(timeout time.Duration, deps ...Dependency) (*Readiness, error) {
	if timeout <= 0 {
		return nil, errors.New("readiness: timeout must be positive")
	}
	for _, d := range deps {
		if d.Name == "" || d.Probe == nil {
			return nil, errors.New("readiness: a dependency needs a name and a probe")
		}
	}
	return &Readiness{deps: deps, timeout: timeout}, nil
}

// Check probes every dependency at once and returns the failures by name
// (empty when all answer).
func (r *Readiness) Check(ctx context.Context) map[string]error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	down := map[string]error{}
	for _, d := range r.deps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.Probe(ctx); err != nil {
				mu.Lock()
				down[d.Name] = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return down
}

// Ready returns nil when every dependency answers, else an error naming the
// ones that do not (with their causes, for the log).
func (r *Readiness) Ready(ctx context.Context) error {
	var errs []error
	for name, err := range r.Check(ctx) {
		errs = append(errs, fmt.Errorf("%s: %w", name, err))
	}
	return errors.Join(errs...)
}

// HealthPoller keeps the gRPC health of each service in step with the
// dependencies it needs: NOT_SERVING while one of them is down, SERVING when
// all answer. The overall status (service "") needs every dependency, as
// /readyz does.
type HealthPoller struct {
	readiness *Readiness
	health    HealthSetter
	needs     map[string][]string
	interval  time.Duration
	log       *slog.Logger

	mu   sync.Mutex
	down map[string]bool // dependency name → down at the last poll
}

// NewHealthPoller returns a poller publishing to health; needs maps each
// registered service name to the names of the dependencies it needs.
func NewHealthPoller(r *Readiness, health HealthSetter, needs map[string][]string, interval time.Duration, log *slog.Logger) (*HealthPoller, error) {
	if r == nil || health == nil || log == nil || interval <= 0 {
		return nil, errors.New("health poller: readiness, health, log and a positive interval are required")
	}
	known := map[string]bool{}
	for _, d := range r.deps {
		known[d.Name] = true
	}
	for svc, deps := range needs {
		for _, d := range deps {
			if !known[d] {
				return nil, fmt.Errorf("health poller: service %q needs unknown dependency %q", svc, d)
			}
		}
	}
	return &HealthPoller{readiness: r, health: health, needs: needs, interval: interval, log: log, down: map[string]bool{}}, nil
}

// Poll probes once and publishes the statuses.
func (p *HealthPoller) Poll(ctx context.Context) {
	failed := p.readiness.Check(ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range p.readiness.deps {
		err, isDown := failed[d.Name]
		switch {
		case isDown && !p.down[d.Name]:
			p.log.WarnContext(ctx, "dependency down: gRPC health of the services needing it is NOT_SERVING", "dependency", d.Name, "err", err.Error())
		case !isDown && p.down[d.Name]:
			p.log.InfoContext(ctx, "dependency back: gRPC health SERVING again", "dependency", d.Name)
		}
		p.down[d.Name] = isDown
	}
	all := make([]string, 0, len(p.readiness.deps))
	for _, d := range p.readiness.deps {
		all = append(all, d.Name)
	}
	p.health.SetServingStatus("", p.status(all))
	for svc, deps := range p.needs {
		p.health.SetServingStatus(svc, p.status(deps))
	}
}

func (p *HealthPoller) status(deps []string) healthpb.HealthCheckResponse_ServingStatus {
	for _, d := range deps {
		if p.down[d] {
			return healthpb.HealthCheckResponse_NOT_SERVING
		}
	}
	return healthpb.HealthCheckResponse_SERVING
}

// Run polls every interval until ctx ends. Call Poll once before serving so
// the first answer is already true.
func (p *HealthPoller) Run(ctx context.Context) {
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.Poll(ctx)
		}
	}
}

// HealthNeeds maps each API service, by its grpc.health.v1 name, to the
// dependencies it cannot serve without: all of them read and write the
// database; starting and completing authorizations (flow state), serving
// tokens and calling tools (refresh locks) also need the state store.
// Provider CRUD and the audit log do not, so they stay SERVING while Redis
// is down.
func HealthNeeds(database, state string) map[string][]string {
	return map[string][]string{
		mcpauthv1.MCPProviderService_ServiceDesc.ServiceName: {database},
		mcpauthv1.AuditService_ServiceDesc.ServiceName:       {database},
		mcpauthv1.OAuthService_ServiceDesc.ServiceName:       {database, state},
		mcpauthv1.MCPToolService_ServiceDesc.ServiceName:     {database, state},
	}
}
