// Package testenv gives integration tests real backing services, isolated per
// test: a fresh PostgreSQL schema, a SQLite file in the test's temp dir, or a
// Redis client with a key prefix of its own. Everything is removed in
// tb.Cleanup.
//
// When PostgreSQL or Redis cannot be reached the test is skipped with a loud
// message, except in CI (CI=true), where it fails: an integration test that
// silently does not run is worse than a red build.
//
// Environment: MCPAUTH_TEST_POSTGRES_URL (default
// postgres://postgres@127.0.0.1:5432/test?sslmode=disable) and
// MCPAUTH_TEST_REDIS_URL (default redis://127.0.0.1:6379/0).
package testenv

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	"github.com/redis/go-redis/v9"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// DefaultPostgresURL is used when MCPAUTH_TEST_POSTGRES_URL is unset.
const DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// DefaultRedisURL is used when MCPAUTH_TEST_REDIS_URL is unset.
const DefaultRedisURL = "redis://127.0.0.1:6379/0"

const reachTimeout = 5 * time.Second

// unreachable skips the test, or fails it in CI, with a message nobody can
// miss in test output.
func unreachable(tb testing.TB, what, where string, err error) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf("FAILING: %s unreachable at %s in CI — integration test cannot run: %v", what, where, err)
	}
	tb.Skipf("SKIPPING: %s unreachable at %s — integration test not run (%v). Start it or set CI=true to make this fatal.", what, where, err)
}

func randomSuffix(tb testing.TB) string {
	tb.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		tb.Fatalf("testenv: random: %v", err)
	}
	return hex.EncodeToString(b)
}

// redactedURL hides any password in a URL before it is printed.
func redactedURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

// PostgresURL returns the base PostgreSQL URL tests connect to.
func PostgresURL() string {
	if v := os.Getenv("MCPAUTH_TEST_POSTGRES_URL"); v != "" {
		return v
	}
	return DefaultPostgresURL
}

// PostgresDSN creates a fresh schema mcpauth_test_<random>, registers its
// removal (DROP SCHEMA ... CASCADE) with tb.Cleanup, and returns a DSN whose
// search_path selects it. Use it for code that opens its own connection.
func PostgresDSN(tb testing.TB) string {
	tb.Helper()
	base := PostgresURL()
	admin, err := sql.Open("pgx", base)
	if err != nil {
		unreachable(tb, "PostgreSQL", redactedURL(base), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), reachTimeout)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		_ = admin.Close()
		unreachable(tb, "PostgreSQL", redactedURL(base), err)
	}
	schema := "mcpauth_test_" + randomSuffix(tb)
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		_ = admin.Close()
		tb.Fatalf("testenv: create schema: %v", err)
	}
	tb.Cleanup(func() {
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// Parallel tests drop their schemas at the same time, and a drop
		// can lose a deadlock (SQLSTATE 40P01) to another one touching the
		// same catalog rows; the loser is simply run again.
		var err error
		for attempt := 0; attempt < 3; attempt++ {
			if _, err = admin.ExecContext(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err == nil || !strings.Contains(err.Error(), "40P01") {
				break
			}
			time.Sleep(time.Duration(100*(attempt+1)) * time.Millisecond)
		}
		if err != nil {
			tb.Errorf("testenv: drop schema %s: %v", schema, err)
		}
	})
	dsn, err := withSearchPath(base, schema)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	return dsn
}

func withSearchPath(base, schema string) (string, error) {
	if !strings.HasPrefix(base, "postgres://") && !strings.HasPrefix(base, "postgresql://") {
		// key=value form
		return base + " search_path=" + schema, nil
	}
	u, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// Postgres returns a *gorm.DB (SQL logging off) on a fresh schema created by
// PostgresDSN. The connection is closed before the schema is dropped.
func Postgres(tb testing.TB) *gorm.DB {
	tb.Helper()
	dsn := PostgresDSN(tb)
	db, err := gorm.Open(postgres.Open(dsn), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		tb.Fatalf("testenv: open postgres: %v", err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		tb.Fatalf("testenv: open postgres: %v", err)
	}
	tb.Cleanup(func() { _ = sqlDB.Close() }) // runs before the schema drop
	return db
}

// SQLiteDSN returns the path of a not-yet-existing SQLite file in
// tb.TempDir().
func SQLiteDSN(tb testing.TB) string {
	tb.Helper()
	return filepath.Join(tb.TempDir(), "mcpauth.db")
}

// RedisURL returns the Redis URL tests connect to.
func RedisURL(tb testing.TB) string {
	tb.Helper()
	if v := os.Getenv("MCPAUTH_TEST_REDIS_URL"); v != "" {
		return v
	}
	return DefaultRedisURL
}

// RedisURLWithPrefix returns RedisURL with its key prefix set to prefix
// (the ?prefix= parameter mcpauth reads), for a process under test to keep
// its keys under the test's own prefix.
func RedisURLWithPrefix(tb testing.TB, prefix string) string {
	tb.Helper()
	u, err := url.Parse(RedisURL(tb))
	if err != nil {
		tb.Fatalf("MCPAUTH_TEST_REDIS_URL: %v", err)
	}
	q := u.Query()
	q.Set("prefix", prefix)
	u.RawQuery = q.Encode()
	return u.String()
}

// Redis returns a client on RedisURL and a key prefix unique to the test
// ("mcpauth_test:<random>:"). Tests must keep their keys under the prefix;
// cleanup deletes them (SCAN + DEL) and closes the client.
func Redis(tb testing.TB) (redis.UniversalClient, string) {
	tb.Helper()
	raw := RedisURL(tb)
	opts, err := redis.ParseURL(raw)
	if err != nil {
		tb.Fatalf("testenv: parse redis URL %s: %v", redactedURL(raw), err)
	}
	client := redis.NewClient(opts)
	ctx, cancel := context.WithTimeout(context.Background(), reachTimeout)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		unreachable(tb, "Redis", redactedURL(raw), err)
	}
	prefix := "mcpauth_test:" + randomSuffix(tb) + ":"
	tb.Cleanup(func() {
		defer client.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		iter := client.Scan(ctx, 0, prefix+"*", 500).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
			if len(keys) == 500 {
				if err := client.Del(ctx, keys...).Err(); err != nil {
					tb.Errorf("testenv: redis cleanup: %v", err)
				}
				keys = keys[:0]
			}
		}
		if err := iter.Err(); err != nil {
			tb.Errorf("testenv: redis cleanup scan: %v", err)
		}
		if len(keys) > 0 {
			if err := client.Del(ctx, keys...).Err(); err != nil {
				tb.Errorf("testenv: redis cleanup: %v", err)
			}
		}
	})
	return client, prefix
}

// Backends runs fn as subtests "sqlite" and "postgres", each with the DSN of
// a fresh, empty database (a SQLite file; a PostgreSQL schema). The postgres
// subtest is skipped (or fails in CI) when PostgreSQL is unreachable.
func Backends(t *testing.T, fn func(t *testing.T, dsn string)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) { fn(t, SQLiteDSN(t)) })
	t.Run("postgres", func(t *testing.T) { fn(t, PostgresDSN(t)) })
}
