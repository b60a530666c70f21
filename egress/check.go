package egress

import (
	"fmt"
	"net/netip"
	"net/url"
	"strings"

	"github.com/mcpauth/mcpauth/hostname"
)

// CheckURL is the pre-flight check applied to every request and redirect
// hop before any connection is made. The URL must parse, use http or https
// (https unless the host is allow-listed), name a host and carry no
// userinfo. A literal IP address is refused when it is in a blocked range,
// and so is any host that only looks like an IP address in a form other
// than canonical dotted decimal or bracketed IPv6 (decimal "2130706433", hex
// "0x7f000001", octal "0177.0.0.1", short "127.1"): resolvers disagree about
// what those mean, so they are never dialed unless allow-listed. The names
// "localhost" and "*.localhost" are refused unless allow-listed (RFC 6761
// reserves them for loopback). Host names are otherwise accepted here; what
// they resolve to is checked when the connection is made. A refusal is a
// *BlockedError.
func (g *Guard) CheckURL(rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the whole URL: do not wrap it.
		return &BlockedError{Reason: "invalid url"}
	}
	if be := g.check(u); be != nil {
		return be
	}
	return nil
}

// check implements CheckURL on a parsed URL. It returns a typed nil-able
// pointer so callers can report it without a type assertion.
func (g *Guard) check(u *url.URL) *BlockedError {
	if u == nil {
		return &BlockedError{Reason: "invalid url"}
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return &BlockedError{Host: u.Hostname(), Reason: "scheme must be http or https"}
	}
	if u.Opaque != "" {
		return &BlockedError{Reason: "url must be absolute with a host"}
	}
	if u.User != nil {
		return &BlockedError{Host: u.Hostname(), Reason: "userinfo not allowed"}
	}
	host := u.Hostname()
	if host == "" {
		return &BlockedError{Reason: "missing host"}
	}
	key, err := asciiHost(host)
	if err != nil {
		return &BlockedError{Host: host, Reason: "invalid host"}
	}
	allowed := g.hosts[key]
	addr, perr := netip.ParseAddr(key)
	isIP := perr == nil
	if isIP {
		if addr.Zone() != "" {
			return &BlockedError{Host: host, Reason: "ip zone not allowed"}
		}
		allowed = allowed || g.ipAllowed(addr)
	}
	if scheme == "http" && !allowed {
		return &BlockedError{Host: host, Reason: "https required"}
	}
	if allowed {
		return nil
	}
	switch {
	case isIP:
		if r := g.blockReason(addr); r != "" {
			return &BlockedError{Host: host, Reason: "address is " + r}
		}
	case ipLike(key):
		return &BlockedError{Host: host, Reason: "non-canonical ip address"}
	case key == "localhost" || strings.HasSuffix(key, ".localhost"):
		return &BlockedError{Host: host, Reason: "address is loopback"}
	}
	return nil
}

// asciiHost returns the host as it will be resolved: hostname.ASCII
// without a trailing dot.
func asciiHost(h string) (string, error) {
	a, err := hostname.ASCII(h)
	if err != nil {
		return "", err
	}
	return normHost(a), nil
}

// ipLike reports whether a host name would be taken for an IPv4 address by
// a permissive parser (inet_aton, the WHATWG URL standard): its last label
// is a number in decimal, octal or hex. A real domain name never has a
// numeric top-level label.
func ipLike(host string) bool {
	host = strings.TrimSuffix(host, ".")
	last := host[strings.LastIndexByte(host, '.')+1:]
	if last == "" {
		return false
	}
	if len(last) >= 2 && last[0] == '0' && (last[1] == 'x' || last[1] == 'X') {
		for _, c := range last[2:] {
			if !isHex(c) {
				return false
			}
		}
		return true
	}
	for _, c := range last {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func isHex(c rune) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// ParseAllow parses a comma-separated allow-list (for example the value of
// an environment variable) into normalised entries suitable for
// Config.Allow. Each entry is a host name ("localhost", "mcp.internal"), an
// IP address ("127.0.0.1", "::1") or a CIDR prefix ("127.0.0.0/8"). Entries
// with ports, wildcards, zones or IP-like host names are rejected. Blank
// entries are ignored.
func ParseAllow(list string) ([]string, error) {
	var out []string
	for _, raw := range strings.Split(list, ",") {
		if strings.TrimSpace(raw) == "" {
			continue
		}
		e, err := parseAllowEntry(raw)
		if err != nil {
			return nil, err
		}
		out = append(out, e.text)
	}
	return out, nil
}

type allowEntry struct {
	text   string       // normalised form
	host   string       // set for host names
	prefix netip.Prefix // set for addresses and prefixes
}

func parseAllowEntry(raw string) (allowEntry, error) {
	s := strings.ToLower(strings.TrimSpace(raw))
	if s == "" {
		return allowEntry{}, fmt.Errorf("egress: empty allow-list entry")
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return allowEntry{}, fmt.Errorf("egress: allow-list entry %q is not a valid CIDR prefix", raw)
		}
		p = p.Masked()
		return allowEntry{text: p.String(), prefix: p}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return allowEntry{}, fmt.Errorf("egress: allow-list entry %q must not have a zone", raw)
		}
		a = a.Unmap()
		return allowEntry{text: a.String(), prefix: netip.PrefixFrom(a, a.BitLen())}, nil
	}
	h, err := asciiHost(s)
	if err != nil || !hostname.Valid(h) {
		return allowEntry{}, fmt.Errorf("egress: allow-list entry %q is not a host name, IP address or CIDR prefix", raw)
	}
	return allowEntry{text: h, host: h}, nil
}
