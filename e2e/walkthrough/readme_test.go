// Package walkthrough runs the README's walk-through as a test.
// It is a package of its own so that its builds get their own test timeout.
package walkthrough

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestREADMEWalkthrough runs the README's walk-through as a newcomer would:
// in a fresh copy of the repository (no data directory), the sh blocks
// between the walkthrough markers, in order, through bash. The two server
// blocks (the demo, then mcpauthd) run in the background as the README's
// shells 1 and 2; the others run as one script in shell 3. The only
// changes to the text are the four port numbers (9090, 8080, 9400, 9401),
// replaced by free ports so that the test runs beside other services, with
// the matching MCPAUTH_GRPC_ADDR, MCPAUTH_HTTP_ADDR and demo addresses in
// the environment; MCPAUTH_PUBLIC_URL stays unset, so the flow also proves
// that the public URL follows MCPAUTH_HTTP_ADDR. It needs bash, curl, git
// and the Go toolchain (and the module proxy for grpcurl's install line).
func TestREADMEWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("builds mcpauthd, the demo and grpcurl")
	}
	for _, tool := range []string{"bash", "curl", "git", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is not installed: the README walk-through cannot run", tool)
			}
			t.Skipf("SKIPPED LOUDLY: %s is not installed; the README walk-through is not checked", tool)
		}
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := walkthroughBlocks(t, string(readme))
	clone := copyRepo(t, root)

	ports := map[string]string{}
	for _, p := range []string{"9090", "8080", "9400", "9401"} {
		ports[p] = freePort(t)
	}
	subst := strings.NewReplacer(
		"localhost:9090", "localhost:"+ports["9090"], "localhost:8080", "localhost:"+ports["8080"],
		"127.0.0.1:9400", "127.0.0.1:"+ports["9400"], "127.0.0.1:9401", "127.0.0.1:"+ports["9401"])
	env := []string{
		"MCPAUTH_GRPC_ADDR=:" + ports["9090"], "MCPAUTH_HTTP_ADDR=:" + ports["8080"],
		"MCPAUTH_DEMO_AS_ADDR=127.0.0.1:" + ports["9400"], "MCPAUTH_DEMO_MCP_ADDR=127.0.0.1:" + ports["9401"],
	}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MCPAUTH_") && !strings.HasPrefix(kv, "GOWORK=") {
			env = append(env, kv)
		}
	}

	var shell3 []string
	servers := 0
	var serverLogs []*syncBuffer
	for _, b := range blocks {
		b = subst.Replace(b)
		if strings.Contains(b, "go run ./e2e/cmd/mcpauth-demo\n") || strings.HasSuffix(b, "go run ./cmd/mcpauthd\n") {
			if len(shell3) > 0 {
				t.Fatal("a server block follows the calls: the test runs servers first")
			}
			serverLogs = append(serverLogs, startShell(t, clone, env, b))
			servers++
			continue
		}
		shell3 = append(shell3, b)
	}
	if servers != 2 || len(shell3) == 0 {
		t.Fatalf("walk-through has %d server blocks and %d others, want 2 and some", servers, len(shell3))
	}
	waitHTTP(t, "http://127.0.0.1:"+ports["8080"]+"/readyz", serverLogs)
	waitHTTP(t, "http://127.0.0.1:"+ports["9400"]+"/.well-known/oauth-authorization-server", serverLogs)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", "set -euo pipefail\n"+strings.Join(shell3, "\n"))
	cmd.Dir = clone
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("walk-through failed: %v\n%s\n--- servers:\n%s", err, out, joinLogs(serverLogs))
	}
	text := string(out)
	for _, want := range []string{
		"mcpauth.v1.MCPToolService",
		`"maskedServerUrl": "http://127.0.0.1:` + ports["9401"] + `/******"`,
		"http://localhost:" + ports["8080"] + "/v1/oauth/authorize/",
		"Authorization complete",
		`"status": "AUTHORIZATION_STATUS_AUTHORIZED"`,
		`"name": "echo"`,
		`"text": "hello"`,
		`"subject": "demo-user"`,
		`"eventType": "oauth.callback.succeeded"`,
		`"eventType": "mcp.tool.called"`,
		"Code: Unauthenticated",
		"Code: InvalidArgument",
		`"structured_content":{"sum":5}`,
		`"display_name":"Demo MCP server (REST)"`,
		`"name":"tenants/globex/providers/demo"`,
		`"revokedAtServer": true`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("walk-through output lacks %q", want)
		}
	}
	if strings.Contains(text, "header-secret") || strings.Contains(joinLogs(serverLogs), "header-secret") {
		t.Error("the provider's header value was echoed")
	}
	if t.Failed() {
		t.Logf("output:\n%s", text)
	}
}

// walkthroughBlocks returns the sh blocks between the walkthrough markers.
func walkthroughBlocks(tb testing.TB, readme string) []string {
	tb.Helper()
	start := strings.Index(readme, "<!-- walkthrough")
	end := strings.Index(readme, "<!-- /walkthrough -->")
	if start < 0 || end < start {
		tb.Fatal("README has no walkthrough markers")
	}
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(readme[start:end], -1) {
		blocks = append(blocks, m[1])
	}
	return blocks
}

// copyRepo copies the files git knows (tracked, or new and not ignored) to
// a temporary directory: a fresh clone of the working tree, without data/.
func copyRepo(tb testing.TB, root string) string {
	tb.Helper()
	out, err := exec.Command("git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		tb.Fatalf("git ls-files: %v", err)
	}
	dst := tb.TempDir()
	for _, name := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		raw, err := os.ReadFile(filepath.Join(root, name))
		if os.IsNotExist(err) {
			continue // deleted in the working tree
		}
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, name)), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, name), raw, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return dst
}

func freePort(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

// startShell runs script in the background in its own process group,
// stopped (the whole group) when the test ends.
func startShell(tb testing.TB, dir string, env []string, script string) *syncBuffer {
	tb.Helper()
	cmd := exec.Command("bash", "-c", "set -eu\n"+script)
	cmd.Dir = dir
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	return logs
}

// waitHTTP waits until u answers 200 (go run compiles first: allow minutes).
func waitHTTP(tb testing.TB, u string, logs []*syncBuffer) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		resp, err := http.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	tb.Fatalf("%s did not answer 200 within 5 minutes\n%s", u, joinLogs(logs))
}

func joinLogs(logs []*syncBuffer) string {
	var b strings.Builder
	for _, l := range logs {
		b.WriteString(l.String())
		b.WriteString("\n")
	}
	return b.String()
}

// syncBuffer collects output from concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
