// Package keyring encrypts sensitive fields at rest with AES-256-GCM under
// per-tenant keys derived from a small set of master keys, and computes keyed
// fingerprints (HMAC-SHA256) of values that must be compared without being
// stored in clear.
//
// # Key spec
//
// Master keys come from configuration as a spec: comma-separated
// "ID:BASE64KEY" entries, where ID is a positive 32-bit integer and the key is
// 32 bytes in standard or URL base64, padded or not. The first entry is the
// primary key; it encrypts every new value and keys every new fingerprint.
//
// # Ciphertext format
//
// Every ciphertext is self-describing:
//
//	0x01 | key id (uint32, big-endian) | nonce (12 random bytes) | GCM ciphertext and 16-byte tag
//
// The AES-256 key for a ciphertext is not the master key itself but
// HKDF-SHA256(master key, info "mcpauth/v1/dek\x00" + tenant), so no two
// tenants share an encryption key. The associated data is the 5-byte header
// followed by "mcpauth/v1/field" and the tenant, provider and field of the
// Scope, each preceded by its length as a big-endian uint32. A ciphertext
// therefore decrypts only under the exact Scope it was sealed for: copied to
// another row, field or tenant it fails with ErrDecrypt.
//
// # Rotation
//
// To rotate, put a new key first in the spec and keep the old ones after it:
// "2:NEW,1:OLD". New writes carry id 2; values written under id 1 still open.
// A re-encryption pass (elsewhere) rewrites old rows, using KeyID to find
// them; a key may be dropped from the spec only once no row carries its id,
// since Open of such a row then fails with ErrUnknownKey. Fingerprints
// returns a value's fingerprint under every key so uniqueness checks still
// match rows fingerprinted under an older key during the rotation.
package keyring

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// ErrDecrypt is returned by Open when a ciphertext is malformed, was sealed
// for another scope, or has been altered. It carries no detail on purpose.
var ErrDecrypt = errors.New("keyring: cannot decrypt")

// ErrUnknownKey is returned (wrapped, with the key id) by Open when a
// ciphertext names a key id that is not in the keyring.
var ErrUnknownKey = errors.New("keyring: unknown key id")

var errScope = errors.New("keyring: scope needs a tenant and a field")

const (
	version    = 0x01
	keySize    = 32
	nonceSize  = 12
	tagSize    = 16
	headerSize = 1 + 4
	minSize    = headerSize + nonceSize + tagSize

	dekInfo        = "mcpauth/v1/dek\x00"
	fieldAAD       = "mcpauth/v1/field"
	fingerprintTag = "mcpauth/v1/fingerprint\x00"
	shortTag       = "mcpauth/v1/short-fingerprint\x00"
	checkTag       = "mcpauth/v1/key-check\x00"
	checkMessage   = "mcpauth key check v1"
)

// Scope is the associated data that binds a ciphertext to where it belongs:
// the tenant, the provider (may be empty for tenant-level values), the
// field name and, for a per-user grant, the end user.
type Scope struct {
	Tenant, Provider, Field string
	// User is the end user of a per-user grant, or empty. An empty User
	// leaves the associated data exactly as before users existed, so
	// tenant-wide ciphertexts stay readable; a non-empty one is appended as
	// a fourth length-prefixed part, so a ciphertext opens only for the user
	// it was sealed for.
	User string
}

// Keyring holds the master keys. It is immutable after construction and safe
// for concurrent use.
type Keyring struct {
	primary uint32
	ids     []uint32 // sorted
	keys    map[uint32][]byte

	// Derived keys are cached so only a tenant's first use pays for HKDF
	// and AES key expansion. Each cache is emptied when it passes maxCached
	// entries, bounding memory when a process serves very many tenants.
	aeads  sync.Map // aeadKey -> cipher.AEAD
	nAEADs atomic.Int64
	macs   sync.Map // macKey -> []byte
	nMACs  atomic.Int64
}

// maxCached bounds each derived-key cache (an AES-GCM instance is about
// 1 KiB).
const maxCached = 4096

// remember stores v under key in m unless present, and returns the stored
// value. It empties m first when it has grown past maxCached entries.
func remember(m *sync.Map, n *atomic.Int64, key, v any) any {
	if n.Load() >= maxCached {
		m.Clear()
		n.Store(0)
	}
	actual, loaded := m.LoadOrStore(key, v)
	if !loaded {
		n.Add(1)
	}
	return actual
}

type aeadKey struct {
	id     uint32
	tenant string
}

type macKey struct {
	id              uint32
	label           string
	tenant, purpose string
}

// Parse reads a key spec (see the package documentation). Duplicate ids,
// ids that are not positive 32-bit integers, keys that are not 32 bytes of
// base64 and an empty spec are errors; error messages name the entry by
// position and never contain key material.
func Parse(spec string) (*Keyring, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, errors.New("keyring: empty key spec")
	}
	k := &Keyring{keys: make(map[uint32][]byte)}
	for i, entry := range strings.Split(spec, ",") {
		n := i + 1
		entry = strings.TrimSpace(entry)
		if entry == "" {
			return nil, fmt.Errorf("keyring: key spec entry %d is empty", n)
		}
		idText, keyText, ok := strings.Cut(entry, ":")
		if !ok {
			return nil, fmt.Errorf("keyring: key spec entry %d is not ID:BASE64KEY", n)
		}
		// The id text is not echoed: a spec written the wrong way round
		// would put key material there.
		id64, err := strconv.ParseUint(strings.TrimSpace(idText), 10, 32)
		if err != nil || id64 == 0 {
			return nil, fmt.Errorf("keyring: key spec entry %d: id must be a positive 32-bit integer", n)
		}
		id := uint32(id64)
		if _, dup := k.keys[id]; dup {
			return nil, fmt.Errorf("keyring: key spec entry %d: duplicate key id %d", n, id)
		}
		key, err := decodeKey(strings.TrimSpace(keyText))
		if err != nil {
			return nil, fmt.Errorf("keyring: key spec entry %d (id %d): %w", n, id, err)
		}
		if i == 0 {
			k.primary = id
		}
		k.keys[id] = key
		k.ids = append(k.ids, id)
	}
	slices.Sort(k.ids)
	return k, nil
}

// decodeKey accepts standard or URL base64, padded or raw. Its errors never
// wrap the base64 package's, which quote input offsets and could be extended
// to quote input.
func decodeKey(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("key is empty")
	}
	for _, enc := range []*base64.Encoding{
		base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding,
	} {
		b, err := enc.Strict().DecodeString(s)
		if err != nil {
			continue
		}
		if len(b) != keySize {
			return nil, fmt.Errorf("key is %d bytes, want %d", len(b), keySize)
		}
		return b, nil
	}
	return nil, errors.New("key is not valid base64")
}

// GenerateSpec returns a spec holding one fresh random 32-byte key with the
// given id (which must be positive).
func GenerateSpec(id uint32) (string, error) {
	if id == 0 {
		return "", errors.New("keyring: key id must be positive")
	}
	key := make([]byte, keySize)
	if _, err := rand.Read(key); err != nil {
		return "", fmt.Errorf("keyring: generate key: %w", err)
	}
	return strconv.FormatUint(uint64(id), 10) + ":" + base64.StdEncoding.EncodeToString(key), nil
}

// PrimaryID returns the id of the key used for new ciphertexts and
// fingerprints.
func (k *Keyring) PrimaryID() uint32 { return k.primary }

// IDs returns the ids of all keys in the keyring, sorted ascending. The slice
// is a copy.
func (k *Keyring) IDs() []uint32 { return slices.Clone(k.ids) }

// Has reports whether the keyring holds the key with the given id.
func (k *Keyring) Has(id uint32) bool {
	_, ok := k.keys[id]
	return ok
}

// String describes the keyring without key material, so that printing or
// logging one by accident is harmless.
func (k *Keyring) String() string {
	if k == nil {
		return "keyring(nil)"
	}
	return fmt.Sprintf("keyring(primary=%d, ids=%v)", k.primary, k.ids)
}

// GoString is String, so %#v does not print key material either.
func (k *Keyring) GoString() string { return k.String() }

// Seal encrypts plaintext for scope s with the primary key and returns the
// ciphertext in the format described in the package documentation. Scope
// must have a tenant and a field.
func (k *Keyring) Seal(s Scope, plaintext []byte) ([]byte, error) {
	if s.Tenant == "" || s.Field == "" {
		return nil, errScope
	}
	aead, err := k.aead(k.primary, s.Tenant)
	if err != nil {
		return nil, err
	}
	out := make([]byte, minSize+len(plaintext))
	out[0] = version
	binary.BigEndian.PutUint32(out[1:headerSize], k.primary)
	nonce := out[headerSize : headerSize+nonceSize]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("keyring: generate nonce: %w", err)
	}
	aad := fieldAADFor(out[:headerSize], s)
	return aead.Seal(out[:headerSize+nonceSize], nonce, plaintext, aad), nil
}

// Open decrypts a ciphertext made by Seal for the same scope. A malformed,
// altered or misplaced ciphertext gives ErrDecrypt; a key id missing from the
// keyring gives an error wrapping ErrUnknownKey.
func (k *Keyring) Open(s Scope, ciphertext []byte) ([]byte, error) {
	if s.Tenant == "" || s.Field == "" {
		return nil, errScope
	}
	id, err := KeyID(ciphertext)
	if err != nil {
		return nil, err
	}
	if !k.Has(id) {
		return nil, fmt.Errorf("%w %d", ErrUnknownKey, id)
	}
	aead, err := k.aead(id, s.Tenant)
	if err != nil {
		return nil, err
	}
	nonce := ciphertext[headerSize : headerSize+nonceSize]
	aad := fieldAADFor(ciphertext[:headerSize], s)
	plaintext, err := aead.Open(nil, nonce, ciphertext[headerSize+nonceSize:], aad)
	if err != nil {
		return nil, ErrDecrypt
	}
	return plaintext, nil
}

// KeyID returns the id of the key a ciphertext was sealed with, without
// decrypting it. It returns ErrDecrypt when the input is too short to be a
// ciphertext or has an unknown format version.
func KeyID(ciphertext []byte) (uint32, error) {
	if len(ciphertext) < minSize || ciphertext[0] != version {
		return 0, ErrDecrypt
	}
	return binary.BigEndian.Uint32(ciphertext[1:headerSize]), nil
}

// fieldAADFor builds header | "mcpauth/v1/field" | len-prefixed tenant,
// provider, field [, user]. The header is included so the version and key
// id are authenticated too. The user part is present only for a non-empty
// user: every part is length-prefixed, so the three- and four-part forms
// never collide.
func fieldAADFor(header []byte, s Scope) []byte {
	aad := make([]byte, 0, len(header)+len(fieldAAD)+16+len(s.Tenant)+len(s.Provider)+len(s.Field)+len(s.User))
	aad = append(aad, header...)
	aad = append(aad, fieldAAD...)
	aad = appendLenPrefixed(aad, s.Tenant)
	aad = appendLenPrefixed(aad, s.Provider)
	aad = appendLenPrefixed(aad, s.Field)
	if s.User != "" {
		aad = appendLenPrefixed(aad, s.User)
	}
	return aad
}

func appendLenPrefixed(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// aead returns the cached AES-256-GCM instance for (key id, tenant), deriving
// it on first use.
func (k *Keyring) aead(id uint32, tenant string) (cipher.AEAD, error) {
	ck := aeadKey{id: id, tenant: tenant}
	if v, ok := k.aeads.Load(ck); ok {
		return v.(cipher.AEAD), nil
	}
	dek, err := k.deriveDEK(id, tenant)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(dek)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	return remember(&k.aeads, &k.nAEADs, ck, aead).(cipher.AEAD), nil
}

// deriveDEK derives the tenant's data-encryption key from master key id.
func (k *Keyring) deriveDEK(id uint32, tenant string) ([]byte, error) {
	master, ok := k.keys[id]
	if !ok {
		return nil, fmt.Errorf("%w %d", ErrUnknownKey, id)
	}
	dek, err := hkdf.Key(sha256.New, master, nil, dekInfo+tenant, keySize)
	if err != nil {
		return nil, fmt.Errorf("keyring: derive key: %w", err)
	}
	return dek, nil
}

// macKeyFor returns the cached HMAC key for (key id, label, tenant, purpose).
// Tenant and purpose are length-prefixed in the HKDF info so that no two
// (tenant, purpose) pairs share a key.
func (k *Keyring) macKeyFor(id uint32, label, tenant, purpose string) []byte {
	ck := macKey{id: id, label: label, tenant: tenant, purpose: purpose}
	if v, ok := k.macs.Load(ck); ok {
		return v.([]byte)
	}
	info := appendLenPrefixed([]byte(label), tenant)
	info = appendLenPrefixed(info, purpose)
	key, err := hkdf.Key(sha256.New, k.keys[id], nil, string(info), keySize)
	if err != nil {
		// HKDF-SHA256 fails only when asked for more than 8160 bytes.
		panic("keyring: derive fingerprint key: " + err.Error())
	}
	return remember(&k.macs, &k.nMACs, ck, key).([]byte)
}

func (k *Keyring) mac(id uint32, label, tenant, purpose string, value []byte) []byte {
	h := hmac.New(sha256.New, k.macKeyFor(id, label, tenant, purpose))
	h.Write(value)
	return h.Sum(nil)
}

func (k *Keyring) fingerprint(id uint32, tenant, purpose string, value []byte) string {
	sum := k.mac(id, fingerprintTag, tenant, purpose, value)
	return "k" + strconv.FormatUint(uint64(id), 10) + ":" + hex.EncodeToString(sum)
}

// Fingerprint returns a keyed hash of value for (tenant, purpose) under the
// primary key, as "k<ID>:" followed by 64 hex digits: HMAC-SHA256 under a key
// derived from the primary master key, tenant and purpose. Equal values give
// equal fingerprints within one tenant and purpose; without the master key a
// fingerprint cannot be computed or tested against guesses.
func (k *Keyring) Fingerprint(tenant, purpose string, value []byte) string {
	return k.fingerprint(k.primary, tenant, purpose, value)
}

// Fingerprints returns Fingerprint of value under every key in the keyring,
// the primary key's first and the others in ascending id order, so a
// uniqueness check can match rows fingerprinted under an older key during a
// rotation.
func (k *Keyring) Fingerprints(tenant, purpose string, value []byte) []string {
	out := make([]string, 0, len(k.ids))
	out = append(out, k.fingerprint(k.primary, tenant, purpose, value))
	for _, id := range k.ids {
		if id != k.primary {
			out = append(out, k.fingerprint(id, tenant, purpose, value))
		}
	}
	return out
}

// ShortFingerprint returns 8 hex digits of an HMAC-SHA256 of value under a
// key derived from the primary master key for (tenant, purpose), meant to be
// shown to users to tell secret values apart. It uses a key separate from
// Fingerprint's, so it reveals nothing about stored full fingerprints, and
// like them it cannot be computed without the master key.
func (k *Keyring) ShortFingerprint(tenant, purpose string, value []byte) string {
	return hex.EncodeToString(k.mac(k.primary, shortTag, tenant, purpose, value)[:4])
}

// CheckValue returns the key check value of master key id: 32 hex digits of
// an HMAC-SHA256 of a constant under a key derived from the master key for
// this purpose alone. Stored next to the data, it tells whether a configured
// key is the one the data was written with (two keys generated separately
// under the same id give different values) without revealing the key: it
// cannot be computed, or tested against guesses, without the key. ok is false
// when the keyring lacks id.
func (k *Keyring) CheckValue(id uint32) (value string, ok bool) {
	if !k.Has(id) {
		return "", false
	}
	return hex.EncodeToString(k.mac(id, checkTag, "", "", []byte(checkMessage))[:16]), true
}
