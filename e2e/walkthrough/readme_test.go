// Package walkthrough runs the README's walk-through as a test.
// It is a package of its own so that its builds get their own test timeout.
package walkthrough

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
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
// changes to the text are the five port numbers (9090, 8080, 9400, 9401,
// 9402), replaced by free ports so that the test runs beside other
// services, with the matching MCPAUTH_GRPC_ADDR, MCPAUTH_HTTP_ADDR and demo
// addresses in the environment; MCPAUTH_PUBLIC_URL stays unset, so the flow also proves
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
	for _, p := range []string{"9090", "8080", "9400", "9401", "9402"} {
		ports[p] = freePort(t)
	}
	subst := strings.NewReplacer(
		"localhost:9090", "localhost:"+ports["9090"], "localhost:8080", "localhost:"+ports["8080"],
		"127.0.0.1:9400", "127.0.0.1:"+ports["9400"], "127.0.0.1:9401", "127.0.0.1:"+ports["9401"],
		"127.0.0.1:9402", "127.0.0.1:"+ports["9402"])
	env := []string{
		"MCPAUTH_GRPC_ADDR=:" + ports["9090"], "MCPAUTH_HTTP_ADDR=:" + ports["8080"],
		"MCPAUTH_DEMO_AS_ADDR=127.0.0.1:" + ports["9400"], "MCPAUTH_DEMO_MCP_ADDR=127.0.0.1:" + ports["9401"],
		"MCPAUTH_DEMO_WEBHOOK_ADDR=127.0.0.1:" + ports["9402"],
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
	waitHTTP(t, "http://127.0.0.1:"+ports["9402"]+"/received", serverLogs)

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
	checkEvents(t, text, serverLogs[0].String())
	// No webhook secret and no token (fosite's: ory_at_, ory_rt_ or ory_ac_
	// and base64) in the output or the servers' logs.
	if m := regexp.MustCompile(`whsec_[A-Za-z0-9+/]{8}|ory_(at|rt|ac)_[A-Za-z0-9_-]{8}`).FindString(text + joinLogs(serverLogs)); m != "" {
		t.Errorf("a secret or a token was printed: %s...", m)
	}
	if t.Failed() {
		t.Logf("output:\n%s", text)
	}
}

// checkEvents checks the walk-through's events part: one
// oauth.reauth_required event (reason INVALID_GRANT) on the audit log,
// which the demo's receiver accepted, signed, with the same body, and the
// WatchEvents subscriber received exactly as ListAuditEvents lists it,
// together with the failed call's mcp.tool.called event (the same
// requestId, as the README says), and the demo's log line saying it
// verified (the receiver quotes the id and the type).
func checkEvents(tb testing.TB, out, demoLog string) {
	tb.Helper()
	var listed, watched []map[string]any
	var received []struct {
		ID       string `json:"id"`
		Verified bool   `json:"verified"`
		Error    string `json:"error"`
		Body     struct {
			Type string         `json:"type"`
			Data map[string]any `json:"data"`
		} `json:"body"`
		ReceivedAt time.Time `json:"received_at"`
	}
	for _, doc := range jsonDocs(out) {
		switch {
		case bytes.HasPrefix(doc, []byte("[")) && bytes.Contains(doc, []byte(`"verified"`)):
			if err := json.Unmarshal(doc, &received); err != nil {
				tb.Fatalf("the receiver's list %s: %v", doc, err)
			}
		case bytes.HasPrefix(doc, []byte("{")):
			var m struct {
				AuditEvent  map[string]any   `json:"auditEvent"`
				AuditEvents []map[string]any `json:"auditEvents"`
			}
			if err := json.Unmarshal(doc, &m); err != nil {
				tb.Fatalf("%s: %v", doc, err)
			}
			if m.AuditEvent != nil {
				watched = append(watched, m.AuditEvent)
			}
			if m.AuditEvents != nil {
				listed = m.AuditEvents // the last list is the filtered one
			}
		}
	}
	if len(listed) != 1 || listed[0]["eventType"] != "oauth.reauth_required" || listed[0]["reason"] != "INVALID_GRANT" {
		tb.Fatalf("ListAuditEvents filtered on oauth.reauth_required lists %d events, want one with reason INVALID_GRANT: %v", len(listed), listed)
	}
	ev := listed[0]
	name, _ := ev["name"].(string)
	id := regexp.MustCompile(`^tenants/acme/auditEvents/([0-9a-f]{32})$`).FindStringSubmatch(name)
	if id == nil {
		tb.Fatalf("the event's name %q is not tenants/acme/auditEvents/{32 hex digits}", name)
	}
	created, err := time.Parse(time.RFC3339Nano, fmt.Sprint(ev["createTime"]))
	if err != nil {
		tb.Fatalf("the event's createTime: %v", err)
	}

	n := 0
	for _, m := range received {
		if !m.Verified {
			tb.Errorf("the receiver did not verify message %s (%s): %s", m.ID, m.Body.Type, m.Error)
		}
		if m.ID != id[1] {
			continue
		}
		n++
		d := m.Body.Data
		if m.Body.Type != "oauth.reauth_required" || d["name"] != name || d["event_type"] != ev["eventType"] ||
			d["provider"] != ev["provider"] || d["reason"] != ev["reason"] || d["request_id"] != ev["requestId"] {
			tb.Errorf("webhook %s: body %v does not match the audited event %v", m.ID, m.Body, ev)
		}
		tb.Logf("the receiver got %s %s after the event's time", name, m.ReceivedAt.Sub(created).Round(time.Millisecond))
	}
	if n == 0 {
		tb.Errorf("the receiver lists no message with webhook-id %s: %+v", id[1], received)
	}
	if !strings.Contains(demoLog, `webhook "`+id[1]+`" "oauth.reauth_required": signature verified`) {
		tb.Errorf("the demo's log does not say it verified webhook %s:\n%s", id[1], demoLog)
	}

	n = 0
	for _, w := range watched {
		if w["name"] == name {
			n++
			if !reflect.DeepEqual(w, ev) {
				tb.Errorf("watched %v\nlisted  %v", w, ev)
			}
		}
	}
	if n != 1 {
		tb.Errorf("the watch received %s %d times, want once (watched: %v)", name, n, watched)
	}
	rid, _ := ev["requestId"].(string)
	if rid == "" {
		tb.Fatalf("the event %s has no requestId: %v", name, ev)
	}
	n = 0
	for _, w := range watched {
		if w["eventType"] == "mcp.tool.called" && w["requestId"] == rid {
			n++
		}
	}
	if n == 0 {
		tb.Errorf("the watch has no mcp.tool.called event with the reauth event's requestId %s (watched: %v)", rid, watched)
	}
}

// jsonDocs returns the JSON documents of out that start a line with { or
// [ (grpcurl's answers, curl's bodies), in order.
func jsonDocs(out string) [][]byte {
	var docs [][]byte
	for i := 0; i < len(out); {
		if (out[i] == '{' || out[i] == '[') && (i == 0 || out[i-1] == '\n') {
			dec := json.NewDecoder(strings.NewReader(out[i:]))
			var raw json.RawMessage
			if dec.Decode(&raw) == nil {
				docs = append(docs, raw)
				i += int(dec.InputOffset())
				continue
			}
		}
		i++
	}
	return docs
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
