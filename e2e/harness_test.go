package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/app"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/config"
	"github.com/mcpauth/mcpauth/internal/testenv"
	"github.com/mcpauth/mcpauth/repository"
)

// syncBuffer collects log output from concurrent writers.
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

// Options select the backends and settings of a test service.
type Options struct {
	// Postgres selects a fresh PostgreSQL schema instead of SQLite.
	Postgres bool
	// DSN reuses a database (several replicas sharing one).
	DSN string
	// Redis selects the real Redis instead of the in-process store.
	Redis bool
	// RedisURL reuses a Redis (replicas).
	RedisURL string
	// Env adds MCPAUTH_* settings.
	Env map[string]string
	// Callers, when set, is written as the callers file.
	Callers *caller.File
	// DataDir reuses a data directory (restart tests).
	DataDir string
	// AppOptions are passed to app.New (a test tracer provider).
	AppOptions []app.Option
}

// Service is a running mcpauth.
type Service struct {
	App      *app.App
	Conn     *grpc.ClientConn
	GRPCAddr string
	HTTPURL  string
	AdminKey string
	DataDir  string
	DSN      string
	RedisURL string
	Logs     *syncBuffer
	stop     func()
}

// Start runs the service until the test ends.
func Start(tb testing.TB, o Options) *Service {
	tb.Helper()
	ctx := context.Background()
	dataDir := o.DataDir
	if dataDir == "" {
		dataDir = tb.TempDir()
	}
	env := map[string]string{
		"MCPAUTH_DATA_DIR":                    dataDir,
		"MCPAUTH_GRPC_ADDR":                   "127.0.0.1:0",
		"MCPAUTH_HTTP_ADDR":                   "127.0.0.1:0",
		"MCPAUTH_LOG_LEVEL":                   "debug",
		"MCPAUTH_BACKGROUND_REFRESH_INTERVAL": "0",
		"MCPAUTH_BROWSER_RATE_PER_MINUTE":     "10000",
	}
	if _, bench := tb.(*testing.B); !bench {
		// Many test services run in parallel against one PostgreSQL
		// (max_connections 100); benchmarks keep the production pool.
		env["MCPAUTH_DATABASE_MAX_CONNS"] = "6"
	}
	dsn := o.DSN
	if dsn == "" && o.Postgres {
		dsn = testenv.PostgresDSN(tb)
	}
	if dsn != "" {
		env["MCPAUTH_DATABASE_URL"] = dsn
	}
	if o.RedisURL != "" {
		env["MCPAUTH_REDIS_URL"] = o.RedisURL
	} else if o.Redis {
		env["MCPAUTH_REDIS_URL"] = testenv.RedisURL(tb)
	}
	if o.Callers != nil {
		raw, err := json.Marshal(o.Callers)
		if err != nil {
			tb.Fatal(err)
		}
		path := filepath.Join(dataDir, "callers.json")
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			tb.Fatal(err)
		}
		env["MCPAUTH_CALLERS_FILE"] = path
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	httpURL := "http://" + hl.Addr().String()
	env["MCPAUTH_PUBLIC_URL"] = httpURL
	for k, v := range o.Env {
		env[k] = v
	}
	if repository.IsPostgres(dsn) && env["MCPAUTH_MASTER_KEYS"] == "" && env["MCPAUTH_MASTER_KEY_FILE"] == "" {
		// The service refuses a generated development key on PostgreSQL.
		env["MCPAUTH_MASTER_KEYS"] = databaseMasterKeys(dsn)
	}
	cfg, err := config.Load(ctx, nil, envconfig.MapLookuper(env))
	if err != nil {
		tb.Fatalf("config: %v", err)
	}
	logs := &syncBuffer{}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: level}))
	a, err := app.New(ctx, cfg, log, o.AppOptions...)
	if err != nil {
		tb.Fatalf("app.New: %v", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Serve(sctx, gl, hl) }()
	conn, err := grpc.NewClient(gl.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	s := &Service{App: a, Conn: conn, GRPCAddr: gl.Addr().String(), HTTPURL: httpURL, DataDir: dataDir, DSN: dsn,
		RedisURL: env["MCPAUTH_REDIS_URL"], Logs: logs}
	if o.Callers == nil {
		raw, err := os.ReadFile(filepath.Join(dataDir, "admin.key"))
		if err != nil {
			tb.Fatal(err)
		}
		s.AdminKey = strings.TrimSpace(string(raw))
	}
	var once sync.Once
	s.stop = func() {
		once.Do(func() {
			conn.Close()
			cancel()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				tb.Error("service did not stop within 20s")
			}
			a.Close()
		})
	}
	tb.Cleanup(s.stop)
	waitReady(tb, httpURL)
	return s
}

// databaseMasterKeys is the key spec of the replicas and restarts of a test
// on one PostgreSQL database that configure none: derived from the DSN
// (which names a fresh schema per test), so they all share it.
func databaseMasterKeys(dsn string) string {
	sum := sha256.Sum256([]byte("mcpauth e2e master key\x00" + dsn))
	return "1:" + base64.StdEncoding.EncodeToString(sum[:])
}

// Stop stops the service now (restart tests).
func (s *Service) Stop() { s.stop() }

func waitReady(tb testing.TB, base string) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	tb.Fatalf("service at %s not ready", base)
}

// Ctx returns a context carrying key as the caller's API key.
func Ctx(tb testing.TB, key string) context.Context {
	tb.Helper()
	// A safety net against hangs, not a timing assertion: parallel subtests
	// may start long after their parent created this context on a loaded
	// machine, so the bound is generous. Tests that need a short deadline
	// set their own.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	tb.Cleanup(cancel)
	if key == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

// Providers returns a provider service client.
func (s *Service) Providers() mcpauthv1.MCPProviderServiceClient {
	return mcpauthv1.NewMCPProviderServiceClient(s.Conn)
}

// OAuth returns an OAuth service client.
func (s *Service) OAuth() mcpauthv1.OAuthServiceClient {
	return mcpauthv1.NewOAuthServiceClient(s.Conn)
}

// Audit returns an audit service client.
func (s *Service) Audit() mcpauthv1.AuditServiceClient {
	return mcpauthv1.NewAuditServiceClient(s.Conn)
}

// Tools returns a tool service client.
func (s *Service) Tools() mcpauthv1.MCPToolServiceClient {
	return mcpauthv1.NewMCPToolServiceClient(s.Conn)
}

// Store opens the service's database directly (for row dumps).
func (s *Service) Store() *repository.Store { return s.App.Store() }

// NewCaller returns a callers-file entry and its key.
func NewCaller(tb testing.TB, name string, tenants []string, perms ...caller.Permission) (caller.FileCaller, string) {
	tb.Helper()
	key, hash, err := caller.NewKey()
	if err != nil {
		tb.Fatal(err)
	}
	ps := make([]string, len(perms))
	for i, p := range perms {
		ps[i] = string(p)
	}
	return caller.FileCaller{Name: name, KeySHA256: hash, Tenants: tenants, Permissions: ps}, key
}

func getenv(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
