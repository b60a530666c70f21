package statestore_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mcpauth/mcpauth/internal/testenv"
	"github.com/mcpauth/mcpauth/statestore"
)

// redisClient returns a client on the test Redis (testenv: skipped loudly
// when unreachable, failed under CI=true), closed when tb ends.
func redisClient(tb testing.TB) redis.UniversalClient {
	tb.Helper()
	c, _ := testenv.Redis(tb)
	return c
}

// redisPrefix returns a key prefix unique to tb whose keys are deleted when tb ends.
func redisPrefix(tb testing.TB) string {
	tb.Helper()
	_, prefix := testenv.Redis(tb)
	return prefix
}

func TestRedisKeysArePrefixed(t *testing.T) {
	t.Parallel()
	c := redisClient(t)
	prefix := redisPrefix(t)
	s := statestore.NewRedis(c, prefix)
	ctx := t.Context()
	if err := s.Put(ctx, "state-hash", []byte("v"), time.Minute); err != nil {
		t.Fatalf("Put: %v", err)
	}
	l, err := s.Lock(ctx, "provider-1", time.Minute)
	if err != nil {
		t.Fatalf("Lock: %v", err)
	}
	wantKeys(t, c, prefix, "kv:state-hash", "lock:{provider-1}")
	ttl, err := c.PTTL(ctx, prefix+"kv:state-hash").Result()
	if err != nil || ttl <= 0 || ttl > time.Minute {
		t.Errorf("value PTTL = %v, %v; want within (0, 1m]", ttl, err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

// TestRedisLeavesNoKeyWithoutTTL takes, extends, releases and abandons locks
// and stores and takes values, then checks that every key left under the
// prefix expires by itself: nothing outlives the provider or flow it was
// written for (a fencing counter kept without TTL once did).
func TestRedisLeavesNoKeyWithoutTTL(t *testing.T) {
	t.Parallel()
	c := redisClient(t)
	prefix := redisPrefix(t)
	s := statestore.NewRedis(c, prefix)
	ctx := t.Context()
	for i := range 3 {
		l, err := s.Lock(ctx, "released", time.Minute)
		if err != nil {
			t.Fatalf("Lock #%d: %v", i, err)
		}
		if err := l.Extend(ctx, 2*time.Minute); err != nil {
			t.Fatalf("Extend #%d: %v", i, err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatalf("Release #%d: %v", i, err)
		}
	}
	if _, err := s.Lock(ctx, "abandoned", time.Minute); err != nil {
		t.Fatalf("Lock: %v", err)
	}
	if _, err := s.Lock(ctx, "expired", 50*time.Millisecond); err != nil {
		t.Fatalf("Lock: %v", err)
	}
	if err := s.Put(ctx, "kept", []byte("v"), time.Minute); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if err := s.Put(ctx, "taken", []byte("v"), time.Minute); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if _, err := s.Take(ctx, "taken"); err != nil {
		t.Fatalf("Take: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	// A take leaves a receipt for its own retries, which expires too.
	for _, k := range wantKeys(t, c, prefix, "lock:{abandoned}", "kv:kept", "taken:{"+prefix+"kv:taken}") {
		ttl, err := c.PTTL(ctx, k).Result()
		if err != nil || ttl <= 0 {
			t.Errorf("key %q: PTTL %v, %v; every key must expire", k, ttl, err)
		}
	}
}

// wantKeys fails tb unless the keys under prefix are exactly prefix+want,
// and returns them.
func wantKeys(tb testing.TB, c redis.UniversalClient, prefix string, want ...string) []string {
	tb.Helper()
	keys, err := c.Keys(context.Background(), prefix+"*").Result()
	if err != nil {
		tb.Fatalf("KEYS: %v", err)
	}
	for i, k := range want {
		want[i] = prefix + k
	}
	slices.Sort(keys)
	slices.Sort(want)
	if !slices.Equal(keys, want) {
		tb.Fatalf("keys = %q, want %q", keys, want)
	}
	return keys
}

func TestRedisUnavailable(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1: every call must fail fast and be
	// recognisable as unavailability (mapped to UNAVAILABLE by callers).
	c := redis.NewClient(&redis.Options{
		Addr:          "127.0.0.1:1",
		DialTimeout:   200 * time.Millisecond,
		MaxRetries:    -1,
		DialerRetries: 1,
	})
	t.Cleanup(func() { _ = c.Close() })
	s := statestore.NewRedis(c, "down:")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()

	start := time.Now()
	checks := map[string]error{
		"Put": s.Put(ctx, "k", []byte("v"), time.Minute),
		"Take": func() error {
			_, err := s.Take(ctx, "k")
			return err
		}(),
		"Get": func() error {
			_, err := s.Get(ctx, "k")
			return err
		}(),
		"Lock": func() error {
			_, err := s.Lock(ctx, "k", time.Minute)
			return err
		}(),
		"WaitUnlocked": s.WaitUnlocked(ctx, "k"),
		"Ping":         s.Ping(ctx),
	}
	for name, err := range checks {
		if err == nil {
			t.Errorf("%s against a dead Redis: no error", name)
			continue
		}
		if !statestore.IsUnavailable(err) || !errors.Is(err, statestore.ErrUnavailable) {
			t.Errorf("%s error %v: IsUnavailable = false", name, err)
		}
		if errors.Is(err, statestore.ErrNotFound) || errors.Is(err, statestore.ErrLocked) {
			t.Errorf("%s error %v looks like a normal outcome", name, err)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("failing against a dead Redis took %v", d)
	}
}

func TestRedisClosedClientIsUnavailable(t *testing.T) {
	t.Parallel()
	redisClient(t) // skip or fail when Redis is down
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	s := statestore.NewRedis(c, redisPrefix(t))
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	_ = c.Close()
	_, err = s.Take(t.Context(), "k")
	if !statestore.IsUnavailable(err) {
		t.Fatalf("Take on a closed client: %v, IsUnavailable = false", err)
	}
	// NewRedis does not own the client, so Close must not fail on it.
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestRedisLoadingIsUnavailable(t *testing.T) {
	t.Parallel()
	for _, msg := range []string{
		"LOADING Redis is loading the dataset in memory",
		"READONLY You can't write against a read only replica.",
		"MASTERDOWN Link with MASTER is down",
		"CLUSTERDOWN The cluster is down",
		"TRYAGAIN Multiple keys request during rehashing of slot",
		"BUSY Redis is busy running a script.",
	} {
		if !statestore.IsUnavailable(redisError(msg)) {
			t.Errorf("IsUnavailable(%q) = false", msg)
		}
	}
	if statestore.IsUnavailable(redisError("WRONGTYPE Operation against a key holding the wrong kind of value")) {
		t.Error("WRONGTYPE classified as unavailable")
	}
}

// redisError is a reply error as go-redis reports it.
type redisError string

func (e redisError) Error() string { return string(e) }
func (redisError) RedisError()     {}

func TestNewRedisFromURL(t *testing.T) {
	t.Parallel()
	redisClient(t) // skip or fail when Redis is down
	prefix := redisPrefix(t)
	u, err := url.Parse(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("dial_timeout", "1s")
	q.Set("prefix", prefix)
	u.RawQuery = q.Encode()
	s, err := statestore.NewRedisFromURL(u.String())
	if err != nil {
		t.Fatalf("NewRedisFromURL: %v", err)
	}
	if err := s.Put(t.Context(), "k", []byte("v"), time.Minute); err != nil {
		t.Fatalf("Put: %v", err)
	}
	other := statestore.NewRedis(redisClient(t), prefix)
	if v, err := other.Take(t.Context(), "k"); err != nil || string(v) != "v" {
		t.Fatalf("Take through a client with the same prefix = %q, %v", v, err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Ping(t.Context()); !statestore.IsUnavailable(err) {
		t.Fatalf("Ping after Close: %v, want unavailable", err)
	}
}

func TestNewRedisFromURLForms(t *testing.T) {
	t.Parallel()
	tests := []struct {
		url     string
		wantErr string
	}{
		{url: "redis://127.0.0.1:6379/2"},
		{url: "rediss://user:pw@example.com:6380"},
		{url: "unix:///run/redis.sock?db=1"},
		{url: "redis+cluster://127.0.0.1:7000?addr=127.0.0.1:7001&addr=127.0.0.1:7002"},
		{url: "redis+cluster://127.0.0.1:7000?read_only=true", wantErr: "read_only"},
		{url: "redis+cluster://127.0.0.1:7000?route_by_latency=true", wantErr: "not supported"},
		{url: "redis+cluster://127.0.0.1:7000?route_randomly=true", wantErr: "not supported"},
		{url: "redis+sentinel://:pw@127.0.0.1:26379/1?master_name=mymaster&addr=127.0.0.1:26380&sentinel_password=s&dial_timeout=2s"},
		{url: "redis+sentinel://127.0.0.1:26379", wantErr: "master_name"},
		{url: "redis+sentinel://127.0.0.1:26379?master_name=m&bogus=1", wantErr: "unknown parameter"},
		{url: "redis+sentinel://127.0.0.1:26379?master_name=m&addr=nohostport", wantErr: "host:port"},
		{url: "redis://127.0.0.1:6379?bogus=1", wantErr: "bogus"},
		{url: "http://127.0.0.1:6379", wantErr: "unsupported"},
		{url: "redis://user:s3cret@[::1", wantErr: "does not parse"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			t.Parallel()
			s, err := statestore.NewRedisFromURL(tt.url)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("NewRedisFromURL: %v", err)
				}
				_ = s.Close()
				return
			}
			if err == nil {
				_ = s.Close()
				t.Fatalf("NewRedisFromURL: no error, want one containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), ":pw@") {
				t.Fatalf("error %q leaks the password", err)
			}
		})
	}
}

// TestRedisConcurrentPutsPipelined: many concurrent Puts (most of them
// sharing pipelines) each store their own value or get ErrExists for a key
// already taken, also right after the server forgot its scripts (SCRIPT
// FLUSH, as after a restart: Puts use none).
func TestRedisConcurrentPutsPipelined(t *testing.T) {
	c := redisClient(t)
	s := statestore.NewRedis(c, redisPrefix(t))
	ctx := context.Background()
	for round, flush := range []bool{false, true} {
		if flush {
			if err := c.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		const n = 300
		errs := make(chan error, 2*n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(2)
			key := fmt.Sprintf("flow:r%d-%d", round, i)
			for j := range 2 {
				go func() {
					defer wg.Done()
					errs <- s.Put(ctx, key, []byte(fmt.Sprintf("value-%d-%d", i, j)), time.Minute)
				}()
			}
		}
		wg.Wait()
		close(errs)
		stored, exists := 0, 0
		for err := range errs {
			switch {
			case err == nil:
				stored++
			case errors.Is(err, statestore.ErrExists):
				exists++
			default:
				t.Errorf("round %d: Put: %v", round, err)
			}
		}
		if stored != n || exists != n {
			t.Errorf("round %d: %d stored and %d ErrExists, want %d each (one winner per key)", round, stored, exists, n)
		}
		for i := range n {
			v, err := s.Take(ctx, fmt.Sprintf("flow:r%d-%d", round, i))
			if err != nil || !strings.HasPrefix(string(v), fmt.Sprintf("value-%d-", i)) {
				t.Errorf("round %d: key %d holds %q, %v", round, i, v, err)
			}
		}
	}
}
