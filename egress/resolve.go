package egress

import (
	"context"
	"net"
	"net/netip"
	"net/url"
)

// CheckResolved is Preflight plus a look-up of the host's addresses now:
// a host name that resolves to a blocked address is refused too. It is for
// URLs stored to be requested much later (webhook endpoints), where refusing
// at once beats failing at every delivery; the connect-time check still
// applies at each request (DNS may change in between). Allow-listed hosts
// are not looked up.
func (g *Guard) CheckResolved(ctx context.Context, rawURL string) error {
	if err := g.Preflight(ctx, rawURL); err != nil {
		return err
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return &BlockedError{Reason: "invalid url"}
	}
	host := u.Hostname()
	key, err := asciiHost(host)
	if err != nil {
		return &BlockedError{Host: host, Reason: "invalid host"}
	}
	if g.hosts[key] {
		return nil
	}
	if _, err := netip.ParseAddr(key); err == nil {
		return nil // an address literal: Preflight checked it
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", key)
	if err != nil || len(addrs) == 0 {
		be := &BlockedError{Host: host, Reason: "host does not resolve"}
		return be
	}
	for _, a := range addrs {
		if g.ipAllowed(a) {
			continue
		}
		if r := g.blockReason(a); r != "" {
			be := &BlockedError{Host: host, Reason: "resolves to " + a.String() + ", which is " + r}
			g.report(ctx, be)
			return be
		}
	}
	return nil
}
