package repository

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSQLiteFileNamesTheDatabaseFile: the fan-out's lock file sits beside
// the file a SQLite dsn names; an in-memory database names none.
func TestSQLiteFileNamesTheDatabaseFile(t *testing.T) {
	t.Parallel()
	for dsn, want := range map[string]string{
		"data/mcpauth.db":                       "data/mcpauth.db",
		"sqlite:/var/lib/mcpauth.db?_txlock=x":  "/var/lib/mcpauth.db",
		"file:/var/lib/my%20db.db?cache=shared": "/var/lib/my db.db",
		"file:///var/lib/mcpauth.db":            "/var/lib/mcpauth.db",
		"file://localhost/var/lib/mcpauth.db":   "/var/lib/mcpauth.db",
		"file:rel.db":                           "rel.db",
		":memory:":                              "",
		"sqlite::memory:":                       "",
		"file::memory:?cache=shared":            "",
		"file:x?mode=memory&cache=shared":       "",
		"file:/x.db?vfs=memdb":                  "",
		"":                                      "",
	} {
		if got := sqliteFile(dsn); got != want {
			t.Errorf("sqliteFile(%q) = %q, want %q", dsn, got, want)
		}
	}
}

// TestFanOutLeaseAloneWithoutLockFile: when the lock file beside a SQLite
// file cannot be opened, the Store has no lead and fans out under the
// lease alone instead of failing.
func TestFanOutLeaseAloneWithoutLockFile(t *testing.T) {
	t.Parallel()
	dsn := filepath.Join(t.TempDir(), "mcpauth.db")
	// A directory where the lock file would be: no process can open it
	// for writing.
	if err := os.Mkdir(dsn+leadFileSuffix, 0o700); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, dsn)
	if s.hasFanOutLead() {
		t.Fatal("the Store leads the fan-out without a lock file")
	}
	now := time.Now().UTC()
	createEndpoint(t, s, now)
	uids := appendEvents(t, s, "p")
	_, ds := leaseAll(t, s, "a", 1, now)
	if len(ds) != 1 || ds[0].EventUID != uids[0] {
		t.Fatalf("leased %v, want %v", uidsOf(ds), uids)
	}
	if b, err := s.LeaseFanOut(context.Background(), "b", now, time.Minute, FanOutRead{Limit: 500}, nil); err != nil || b != nil {
		t.Fatalf("b leased %v (%v) while a's lease is live", b, err)
	}
}
