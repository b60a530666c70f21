package caller

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReloaderCheck(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "callers.json")
	k1, h1, _ := NewKey()
	k2, h2, _ := NewKey()
	doc := func(hash string) string {
		return `{"callers": [{"name": "a", "key_sha256": "` + hash + `", "tenants": ["acme"], "permissions": ["*"]}]}`
	}
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := NewReloader(path, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		t.Fatal("a missing callers file must stop the start")
	}
	write(doc(h1))
	r, err := NewReloader(path, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := r.Check(); changed || err != nil {
		t.Fatalf("unchanged file: %v %v", changed, err)
	}
	write(doc(h2))
	if changed, err := r.Check(); !changed || err != nil {
		t.Fatalf("changed file: %v %v", changed, err)
	}
	if _, ok := r.Authenticate(k1); ok {
		t.Error("removed key still accepted")
	}
	if _, ok := r.Authenticate(k2); !ok {
		t.Error("new key refused")
	}
	write(`{"callers": []}`)
	if changed, err := r.Check(); changed || err == nil || !strings.Contains(err.Error(), "lists no callers") {
		t.Fatalf("empty file: %v %v", changed, err)
	}
	if _, ok := r.Authenticate(k2); !ok {
		t.Error("a refused file replaced the callers")
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Check(); err == nil {
		t.Error("a vanished file must be reported")
	}
	if _, ok := r.Authenticate(k2); !ok {
		t.Error("a vanished file dropped the callers")
	}
}
