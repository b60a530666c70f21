package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// privateRedis is a redis-server of this test alone, on a port of its own,
// so it can be stopped without touching the shared one.
type privateRedis struct {
	tb   testing.TB
	port int
	dir  string
	cmd  *exec.Cmd
}

func startPrivateRedis(tb testing.TB) *privateRedis {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("redis-server is not installed: %v", err)
		}
		tb.Skipf("SKIPPING: redis-server is not installed (%v)", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	r := &privateRedis{tb: tb, port: port, dir: tb.TempDir()}
	r.start()
	tb.Cleanup(r.stop)
	return r
}

func (r *privateRedis) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", r.port) }

func (r *privateRedis) start() {
	r.tb.Helper()
	r.cmd = exec.Command("redis-server", "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir)
	if err := r.cmd.Start(); err != nil {
		r.tb.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", r.port), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			r.tb.Fatalf("private redis-server did not listen: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop kills this test's redis-server (its process only).
func (r *privateRedis) stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.cmd = nil
}

// pgProxy puts a toxiproxy TCP proxy between the service and the shared
// PostgreSQL: stopping the proxy cuts every connection and refuses new ones,
// as a database outage does, without touching PostgreSQL itself.
func pgProxy(tb testing.TB, dsn string) (*toxiproxy.Proxy, string) {
	tb.Helper()
	u, err := url.Parse(dsn)
	if err != nil || u.Host == "" {
		tb.Fatalf("the test PostgreSQL DSN is not a URL with a host")
	}
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, "postgres", "127.0.0.1:0", u.Host)
	if err := p.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Stop)
	u.Host = p.Listen
	return p, u.String()
}

// healthNames are the names gRPC health answers for: the whole server and
// each API service.
var healthNames = []string{"",
	mcpauthv1.MCPProviderService_ServiceDesc.ServiceName, mcpauthv1.AuditService_ServiceDesc.ServiceName,
	mcpauthv1.OAuthService_ServiceDesc.ServiceName, mcpauthv1.MCPToolService_ServiceDesc.ServiceName}

// waitHealth polls grpc.health.v1 Check until every name answers the
// status want says, and /readyz answers readyz.
func waitHealth(t *testing.T, conn *grpc.ClientConn, httpURL string, want func(service string) healthpb.HealthCheckResponse_ServingStatus, readyz int) {
	t.Helper()
	client := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for {
		var wrong []string
		for _, svc := range healthNames {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
			cancel()
			if err != nil {
				wrong = append(wrong, fmt.Sprintf("%q: %v", svc, err))
			} else if resp.GetStatus() != want(svc) {
				wrong = append(wrong, fmt.Sprintf("%q: %v, want %v", svc, resp.GetStatus(), want(svc)))
			}
		}
		code := 0
		if resp, err := http.Get(httpURL + "/readyz"); err == nil {
			code = resp.StatusCode
			resp.Body.Close()
		}
		if code != readyz {
			wrong = append(wrong, fmt.Sprintf("/readyz %d, want %d", code, readyz))
		}
		if len(wrong) == 0 {
			return
		}
		last = strings.Join(wrong, "; ")
		if time.Now().After(deadline) {
			t.Fatalf("health did not settle: %s", last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHealthFollowsDependencies stops and starts this test's own Redis and
// cuts and restores the database connection, and checks over gRPC that
// each service's health follows the dependencies it needs, with /readyz
// agreeing with the overall status.
func TestHealthFollowsDependencies(t *testing.T) {
	t.Parallel()
	redis := startPrivateRedis(t)
	proxy, dsn := pgProxy(t, testenv.PostgresDSN(t))
	s := Start(t, Options{DSN: dsn, RedisURL: redis.url(), Env: map[string]string{"MCPAUTH_HEALTH_INTERVAL": "100ms"}})
	serving := healthpb.HealthCheckResponse_SERVING
	notServing := healthpb.HealthCheckResponse_NOT_SERVING
	all := func(st healthpb.HealthCheckResponse_ServingStatus) func(string) healthpb.HealthCheckResponse_ServingStatus {
		return func(string) healthpb.HealthCheckResponse_ServingStatus { return st }
	}
	waitHealth(t, s.Conn, s.HTTPURL, all(serving), http.StatusOK)

	redis.stop()
	// Provider CRUD and the audit log need only the database.
	waitHealth(t, s.Conn, s.HTTPURL, func(svc string) healthpb.HealthCheckResponse_ServingStatus {
		if svc == mcpauthv1.MCPProviderService_ServiceDesc.ServiceName || svc == mcpauthv1.AuditService_ServiceDesc.ServiceName {
			return serving
		}
		return notServing
	}, http.StatusServiceUnavailable)
	redis.start()
	waitHealth(t, s.Conn, s.HTTPURL, all(serving), http.StatusOK)

	proxy.Stop()
	waitHealth(t, s.Conn, s.HTTPURL, all(notServing), http.StatusServiceUnavailable)
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, s.Conn, s.HTTPURL, all(serving), http.StatusOK)

	logs := s.Logs.String()
	for _, want := range []string{`"dependency":"redis"`, `"dependency":"database"`, "dependency down", "dependency back"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s", want)
		}
	}
}
