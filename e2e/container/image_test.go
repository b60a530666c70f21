// Package container checks the container image (Dockerfile, .dockerignore) without a Docker engine.
// It is a package of its own so that its builds get their own test timeout.
package container

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// No Docker engine runs here, so the image is checked in parts: the
// Dockerfile's instructions are read, the build context is cut with
// .dockerignore by the library Docker itself uses (moby/patternmatcher), the
// build stage's RUN commands run on that context, and the binary they make
// runs as the image's user on the data directory they make.

// dockerInstruction is one Dockerfile instruction with continuations joined.
type dockerInstruction struct {
	cmd  string // upper case: FROM, RUN, COPY, ...
	args string
}

// dockerfileStages parses the Dockerfile into stages of instructions.
func dockerfileStages(tb testing.TB, path string) [][]dockerInstruction {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var stages [][]dockerInstruction
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	flush := func() {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line == "" {
			return
		}
		cmd, args, _ := strings.Cut(line, " ")
		in := dockerInstruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			tb.Fatalf("Dockerfile: %s before FROM", in.cmd)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	for sc.Scan() {
		line := sc.Text()
		if t := strings.TrimSpace(line); strings.HasPrefix(t, "#") || t == "" {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		flush()
	}
	flush()
	return stages
}

func instructions(stage []dockerInstruction, cmd string) []string {
	var out []string
	for _, in := range stage {
		if in.cmd == cmd {
			out = append(out, in.args)
		}
	}
	return out
}

// TestContainerImage checks the image's layout and user and the build
// context, and runs the build stage.
func TestContainerImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds mcpauthd from the Docker build context")
	}
	t.Parallel()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	stages := dockerfileStages(t, filepath.Join(root, "Dockerfile"))
	if len(stages) != 2 {
		t.Fatalf("Dockerfile has %d stages, want build + runtime", len(stages))
	}
	build, final := stages[0], stages[1]

	// The runtime stage: distroless, the numeric nonroot user (Kubernetes'
	// runAsNonRoot can only check a numeric user), /data owned by it.
	if from := instructions(final, "FROM")[0]; !strings.HasPrefix(from, "gcr.io/distroless/static") {
		t.Errorf("runtime image %q is not distroless static", from)
	}
	if users := instructions(final, "USER"); len(users) != 1 || users[0] != "65532:65532" {
		t.Errorf("USER %v, want 65532:65532", users)
	}
	if envs := instructions(final, "ENV"); !slices.Contains(envs, "MCPAUTH_DATA_DIR=/data") {
		t.Errorf("ENV %v lacks MCPAUTH_DATA_DIR=/data", envs)
	}
	if e := instructions(final, "ENTRYPOINT"); len(e) != 1 || e[0] != `["/mcpauthd"]` {
		t.Errorf("ENTRYPOINT %v", e)
	}
	if h := instructions(final, "HEALTHCHECK"); len(h) != 1 || !strings.Contains(h[0], `CMD ["/mcpauthd", "healthcheck"]`) {
		t.Errorf("HEALTHCHECK %v does not run mcpauthd healthcheck", h)
	}
	copyRe := regexp.MustCompile(`^--from=build (?:--chown=(\S+) )?(\S+) (\S+)$`)
	var rootfsSrc string
	for _, c := range instructions(final, "COPY") {
		m := copyRe.FindStringSubmatch(c)
		if m == nil {
			t.Fatalf("unexpected COPY %q", c)
		}
		if m[3] == "/" {
			if m[1] != "65532:65532" {
				t.Errorf("COPY %q into / must --chown=65532:65532", c)
			}
			rootfsSrc = m[2]
		}
	}
	if rootfsSrc == "" {
		t.Fatal("no COPY --from=build --chown=65532:65532 <rootfs>/ / makes /data")
	}

	// The build context, cut by .dockerignore with Docker's own matcher.
	ignore, err := os.Open(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	patterns, err := ignorefile.ReadAll(ignore)
	ignore.Close()
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{".git/config", "data/admin.key", "data/master.key", "data/mcpauth.db", "e2e/go.mod",
		"service/x/data/mcpauth.db", "keys/tls.key", "certs/client.pem", ".env", "deploy/helm/mcpauth/values.yaml",
		"callers.json", "config/callers.prod.json", "node_modules/a/index.js", "tools/buf/go.mod", "go.work", "mcpauth.db-wal"} {
		if ok, _ := pm.MatchesOrParentMatches(p); !ok {
			t.Errorf(".dockerignore lets %q into the build context", p)
		}
	}
	context := t.TempDir()
	files, err := exec.Command("git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	// Decoys a developer's checkout has: they must stay out.
	names := append(strings.Split(strings.TrimRight(string(files), "\x00"), "\x00"), "data/admin.key", ".git/HEAD")
	for _, name := range names {
		if ok, _ := pm.MatchesOrParentMatches(name); ok {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(root, name))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(context, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, leaked := range []string{"data", ".git", "e2e", "go.work"} {
		if _, err := os.Stat(filepath.Join(context, leaked)); err == nil {
			t.Errorf("%s is in the build context", leaked)
		}
	}

	// The build stage's RUN lines, in the cut context, with the stage's ENV
	// (GOWORK=off: the root go.mod alone) and its output paths moved under
	// a temporary directory.
	out := t.TempDir()
	if err := os.Chmod(out, 0o755); err != nil {
		t.Fatal(err)
	}
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOWORK=") && !strings.HasPrefix(kv, "MCPAUTH_") {
			env = append(env, kv)
		}
	}
	env = append(env, instructions(build, "ENV")...)
	for _, arg := range instructions(build, "ARG") {
		if strings.Contains(arg, "=") {
			env = append(env, arg) // the build argument's default
		}
	}
	if !slices.Contains(env, "GOWORK=off") {
		t.Error("the build stage does not set GOWORK=off")
	}
	for _, run := range instructions(build, "RUN") {
		script := strings.ReplaceAll(run, "/out/", out+"/")
		cmd := exec.Command("bash", "-euc", script)
		cmd.Dir = context
		cmd.Env = env
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("RUN %s: %v\n%s", run, err, b)
		}
	}
	bin := filepath.Join(out, "mcpauthd")
	dataDir := filepath.Join(strings.ReplaceAll(rootfsSrc, "/out/", out+"/"), "data")
	fi, err := os.Stat(dataDir)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("the build stage made no private data directory at %s: %v %v", dataDir, fi, err)
	}
	if os.Getuid() != 0 {
		t.Log("not root: the run as uid 65532 is left out")
		return
	}
	// COPY --chown gives the copied tree to 65532; do the same, then run the
	// binary as 65532 with the image's environment on its empty data dir.
	if err := os.Chown(dataDir, 65532, 65532); err != nil {
		t.Fatal(err)
	}
	for d := dataDir; d != filepath.Dir(out); d = filepath.Dir(d) {
		_ = os.Chmod(filepath.Dir(d), 0o755)
	}
	cmd := exec.Command(bin, "-grpc-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0")
	cmd.Env = []string{"MCPAUTH_DATA_DIR=" + dataDir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65532, Gid: 65532}}
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(logs.String(), "mcpauthd serving") {
		if time.Now().After(deadline) {
			t.Fatalf("the image's binary did not start as 65532 on the image's /data:\n%s", logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, f := range []string{"admin.key", "master.key", "mcpauth.db"} {
		fi, err := os.Stat(filepath.Join(dataDir, f))
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65532 || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: owner %d mode %v, want 65532 and 0600", f, st.Uid, fi.Mode().Perm())
		}
	}
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
