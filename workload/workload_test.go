package workload

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFilesConfined(t *testing.T) {
	t.Parallel()
	allowed, other := t.TempDir(), t.TempDir()
	f, err := NewFiles([]string{allowed})
	if err != nil {
		t.Fatal(err)
	}
	write := func(path, s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(allowed, "token"), " header.payload.sig \n")
	write(filepath.Join(other, "secret"), "outside-secret")
	write(filepath.Join(allowed, "empty"), "\n")
	write(filepath.Join(allowed, "big"), strings.Repeat("x", MaxTokenBytes+1))
	if err := os.Symlink(filepath.Join(other, "secret"), filepath.Join(allowed, "escape")); err != nil {
		t.Fatal(err)
	}
	// A projected token is a link inside the directory (..data/token).
	if err := os.Mkdir(filepath.Join(allowed, "..data"), 0o700); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(allowed, "..data", "t"), "projected")
	if err := os.Symlink("..data/t", filepath.Join(allowed, "projected")); err != nil {
		t.Fatal(err)
	}

	if s, err := f.Read(filepath.Join(allowed, "token")); err != nil || s.Reveal() != "header.payload.sig" {
		t.Fatalf("Read token = %q, %v", s.Reveal(), err)
	}
	if s, err := f.Read(filepath.Join(allowed, "projected")); err != nil || s.Reveal() != "projected" {
		t.Fatalf("Read projected = %q, %v", s.Reveal(), err)
	}
	for _, p := range []string{
		filepath.Join(other, "secret"), allowed, allowed + "/../" + filepath.Base(other) + "/secret", "token",
		filepath.Join(allowed, "escape"), filepath.Join(allowed, "empty"), filepath.Join(allowed, "big"),
		filepath.Join(allowed, "missing"), filepath.Join(allowed, "..data"),
	} {
		s, err := f.Read(p)
		if err == nil {
			t.Errorf("Read(%q) = %q, want an error", p, s.Reveal())
			continue
		}
		if strings.Contains(err.Error(), "outside-secret") {
			t.Errorf("Read(%q) error quotes the file", p)
		}
	}
	if err := f.Check(filepath.Join(allowed, "not-yet")); err != nil {
		t.Errorf("Check of a file to come: %v", err)
	}
	var none Files
	if err := none.Check(filepath.Join(allowed, "token")); err == nil {
		t.Error("no directories allowed, but Check passed")
	}
	if _, err := NewFiles([]string{"relative"}); err == nil {
		t.Error("NewFiles accepted a relative directory")
	}
}
