package caller

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// userPatterns are the end users a caller may act for: exact user ids, and
// prefixes (an entry ending in "*" matches every id starting with what
// precedes the "*"; "*" alone matches every user). Ids compare byte for
// byte, as the API compares them.
type userPatterns struct {
	exact    map[string]bool
	prefixes []string
}

// maxUserPatterns bounds a caller's list, so that a check stays cheap.
const maxUserPatterns = 1000

func newUserPatterns(list []string) (*userPatterns, error) {
	if len(list) > maxUserPatterns {
		return nil, fmt.Errorf("users lists %d entries, at most %d are allowed", len(list), maxUserPatterns)
	}
	p := &userPatterns{exact: map[string]bool{}}
	for j, u := range list {
		if err := checkUserPattern(u); err != nil {
			return nil, fmt.Errorf("users[%d]: %w", j, err)
		}
		if prefix, ok := strings.CutSuffix(u, "*"); ok {
			p.prefixes = append(p.prefixes, prefix)
			continue
		}
		p.exact[u] = true
	}
	return p, nil
}

// checkUserPattern applies the API's user id rule (1 to 256 bytes of
// printable UTF-8, not blank) to an entry.
func checkUserPattern(u string) error {
	switch {
	case strings.TrimSpace(u) == "":
		return errors.New("must not be empty or blank")
	case len(u) > 256:
		return errors.New("must be at most 256 bytes")
	case !utf8.ValidString(u) || strings.IndexFunc(u, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0:
		return errors.New("must be printable UTF-8")
	}
	return nil
}

func (p *userPatterns) match(user string) bool {
	if p.exact[user] {
		return true
	}
	for _, prefix := range p.prefixes {
		if strings.HasPrefix(user, prefix) {
			return true
		}
	}
	return false
}

// ActsForAnyUser reports whether the caller may act for every end user of
// its tenants (no users list in the callers file).
func (i *Identity) ActsForAnyUser() bool { return i != nil && i.users == nil }

// AllowsUser reports whether the caller may act for the end user: always
// for a caller without a users list, else when an entry matches. An empty
// user (a tenant-wide grant) is not a user and is decided by the caller's
// tenants and permissions alone.
func (i *Identity) AllowsUser(user string) bool {
	if i == nil {
		return false
	}
	return user == "" || i.users == nil || i.users.match(user)
}

// LimitUsers returns a copy of the identity that may act only for the
// users the patterns name (the callers file's "users"; tests and
// embedders building identities in code).
func (i *Identity) LimitUsers(patterns []string) (*Identity, error) {
	users, err := newUserPatterns(patterns)
	if err != nil {
		return nil, err
	}
	c := *i
	c.users = users
	return &c, nil
}
