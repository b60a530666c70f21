// Package caller authenticates the internal services that call mcpauth and
// says what each may do. Callers present an API key (authorization: Bearer
// <key>); keys are stored only as SHA-256 hashes. Keys are 256-bit random
// values, so a fast hash is enough: there is nothing to brute-force.
package caller

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Permission is one thing a caller may do.
type Permission string

// The permissions a caller can be granted.
const (
	ProvidersRead  Permission = "providers.read"
	ProvidersWrite Permission = "providers.write"
	Authorize      Permission = "authorize"
	TokensRead     Permission = "tokens.read"
	ToolsCall      Permission = "tools.call"
	AuditRead      Permission = "audit.read"
)

// All lists every permission.
var All = []Permission{ProvidersRead, ProvidersWrite, Authorize, TokensRead, ToolsCall, AuditRead}

// Identity is an authenticated caller.
type Identity struct {
	// Name identifies the caller in audit events and logs.
	Name        string
	allTenants  bool
	tenants     map[string]bool
	permissions map[Permission]bool
}

// NewIdentity builds an identity; tenants may contain "*" for all tenants.
func NewIdentity(name string, tenants []string, perms []Permission) *Identity {
	id := &Identity{Name: name, tenants: map[string]bool{}, permissions: map[Permission]bool{}}
	for _, t := range tenants {
		if t == "*" {
			id.allTenants = true
		}
		id.tenants[t] = true
	}
	for _, p := range perms {
		id.permissions[p] = true
	}
	return id
}

// Allows reports whether the caller may use permission p on tenant.
func (i *Identity) Allows(tenant string, p Permission) bool {
	if i == nil || tenant == "" || !i.permissions[p] {
		return false
	}
	return i.allTenants || i.tenants[tenant]
}

// HasPermission reports whether the caller holds p for some tenant.
func (i *Identity) HasPermission(p Permission) bool { return i != nil && i.permissions[p] }

type ctxKey struct{}

// WithIdentity returns ctx carrying id.
func WithIdentity(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the caller of the request, if any.
func FromContext(ctx context.Context) (*Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(*Identity)
	return id, ok && id != nil
}

// ActorName returns the caller's name for audit events, or "anonymous".
func ActorName(ctx context.Context) string {
	if id, ok := FromContext(ctx); ok {
		return id.Name
	}
	return "anonymous"
}

// Authenticator maps API keys to identities.
type Authenticator struct {
	byHash map[[32]byte]*Identity
}

// Authenticate returns the identity holding key. The lookup is by the
// SHA-256 of the key: keys are 256-bit random values, so the map's timing
// can reveal nothing that helps guess one, and the cost stays constant
// however many callers are configured.
func (a *Authenticator) Authenticate(key string) (*Identity, bool) {
	if key == "" {
		return nil, false
	}
	id, ok := a.byHash[sha256.Sum256([]byte(key))]
	return id, ok
}

// File is the JSON document named by MCPAUTH_CALLERS_FILE.
type File struct {
	Callers []FileCaller `json:"callers"`
}

// FileCaller is one caller in the callers file.
type FileCaller struct {
	Name        string   `json:"name"`
	KeySHA256   string   `json:"key_sha256"`
	Tenants     []string `json:"tenants"`
	Permissions []string `json:"permissions"`
}

// LoadFile reads a callers file.
func LoadFile(path string) (*Authenticator, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading callers file: %w", err)
	}
	var f File
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("parsing callers file %q: %w", path, err)
	}
	return FromFile(f)
}

// FromFile validates a callers document and builds the authenticator.
func FromFile(f File) (*Authenticator, error) {
	a := &Authenticator{byHash: map[[32]byte]*Identity{}}
	names := map[string]bool{}
	for i, c := range f.Callers {
		if c.Name == "" || names[c.Name] {
			return nil, fmt.Errorf("callers[%d]: name must be set and unique", i)
		}
		names[c.Name] = true
		raw, err := hex.DecodeString(c.KeySHA256)
		if err != nil || len(raw) != sha256.Size {
			return nil, fmt.Errorf("callers[%d] %q: key_sha256 must be 64 hex digits", i, c.Name)
		}
		if len(c.Tenants) == 0 {
			return nil, fmt.Errorf("callers[%d] %q: tenants must list tenant ids or \"*\"", i, c.Name)
		}
		var perms []Permission
		for _, p := range c.Permissions {
			if p == "*" {
				perms = append(perms, All...)
				continue
			}
			if !slices.Contains(All, Permission(p)) {
				return nil, fmt.Errorf("callers[%d] %q: unknown permission %q", i, c.Name, p)
			}
			perms = append(perms, Permission(p))
		}
		var h [32]byte
		copy(h[:], raw)
		if _, dup := a.byHash[h]; dup {
			return nil, fmt.Errorf("callers[%d] %q: key used twice", i, c.Name)
		}
		a.byHash[h] = NewIdentity(c.Name, c.Tenants, perms)
	}
	if len(a.byHash) == 0 {
		return nil, errors.New("callers file lists no callers")
	}
	return a, nil
}

// NewKey returns a fresh API key and its hex SHA-256 for a callers file.
func NewKey() (key, hash string, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", err
	}
	key = "mcpa_" + base64.RawURLEncoding.EncodeToString(b)
	return key, HashKey(key), nil
}

// HashKey returns the hex SHA-256 of key, as stored in a callers file.
func HashKey(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

// LoadOrCreateAdmin reads the admin key at path, creating it (0600) when
// missing, and returns an authenticator with one all-powerful "admin"
// caller. created reports whether a new key was written.
func LoadOrCreateAdmin(path string) (a *Authenticator, created bool, err error) {
	raw, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		key, _, kerr := NewKey()
		if kerr != nil {
			return nil, false, kerr
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, false, err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, false, fmt.Errorf("creating admin key: %w", err)
		}
		if _, err := f.WriteString(key + "\n"); err != nil {
			f.Close()
			return nil, false, err
		}
		if err := f.Close(); err != nil {
			return nil, false, err
		}
		raw, created = []byte(key), true
	case err != nil:
		return nil, false, fmt.Errorf("reading admin key: %w", err)
	}
	key := strings.TrimSpace(string(raw))
	if len(key) < 32 {
		return nil, false, fmt.Errorf("admin key in %q is too short", path)
	}
	a = &Authenticator{byHash: map[[32]byte]*Identity{sha256.Sum256([]byte(key)): NewIdentity("admin", []string{"*"}, All)}}
	return a, created, nil
}
