package statestore_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mcpauth/mcpauth/internal/testenv"
	"github.com/mcpauth/mcpauth/statestore"
)

// routeRedisLogs sends go-redis's log lines to a buffer until t ends. The
// logger is one per process: tests calling it must not be parallel.
func routeRedisLogs(t *testing.T) *testenv.LockedBuffer {
	t.Helper()
	buf := &testenv.LockedBuffer{}
	statestore.RouteRedisLogs(slog.New(slog.NewJSONHandler(buf, nil)))
	t.Cleanup(func() { statestore.RouteRedisLogs(slog.Default()) })
	return buf
}

// TestRedisStoreLogsNothingAtStart: a store made from a URL, its broadcast
// and their first calls make go-redis log nothing. The health probe's and
// the broadcast's clients used to be built from a copy of the first
// client's options, its push notification processor included, and their
// maintenance notifications failed to register their handlers on it
// ("failed to initialize maintnotifications: ... cannot overwrite existing
// handler", a plain-text line on stderr, twice at every start).
func TestRedisStoreLogsNothingAtStart(t *testing.T) { // not parallel: see routeRedisLogs
	redisClient(t) // skip or fail when Redis is down
	prefix := redisPrefix(t)
	logs := routeRedisLogs(t)
	s, err := statestore.NewRedisFromURL(testenv.RedisURLWithPrefix(t, prefix))
	if err != nil {
		t.Fatalf("NewRedisFromURL: %v", err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	b := s.NewBroadcast(slog.New(slog.DiscardHandler))
	defer b.Close()
	heard := make(chan struct{}, 1)
	if err := b.Listen(ctx, map[string]func(){"t": func() {
		select {
		case heard <- struct{}{}:
		default:
		}
	}}); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	b.Notify("t")
	select {
	case <-heard:
	case <-ctx.Done():
		t.Fatal("the broadcast did not reach its own listener")
	}
	if err := s.Put(ctx, "k", []byte("v"), time.Minute); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if got := logs.String(); got != "" {
		t.Errorf("go-redis logged:\n%s", got)
	}
}

// TestRouteRedisLogs: what go-redis logs reaches the slog logger as one
// JSON warning per line, its text in "detail".
func TestRouteRedisLogs(t *testing.T) { // not parallel: see routeRedisLogs
	logs := routeRedisLogs(t)
	// go-redis corrects a read buffer below RESP3's minimum, and says so.
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ReadBufferSize: 1})
	_ = c.Close()
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("logged %d lines, want 1:\n%s", len(lines), logs)
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatalf("line %q is not JSON: %v", lines[0], err)
	}
	if rec["level"] != "WARN" || rec["msg"] != "redis client" || !strings.Contains(rec["detail"].(string), "ReadBufferSize=1") {
		t.Errorf("logged %v, want a warning \"redis client\" whose detail names ReadBufferSize=1", rec)
	}
}
