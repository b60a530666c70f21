package repository

import (
	"os"
	"path/filepath"
	"testing"
)

// TestSQLiteFileNamesTheDatabaseFile: the fan-out's lock file sits beside
// the file a SQLite dsn names; an in-memory database names none. SQLite
// takes mode=memory only in a "file:" URI (the driver cuts the query off
// any other name) and a URI only in lower case; the last part checks that
// against the driver.
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
		"sqlite:file:x?mode=memory":             "",
		"file:/x.db?vfs=memdb":                  "",
		"/x.db?vfs=memdb":                       "",
		"":                                      "",
		// Not a URI: mode=memory is cut off with the query.
		"data/mcpauth.db?mode=memory":          "data/mcpauth.db",
		"sqlite:x.db?cache=shared&mode=memory": "x.db",
		// Not a URI either: a file named FILE:x.db.
		"FILE:x.db":             "FILE:x.db",
		"File:x.db?mode=memory": "File:x.db",
	} {
		if got := sqliteFile(dsn); got != want {
			t.Errorf("sqliteFile(%q) = %q, want %q", dsn, got, want)
		}
	}
	// What the driver makes of them: a file where sqliteFile names one,
	// none where it names none.
	dir := t.TempDir()
	for _, dsn := range []string{
		filepath.Join(dir, "plain.db") + "?mode=memory",
		"file:" + filepath.Join(dir, "uri.db") + "?mode=memory",
		"file:" + filepath.Join(dir, "memdb.db") + "?vfs=memdb",
		"file://localhost" + filepath.Join(dir, "host.db"),
	} {
		s := openStore(t, dsn)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"plain.db", "uri.db", "memdb.db", "host.db"} {
			path := filepath.Join(dir, name)
			_, err := os.Stat(path)
			if named := sqliteFile(dsn) == path; named != (err == nil) {
				t.Errorf("after opening %q: %s exists: %v, sqliteFile names it: %v", dsn, path, err == nil, named)
			}
		}
		for _, name := range []string{"plain.db", "uri.db", "memdb.db", "host.db"} {
			_ = os.Remove(filepath.Join(dir, name))
		}
	}
}
