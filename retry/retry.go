// Package retry is mcpauth's one retry loop: bounded, jittered exponential
// backoff that honours the context, a server's Retry-After, an overall time
// budget and, for callers that must still act after the last attempt, a
// reserve before the context's deadline.
//
// The function retried decides what is worth retrying: it returns nil to
// stop with success, Permanent(err) to stop with err, After(err, d) to retry
// after d instead of the backoff, and any other error to retry after the
// backoff. Do returns the attempt's own error, never one of these wrappers.
package retry

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"time"
)

// Policy says how often and how long Do retries. The zero Policy retries
// without waiting until the context ends; set Attempts or Budget to bound it.
type Policy struct {
	// Attempts caps the calls of the function, the first included; zero or
	// less means no cap.
	Attempts int

	// Base is the wait after the first failed attempt; it doubles after each
	// further one. Zero means no wait.
	Base time.Duration

	// Max caps every wait, those asked for with After included; zero or less
	// means no cap.
	Max time.Duration

	// Jitter in [0, 1] spreads the waits of callers that failed together:
	// each backoff wait d is drawn uniformly from [d·(1−Jitter), d], so Max
	// stays a true maximum. Waits asked for with After are not jittered.
	Jitter float64

	// Budget, when positive, caps the time from the first attempt's start to
	// the end of the last wait: Do does not start a wait that would end
	// later, and returns the last error instead.
	Budget time.Duration

	// Reserve, when positive, is the time the caller needs after the last
	// attempt before the context's deadline (to store a result, say): Do
	// does not start a wait after which less than Reserve would remain, and
	// returns the last error instead.
	Reserve time.Duration

	// OnRetry, when set, is called before each wait with the number of the
	// attempt that failed (from 1), its error and the wait, for a log line
	// or a metric.
	OnRetry func(attempt int, err error, wait time.Duration)

	// Test hooks; nil selects the real clock, timer and random source.
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error
	randN func(n int64) int64
}

// Do calls fn until it succeeds, returns a Permanent error, the attempts or
// the budget run out, the reserve before ctx's deadline would be broken, or
// ctx ends. fn is always called at least once; attempt counts from 1.
//
// On success Do returns nil. When it gives up it returns the last attempt's
// error (unwrapped from Permanent or After). When ctx ends before a retry,
// it returns promptly with an error that matches ctx's error and the last
// attempt's error with errors.Is and errors.As.
func Do(ctx context.Context, p Policy, fn func(ctx context.Context, attempt int) error) error {
	now, sleep, randN := p.now, p.sleep, p.randN
	if now == nil {
		now = time.Now
	}
	if sleep == nil {
		sleep = Sleep
	}
	if randN == nil {
		randN = rand.N[int64]
	}
	start := now()
	backoff := max(p.Base, 0)
	for attempt := 1; ; attempt++ {
		err := fn(ctx, attempt)
		if err == nil {
			return nil
		}
		var perm *permanent
		if errors.As(err, &perm) {
			return perm.err
		}
		var asked *after
		if errors.As(err, &asked) {
			err = asked.err
		}
		if p.Attempts > 0 && attempt >= p.Attempts {
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return stopped(cerr, err)
		}
		wait := p.jitter(backoff, randN)
		if asked != nil {
			wait = asked.d
		}
		if p.Max > 0 {
			wait = min(wait, p.Max)
		}
		backoff = p.grow(backoff)
		t := now()
		if p.Budget > 0 && t.Add(wait).Sub(start) > p.Budget {
			return err
		}
		if dl, ok := ctx.Deadline(); ok && p.Reserve > 0 && dl.Sub(t) < wait+p.Reserve {
			return err
		}
		if p.OnRetry != nil {
			p.OnRetry(attempt, err, wait)
		}
		if serr := sleep(ctx, wait); serr != nil {
			return stopped(serr, err)
		}
	}
}

// jitter draws a wait from [d·(1−Jitter), d].
func (p Policy) jitter(d time.Duration, randN func(int64) int64) time.Duration {
	j := min(max(p.Jitter, 0), 1)
	span := int64(j * float64(d))
	if span <= 0 {
		return d
	}
	return d - time.Duration(randN(span+1))
}

// grow doubles d, capped at Max and at the largest duration.
func (p Policy) grow(d time.Duration) time.Duration {
	if d > math.MaxInt64/2 {
		d = math.MaxInt64
	} else {
		d *= 2
	}
	if p.Max > 0 {
		d = min(d, p.Max)
	}
	return d
}

// Permanent marks err as not worth retrying: Do stops and returns err
// itself (the mark is found anywhere in the chain fn returns, and whatever
// wraps it is dropped). Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanent{err: err}
}

// After marks err as worth retrying after d (a server's Retry-After, say)
// instead of the backoff; the wait is not jittered, and Max, Budget and
// Reserve still apply. Do returns err itself if it gives up. After(nil, d)
// is nil.
func After(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	return &after{err: err, d: max(d, 0)}
}

// Sleep waits for d or until ctx ends, whichever comes first, and returns
// ctx's error in the second case. It never blocks past ctx's end.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

type permanent struct{ err error }

func (e *permanent) Error() string { return e.err.Error() }
func (e *permanent) Unwrap() error { return e.err }

type after struct {
	err error
	d   time.Duration
}

func (e *after) Error() string { return e.err.Error() }
func (e *after) Unwrap() error { return e.err }

// stopped returns the error of a loop cut short by the context: the
// context's error cerr, and the last attempt's error for the log and for
// errors.Is/As. An attempt that already failed with cerr is returned as it is.
func stopped(cerr, last error) error {
	if errors.Is(last, cerr) {
		return last
	}
	return &stoppedError{ctx: cerr, last: last}
}

type stoppedError struct{ ctx, last error }

func (e *stoppedError) Error() string   { return e.ctx.Error() + "; last attempt: " + e.last.Error() }
func (e *stoppedError) Unwrap() []error { return []error{e.ctx, e.last} }
