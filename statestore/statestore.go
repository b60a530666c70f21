// Package statestore holds short-lived flow state (PKCE verifiers, OAuth
// state records) and cross-replica leases (the per-provider refresh lock).
//
// Values are opaque: callers encrypt them before storing and derive keys from
// secrets (never use a raw state value as a key). Every value has a TTL and is
// consumed exactly once by Take, which is atomic across replicas.
//
// Two implementations share one contract, proved by one conformance suite:
// Redis (go-redis UniversalClient, so a single node, Sentinel or Cluster) for
// more than one replica, and Memory for a single process.
package statestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mcpauth/mcpauth/retry"
)

// Store holds opaque values under keys with a TTL and single-use consumption,
// and grants exclusive, expiring leases on keys.
//
// Keys used by Put/Take and keys used by Lock/WaitUnlocked live in separate
// namespaces: a lock on "x" does not collide with a value stored under "x".
type Store interface {
	// Put stores value under key for ttl. It fails with ErrExists when the key
	// already holds an unexpired value, and never overwrites it.
	Put(ctx context.Context, key string, value []byte, ttl time.Duration) error

	// Take atomically returns and deletes the value under key, so that of any
	// number of concurrent callers exactly one receives it. It fails with
	// ErrNotFound when the key is absent or expired.
	Take(ctx context.Context, key string) ([]byte, error)

	// Claim takes the value under key as Take does, for the holder of
	// token (a secret the caller can present again, such as one derived
	// from a browser's cookie), and keeps it in a receipt for ttl: until
	// Settle, a later Claim with the same token receives the value again,
	// so a caller whose answer was lost (Redis stalled past its timeout
	// after taking the value) gets it on its next try, even from another
	// request. Any other token gets ErrNotFound.
	Claim(ctx context.Context, key, token string, ttl time.Duration) ([]byte, error)

	// Settle ends the claim made on key with token, exclusively: of any
	// number of callers settling it, exactly one gets nil and the others
	// ErrNotFound (as does a claim never made, expired or settled). After
	// Settle no Claim receives the value. A settle retried after a lost
	// answer still succeeds.
	Settle(ctx context.Context, key, token string) error

	// Get returns the value under key without consuming it, failing with
	// ErrNotFound when the key is absent or expired. It lets a caller check
	// a request against the value before it takes it, so that a request
	// that fails the check does not destroy the value for the legitimate
	// one; whoever acts on the value must still Take it (and compare).
	Get(ctx context.Context, key string) ([]byte, error)

	// Lock acquires a lease on key for ttl if nobody holds it, and fails with
	// ErrLocked otherwise. The lease expires by itself after ttl unless
	// extended, so a crashed holder never blocks others for longer than ttl.
	Lock(ctx context.Context, key string, ttl time.Duration) (Lease, error)

	// WaitUnlocked blocks until nobody holds the lock on key, returning nil,
	// or until ctx ends, returning its error. It polls with a short jittered
	// backoff (5 to 50ms); it does not acquire the lock.
	WaitUnlocked(ctx context.Context, key string) error

	// Ping reports whether the store is reachable.
	Ping(ctx context.Context) error

	// Close releases the store's resources. Operations after Close fail with
	// an error for which IsUnavailable is true.
	Close() error
}

// Lease is a held lock returned by Store.Lock. It carries no fencing token:
// a lease can expire while its holder still works, and Redis can lose it
// (restart, failover, eviction), so what the lock guards must be decided
// elsewhere (grants only queues refreshers here; the refresh lease row in
// the database, per credential generation, decides who refreshes).
type Lease interface {
	// Release frees the lock if this lease still holds it. When the lease has
	// expired (and possibly been acquired by someone else) Release leaves the
	// current holder's lock in place and returns ErrLeaseLost.
	Release(ctx context.Context) error

	// Extend resets the lease's remaining time to ttl if this lease still
	// holds the lock, and returns ErrLeaseLost otherwise.
	Extend(ctx context.Context, ttl time.Duration) error
}

// Errors returned by stores. Test for them with errors.Is.
var (
	// ErrNotFound means that Take or Get found no value: it never existed, it
	// expired, or another caller took it first.
	ErrNotFound = errors.New("statestore: not found")

	// ErrExists means that Put found an unexpired value under the key.
	ErrExists = errors.New("statestore: key already exists")

	// ErrLocked means that Lock found the key held by another lease.
	ErrLocked = errors.New("statestore: locked")

	// ErrLeaseLost means that a lease no longer holds its lock: it expired,
	// and another holder may have acquired the lock since.
	ErrLeaseLost = errors.New("statestore: lease lost")

	// ErrUnavailable is matched (with errors.Is) by every error that comes
	// from the store being unreachable, overloaded or closed. Callers map it
	// to UNAVAILABLE. IsUnavailable also recognises unwrapped client errors.
	ErrUnavailable = errors.New("statestore: unavailable")
)

// errClosed is returned by a Memory store after Close.
var errClosed = &storeError{op: "memory", err: errors.New("store closed"), unavailable: true}

// storeError wraps a backend error with the operation that failed. It
// matches ErrUnavailable when the backend could not be reached or could not
// serve the request for now.
type storeError struct {
	op          string
	err         error
	unavailable bool
}

func (e *storeError) Error() string { return fmt.Sprintf("statestore: %s: %v", e.op, e.err) }

func (e *storeError) Unwrap() error { return e.err }

func (e *storeError) Is(target error) bool { return target == ErrUnavailable && e.unavailable }

// wrap annotates a backend error with op. The error's text carries no key and
// no value, only the operation and the backend's own message.
func wrap(op string, err error) error {
	return &storeError{op: op, err: err, unavailable: classifyUnavailable(err)}
}

// IsUnavailable reports whether err means that the store cannot serve
// requests for now (network errors, timeouts including context deadlines,
// a closed client, an exhausted pool, and the Redis replies LOADING,
// READONLY, MASTERDOWN, CLUSTERDOWN, TRYAGAIN, BUSY, OOM, NOREPLICAS and
// max-clients). It is false for ErrNotFound, ErrExists, ErrLocked,
// ErrLeaseLost, context cancellation and nil.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	return errors.Is(err, ErrUnavailable) || classifyUnavailable(err)
}

func classifyUnavailable(err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, context.Canceled):
		// The caller gave up; the store may be fine.
		return false
	case errors.Is(err, redis.ErrClosed),
		errors.Is(err, redis.ErrPoolTimeout),
		errors.Is(err, redis.ErrPoolExhausted),
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE),
		errors.Is(err, net.ErrClosed):
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	return redis.IsLoadingError(err) ||
		redis.IsReadOnlyError(err) ||
		redis.IsMasterDownError(err) ||
		redis.IsClusterDownError(err) ||
		redis.IsTryAgainError(err) ||
		redis.IsMaxClientsError(err) ||
		redis.IsNoReplicasError(err) ||
		redis.IsOOMError(err) ||
		redis.HasErrorPrefix(err, "BUSY")
}

// validate rejects arguments that no implementation can honour.
func validate(key string, ttl time.Duration, needTTL bool) error {
	if key == "" {
		return errors.New("statestore: empty key")
	}
	if needTTL && ttl <= 0 {
		return fmt.Errorf("statestore: ttl %v must be positive", ttl)
	}
	return nil
}

// validateClaim rejects a claim without key or token.
func validateClaim(key, token string) error {
	if token == "" {
		return errors.New("statestore: empty claim token")
	}
	return validate(key, 0, false)
}

// pollPolicy is WaitUnlocked's polling: a jittered interval in
// [delay/2, delay] that grows from 5 to 50ms, which spreads waiters from
// different replicas. Only the end of the context stops it. Waiters are few
// (one per replica and provider during a refresh), so polling is cheaper
// than pub/sub.
var pollPolicy = retry.Policy{Base: 5 * time.Millisecond, Max: 50 * time.Millisecond, Jitter: 0.5}

// errHeld is the poll's answer while the lock is still held.
var errHeld = errors.New("statestore: lock still held")

// waitUntil calls free with pollPolicy's interval until it reports true,
// fails, or ctx ends (then it returns ctx's error).
func waitUntil(ctx context.Context, free func(context.Context) (bool, error)) error {
	err := retry.Do(ctx, pollPolicy, func(ctx context.Context, _ int) error {
		ok, err := free(ctx)
		switch {
		case err != nil:
			return retry.Permanent(err)
		case !ok:
			return errHeld
		}
		return nil
	})
	if cerr := ctx.Err(); cerr != nil && errors.Is(err, errHeld) {
		// The attempts are not capped: only the end of ctx stops the poll,
		// and WaitUnlocked's contract is to return ctx's error then.
		return cerr
	}
	return err
}
