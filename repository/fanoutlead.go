package repository

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"sync"
	"time"
)

// fanOutLead is a Store's hold on the lead of the webhook fan-out on
// PostgreSQL: a session-level advisory lock, named after the schema, on a
// connection of its own. Only the lead fans out. The server releases the
// lock the moment that connection closes, so when the leading process dies
// (kill -9, OOM, a lost node) another replica, or the restarted process,
// takes the lead at its next step and with it the dead owner's lease,
// instead of waiting for the lease to end. The lease row (LeaseFanOut,
// RecordFanOut) still fences the records: an owner that lost its lead
// while sending (its lock's connection cut) cannot record after the new
// lead took its lease over, and its sends are repeated (at least once).
//
// The lock needs a session of its own: behind a pooler in transaction mode
// (PgBouncer) it does not hold, and the README says so.
//
// On SQLite there is no lead: one process writes the file, and the lease
// alone applies.
type fanOutLead struct {
	mu     sync.Mutex
	conn   *sql.Conn // nil while this Store does not lead
	pinged time.Time // when conn last answered
}

// fanOutLockClass is the first key of the advisory lock (the second is a
// hash of the schema's name): "mcpw" in ASCII.
const fanOutLockClass = 0x6d637077

// fanOutLeadPing is how often the leader checks that its lock's
// connection still answers (a lost connection took the lock with it);
// before it takes a live lease over, it checks at once.
const fanOutLeadPing = 250 * time.Millisecond

const (
	fanOutLockSQL   = `SELECT pg_try_advisory_lock($1, hashtext(current_schema()))`
	fanOutUnlockSQL = `SELECT pg_advisory_unlock($1, hashtext(current_schema()))`
)

// leadFanOut reports whether this Store leads the fan-out (PostgreSQL),
// taking the lead when nobody holds it; a lead whose connection last
// answered longer than maxAge ago is checked first.
func (s *Store) leadFanOut(ctx context.Context, now time.Time, maxAge time.Duration) (bool, error) {
	l := &s.fanOut
	l.mu.Lock()
	defer l.mu.Unlock()
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
// closes), unlocking before the connection goes back to the pool.
func (s *Store) dropFanOutLead(ctx context.Context) {
	l := &s.fanOut
	l.mu.Lock()
	defer l.mu.Unlock()
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

// discard closes conn's session instead of returning it to the pool.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}
