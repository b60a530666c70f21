package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestBinaryServesAndDrains builds mcpauthd with a stamped version, runs it
// on its embedded defaults in a fresh directory (SQLite, in-process state,
// generated dev and admin keys), calls it, and stops it with SIGTERM.
func TestBinaryServesAndDrains(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "mcpauthd")
	const stamp = "v9.8.7-stamped"
	build := exec.Command("go", "build", "-ldflags", "-X github.com/mcpauth/mcpauth/version.stamped="+stamp, "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "version").Output(); err != nil || string(out) != stamp+"\n" {
		t.Fatalf("mcpauthd version: %q, %v; want %q", out, err, stamp)
	}
	cmd := exec.Command(bin, "-grpc-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MCPAUTH_LOG_LEVEL=info")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var grpcAddr, httpAddr string
	var logs []string
	deadline := time.After(30 * time.Second)
	for grpcAddr == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("mcpauthd exited early:\n%s", strings.Join(logs, "\n"))
			}
			logs = append(logs, l)
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) != nil {
				t.Fatalf("log line is not JSON: %q", l)
			}
			if m["msg"] == "mcpauthd serving" {
				grpcAddr, _ = m["grpc"].(string)
				httpAddr, _ = m["http"].(string)
				if m["version"] != stamp {
					t.Errorf("serving log names version %v, want %q", m["version"], stamp)
				}
			}
		case <-deadline:
			t.Fatalf("mcpauthd did not start:\n%s", strings.Join(logs, "\n"))
		}
	}
	key, err := os.ReadFile(filepath.Join(dir, "data", "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"admin.key", "master.key", "mcpauth.db"} {
		fi, err := os.Stat(filepath.Join(dir, "data", f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, err %v", f, fi.Mode(), err)
		}
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health: %v", err)
	}
	resp, err := http.Get("http://" + httpAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	var hz struct{ Status, Version string }
	err = json.NewDecoder(resp.Body).Decode(&hz)
	resp.Body.Close()
	if err != nil || hz.Status != "ok" || hz.Version != stamp {
		t.Errorf("/healthz: %+v, %v; want ok and version %q", hz, err, stamp)
	}
	actx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+strings.TrimSpace(string(key)))
	if _, err := mcpauthv1.NewMCPProviderServiceClient(conn).CreateProvider(actx, &mcpauthv1.CreateProviderRequest{
		Parent: "tenants/acme", Provider: &mcpauthv1.Provider{DisplayName: "n", ServerIdentifier: "n",
			ServerUrl: "https://mcp.example/path-secret-42", Headers: map[string]string{"X-Key": "hdr-secret-42"}}}); err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for l := range lines {
		logs = append(logs, l)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	all := strings.Join(logs, "\n")
	for _, secret := range []string{strings.TrimSpace(string(key)), "path-secret-42", "hdr-secret-42"} {
		if strings.Contains(all, secret) {
			t.Errorf("logs contain a secret")
		}
	}
	for _, want := range []string{"USING A DEVELOPMENT MASTER KEY", "admin.key", "shutting down"} {
		if !strings.Contains(all, want) {
			t.Errorf("logs lack %q:\n%s", want, all)
		}
	}
}
