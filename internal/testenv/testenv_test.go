package testenv

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
)

func TestPostgresSchemaIsolatedAndDropped(t *testing.T) {
	var schema string
	t.Run("inner", func(t *testing.T) {
		db := Postgres(t)
		if err := db.Raw("SELECT current_schema()").Scan(&schema).Error; err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(schema, "mcpauth_test_") {
			t.Fatalf("current_schema = %q, want mcpauth_test_*", schema)
		}
		if err := db.Exec("CREATE TABLE t (x int)").Error; err != nil {
			t.Fatal(err)
		}
	})
	if schema == "" {
		t.Skip("postgres subtest skipped")
	}
	admin, err := sql.Open("pgx", PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	var n int
	if err := admin.QueryRowContext(context.Background(),
		"SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1", schema).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("schema %s still exists after cleanup", schema)
	}
}

func TestRedisPrefixCleanedUp(t *testing.T) {
	var prefix string
	var keys []string
	t.Run("inner", func(t *testing.T) {
		c, p := Redis(t)
		prefix = p
		ctx := context.Background()
		for _, k := range []string{"a", "b", "c"} {
			keys = append(keys, p+k)
			if err := c.Set(ctx, p+k, "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
	})
	if prefix == "" {
		t.Skip("redis subtest skipped")
	}
	c, _ := Redis(t)
	n, err := c.Exists(context.Background(), keys...).Result()
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d keys under %s survived cleanup", n, prefix)
	}
}

func TestSQLiteDSNInTempDir(t *testing.T) {
	dsn := SQLiteDSN(t)
	if filepath.Base(dsn) != "mcpauth.db" || !filepath.IsAbs(dsn) {
		t.Fatalf("SQLiteDSN = %q", dsn)
	}
}

func TestWithSearchPath(t *testing.T) {
	got, err := withSearchPath("postgres://u@h:5432/db?sslmode=disable", "s1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "search_path=s1") || !strings.Contains(got, "sslmode=disable") {
		t.Fatalf("got %q", got)
	}
}
