// Package oauthclient is the OAuth 2.1 client side of the MCP authorization
// specification (revision 2025-11-25, with the 2025-03-26 fallbacks): it
// probes an MCP server, discovers its protected-resource and
// authorization-server metadata, registers a client dynamically, builds the
// authorization URL (PKCE S256, state, resource, scope), checks the RFC 9207
// iss parameter, exchanges the code, refreshes and revokes tokens.
//
// The package holds no storage and no flow state: callers persist what it
// returns. Every request goes through the *http.Client given to New (the
// egress guard lives there); nothing here falls back to http.DefaultClient.
// Error messages are short facts: they never contain a token, a code, a
// verifier, a client secret or an upstream response body.
package oauthclient

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/mcpauth/mcpauth/dpop"
)

// ProtocolVersion is the MCP protocol revision the probe announces.
const ProtocolVersion = "2025-11-25"

// Body caps. Metadata documents are small; token responses may carry large
// JWTs. A body over its cap is an error, never silently truncated.
const (
	maxMetadataBytes = 256 << 10
	maxTokenBytes    = 1 << 20
	maxDrainBytes    = 64 << 10
)

const (
	defaultMetadataTTL  = 10 * time.Minute
	defaultCacheEntries = 512
	defaultCacheBytes   = 8 << 20
	maxRedirects        = 10
)

// Errors callers branch on. They are wrapped with %w, so use errors.Is.
var (
	// ErrResourceMismatch reports protected-resource metadata whose
	// "resource" is not the canonical URI of the MCP server.
	ErrResourceMismatch = errors.New("protected resource metadata names another resource")
	// ErrIssuerMismatch reports an issuer that differs from the expected
	// one: in authorization-server metadata, or in the RFC 9207 "iss"
	// authorization response parameter.
	ErrIssuerMismatch = errors.New("issuer mismatch")
	// ErrNoPKCE reports an authorization server that does not advertise
	// PKCE with S256.
	ErrNoPKCE = errors.New("authorization server does not advertise PKCE S256")
	// ErrInvalidGrant reports a token endpoint answer of "invalid_grant":
	// the code or refresh token is dead and the user must authorize again.
	ErrInvalidGrant = errors.New("authorization grant rejected")
	// ErrInvalidClient reports a token endpoint answer of "invalid_client"
	// or "unauthorized_client": the client registration is unknown or may
	// not use this grant.
	ErrInvalidClient = errors.New("client rejected by authorization server")
	// ErrNoAuthServerMetadata reports that no usable authorization-server
	// metadata was found at any of the well-known locations.
	ErrNoAuthServerMetadata = errors.New("no authorization server metadata found")
	// ErrNoRegistrationEndpoint reports an authorization server without a
	// dynamic client registration endpoint.
	ErrNoRegistrationEndpoint = errors.New("authorization server has no registration endpoint")
	// ErrNoRevocationEndpoint reports an authorization server without an
	// RFC 7009 revocation endpoint.
	ErrNoRevocationEndpoint = errors.New("authorization server has no revocation endpoint")
	// ErrNoBearerChallenge reports a WWW-Authenticate header without a
	// Bearer challenge.
	ErrNoBearerChallenge = errors.New("no bearer challenge")
	// ErrReservedParameter reports an extra authorization parameter that
	// would override a protocol parameter.
	ErrReservedParameter = errors.New("extra parameter overrides a protocol parameter")
	// ErrUnsupportedTokenType reports a token response whose token_type is
	// not the one asked for: Bearer, or DPoP when a DPoP proof was sent
	// (never a Bearer fallback, RFC 9449 section 5).
	ErrUnsupportedTokenType = errors.New("unexpected token type")
	// ErrResponseTooLarge reports a response body over its size cap.
	ErrResponseTooLarge = errors.New("response body too large")
)

// TemporaryError reports a failure that may succeed later: a network error,
// a timeout, HTTP 429 or a 5xx answer. Nothing in this package retries;
// callers decide, honouring RetryAfter when it is set.
type TemporaryError struct {
	// Op names the request, for example "refresh".
	Op string
	// Status is the HTTP status, or 0 for a network error.
	Status int
	// RetryAfter is the delay the server asked for in Retry-After, or 0.
	RetryAfter time.Duration
	// Err is the underlying network error, if any. It is not part of the
	// message because its text may carry the full URL (query included);
	// log it only on purpose.
	Err error
}

// Error returns a short fact without the cause's text.
func (e *TemporaryError) Error() string {
	if e.Status == 0 {
		return e.Op + ": server unreachable"
	}
	return fmt.Sprintf("%s: temporary failure, status %d", e.Op, e.Status)
}

// Unwrap returns the network error, if any.
func (e *TemporaryError) Unwrap() error { return e.Err }

// StatusError reports an HTTP status the protocol does not expect.
type StatusError struct {
	// Op names the request, for example "probe".
	Op string
	// Status is the HTTP status code received.
	Status int
}

// Error returns a short fact.
func (e *StatusError) Error() string {
	return fmt.Sprintf("%s: unexpected status %d", e.Op, e.Status)
}

// OAuthError reports an OAuth error response (RFC 6749 section 5.2) other
// than the ones mapped to ErrInvalidGrant and ErrInvalidClient. Only the
// error code is kept, sanitised; error_description is never carried.
type OAuthError struct {
	// Op names the request, for example "token exchange".
	Op string
	// Status is the HTTP status code received.
	Status int
	// Code is the "error" value, restricted to a safe character set.
	Code string
}

// Error returns a short fact.
func (e *OAuthError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("%s: error response, status %d", e.Op, e.Status)
	}
	return fmt.Sprintf("%s: error %q, status %d", e.Op, e.Code, e.Status)
}

// Client runs the client side of the protocol. It is safe for concurrent
// use; create one per process and share it.
type Client struct {
	http    *http.Client
	nonces  *dpop.Nonces
	now     func() time.Time
	ttl     time.Duration
	cache   *metadataCache
	results resultCache

	cacheEntries int
	cacheBytes   int
	clientName   string
	clientVer    string
}

// Option configures a Client.
type Option func(*Client) error

// WithClock sets the clock used for cache expiry and absolute token expiry
// times. The default is time.Now.
func WithClock(now func() time.Time) Option {
	return func(c *Client) error {
		if now == nil {
			return errors.New("clock is nil")
		}
		c.now = now
		return nil
	}
}

// WithMetadataTTL sets how long discovered metadata documents (and their
// absence) are cached. The default is 10 minutes; 0 disables the cache.
func WithMetadataTTL(d time.Duration) Option {
	return func(c *Client) error {
		if d < 0 {
			return errors.New("metadata ttl is negative")
		}
		c.ttl = d
		return nil
	}
}

// WithCacheLimits bounds the metadata cache by entry count and by total
// cached body bytes. The defaults are 512 entries and 8 MiB.
func WithCacheLimits(entries, bytes int) Option {
	return func(c *Client) error {
		if entries <= 0 || bytes <= 0 {
			return errors.New("cache limits must be positive")
		}
		c.cacheEntries, c.cacheBytes = entries, bytes
		return nil
	}
}

// WithClientInfo sets the clientInfo name and version sent in the probe's
// initialize request. The default is "mcpauth" and "1".
func WithClientInfo(name, version string) Option {
	return func(c *Client) error {
		if name == "" || version == "" {
			return errors.New("client info name and version are required")
		}
		c.clientName, c.clientVer = name, version
		return nil
	}
}

// New returns a Client that sends every request through httpClient, which
// must not be nil (pass the egress-guarded client). The Client uses a
// shallow copy of it whose redirect policy additionally refuses to follow
// redirects of POST requests (token, registration, revocation, probe); GET
// redirects are left to httpClient's own policy.
func New(httpClient *http.Client, opts ...Option) (*Client, error) {
	if httpClient == nil {
		return nil, errors.New("oauthclient: http client is nil")
	}
	c := &Client{
		now:          time.Now,
		ttl:          defaultMetadataTTL,
		cacheEntries: defaultCacheEntries,
		cacheBytes:   defaultCacheBytes,
		clientName:   "mcpauth",
		clientVer:    "1",
	}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, fmt.Errorf("oauthclient: %w", err)
		}
	}
	hc := *httpClient
	inner := httpClient.CheckRedirect
	hc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if m := via[0].Method; m != http.MethodGet && m != http.MethodHead {
			// A redirected POST would re-send a code, a refresh token or
			// client credentials to a place nobody validated.
			return http.ErrUseLastResponse
		}
		if inner != nil {
			return inner(req, via)
		}
		if len(via) >= maxRedirects {
			return errors.New("too many redirects")
		}
		return nil
	}
	c.http = &hc
	c.nonces = dpop.NewNonces()
	c.cache = newMetadataCache(c.cacheEntries, c.cacheBytes)
	return c, nil
}

// tokenHTTP is the client for a token request made with reg: the shared
// one, or, when reg holds a DPoP key, a copy whose transport adds a proof
// to each request and answers the server's nonce demand (RFC 9449
// sections 5 and 8).
func (c *Client) tokenHTTP(reg *Registration) *http.Client {
	if reg == nil || reg.DPoP == nil {
		return c.http
	}
	hc := *c.http
	base := hc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	hc.Transport = &dpop.Transport{Base: base, Key: reg.DPoP, Nonces: c.nonces, Now: c.now}
	return &hc
}

// Step is one request made during probing or discovery, for diagnostics.
type Step struct {
	// Action names the step: one of the Action constants.
	Action string
	// URL is the requested URL without userinfo, query or fragment.
	URL string
	// HTTPStatus is the response status, or 0 when no response arrived
	// (or the step made no request).
	HTTPStatus int
	// ContentType is the response's Content-Type header.
	ContentType string
	// OK reports whether the step's result was used.
	OK bool
	// Detail is a short, secret-free explanation.
	Detail string
}

// Actions recorded in a Trace.
const (
	// ActionProbe is the unauthenticated initialize request.
	ActionProbe = "probe"
	// ActionProtectedResourceMetadata is a GET of RFC 9728 metadata.
	ActionProtectedResourceMetadata = "protected_resource_metadata"
	// ActionAuthServerMetadata is a GET of RFC 8414 or OIDC metadata.
	ActionAuthServerMetadata = "authorization_server_metadata"
	// ActionLegacyDefaultEndpoints records the 2025-03-26 fallback to
	// default endpoints; it makes no request.
	ActionLegacyDefaultEndpoints = "legacy_default_endpoints"
	// ActionEndpointCheck records a metadata endpoint refused by the HTTP
	// client's egress policy; it makes no request.
	ActionEndpointCheck = "endpoint_check"
	// ActionRecordedChallenge records that discovery started from the
	// Bearer challenge an earlier MCP request was refused with; it makes no
	// request.
	ActionRecordedChallenge = "recorded_challenge"
)

// Trace records every step of probing and discovery, in order. A nil
// *Trace records nothing. A Trace is not safe for concurrent use.
type Trace struct {
	// Steps lists the steps in the order they happened.
	Steps []Step
}

// Add records a step taken outside this package (a recorded challenge).
func (t *Trace) Add(s Step) { t.add(s) }

func (t *Trace) add(s Step) {
	if t == nil {
		return
	}
	s.URL = StripURL(s.URL)
	t.Steps = append(t.Steps, s)
}

// StripURL returns u without userinfo, query and fragment, suitable for
// traces and logs. A string that does not parse yields "".
func StripURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return ""
	}
	p.User = nil
	p.RawQuery = ""
	p.ForceQuery = false
	p.Fragment = ""
	p.RawFragment = ""
	return p.String()
}

// checkEndpoint validates a URL taken from a metadata document or a
// challenge: absolute http(s), a host, no userinfo and no fragment. Which
// hosts and schemes are reachable is the egress guard's decision.
func checkEndpoint(name, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%s is not a url", name)
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return fmt.Errorf("%s is not an http(s) url", name)
	}
	if u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("%s has no host", name)
	}
	if u.User != nil {
		return fmt.Errorf("%s has userinfo", name)
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return fmt.Errorf("%s has a fragment", name)
	}
	return nil
}

// readCapped reads at most limit bytes of r; a longer body is an error.
func readCapped(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, ErrResponseTooLarge
	}
	return b, nil
}

// drain discards a bounded part of a body so the connection can be reused,
// then closes it.
func drain(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, maxDrainBytes))
	_ = body.Close()
}

// netError wraps a transport failure as a TemporaryError. The cause stays in
// the chain (for errors.Is on context errors, or the egress guard's error
// type) but not in the message, because url.Error text carries the URL.
func netError(op string, err error) error {
	return &TemporaryError{Op: op, Err: err}
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date.
// Unparseable or past values yield 0; values are capped at one day.
func retryAfter(h string, now time.Time) time.Duration {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0
	}
	const maxDelay = 24 * time.Hour
	if n, err := strconv.ParseInt(h, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		if n > int64(maxDelay/time.Second) {
			return maxDelay
		}
		return time.Duration(n) * time.Second
	}
	t, err := http.ParseTime(h)
	if err != nil {
		return 0
	}
	d := t.Sub(now)
	if d <= 0 {
		return 0
	}
	return min(d, maxDelay)
}

// sanitizeCode keeps an OAuth error code only if it is a short token of
// safe characters; anything else is replaced, so upstream text never
// reaches a message unfiltered.
// SanitizeCode is sanitizeCode for other packages: an upstream code cut
// short and reduced to printable ASCII.
func SanitizeCode(s string) string { return sanitizeCode(s) }

func sanitizeCode(s string) string {
	if s == "" {
		return ""
	}
	if len(s) > 64 {
		return "unrecognised"
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b == '-' || b == '.') {
			return "unrecognised"
		}
	}
	return s
}
