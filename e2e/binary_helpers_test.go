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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
	binaryOut  []byte
)

// mcpauthdBinary builds cmd/mcpauthd once per test process and returns its
// path (one file in a fresh directory under the OS temp directory).
func mcpauthdBinary(tb testing.TB) string {
	tb.Helper()
	binaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mcpauthd-e2e-")
		if err != nil {
			binaryErr = err
			return
		}
		binaryPath = filepath.Join(dir, "mcpauthd")
		cmd := exec.Command("go", "build", "-o", binaryPath, "github.com/mcpauth/mcpauth/cmd/mcpauthd")
		binaryOut, binaryErr = cmd.CombinedOutput()
	})
	if binaryErr != nil {
		tb.Fatalf("building mcpauthd: %v\n%s", binaryErr, binaryOut)
	}
	return binaryPath
}

// binProc is mcpauthd running as its own process.
type binProc struct {
	cmd      *exec.Cmd
	done     chan error
	GRPCAddr string
	HTTPURL  string
	Conn     *grpc.ClientConn
	Logs     *syncBuffer
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startBinary runs the mcpauthd binary at bin with env (MCPAUTH_*; the
// addresses and data directory are chosen here unless env sets them) and
// waits until it is ready. The process is killed when the test ends.
func startBinary(tb testing.TB, bin string, env map[string]string) *binProc {
	tb.Helper()
	full := map[string]string{
		"MCPAUTH_GRPC_ADDR":                   freeAddr(tb),
		"MCPAUTH_HTTP_ADDR":                   freeAddr(tb),
		"MCPAUTH_DATA_DIR":                    tb.TempDir(),
		"MCPAUTH_LOG_LEVEL":                   "warn",
		"MCPAUTH_BACKGROUND_REFRESH_INTERVAL": "0",
	}
	for k, v := range env {
		full[k] = v
	}
	p := &binProc{GRPCAddr: full["MCPAUTH_GRPC_ADDR"], HTTPURL: "http://" + full["MCPAUTH_HTTP_ADDR"], Logs: &syncBuffer{},
		done: make(chan error, 1)}
	p.cmd = exec.Command(bin)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MCPAUTH_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	for k, v := range full {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stderr = p.Logs
	p.cmd.Stdout = p.Logs
	if err := p.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	tb.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := httpReady(p.HTTPURL); err == nil {
			break
		}
		select {
		case err := <-p.done:
			tb.Fatalf("mcpauthd exited before it was ready: %v\n%s", err, p.Logs.String())
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("mcpauthd not ready within 60s\n%s", p.Logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	p.Conn = conn
	return p
}

// Kill9 kills the process with SIGKILL (no drain, no flush) and waits.
func (p *binProc) Kill9(tb testing.TB) {
	tb.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	p.done <- nil // for the cleanup
}

// Term stops the process with SIGTERM (graceful drain) and waits for it to
// exit, returning its exit error.
func (p *binProc) Term(tb testing.TB) error {
	tb.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(60 * time.Second):
		tb.Fatalf("mcpauthd did not exit within 60s of SIGTERM\n%s", p.Logs.String())
		return nil
	}
}

// httpReady asks /readyz once.
func httpReady(base string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return getOK(ctx, base+"/readyz")
}

// getOK is a GET that must answer 200.
func getOK(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d", url, resp.StatusCode)
	}
	return nil
}

// CPUTime is the processor time (user and system) the process has used so
// far, read from /proc (Linux); ok is false where that cannot be read. A
// benchmark reports CPU per call from it: unlike throughput, it does not
// drift with what else the machine runs.
func (p *binProc) CPUTime() (d time.Duration, ok bool) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, false
	}
	// Fields after the command name (which may hold spaces, in parentheses):
	// state is field 3, utime and stime fields 14 and 15, in clock ticks
	// (USER_HZ, 100 on Linux).
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, false
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(u+st) * 10 * time.Millisecond, true
}
