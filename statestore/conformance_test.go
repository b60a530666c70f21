package statestore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/statestore"
)

// factory opens a store. Calling it twice in one test must return two
// handles on the same shared state (two "replicas"), which is how the
// cross-replica cases run.
type factory func(tb testing.TB) statestore.Store

// runConformance is the contract every Store implementation must meet.
func runConformance(t *testing.T, open func(t *testing.T) factory) {
	t.Run("PutTakeSingleUse", func(t *testing.T) {
		t.Parallel()
		s := open(t)(t)
		ctx := t.Context()
		want := []byte("sealed-payload")
		if err := s.Put(ctx, "k", want, time.Minute); err != nil {
			t.Fatalf("Put: %v", err)
		}
		got, err := s.Take(ctx, "k")
		if err != nil {
			t.Fatalf("first Take: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("Take = %q, want %q", got, want)
		}
		if _, err := s.Take(ctx, "k"); !errors.Is(err, statestore.ErrNotFound) {
			t.Fatalf("second Take error = %v, want ErrNotFound", err)
		}
		if _, err := s.Take(ctx, "never-put"); !errors.Is(err, statestore.ErrNotFound) {
			t.Fatalf("Take of absent key error = %v, want ErrNotFound", err)
		}
	})

	t.Run("TakeAcrossReplicas", func(t *testing.T) {
		t.Parallel()
		f := open(t)
		a, b := f(t), f(t)
		if err := a.Put(t.Context(), "k", []byte("v"), time.Minute); err != nil {
			t.Fatalf("Put: %v", err)
		}
		if got, err := b.Take(t.Context(), "k"); err != nil || string(got) != "v" {
			t.Fatalf("Take on other replica = %q, %v", got, err)
		}
		if _, err := a.Take(t.Context(), "k"); !errors.Is(err, statestore.ErrNotFound) {
			t.Fatalf("Take after other replica took it: %v, want ErrNotFound", err)
		}
	})

	t.Run("GetDoesNotConsume", func(t *testing.T) {
		t.Parallel()
		f := open(t)
		a, b := f(t), f(t)
		ctx := t.Context()
		if err := a.Put(ctx, "k", []byte("v"), time.Minute); err != nil {
			t.Fatalf("Put: %v", err)
		}
		// Any number of reads, on any replica, leave the value in place for
		// the one Take.
		for i, s := range []statestore.Store{a, b, a} {
			got, err := s.Get(ctx, "k")
			if err != nil || string(got) != "v" {
				t.Fatalf("Get %d = %q, %v", i, got, err)
			}
			got[0] = 'x' // a caller's copy: changing it changes nothing stored
		}
		if got, err := b.Take(ctx, "k"); err != nil || string(got) != "v" {
			t.Fatalf("Take after Get = %q, %v", got, err)
		}
		if _, err := a.Get(ctx, "k"); !errors.Is(err, statestore.ErrNotFound) {
			t.Fatalf("Get after Take error = %v, want ErrNotFound", err)
		}
		if _, err := a.Get(ctx, "never-put"); !errors.Is(err, statestore.ErrNotFound) {
			t.Fatalf("Get of absent key error = %v, want ErrNotFound", err)
		}
	})

	t.Run("PutExisting", func(t *testing.T) {
		t.Parallel()
		s := open(t)(t)
		ctx := t.Context()
		if err := s.Put(ctx, "k", []byte("first"), time.Minute); err != nil {
			t.Fatalf("Put: %v", err)
		}
		if err := s.Put(ctx, "k", []byte("second"), time.Minute); !errors.Is(err, statestore.ErrExists) {
			t.Fatalf("Put on existing key error = %v, want ErrExists", err)
		}
		got, err := s.Take(ctx, "k")
		if err != nil || string(got) != "first" {
			t.Fatalf("Take = %q, %v; the first value must survive", got, err)
		}
	})

	t.Run("Expiry", func(t *testing.T) {
		t.Parallel()
		s := open(t)(t)
		ctx := t.Context()
		const ttl = 200 * time.Millisecond
		if err := s.Put(ctx, "k", []byte("v"), ttl); err != nil {
			t.Fatalf("Put: %v", err)
		}
		if err := s.Put(ctx, "probe", []byte("v"), ttl); err != nil {
			t.Fatalf("Put probe: %v", err)
		}
		// Probing with Put (ErrExists while alive) observes expiry without
		// consuming; "probe" was written after "k", so once it is gone so is "k".
		eventually(t, 5*time.Second, func() bool {
			err := s.Put(ctx, "probe", []byte("again"), time.Minute)
			if err != nil && !errors.Is(err, statestore.ErrExists) {
				t.Fatalf("Put probe: %v", err)
			}
			return err == nil
		})
		if _, err := s.Get(ctx, "k"); !errors.Is(err, statestore.ErrNotFound) {
			t.Fatalf("Get after expiry error = %v, want ErrNotFound", err)
		}
		if _, err := s.Take(ctx, "k"); !errors.Is(err, statestore.ErrNotFound) {
			t.Fatalf("Take after expiry error = %v, want ErrNotFound", err)
		}
	})

	t.Run("ConcurrentTakeExactlyOnce", func(t *testing.T) {
		t.Parallel()
		f := open(t)
		s := f(t)
		replicas := []statestore.Store{s, f(t), f(t)}
		if err := s.Put(t.Context(), "k", []byte("v"), time.Minute); err != nil {
			t.Fatalf("Put: %v", err)
		}
		const n = 50
		var got, notFound atomic.Int32
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				v, err := replicas[i%len(replicas)].Take(t.Context(), "k")
				switch {
				case err == nil && string(v) == "v":
					got.Add(1)
				case errors.Is(err, statestore.ErrNotFound):
					notFound.Add(1)
				default:
					t.Errorf("Take = %q, %v", v, err)
				}
			})
		}
		close(start)
		wg.Wait()
		if got.Load() != 1 || notFound.Load() != n-1 {
			t.Fatalf("got value %d times and ErrNotFound %d times, want 1 and %d", got.Load(), notFound.Load(), n-1)
		}
	})

	t.Run("ClaimAgainUntilSettled", func(t *testing.T) {
		t.Parallel()
		f := open(t)
		a, b := f(t), f(t)
		ctx := t.Context()
		if err := a.Put(ctx, "k", []byte("v"), time.Minute); err != nil {
			t.Fatalf("Put: %v", err)
		}
		if got, err := a.Claim(ctx, "k", "browser-a", time.Minute); err != nil || string(got) != "v" {
			t.Fatalf("Claim = %q, %v", got, err)
		}
		// The same holder (a reload after a lost answer, on any replica)
		// gets the value again; nobody else does, by any means.
		if got, err := b.Claim(ctx, "k", "browser-a", time.Minute); err != nil || string(got) != "v" {
			t.Fatalf("Claim again with the same token = %q, %v", got, err)
		}
		if _, err := b.Claim(ctx, "k", "browser-b", time.Minute); !errors.Is(err, statestore.ErrNotFound) {
			t.Fatalf("Claim with another token: %v, want ErrNotFound", err)
		}
		if _, err := a.Take(ctx, "k"); !errors.Is(err, statestore.ErrNotFound) {
			t.Fatalf("Take of a claimed value: %v, want ErrNotFound", err)
		}
		if _, err := a.Get(ctx, "k"); !errors.Is(err, statestore.ErrNotFound) {
			t.Fatalf("Get of a claimed value: %v, want ErrNotFound", err)
		}
		if err := a.Settle(ctx, "k", "browser-b"); !errors.Is(err, statestore.ErrNotFound) {
			t.Fatalf("Settle with another token: %v, want ErrNotFound", err)
		}
		if err := b.Settle(ctx, "k", "browser-a"); err != nil {
			t.Fatalf("Settle: %v", err)
		}
		if err := a.Settle(ctx, "k", "browser-a"); !errors.Is(err, statestore.ErrNotFound) {
			t.Fatalf("second Settle: %v, want ErrNotFound (exclusive)", err)
		}
		if _, err := a.Claim(ctx, "k", "browser-a", time.Minute); !errors.Is(err, statestore.ErrNotFound) {
			t.Fatalf("Claim after Settle: %v, want ErrNotFound (single use)", err)
		}
		if err := a.Settle(ctx, "never-claimed", "browser-a"); !errors.Is(err, statestore.ErrNotFound) {
			t.Fatalf("Settle of nothing: %v, want ErrNotFound", err)
		}
	})

	t.Run("ClaimReceiptExpires", func(t *testing.T) {
		t.Parallel()
		s := open(t)(t)
		ctx := t.Context()
		if err := s.Put(ctx, "k", []byte("v"), time.Minute); err != nil {
			t.Fatalf("Put: %v", err)
		}
		if _, err := s.Claim(ctx, "k", "tok", 150*time.Millisecond); err != nil {
			t.Fatalf("Claim: %v", err)
		}
		eventually(t, 5*time.Second, func() bool {
			_, err := s.Claim(ctx, "k", "tok", time.Minute)
			if err != nil && !errors.Is(err, statestore.ErrNotFound) {
				t.Fatalf("Claim: %v", err)
			}
			return err != nil
		})
		if err := s.Settle(ctx, "k", "tok"); !errors.Is(err, statestore.ErrNotFound) {
			t.Fatalf("Settle of an expired receipt: %v, want ErrNotFound", err)
		}
	})

	t.Run("ConcurrentClaimAndSettleExactlyOnce", func(t *testing.T) {
		t.Parallel()
		f := open(t)
		replicas := []statestore.Store{f(t), f(t), f(t)}
		ctx := t.Context()
		if err := replicas[0].Put(ctx, "k", []byte("v"), time.Minute); err != nil {
			t.Fatalf("Put: %v", err)
		}
		const n = 30
		var got, settled atomic.Int32
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				s := replicas[i%len(replicas)]
				// Two holders race; each holder's requests race too.
				tok := fmt.Sprintf("holder-%d", i%2)
				if _, err := s.Claim(ctx, "k", tok, time.Minute); err == nil {
					got.Add(1)
				} else if !errors.Is(err, statestore.ErrNotFound) {
					t.Errorf("Claim: %v", err)
					return
				}
				switch err := s.Settle(ctx, "k", tok); {
				case err == nil:
					settled.Add(1)
				case !errors.Is(err, statestore.ErrNotFound):
					t.Errorf("Settle: %v", err)
				}
			})
		}
		close(start)
		wg.Wait()
		// One holder won the value; its requests may all have received it
		// (they hold the same token), but exactly one settled it.
		if got.Load() < 1 || got.Load() > n/2 || settled.Load() != 1 {
			t.Fatalf("claimed %d times, settled %d times; want 1..%d and exactly 1", got.Load(), settled.Load(), n/2)
		}
	})

	t.Run("LockExclusive", func(t *testing.T) {
		t.Parallel()
		f := open(t)
		replicas := []statestore.Store{f(t), f(t), f(t)}
		const n = 100
		var leases []statestore.Lease
		var mu sync.Mutex
		var locked atomic.Int32
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				l, err := replicas[i%len(replicas)].Lock(t.Context(), "refresh", time.Minute)
				switch {
				case err == nil:
					mu.Lock()
					leases = append(leases, l)
					mu.Unlock()
				case errors.Is(err, statestore.ErrLocked):
					locked.Add(1)
				default:
					t.Errorf("Lock: %v", err)
				}
			})
		}
		close(start)
		wg.Wait()
		if len(leases) != 1 || locked.Load() != n-1 {
			t.Fatalf("%d leases and %d ErrLocked, want 1 and %d", len(leases), locked.Load(), n-1)
		}
		// The lock and a value under the same key are separate namespaces.
		if err := replicas[0].Put(t.Context(), "refresh", []byte("v"), time.Minute); err != nil {
			t.Fatalf("Put under a locked key's name: %v", err)
		}
		if err := leases[0].Release(t.Context()); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if _, err := replicas[1].Lock(t.Context(), "refresh", time.Minute); err != nil {
			t.Fatalf("Lock after Release: %v", err)
		}
	})

	t.Run("StaleLeaseCannotReleaseOrExtend", func(t *testing.T) {
		t.Parallel()
		f := open(t)
		a, b := f(t), f(t)
		ctx := t.Context()
		stale, err := a.Lock(ctx, "k", 150*time.Millisecond)
		if err != nil {
			t.Fatalf("Lock: %v", err)
		}
		// Never released: the holder "died". Another replica gets the lock
		// once the lease has expired.
		var fresh statestore.Lease
		eventually(t, 5*time.Second, func() bool {
			l, err := b.Lock(ctx, "k", time.Minute)
			if err != nil && !errors.Is(err, statestore.ErrLocked) {
				t.Fatalf("Lock: %v", err)
			}
			fresh = l
			return err == nil
		})
		if err := stale.Release(ctx); !errors.Is(err, statestore.ErrLeaseLost) {
			t.Fatalf("stale Release error = %v, want ErrLeaseLost", err)
		}
		if err := stale.Extend(ctx, time.Minute); !errors.Is(err, statestore.ErrLeaseLost) {
			t.Fatalf("stale Extend error = %v, want ErrLeaseLost", err)
		}
		if _, err := a.Lock(ctx, "k", time.Minute); !errors.Is(err, statestore.ErrLocked) {
			t.Fatalf("Lock after stale Release error = %v, want ErrLocked (new holder's lock must survive)", err)
		}
		if err := fresh.Release(ctx); err != nil {
			t.Fatalf("fresh Release: %v", err)
		}
		if err := fresh.Release(ctx); !errors.Is(err, statestore.ErrLeaseLost) {
			t.Fatalf("second Release error = %v, want ErrLeaseLost", err)
		}
	})

	t.Run("ExtendKeepsLock", func(t *testing.T) {
		t.Parallel()
		s := open(t)(t)
		ctx := t.Context()
		l, err := s.Lock(ctx, "k", 300*time.Millisecond)
		if err != nil {
			t.Fatalf("Lock: %v", err)
		}
		if err := l.Extend(ctx, time.Minute); err != nil {
			t.Fatalf("Extend: %v", err)
		}
		// Well past the original TTL the lock is still held.
		deadline := time.Now().Add(600 * time.Millisecond)
		for time.Now().Before(deadline) {
			if _, err := s.Lock(ctx, "k", time.Minute); !errors.Is(err, statestore.ErrLocked) {
				t.Fatalf("Lock of extended lease error = %v, want ErrLocked", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("WaitUnlocked", func(t *testing.T) {
		t.Parallel()
		f := open(t)
		a, b := f(t), f(t)
		ctx := t.Context()
		if err := b.WaitUnlocked(ctx, "k"); err != nil {
			t.Fatalf("WaitUnlocked on a free key: %v", err)
		}
		l, err := a.Lock(ctx, "k", time.Minute)
		if err != nil {
			t.Fatalf("Lock: %v", err)
		}
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		if err := b.WaitUnlocked(short, "k"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("WaitUnlocked while locked error = %v, want DeadlineExceeded", err)
		}
		done := make(chan error, 1)
		go func() { done <- b.WaitUnlocked(ctx, "k") }()
		select {
		case err := <-done:
			t.Fatalf("WaitUnlocked returned %v while the lock is held", err)
		case <-time.After(100 * time.Millisecond):
		}
		if err := l.Release(ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("WaitUnlocked after Release: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("WaitUnlocked did not return after Release")
		}
	})

	t.Run("WaitUnlockedAfterExpiry", func(t *testing.T) {
		t.Parallel()
		s := open(t)(t)
		if _, err := s.Lock(t.Context(), "k", 200*time.Millisecond); err != nil {
			t.Fatalf("Lock: %v", err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		if err := s.WaitUnlocked(ctx, "k"); err != nil {
			t.Fatalf("WaitUnlocked on a lease that expires: %v", err)
		}
	})

	t.Run("InvalidArguments", func(t *testing.T) {
		t.Parallel()
		s := open(t)(t)
		ctx := t.Context()
		for name, err := range map[string]error{
			"Put empty key": s.Put(ctx, "", []byte("v"), time.Minute),
			"Put zero ttl":  s.Put(ctx, "k", []byte("v"), 0),
			"Take empty key": func() error {
				_, err := s.Take(ctx, "")
				return err
			}(),
			"Claim empty token": func() error {
				_, err := s.Claim(ctx, "k", "", time.Minute)
				return err
			}(),
			"Settle empty key": s.Settle(ctx, "", "tok"),
			"Get empty key": func() error {
				_, err := s.Get(ctx, "")
				return err
			}(),
			"Lock negative ttl": func() error {
				_, err := s.Lock(ctx, "k", -time.Second)
				return err
			}(),
		} {
			if err == nil {
				t.Errorf("%s: no error", name)
			} else if statestore.IsUnavailable(err) {
				t.Errorf("%s: %v classified as unavailable", name, err)
			}
		}
	})

	t.Run("Ping", func(t *testing.T) {
		t.Parallel()
		if err := open(t)(t).Ping(t.Context()); err != nil {
			t.Fatalf("Ping: %v", err)
		}
	})
}

// eventually polls cond every 10ms until it holds or timeout passes.
func eventually(tb testing.TB, timeout time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("condition not met within %v", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMemoryConformance(t *testing.T) {
	t.Parallel()
	runConformance(t, func(t *testing.T) factory {
		m := statestore.NewMemory()
		t.Cleanup(func() { _ = m.Close() })
		return func(testing.TB) statestore.Store { return m }
	})
}

func TestRedisConformance(t *testing.T) {
	t.Parallel()
	runConformance(t, func(t *testing.T) factory {
		prefix := redisPrefix(t)
		return func(tb testing.TB) statestore.Store {
			// Each call is a separate replica: its own connection pool over
			// the same keys.
			return statestore.NewRedis(redisClient(tb), prefix)
		}
	})
}

func TestErrorsAreNotUnavailable(t *testing.T) {
	t.Parallel()
	for _, err := range []error{nil, statestore.ErrNotFound, statestore.ErrExists, statestore.ErrLocked,
		statestore.ErrLeaseLost, context.Canceled, fmt.Errorf("wrapped: %w", context.Canceled)} {
		if statestore.IsUnavailable(err) {
			t.Errorf("IsUnavailable(%v) = true", err)
		}
	}
	if !statestore.IsUnavailable(fmt.Errorf("x: %w", statestore.ErrUnavailable)) {
		t.Error("IsUnavailable(wrapped ErrUnavailable) = false")
	}
}
