// Package hostname holds mcpauth's one rule for DNS host names, shared by
// input validation (a provider's URL) and the egress guard (its allow-list
// and the hosts it dials), so the two can never disagree on what a host
// name is.
package hostname

import (
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// ASCII returns h lower-cased, with an internationalised name converted to
// its ASCII (punycode) form the way net/http resolves it, so that for
// example full-width digits are seen as the digits they become.
func ASCII(h string) (string, error) {
	for i := 0; i < len(h); i++ {
		if h[i] >= utf8.RuneSelf {
			a, err := idna.Lookup.ToASCII(h)
			if err != nil {
				return "", err
			}
			return strings.ToLower(a), nil
		}
	}
	return strings.ToLower(h), nil
}

// Valid reports whether h, in the form ASCII returns, is a DNS name mcpauth
// accepts: labels of 1 to 63 letters, digits, '-' and '_' that neither start
// nor end with '-', at most 253 characters in all, and a last label that a
// permissive resolver (inet_aton, the WHATWG URL standard) could not read as
// an IPv4 number: not all digits (decimal or octal) and not "0x…".
func Valid(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	labels := strings.Split(h, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	last := labels[len(labels)-1]
	numeric := strings.IndexFunc(last, func(r rune) bool { return r < '0' || r > '9' }) < 0
	hex := len(last) > 1 && last[0] == '0' && last[1] == 'x'
	return !numeric && !hex
}
