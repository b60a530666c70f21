//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package repository

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// leadDir is a temporary directory by its resolved path (the lock file is
// named after the database file's).
func leadDir(tb testing.TB) string {
	tb.Helper()
	dir, err := filepath.EvalSymlinks(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	return dir
}

// leads reports whether s leads the fan-out at now (checking its lock
// file when its last check is older than the ping).
func leads(tb testing.TB, s *Store, now time.Time) bool {
	tb.Helper()
	lead, err := s.leadFanOut(context.Background(), now, fanOutLeadPing)
	wantNoErr(tb, err, "leadFanOut")
	return lead
}

// lockedElsewhere reports whether the file at path is locked by another
// open file description than a new one of this test.
func lockedElsewhere(tb testing.TB, path string) bool {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	err = flock(f, syscall.LOCK_EX|syscall.LOCK_NB)
	if err != nil && !errors.Is(err, syscall.EWOULDBLOCK) {
		tb.Fatal(err)
	}
	return err != nil
}

// wantLeaseAlone fails unless s has no lead because of a problem, and
// still fans out under the lease alone.
func wantLeaseAlone(tb testing.TB, s *Store) {
	tb.Helper()
	if mode, problem := s.FanOutLeadMode(); !strings.HasPrefix(mode, "lease alone (") || !problem {
		tb.Fatalf("FanOutLeadMode = %q, %v; want the lease alone because of a problem", mode, problem)
	}
	if s.hasFanOutLead() {
		tb.Fatal("the Store has a fan-out lead")
	}
	now := time.Now().UTC()
	createEndpoint(tb, s, now)
	uids := appendEvents(tb, s, "p")
	if _, ds := leaseAll(tb, s, "a", 1, now); len(ds) != 1 || ds[0].EventUID != uids[0] {
		tb.Fatalf("leased %v, want %v", uidsOf(ds), uids)
	}
}

// TestFanOutLeaseAloneWithoutLockFile: when the lock file beside a SQLite
// file cannot be opened, the Store has no lead, says so, and fans out
// under the lease alone instead of failing.
func TestFanOutLeaseAloneWithoutLockFile(t *testing.T) {
	t.Parallel()
	dsn := filepath.Join(leadDir(t), "mcpauth.db")
	// A directory where the lock file would be: no process can open it
	// for writing.
	if err := os.Mkdir(dsn+leadFileSuffix, 0o700); err != nil {
		t.Fatal(err)
	}
	wantLeaseAlone(t, openStore(t, dsn))
}

// TestFanOutLeadOneLockFilePerDatabase: the database reached under two
// names (a symlink, a relative path) has one lock file, so one lead.
func TestFanOutLeadOneLockFilePerDatabase(t *testing.T) {
	t.Parallel()
	dir := leadDir(t)
	dsn := filepath.Join(dir, "mcpauth.db")
	sa := openStore(t, dsn)
	if err := os.Symlink("mcpauth.db", filepath.Join(dir, "current.db")); err != nil {
		t.Fatal(err)
	}
	sb := openStore(t, filepath.Join(dir, "current.db"))
	// Through a symlinked directory, relative to the working directory.
	link := filepath.Join(leadDir(t), "data")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(wd, filepath.Join(link, "mcpauth.db"))
	if err != nil {
		t.Fatal(err)
	}
	sc := openStore(t, rel)
	now := time.Now().UTC()
	if !leads(t, sa, now) {
		t.Fatal("a does not lead alone")
	}
	for name, s := range map[string]*Store{"current.db": sb, rel: sc} {
		if leads(t, s, now) {
			t.Errorf("the Store on %s leads beside the one on mcpauth.db", name)
		}
		if mode, _ := s.FanOutLeadMode(); mode != "lead by lock file "+dsn+leadFileSuffix {
			t.Errorf("the Store on %s: %q, want the lock file beside %s", name, mode, dsn)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "current.db"+leadFileSuffix)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a lock file beside the symlink: %v", err)
	}
}

// TestFanOutClosedStoreDoesNotLead: a closed Store never takes the lead
// again (nor reopens its lock file): another Store on the file leads.
func TestFanOutClosedStoreDoesNotLead(t *testing.T) {
	t.Parallel()
	dsn := filepath.Join(leadDir(t), "mcpauth.db")
	sa := openStore(t, dsn)
	now := time.Now().UTC()
	if !leads(t, sa, now) {
		t.Fatal("a does not lead alone")
	}
	wantNoErr(t, sa.Close(), "Close")
	b, err := sa.LeaseFanOut(context.Background(), "a", now.Add(time.Second), time.Minute, FanOutRead{Limit: 500}, nil)
	if b != nil {
		t.Fatalf("a closed Store leased %v (%v)", b, err)
	}
	if lead, err := sa.leadFanOut(context.Background(), now.Add(time.Second), 0); lead || err != nil {
		t.Fatalf("a closed Store: lead %v, %v", lead, err)
	}
	if lockedElsewhere(t, dsn+leadFileSuffix) {
		t.Fatal("the lock file is locked after its Store closed")
	}
	if sb := openStore(t, dsn); !leads(t, sb, now.Add(time.Second)) {
		t.Fatal("another Store does not lead once the first one closed")
	}
}

// TestFanOutLockFileUntrusted: a symlink at the lock file's path (dangling
// or not) is not followed, and a file others may use is not taken: the
// Store has no lead, says so, and fans out under the lease alone.
func TestFanOutLockFileUntrusted(t *testing.T) {
	t.Parallel()
	for name, plant := range map[string]func(t *testing.T, lock string){
		"dangling symlink": func(t *testing.T, lock string) {
			target := filepath.Join(filepath.Dir(lock), "elsewhere")
			if err := os.Symlink(target, lock); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the symlink's target was created: %v", err)
				}
			})
		},
		"symlink to a file": func(t *testing.T, lock string) {
			target := filepath.Join(filepath.Dir(lock), "elsewhere")
			wantNoErr(t, os.WriteFile(target, nil, 0o600), "WriteFile")
			if err := os.Symlink(target, lock); err != nil {
				t.Fatal(err)
			}
		},
		"mode 0666": func(t *testing.T, lock string) {
			wantNoErr(t, os.WriteFile(lock, nil, 0o600), "WriteFile")
			wantNoErr(t, os.Chmod(lock, 0o666), "Chmod")
		},
		"another user's": func(t *testing.T, lock string) {
			if os.Geteuid() != 0 {
				t.Skip("only root gives a file away")
			}
			wantNoErr(t, os.WriteFile(lock, nil, 0o600), "WriteFile")
			wantNoErr(t, os.Chown(lock, 65534, 65534), "Chown")
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dsn := filepath.Join(leadDir(t), "mcpauth.db")
			plant(t, dsn+leadFileSuffix)
			wantLeaseAlone(t, openStore(t, dsn))
		})
	}
}

// TestFanOutLockFileOpenedAtFirstLead: opening (and migrating) a Store
// creates no lock file, as a one-shot command does; the first lead does.
func TestFanOutLockFileOpenedAtFirstLead(t *testing.T) {
	t.Parallel()
	dsn := filepath.Join(leadDir(t), "mcpauth.db")
	s := openStore(t, dsn)
	if _, err := os.Lstat(dsn + leadFileSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a lock file after Open and Migrate: %v", err)
	}
	if mode, problem := s.FanOutLeadMode(); mode != "lead by lock file "+dsn+leadFileSuffix || problem {
		t.Fatalf("FanOutLeadMode = %q, %v", mode, problem)
	}
	fi, err := os.Lstat(dsn + leadFileSuffix)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lock file %v, %v; want a regular file, mode 0600", fi, err)
	}
}

// TestFanOutLockFileReplaced: a lock file removed or replaced while its
// Store leads: another Store locks the new file and leads at its next
// check (it had the old one open, not leading), the old holder stops
// leading at its own, and from then on one Store leads.
func TestFanOutLockFileReplaced(t *testing.T) {
	t.Parallel()
	for name, replace := range map[string]func(t *testing.T, lock string){
		"removed": func(t *testing.T, lock string) { wantNoErr(t, os.Remove(lock), "Remove") },
		"replaced": func(t *testing.T, lock string) {
			wantNoErr(t, os.WriteFile(lock+".new", nil, 0o600), "WriteFile")
			wantNoErr(t, os.Rename(lock+".new", lock), "Rename")
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dsn := filepath.Join(leadDir(t), "mcpauth.db")
			sa, sb := openStore(t, dsn), openStore(t, dsn)
			now := time.Now().UTC()
			if !leads(t, sa, now) || leads(t, sb, now) {
				t.Fatal("not a alone leads at first")
			}
			replace(t, dsn+leadFileSuffix)
			// At b's next check of its (old) lock file.
			if !leads(t, sb, now.Add(fanOutLeadPing)) {
				t.Fatal("b does not lead on the new lock file")
			}
			for i := 1; i <= 3; i++ {
				at := now.Add(time.Duration(i) * fanOutLeadPing)
				la, lb := leads(t, sa, at), leads(t, sb, at)
				if la || !lb {
					t.Fatalf("after %d checks: a leads %v, b leads %v; want b alone", i, la, lb)
				}
			}
			if !lockedElsewhere(t, dsn+leadFileSuffix) {
				t.Fatal("the lock file on disk is not locked by the lead")
			}
		})
	}
}

// TestFanOutLockFileFailsLater: a lock file that cannot be opened when
// its Store checks it again (replaced by a directory) leaves the Store
// with the lease alone: one step fails, saying why, and the fan-out goes
// on instead of failing every step.
func TestFanOutLockFileFailsLater(t *testing.T) {
	t.Parallel()
	dsn := filepath.Join(leadDir(t), "mcpauth.db")
	s := openStore(t, dsn)
	now := time.Now().UTC()
	createEndpoint(t, s, now)
	uids := appendEvents(t, s, "p")
	if !leads(t, s, now) {
		t.Fatal("the Store does not lead alone")
	}
	lock := dsn + leadFileSuffix
	wantNoErr(t, os.Remove(lock), "Remove")
	wantNoErr(t, os.Mkdir(lock, 0o700), "Mkdir")
	later := now.Add(fanOutLeadPing)
	if _, err := s.LeaseFanOut(context.Background(), "a", later, time.Minute, FanOutRead{Limit: 500}, nil); err == nil ||
		!strings.Contains(err.Error(), "lease alone") || !strings.Contains(err.Error(), lock) {
		t.Fatalf("LeaseFanOut when the lead was lost to an unusable lock file: %v, want the lease alone and why", err)
	}
	if _, ds := leaseAll(t, s, "a", 1, later); len(ds) != 1 || ds[0].EventUID != uids[0] {
		t.Fatalf("leased %v, want %v", uidsOf(ds), uids)
	}
	if mode, problem := s.FanOutLeadMode(); !strings.HasPrefix(mode, "lease alone (") || !problem {
		t.Fatalf("FanOutLeadMode = %q, %v", mode, problem)
	}
}
