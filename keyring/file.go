package keyring

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// LoadOrCreateFile reads a key spec from path, trimmed of surrounding white
// space. If the file does not exist it creates it, and its parent directory
// with mode 0700 when missing, with mode 0600 and a fresh GenerateSpec(1),
// and reports created=true; the caller should warn loudly, since such a key
// is meant for development only. Creation is atomic: a concurrent process
// either creates the file or reads the one created by the other, never a
// partial one. An existing empty file is an error.
func LoadOrCreateFile(path string) (spec string, created bool, err error) {
	spec, err = readSpecFile(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return spec, false, err
	}

	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", false, fmt.Errorf("keyring: create key directory: %w", err)
	}
	spec, err = GenerateSpec(1)
	if err != nil {
		return "", false, err
	}
	// Write a temporary file, then hard-link it into place: the link fails
	// if the file appeared meanwhile, and the file is never seen half written.
	tmp, err := os.CreateTemp(dir, ".keyring-*.tmp") // mode 0600
	if err != nil {
		return "", false, fmt.Errorf("keyring: create key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return "", false, fmt.Errorf("keyring: create key file: %w", err)
	}
	if _, err := tmp.WriteString(spec + "\n"); err != nil {
		tmp.Close()
		return "", false, fmt.Errorf("keyring: write key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", false, fmt.Errorf("keyring: write key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", false, fmt.Errorf("keyring: write key file: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			spec, err = readSpecFile(path)
			return spec, false, err
		}
		return "", false, fmt.Errorf("keyring: create key file: %w", err)
	}
	syncDir(dir)
	return spec, true, nil
}

// syncDir makes the new directory entry durable where the platform allows;
// failure only weakens durability, so it is ignored.
func syncDir(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	_ = d.Sync()
	_ = d.Close()
}

func readSpecFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("keyring: read key file: %w", err)
	}
	spec := strings.TrimSpace(string(b))
	if spec == "" {
		return "", fmt.Errorf("keyring: key file %q is empty", path)
	}
	return spec, nil
}
