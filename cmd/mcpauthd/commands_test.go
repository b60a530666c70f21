package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/caller"
)

// stamp is the version the test binary is built with.
const stamp = "v9.8.7-stamped"

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// buildBinary builds mcpauthd once per test run into a directory every user
// can read (one test runs it as another user).
func buildBinary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mcpauthd-bin-")
		if err != nil {
			buildErr = err
			return
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "mcpauthd")
		build := exec.Command("go", "build", "-ldflags", "-X github.com/mcpauth/mcpauth/version.stamped="+stamp, "-o", builtBin, ".")
		if out, err := build.CombinedOutput(); err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		tb.Fatalf("build: %v", buildErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

// runBinary runs mcpauthd with args in dir, with env added to a clean
// MCPAUTH_* environment.
func runBinary(t *testing.T, dir string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(buildBinary(t), args...)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MCPAUTH_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// TestEverySubcommandAnswersHelp: -h and --help print the command's help on
// stdout and exit 0 with no other effect: nothing is created in the working
// or data directory, no key is printed, nothing listens.
func TestEverySubcommandAnswersHelp(t *testing.T) {
	t.Parallel()
	var names []string
	for _, c := range commands {
		names = append(names, c.name)
	}
	cases := [][]string{{"-h"}, {"--help"}, {"help"}}
	for _, n := range names {
		cases = append(cases, []string{n, "-h"}, []string{n, "--help"}, []string{"help", n}, []string{n, "-help"})
	}
	cases = append(cases, []string{"new-master-key", "-id", "7", "-h"}, []string{"migrate", "-data-dir", "x", "--help"})
	for _, args := range cases {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			out, errOut, code := runBinary(t, dir, []string{"MCPAUTH_DATA_DIR=" + filepath.Join(dir, "data"),
				"MCPAUTH_GRPC_ADDR=127.0.0.1:1", "MCPAUTH_HTTP_ADDR=127.0.0.1:1"}, args...)
			if code != 0 {
				t.Fatalf("exit %d, stderr %q", code, errOut)
			}
			want := "usage: mcpauthd"
			name := args[0]
			if name == "help" && len(args) > 1 {
				name = args[1]
			}
			if !strings.HasPrefix(name, "-") && name != "help" {
				want += " " + name
			}
			if !strings.Contains(out, want) {
				t.Errorf("stdout lacks %q:\n%s", want, out)
			}
			if strings.Contains(out, "mcpa_") || strings.Contains(out+errOut, "key (give it") {
				t.Errorf("help printed a key:\n%s", out)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("help created %v in the working directory", entries)
			}
		})
	}
	// The list names every command.
	out, _, _ := runBinary(t, t.TempDir(), nil, "help")
	for _, n := range names {
		if !strings.Contains(out, "  "+n+" ") {
			t.Errorf("help lacks %q", n)
		}
	}
}

func TestUnknownCommandAndStrayArguments(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"frobnicate"}, {"new-caller-key", "extra"}, {"new-master-key", "-id", "0"}, {"migrate", "-bogus"}} {
		dir := t.TempDir()
		out, errOut, code := runBinary(t, dir, []string{"MCPAUTH_DATA_DIR=" + filepath.Join(dir, "data")}, args...)
		if code == 0 || errOut == "" || strings.Contains(out, "mcpa_") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q: want a failure without output", args, code, out, errOut)
		}
	}
}

// TestPrintAdminKey prints the generated key without a shell, creates none
// when there is none, and refuses when a callers file is configured.
func TestPrintAdminKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	env := []string{"MCPAUTH_DATA_DIR=" + data}
	if _, errOut, code := runBinary(t, dir, env, "print-admin-key"); code == 0 || !strings.Contains(errOut, "admin.key") {
		t.Fatalf("before any start: exit %d, stderr %q; want a failure naming admin.key", code, errOut)
	}
	if _, err := os.Stat(data); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("print-admin-key created the data directory: %v", err)
	}
	if _, _, err := caller.LoadOrCreateAdmin(filepath.Join(data, "admin.key")); err != nil {
		t.Fatal(err)
	}
	want, err := caller.ReadAdminKey(filepath.Join(data, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runBinary(t, dir, env, "print-admin-key")
	if code != 0 || out != want+"\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if _, errOut, code := runBinary(t, dir, append(env, "MCPAUTH_CALLERS_FILE=/etc/callers.json"), "print-admin-key"); code == 0 ||
		!strings.Contains(errOut, "MCPAUTH_CALLERS_FILE is set") {
		t.Fatalf("with a callers file: exit %d, stderr %q", code, errOut)
	}
}

// TestDataDirOwnedByAnotherUser is the container's first start on a fresh
// named volume: /data exists, owned by root, and the service runs as
// 65532. It must fail at once, naming the directory and the fix. Run as
// root, the test runs the binary as uid 65532; otherwise it makes the
// directory read-only for its owner.
func TestDataDirOwnedByAnotherUser(t *testing.T) {
	t.Parallel()
	base, err := os.MkdirTemp("", "mcpauthd-datadir-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(base, "data"), 0o700); os.RemoveAll(base) })
	data := filepath.Join(base, "data")
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(buildBinary(t), "-grpc-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0")
	cmd.Dir = base
	cmd.Env = []string{"MCPAUTH_DATA_DIR=" + data, "PATH=/usr/bin:/bin"}
	if os.Getuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65532, Gid: 65532}}
	} else if err := os.Chmod(data, 0o555); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var out []byte
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("mcpauthd did not exit on an unwritable data directory")
	}
	if err == nil {
		t.Fatalf("mcpauthd started on an unwritable data directory:\n%s", out)
	}
	for _, want := range []string{`data directory "` + data + `"`, "not writable", "chown -R 65532:65532 " + data, "MCPAUTH_DATA_DIR"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("error lacks %q:\n%s", want, out)
		}
	}
	if entries, _ := os.ReadDir(data); len(entries) != 0 {
		t.Errorf("left %v in the data directory", entries)
	}
}

// TestCallersFileReloadOnSIGHUP changes the callers file of a running
// mcpauthd (periodic checks off) and sends SIGHUP: the new key works at once,
// the removed one is refused; a broken file then keeps the set and the log
// says why without quoting the file.
func TestCallersFileReloadOnSIGHUP(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	oldKey, oldHash, _ := caller.NewKey()
	newKey, newHash, _ := caller.NewKey()
	callers := filepath.Join(dir, "callers.json")
	writeCallers := func(hash string) {
		t.Helper()
		doc := `{"callers": [{"name": "svc", "key_sha256": "` + hash + `", "tenants": ["acme"], "permissions": ["providers.read"]}]}`
		if err := os.WriteFile(callers+".tmp", []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(callers+".tmp", callers); err != nil {
			t.Fatal(err)
		}
	}
	writeCallers(oldHash)
	cmd := exec.Command(buildBinary(t), "-grpc-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MCPAUTH_CALLERS_FILE="+callers, "MCPAUTH_CALLERS_RELOAD_INTERVAL=0", "MCPAUTH_DATA_DIR="+filepath.Join(dir, "data"))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan map[string]any, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines <- m
			}
		}
		close(lines)
	}()
	waitLog := func(msg string) map[string]any {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case m, ok := <-lines:
				if !ok {
					t.Fatalf("mcpauthd exited before logging %q", msg)
				}
				if m["msg"] == msg {
					return m
				}
			case <-deadline:
				t.Fatalf("no %q log line", msg)
			}
		}
	}
	grpcAddr, _ := waitLog("mcpauthd serving")["grpc"].(string)
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	list := func(key string) codes.Code {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
		_, err := mcpauthv1.NewMCPProviderServiceClient(conn).ListProviders(ctx, &mcpauthv1.ListProvidersRequest{Parent: "tenants/acme"})
		return status.Code(err)
	}
	if c := list(oldKey); c != codes.OK {
		t.Fatalf("old key before the change: %v", c)
	}
	writeCallers(newHash)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog("callers file reloaded")
	if c := list(newKey); c != codes.OK {
		t.Errorf("new key after SIGHUP: %v", c)
	}
	if c := list(oldKey); c != codes.Unauthenticated {
		t.Errorf("removed key after SIGHUP: %v, want Unauthenticated", c)
	}
	if err := os.WriteFile(callers, []byte(`{"callers": [{"name": "svc", "key_sha256": "`+oldHash+`", "tenants": []}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	m := waitLog("callers file not reloaded: keeping the previous callers")
	if e, _ := m["err"].(string); !strings.Contains(e, "tenants must list") || strings.Contains(e, oldHash) {
		t.Errorf("refusal reason %q", e)
	}
	if c := list(newKey); c != codes.OK {
		t.Errorf("new key after a broken file: %v, want it kept", c)
	}
	if c := list(oldKey); c != codes.Unauthenticated {
		t.Errorf("key of the broken file: %v, want Unauthenticated", c)
	}
}

// TestHealthcheckProbesReadiness: the container healthcheck exits 0 only
// when /readyz on the configured HTTP port answers 200.
func TestHealthcheckProbesReadiness(t *testing.T) {
	t.Parallel()
	var ready atomic.Bool
	var paths sync.Map
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths.Store(r.URL.Path, true)
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	env := []string{"MCPAUTH_HTTP_ADDR=" + strings.TrimPrefix(srv.URL, "http://")}
	if _, errOut, code := runBinary(t, t.TempDir(), env, "healthcheck"); code == 0 || !strings.Contains(errOut, "readyz answered 503") {
		t.Fatalf("not ready: exit %d, stderr %q", code, errOut)
	}
	ready.Store(true)
	if _, errOut, code := runBinary(t, t.TempDir(), env, "healthcheck"); code != 0 {
		t.Fatalf("ready: exit %d, stderr %q", code, errOut)
	}
	if _, ok := paths.Load("/readyz"); !ok {
		t.Fatal("healthcheck did not ask /readyz")
	}
	srv.Close()
	if _, _, code := runBinary(t, t.TempDir(), env, "healthcheck"); code == 0 {
		t.Fatal("healthcheck passed with nothing listening")
	}
}
