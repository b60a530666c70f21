package retry

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock whose sleeps return at once and advance it, so the
// waits Do chooses can be read back without waiting for them.
type fakeClock struct {
	mu    sync.Mutex
	t     time.Time
	waits []time.Duration
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	c.waits = append(c.waits, d)
	return nil
}

func (c *fakeClock) recorded() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.waits...)
}

// fake returns p with the fake clock and a random source that always draws
// the largest jitter (the shortest wait).
func (c *fakeClock) fake(p Policy) Policy {
	p.now, p.sleep = c.now, c.sleep
	p.randN = func(n int64) int64 { return n - 1 }
	return p
}

// failing returns a function that fails with errs[i] on attempt i+1 and
// succeeds after the list, counting its calls.
func failing(calls *int, errs ...error) func(context.Context, int) error {
	return func(_ context.Context, attempt int) error {
		*calls++
		if attempt != *calls {
			panic(fmt.Sprintf("attempt %d on call %d", attempt, *calls))
		}
		if attempt <= len(errs) {
			return errs[attempt-1]
		}
		return nil
	}
}

var (
	errA = errors.New("attempt a failed")
	errB = errors.New("attempt b failed")
	errC = errors.New("attempt c failed")
)

func TestDo(t *testing.T) {
	t.Parallel()
	const ms = time.Millisecond
	tests := []struct {
		name  string
		p     Policy
		errs  []error
		want  error // nil for success
		calls int
		waits []time.Duration
	}{
		{"success first try", Policy{Attempts: 3, Base: 10 * ms}, nil, nil, 1, nil},
		{"retries then success", Policy{Attempts: 3, Base: 10 * ms}, []error{errA, errB}, nil, 3, []time.Duration{10 * ms, 20 * ms}},
		{"permanent stops and is unwrapped", Policy{Attempts: 5, Base: 10 * ms}, []error{errA, Permanent(errB), errC}, errB, 2, []time.Duration{10 * ms}},
		{"permanent found in a wrapped chain", Policy{Attempts: 5}, []error{fmt.Errorf("op: %w", Permanent(errB))}, errB, 1, nil},
		{"attempts exhausted returns the last error", Policy{Attempts: 3, Base: 10 * ms}, []error{errA, errB, errC, errA}, errC, 3, []time.Duration{10 * ms, 20 * ms}},
		{"one attempt never waits", Policy{Attempts: 1, Base: time.Hour}, []error{errA}, errA, 1, nil},
		{"exponential growth capped at Max", Policy{Attempts: 7, Base: 5 * ms, Max: 50 * ms}, []error{errA, errA, errA, errA, errA, errA, errB}, errB, 7,
			[]time.Duration{5 * ms, 10 * ms, 20 * ms, 40 * ms, 50 * ms, 50 * ms}},
		{"no base, no wait", Policy{Attempts: 3}, []error{errA, errB}, nil, 3, []time.Duration{0, 0}},
		{"after is honoured, not jittered and unwrapped", Policy{Attempts: 2, Base: 10 * ms, Max: 5 * time.Second, Jitter: 1},
			[]error{After(errA, 3*time.Second), After(errB, time.Second)}, errB, 2, []time.Duration{3 * time.Second}},
		{"after is capped by Max", Policy{Attempts: 3, Base: 10 * ms, Max: 5 * time.Second}, []error{After(errA, time.Minute), errB}, nil, 3,
			[]time.Duration{5 * time.Second, 20 * ms}},
		{"after without Max", Policy{Attempts: 2}, []error{After(errA, time.Hour)}, nil, 2, []time.Duration{time.Hour}},
		{"negative after is no wait", Policy{Attempts: 2, Base: time.Hour}, []error{After(errA, -time.Second)}, nil, 2, []time.Duration{0}},
		{"budget stops before a wait that would end too late", Policy{Base: time.Second, Max: time.Second, Budget: 3500 * ms},
			[]error{errA, errA, errA, errB, errC}, errB, 4, []time.Duration{time.Second, time.Second, time.Second}},
		{"budget applies to after", Policy{Budget: time.Minute}, []error{After(errA, 2*time.Minute)}, errA, 1, nil},
		{"largest jitter halves the wait", Policy{Attempts: 3, Base: 100 * ms, Jitter: 0.5}, []error{errA, errB}, nil, 3, []time.Duration{50 * ms, 100 * ms}},
		{"jitter above one is one", Policy{Attempts: 2, Base: 100 * ms, Jitter: 7}, []error{errA}, nil, 2, []time.Duration{0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clock := newFakeClock()
			calls := 0
			err := Do(t.Context(), clock.fake(tt.p), failing(&calls, tt.errs...))
			if err != tt.want {
				t.Errorf("Do() = %v, want %v", err, tt.want)
			}
			if calls != tt.calls {
				t.Errorf("%d calls, want %d", calls, tt.calls)
			}
			if got := clock.recorded(); !slices.Equal(got, tt.waits) {
				t.Errorf("waits %v, want %v", got, tt.waits)
			}
		})
	}
}

func TestDoReserve(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	// The deadline is real but far enough away not to pass during the test;
	// the fake clock starts at the real time and advances only by waits.
	ctx, cancel := context.WithDeadline(t.Context(), clock.now().Add(time.Hour+2*time.Second))
	defer cancel()
	calls := 0
	p := clock.fake(Policy{Base: time.Hour, Reserve: time.Second, Attempts: 5})
	// 1h+2s left: a 1h wait leaves 2s ≥ 1s, allowed; then 2s left cannot fit
	// the next 2h wait.
	err := Do(ctx, p, failing(&calls, errA, errB, errC))
	if err != errB || calls != 2 {
		t.Fatalf("Do() = %v after %d calls, want %v after 2", err, calls, errB)
	}
	if got := clock.recorded(); !slices.Equal(got, []time.Duration{time.Hour}) {
		t.Errorf("waits %v, want [1h]", got)
	}
}

func TestDoReserveIgnoredWithoutDeadline(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	calls := 0
	err := Do(t.Context(), clock.fake(Policy{Attempts: 3, Base: time.Hour, Reserve: time.Hour}), failing(&calls, errA, errB))
	if err != nil || calls != 3 {
		t.Fatalf("Do() = %v after %d calls, want success after 3", err, calls)
	}
}

func TestDoCancelDuringWaitReturnsPromptly(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	started := make(chan struct{})
	p := Policy{Base: time.Hour, OnRetry: func(int, error, time.Duration) { close(started) }}
	done := make(chan error, 1)
	go func() {
		done <- Do(ctx, p, func(context.Context, int) error { return errA })
	}()
	<-started // Do is about to wait an hour (real clock and timer)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || !errors.Is(err, errA) {
			t.Fatalf("Do() = %v, want an error matching context.Canceled and the last attempt's error", err)
		}
		if !strings.Contains(err.Error(), "context canceled") || !strings.Contains(err.Error(), errA.Error()) {
			t.Errorf("error text %q does not name both the context and the last attempt", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Do did not return after its context was canceled")
	}
}

func TestDoContextEndedBeforeRetry(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	ctx, cancel := context.WithCancel(t.Context())
	calls := 0
	err := Do(ctx, clock.fake(Policy{Attempts: 5, Base: time.Second}), func(context.Context, int) error {
		calls++
		cancel()
		return errA
	})
	if !errors.Is(err, context.Canceled) || !errors.Is(err, errA) || calls != 1 || len(clock.recorded()) != 0 {
		t.Fatalf("Do() = %v after %d calls and waits %v; want canceled+errA after 1 call, no wait", err, calls, clock.recorded())
	}

	// An attempt that failed with the context's own error is returned as it is.
	ctx, cancel = context.WithTimeout(t.Context(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	wrapped := fmt.Errorf("query: %w", ctx.Err())
	if err := Do(ctx, Policy{Attempts: 5}, func(context.Context, int) error { return wrapped }); err != wrapped {
		t.Fatalf("Do() = %v, want the attempt's own %v", err, wrapped)
	}

	// Exhausted attempts win over an ended context: the last error as it is.
	ctx, cancel = context.WithCancel(t.Context())
	cancel()
	if err := Do(ctx, Policy{Attempts: 1}, func(context.Context, int) error { return errB }); err != errB {
		t.Fatalf("Do() = %v, want %v", err, errB)
	}
}

func TestDoPassesItsContext(t *testing.T) {
	t.Parallel()
	type key struct{}
	ctx := context.WithValue(t.Context(), key{}, "v")
	_ = Do(ctx, Policy{Attempts: 1}, func(ctx context.Context, _ int) error {
		if ctx.Value(key{}) != "v" {
			t.Error("fn did not get Do's context")
		}
		return nil
	})
}

func TestDoOnRetry(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	type call struct {
		attempt int
		err     error
		wait    time.Duration
	}
	var got []call
	p := clock.fake(Policy{Attempts: 3, Base: time.Second, OnRetry: func(a int, err error, w time.Duration) { got = append(got, call{a, err, w}) }})
	calls := 0
	_ = Do(t.Context(), p, failing(&calls, After(errA, 3*time.Second), errB, errC))
	want := []call{{1, errA, 3 * time.Second}, {2, errB, 2 * time.Second}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("OnRetry calls %v, want %v (none before giving up)", got, want)
	}
}

func TestJitterBounded(t *testing.T) {
	t.Parallel()
	for _, j := range []float64{-1, 0, 0.25, 0.5, 2.0 / 3, 1, 3} {
		p := Policy{Jitter: j}
		clamped := min(max(j, 0), 1)
		d := 300 * time.Millisecond
		lo := d - time.Duration(clamped*float64(d))
		seen := map[bool]bool{}
		for range 2000 {
			w := p.jitter(d, rand.N[int64])
			if w < lo || w > d {
				t.Fatalf("jitter %v: wait %v outside [%v, %v]", j, w, lo, d)
			}
			seen[w < d] = true
		}
		if clamped > 0 && !seen[true] {
			t.Errorf("jitter %v never shortened a wait", j)
		}
		if clamped == 0 && seen[true] {
			t.Errorf("jitter %v shortened a wait", j)
		}
	}
	// The extremes of the random source give the bounds exactly.
	p := Policy{Jitter: 0.5}
	if w := p.jitter(100*time.Millisecond, func(int64) int64 { return 0 }); w != 100*time.Millisecond {
		t.Errorf("smallest draw: %v, want 100ms", w)
	}
	if w := p.jitter(100*time.Millisecond, func(n int64) int64 { return n - 1 }); w != 50*time.Millisecond {
		t.Errorf("largest draw: %v, want 50ms", w)
	}
}

func TestGrowDoesNotOverflow(t *testing.T) {
	t.Parallel()
	var p Policy
	if d := p.grow(math.MaxInt64/2 + 1); d != math.MaxInt64 {
		t.Errorf("grow past the largest duration = %v", d)
	}
	if d := p.grow(math.MaxInt64); d != math.MaxInt64 {
		t.Errorf("grow of the largest duration = %v", d)
	}
	if d := (Policy{Max: time.Second}).grow(math.MaxInt64); d != time.Second {
		t.Errorf("grow with Max = %v", d)
	}
}

func TestMarksOfNil(t *testing.T) {
	t.Parallel()
	if Permanent(nil) != nil || After(nil, time.Second) != nil {
		t.Fatal("marking nil is not nil")
	}
	if err := Permanent(errA); !errors.Is(err, errA) || err.Error() != errA.Error() {
		t.Errorf("Permanent(errA) = %v, does not read as errA", err)
	}
	if err := After(errA, time.Second); !errors.Is(err, errA) || err.Error() != errA.Error() {
		t.Errorf("After(errA) = %v, does not read as errA", err)
	}
}

func TestSleep(t *testing.T) {
	t.Parallel()
	if err := Sleep(t.Context(), time.Millisecond); err != nil {
		t.Fatalf("Sleep(1ms) = %v", err)
	}
	if err := Sleep(t.Context(), 0); err != nil {
		t.Fatalf("Sleep(0) = %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := Sleep(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep(0) on a canceled context = %v", err)
	}
	start := time.Now()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep(1h) on a canceled context = %v", err)
	}
	ctx, cancel = context.WithTimeout(t.Context(), 2*time.Millisecond)
	defer cancel()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sleep(1h) past a deadline = %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("Sleep did not return promptly at the context's end")
	}
}
