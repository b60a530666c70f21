// Package mcpclient connects to remote MCP servers on behalf of the broker's
// tenants, with credentials the broker holds, so that calling services
// never see a raw token. It lists and calls tools through the official Go
// SDK (github.com/modelcontextprotocol/go-sdk) and adds what a multi-tenant
// broker needs around it:
//
//   - Credentials on every request: the provider's custom headers and its
//     OAuth access token are both sent (a custom header never drops the
//     token). For the Authorization header the OAuth token wins over a custom
//     header of that name; custom headers never replace the protocol headers
//     the SDK sets. Credentials are sent only to the target's own origin.
//   - Typed failures: 401/403 become *AuthError (with the challenge and, for
//     insufficient_scope, the scopes to step up to), an oversized response
//     becomes ErrResultTooLarge, a server that cannot be reached or answers
//     5xx becomes ErrUnreachable, a JSON-RPC error from the server stays
//     reachable with errors.As as a *jsonrpc.Error. Messages never carry a
//     URL path or query, a header value or upstream text.
//   - Bounded work: every call is bounded by the caller's context and
//     Target.Timeout; a streamed answer by Target.SSEReadTimeout of silence;
//     each response (a JSON body, or one server-sent event) by
//     Target.MaxResultBytes; tool lists by MaxToolPages and MaxTools.
//   - Session pooling: initialized sessions are kept per caller-chosen key and
//     reused, and dropped after IdleTTL of idleness, after an authorization
//     failure or any failure that may have broken them, when the target or
//     the credentials presented under the key change, and on Close.
//   - Transport fallback: the streamable HTTP transport is tried first; when
//     the server answers its initialization with a 4xx other than 401, 403,
//     408 and 429 (as a 2024-11-05 HTTP+SSE server does: 404, 405, or 400
//     from the go-sdk SSE handler), the legacy HTTP+SSE transport is used
//     instead, as the MCP specification's backwards-compatibility section
//     describes.
//
// Every request goes through the http.Client given to New, normally the
// egress guard's SSRF-safe CallerBoundClient, which does not give up on
// response headers by itself: a server answers a tool call when the tool
// is done, and Target.Timeout bounds that. Its Transport and CheckRedirect
// are used; its Timeout is not (a legacy SSE stream lives as long as its
// session, and calls are bounded by their own deadlines), and neither is
// its cookie jar (cookies must not travel between tenants).
package mcpclient

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"golang.org/x/net/http/httpguts"

	"github.com/mcpauth/mcpauth/dpop"
	"github.com/mcpauth/mcpauth/secret"
)

// Defaults and limits.
const (
	// DefaultIdleTTL is how long an unused pooled session is kept when
	// Options.IdleTTL is zero.
	DefaultIdleTTL = 2 * time.Minute
	// DefaultMaxSessions is the pool size when Options.MaxSessions is zero.
	DefaultMaxSessions = 256
	// DefaultTimeout bounds a call when Target.Timeout is zero.
	DefaultTimeout = 30 * time.Second
	// DefaultMaxResultBytes caps one response when Target.MaxResultBytes is
	// zero.
	DefaultMaxResultBytes = 4 << 20
	// MaxToolPages is the most tools/list pages ListTools follows.
	MaxToolPages = 100
	// MaxTools is the most tools ListTools returns.
	MaxTools = 10000

	// streamableRetries is how often the SDK may resume an interrupted
	// streamed answer; the call's deadline bounds it as well.
	streamableRetries = 2
)

// Credentials are applied to every HTTP request of a session.
type Credentials struct {
	// Headers are the provider's custom headers, sent on every request.
	Headers map[string]string
	// AccessToken is sent as "Authorization: Bearer <token>"; the zero
	// Secret sends none. It wins over a custom header named Authorization.
	AccessToken secret.Secret
	// DPoP, when set, makes AccessToken a DPoP-bound token (RFC 9449
	// section 7.1): it is sent as "Authorization: DPoP <token>" with a
	// fresh proof signed by this key on every request, and a server's
	// nonce challenge (section 9) is answered once.
	DPoP *dpop.Key
}

// Target is the MCP server to talk to and the limits of one call.
type Target struct {
	// URL is the server's MCP endpoint (streamable HTTP), or the SSE
	// endpoint of a legacy 2024-11-05 server.
	URL string
	// Timeout bounds a whole call, initialization included; zero means
	// DefaultTimeout. The caller's context deadline applies as well.
	Timeout time.Duration
	// SSEReadTimeout is the longest silence tolerated on an SSE stream
	// while a call waits for its answer; zero disables it. It does not
	// apply while waiting for a plain JSON answer.
	SSEReadTimeout time.Duration
	// MaxResultBytes caps one response body (a JSON body, or one
	// server-sent event); zero means DefaultMaxResultBytes. Exceeding it
	// fails the call with ErrResultTooLarge.
	MaxResultBytes int64
}

// Options configures a Client.
type Options struct {
	// ClientName and ClientVersion identify the broker in the MCP
	// initialization (clientInfo). They default to "mcpauth" and "dev".
	ClientName    string
	ClientVersion string
	// IdleTTL is how long a pooled session may stay unused before it is
	// closed; zero means DefaultIdleTTL.
	IdleTTL time.Duration
	// MaxSessions is the most pooled sessions; zero means
	// DefaultMaxSessions. When the pool is full, the least recently used
	// idle session is closed; when none is idle, the call runs on a session
	// of its own that is closed afterwards.
	MaxSessions int
}

// Client connects to MCP servers and pools their sessions. It is safe for
// concurrent use. Create one per process and Close it on shutdown.
type Client struct {
	nonces        *dpop.Nonces
	base          http.RoundTripper
	checkRedirect func(*http.Request, []*http.Request) error
	mcp           *mcp.Client
	idleTTL       time.Duration
	maxSessions   int

	mu       sync.Mutex
	sessions map[string]*entry
	closed   bool

	stop    chan struct{}  // ends the janitor
	workers sync.WaitGroup // janitor, session watchers and closers
}

// entry is one pooled (or, when the pool is full, one-off) session.
type entry struct {
	key      string
	url      string
	maxBytes int64
	cred     Credentials

	ready chan struct{} // closed when sess or err is set
	sess  *mcp.ClientSession
	st    *sessionState
	err   error

	// Guarded by Client.mu.
	refs     int
	lastUsed time.Time
	retired  bool // out of the map; closed when refs reaches 0
	closed   bool
	dead     bool // the session ended by itself
}

// New returns a Client that sends every request through httpClient's
// Transport, normally the egress guard's client. httpClient must not be
// nil: falling back to http.DefaultClient would bypass the egress guard,
// so New panics instead.
func New(httpClient *http.Client, opts Options) *Client {
	if httpClient == nil {
		panic("mcpclient: New needs an http.Client (the egress guard's)")
	}
	if opts.ClientName == "" {
		opts.ClientName = "mcpauth"
	}
	if opts.ClientVersion == "" {
		opts.ClientVersion = "dev"
	}
	if opts.IdleTTL <= 0 {
		opts.IdleTTL = DefaultIdleTTL
	}
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = DefaultMaxSessions
	}
	base := httpClient.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	c := &Client{
		nonces:        dpop.NewNonces(),
		base:          base,
		checkRedirect: httpClient.CheckRedirect,
		mcp: mcp.NewClient(
			&mcp.Implementation{Name: opts.ClientName, Version: opts.ClientVersion},
			// An empty capability set: the broker offers the server no
			// roots, sampling or elicitation.
			&mcp.ClientOptions{Capabilities: &mcp.ClientCapabilities{}},
		),
		idleTTL:     opts.IdleTTL,
		maxSessions: opts.MaxSessions,
		sessions:    map[string]*entry{},
		stop:        make(chan struct{}),
	}
	c.workers.Add(1)
	go c.janitor()
	return c
}

// ListTools returns all of the server's tools, following tools/list cursors
// (at most MaxToolPages pages and MaxTools tools, else ErrTooManyTools). The
// session is taken from the pool under key, or initialized and pooled. key
// must change whenever the credentials should stop being used (for example
// tenant/provider plus a credential generation); a different Target URL or
// different Credentials under the same key also replace the session.
func (c *Client) ListTools(ctx context.Context, key string, t Target, cr Credentials) ([]*mcp.Tool, error) {
	var tools []*mcp.Tool
	err := c.run(ctx, "tools/list", key, t, cr, func(ctx context.Context, s *mcp.ClientSession) error {
		tools = nil
		seen := map[string]bool{}
		cursor := ""
		for page := 0; ; page++ {
			if page == MaxToolPages {
				return fmt.Errorf("%w: more than %d pages", ErrTooManyTools, MaxToolPages)
			}
			res, err := s.ListTools(ctx, &mcp.ListToolsParams{Cursor: cursor})
			if err != nil {
				return err
			}
			tools = append(tools, res.Tools...)
			if len(tools) > MaxTools {
				return fmt.Errorf("%w: more than %d tools", ErrTooManyTools, MaxTools)
			}
			if res.NextCursor == "" {
				return nil
			}
			if seen[res.NextCursor] {
				return fmt.Errorf("%w: page cursor repeated", ErrTooManyTools)
			}
			seen[res.NextCursor] = true
			cursor = res.NextCursor
		}
	})
	if err != nil {
		return nil, err
	}
	return tools, nil
}

// CallTool calls the tool name with args on a pooled session (see
// ListTools for key). The result is the server's, untouched: Content
// blocks, StructuredContent and IsError as the SDK decoded them. A tool
// that reports failure (IsError) is a result, not an error.
func (c *Client) CallTool(ctx context.Context, key string, t Target, cr Credentials, name string, args map[string]any) (*mcp.CallToolResult, error) {
	var res *mcp.CallToolResult
	err := c.run(ctx, "tools/call", key, t, cr, func(ctx context.Context, s *mcp.ClientSession) error {
		r, err := s.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
		res = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// Probe initializes a session with the server and closes it again, without
// pooling. It reports whether the target and credentials work, with the
// same typed errors as the other methods.
func (c *Client) Probe(ctx context.Context, t Target, cr Credentials) error {
	t, u, err := normalize(t, cr)
	if err != nil {
		return err
	}
	if err := c.enter(); err != nil {
		return err
	}
	defer c.workers.Done()
	cs, done := newCall(ctx, t)
	defer done()
	ss := newSessionState(t.MaxResultBytes)
	defer ss.cancel()
	sess, err := c.connect(cs, t, u, cr, ss)
	if err != nil {
		return classify("initialize", err, cs, ss, t)
	}
	_ = sess.Close()
	return nil
}

// Close closes every pooled session, waits for calls in flight to end (they
// are bounded by their deadlines) and stops the pool. Calls made after
// Close return ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.stop)
	var toClose []*entry
	for _, e := range c.sessions {
		if c.retireLocked(e) {
			toClose = append(toClose, e)
		}
	}
	c.mu.Unlock()
	for _, e := range toClose {
		c.closeEntry(e)
	}
	c.workers.Wait()
	return nil
}

// enter registers a call with the Client's WaitGroup, so that Close waits
// for it and the goroutines it starts; the caller must call c.workers.Done.
// It fails once Close has begun.
func (c *Client) enter() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	c.workers.Add(1)
	return nil
}

// normalize validates t and cr and applies the defaults.
func normalize(t Target, cr Credentials) (Target, *url.URL, error) {
	u, err := url.Parse(t.URL)
	switch {
	case err != nil:
		return t, nil, fmt.Errorf("%w: URL does not parse", ErrInvalidTarget)
	case u.Scheme != "http" && u.Scheme != "https":
		return t, nil, fmt.Errorf("%w: URL scheme must be http or https", ErrInvalidTarget)
	case u.Host == "":
		return t, nil, fmt.Errorf("%w: URL has no host", ErrInvalidTarget)
	case u.User != nil:
		return t, nil, fmt.Errorf("%w: URL has userinfo", ErrInvalidTarget)
	case t.Timeout < 0, t.SSEReadTimeout < 0, t.MaxResultBytes < 0:
		return t, nil, fmt.Errorf("%w: negative timeout or size", ErrInvalidTarget)
	}
	for k, v := range cr.Headers {
		if !httpguts.ValidHeaderFieldName(k) {
			return t, nil, fmt.Errorf("%w: header name %q is not valid", ErrInvalidTarget, k)
		}
		if reservedHeaders[http.CanonicalHeaderKey(k)] {
			return t, nil, fmt.Errorf("%w: header %q is set by the transport", ErrInvalidTarget, k)
		}
		if !httpguts.ValidHeaderFieldValue(v) {
			// The value is a secret: name the header only.
			return t, nil, fmt.Errorf("%w: value of header %q is not valid", ErrInvalidTarget, k)
		}
	}
	if !cr.AccessToken.IsZero() && !httpguts.ValidHeaderFieldValue("Bearer "+cr.AccessToken.Reveal()) {
		return t, nil, fmt.Errorf("%w: access token is not a valid header value", ErrInvalidTarget)
	}
	if t.Timeout == 0 {
		t.Timeout = DefaultTimeout
	}
	if t.MaxResultBytes == 0 {
		t.MaxResultBytes = DefaultMaxResultBytes
	}
	return t, u, nil
}

// reservedHeaders are the framing and MCP session headers a custom header
// may never set. (Other headers the SDK sets, such as Accept and
// Content-Type, are simply not replaced by custom ones.)
var reservedHeaders = map[string]bool{
	"Host": true, "Content-Length": true, "Transfer-Encoding": true,
	"Connection": true, "Te": true, "Trailer": true, "Upgrade": true,
	"Mcp-Session-Id": true, "Mcp-Protocol-Version": true, "Last-Event-Id": true,
}

// newCall derives the call's context: the caller's, bounded by t.Timeout,
// cancellable with a cause by this package (oversized answer, silent
// stream), and carrying the callState the round tripper reports into.
func newCall(parent context.Context, t Target) (*callState, func()) {
	causeCtx, cancelCause := context.WithCancelCause(parent)
	cs := &callState{parent: parent, causeCtx: causeCtx, cancel: cancelCause, maxBytes: t.MaxResultBytes}
	ctx, cancel := context.WithTimeout(context.WithValue(causeCtx, callKey{}, cs), t.Timeout)
	cs.ctx = ctx
	stopWatch := func() {}
	if t.SSEReadTimeout > 0 {
		stopWatch = cs.watchIdle(t.SSEReadTimeout)
	}
	return cs, func() {
		stopWatch()
		cancel()
		cancelCause(nil)
	}
}

// watchIdle cancels the call when the SSE stream it waits on has been
// silent for longer than d. Until a stream counts (armedAt), it does
// nothing: a plain JSON answer is bounded by Target.Timeout only.
func (cs *callState) watchIdle(d time.Duration) (stop func()) {
	tick := min(max(d/4, 10*time.Millisecond), time.Second)
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-cs.ctx.Done():
				return
			case now := <-t.C:
				last := cs.armedAt.Load()
				if last == 0 {
					continue
				}
				last = max(last, cs.lastRead.Load())
				if ss := cs.session.Load(); ss != nil && ss.legacySSE.Load() {
					last = max(last, ss.lastRead.Load())
				}
				if now.UnixNano()-last > int64(d) {
					cs.cancel(errSSEIdle)
					return
				}
			}
		}
	}()
	return func() { close(done) }
}

// run performs op on a session for key: validation, the call's deadline,
// the pool, classification of errors, eviction, and one retry on a fresh
// session when a pooled one turns out to be gone before the request was
// processed (the server forgot the session, or the connection had died).
func (c *Client) run(ctx context.Context, op, key string, t Target, cr Credentials, fn func(context.Context, *mcp.ClientSession) error) error {
	t, u, err := normalize(t, cr)
	if err != nil {
		return err
	}
	if err := c.enter(); err != nil {
		return err
	}
	defer c.workers.Done()
	cs, done := newCall(ctx, t)
	defer done()
	for attempt := 0; ; attempt++ {
		e, fresh, err := c.acquire(cs, key, t, u, cr)
		if err != nil {
			return err
		}
		cs.session.Store(e.st)
		if e.st.legacySSE.Load() {
			// Answers arrive on the session's stream: the idle timeout
			// counts from now.
			cs.armedAt.Store(time.Now().UnixNano())
		}
		err = fn(cs.ctx, e.sess)
		if err == nil {
			c.release(e, false)
			return nil
		}
		cerr := classify(op, err, cs, e.st, t)
		c.release(e, !keepSession(cerr))
		if fresh || attempt > 0 || !sessionGone(err, cs) || cs.ctx.Err() != nil {
			return cerr
		}
		cs.reset()
		cs.armedAt.Store(0)
	}
}

// sessionGone reports whether a call on a reused session failed because the
// session no longer exists, so that the request was certainly not
// processed and may be sent again on a new session.
func sessionGone(err error, cs *callState) bool {
	if cs.tooLarge.Load() {
		return false
	}
	status, _ := cs.response()
	switch {
	case errors.Is(err, mcp.ErrSessionMissing), status == http.StatusNotFound:
		return true
	case errors.Is(err, mcp.ErrConnectionClosed):
		return cs.requests.Load() == 0
	}
	return false
}

// acquire returns a ready session for key, reusing the pooled one when it
// matches t and cr, or initializing a new one (fresh). Concurrent callers
// for a key wait for one initialization instead of starting their own.
func (c *Client) acquire(cs *callState, key string, t Target, u *url.URL, cr Credentials) (e *entry, fresh bool, err error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, false, ErrClosed
		}
		var toClose []*entry
		if old := c.sessions[key]; old != nil {
			if old.matches(t, cr) && !old.dead {
				old.refs++
				c.mu.Unlock()
				e, retry, err := c.await(cs, old, t)
				if retry {
					continue
				}
				return e, false, err
			}
			if c.retireLocked(old) {
				toClose = append(toClose, old)
			}
		}
		e = &entry{
			key: key, url: t.URL, maxBytes: t.MaxResultBytes,
			cred:  Credentials{Headers: maps.Clone(cr.Headers), AccessToken: cr.AccessToken, DPoP: cr.DPoP},
			ready: make(chan struct{}),
			st:    newSessionState(t.MaxResultBytes),
			refs:  1,
		}
		if len(c.sessions) >= c.maxSessions {
			if lru := c.lruIdleLocked(); lru != nil && c.retireLocked(lru) {
				toClose = append(toClose, lru)
			}
		}
		if len(c.sessions) < c.maxSessions {
			c.sessions[key] = e
		} else {
			e.retired = true // one-off: closed when this call releases it
		}
		c.mu.Unlock()
		for _, old := range toClose {
			c.closeLater(old)
		}

		sess, err := c.connect(cs, t, u, cr, e.st)
		if err != nil {
			err = classify("initialize", err, cs, e.st, t)
		}
		c.mu.Lock()
		e.sess, e.err = sess, err
		if err != nil {
			e.closed = true // nothing to close; release must not try
			c.retireLocked(e)
			e.refs--
		}
		c.mu.Unlock()
		close(e.ready)
		if err != nil {
			e.st.cancel()
			return nil, false, err
		}
		c.workers.Add(1)
		go c.watch(e)
		return e, true, nil
	}
}

// await waits for another caller's initialization of e. retry is true when
// that caller gave up (its context ended) and this one should try itself.
func (c *Client) await(cs *callState, e *entry, t Target) (_ *entry, retry bool, _ error) {
	select {
	case <-e.ready:
	case <-cs.ctx.Done():
		c.release(e, false)
		return nil, false, classify("initialize", cs.ctx.Err(), cs, nil, t)
	}
	if e.err != nil {
		c.release(e, false)
		if errors.Is(e.err, context.DeadlineExceeded) || errors.Is(e.err, context.Canceled) {
			return nil, true, nil
		}
		return nil, false, e.err
	}
	return e, false, nil
}

// connect initializes a session over streamable HTTP, falling back to the
// legacy HTTP+SSE transport when the server's answer says it is one.
func (c *Client) connect(cs *callState, t Target, u *url.URL, cr Credentials, ss *sessionState) (*mcp.ClientSession, error) {
	hc := &http.Client{
		Transport:     newRoundTripper(c.base, u, cr, ss, c.nonces),
		CheckRedirect: c.checkRedirect,
	}
	// The SDK's own per-event limit stays above ours, so that ours (which
	// reports ErrResultTooLarge) trips first.
	eventCap := int(min(t.MaxResultBytes, 1<<40)) + 64<<10
	sess, err := c.mcp.Connect(cs.ctx, &mcp.StreamableClientTransport{
		Endpoint:   t.URL,
		HTTPClient: hc,
		MaxRetries: streamableRetries,
		// The broker only lists and calls tools: no server-initiated
		// messages, and no long-lived GET per pooled session.
		DisableStandaloneSSE: true,
		MaxEventSize:         eventCap,
		OAuthHandler:         refusalReporter{},
	}, nil)
	if err == nil || !legacyStatus(cs) || cs.ctx.Err() != nil {
		return sess, err
	}
	cs.reset()
	ss.legacySSE.Store(true)
	return c.mcp.Connect(cs.ctx, &legacyTransport{
		inner: &mcp.SSEClientTransport{Endpoint: t.URL, HTTPClient: hc, MaxEventSize: eventCap},
		ss:    ss,
	}, nil)
}

// legacyStatus reports whether the failed streamable initialization was
// answered with a status that means "not a streamable HTTP endpoint": any
// 4xx but the authorization, timeout and rate-limit ones.
func legacyStatus(cs *callState) bool {
	status, netErr := cs.response()
	if netErr != nil || status < 400 || status > 499 {
		return false
	}
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusRequestTimeout, http.StatusTooManyRequests:
		return false
	}
	return true
}

// matches reports whether the pooled session was made for the same target
// and credentials. The token is compared in constant time.
func (e *entry) matches(t Target, cr Credentials) bool {
	return e.url == t.URL && e.maxBytes == t.MaxResultBytes &&
		maps.Equal(e.cred.Headers, cr.Headers) &&
		subtle.ConstantTimeCompare([]byte(e.cred.AccessToken.Reveal()), []byte(cr.AccessToken.Reveal())) == 1 &&
		thumbprint(e.cred.DPoP) == thumbprint(cr.DPoP)
}

// thumbprint names a DPoP key ("" for none): the same key read twice is
// the same key.
func thumbprint(k *dpop.Key) string {
	if k == nil {
		return ""
	}
	return k.Thumbprint()
}

// release returns a session taken by acquire; evict takes it out of the
// pool. A retired session is closed when its last user releases it.
func (c *Client) release(e *entry, evict bool) {
	c.mu.Lock()
	e.refs--
	e.lastUsed = time.Now()
	var closeNow bool
	if evict {
		closeNow = c.retireLocked(e)
	} else {
		closeNow = claimCloseLocked(e)
	}
	c.mu.Unlock()
	if closeNow {
		c.closeLater(e)
	}
}

// retireLocked takes e out of the pool and reports whether the caller must
// close it now (see claimCloseLocked).
func (c *Client) retireLocked(e *entry) bool {
	if c.sessions[e.key] == e {
		delete(c.sessions, e.key)
	}
	e.retired = true
	return claimCloseLocked(e)
}

// claimCloseLocked reports whether e is retired, unused and not closed yet,
// and if so marks it closed: the caller must then close it, exactly once.
func claimCloseLocked(e *entry) bool {
	if e.retired && e.refs == 0 && !e.closed {
		e.closed = true
		return true
	}
	return false
}

// lruIdleLocked returns the least recently used pooled session that nobody
// is using, or nil.
func (c *Client) lruIdleLocked() *entry {
	var lru *entry
	for _, e := range c.sessions {
		if e.refs == 0 && (lru == nil || e.lastUsed.Before(lru.lastUsed)) {
			lru = e
		}
	}
	return lru
}

// closeLater closes e in the background, so that a call does not wait for
// the session's DELETE; Close waits for it.
func (c *Client) closeLater(e *entry) {
	c.workers.Add(1)
	go func() {
		defer c.workers.Done()
		c.closeEntry(e)
	}()
}

func (c *Client) closeEntry(e *entry) {
	if e.sess != nil {
		_ = e.sess.Close()
	}
	e.st.cancel()
}

// watch retires a session that ended by itself (the server closed it, its
// stream broke), so that it is not handed out again.
func (c *Client) watch(e *entry) {
	defer c.workers.Done()
	_ = e.sess.Wait()
	c.mu.Lock()
	e.dead = true
	closeNow := c.retireLocked(e)
	c.mu.Unlock()
	if closeNow {
		c.closeEntry(e)
	}
}

// janitor closes sessions that have been idle for longer than IdleTTL.
func (c *Client) janitor() {
	defer c.workers.Done()
	t := time.NewTicker(max(c.idleTTL/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			var toClose []*entry
			c.mu.Lock()
			for _, e := range c.sessions {
				if e.refs == 0 && e.sess != nil && now.Sub(e.lastUsed) >= c.idleTTL {
					if c.retireLocked(e) {
						toClose = append(toClose, e)
					}
				}
			}
			c.mu.Unlock()
			for _, e := range toClose {
				c.closeLater(e)
			}
		}
	}
}
