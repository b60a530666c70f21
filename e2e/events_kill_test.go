package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/internal/testenv"
	"github.com/mcpauth/mcpauth/repository"
)

var (
	evBinaryOnce sync.Once
	evBinary     string
	evBinaryErr  error
)

// evBuild builds the real mcpauthd binary once per test run.
func evBuild(tb testing.TB) string {
	tb.Helper()
	evBinaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mcpauthd-bin-")
		if err != nil {
			evBinaryErr = err
			return
		}
		evBinary = filepath.Join(dir, "mcpauthd")
		out, err := exec.Command("go", "build", "-o", evBinary, "github.com/mcpauth/mcpauth/cmd/mcpauthd").CombinedOutput()
		if err != nil {
			evBinaryErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if evBinaryErr != nil {
		tb.Fatal(evBinaryErr)
	}
	return evBinary
}

func evFreeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// evProcess is mcpauthd running as a child process.
type evProcess struct {
	cmd  *exec.Cmd
	conn *grpc.ClientConn
	key  string
}

// evSpawn starts the binary on dsn and dataDir and waits until it is ready.
func evSpawn(tb testing.TB, dsn, dataDir string, env map[string]string) *evProcess {
	tb.Helper()
	grpcAddr, httpAddr := evFreeAddr(tb), evFreeAddr(tb)
	cmd := exec.Command(evBuild(tb))
	cmd.Env = append(os.Environ(), "MCPAUTH_DATABASE_URL="+dsn, "MCPAUTH_MASTER_KEYS="+databaseMasterKeys(dsn),
		"MCPAUTH_DATA_DIR="+dataDir, "MCPAUTH_GRPC_ADDR="+grpcAddr, "MCPAUTH_HTTP_ADDR="+httpAddr,
		"MCPAUTH_PUBLIC_URL=http://"+httpAddr, "MCPAUTH_BACKGROUND_REFRESH_INTERVAL=0", "MCPAUTH_DATABASE_MAX_CONNS=6")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	logf, err := os.Create(filepath.Join(dataDir, fmt.Sprintf("mcpauthd-%d.log", time.Now().UnixNano())))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { logf.Close() })
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p := &evProcess{cmd: cmd}
	tb.Cleanup(func() { p.kill() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("mcpauthd not ready; log in %s", logf.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
	raw, err := os.ReadFile(filepath.Join(dataDir, "admin.key"))
	if err != nil {
		tb.Fatal(err)
	}
	p.key = strings.TrimSpace(string(raw))
	if p.conn, err = grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		tb.Fatal(err)
	}
	return p
}

// kill stops the process with SIGKILL: no drain, no deferred writes.
func (p *evProcess) kill() {
	if p.conn != nil {
		p.conn.Close()
	}
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
	}
}

// TestWebhookSurvivesKill9: the process is killed with SIGKILL after
// acknowledging changes whose events it had not delivered (some not even
// routed to the endpoint yet); another process on the same database
// delivers every one of them, each accepted once (one webhook-id per event
// and endpoint).
func TestWebhookSurvivesKill9(t *testing.T) {
	t.Parallel()
	dsn := testenv.PostgresDSN(t)
	dataDir := t.TempDir()
	// A lease of 3 x 2 s: an attempt the killed process held is made
	// again by the next one after 6 s.
	env := evEnv(map[string]string{"MCPAUTH_WEBHOOK_TIMEOUT": "2s"})
	a := evSpawn(t, dsn, dataDir, env)
	r := evNewReceiver(t)
	r.setDown(true)
	ctx := metadataCtx(context.Background(), a.key)
	hooks := mcpauthv1.NewWebhookServiceClient(a.conn)
	resp, err := hooks.CreateWebhookEndpoint(ctx, &mcpauthv1.CreateWebhookEndpointRequest{Parent: "tenants/acme",
		WebhookEndpointId: "sink", WebhookEndpoint: &mcpauthv1.WebhookEndpoint{Url: r.srv.URL + "/hook"}})
	if err != nil {
		t.Fatal(err)
	}
	r.setSecret(resp.GetSigningSecret())
	provs := mcpauthv1.NewMCPProviderServiceClient(a.conn)
	create := func(i int) {
		if _, err := provs.CreateProvider(ctx, &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme",
			ProviderId: fmt.Sprintf("p%d", i), Provider: provNewProvider(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		create(i)
	}
	deadline := time.Now().Add(30 * time.Second)
	for r.attempts() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if r.attempts() == 0 {
		t.Fatal("no delivery attempt before the kill")
	}
	for i := 5; i < 8; i++ {
		create(i) // acknowledged, then killed before they can be delivered
	}
	a.kill()
	if n := len(r.messages()); n != 0 {
		t.Fatalf("%d messages accepted before the kill; the endpoint was down", n)
	}

	r.setDown(false)
	b := evSpawn(t, dsn, dataDir, env)
	bs := &Service{Conn: b.conn, AdminKey: b.key}
	audited := evAuditNames(t, bs, "acme")
	if len(audited) != 8 {
		t.Fatalf("%d audit events after the kill, want the 8 acknowledged creates", len(audited))
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		st, err := repository.Open(context.Background(), dsn, repository.Options{})
		if err != nil {
			return
		}
		defer st.Close()
		var rows []map[string]any
		st.DB().Raw("SELECT event_uid, state, attempts, lease_owner, lease_until, next_attempt_at, last_error FROM webhook_deliveries").Scan(&rows)
		t.Logf("deliveries: %v", rows)
		var evs []map[string]any
		st.DB().Raw("SELECT uid, txid, id, event_type FROM audit_events ORDER BY txid, id").Scan(&evs)
		t.Logf("events: %v", evs)
		var cur []map[string]any
		st.DB().Raw("SELECT * FROM event_cursors").Scan(&cur)
		t.Logf("cursor: %v", cur)
		logs, _ := filepath.Glob(filepath.Join(dataDir, "mcpauthd-*.log"))
		for _, l := range logs {
			raw, _ := os.ReadFile(l)
			for _, line := range strings.Split(string(raw), "\n") {
				if strings.Contains(line, "webhook") || strings.Contains(line, "ERROR") {
					t.Logf("%s: %s", filepath.Base(l), line)
				}
			}
		}
	})
	got := r.waitFor(t, evNames(audited), 60*time.Second)
	time.Sleep(time.Second) // a repeat would arrive meanwhile
	got = r.messages()
	count := map[string]int{}
	for _, m := range got {
		count[m.ID]++
	}
	for _, e := range audited {
		id := strings.TrimPrefix(e.GetName(), "tenants/acme/auditEvents/")
		if count[id] != 1 {
			t.Errorf("event %s accepted %d times, want once", id, count[id])
		}
	}
	if len(got) != len(audited) {
		t.Errorf("%d messages accepted, want %d", len(got), len(audited))
	}
}

// TestWebhookSlowEndpointCrash: one endpoint answers at once, another takes
// longer than the fan-out waits for a batch's stragglers (1 s). The fast
// endpoint's delivery is recorded while the slow one is still being sent,
// so a SIGKILL then repeats only the slow one: the next process sends it
// once the killed one's lease on it ends, and the fast endpoint receives the
// event once. (A batch recorded only after its slowest send went out again
// to every endpoint after such a crash.)
func TestWebhookSlowEndpointCrash(t *testing.T) {
	t.Parallel()
	dsn := testenv.PostgresDSN(t)
	dataDir := t.TempDir()
	// A sender timeout of 6 s (the slow answer takes 4 s), so a delivery
	// the killed process held is leased for 3 x 6 s.
	env := evEnv(map[string]string{"MCPAUTH_WEBHOOK_TIMEOUT": "6s"})
	a := evSpawn(t, dsn, dataDir, env)
	as := &Service{Conn: a.conn, AdminKey: a.key}
	fast, slow := evNewReceiver(t), evNewReceiver(t)
	evCreateEndpoint(t, as, "acme", "fast", fast)
	evCreateEndpoint(t, as, "acme", "slow", slow)
	endpoint := func(s *Service, id string) *mcpauthv1.WebhookEndpoint {
		t.Helper()
		resp, err := s.Webhooks().GetWebhookEndpoint(Ctx(t, s.AdminKey), &mcpauthv1.GetWebhookEndpointRequest{Name: "tenants/acme/webhookEndpoints/" + id})
		if err != nil {
			t.Fatalf("GetWebhookEndpoint(%s): %v", id, err)
		}
		return resp.GetWebhookEndpoint()
	}
	// The endpoints' own events first, delivered and recorded: the fast
	// one receives the slow one's creation.
	var before, slowBefore int64
	tokWait(t, "the endpoints' events delivered", 30*time.Second, func() bool {
		f, s := endpoint(as, "fast"), endpoint(as, "slow")
		before, slowBefore = f.GetDeliveredDeliveries(), s.GetDeliveredDeliveries()
		return before > 0 && f.GetPendingDeliveries() == 0 && s.GetPendingDeliveries() == 0 && before == int64(len(fast.messages())) &&
			s.GetDeliveredDeliveries() == int64(len(slow.messages()))
	})
	slow.setBeforeNext(func() { time.Sleep(4 * time.Second) })
	if _, err := as.Providers().CreateProvider(Ctx(t, as.AdminKey), &mcpauthv1.CreateProviderRequest{Parent: "tenants/acme",
		ProviderId: "p", Provider: provNewProvider("p")}); err != nil {
		t.Fatal(err)
	}
	created := evAuditNames(t, as, "acme")
	name := created[len(created)-1].GetName()
	fast.waitFor(t, []string{name}, 30*time.Second)
	received := time.Now()

	// Recorded within the straggler wait (1 s) and its record, well before
	// the slow answer (4 s after it was sent).
	for endpoint(as, "fast").GetDeliveredDeliveries() != before+1 {
		if time.Since(received) > 2500*time.Millisecond {
			f, sl := endpoint(as, "fast"), endpoint(as, "slow")
			t.Fatalf("the fast endpoint's delivery was not recorded %s after it answered, while the slow endpoint was still being sent (fast %d/%d delivered/pending, before %d; slow %d/%d)",
				time.Since(received).Round(time.Millisecond), f.GetDeliveredDeliveries(), f.GetPendingDeliveries(), before, sl.GetDeliveredDeliveries(), sl.GetPendingDeliveries())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ep := endpoint(as, "slow"); ep.GetDeliveredDeliveries() != slowBefore || ep.GetPendingDeliveries() != 1 {
		t.Fatalf("slow endpoint before the kill: %d delivered, %d pending; want its delivery pending (being sent)",
			ep.GetDeliveredDeliveries(), ep.GetPendingDeliveries())
	}
	a.kill()

	b := evSpawn(t, dsn, dataDir, env)
	bs := &Service{Conn: b.conn, AdminKey: b.key}
	deadline := time.Now().Add(60 * time.Second)
	for endpoint(bs, "slow").GetDeliveredDeliveries() != slowBefore+1 {
		if time.Now().After(deadline) {
			t.Fatal("the slow endpoint's delivery was never made again after the kill")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // a repeat to the fast endpoint would arrive meanwhile
	n := 0
	for _, m := range fast.messages() {
		if m.Name == name {
			n++
		}
	}
	if n != 1 {
		t.Errorf("the fast endpoint accepted %s %d times, want once: only the straggler is sent again after the crash", name, n)
	}
	if !slices.ContainsFunc(slow.messages(), func(m evMessage) bool { return m.Name == name }) {
		t.Error("the slow endpoint never accepted the event")
	}
	if bad := append(fast.badSignatures(), slow.badSignatures()...); len(bad) > 0 {
		t.Errorf("messages whose signature does not verify: %v", bad)
	}
}

// TestWebhookSlowTenantDoesNotStallOthers: a tenant whose endpoints answer
// only after 5 s, with hundreds of deliveries to make, holds at most its
// share of the workers (a quarter): another tenant's event is delivered
// meanwhile, long before the slow answers come.
func TestWebhookSlowTenantDoesNotStallOthers(t *testing.T) {
	t.Parallel()
	dsn := testenv.PostgresDSN(t)
	env := evEnv(map[string]string{"MCPAUTH_WEBHOOK_TIMEOUT": "8s"})
	a := evSpawn(t, dsn, t.TempDir(), env)
	s := &Service{Conn: a.conn, AdminKey: a.key}
	slow := evNewReceiver(t)
	slow.setDelay(5 * time.Second)
	// Each endpoint's creation is an event (about no provider: not
	// ordered, each its own group) for every endpoint already there:
	// about 40 x 40 / 2 slow deliveries.
	for i := range 40 {
		evCreateEndpoint(t, s, "slowco", fmt.Sprintf("slow%d", i), slow)
	}
	deadline := time.Now().Add(30 * time.Second)
	for slow.attempts() < 20 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d attempts at the slow tenant's endpoints", slow.attempts())
		}
		time.Sleep(20 * time.Millisecond)
	}
	fast := evNewReceiver(t)
	evCreateEndpoint(t, s, "fastco", "fast", fast)
	start := time.Now()
	if _, err := s.Providers().CreateProvider(Ctx(t, s.AdminKey), &mcpauthv1.CreateProviderRequest{Parent: "tenants/fastco",
		ProviderId: "p", Provider: provNewProvider("p")}); err != nil {
		t.Fatal(err)
	}
	evs := evAuditNames(t, s, "fastco")
	fast.waitFor(t, []string{evs[len(evs)-1].GetName()}, 30*time.Second)
	took := time.Since(start)
	t.Logf("the other tenant's event was delivered %s after its change, while the slow tenant's answers take 5 s", took.Round(time.Millisecond))
	// Behind the slow tenant's sends it would wait for their 5 s answers.
	if took > 4*time.Second {
		t.Errorf("the other tenant's event took %s: it waited for the slow tenant's sends", took.Round(time.Millisecond))
	}
}
