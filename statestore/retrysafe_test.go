package statestore_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mcpauth/mcpauth/internal/testenv"
	"github.com/mcpauth/mcpauth/statestore"
)

// lostAnswer is a go-redis hook that, while armed, runs a script command
// (or, with set, a SET) on Redis and then reports a network timeout
// instead of its answer: what a client sees when Redis paused past the
// read timeout after executing the command. With twice set, it runs the
// command a second time first, as go-redis's own retry of a timed-out
// command does.
type lostAnswer struct {
	armed atomic.Int32 // how many such commands lose their answer
	twice bool
	set   bool
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

var _ net.Error = timeoutErr{}

func (h *lostAnswer) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *lostAnswer) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *lostAnswer) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		name := cmd.Name()
		hooked := name == "evalsha" || name == "eval" || (h.set && name == "set")
		if !hooked || h.armed.Add(-1) < 0 {
			return next(ctx, cmd)
		}
		if err := next(ctx, cmd); err != nil {
			return err
		}
		if h.twice {
			return next(ctx, cmd)
		}
		cmd.SetErr(timeoutErr{})
		return timeoutErr{}
	}
}

// hookedRedis returns a store on its own client (with h) under a fresh prefix.
func hookedRedis(t *testing.T, h *lostAnswer) (*statestore.Redis, redis.UniversalClient, string) {
	t.Helper()
	_, prefix := testenv.Redis(t)
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	c.AddHook(h)
	return statestore.NewRedis(c, prefix), c, prefix
}

// TestRedisTakeSurvivesLostAnswer: the first take executes (the value is
// consumed) and its answer is lost; the retry with the same nonce still
// receives the value, and nobody else can.
func TestRedisTakeSurvivesLostAnswer(t *testing.T) {
	t.Parallel()
	h := &lostAnswer{}
	s, _, _ := hookedRedis(t, h)
	ctx := t.Context()
	if err := s.Put(ctx, "flow", []byte("sealed-value"), time.Minute); err != nil {
		t.Fatalf("Put: %v", err)
	}
	h.armed.Store(1)
	v, err := s.Take(ctx, "flow")
	if err != nil {
		t.Fatalf("Take after a lost answer: %v (the flow would be lost)", err)
	}
	if string(v) != "sealed-value" {
		t.Fatalf("Take = %q", v)
	}
	if h.armed.Load() >= 0 {
		t.Fatal("the hook did not lose an answer: the test proves nothing")
	}
	if _, err := s.Take(ctx, "flow"); err != statestore.ErrNotFound {
		t.Fatalf("second Take: %v, want ErrNotFound (single use)", err)
	}
}

// TestRedisPutSurvivesRetry: a Put executed twice (go-redis retried it)
// reports success, not ErrExists for its own value.
func TestRedisPutSurvivesRetry(t *testing.T) {
	t.Parallel()
	h := &lostAnswer{twice: true, set: true}
	s, _, _ := hookedRedis(t, h)
	ctx := t.Context()
	h.armed.Store(1)
	if err := s.Put(ctx, "k", []byte("v1"), time.Minute); err != nil {
		t.Fatalf("retried Put: %v", err)
	}
	if h.armed.Load() != 0 {
		t.Fatal("the hook did not run the Put twice: the test proves nothing")
	}
	if err := s.Put(ctx, "k", []byte("v2"), time.Minute); err != statestore.ErrExists {
		t.Fatalf("Put of another value: %v, want ErrExists", err)
	}
}

// TestRedisLockRetrySafe: an acquire executed twice (its first answer lost,
// go-redis retried) counts as acquired; an acquire whose answer is lost
// altogether frees the lock instead of blocking everyone for a TTL.
func TestRedisLockRetrySafe(t *testing.T) {
	t.Parallel()
	h := &lostAnswer{twice: true}
	s, c, prefix := hookedRedis(t, h)
	ctx := t.Context()
	h.armed.Store(1)
	l, err := s.Lock(ctx, "p", time.Minute)
	if err != nil {
		t.Fatalf("retried Lock found itself locked: %v", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}

	h.twice = false
	h.armed.Store(1)
	if _, err := s.Lock(ctx, "q", time.Minute); !statestore.IsUnavailable(err) {
		t.Fatalf("Lock with a lost answer: %v, want unavailable", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := c.Exists(ctx, prefix+"lock:{q}").Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a failed acquire left its lock behind for the whole TTL")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := s.Lock(ctx, "q", time.Minute); err != nil {
		t.Fatalf("Lock after the failed acquire was released: %v", err)
	}
}

// TestRedisClaimSurvivesLostAnswerAcrossRequests: a claim executes (the
// value is consumed) and every answer of it is lost, so the request gives
// up; the holder's next request (the browser reloading) claims with the
// same token and receives the value. A settle executed twice (its first
// answer lost, go-redis retried) succeeds once, and the claim is then over.
func TestRedisClaimSurvivesLostAnswerAcrossRequests(t *testing.T) {
	t.Parallel()
	h := &lostAnswer{}
	s, _, _ := hookedRedis(t, h)
	ctx := t.Context()
	if err := s.Put(ctx, "flow", []byte("sealed-value"), time.Minute); err != nil {
		t.Fatalf("Put: %v", err)
	}
	h.armed.Store(100) // every attempt of this claim loses its answer
	if _, err := s.Claim(ctx, "flow", "browser", time.Minute); !statestore.IsUnavailable(err) {
		t.Fatalf("Claim with every answer lost: %v, want unavailable", err)
	}
	h.armed.Store(0)
	if _, err := s.Claim(ctx, "flow", "intruder", time.Minute); err != statestore.ErrNotFound {
		t.Fatalf("Claim by another token: %v, want ErrNotFound", err)
	}
	v, err := s.Claim(ctx, "flow", "browser", time.Minute)
	if err != nil || string(v) != "sealed-value" {
		t.Fatalf("the holder's next Claim = %q, %v (the flow would be lost)", v, err)
	}
	h.twice = true
	h.armed.Store(1)
	if err := s.Settle(ctx, "flow", "browser"); err != nil {
		t.Fatalf("Settle run twice: %v", err)
	}
	if h.armed.Load() >= 1 {
		t.Fatal("the hook did not run the settle twice: the test proves nothing")
	}
	if err := s.Settle(ctx, "flow", "browser"); err != statestore.ErrNotFound {
		t.Fatalf("another Settle: %v, want ErrNotFound", err)
	}
	if _, err := s.Claim(ctx, "flow", "browser", time.Minute); err != statestore.ErrNotFound {
		t.Fatalf("Claim after Settle: %v, want ErrNotFound", err)
	}
}
