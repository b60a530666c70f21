//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package repository

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// leadFile is the lead of the fan-out on a SQLite file (fanOutLead): an
// exclusive, non-blocking flock on a lock file beside the database, held
// on a descriptor the Store keeps open. The kernel releases the lock when
// the descriptor closes, so when the process dies. A flock belongs to the
// open file description: two Stores of one process, each with its own
// descriptor, exclude each other as two processes do.
//
// The caller (fanOutLead's mutex) serialises the methods.
type leadFile struct {
	path    string
	f       *os.File  // nil once closed (reopened at the next lead)
	held    bool      // f holds the lock
	checked time.Time // when f was last found to be the file at path (held or not)
}

// flockLead reports whether a SQLite file has a fan-out lead here.
const flockLead = true

// leadFilePath names the lock file of the SQLite file dbPath after the
// file's resolved, absolute path (its directory's, and its base name,
// while it does not exist), so that every name of one database gives one
// lock file.
func leadFilePath(dbPath string) (string, error) {
	abs, err := filepath.Abs(dbPath)
	if err != nil {
		return "", fmt.Errorf("lock file: %w", err)
	}
	resolved, err := filepath.EvalSymlinks(abs)
	if errors.Is(err, fs.ErrNotExist) {
		var dir string
		if dir, err = filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
			resolved = filepath.Join(dir, filepath.Base(abs))
		}
	}
	if err != nil {
		return "", fmt.Errorf("lock file: %w", err)
	}
	return resolved + leadFileSuffix, nil
}

// openLeadFile opens the lock file at path, creating it, and checks that
// it can be trusted and that flock works on it, without keeping the lock.
// It does not follow a symlink at path, and it takes only a regular file
// of the effective user that no one else may read or write: another
// user's file could be held locked for ever, or removed and replaced. On
// an error the Store has no lead (the lease alone decides).
func openLeadFile(path string) (*leadFile, error) {
	f, err := openLockFile(path)
	if err != nil {
		return nil, err
	}
	switch err := flock(f, syscall.LOCK_EX|syscall.LOCK_NB); {
	case err == nil:
		// Opening does not lead: the Store leads once it fans out.
		if flock(f, syscall.LOCK_UN) != nil {
			_ = f.Close()
			f = nil
		}
	case errors.Is(err, syscall.EWOULDBLOCK):
		// Another Store leads: flock works here.
	default:
		_ = f.Close()
		return nil, &os.PathError{Op: "flock", Path: path, Err: err}
	}
	return &leadFile{path: path, f: f}, nil
}

// openLockFile opens (creating) the lock file at path, not through a
// symlink, and returns it if it is a regular file of the effective user
// without permission bits for group or others.
func openLockFile(path string) (*os.File, error) {
	// os.OpenFile adds O_CLOEXEC: a child process does not inherit the
	// lock.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		err = errors.New("not a regular file")
	case !ok || int64(st.Uid) != int64(os.Geteuid()):
		err = errors.New("owned by another user")
	case fi.Mode().Perm()&0o077 != 0:
		err = fmt.Errorf("mode %v: group or others may use it", fi.Mode().Perm())
	}
	if err != nil {
		_ = f.Close()
		return nil, &os.PathError{Op: "lock file", Path: path, Err: err}
	}
	return f, nil
}

// lead reports whether this Store leads, taking the lock when nobody holds
// it. A lock held longer than maxAge since its last check is checked
// first: were the lock file removed or replaced, another process could
// lock the new one, so the old one is given up and the new one tried.
func (l *leadFile) lead(now time.Time, maxAge time.Duration) (bool, error) {
	if l.held {
		if now.Sub(l.checked) < maxAge {
			return true, nil
		}
		if l.current() {
			l.checked = now
			return true, nil
		}
		l.close()
	} else if l.f != nil && now.Sub(l.checked) >= maxAge {
		// Not leading on a file that may have been replaced: were the
		// lead to die, this Store would lock the old file while a new
		// one locks the file on disk.
		if !l.current() {
			l.close()
		} else {
			l.checked = now
		}
	}
	if l.f == nil {
		f, err := openLockFile(l.path)
		if err != nil {
			return false, err
		}
		l.f = f
	}
	if err := flock(l.f, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil // another Store leads
		}
		return false, &os.PathError{Op: "flock", Path: l.path, Err: err}
	}
	if !l.current() {
		// Replaced between its opening and the lock: the next step opens
		// the new one.
		l.close()
		return false, nil
	}
	l.held, l.checked = true, now
	return true, nil
}

// current reports whether the open lock file is still the one at path (a
// symlink put there is not).
func (l *leadFile) current() bool {
	onDisk, err := os.Lstat(l.path)
	if err != nil {
		return false
	}
	open, err := l.f.Stat()
	return err == nil && os.SameFile(onDisk, open)
}

// drop gives the lead up, keeping the file open.
func (l *leadFile) drop() {
	if !l.held {
		return
	}
	l.held = false
	if flock(l.f, syscall.LOCK_UN) != nil {
		l.close() // closing releases it for sure
	}
}

// close closes the lock file, releasing the lock as a dying process does.
func (l *leadFile) close() {
	if l.f != nil {
		_ = l.f.Close()
	}
	l.f, l.held = nil, false
}

// flock applies how to f, again when interrupted by a signal.
func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}
