//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package repository

import (
	"errors"
	"os"
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
	checked time.Time // when f was last found to be the file at path
}

// flockLead reports whether a SQLite file has a fan-out lead here.
const flockLead = true

// leadFileSuffix names the lock file: <database file>.fanout-lead.
const leadFileSuffix = ".fanout-lead"

// openLeadFile opens the lock file of the SQLite file dbPath and checks
// that flock works on it, without keeping the lock. It returns nil (no
// lead: the lease alone decides) when dbPath is "" (an in-memory
// database), and also when the lock file cannot be opened (a read-only
// directory) or locked (a file system without flock): the fan-out then
// goes on as it would without a lead, its takeovers bounded by the lease,
// rather than stopping.
func openLeadFile(dbPath string) *leadFile {
	if dbPath == "" {
		return nil
	}
	path := dbPath + leadFileSuffix
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil
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
		return nil
	}
	return &leadFile{path: path, f: f}
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
	}
	if l.f == nil {
		f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE, 0o600)
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

// current reports whether the open lock file is still the one at path.
func (l *leadFile) current() bool {
	onDisk, err := os.Stat(l.path)
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
