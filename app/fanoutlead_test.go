package app_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/mcpauth/mcpauth/app"
	"github.com/mcpauth/mcpauth/config"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// TestFanOutLeadLogged: a serving app says once, at startup, how its
// webhook fan-out is led: by the lock file beside its SQLite file, or by
// the lease alone, with the reason, as a warning, when the lock file is
// unusable.
func TestFanOutLeadLogged(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		plant     func(t *testing.T, lock string)
		level     string
		wantStart string
	}{
		"lock file": {func(*testing.T, string) {}, "INFO", "webhook fan-out: lead by lock file "},
		"unusable lock file": {func(t *testing.T, lock string) {
			if err := os.Mkdir(lock, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "WARN", "webhook fan-out: lease alone ("},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dataDir, err := filepath.EvalSymlinks(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			lock := filepath.Join(dataDir, "mcpauth.db.fanout-lead")
			c.plant(t, lock)
			logs := serveLog(t, dataDir)
			var lines []string
			for _, l := range strings.Split(logs, "\n") {
				if strings.Contains(l, "webhook fan-out:") {
					lines = append(lines, l)
				}
			}
			if len(lines) != 1 || !strings.Contains(lines[0], `"level":"`+c.level+`"`) || !strings.Contains(lines[0], `"msg":"`+c.wantStart) {
				t.Fatalf("fan-out lines %q, want one at %s starting %q\n%s", lines, c.level, c.wantStart, logs)
			}
			if c.level == "INFO" && !strings.Contains(lines[0], lock) {
				t.Errorf("%s does not name the lock file %s", lines[0], lock)
			}
		})
	}
}

// serveLog serves an app on the SQLite file in dataDir until it has said
// how its fan-out is led, and returns its log.
func serveLog(t *testing.T, dataDir string) string {
	t.Helper()
	env := map[string]string{
		"MCPAUTH_DATA_DIR":                    dataDir,
		"MCPAUTH_GRPC_ADDR":                   "127.0.0.1:0",
		"MCPAUTH_HTTP_ADDR":                   "127.0.0.1:0",
		"MCPAUTH_BACKGROUND_REFRESH_INTERVAL": "0",
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg, err := config.Load(ctx, nil, envconfig.MapLookuper(env))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &testenv.LockedBuffer{}
	a, err := app.New(ctx, cfg, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatalf("app.New: %v", err)
	}
	defer a.Close()
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, gl, hl) }()
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(logs.String(), "mcpauthd serving"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not serving after 20 s:\n%s", logs)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	return logs.String()
}
