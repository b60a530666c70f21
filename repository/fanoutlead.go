package repository

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"sync"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
)

// fanOutLead is a Store's hold on the lead of the webhook fan-out. Only
// the lead fans out, and it takes over at once a live lease of an owner
// that no longer leads: the lead is held by something the operating
// system or the database server gives up the moment the holding process
// dies (kill -9, OOM, a lost node), so that another replica, or the
// restarted process, takes the lead at its next step and with it the dead
// owner's lease, instead of waiting for the lease to end. The lease row
// (LeaseFanOut, RecordFanOut) still fences the records: an owner that lost
// its lead while sending cannot record after the new lead took its lease
// over, and its sends are repeated (at least once).
//
// On PostgreSQL the lead is a session-level advisory lock, named after the
// schema, on a connection of its own; the server releases it when that
// connection closes. The lock needs a session of its own: behind a pooler
// in transaction mode (PgBouncer) it does not hold, and the README says
// so.
//
// On a SQLite file it is an exclusive flock on a lock file beside the
// database (leadFile, leadfile_flock.go), which the kernel releases when
// the process dies. The lock file is named after the database file's
// resolved, absolute path, so that the database reached under two names
// (a symlink, a relative path) has one lead; it is opened at the first
// fan-out step (or FanOutLeadMode), not at Open, so that a one-shot
// command opening the Store leaves no lock file behind. A flock excludes
// only the processes of one kernel: on a network or FUSE file system it
// may be local to each host, and processes on two hosts sharing the file
// would both lead (a SQLite file is meant for one host anyway).
//
// An in-memory SQLite database, a platform without flock, and a lock file
// that cannot be opened, locked or trusted (a read-only directory, a
// symlink, another user's file, a file others may write) give no lead:
// the lease alone decides there (alone says why), as it does when the
// lock file fails later on.
type fanOutLead struct {
	mu sync.Mutex
	// pg selects the advisory lock (PostgreSQL).
	pg     bool
	conn   *sql.Conn // nil while this Store does not lead (PostgreSQL)
	pinged time.Time // when conn last answered
	// lockPath is the SQLite lock file's path ("" without one).
	lockPath string
	// file is the SQLite lock file, opened by prepare; nil before, on
	// PostgreSQL and without a lead.
	file *leadFile
	// alone says why this Store has no lead ("" while it has or may have
	// one); problem tells a fallback because something is wrong from one
	// by design (in-memory SQLite, no flock).
	alone   string
	problem bool
	// closed is set when the Store closes: it never leads again.
	closed bool
}

// leadFileSuffix names the SQLite lock file: <database file>.fanout-lead.
const leadFileSuffix = ".fanout-lead"

// initFanOutLead sets up the lead of a Store on the SQLite file dbPath
// ("" in memory), without opening its lock file (prepare does).
func (s *Store) initFanOutLead(dbPath string) {
	l := &s.fanOut
	switch {
	case dbPath == "":
		l.alone = "in-memory database"
	case !flockLead:
		l.alone = "no flock on this platform"
	default:
		path, err := leadFilePath(dbPath)
		if err != nil {
			l.fallBack(err)
			return
		}
		l.lockPath = path
	}
}

// prepare opens the SQLite lock file once, falling back to the lease
// alone when it cannot. The caller holds l.mu.
func (l *fanOutLead) prepare() {
	if l.pg || l.closed || l.file != nil || l.alone != "" {
		return
	}
	f, err := openLeadFile(l.lockPath)
	if err != nil {
		l.fallBack(err)
		return
	}
	l.file = f
}

// fallBack leaves this Store with the lease alone because of err. The
// caller holds l.mu (or has the Store to itself).
func (l *fanOutLead) fallBack(err error) {
	if l.file != nil {
		l.file.close()
		l.file = nil
	}
	l.alone, l.problem = err.Error(), true
}

// hasFanOutLead reports whether this Store has a lead at all, opening its
// lock file first if need be: without one (in-memory SQLite, no flock, no
// usable lock file) the lease alone decides who fans out.
func (s *Store) hasFanOutLead() bool {
	l := &s.fanOut
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prepare()
	return l.pg || l.file != nil
}

// FanOutLeadMode describes, for the log at startup, how this Store's
// webhook fan-out is led: "lead by advisory lock" (PostgreSQL), "lead by
// lock file PATH" (a SQLite file), or "lease alone (REASON)"; "none
// (closed)" once the Store closed. On a SQLite file it opens the lock
// file, as the first fan-out step would. problem reports a fallback to
// the lease alone because something is wrong (the lock file cannot be
// opened or trusted), not by design (in-memory SQLite, no flock).
func (s *Store) FanOutLeadMode() (mode string, problem bool) {
	l := &s.fanOut
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prepare()
	switch {
	case l.closed:
		return "none (closed)", false
	case l.pg:
		return "lead by advisory lock", false
	case l.file != nil:
		return "lead by lock file " + l.lockPath, false
	}
	return "lease alone (" + l.alone + ")", l.problem
}

// fanOutLockClass is the first key of the advisory lock (the second is a
// hash of the schema's name): "mcpw" in ASCII.
const fanOutLockClass = 0x6d637077

// fanOutLeadPing is how often the leader checks that its lock still
// holds: on PostgreSQL that its connection answers (a lost connection took
// the lock with it), on SQLite that its lock file is still the one on disk;
// before it takes a live lease over, it checks at once.
const fanOutLeadPing = 250 * time.Millisecond

const (
	fanOutLockSQL   = `SELECT pg_try_advisory_lock($1, hashtext(current_schema()))`
	fanOutUnlockSQL = `SELECT pg_advisory_unlock($1, hashtext(current_schema()))`
)

// leadFanOut reports whether this Store leads the fan-out, taking the
// lead when nobody holds it; a lead held longer than maxAge since its last
// check is checked first (its connection answers, its lock file is still
// the one on disk). A Store without a lead (hasFanOutLead) never leads.
func (s *Store) leadFanOut(ctx context.Context, now time.Time, maxAge time.Duration) (bool, error) {
	l := &s.fanOut
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false, nil // never again: nothing is reopened
	}
	if !l.pg {
		l.prepare()
		if l.file == nil {
			return false, nil
		}
		lead, err := l.file.lead(now, maxAge)
		if err != nil {
			// As when the lock file could not be opened at first: the
			// lease alone from the next step on, said once.
			l.fallBack(err)
			// Not the database's failure (dbErr keeps it as it is).
			return false, apperr.Internal(err, "lease fan-out: lead lost, going on under the lease alone")
		}
		return lead, nil
	}
	if l.conn != nil {
		if now.Sub(l.pinged) < maxAge {
			return true, nil
		}
		if err := l.conn.PingContext(ctx); err == nil {
			l.pinged = now
			return true, nil
		}
		// The connection is gone, and the lock with it: another replica
		// may lead already. (Were it only this ping that failed, ending
		// the session gives the lock up for sure.)
		discard(l.conn)
		l.conn = nil
	}
	sqlDB, err := s.db.DB()
	if err != nil {
		return false, err
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		return false, err
	}
	var got bool
	if err := conn.QueryRowContext(ctx, fanOutLockSQL, fanOutLockClass).Scan(&got); err != nil {
		// The lock may have been granted before the error: the pool must
		// not keep a session that could hold it.
		discard(conn)
		return false, err
	}
	if !got {
		_ = conn.Close()
		return false, nil
	}
	l.conn, l.pinged = conn, now
	return true, nil
}

// dropFanOutLead gives the lead up (at shutdown, or when the Store
// closes): on PostgreSQL it unlocks before the connection goes back to
// the pool, on SQLite it unlocks the lock file (kept open for the next
// lead).
func (s *Store) dropFanOutLead(ctx context.Context) {
	l := &s.fanOut
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		l.file.drop()
	}
	if l.conn == nil {
		return
	}
	var ok bool
	if err := l.conn.QueryRowContext(ctx, fanOutUnlockSQL, fanOutLockClass).Scan(&ok); err != nil || !ok {
		// Not known to be unlocked: end the session, and the lock with it.
		discard(l.conn)
	} else {
		_ = l.conn.Close()
	}
	l.conn = nil
}

// closeFanOutLead gives the lead up and closes the lock file, when the
// Store closes; the Store never leads again (leadFanOut reopens nothing).
func (s *Store) closeFanOutLead(ctx context.Context) {
	s.dropFanOutLead(ctx)
	l := &s.fanOut
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.file != nil {
		l.file.close()
	}
}

// discard closes conn's session instead of returning it to the pool.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}
