package repository

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"sync"
	"time"
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
// the process dies. An in-memory SQLite database, a platform without
// flock, or a lock file that cannot be opened (a read-only directory) has
// no lead (file is nil): the lease alone decides there.
type fanOutLead struct {
	mu sync.Mutex
	// pg selects the advisory lock (PostgreSQL).
	pg     bool
	conn   *sql.Conn // nil while this Store does not lead (PostgreSQL)
	pinged time.Time // when conn last answered
	// file is the SQLite lock file; nil on PostgreSQL and without one.
	file *leadFile
}

// hasFanOutLead reports whether this Store has a lead at all: without one
// (in-memory SQLite, no flock) the lease alone decides who fans out.
func (s *Store) hasFanOutLead() bool { return s.fanOut.pg || s.fanOut.file != nil }

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
	if !l.pg {
		if l.file == nil {
			return false, nil
		}
		return l.file.lead(now, maxAge)
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
// Store closes.
func (s *Store) closeFanOutLead(ctx context.Context) {
	s.dropFanOutLead(ctx)
	l := &s.fanOut
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		l.file.close()
	}
}

// discard closes conn's session instead of returning it to the pool.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}
