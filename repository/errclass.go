package repository

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// IsRetryable reports whether err means that the database could not serve
// the request for now and the same request may succeed later: the
// connection failed or was cut (io.ErrUnexpectedEOF and io.EOF from a dying
// server, connection reset or refused, a broken pipe, a closed or bad
// connection, a network timeout), PostgreSQL refused or ended the session
// (SQLSTATE class 08 connection exception; 57P01 admin_shutdown, 57P02
// crash_shutdown, 57P03 cannot_connect_now; 53300 too_many_connections;
// 40001 serialization_failure and 40P01 deadlock_detected, which the server
// itself asks the client to retry), or SQLite was busy or locked.
//
// It is the one classifier of database errors: dbErr maps a retryable error
// to UNAVAILABLE instead of INTERNAL (a transaction aborted by the database,
// transactionAborted, to ABORTED), and writers that retry (the token
// lifecycle, the audit outbox) ask it which failures are worth a retry.
// A retried write may have committed before its acknowledgement was lost:
// only writes that are idempotent (a compare-and-swap, an insert with an
// idempotency key) may be retried blindly. Context cancellation is not
// retryable (the caller gave up); an expired deadline is, for a caller
// with time left.
func IsRetryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	switch {
	case errors.Is(err, driver.ErrBadConn),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, io.EOF),
		errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, syscall.EPIPE),
		errors.Is(err, context.DeadlineExceeded),
		pgconn.SafeToRetry(err),
		pgconn.Timeout(err):
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"), // connection exception
			strings.HasPrefix(pgErr.Code, "57P0"), // admin/crash shutdown, cannot connect now
			pgErr.Code == "53300",                 // too_many_connections
			pgErr.Code == "40001",                 // serialization_failure
			pgErr.Code == "40P01":                 // deadlock_detected
			return true
		}
		return false
	}
	// pgx reports a connection the server closed mid-query with these
	// texts, without a typed cause.
	msg := err.Error()
	for _, s := range []string{"conn closed", "unexpected EOF", "connection reset by peer", "broken pipe",
		"database is locked", "SQLITE_BUSY"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// transactionAborted reports whether PostgreSQL aborted err's transaction
// because of another one: 40001 serialization_failure or 40P01
// deadlock_detected. Nothing the transaction did was committed.
func transactionAborted(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01")
}

// NotWritten reports whether err, a failed write, proves that nothing of
// the write was committed: PostgreSQL aborted its transaction
// (transactionAborted), or the request never reached the database (a
// connection that could not be made: pgconn.ConnectError, ECONNREFUSED,
// 57P03 cannot_connect_now, 53300 too_many_connections; or pgx's
// SafeToRetry, nothing of the failed request was sent, so a COMMIT it
// names was not). A timeout, EOF or reset after the request was sent
// proves nothing: the COMMIT may have landed before the answer was lost.
func NotWritten(err error) bool {
	if err == nil {
		return false
	}
	var connErr *pgconn.ConnectError
	var pgErr *pgconn.PgError
	switch {
	case transactionAborted(err), errors.As(err, &connErr), errors.Is(err, syscall.ECONNREFUSED), pgconn.SafeToRetry(err):
		return true
	case errors.As(err, &pgErr):
		return pgErr.Code == "57P03" || pgErr.Code == "53300"
	}
	return false
}
