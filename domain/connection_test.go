package domain

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
	"testing"
)

// TestConnectionID: a connection id is "c" and the first 26 lowercase
// base32hex characters of SHA-256 of the user id, 27 characters of [0-9a-v]
// whatever the user id holds; user ids differing only in case, or at the
// 255-byte limit, get different ids; the same user always gets the same.
func TestConnectionID(t *testing.T) {
	long := strings.Repeat("é", 127) + "x" // 255 bytes
	users := []string{"alice", "Alice", "ALICE", "alice ", "bob@example.com", "用户/../%2F?#", long, long[:253] + "y"}
	seen := map[string]string{}
	for _, u := range users {
		id := ConnectionID(u)
		if ConnectionIDLen != 27 || len(id) != 27 || !IsConnectionID(id) {
			t.Fatalf("ConnectionID(%q) = %q", u, id)
		}
		for _, r := range id[1:] {
			if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'v') {
				t.Fatalf("ConnectionID(%q) = %q holds %q", u, id, r)
			}
		}
		sum := sha256.Sum256([]byte(u))
		if want := "c" + strings.ToLower(base32.HexEncoding.EncodeToString(sum[:]))[:26]; id != want {
			t.Fatalf("ConnectionID(%q) = %q, want %q (documented derivation)", u, id, want)
		}
		if other, dup := seen[id]; dup {
			t.Fatalf("%q and %q share id %q", u, other, id)
		}
		seen[id] = u
		if ConnectionID(u) != id {
			t.Fatalf("ConnectionID(%q) is not stable", u)
		}
	}
	for _, bad := range []string{"", "c", "C" + ConnectionID("a")[1:], ConnectionID("a") + "0", "d" + ConnectionID("a")[1:], "c" + strings.Repeat("w", 26)} {
		if IsConnectionID(bad) {
			t.Errorf("IsConnectionID(%q) = true", bad)
		}
	}
}
