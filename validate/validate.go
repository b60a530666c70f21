// Package validate holds the service's input rules. Each function checks one
// kind of request field and, when the value breaks a rule, returns an
// apperr.Invalid error naming the field path (as in the proto, for example
// "provider.server_url") and the rule in a short, lower-case sentence. The
// messages never repeat the offending value, because the value may be a
// secret (a header value, a URL with a token in its query).
//
// The package also normalises and masks URLs: NormalizeURL is the form used
// for uniqueness (the keyed hash of a provider's server URL),
// CanonicalResource is the RFC 8707 resource indicator sent to
// authorization servers, and MaskURL is the only form of a stored URL that
// is ever shown back.
package validate

import (
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mcpauth/mcpauth/apperr"
)

// Limits applied by the functions of this package.
const (
	MaxURLBytes         = 2048
	MaxDisplayNameRunes = 128
	MaxIdentifierLen    = 64
	MaxResourceIDLen    = 63
	MaxIconBytes        = 2048
	MaxHeaders          = 32
	MaxHeaderNameLen    = 128
	MaxHeaderValueBytes = 8 << 10
	DefaultPageSize     = 50
	MaxPageSize         = 500
	MaxScopes           = 64
	MaxScopeLen         = 256
	MaxUserIDBytes      = 256
)

// DisplayName checks a human-readable name: 1 to 128 characters of valid
// UTF-8, not only white space, without control characters, line separators
// or bidirectional-override characters (which can make a name display as
// something else).
func DisplayName(field, s string) error {
	switch {
	case s == "":
		return apperr.Invalid(field, "is required")
	case !utf8.ValidString(s):
		return apperr.Invalid(field, "must be valid UTF-8")
	case utf8.RuneCountInString(s) > MaxDisplayNameRunes:
		return apperr.Invalid(field, "must be at most %d characters", MaxDisplayNameRunes)
	case strings.IndexFunc(s, unsafeRune) >= 0:
		return apperr.Invalid(field, "must not contain control characters")
	case strings.TrimSpace(s) == "":
		return apperr.Invalid(field, "must not be blank")
	}
	return nil
}

// unsafeRune reports control characters, line and paragraph separators and
// the bidirectional embedding, override and isolate characters.
func unsafeRune(r rune) bool {
	switch {
	case unicode.Is(unicode.Cc, r):
		return true
	case r == '\u2028' || r == '\u2029':
		return true
	case r >= '\u202a' && r <= '\u202e', r >= '\u2066' && r <= '\u2069':
		return true
	}
	return false
}

// Identifier checks a server identifier: 1 to 64 characters of ASCII
// letters, digits, '_', '.' and '-', starting with a letter or digit.
func Identifier(field, s string) error {
	switch {
	case s == "":
		return apperr.Invalid(field, "is required")
	case len(s) > MaxIdentifierLen:
		return apperr.Invalid(field, "must be at most %d characters", MaxIdentifierLen)
	case !isAlnum(s[0]):
		return apperr.Invalid(field, "must start with a letter or digit")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return apperr.Invalid(field, "must contain only letters, digits, '_', '.' and '-'")
		}
	}
	return nil
}

// ResourceID checks the id segment of a resource name (a tenant or provider
// id): 1 to 63 characters of lower-case ASCII letters, digits and '-',
// starting with a letter or digit and not ending with '-'. These ids are
// DNS-label shaped so they are safe in URLs, keys and logs.
func ResourceID(field, s string) error {
	switch {
	case s == "":
		return apperr.Invalid(field, "is required")
	case len(s) > MaxResourceIDLen:
		return apperr.Invalid(field, "must be at most %d characters", MaxResourceIDLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return apperr.Invalid(field, "must contain only lower-case letters, digits and '-'")
		}
	}
	switch {
	case s[0] == '-':
		return apperr.Invalid(field, "must start with a letter or digit")
	case s[len(s)-1] == '-':
		return apperr.Invalid(field, "must not end with '-'")
	}
	return nil
}

// Timeout checks that d lies within [min, max].
func Timeout(field string, d, min, max time.Duration) error {
	if d < min || d > max {
		return apperr.Invalid(field, "must be between %s and %s", min, max)
	}
	return nil
}

// PageSize checks a list request's page size and returns the size to use: 0
// means DefaultPageSize (50); 1 to MaxPageSize (500) are used as given;
// anything else is an error.
func PageSize(field string, n int32) (int, error) {
	switch {
	case n == 0:
		return DefaultPageSize, nil
	case n < 0:
		return 0, apperr.Invalid(field, "must not be negative")
	case n > MaxPageSize:
		return 0, apperr.Invalid(field, "must be at most %d", MaxPageSize)
	}
	return int(n), nil
}

// Scopes checks a list of OAuth scopes: at most 64, each 1 to 256
// characters of the RFC 6749 section 3.3 scope-token set (printable ASCII
// except space, '"' and '\'). The field path of a bad scope is
// field[index].
func Scopes(field string, s []string) error {
	if len(s) > MaxScopes {
		return apperr.Invalid(field, "must have at most %d scopes", MaxScopes)
	}
	for i, sc := range s {
		f := indexField(field, i)
		switch {
		case sc == "":
			return apperr.Invalid(f, "must not be empty")
		case len(sc) > MaxScopeLen:
			return apperr.Invalid(f, "must be at most %d characters", MaxScopeLen)
		}
		for j := 0; j < len(sc); j++ {
			if c := sc[j]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
				return apperr.Invalid(f, "must contain only printable ASCII characters other than space, '\"' and '\\'")
			}
		}
	}
	return nil
}

// UserID checks an end-user identifier supplied by the caller: 1 to 256
// bytes of valid UTF-8, printable characters only (letters, marks, numbers,
// punctuation, symbols and the ASCII space), not blank.
func UserID(field, s string) error {
	switch {
	case s == "":
		return apperr.Invalid(field, "is required")
	case len(s) > MaxUserIDBytes:
		return apperr.Invalid(field, "must be at most %d bytes", MaxUserIDBytes)
	case !utf8.ValidString(s):
		return apperr.Invalid(field, "must be valid UTF-8")
	case strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0:
		return apperr.Invalid(field, "must contain only printable characters")
	case strings.TrimSpace(s) == "":
		return apperr.Invalid(field, "must not be blank")
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func indexField(field string, i int) string {
	return field + "[" + strconv.Itoa(i) + "]"
}
