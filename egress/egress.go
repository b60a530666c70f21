// Package egress provides the service's one outbound HTTP client. Every
// request the service makes to a party it does not control (MCP servers,
// protected-resource and authorization-server metadata, client
// registration, token and revocation endpoints) goes through a Guard so that
// a tenant-supplied URL cannot be used to reach the service's own network
// (server-side request forgery).
//
// The Guard defends in two layers. Before any connection is made, every
// request URL (the first one and every redirect hop) is checked: http and
// https only, https unless the host is allow-listed, no userinfo, and no
// literal or obfuscated IP address in a blocked range. At connect time, the
// dialer's Control hook checks the address the socket is actually connecting
// to, so a host name that resolves (or re-resolves, DNS rebinding) to a
// loopback, private, link-local, shared (CGNAT), unique-local, multicast,
// NAT64/6to4-embedded private or unspecified address is refused no matter
// how the name was spelled. The connect-time check uses code.dny.dev/ssrf's
// deny lists.
//
// golang.org/x/oauth2 silently falls back to http.DefaultClient unless a
// client is put into its context; use Guard.OAuth2Context (equivalently,
// context.WithValue(ctx, oauth2.HTTPClient, g.Client())) for every oauth2
// call.
package egress

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"code.dny.dev/ssrf"
	"golang.org/x/oauth2"
)

// Defaults applied by New to zero-valued Config fields.
const (
	DefaultTimeout       = 30 * time.Second
	DefaultHeaderTimeout = 10 * time.Second
	DefaultDialTimeout   = 5 * time.Second
	DefaultMaxBodyBytes  = 1 << 20
	DefaultMaxRedirects  = 3

	// maxResponseHeaderBytes caps the response header block.
	maxResponseHeaderBytes = 64 << 10
)

// ErrRedirectRefused is returned (wrapped in a *url.Error by http.Client)
// when a redirect is not followed: the request was not a GET or HEAD, or the
// redirect limit was reached. Redirects to blocked targets return a
// *BlockedError instead.
var ErrRedirectRefused = errors.New("egress: redirect refused")

// Config configures a Guard. The zero value is a strict production
// configuration with the documented defaults.
type Config struct {
	// Allow is an explicit allow-list of host names, IP addresses and CIDR
	// prefixes (see ParseAllow). For an allow-listed host name the
	// connect-time IP check is skipped for whatever the name resolves to;
	// an allow-listed IP or prefix passes the IP check for those addresses
	// only. Plain http is permitted only to allow-listed hosts. It exists for
	// local development and tests and is empty by default.
	Allow []string
	// Timeout bounds a whole request including reading the body. Zero means
	// DefaultTimeout.
	Timeout time.Duration
	// HeaderTimeout bounds the wait for response headers after the request
	// was written, and the TLS handshake. Zero means DefaultHeaderTimeout.
	HeaderTimeout time.Duration
	// DialTimeout bounds establishing the TCP connection. Zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// MaxBodyBytes caps every response body; reading past it returns
	// ErrBodyTooLarge. Zero means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// MaxRedirects is how many redirects a GET or HEAD request may follow.
	// Zero means DefaultMaxRedirects; a negative value follows none.
	MaxRedirects int
	// OnBlock, when set, is called for every refused request or connection
	// (for audit and metrics). It receives the host name only, never a URL,
	// path or query.
	OnBlock func(ctx context.Context, host, reason string)
	// Instrument, when set, wraps the pooled transport behind the guard's
	// checks (tracing): it sees only requests the guard let through.
	Instrument func(http.RoundTripper) http.RoundTripper
}

// BlockedError reports a request or connection the Guard refused. It names
// the host and a short reason; it never contains the URL path or query.
type BlockedError struct {
	Host   string
	Reason string
}

// Error returns "egress blocked: <host>: <reason>".
func (e *BlockedError) Error() string {
	if e.Host == "" {
		return "egress blocked: " + e.Reason
	}
	return "egress blocked: " + e.Host + ": " + e.Reason
}

// Guard owns the SSRF-safe outbound HTTP client. It is safe for concurrent
// use; create one per process and share it.
type Guard struct {
	cfg      Config
	hosts    map[string]bool
	prefixes []netip.Prefix
	deny     *ssrf.Guardian

	safeDialer    *net.Dialer
	trustedDialer *net.Dialer
	base          *http.Transport
	client        *http.Client
	callerBound   *http.Client
}

// New validates cfg, applies defaults and builds the Guard and its client.
func New(cfg Config) (*Guard, error) {
	if cfg.Timeout < 0 || cfg.HeaderTimeout < 0 || cfg.DialTimeout < 0 {
		return nil, errors.New("egress: timeouts must not be negative")
	}
	if cfg.MaxBodyBytes < 0 {
		return nil, errors.New("egress: max body bytes must not be negative")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.HeaderTimeout == 0 {
		cfg.HeaderTimeout = DefaultHeaderTimeout
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	switch {
	case cfg.MaxRedirects == 0:
		cfg.MaxRedirects = DefaultMaxRedirects
	case cfg.MaxRedirects < 0:
		cfg.MaxRedirects = 0
	}

	g := &Guard{
		hosts: map[string]bool{},
		// Ports are not restricted: MCP servers commonly listen on ports
		// other than 80 and 443. Only the address ranges are enforced.
		deny: ssrf.New(ssrf.WithAnyPort()),
	}
	allow := make([]string, 0, len(cfg.Allow))
	for _, raw := range cfg.Allow {
		e, err := parseAllowEntry(raw)
		if err != nil {
			return nil, err
		}
		allow = append(allow, e.text)
		if e.host != "" {
			g.hosts[e.host] = true
		} else {
			g.prefixes = append(g.prefixes, e.prefix)
		}
	}
	cfg.Allow = allow
	g.cfg = cfg

	g.safeDialer = &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second, Control: g.control}
	g.trustedDialer = &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second, Control: controlNetwork}
	g.base = &http.Transport{
		Proxy:                  nil, // never route through an environment-configured proxy
		DialContext:            g.dialContext,
		ForceAttemptHTTP2:      true,
		TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    cfg.HeaderTimeout,
		ResponseHeaderTimeout:  cfg.HeaderTimeout,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
		MaxIdleConns:           100,
		MaxIdleConnsPerHost:    10,
		IdleConnTimeout:        90 * time.Second,
	}
	// The same transport without the response-header bound, for requests
	// whose callers bound them (CallerBoundClient); its own pool.
	patient := g.base.Clone()
	patient.ResponseHeaderTimeout = 0
	instrument := func(rt http.RoundTripper) http.RoundTripper {
		if cfg.Instrument != nil {
			return cfg.Instrument(rt)
		}
		return rt
	}
	g.client = &http.Client{
		Transport:     &transport{g: g, base: instrument(g.base)},
		CheckRedirect: g.checkRedirect,
		Timeout:       cfg.Timeout,
	}
	g.callerBound = &http.Client{
		Transport:     &transport{g: g, base: instrument(patient)},
		CheckRedirect: g.checkRedirect,
	}
	return g, nil
}

// Client returns the shared SSRF-safe client. Callers must not modify it.
// Every request's URL is checked before a connection is attempted, every
// redirect hop is re-checked (and redirects of anything but GET and HEAD are
// refused), the connected IP is checked at dial time, and response bodies
// are capped at Config.MaxBodyBytes.
func (g *Guard) Client() *http.Client { return g.client }

// CallerBoundClient returns a client with the same checks and caps as
// Client, for requests whose caller bounds them with its context: neither
// Config.Timeout nor Config.HeaderTimeout ends its requests (the dial and
// TLS handshake bounds still apply). An MCP server answers a tool call
// with the call's result, so its response headers come only when the tool
// is done: the provider's timeout must bound that wait, not HeaderTimeout.
// Callers must not modify it.
func (g *Guard) CallerBoundClient() *http.Client { return g.callerBound }

// OAuth2Context returns ctx carrying the Guard's client under
// oauth2.HTTPClient, so that golang.org/x/oauth2 token exchanges, refreshes
// and any other call made with the returned context go through the Guard
// instead of http.DefaultClient.
func (g *Guard) OAuth2Context(ctx context.Context) context.Context {
	return context.WithValue(ctx, oauth2.HTTPClient, g.client)
}

// Preflight applies the pre-connection URL rules of CheckURL to rawURL
// without making a request, and reports a refusal to Config.OnBlock as a
// refused request would be. Callers use it to refuse early a URL they will
// only request later, such as a token endpoint learnt from metadata. The
// connect-time IP check still applies when the URL is requested.
func (g *Guard) Preflight(ctx context.Context, rawURL string) error {
	if err := g.CheckURL(rawURL); err != nil {
		if be, ok := err.(*BlockedError); ok {
			g.report(ctx, be)
		}
		return err
	}
	return nil
}

// Preflight lets holders of Client() reach Guard.Preflight through the
// client's Transport (interface { Preflight(context.Context, string) error }).
func (t *transport) Preflight(ctx context.Context, rawURL string) error {
	return t.g.Preflight(ctx, rawURL)
}

// transport checks each request before handing it to the pooled
// http.Transport and caps the response body.
type transport struct {
	g    *Guard
	base http.RoundTripper
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := t.g.check(req.URL); err != nil {
		if req.Body != nil {
			_ = req.Body.Close() // RoundTrip must close the body even on error
		}
		t.g.report(req.Context(), err)
		return nil, err
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = newLimitedBody(resp.Body, t.g.cfg.MaxBodyBytes, resp.ContentLength)
	return resp, nil
}

// checkRedirect is the client's CheckRedirect: it refuses redirects of
// non-GET/HEAD requests (a redirected POST would re-send credentials or an
// authorization code somewhere else), caps the number of hops and applies
// the URL rules to the next hop before anything is dialed.
func (g *Guard) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > 0 {
		if m := via[0].Method; m != http.MethodGet && m != http.MethodHead {
			return fmt.Errorf("%w: %s requests are not redirected", ErrRedirectRefused, m)
		}
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		return fmt.Errorf("%w: %s requests are not redirected", ErrRedirectRefused, req.Method)
	}
	if len(via) > g.cfg.MaxRedirects {
		return fmt.Errorf("%w: more than %d redirects", ErrRedirectRefused, g.cfg.MaxRedirects)
	}
	if err := g.check(req.URL); err != nil {
		g.report(req.Context(), err)
		return err
	}
	return nil
}

func (g *Guard) report(ctx context.Context, err *BlockedError) {
	if g.cfg.OnBlock != nil {
		g.cfg.OnBlock(ctx, err.Host, err.Reason)
	}
}

// dialContext picks the dialer: allow-listed host names skip the IP check,
// everything else dials with the checking Control hook. A refusal from the
// hook becomes a *BlockedError naming the requested host.
func (g *Guard) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, &BlockedError{Reason: "invalid address"}
	}
	d := g.safeDialer
	if g.hosts[normHost(host)] {
		d = g.trustedDialer
	}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		var ce *controlError
		if errors.As(err, &ce) {
			be := &BlockedError{Host: host, Reason: ce.reason}
			g.report(ctx, be)
			return nil, be
		}
		return nil, err
	}
	return conn, nil
}

// controlError is what the Control hooks return; dialContext turns it into
// a *BlockedError.
type controlError struct{ reason string }

func (e *controlError) Error() string { return "egress blocked: " + e.reason }

func controlNetwork(network, _ string, _ syscall.RawConn) error {
	if network != "tcp4" && network != "tcp6" {
		return &controlError{reason: "network " + network + " not allowed"}
	}
	return nil
}

// control runs just before connect(2) with the address actually being
// connected to, after DNS resolution.
func (g *Guard) control(network, address string, c syscall.RawConn) error {
	if err := controlNetwork(network, address, c); err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return &controlError{reason: "unparseable address"}
	}
	addr := ap.Addr()
	if g.ipAllowed(addr) {
		return nil
	}
	if r := g.blockReason(addr); r != "" {
		return &controlError{reason: "connected address " + addr.String() + " is " + r}
	}
	return nil
}

// ipAllowed reports whether addr is in the allow-list.
func (g *Guard) ipAllowed(addr netip.Addr) bool {
	addr = addr.WithZone("")
	for _, p := range g.prefixes {
		if p.Contains(addr) || p.Contains(addr.Unmap()) {
			return true
		}
	}
	return false
}

type namedPrefix struct {
	p    netip.Prefix
	name string
}

// blockedRanges name the common blocked ranges for readable reasons. The
// authoritative deny list is ssrf's (checked after these), which also covers
// documentation, benchmarking, AS112 and other special-purpose ranges.
var blockedRanges = []namedPrefix{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared address space"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("fc00::/7"), "unique local"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
	{netip.MustParsePrefix("2002::/16"), "6to4"},
	{netip.MustParsePrefix("2001::/32"), "teredo"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use nat64"},
}

// nat64 is the well-known NAT64 prefix (RFC 6052): the last 32 bits are the
// IPv4 destination the gateway will connect to.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// blockReason returns why addr must not be connected to, or "" when it is a
// public address.
func (g *Guard) blockReason(addr netip.Addr) string {
	addr = addr.WithZone("")
	if addr.Is4In6() {
		// An IPv4-mapped address reaches the embedded IPv4 address.
		if r := g.blockReason(addr.Unmap()); r != "" {
			return "ipv4-mapped " + r
		}
		return ""
	}
	if nat64.Contains(addr) {
		// A NAT64 address reaches the embedded IPv4 address, so it is as
		// good or as bad as that address: 64:ff9b::7f00:1 is loopback,
		// NAT64 of a public address is allowed (IPv6-only clusters).
		b := addr.As16()
		v4 := netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
		if r := g.blockReason(v4); r != "" {
			return "nat64 of " + r
		}
		return ""
	}
	for _, n := range blockedRanges {
		if n.p.Contains(addr) {
			return n.name
		}
	}
	if err := g.deny.SafeAddr(addr); err != nil {
		return "reserved"
	}
	return ""
}

// normHost lower-cases an ASCII host name and drops one trailing dot.
func normHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(h), ".")
}
