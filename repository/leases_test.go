package repository

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

func TestRefreshLeaseOneHolder(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		mustCreate(t, s, newProvider("a", "p1"))
		mustCreate(t, s, newProvider("b", "p1"))
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = s.AcquireRefreshLease(ctx, domain.TenantGrant("a", "p1"), 1, fmt.Sprintf("h%d", i), time.Minute)
			}()
		}
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("holders %d and %d both acquired the lease", winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, ErrLeaseHeld):
				t.Fatalf("acquire %d: %v", i, err)
			}
		}
		if winner < 0 {
			t.Fatal("nobody acquired the lease")
		}
		me := fmt.Sprintf("h%d", winner)
		// A retried acquire (its first answer lost) finds its own lease.
		if _, err := s.AcquireRefreshLease(ctx, domain.TenantGrant("a", "p1"), 1, me, time.Minute); err != nil {
			t.Fatalf("retried acquire by the holder: %v", err)
		}
		// Another tenant's provider of the same id has its own lease.
		if _, err := s.AcquireRefreshLease(ctx, domain.TenantGrant("b", "p1"), 1, "other", time.Minute); err != nil {
			t.Fatalf("other tenant: %v", err)
		}
		wantNoErr(t, s.ExtendRefreshLease(ctx, domain.TenantGrant("a", "p1"), me, time.Minute), "extend")
		if err := s.ExtendRefreshLease(ctx, domain.TenantGrant("a", "p1"), "stranger", time.Minute); !errors.Is(err, ErrLeaseGone) {
			t.Fatalf("extend by a stranger: %v, want ErrLeaseGone", err)
		}
		// A stranger's release leaves the lease in place.
		wantNoErr(t, s.ReleaseRefreshLease(ctx, domain.TenantGrant("a", "p1"), "stranger"), "stranger release")
		if _, err := s.AcquireRefreshLease(ctx, domain.TenantGrant("a", "p1"), 1, "stranger", time.Minute); !errors.Is(err, ErrLeaseHeld) {
			t.Fatalf("acquire after a stranger's release: %v, want ErrLeaseHeld", err)
		}
		wantNoErr(t, s.ReleaseRefreshLease(ctx, domain.TenantGrant("a", "p1"), me), "release")
		got, err := s.AcquireRefreshLease(ctx, domain.TenantGrant("a", "p1"), 2, "next", time.Minute)
		wantNoErr(t, err, "acquire after release")
		if got.TookOver {
			t.Fatal("a released lease reported as taken over")
		}
	})
}

func TestRefreshLeaseExpiredTakeover(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		mustCreate(t, s, newProvider("a", "p1"))
		_, err := s.AcquireRefreshLease(ctx, domain.TenantGrant("a", "p1"), 3, "crashed", time.Millisecond)
		wantNoErr(t, err, "first acquire")
		time.Sleep(20 * time.Millisecond)
		got, err := s.AcquireRefreshLease(ctx, domain.TenantGrant("a", "p1"), 3, "next", time.Minute)
		wantNoErr(t, err, "takeover")
		if !got.TookOver {
			t.Fatal("taking over an expired lease of the same generation not reported")
		}
		if err := s.ExtendRefreshLease(ctx, domain.TenantGrant("a", "p1"), "crashed", time.Minute); !errors.Is(err, ErrLeaseGone) {
			t.Fatalf("the old holder extends: %v, want ErrLeaseGone", err)
		}
		// A lease of a provider that does not exist is NOT_FOUND.
		_, err = s.AcquireRefreshLease(ctx, domain.TenantGrant("a", "nope"), 1, "h", time.Minute)
		wantKind(t, err, apperr.KindNotFound, "")
	})
}

func TestIsRetryable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"unexpected EOF", fmt.Errorf("query: %w", io.ErrUnexpectedEOF), true},
		{"EOF", io.EOF, true},
		{"reset", &net.OpError{Op: "read", Err: syscall.ECONNRESET}, true},
		{"refused", syscall.ECONNREFUSED, true},
		{"admin shutdown", &pgconn.PgError{Code: "57P01"}, true},
		{"cannot connect now", &pgconn.PgError{Code: "57P03"}, true},
		{"connection failure", &pgconn.PgError{Code: "08006"}, true},
		{"too many connections", &pgconn.PgError{Code: "53300"}, true},
		{"serialization", &pgconn.PgError{Code: "40001"}, true},
		{"deadlock", &pgconn.PgError{Code: "40P01"}, true},
		{"unique violation", &pgconn.PgError{Code: "23505"}, false},
		{"syntax", &pgconn.PgError{Code: "42601"}, false},
		{"cancelled", context.Canceled, false},
		{"plain", errors.New("boom"), false},
	} {
		if got := IsRetryable(tc.err); got != tc.want {
			t.Errorf("%s: IsRetryable = %v, want %v", tc.name, got, tc.want)
		}
	}
	// dbErr maps a retryable error to UNAVAILABLE, not INTERNAL.
	if k := apperr.KindOf(dbErr(io.ErrUnexpectedEOF, "x")); k != apperr.KindUnavailable {
		t.Fatalf("dbErr(unexpected EOF) kind %v, want Unavailable", k)
	}
}

// TestNotWritten: only an abort by the database or a request that never
// reached it proves a write committed nothing; an answer lost after the
// request was sent (EOF, reset, timeout) does not.
func TestNotWritten(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"deadlock, as dbErr answers it", dbErr(&pgconn.PgError{Code: "40P01"}, "x"), true},
		{"serialization", &pgconn.PgError{Code: "40001"}, true},
		{"refused", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		{"cannot connect now", &pgconn.PgError{Code: "57P03"}, true},
		{"too many connections", dbErr(&pgconn.PgError{Code: "53300"}, "x"), true},
		{"unexpected EOF", dbErr(io.ErrUnexpectedEOF, "x"), false},
		{"reset", &net.OpError{Op: "read", Err: syscall.ECONNRESET}, false},
		{"deadline", dbErr(context.DeadlineExceeded, "x"), false},
		{"admin shutdown", &pgconn.PgError{Code: "57P01"}, false},
		{"unique violation", &pgconn.PgError{Code: "23505"}, false},
		{"plain", errors.New("boom"), false},
	} {
		if got := NotWritten(tc.err); got != tc.want {
			t.Errorf("%s: NotWritten = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestExpirePendingGrants(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		mustCreate(t, s, newProvider("a", "p1"))
		mustCreate(t, s, newProvider("b", "p2"))
		for _, p := range [][2]string{{"a", "p1"}, {"b", "p2"}} {
			_, err := s.SetGrantStatus(ctx, domain.TenantGrant(p[0], p[1]), []domain.AuthStatus{domain.StatusUnauthorized}, domain.StatusPending, "", 1)
			wantNoErr(t, err, "pending")
		}
		n, err := s.ExpirePendingGrants(ctx, time.Now().Add(-time.Hour), "FLOW_EXPIRED_OR_USED")
		wantNoErr(t, err, "expire recent")
		if n != 0 {
			t.Fatalf("recent PENDING grants expired: %d", n)
		}
		n, err = s.ExpirePendingGrants(ctx, time.Now().Add(time.Second), "FLOW_EXPIRED_OR_USED")
		wantNoErr(t, err, "expire")
		if n != 2 {
			t.Fatalf("expired %d grants, want 2 (across tenants)", n)
		}
		c, err := s.GetCredential(ctx, domain.TenantGrant("a", "p1"))
		wantNoErr(t, err, "get")
		if c.Status != domain.StatusUnauthorized || c.Reason != "FLOW_EXPIRED_OR_USED" {
			t.Fatalf("grant %v/%q, want UNAUTHORIZED/FLOW_EXPIRED_OR_USED", c.Status, c.Reason)
		}
	})
}

func TestRefreshLeaseBackoff(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		mustCreate(t, s, newProvider("a", "p1"))
		_, err := s.AcquireRefreshLease(ctx, domain.TenantGrant("a", "p1"), 1, "h1", time.Minute)
		wantNoErr(t, err, "acquire")
		// A stranger cannot turn the lease into a backoff.
		wantNoErr(t, s.BackoffRefreshLease(ctx, domain.TenantGrant("a", "p1"), "stranger", time.Minute), "stranger backoff")
		if _, err := s.AcquireRefreshLease(ctx, domain.TenantGrant("a", "p1"), 1, "h2", time.Minute); !errors.Is(err, ErrLeaseHeld) {
			t.Fatalf("acquire while held: %v, want ErrLeaseHeld", err)
		}
		// Long enough that both acquires below fall inside it on a loaded
		// machine (50 ms did not).
		wantNoErr(t, s.BackoffRefreshLease(ctx, domain.TenantGrant("a", "p1"), "h1", 2*time.Second), "backoff")
		for _, h := range []string{"h1", "h2"} {
			if _, err := s.AcquireRefreshLease(ctx, domain.TenantGrant("a", "p1"), 1, h, time.Minute); !errors.Is(err, ErrRefreshBackoff) {
				t.Fatalf("acquire by %s during the backoff: %v, want ErrRefreshBackoff", h, err)
			}
		}
		time.Sleep(2100 * time.Millisecond)
		got, err := s.AcquireRefreshLease(ctx, domain.TenantGrant("a", "p1"), 1, "h2", time.Minute)
		wantNoErr(t, err, "acquire after the backoff")
		if got.TookOver {
			t.Fatal("a backoff that ended reported as a takeover (nobody spent the token)")
		}
	})
}
