package domain

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// connectionIDEncoding is lowercase base32hex without padding (RFC 4648
// section 7): digits and a-v, so an id sorts like its bytes and is a valid
// resource id segment.
var connectionIDEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// ConnectionIDLen is the length of a connection id: "c" and 26 characters.
const ConnectionIDLen = 27

// ConnectionID is the resource id of user's connection to a provider
// (tenants/{tenant}/providers/{provider}/connections/{id}): "c" followed by
// the first 130 bits of SHA-256(user) in lowercase base32hex, 27 characters
// in all. User ids are the calling platform's own (up to 255 bytes of
// printable UTF-8, compared exactly, so "Alice" and "alice" are two users
// with two ids); they may hold characters a resource name cannot, and a
// derived id keeps their length, charset and case out of URLs, logs of
// proxies and page tokens. The id is stable: the same user always has the
// same id, so a platform can compute it without a lookup.
func ConnectionID(user string) string {
	sum := sha256.Sum256([]byte(user))
	return "c" + connectionIDEncoding.EncodeToString(sum[:])[:ConnectionIDLen-1]
}

// IsConnectionID reports whether id has the shape of a connection id.
func IsConnectionID(id string) bool {
	if len(id) != ConnectionIDLen || id[0] != 'c' {
		return false
	}
	return strings.IndexFunc(id[1:], func(r rune) bool { return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'v') }) < 0
}
