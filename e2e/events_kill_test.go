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
