package e2e

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// The fault suite (fault_*_test.go) injects faults into private instances
// only: a redis-server the test starts on a random port (stopped with
// SIGSTOP/SIGCONT, killed and restarted), toxiproxy (in process) in front
// of the authorization server and in front of the shared PostgreSQL (the
// replicas lose the database while the shared server keeps running). It
// never stops a shared service, so it runs with the rest of the suite.

// faultRedis is a private redis-server without persistence: a restart
// loses every key, as a failover to an empty replica or an eviction does.
type faultRedis struct {
	tb   testing.TB
	port int
	dir  string
	cmd  *exec.Cmd
}

// startFaultRedis starts a private redis-server on a free port.
func startFaultRedis(tb testing.TB) *faultRedis {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("redis-server not found: %v", err)
		}
		tb.Skipf("SKIPPED: redis-server not found (%v): the fault suite needs a private Redis", err)
	}
	_ = bin
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	r := &faultRedis{tb: tb, port: port, dir: tb.TempDir()}
	r.start()
	tb.Cleanup(func() {
		if r.cmd != nil && r.cmd.Process != nil {
			_ = r.cmd.Process.Signal(syscall.SIGCONT)
			_ = r.cmd.Process.Kill()
			_ = r.cmd.Wait()
		}
	})
	return r
}

func (r *faultRedis) start() {
	r.tb.Helper()
	r.cmd = exec.Command("redis-server", "--port", fmt.Sprint(r.port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "no", "--dir", r.dir, "--protected-mode", "no")
	if err := r.cmd.Start(); err != nil {
		r.tb.Fatalf("start redis-server: %v", err)
	}
	c := redis.NewClient(&redis.Options{Addr: r.addr()})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			r.tb.Fatal("private redis-server did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *faultRedis) addr() string { return fmt.Sprintf("127.0.0.1:%d", r.port) }

// URL is the replicas' Redis URL: short timeouts, so a stalled Redis is
// noticed in about a second, as an operator would configure it.
func (r *faultRedis) URL() string {
	return "redis://" + r.addr() + "/0?dial_timeout=1s&read_timeout=1s&write_timeout=1s"
}

// Stop freezes Redis (SIGSTOP): connections stay open, nothing answers.
func (r *faultRedis) Stop() { _ = r.cmd.Process.Signal(syscall.SIGSTOP) }

// Cont resumes a frozen Redis.
func (r *faultRedis) Cont() { _ = r.cmd.Process.Signal(syscall.SIGCONT) }

// Restart kills Redis and starts an empty one on the same port.
func (r *faultRedis) Restart() {
	r.tb.Helper()
	_ = r.cmd.Process.Signal(syscall.SIGCONT)
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.start()
}

// faultProxy is a toxiproxy proxy running in this process.
type faultProxy struct {
	tb testing.TB
	p  *toxiproxy.Proxy
}

// newFaultProxy proxies a free local port to upstream.
func newFaultProxy(tb testing.TB, name, upstream string) *faultProxy {
	tb.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		tb.Fatalf("toxiproxy: %v", err)
	}
	tb.Cleanup(p.Stop)
	return &faultProxy{tb: tb, p: p}
}

// Addr is where clients connect.
func (f *faultProxy) Addr() string { return f.p.Listen }

// toxic adds a toxic on the stream ("downstream": answers to clients).
func (f *faultProxy) toxic(name, typ, stream string, attrs string) {
	f.tb.Helper()
	js := fmt.Sprintf(`{"name":%q,"type":%q,"stream":%q,"attributes":%s}`, name, typ, stream, attrs)
	if _, err := f.p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		f.tb.Fatalf("toxiproxy: add %s: %v", name, err)
	}
}

// Hold delays every answer by d (the server works; its answers arrive late).
func (f *faultProxy) Hold(d time.Duration) {
	f.toxic("hold", "latency", "downstream", fmt.Sprintf(`{"latency":%d}`, d.Milliseconds()))
}

// BlackHole swallows everything: requests get no answer, ever.
func (f *faultProxy) BlackHole() { f.toxic("blackhole", "timeout", "upstream", `{"timeout":0}`) }

// Clear removes every toxic.
func (f *faultProxy) Clear() { f.p.Toxics.ResetToxics(context.Background()) }

// Down closes the proxy's listener and every connection through it:
// connection refused, as from a stopped server.
func (f *faultProxy) Down() { f.p.Stop() }

// Up listens again on the same address.
func (f *faultProxy) Up() {
	f.tb.Helper()
	if err := f.p.Start(); err != nil {
		f.tb.Fatalf("toxiproxy: restart: %v", err)
	}
}

// faultAS returns a tokOptions.NewAS that starts the authorization server
// behind a toxiproxy (issuer and endpoints at the proxy's address), and the
// proxy, once started.
func faultAS(tb testing.TB) (func(testing.TB, testauthz.AuthServerOptions) *testauthz.AuthServer, func() *faultProxy) {
	var proxy *faultProxy
	return func(tb testing.TB, opt testauthz.AuthServerOptions) *testauthz.AuthServer {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				tb.Fatal(err)
			}
			proxy = newFaultProxy(tb, "as", l.Addr().String())
			return testauthz.NewAuthServerOn(tb, opt, l, "http://"+proxy.Addr())
		}, func() *faultProxy {
			return proxy
		}
}

// faultPostgres returns a DSN of a fresh schema on the shared PostgreSQL
// reached through a toxiproxy, and the proxy.
func faultPostgres(tb testing.TB) (string, *faultProxy) {
	tb.Helper()
	dsn := testenv.PostgresDSN(tb)
	u, err := url.Parse(dsn)
	if err != nil || u.Host == "" {
		tb.Skipf("SKIPPED: the PostgreSQL DSN is not a URL with a host; the database fault tests need one")
	}
	p := newFaultProxy(tb, "pg", u.Host)
	u.Host = p.Addr()
	return u.String(), p
}

// getBy reads the cluster's token on replica r with a caller's deadline d:
// a fault test asserts that callers are answered with the token by their own
// deadline (gRPC ends the call there), never a duration of its own.
func (c *tokCluster) getBy(tb testing.TB, r int, d time.Duration) (*mcpauthv1.GetAccessTokenResponse, error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(c.ctx(tb), d)
	defer cancel()
	return c.get(ctx, r)
}
