package repository

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"gorm.io/gorm"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/internal/testenv"
)

// documentedRefusal reports whether err is one of the answers a credential
// writer documents for a lost race: Aborted for a credential changed
// meanwhile (a compare-and-swap that matched no row, carrying no database
// error), or FailedPrecondition PROVIDER_CHANGED. A transaction the
// database aborted (a deadlock, a serialization failure) carries its
// PostgreSQL error and is not one.
func documentedRefusal(err error) bool {
	e, ok := apperr.As(err)
	if !ok {
		return false
	}
	switch e.Kind {
	case apperr.KindAborted:
		return e.Err == nil
	case apperr.KindFailedPrecondition:
		return e.Reason == domain.ReasonProviderChanged
	}
	return false
}

// TestCredentialWritersDoNotDeadlock drives every credential writer at once
// on the same grants (two users' grants of one USER provider, from two
// stores as two replicas do on PostgreSQL), with provider updates that reset the grants
// in between: on PostgreSQL a writer that locked the provider row first
// and one that wrote the credential row first used to deadlock (40P01),
// and the loser's tokens were neither stored nor refused as a lost race.
// Every write either stores or is refused as documented, and what is
// stored stays consistent: a grant's generations never repeat and only
// grow, and providers.cred_generation is never behind a credential's.
func TestCredentialWritersDoNotDeadlock(t *testing.T) {
	t.Parallel()
	testenv.Backends(t, func(t *testing.T, dsn string) {
		// On PostgreSQL two stores, as two replicas; a SQLite file is one
		// process's, written through its one connection.
		a := openStore(t, dsn)
		b := a
		if isPostgres(dsn) {
			b = openStore(t, dsn)
		}
		ctx := context.Background()
		p := newProvider("a", "p1")
		p.GrantScope = domain.ScopeUser
		mustCreate(t, a, p)
		users := []string{"alice", "bob"}
		var (
			mu     sync.Mutex
			stored = map[string][]int64{}
		)
		// write is one writer: it reads the grant (and, at the provider,
		// the provider's version) and writes over what it read.
		write := func(s *Store, user string, atProvider bool) error {
			ref := domain.GrantRef{Tenant: "a", Provider: "p1", User: user}
			var expected int64
			switch c, err := s.GetCredential(ctx, ref); {
			case err == nil:
				expected = c.Generation
			case !isKind(err, apperr.KindNotFound):
				return err
			}
			c := newCredential("a", "p1", "tokens-"+user)
			c.UserID = user
			var (
				gen int64
				err error
			)
			if atProvider {
				row, gerr := s.GetProvider(ctx, "a", "p1")
				if gerr != nil {
					return gerr
				}
				gen, err = s.PutCredentialAtProvider(ctx, c, expected, row.Version)
			} else {
				gen, err = s.PutCredential(ctx, c, expected)
			}
			if err == nil {
				mu.Lock()
				stored[user] = append(stored[user], gen)
				mu.Unlock()
			}
			return err
		}
		// reset is an update that moves the provider to another server:
		// the provider row first, then its grants.
		reset := func(s *Store) error {
			row, err := s.GetProvider(ctx, "a", "p1")
			if err != nil {
				return err
			}
			err = s.UpdateProviderResettingCredentials(ctx, row, row.Version)
			if isKind(err, apperr.KindAborted) {
				return nil // another update won: documented
			}
			return err
		}
		const rounds = 60
		var last map[string]int64
		for round := range rounds {
			var (
				wg    sync.WaitGroup
				start = make(chan struct{})
				errs  = make(chan error, 16)
			)
			run := func(fn func() error) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					errs <- fn()
				}()
			}
			for _, user := range users {
				for _, s := range []*Store{a, b} {
					run(func() error { return write(s, user, true) })
					run(func() error { return write(s, user, false) })
				}
			}
			if round%10 == 5 {
				run(func() error { return reset(b) })
			}
			close(start)
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil && !documentedRefusal(err) {
					t.Fatalf("round %d: a credential writer failed otherwise than a documented lost race: %v", round, err)
				}
			}
			checkCredGeneration(t, a)
			// A grant's generations only grow, round after round.
			now := map[string]int64{}
			for _, user := range users {
				if g := slices.Max(append([]int64{0}, stored[user]...)); g > 0 {
					now[user] = g
					if g < last[user] {
						t.Fatalf("round %d: %s's generation went back from %d to %d", round, user, last[user], g)
					}
				}
			}
			last = now
		}
		for _, user := range users {
			gens := slices.Clone(stored[user])
			if len(gens) == 0 {
				t.Fatalf("no write of %s's grant was ever stored", user)
			}
			slices.Sort(gens)
			if d := slices.Compact(slices.Clone(gens)); len(d) != len(gens) {
				t.Fatalf("%s's grant stored a generation twice: %v", user, gens)
			}
			c, err := a.GetCredential(ctx, domain.GrantRef{Tenant: "a", Provider: "p1", User: user})
			wantNoErr(t, err, "GetCredential(%s)", user)
			if c.Generation != gens[len(gens)-1] {
				t.Fatalf("%s's stored generation %d, want the last stored %d", user, c.Generation, gens[len(gens)-1])
			}
		}
	})
}

// checkCredGeneration fails unless the provider a/p1's cred_generation is
// at least every generation of its credentials.
func checkCredGeneration(tb testing.TB, s *Store) {
	tb.Helper()
	var provider, credential int64
	wantNoErr(tb, s.DB().Raw(`SELECT cred_generation FROM providers WHERE tenant_id = 'a' AND id = 'p1'`).Scan(&provider).Error, "cred_generation")
	wantNoErr(tb, s.DB().Raw(`SELECT COALESCE(MAX(generation), 0) FROM credentials WHERE tenant_id = 'a' AND provider_id = 'p1'`).Scan(&credential).Error, "generation")
	if provider < credential {
		tb.Fatalf("providers.cred_generation %d is behind a credential's generation %d", provider, credential)
	}
}

// TestCredentialWritersLockTheProviderFirst: every writer that takes the
// provider row (to raise or continue its cred_generation, or to check its
// version) takes it before the credential row. A transaction holds the
// provider row as PutCredentialAtProvider does; each writer started
// meanwhile must wait for it before touching the credential, so when the
// holder then writes the grant and commits, the writer sees a lost race
// (or, for SetGrantStatus, a row that is already there). A writer that
// took the credential row first and then waited on the provider used to
// deadlock with the holder: PostgreSQL aborted one of them (40P01).
func TestCredentialWritersLockTheProviderFirst(t *testing.T) {
	t.Parallel()
	writers := []struct {
		name string
		// existing is whether the grant holds a credential before.
		existing bool
		write    func(ctx context.Context, s *Store, gen, version int64) error
	}{
		{"PutCredential update", true, func(ctx context.Context, s *Store, gen, _ int64) error {
			_, err := s.PutCredential(ctx, newCredential("a", "p1", "late"), gen)
			return err
		}},
		{"PutCredential insert", false, func(ctx context.Context, s *Store, _, _ int64) error {
			_, err := s.PutCredential(ctx, newCredential("a", "p1", "late"), 0)
			return err
		}},
		{"PutCredentialAtProvider update", true, func(ctx context.Context, s *Store, gen, version int64) error {
			_, err := s.PutCredentialAtProvider(ctx, newCredential("a", "p1", "late"), gen, version)
			return err
		}},
		{"SetGrantStatus insert", false, func(ctx context.Context, s *Store, _, _ int64) error {
			changed, err := s.SetGrantStatus(ctx, domain.TenantGrant("a", "p1"), []domain.AuthStatus{domain.StatusUnauthorized}, domain.StatusPending, "", 1)
			if err == nil && changed {
				return fmt.Errorf("SetGrantStatus changed a grant the holder wrote first")
			}
			return err
		}},
	}
	for _, w := range writers {
		t.Run(w.name, func(t *testing.T) {
			t.Parallel()
			onPostgresWithProvider(t, func(t *testing.T, s *Store, p *Provider) {
				ctx := context.Background()
				var gen int64
				if w.existing {
					var err error
					gen, err = s.PutCredential(ctx, newCredential("a", "p1", "first"), 0)
					wantNoErr(t, err, "first put")
				}
				// The holder: the provider row locked as
				// PutCredentialAtProvider locks it, held open.
				tx := s.DB().WithContext(ctx).Begin()
				wantNoErr(t, tx.Error, "begin")
				defer tx.Rollback()
				var holder, credGen int64
				wantNoErr(t, tx.Raw(`SELECT pg_backend_pid()`).Scan(&holder).Error, "pg_backend_pid")
				wantNoErr(t, tx.Raw(`SELECT cred_generation FROM providers WHERE tenant_id = 'a' AND id = 'p1' FOR NO KEY UPDATE`).Scan(&credGen).Error, "lock provider")

				done := make(chan error, 1)
				var finished atomic.Bool
				go func() {
					err := w.write(ctx, s, gen, p.Version)
					finished.Store(true)
					done <- err
				}()
				waitBlockedBy(t, s, holder, &finished)

				// The holder writes the grant, as PutCredentialAtProvider
				// does after the lock, and commits.
				next := credGen + 1
				if w.existing {
					wantNoErr(t, tx.Exec(`UPDATE credentials SET generation = ?, tokens = ? WHERE tenant_id = 'a' AND provider_id = 'p1' AND user_id = '' AND generation = ?`,
						next, []byte("holder"), gen).Error, "holder's credential update")
				} else {
					c := newCredential("a", "p1", "holder")
					c.Generation, c.CreatedAt, c.UpdatedAt = next, time.Now().UTC(), time.Now().UTC()
					wantNoErr(t, tx.Create(c).Error, "holder's credential insert")
				}
				wantNoErr(t, tx.Exec(`UPDATE providers SET cred_generation = ? WHERE tenant_id = 'a' AND id = 'p1'`, next).Error, "holder's cred_generation")
				wantNoErr(t, tx.Commit().Error, "holder's commit")

				if err := <-done; err != nil && !documentedRefusal(err) {
					var pgErr *pgconn.PgError
					if errors.As(err, &pgErr) {
						t.Fatalf("%s waited on the credential while holding it from the provider's holder: %v (SQLSTATE %s)", w.name, err, pgErr.Code)
					}
					t.Fatalf("%s: %v", w.name, err)
				}
				c, err := s.GetCredential(ctx, domain.TenantGrant("a", "p1"))
				wantNoErr(t, err, "GetCredential")
				if string(c.Tokens) != "holder" || c.Generation != next {
					t.Fatalf("stored %q generation %d, want the holder's (generation %d)", c.Tokens, c.Generation, next)
				}
				checkCredGeneration(t, s)
			})
		})
	}
}

// TestSetGrantStatusLocksTheProviderBeforeTheCredential: SetGrantStatus
// from UNAUTHORIZED (which may create the row, and then raises the
// provider's cred_generation) takes the provider row before its UPDATE of
// the credential. On PostgreSQL's READ COMMITTED an UPDATE that waited on
// a concurrent writer locks the newest row version before rechecking its
// WHERE, and keeps that lock when the recheck fails: one that then asked
// for the provider row waited on it while holding the credential row.
// Here the credential is UNAUTHORIZED; holder one holds the provider and
// authorizes the grant; SetGrantStatus starts, then holder two asks for
// the provider (as PutCredential does) and then writes the credential.
// SetGrantStatus taking the credential first deadlocked with holder two
// (40P01).
func TestSetGrantStatusLocksTheProviderBeforeTheCredential(t *testing.T) {
	t.Parallel()
	onPostgresWithProvider(t, func(t *testing.T, s *Store, _ *Provider) {
		ctx := context.Background()
		c := newCredential("a", "p1", "")
		c.Status = domain.StatusUnauthorized
		_, err := s.PutCredential(ctx, c, 0)
		wantNoErr(t, err, "unauthorized grant")
		begin := func(name string) (*gorm.DB, int64) {
			tx := s.DB().WithContext(ctx).Begin()
			wantNoErr(t, tx.Error, "%s begin", name)
			t.Cleanup(func() { tx.Rollback() })
			var pid int64
			wantNoErr(t, tx.Raw(`SELECT pg_backend_pid()`).Scan(&pid).Error, "%s pg_backend_pid", name)
			return tx, pid
		}
		const lockProvider = `SELECT cred_generation FROM providers WHERE tenant_id = 'a' AND id = 'p1' FOR NO KEY UPDATE`
		const writeGrant = `UPDATE credentials SET status = ?, generation = generation + 1 WHERE tenant_id = 'a' AND provider_id = 'p1' AND user_id = ''`
		one, holder := begin("holder one")
		var credGen int64
		wantNoErr(t, one.Raw(lockProvider).Scan(&credGen).Error, "holder one: lock provider")
		wantNoErr(t, one.Exec(writeGrant, domain.StatusAuthorized).Error, "holder one: authorize")

		done := make(chan error, 1)
		var finished atomic.Bool
		go func() {
			_, err := s.SetGrantStatus(ctx, domain.TenantGrant("a", "p1"), []domain.AuthStatus{domain.StatusUnauthorized}, domain.StatusPending, "", 1)
			finished.Store(true)
			done <- err
		}()
		waitBlockedBy(t, s, holder, &finished)

		two, second := begin("holder two")
		twoDone := make(chan error, 1)
		go func() {
			var g int64
			if err := two.Raw(lockProvider).Scan(&g).Error; err != nil {
				twoDone <- err
				return
			}
			if err := two.Exec(writeGrant, domain.StatusAuthorized).Error; err != nil {
				twoDone <- err
				return
			}
			twoDone <- two.Commit().Error
		}()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			var n int64
			wantNoErr(t, s.DB().Raw(`SELECT count(*) FROM pg_stat_activity WHERE pid = ? AND wait_event_type = 'Lock'`, second).Scan(&n).Error, "pg_stat_activity")
			if n > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("holder two never waited for the provider row")
			}
		}
		wantNoErr(t, one.Commit().Error, "holder one: commit")

		if err := <-done; err != nil {
			t.Errorf("SetGrantStatus: %v", err)
		}
		if err := <-twoDone; err != nil {
			t.Errorf("holder two: %v", err)
		}
		got, err := s.GetCredential(ctx, domain.TenantGrant("a", "p1"))
		wantNoErr(t, err, "GetCredential")
		if got.Status != domain.StatusAuthorized {
			t.Errorf("status %v, want AUTHORIZED: the grant was authorized before SetGrantStatus could move it", got.Status)
		}
	})
}

// onPostgresWithProvider runs f on PostgreSQL with a store holding the
// provider a/p1. SQLite is skipped: its write transactions are exclusive,
// there is no row lock order to check.
func onPostgresWithProvider(t *testing.T, f func(t *testing.T, s *Store, p *Provider)) {
	testenv.Backends(t, func(t *testing.T, dsn string) {
		if !isPostgres(dsn) {
			t.Skip("SQLite's write transactions are exclusive: there is no row lock order to check")
		}
		s := openStore(t, dsn)
		f(t, s, mustCreate(t, s, newProvider("a", "p1")))
	})
}

// waitBlockedBy waits until a statement of s waits for a lock the
// PostgreSQL backend holder holds (as Gitaly's WaitForBlockedQuery), and
// fails when the writer finished first or never blocked.
func waitBlockedBy(tb testing.TB, s *Store, holder int64, finished *atomic.Bool) {
	tb.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if finished.Load() {
			tb.Fatal("the writer did not wait for the transaction holding the provider row")
		}
		if time.Now().After(deadline) {
			tb.Fatal("the writer never blocked on the provider row")
		}
		var n int64
		wantNoErr(tb, s.DB().Raw(`SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND ? = ANY(pg_blocking_pids(pid))`, holder).Scan(&n).Error, "pg_stat_activity")
		if n > 0 {
			return
		}
	}
}

// TestCredentialUpdateNotRaisingDoesNotQueue: an update of one of a USER
// provider's grants whose new generation does not raise the provider's
// cred_generation takes no provider lock: it completes while another
// transaction holds the provider row, so refreshes of many users' grants
// do not queue on their provider.
func TestCredentialUpdateNotRaisingDoesNotQueue(t *testing.T) {
	t.Parallel()
	dsn := testenv.PostgresDSN(t)
	ctx := context.Background()
	s := openStore(t, dsn)
	p := newProvider("a", "p1")
	p.GrantScope = domain.ScopeUser
	mustCreate(t, s, p)
	gens := map[string]int64{}
	for _, user := range []string{"alice", "bob", "carol"} {
		c := newCredential("a", "p1", user)
		c.UserID = user
		g, err := s.PutCredential(ctx, c, 0)
		wantNoErr(t, err, "put %s", user)
		gens[user] = g
	}
	tx := s.DB().WithContext(ctx).Begin()
	wantNoErr(t, tx.Error, "begin")
	defer tx.Rollback()
	wantNoErr(t, tx.Exec(`SELECT 1 FROM providers WHERE tenant_id = 'a' AND id = 'p1' FOR NO KEY UPDATE`).Error, "lock provider")

	// A hang guard, not a measure: the write must not wait for tx at all.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c := newCredential("a", "p1", "alice refreshed")
	c.UserID = "alice"
	g, err := s.PutCredential(wctx, c, gens["alice"])
	wantNoErr(t, err, "alice's refresh while the provider row is held")
	if g != gens["alice"]+1 || g > gens["carol"] {
		t.Fatalf("alice's generation %d, want %d (not beyond carol's %d)", g, gens["alice"]+1, gens["carol"])
	}
	wantNoErr(t, tx.Commit().Error, "commit")
	checkCredGeneration(t, s)
}

// TestDatabaseAbortIsAborted: a transaction PostgreSQL aborts to break a
// deadlock (40P01, here two transactions taking two providers' rows in
// opposite orders) or a serialization conflict (40001) is apperr.Aborted,
// retryable as it is, with the database's error as its cause; a lost
// compare-and-swap is Aborted without one and not retryable as it is.
func TestDatabaseAbortIsAborted(t *testing.T) {
	t.Parallel()
	s := openStore(t, testenv.PostgresDSN(t))
	ctx := context.Background()
	mustCreate(t, s, newProvider("a", "p1"))
	mustCreate(t, s, newProvider("a", "p2"))
	lock := func(tx *gorm.DB, id string) error {
		return tx.Exec(`UPDATE providers SET cred_generation = cred_generation + 1 WHERE tenant_id = 'a' AND id = ?`, id).Error
	}
	one, two := s.DB().WithContext(ctx).Begin(), s.DB().WithContext(ctx).Begin()
	defer one.Rollback()
	defer two.Rollback()
	wantNoErr(t, lock(one, "p1"), "one locks p1")
	wantNoErr(t, lock(two, "p2"), "two locks p2")
	var holder int64
	wantNoErr(t, two.Raw(`SELECT pg_backend_pid()`).Scan(&holder).Error, "pg_backend_pid")
	done := make(chan error, 1)
	var finished atomic.Bool
	go func() {
		err := lock(one, "p2")
		finished.Store(true)
		done <- err
	}()
	waitBlockedBy(t, s, holder, &finished)
	errs := []error{lock(two, "p1"), <-done}
	var deadlock error
	for _, err := range errs {
		if err != nil {
			deadlock = err
		}
	}
	var pgErr *pgconn.PgError
	if !errors.As(deadlock, &pgErr) || pgErr.Code != "40P01" {
		t.Fatalf("two transactions taking two rows in opposite orders: %v, want deadlock_detected (40P01)", deadlock)
	}
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"deadlock", deadlock},
		{"serialization failure", &pgconn.PgError{Code: "40001"}},
	} {
		err := dbErr(tc.err, "put credential")
		e, ok := apperr.As(err)
		if !ok || e.Kind != apperr.KindAborted || !IsRetryable(err) || documentedRefusal(err) {
			t.Errorf("%s: dbErr = %v (%T), want Aborted, retryable, with its cause", tc.name, err, err)
		}
	}
	if err := credentialChanged(); IsRetryable(err) || !documentedRefusal(err) {
		t.Errorf("a lost compare-and-swap %v is retryable as it is or carries a cause", err)
	}
}
