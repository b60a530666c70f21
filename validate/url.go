package validate

import (
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/mcpauth/mcpauth/hostname"

	"github.com/mcpauth/mcpauth/apperr"
)

// ServerURL checks an MCP server URL and returns it parsed. Surrounding
// white space is trimmed. The URL must be at most 2048 bytes of valid UTF-8
// without spaces or control characters, use http or https, name a valid
// host (a DNS name, an IDN name or an IP address without a zone) and an
// optional port from 1 to 65535, and carry neither userinfo nor a fragment.
// Whether the host may actually be reached (https, blocked address ranges)
// is the egress guard's decision, made on every request.
func ServerURL(field, raw string) (*url.URL, error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return nil, apperr.Invalid(field, "is required")
	}
	if err := urlText(field, s); err != nil {
		return nil, err
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, apperr.Invalid(field, "must be a valid URL")
	}
	if sc := strings.ToLower(u.Scheme); sc != "http" && sc != "https" {
		return nil, apperr.Invalid(field, "must use http or https")
	}
	if err := authority(field, u); err != nil {
		return nil, err
	}
	if strings.Contains(s, "#") {
		return nil, apperr.Invalid(field, "must not contain a fragment")
	}
	return u, nil
}

// urlText applies the byte-level rules shared by ServerURL and ReturnURL.
func urlText(field, s string) error {
	switch {
	case len(s) > MaxURLBytes:
		return apperr.Invalid(field, "must be at most %d bytes", MaxURLBytes)
	case !utf8.ValidString(s):
		return apperr.Invalid(field, "must be valid UTF-8")
	case strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.Is(unicode.Cc, r) || unsafeRune(r) }) >= 0:
		return apperr.Invalid(field, "must not contain spaces or control characters")
	}
	return nil
}

// parseBrowserURL applies urlText, refuses a backslash (browsers read '\'
// as '/', which would make them see a different host than these checks)
// and parses s.
func parseBrowserURL(field, s string) (*url.URL, error) {
	if err := urlText(field, s); err != nil {
		return nil, err
	}
	if strings.Contains(s, `\`) {
		return nil, apperr.Invalid(field, "must not contain a backslash")
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, apperr.Invalid(field, "must be a valid URL")
	}
	return u, nil
}

// authority checks the host, port and userinfo of an http(s) URL.
func authority(field string, u *url.URL) error {
	if u.Opaque != "" || u.Host == "" {
		return apperr.Invalid(field, "must include a host")
	}
	if u.User != nil {
		return apperr.Invalid(field, "must not contain userinfo")
	}
	if rule := hostPortRule(u); rule != "" {
		return apperr.Invalid(field, "%s", rule)
	}
	return nil
}

// hostPortRule returns the rule u's host or port breaks, or "".
func hostPortRule(u *url.URL) string {
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "must have a port between 1 and 65535"
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return "must have a port between 1 and 65535"
	}
	h := u.Hostname()
	if strings.HasPrefix(u.Host, "[") {
		a, err := netip.ParseAddr(h)
		if err != nil || !a.Is6() {
			return "must have a valid host"
		}
		if a.Zone() != "" {
			return "must not contain an IP zone"
		}
		return ""
	}
	if a, err := netip.ParseAddr(h); err == nil && a.Is4() {
		return ""
	}
	a, err := hostname.ASCII(h)
	if err != nil || !hostname.Valid(a) {
		return "must have a valid host"
	}
	return ""
}

// hostPort returns the canonical authority of u: the host lower-cased (an
// internationalised name converted to punycode, an IPv6 address in
// brackets) and the port, unless it is the scheme's default.
func hostPort(scheme string, u *url.URL) string {
	h := u.Hostname()
	if a, err := hostname.ASCII(h); err == nil {
		h = a
	} else {
		h = asciiLower(h)
	}
	port := u.Port()
	if (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		port = ""
	}
	if port != "" {
		return net.JoinHostPort(h, port)
	}
	if strings.Contains(h, ":") {
		return "[" + h + "]"
	}
	return h
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return string(b)
}

// origin returns scheme://host[:port] in canonical form.
func origin(u *url.URL) string {
	scheme := asciiLower(u.Scheme)
	return (&url.URL{Scheme: scheme, Host: hostPort(scheme, u)}).String()
}

// NormalizeURL returns the canonical form of a server URL, used to decide
// whether two URLs name the same server (uniqueness within a tenant is a
// keyed hash of this string). It applies only these rules: scheme and host
// lower-cased, an internationalised host name converted to punycode, the
// scheme's default port (:443 for https, :80 for http) dropped, trailing
// slashes of the path removed (so "/" becomes ""), the fragment dropped. The
// path keeps its case and escaping (percent-encoding and dot segments are
// not rewritten) and the query is kept exactly as given, because servers may
// treat either as significant. It is idempotent for URLs accepted by
// ServerURL: normalising the parsed result again gives the same string.
func NormalizeURL(u *url.URL) string {
	return canonical(u, true)
}

// CanonicalResource returns the canonical URI of an MCP server as sent in
// the RFC 8707 "resource" parameter on authorization, token and refresh
// requests and compared with a protected-resource metadata document's
// "resource". The MCP authorization specification defines it as the
// server's absolute URI with lower-case scheme and host, no fragment and,
// by preference, no trailing slash; it is NormalizeURL without the query,
// because RFC 8707 section 2 says a resource indicator SHOULD NOT include a
// query and a server's metadata names itself without one. For example
// "HTTPS://MCP.Example.com:443/mcp/?tenant=1" becomes
// "https://mcp.example.com/mcp". Authorization servers that need a
// different value are handled by a per-provider override, not here.
func CanonicalResource(u *url.URL) string {
	return canonical(u, false)
}

func canonical(u *url.URL, withQuery bool) string {
	if u == nil {
		return ""
	}
	s := origin(u)
	p := strings.TrimRight(u.EscapedPath(), "/")
	if p != "" && p[0] != '/' {
		p = "/" + p
	}
	s += p
	if withQuery && u.RawQuery != "" {
		s += "?" + u.RawQuery
	}
	return s
}

// masked replaces everything a masked URL hides.
const masked = "******"

// MaskURL returns the form of a URL that may be shown back to callers:
// scheme and host (with a non-default port) are kept, and when the URL has
// anything else (userinfo, a path other than "/", a query or a fragment) it
// is replaced by "/******", for example "https://mcp.example.com/******".
// Paths and queries of MCP server URLs often carry API keys or tenant
// identifiers, so none of them is shown. A URL without a well-formed host
// is masked entirely as "******".
func MaskURL(u *url.URL) string {
	if u == nil || u.Host == "" || !validScheme(u.Scheme) || hostPortRule(u) != "" {
		return masked
	}
	s := origin(u)
	if u.User != nil || u.Opaque != "" || (u.Path != "" && u.Path != "/") || (u.RawPath != "" && u.RawPath != "/") ||
		u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawFragment != "" {
		s += "/" + masked
	}
	return s
}

// validScheme reports an RFC 3986 scheme.
func validScheme(s string) bool {
	if s == "" || !(s[0] >= 'a' && s[0] <= 'z' || s[0] >= 'A' && s[0] <= 'Z') {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(isAlnum(c) || c == '+' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// ReturnURL checks a URL the browser is sent back to after an authorization
// flow. It must be at most 2048 bytes without spaces, control characters or
// backslashes (browsers read '\' as '/', which would make them see a
// different host than this check), use https (http only for localhost,
// 127.0.0.1 and [::1]), carry no userinfo, and its origin
// (scheme://host[:port], compared after lower-casing and dropping a default
// port) must be one of allowedOrigins. Callers skip the check when no return
// URL was given.
func ReturnURL(field, raw string, allowedOrigins []string) error {
	if raw == "" {
		return apperr.Invalid(field, "is required")
	}
	u, err := parseBrowserURL(field, raw)
	if err != nil {
		return err
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
	case "http":
		if h := strings.ToLower(u.Hostname()); h != "localhost" && h != "127.0.0.1" && h != "::1" {
			return apperr.Invalid(field, "must use https")
		}
	default:
		return apperr.Invalid(field, "must use https")
	}
	if err := authority(field, u); err != nil {
		return err
	}
	o := origin(u)
	for _, a := range allowedOrigins {
		au, err := url.Parse(strings.TrimSpace(a))
		if err != nil || au.Host == "" || au.User != nil {
			continue
		}
		if origin(au) == o {
			return nil
		}
	}
	return apperr.Invalid(field, "origin is not allowed")
}

// WithinServer reports whether target lies on server: the same origin
// (scheme, host and port, compared as NormalizeURL compares them) and a
// path that is server's path or below it ("/mcp" covers "/mcp" and
// "/mcp/x", not "/mcpx" or "/admin"). A target path with a dot segment
// (".", "..", also percent-encoded) is never within: a server may resolve
// it to a path outside. Query and fragment are not compared.
func WithinServer(server, target *url.URL) bool {
	if server == nil || target == nil || target.User != nil || origin(server) != origin(target) {
		return false
	}
	tp := target.EscapedPath()
	for _, seg := range strings.Split(tp, "/") {
		if s, err := url.PathUnescape(seg); err != nil || s == "." || s == ".." {
			return false
		}
	}
	base := strings.TrimRight(server.EscapedPath(), "/")
	if base == "" {
		return true
	}
	return tp == base || strings.HasPrefix(tp, base+"/")
}
