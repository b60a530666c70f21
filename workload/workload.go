// Package workload reads workload identity tokens (for example projected
// Kubernetes service account tokens) from files for the JWT bearer grant.
// Tenants name the file through the API, so the package only ever opens
// files inside directories the operator allows: a path is checked as
// written (absolute, clean, inside an allowed directory) when it is
// configured, and again after every symbolic link is resolved each time it
// is read, so a link cannot lead a tenant to the service's own secrets
// (its master key, another tenant's token).
package workload

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/mcpauth/mcpauth/secret"
)

// MaxTokenBytes caps a token file; identity tokens are a few KiB.
const MaxTokenBytes = 64 << 10

// ErrNotAllowed reports a path outside the allowed directories.
var ErrNotAllowed = errors.New("path is outside the directories allowed for workload identity tokens")

// Files reads tokens from files under a fixed set of directories. The zero
// value allows none.
type Files struct {
	dirs []string
}

// NewFiles returns a reader confined to dirs (absolute paths). Each is
// resolved once through symbolic links; a directory that does not exist
// is an error, so a typo does not silently disable the feature.
func NewFiles(dirs []string) (*Files, error) {
	f := &Files{}
	for _, d := range dirs {
		d = strings.TrimSpace(d)
		if d == "" {
			continue
		}
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("workload token directory %q is not absolute", d)
		}
		r, err := filepath.EvalSymlinks(filepath.Clean(d))
		if err != nil {
			return nil, fmt.Errorf("workload token directory %q: %w", d, err)
		}
		f.dirs = append(f.dirs, r)
	}
	return f, nil
}

// Enabled reports whether any directory is allowed.
func (f *Files) Enabled() bool { return f != nil && len(f.dirs) > 0 }

// within reports whether p lies strictly inside one of the directories.
func (f *Files) within(p string) bool {
	for _, d := range f.dirs {
		if rel, err := filepath.Rel(d, p); err == nil && rel != "." && rel != ".." &&
			!strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel) {
			return true
		}
	}
	return false
}

// Check validates a configured path as written: absolute, already clean
// (no "..", no doubled or trailing slashes) and inside an allowed
// directory. The file need not exist yet (a token is often projected
// after the provider is configured).
func (f *Files) Check(path string) error {
	if !f.Enabled() {
		return errors.New("workload identity tokens are not enabled on this server (MCPAUTH_WORKLOAD_TOKEN_DIRS)")
	}
	if len(path) > 1024 || strings.ContainsAny(path, "\x00\r\n") {
		return errors.New("must be at most 1024 bytes without control characters")
	}
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return errors.New("must be an absolute, clean path")
	}
	if !f.within(path) && !f.withinUnresolved(path) {
		return ErrNotAllowed
	}
	return nil
}

// withinUnresolved compares path with the directories' resolved forms after
// resolving path's parent, so a configured directory that is itself a link
// still matches paths written through the link.
func (f *Files) withinUnresolved(path string) bool {
	parent, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		return false
	}
	return f.within(filepath.Join(parent, filepath.Base(path)))
}

// Read returns the token in the file at path, trimmed of white space. The
// path is resolved through symbolic links and must still lie inside an
// allowed directory; it must be a regular file of at most MaxTokenBytes.
// Errors never contain the file's content.
func (f *Files) Read(path string) (secret.Secret, error) {
	if err := f.Check(path); err != nil {
		return secret.Secret{}, err
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return secret.Secret{}, errors.New("the token file cannot be found")
	}
	if !f.within(real) {
		return secret.Secret{}, ErrNotAllowed
	}
	fh, err := os.Open(real)
	if err != nil {
		return secret.Secret{}, errors.New("the token file cannot be opened")
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return secret.Secret{}, errors.New("the token file is not a regular file")
	}
	b, err := io.ReadAll(io.LimitReader(fh, MaxTokenBytes+1))
	if err != nil {
		return secret.Secret{}, errors.New("the token file cannot be read")
	}
	if len(b) > MaxTokenBytes {
		return secret.Secret{}, errors.New("the token file is too large")
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return secret.Secret{}, errors.New("the token file is empty")
	}
	return secret.New(string(b)), nil
}
