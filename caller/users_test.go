package caller

import (
	"strings"
	"testing"
)

// TestCallerUsers: a callers-file entry with users acts only for the users
// it names (exact ids, prefixes ending in "*"); one without acts for any
// user; a request naming no user is left to tenants and permissions.
func TestCallerUsers(t *testing.T) {
	t.Parallel()
	kAny, hAny, _ := NewKey()
	kOne, hOne, _ := NewKey()
	kNone, hNone, _ := NewKey()
	a, err := parseFile("callers.json", []byte(`{"callers": [
		{"name": "platform", "key_sha256": "`+hAny+`", "tenants": ["acme"], "permissions": ["tools.call"]},
		{"name": "alice-agent", "key_sha256": "`+hOne+`", "tenants": ["acme"], "permissions": ["tools.call"],
		 "users": ["alice@acme", "team-a/*"]},
		{"name": "nobody", "key_sha256": "`+hNone+`", "tenants": ["acme"], "permissions": ["tools.call"], "users": []}]}`))
	if err != nil {
		t.Fatal(err)
	}
	platform, _ := a.Authenticate(kAny)
	agent, _ := a.Authenticate(kOne)
	nobody, _ := a.Authenticate(kNone)
	for _, c := range []struct {
		id   *Identity
		user string
		want bool
	}{
		{platform, "bob", true},
		{platform, "", true},
		{agent, "alice@acme", true},
		{agent, "ALICE@acme", false}, // ids compare byte for byte
		{agent, "alice@acme.evil", false},
		{agent, "team-a/carol", true},
		{agent, "team-b/carol", false},
		{agent, "", true},
		{nobody, "alice@acme", false},
		{nobody, "", true},
		{nil, "", false},
	} {
		if got := c.id.AllowsUser(c.user); got != c.want {
			name := "<nil>"
			if c.id != nil {
				name = c.id.Name
			}
			t.Errorf("%s.AllowsUser(%q) = %v, want %v", name, c.user, got, c.want)
		}
	}
	if !platform.ActsForAnyUser() || agent.ActsForAnyUser() || nobody.ActsForAnyUser() {
		t.Fatal("ActsForAnyUser wrong")
	}
	limited, err := platform.LimitUsers([]string{"bob"})
	if err != nil || limited.AllowsUser("carol") || !limited.AllowsUser("bob") || !platform.AllowsUser("carol") {
		t.Fatalf("LimitUsers: %v", err)
	}
}

// TestCallerUsersRejects: a users entry that no user id could be is refused
// with the entry's position.
func TestCallerUsersRejects(t *testing.T) {
	t.Parallel()
	_, hash, _ := NewKey()
	for name, users := range map[string][]string{
		"empty":   {""},
		"blank":   {"  "},
		"long":    {strings.Repeat("a", 257)},
		"control": {"ali\nce"},
		"invalid": {"\xff"},
	} {
		_, err := FromFile(File{Callers: []FileCaller{{Name: "x", KeySHA256: hash, Tenants: []string{"a"}, Users: users}}})
		if err == nil || !strings.Contains(err.Error(), "users[0]") {
			t.Errorf("%s: err = %v, want a refusal naming users[0]", name, err)
		}
	}
}
