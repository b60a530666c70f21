package repository

import (
	"context"
	"errors"
	"go.opentelemetry.io/otel/trace"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	sqlite "github.com/glebarez/go-sqlite"
	gormsqlite "github.com/glebarez/sqlite"
	"github.com/jackc/pgx/v5/pgconn"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
)

// ErrNoTenant is the cause of the error every tenant-scoped method returns
// when called with an empty tenant; an empty tenant never means "no filter".
var ErrNoTenant = errors.New("repository: empty tenant")

// Options tunes the connection pool. Zero values select the defaults.
type Options struct {
	// MaxOpenConns caps open connections to PostgreSQL (default 20). SQLite
	// always uses one connection: writes to a SQLite file are serialised by
	// the database anyway, and one connection makes that explicit instead of
	// surfacing SQLITE_BUSY under load.
	MaxOpenConns int
	// MaxIdleConns caps idle PostgreSQL connections (default MaxOpenConns).
	MaxIdleConns int
	// ConnMaxLifetime recycles PostgreSQL connections after this long
	// (default 30 minutes), so that a failover or DNS change is picked up.
	ConnMaxLifetime time.Duration
}

// Store is the GORM-backed repository. It is safe for concurrent use.
type Store struct {
	db        *gorm.DB
	eventHook atomic.Pointer[func()]
	readEpochState
	// tracer, set by Trace, traces the hand-written hot reads (hot.go) as
	// the GORM callbacks trace every other statement.
	tracer trace.Tracer
	// fanOut is this Store's lead of the webhook fan-out (fanoutlead.go).
	fanOut fanOutLead
}

// storeNow is the Store's clock (GORM's NowFunc), which stamps the rows it
// writes (created_at, updated_at, leases): UTC, in whole microseconds,
// the precision PostgreSQL keeps. A row written with nanoseconds was read
// back with them cut, so a write's answer (the row as written) differed
// from what a Get returned, and from what the database compares with.
func storeNow() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// Open connects to the database named by dsn. A dsn starting with
// postgres:// or postgresql:// selects PostgreSQL; anything else is a SQLite
// file path, optionally prefixed with "sqlite:", opened with WAL journaling,
// a 5 s busy timeout, foreign keys on and immediate write transactions.
// Open pings the database; call Migrate before use. The GORM logger is off:
// SQL is never logged, with or without values.
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	cfg := &gorm.Config{
		Logger:                 logger.Discard,
		SkipDefaultTransaction: true,
		NowFunc:                storeNow,
		DisableAutomaticPing:   true,
	}
	var (
		db  *gorm.DB
		err error
	)
	if isPostgres(dsn) {
		db, err = gorm.Open(postgres.Open(dsn), cfg)
		if err != nil {
			return nil, dbErr(err, "open postgres")
		}
		sqlDB, err := db.DB()
		if err != nil {
			return nil, dbErr(err, "open postgres")
		}
		maxOpen := opts.MaxOpenConns
		if maxOpen <= 0 {
			maxOpen = 20
		}
		maxIdle := opts.MaxIdleConns
		if maxIdle <= 0 || maxIdle > maxOpen {
			maxIdle = maxOpen
		}
		life := opts.ConnMaxLifetime
		if life <= 0 {
			life = 30 * time.Minute
		}
		sqlDB.SetMaxOpenConns(maxOpen)
		sqlDB.SetMaxIdleConns(maxIdle)
		sqlDB.SetConnMaxLifetime(life)
	} else {
		db, err = gorm.Open(gormsqlite.Open(sqliteDSN(dsn)), cfg)
		if err != nil {
			return nil, dbErr(err, "open sqlite")
		}
		sqlDB, err := db.DB()
		if err != nil {
			return nil, dbErr(err, "open sqlite")
		}
		sqlDB.SetMaxOpenConns(1)
		sqlDB.SetMaxIdleConns(1)
		sqlDB.SetConnMaxLifetime(0)
	}
	s := &Store{db: db}
	s.fanOut.pg = isPostgres(dsn)
	if err := s.watchWrites(); err != nil {
		return nil, dbErr(err, "register callbacks")
	}
	if err := s.Ping(ctx); err != nil {
		_ = s.Close()
		return nil, err
	}
	if !s.fanOut.pg {
		// Once the file exists: its lock file is named after its
		// resolved path.
		s.initFanOutLead(sqliteFile(dsn))
	}
	return s, nil
}

// IsPostgres reports whether dsn selects PostgreSQL, a database several
// replicas can share; anything else is a SQLite file of one process.
func IsPostgres(dsn string) bool { return isPostgres(dsn) }

func isPostgres(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// sqliteDSN turns a file path into a driver DSN with the pragmas mcpauth
// relies on. Caller-supplied query parameters are kept.
func sqliteDSN(dsn string) string {
	path := strings.TrimPrefix(dsn, "sqlite:")
	q := url.Values{}
	if i := strings.IndexByte(path, '?'); i >= 0 {
		if parsed, err := url.ParseQuery(path[i+1:]); err == nil {
			q = parsed
		}
		path = path[:i]
	}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "busy_timeout(5000)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	if q.Get("_txlock") == "" {
		q.Set("_txlock", "immediate")
	}
	if q.Get("_time_format") == "" {
		q.Set("_time_format", "sqlite")
	}
	return path + "?" + q.Encode()
}

// sqliteFile returns the path of the file a SQLite dsn (as Open takes it)
// names, or "" for an in-memory database (":memory:", mode=memory in a
// "file:" URI, the memdb VFS, or no path at all). A "file:" URI's
// authority is dropped and its path unescaped, as SQLite does.
func sqliteFile(dsn string) string {
	path := strings.TrimPrefix(dsn, "sqlite:")
	if i := strings.IndexByte(path, '?'); i >= 0 {
		if q, err := url.ParseQuery(path[i+1:]); err == nil {
			// The driver selects the VFS whatever the name, but hands the
			// query to SQLite (mode=memory) only after a "file:" prefix
			// (as it is, lower case): it cuts it off otherwise.
			if q.Get("vfs") == "memdb" || q.Get("mode") == "memory" && strings.HasPrefix(path, "file:") {
				return ""
			}
		}
		path = path[:i]
	}
	// SQLite takes a URI only in lower case: "FILE:x.db" is a file of
	// that name.
	if rest, ok := strings.CutPrefix(path, "file:"); ok {
		if after, ok := strings.CutPrefix(rest, "//"); ok {
			// file://[authority]/path
			rest = ""
			if i := strings.IndexByte(after, '/'); i >= 0 {
				rest = after[i:]
			}
		}
		if p, err := url.PathUnescape(rest); err == nil {
			rest = p
		}
		path = rest
	}
	if path == "" || strings.HasPrefix(path, ":memory:") {
		return ""
	}
	return path
}

// Close closes the connection pool, giving up the fan-out's lead first.
func (s *Store) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	s.closeFanOutLead(ctx)
	cancel()
	sqlDB, err := s.db.DB()
	if err != nil {
		return err
	}
	return sqlDB.Close()
}

// DB returns the underlying *gorm.DB. It is meant for tests and tools; service
// code must use the tenant-scoped methods.
func (s *Store) DB() *gorm.DB { return s.db }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	sqlDB, err := s.db.DB()
	if err != nil {
		return dbErr(err, "ping database")
	}
	if err := sqlDB.PingContext(ctx); err != nil {
		return apperr.Unavailable(err, "database unreachable")
	}
	return nil
}

// scoped is the one way tenant data is queried: it returns a fresh query on
// db (a Store's pool or a transaction) restricted to tenant by an explicit
// SQL condition. An empty tenant is an error, never "no filter". Call it once
// per statement: a *gorm.DB chain accumulates conditions.
func scoped(ctx context.Context, db *gorm.DB, tenant string) (*gorm.DB, error) {
	if err := checkTenant(tenant); err != nil {
		return nil, err
	}
	return db.WithContext(ctx).Where("tenant_id = ?", tenant), nil
}

// grantScoped is scoped narrowed to one grant's rows of a per-grant table
// (credentials, refresh_leases, mcp_challenges, tool_lists).
func grantScoped(ctx context.Context, db *gorm.DB, g domain.GrantRef) (*gorm.DB, error) {
	q, err := scoped(ctx, db, g.Tenant)
	if err != nil {
		return nil, err
	}
	return q.Where("provider_id = ? AND user_id = ?", g.Provider, g.User), nil
}

// scopedTable is scoped with the tenant column qualified by table, for
// queries that join another tenant-keyed table.
func scopedTable(ctx context.Context, db *gorm.DB, table, tenant string) (*gorm.DB, error) {
	if err := checkTenant(tenant); err != nil {
		return nil, err
	}
	return db.WithContext(ctx).Where(table+".tenant_id = ?", tenant), nil
}

// checkTenant is scoped's rule, also applied to rows about to be inserted
// (an INSERT carries no WHERE clause).
func checkTenant(tenant string) error {
	if tenant == "" {
		return apperr.Internal(ErrNoTenant, "tenant scope missing")
	}
	return nil
}

// clampLimit bounds a page size; the service validates page sizes, this only
// protects the database.
func clampLimit(limit int) int {
	switch {
	case limit <= 0:
		return 50
	case limit > 1000:
		return 1000
	}
	return limit
}

// Unique is a uniqueness rule of providers within a tenant.
type Unique string

// The uniqueness rules of providers.
const (
	UniqueID               Unique = "id"
	UniqueDisplayName      Unique = "display_name"
	UniqueServerIdentifier Unique = "server_identifier"
	UniqueServerURL        Unique = "server_url"
)

// ConflictError reports a write refused by a uniqueness rule. It is of kind
// apperr.KindAlreadyExists; the use case names the API field.
type ConflictError struct {
	Rule Unique
}

// Error names the rule.
func (e *ConflictError) Error() string {
	return "a provider with this " + strings.ReplaceAll(string(e.Rule), "_", " ") + " already exists"
}

// uniqueRule maps unique indexes (PostgreSQL; SQLite for an index on an
// expression) and columns (SQLite) to rules.
var uniqueRule = map[string]Unique{
	"uniq_provider_name_ci": UniqueDisplayName,
	"uniq_provider_sid_ci":  UniqueServerIdentifier,
	"uniq_provider_url":     UniqueServerURL,
	"url_hash":              UniqueServerURL,
	"providers_pkey":        UniqueID,
	"id":                    UniqueID,
}

func conflict(rule Unique) error {
	return &apperr.Error{Kind: apperr.KindAlreadyExists, Reason: "ALREADY_EXISTS", Message: (&ConflictError{rule}).Error(), Err: &ConflictError{rule}}
}

// uniqueViolation reports whether err is a unique-constraint violation and,
// when recognisable, the constraint (PostgreSQL) or last column (SQLite).
func uniqueViolation(err error) (key string, ok bool) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if pgErr.Code == "23505" {
			return pgErr.ConstraintName, true
		}
		return "", false
	}
	var sqErr *sqlite.Error
	if errors.As(err, &sqErr) {
		// SQLITE_CONSTRAINT_UNIQUE (2067) and SQLITE_CONSTRAINT_PRIMARYKEY (1555).
		if c := sqErr.Code(); c != 2067 && c != 1555 {
			return "", false
		}
		// "UNIQUE constraint failed: providers.tenant_id, providers.url_hash",
		// or for an index on an expression
		// "UNIQUE constraint failed: index 'uniq_provider_name_ci'".
		msg := sqErr.Error()
		if _, name, ok := strings.Cut(msg, "index '"); ok {
			key, _, _ = strings.Cut(name, "'")
			return key, true
		}
		if i := strings.LastIndexByte(msg, '.'); i >= 0 {
			key = strings.TrimSpace(msg[i+1:])
			if j := strings.IndexAny(key, " )"); j >= 0 {
				key = key[:j]
			}
		}
		return key, true
	}
	return "", false
}

// foreignKeyViolation reports whether err is a foreign-key violation: the
// provider a dependent row refers to does not exist (or was just deleted).
func foreignKeyViolation(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "23503"
	}
	var sqErr *sqlite.Error
	if errors.As(err, &sqErr) {
		return sqErr.Code() == 787 // SQLITE_CONSTRAINT_FOREIGNKEY
	}
	return false
}

// dbErr classifies an unexpected database error. Errors that already carry
// an apperr kind pass through unchanged. A transaction PostgreSQL aborted
// to break a deadlock or a serialization conflict is apperr.Aborted, as a
// lost compare-and-swap is, but with the database's error as its cause:
// it wrote nothing and the same write may be retried as it is
// (IsRetryable), whereas a lost compare-and-swap means another writer won.
func dbErr(err error, what string) error {
	if err == nil {
		return nil
	}
	if _, ok := apperr.As(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return &apperr.Error{Kind: apperr.KindDeadlineExceeded, Reason: "DEADLINE_EXCEEDED", Message: what + ": deadline exceeded", Err: err}
	case errors.Is(err, context.Canceled):
		return &apperr.Error{Kind: apperr.KindDeadlineExceeded, Reason: "CANCELLED", Message: what + ": cancelled", Err: err}
	case transactionAborted(err):
		return &apperr.Error{Kind: apperr.KindAborted, Reason: "ABORTED",
			Message: what + ": the database aborted the transaction to resolve a conflict with another; retry", Err: err}
	case IsRetryable(err):
		return apperr.Unavailable(err, "%s: database unreachable", what)
	}
	return apperr.Internal(err, "%s", what)
}
