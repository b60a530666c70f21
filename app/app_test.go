package app_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sethvargo/go-envconfig"

	"github.com/mcpauth/mcpauth/app"
	"github.com/mcpauth/mcpauth/config"
	"github.com/mcpauth/mcpauth/internal/testenv"
	"github.com/mcpauth/mcpauth/keyring"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/service/vault"
)

// newApp runs app.New (every startup check) with a fresh data directory on
// database dsn ("" for the default SQLite file in the data directory) and
// master key spec keys ("" for none), closes the app when it starts, and
// returns the log and the error.
func newApp(tb testing.TB, dsn, keys string) (logs string, err error) {
	tb.Helper()
	env := map[string]string{
		"MCPAUTH_DATA_DIR":                    tb.TempDir(),
		"MCPAUTH_GRPC_ADDR":                   "127.0.0.1:0",
		"MCPAUTH_HTTP_ADDR":                   "127.0.0.1:0",
		"MCPAUTH_BACKGROUND_REFRESH_INTERVAL": "0",
		"MCPAUTH_DATABASE_MAX_CONNS":          "4",
	}
	if dsn != "" {
		env["MCPAUTH_DATABASE_URL"] = dsn
	}
	if keys != "" {
		env["MCPAUTH_MASTER_KEYS"] = keys
	}
	ctx := context.Background()
	cfg, cerr := config.Load(ctx, nil, envconfig.MapLookuper(env))
	if cerr != nil {
		tb.Fatalf("config: %v", cerr)
	}
	var buf bytes.Buffer
	a, err := app.New(ctx, cfg, slog.New(slog.NewJSONHandler(&buf, nil)))
	if err == nil {
		a.Close()
	}
	return buf.String(), err
}

func keySpec(id string, fill byte) (spec, b64 string) {
	b64 = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{fill}, 32))
	return id + ":" + b64, b64
}

// TestDevKeyRefusedOnPostgres: without configured keys a replica on
// PostgreSQL refuses to start, telling what to set, and generates nothing.
func TestDevKeyRefusedOnPostgres(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"MCPAUTH_DATA_DIR":     t.TempDir(),
		"MCPAUTH_DATABASE_URL": testenv.PostgresDSN(t),
	}
	cfg, err := config.Load(context.Background(), nil, envconfig.MapLookuper(env))
	if err != nil {
		t.Fatal(err)
	}
	_, err = app.New(context.Background(), cfg, slog.New(slog.NewJSONHandler(&bytes.Buffer{}, nil)))
	if err == nil || !strings.Contains(err.Error(), "MCPAUTH_MASTER_KEYS") || !strings.Contains(err.Error(), "MCPAUTH_MASTER_KEY_FILE") {
		t.Fatalf("app.New on PostgreSQL without keys: %v, want a refusal naming MCPAUTH_MASTER_KEYS and MCPAUTH_MASTER_KEY_FILE", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "master.key")); err == nil {
		t.Error("a development key was generated anyway")
	}
}

// TestDevKeyOnSQLite: the zero-setup default (SQLite in the data directory,
// generated development key) still starts, with its warning.
func TestDevKeyOnSQLite(t *testing.T) {
	t.Parallel()
	logs, err := newApp(t, "", "")
	if err != nil {
		t.Fatalf("app.New with defaults: %v", err)
	}
	if !strings.Contains(logs, "USING A DEVELOPMENT MASTER KEY") {
		t.Errorf("no development key warning in %s", logs)
	}
}

// TestOtherKeyUnderKnownIDRefused: a second start against the same database
// with a different key under id 1 is refused before it writes anything, with
// a message naming the id and no key material; the original key, and a
// rotation that adds a new id in front of it, still start.
func TestOtherKeyUnderKnownIDRefused(t *testing.T) {
	t.Parallel()
	testenv.Backends(t, func(t *testing.T, dsn string) {
		specA, _ := keySpec("1", 0xA1)
		specB, keyB := keySpec("1", 0xB2)
		specC, _ := keySpec("2", 0xC3)
		if _, err := newApp(t, dsn, specA); err != nil {
			t.Fatalf("first start: %v", err)
		}
		logs, err := newApp(t, dsn, specB)
		if err == nil || !strings.Contains(err.Error(), "key id 1 in the configured master keys is not the key the database was written with") {
			t.Fatalf("start with another key under id 1: %v, want a refusal naming key id 1", err)
		}
		if strings.Contains(err.Error(), keyB) || strings.Contains(logs, keyB) {
			t.Error("key material in the error or the log")
		}
		if _, err := newApp(t, dsn, specA); err != nil {
			t.Fatalf("restart with the original key: %v", err)
		}
		if _, err := newApp(t, dsn, specC+","+specA); err != nil {
			t.Fatalf("rotation adding key 2: %v", err)
		}
		if _, err := newApp(t, dsn, specB); err == nil {
			t.Fatal("another key under id 1 started after the rotation")
		}
	})
}

// TestDevKeysOnSharedSQLiteRefused: two processes with their own data
// directories (so their own generated development keys) on one SQLite
// file: the second is refused instead of answering INTERNAL on the first's
// rows.
func TestDevKeysOnSharedSQLiteRefused(t *testing.T) {
	t.Parallel()
	dsn := testenv.SQLiteDSN(t)
	if _, err := newApp(t, dsn, ""); err != nil {
		t.Fatalf("first start: %v", err)
	}
	if _, err := newApp(t, dsn, ""); err == nil || !strings.Contains(err.Error(), "key id 1") {
		t.Fatalf("second start with its own development key: %v, want a refusal naming key id 1", err)
	}
}

// TestWrongKeyOnDatabaseBeforeKeyChecks: a database written before key
// check values existed (its key_checks table empty) holds a provider under
// key id 1; a start with another key under id 1 is refused because that row
// does not open, and the right key starts and is recorded.
func TestWrongKeyOnDatabaseBeforeKeyChecks(t *testing.T) {
	t.Parallel()
	testenv.Backends(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		specA, _ := keySpec("1", 0xA1)
		specB, _ := keySpec("1", 0xB2)
		st, err := repository.Open(ctx, dsn, repository.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if err := st.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		k, err := keyring.Parse(specA)
		if err != nil {
			t.Fatal(err)
		}
		ct, err := k.Seal(keyring.Scope{Tenant: "t", Provider: "p", Field: vault.FieldServerURL}, []byte("https://mcp.example.com/"))
		if err != nil {
			t.Fatal(err)
		}
		row := &repository.Provider{TenantID: "t", ID: "p", DisplayName: "p", ServerIdentifier: "p", URLHash: "h",
			ServerURL: ct, Scopes: "[]", Compat: "{}", KeyID: 1}
		if err := st.CreateProvider(ctx, row); err != nil {
			t.Fatal(err)
		}
		_, err = newApp(t, dsn, specB)
		if err == nil || !strings.Contains(err.Error(), "key id 1 in the configured master keys does not open the rows written under it") {
			t.Fatalf("start with another key over rows of key 1: %v, want a refusal", err)
		}
		if checks, err := st.KeyChecks(ctx); err != nil || len(checks) != 0 {
			t.Fatalf("after the refusal, key checks %v, %v; want none recorded", checks, err)
		}
		if _, err := newApp(t, dsn, specA); err != nil {
			t.Fatalf("start with the key the rows were written with: %v", err)
		}
		if _, err := newApp(t, dsn, specB); err == nil || !strings.Contains(err.Error(), "is not the key the database was written with") {
			t.Fatalf("start with another key after the check value was recorded: %v", err)
		}
	})
}
