// Package caller authenticates the internal services that call mcpauth and
// says what each may do. Callers present an API key (authorization: Bearer
// <key>); keys are stored only as SHA-256 hashes. Keys are 256-bit random
// values, so a fast hash is enough: there is nothing to brute-force.
package caller

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
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
	// users, when not nil, are the only end users the caller may act for
	// (users.go); nil means any user (a platform backend).
	users *userPatterns
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

// Authenticator maps API keys and client certificates to identities. It is
// immutable once built; Reloader swaps whole authenticators.
type Authenticator struct {
	byHash    map[[32]byte]*Identity
	byURI     map[string]*Identity
	bySubject map[string]*Identity
}

// Len returns how many callers the authenticator knows.
func (a *Authenticator) Len() int { return len(a.byHash) + len(a.byURI) + len(a.bySubject) }

// AuthenticateCert returns the identity a verified client certificate maps
// to: a URI SAN (such as a SPIFFE id) named by an entry's cert_uri, else the
// subject named by an entry's cert_subject. The caller must have verified
// the chain (the gRPC server's TLS does).
func (a *Authenticator) AuthenticateCert(cert *x509.Certificate) (*Identity, bool) {
	if cert == nil {
		return nil, false
	}
	for _, u := range cert.URIs {
		if id, ok := a.byURI[u.String()]; ok {
			return id, true
		}
	}
	id, ok := a.bySubject[cert.Subject.String()]
	return id, ok
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

// FileCaller is one caller in the callers file. It authenticates with
// exactly one of: an API key (KeySHA256), or a client certificate verified
// by the gRPC server's TLS whose URI SAN is CertURI (for example a SPIFFE
// id) or whose subject is CertSubject (RFC 2253 form, as "openssl x509
// -noout -subject -nameopt RFC2253" prints it: "CN=billing,O=acme").
type FileCaller struct {
	Name        string   `json:"name"`
	KeySHA256   string   `json:"key_sha256,omitempty"`
	CertURI     string   `json:"cert_uri,omitempty"`
	CertSubject string   `json:"cert_subject,omitempty"`
	Tenants     []string `json:"tenants"`
	Permissions []string `json:"permissions"`
	// Users, when present, limits the caller to acting for these end users
	// (exact ids, or a prefix followed by "*"): a per-user service. Absent,
	// the caller acts for any user of its tenants (a platform backend).
	Users []string `json:"users,omitempty"`
}

// LoadFile reads a callers file.
func LoadFile(path string) (*Authenticator, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading callers file: %w", err)
	}
	return parseFile(path, raw)
}

func parseFile(path string, raw []byte) (*Authenticator, error) {
	var f File
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("parsing callers file %q: %w", path, err)
	}
	return FromFile(f)
}

// validPermissions lists the permissions a callers file may name, comma
// separated, for the error that rejects an unknown one.
func validPermissions() string {
	names := make([]string, len(All))
	for i, p := range All {
		names[i] = string(p)
	}
	return strings.Join(names, ", ")
}

// FromFile validates a callers document and builds the authenticator.
func FromFile(f File) (*Authenticator, error) {
	a := &Authenticator{byHash: map[[32]byte]*Identity{}, byURI: map[string]*Identity{}, bySubject: map[string]*Identity{}}
	names := map[string]bool{}
	for i, c := range f.Callers {
		if c.Name == "" || names[c.Name] {
			return nil, fmt.Errorf("callers[%d]: name must be set and unique", i)
		}
		names[c.Name] = true
		set := 0
		for _, v := range []string{c.KeySHA256, c.CertURI, c.CertSubject} {
			if v != "" {
				set++
			}
		}
		if set != 1 {
			return nil, fmt.Errorf("callers[%d] %q: set exactly one of key_sha256, cert_uri, cert_subject", i, c.Name)
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
				return nil, fmt.Errorf("callers[%d] %q: unknown permission %q (valid: %s, or \"*\" for all)", i, c.Name, p, validPermissions())
			}
			perms = append(perms, Permission(p))
		}
		id := NewIdentity(c.Name, c.Tenants, perms)
		if c.Users != nil {
			users, err := newUserPatterns(c.Users)
			if err != nil {
				return nil, fmt.Errorf("callers[%d] %q: %w", i, c.Name, err)
			}
			id.users = users
		}
		switch {
		case c.CertURI != "":
			if u, err := url.Parse(c.CertURI); err != nil || u.Scheme == "" {
				return nil, fmt.Errorf("callers[%d] %q: cert_uri must be an absolute URI (a URI SAN such as spiffe://trust-domain/path)", i, c.Name)
			}
			if _, dup := a.byURI[c.CertURI]; dup {
				return nil, fmt.Errorf("callers[%d] %q: cert_uri used twice", i, c.Name)
			}
			a.byURI[c.CertURI] = id
		case c.CertSubject != "":
			if _, dup := a.bySubject[c.CertSubject]; dup {
				return nil, fmt.Errorf("callers[%d] %q: cert_subject used twice", i, c.Name)
			}
			a.bySubject[c.CertSubject] = id
		default:
			raw, err := hex.DecodeString(c.KeySHA256)
			if err != nil || len(raw) != sha256.Size {
				return nil, fmt.Errorf("callers[%d] %q: key_sha256 must be 64 hex digits", i, c.Name)
			}
			var h [32]byte
			copy(h[:], raw)
			if _, dup := a.byHash[h]; dup {
				return nil, fmt.Errorf("callers[%d] %q: key used twice", i, c.Name)
			}
			a.byHash[h] = id
		}
	}
	if a.Len() == 0 {
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
	_, err = os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := createAdminKey(path); err != nil {
			return nil, false, err
		}
		created = true
	}
	key, err := ReadAdminKey(path)
	if err != nil {
		return nil, false, err
	}
	a = &Authenticator{byHash: map[[32]byte]*Identity{sha256.Sum256([]byte(key)): NewIdentity("admin", []string{"*"}, All)}}
	return a, created, nil
}

func createAdminKey(path string) error {
	key, _, err := NewKey()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating admin key: %w", err)
	}
	if _, err := f.WriteString(key + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ReadAdminKey returns the admin key stored at path.
func ReadAdminKey(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading admin key: %w", err)
	}
	key := strings.TrimSpace(string(raw))
	if len(key) < 32 {
		return "", fmt.Errorf("admin key in %q is too short", path)
	}
	return key, nil
}
