package mcpclient

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"golang.org/x/oauth2"

	"github.com/mcpauth/mcpauth/dpop"
	"github.com/mcpauth/mcpauth/egress"
	"github.com/mcpauth/mcpauth/secret"
)

// callState is the per-call holder the round tripper reports into. It
// travels in the request context (callKey), which the SDK passes from
// ClientSession.CallTool and friends down to every POST of that call.
type callState struct {
	parent   context.Context // the caller's context
	ctx      context.Context // the call's context (deadline = Target.Timeout)
	causeCtx context.Context // parent of ctx, cancelled with a cause by this package
	cancel   context.CancelCauseFunc
	maxBytes int64

	tooLarge atomic.Bool
	requests atomic.Int32 // HTTP requests attempted by this call
	sentAt   atomic.Int64 // unix nanos the call's last HTTP request was sent
	armedAt  atomic.Int64 // unix nanos an SSE stream began to count for the idle timeout; 0 = none
	lastRead atomic.Int64 // unix nanos of the last bytes read from this call's SSE response
	session  atomic.Pointer[sessionState]
	// blocked is the egress guard's refusal of one of this call's requests,
	// once seen (sticky: reset does not clear it). Every later request of
	// the call fails with it unsent: the SDK tries another request after a
	// refused one (server/discover, then initialize), and each attempt
	// would reach the guard and be audited again.
	blocked atomic.Pointer[egress.BlockedError]

	mu         sync.Mutex
	status     int      // status of the last response
	authStatus int      // 401 or 403, once seen (sticky)
	challenge  []string // WWW-Authenticate of that 401/403
	netErr     error    // transport error of the last request, if it failed
}

type callKey struct{}

func (cs *callState) markTooLarge() {
	cs.tooLarge.Store(true)
	cs.cancel(ErrResultTooLarge)
}

// record notes the outcome of one request: a transport error, or the
// response status. A 401/403 is kept for the rest of the call: it explains
// whatever the SDK reports after it.
func (cs *callState) record(status int, challenge []string, netErr error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.status, cs.netErr = status, netErr
	if status == http.StatusUnauthorized || status == http.StatusForbidden {
		cs.authStatus, cs.challenge = status, challenge
	}
}

func (cs *callState) response() (int, error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.status, cs.netErr
}

func (cs *callState) authError() *AuthError {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.authStatus == 0 {
		return nil
	}
	return newAuthError(cs.authStatus, cs.challenge)
}

// reset forgets the responses seen so far, before a second attempt.
func (cs *callState) reset() {
	cs.mu.Lock()
	cs.status, cs.authStatus, cs.challenge, cs.netErr = 0, 0, nil, nil
	cs.mu.Unlock()
	cs.requests.Store(0)
}

// sessionState is what belongs to one pooled session rather than to one
// call: the legacy SSE stream (its lifetime context, its size cap and
// activity) and what the round tripper saw on that stream.
type sessionState struct {
	ctx    context.Context // lifetime of the legacy SSE GET stream
	cancel context.CancelFunc

	legacySSE atomic.Bool  // the session runs over the 2024-11-05 HTTP+SSE transport
	maxBytes  int64        // per-event cap on the SSE stream
	tooLarge  atomic.Bool  // an event on the stream exceeded maxBytes
	lastRead  atomic.Int64 // unix nanos of the last bytes read from the stream

	mu         sync.Mutex
	status     int
	authStatus int
	challenge  []string
	netErr     error
	// rejectedAt is when a 401 was answered to a call of the session
	// (unix nanos; 0: none), with its challenge: the SDK then fails the
	// whole session, and a call whose request went out afterwards (with
	// the token already rejected) ends with a closed connection instead of
	// its own 401.
	rejectedAt        int64
	rejectedChallenge []string
}

type streamKey struct{}

func newSessionState(maxBytes int64) *sessionState {
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), streamKey{}, true))
	return &sessionState{ctx: ctx, cancel: cancel, maxBytes: maxBytes}
}

func (ss *sessionState) record(status int, challenge []string, netErr error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.status, ss.netErr = status, netErr
	if status == http.StatusUnauthorized || status == http.StatusForbidden {
		ss.authStatus, ss.challenge = status, challenge
	}
}

// recordRejected remembers that the server answered 401 to a call of the
// session, and when.
func (ss *sessionState) recordRejected(challenge []string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.rejectedAt == 0 {
		ss.rejectedAt, ss.rejectedChallenge = time.Now().UnixNano(), challenge
	}
}

// rejectedBefore is the 401 a call of the session received before sentAt
// (unix nanos), or nil. A request sent after the server rejected the
// session's token carried a dead token: the server certainly refused it
// too, so it may be sent again with a new token. A request sent earlier
// may have been processed (the token may still have been valid for it).
func (ss *sessionState) rejectedBefore(sentAt int64) *AuthError {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.rejectedAt == 0 || sentAt < ss.rejectedAt {
		return nil
	}
	return newAuthError(http.StatusUnauthorized, ss.rejectedChallenge)
}

func (ss *sessionState) response() (int, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.status, ss.netErr
}

func (ss *sessionState) authError() *AuthError {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.authStatus == 0 {
		return nil
	}
	return newAuthError(ss.authStatus, ss.challenge)
}

// roundTripper applies a session's credentials to every request and watches
// every response: 401/403 and other failures are recorded for classify, and
// bodies are capped and their activity tracked.
type roundTripper struct {
	base    http.RoundTripper
	origin  string      // scheme://host[:port] of the target, lower case
	headers [][2]string // custom headers, canonical names
	auth    string      // "Bearer <token>" or "DPoP <token>", or "" for none
	ss      *sessionState
	// token and key are set for a DPoP-bound token: each request gets a
	// fresh proof signed by key (RFC 9449 section 7.1), with the nonce
	// the server last gave (section 9) from nonces.
	token  secret.Secret
	key    *dpop.Key
	nonces *dpop.Nonces
}

// newRoundTripper prepares the credentials once per session. The OAuth
// token wins over a custom header named Authorization; every other custom
// header is sent.
func newRoundTripper(base http.RoundTripper, target *url.URL, cr Credentials, ss *sessionState, nonces *dpop.Nonces) *roundTripper {
	rt := &roundTripper{base: base, origin: originOf(target), ss: ss}
	switch {
	case !cr.AccessToken.IsZero() && cr.DPoP != nil:
		rt.auth = dpop.Scheme + " " + cr.AccessToken.Reveal()
		rt.token, rt.key, rt.nonces = cr.AccessToken, cr.DPoP, nonces
	case !cr.AccessToken.IsZero():
		rt.auth = "Bearer " + cr.AccessToken.Reveal()
	}
	for k, v := range cr.Headers {
		k = http.CanonicalHeaderKey(k)
		if k == "Authorization" && rt.auth != "" {
			continue
		}
		rt.headers = append(rt.headers, [2]string{k, v})
	}
	return rt
}

func originOf(u *url.URL) string {
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Host)
}

// RoundTrip implements http.RoundTripper.
func (rt *roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	cs, _ := ctx.Value(callKey{}).(*callState)
	stream := ctx.Value(streamKey{}) != nil

	orig := req
	req, err := rt.withCredentials(orig, orig.Body, "")
	if err != nil {
		if orig.Body != nil {
			_ = orig.Body.Close()
		}
		return nil, err
	}
	if cs != nil {
		if be := cs.blocked.Load(); be != nil {
			if req.Body != nil {
				_ = req.Body.Close() // RoundTrip must close the body even on error
			}
			cs.record(0, nil, be)
			return nil, be
		}
		cs.requests.Add(1)
		cs.sentAt.Store(time.Now().UnixNano())
	}

	resp, err := rt.base.RoundTrip(req)
	if err == nil && rt.key != nil {
		resp, err = rt.answerNonce(orig, resp)
	}
	if err != nil {
		var be *egress.BlockedError
		if cs != nil && errors.As(err, &be) {
			cs.blocked.CompareAndSwap(nil, be)
		}
		switch {
		case cs != nil:
			cs.record(0, nil, err)
		case stream:
			rt.ss.record(0, nil, err)
		}
		return nil, err
	}

	var challenge []string
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		challenge = resp.Header.Values("WWW-Authenticate")
	}
	switch {
	case cs != nil:
		cs.record(resp.StatusCode, challenge, nil)
	case stream:
		rt.ss.record(resp.StatusCode, challenge, nil)
	}
	if resp.StatusCode == http.StatusUnauthorized && rt.ss != nil {
		rt.ss.recordRejected(challenge)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp, nil
	}

	sse := isEventStream(resp.Header.Get("Content-Type"))
	switch {
	case stream:
		// The legacy transport's GET stream carries every response of the
		// session: cap each event, not the stream.
		resp.Body = &limitBody{
			rc: resp.Body, max: rt.ss.maxBytes, events: true, lineStart: true,
			onExceed: func() { rt.ss.tooLarge.Store(true) },
			activity: &rt.ss.lastRead,
		}
	case cs != nil && sse:
		// A streamable POST answered with a stream: the idle timeout now
		// applies, and each event (one JSON-RPC message) is capped.
		cs.armedAt.CompareAndSwap(0, time.Now().UnixNano())
		resp.Body = &limitBody{
			rc: resp.Body, max: cs.maxBytes, events: true, lineStart: true,
			onExceed: cs.markTooLarge,
			activity: &cs.lastRead,
		}
	case cs != nil:
		resp.Body = &limitBody{
			rc: resp.Body, max: cs.maxBytes,
			tooLarge: resp.ContentLength > cs.maxBytes,
			onExceed: cs.markTooLarge,
		}
	}
	return resp, nil
}

// withCredentials is req with the credentials on it, when it goes to the
// target's own origin (http.Client strips Authorization from a redirect to
// another host, and this transport must not add it back; the egress guard
// refuses redirects of POST, but a GET stream may be redirected). body is
// the body to send; nonce, for a DPoP-bound token, the server's nonce to
// use instead of the remembered one.
func (rt *roundTripper) withCredentials(req *http.Request, body io.ReadCloser, nonce string) (*http.Request, error) {
	if originOf(req.URL) != rt.origin || (len(rt.headers) == 0 && rt.auth == "") {
		return req, nil
	}
	r := req.Clone(req.Context())
	r.Body = body
	for _, h := range rt.headers {
		// Custom headers never replace the protocol headers the SDK set
		// (Content-Type, Accept, Mcp-Session-Id, Mcp-Protocol-Version).
		if _, set := r.Header[h[0]]; !set {
			r.Header.Set(h[0], h[1])
		}
	}
	if rt.auth != "" {
		r.Header.Set("Authorization", rt.auth)
	}
	if rt.key != nil {
		if nonce == "" {
			nonce = rt.nonces.Get(rt.origin)
		}
		// RFC 9449 section 7.1: a new proof for every request, bound to
		// its method, URI and the access token (ath).
		proof, err := rt.key.Proof(r.Method, r.URL.String(), rt.token, nonce, time.Now())
		if err != nil {
			return nil, err
		}
		r.Header.Set(dpop.HeaderProof, proof)
	}
	return r, nil
}

// answerNonce remembers the DPoP nonce of a response and, when the
// response is the server's demand for one (RFC 9449 section 9: 401 with
// WWW-Authenticate DPoP error="use_dpop_nonce"), sends the request once
// more with the nonce. That 401 refused the proof, not the token: it is
// never reported as a token rejection. A request whose body cannot be
// replayed gets the 401 as it is.
func (rt *roundTripper) answerNonce(orig *http.Request, resp *http.Response) (*http.Response, error) {
	if originOf(orig.URL) != rt.origin {
		return resp, nil
	}
	nonce := rt.nonces.Note(rt.origin, resp.Header)
	if nonce == "" || !dpop.ResourceNonceChallenge(resp.StatusCode, resp.Header) || orig.Body != nil && orig.GetBody == nil {
		return resp, nil
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	var body io.ReadCloser
	if orig.Body != nil {
		b, err := orig.GetBody()
		if err != nil {
			return nil, err
		}
		body = b
	}
	again, err := rt.withCredentials(orig, body, nonce)
	if err != nil {
		return nil, err
	}
	resp, err = rt.base.RoundTrip(again)
	if err == nil {
		rt.nonces.Note(rt.origin, resp.Header)
	}
	return resp, err
}

func isEventStream(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == "text/event-stream"
}

// limitBody passes a response body through and fails with
// ErrResultTooLarge once one message is longer than max bytes: the whole
// body for JSON, each event (bytes between blank lines) for an SSE stream.
// A cap hit further down (the egress guard's own body limit) counts the
// same. It also records the time of each read, for the idle timeout.
type limitBody struct {
	rc        io.ReadCloser
	max       int64
	events    bool // reset the count at every blank line
	n         int64
	lineStart bool // the previous byte ended a line
	tooLarge  bool
	onExceed  func()
	activity  *atomic.Int64
}

func (b *limitBody) Read(p []byte) (int, error) {
	if b.tooLarge {
		b.exceed()
		return 0, ErrResultTooLarge
	}
	n, err := b.rc.Read(p)
	if n > 0 {
		if b.activity != nil {
			b.activity.Store(time.Now().UnixNano())
		}
		if !b.count(p[:n]) {
			b.tooLarge = true
			b.exceed()
			return 0, ErrResultTooLarge
		}
	}
	if err != nil && errors.Is(err, egress.ErrBodyTooLarge) {
		b.tooLarge = true
		b.exceed()
		return n, ErrResultTooLarge
	}
	return n, err
}

func (b *limitBody) exceed() {
	if b.onExceed != nil {
		b.onExceed()
		b.onExceed = nil
	}
}

// count adds p to the current message and reports whether it is still
// within the cap.
func (b *limitBody) count(p []byte) bool {
	if !b.events {
		b.n += int64(len(p))
		return b.n <= b.max
	}
	for _, c := range p {
		switch c {
		case '\n':
			if b.lineStart { // a blank line ends the event
				b.n = 0
				continue
			}
			b.lineStart = true
		case '\r':
		default:
			b.lineStart = false
		}
		b.n++
		if b.n > b.max {
			return false
		}
	}
	return true
}

func (b *limitBody) Close() error { return b.rc.Close() }

// legacyTransport opens the 2024-11-05 HTTP+SSE transport. The SDK's
// SSEClientTransport ties its GET stream to the context given to Connect;
// this wrapper opens the stream under the session's own lifetime context
// and bounds only the wait for it by the call's context.
type legacyTransport struct {
	inner *mcp.SSEClientTransport
	ss    *sessionState
}

// Connect implements mcp.Transport.
func (t *legacyTransport) Connect(ctx context.Context) (mcp.Connection, error) {
	type result struct {
		conn mcp.Connection
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		conn, err := t.inner.Connect(t.ss.ctx)
		ch <- result{conn, err}
	}()
	select {
	case r := <-ch:
		return r.conn, r.err
	case <-ctx.Done():
		t.ss.cancel() // ends the GET
		if r := <-ch; r.conn != nil {
			_ = r.conn.Close()
		}
		return nil, ctx.Err()
	}
}

// refusalReporter is the SDK's OAuth hook, used only for what the SDK does
// when a handler is set: it reports a 401/403 to the one call that got it
// (wrapped in jsonrpc2.ErrRejected) instead of failing the whole session,
// whose other calls are in flight with a token that was valid when they
// were sent (issue 15, case 6). It adds no token (the round tripper does)
// and authorizes nothing: the refusal is returned, and the service
// refreshes and retries that call on a session with the new token, while
// the old session serves its in-flight calls and is closed after them.
type refusalReporter struct{}

var _ auth.OAuthHandler = refusalReporter{}

// errRefused is what the SDK reports for a refused request; classify
// reports the 401/403 the round tripper recorded instead.
var errRefused = errors.New("mcpclient: the server refused the request's authorization")

// TokenSource returns none: the round tripper sets Authorization.
func (refusalReporter) TokenSource(context.Context) (oauth2.TokenSource, error) { return nil, nil }

// Authorize closes the refused response and reports the refusal.
func (refusalReporter) Authorize(_ context.Context, _ *http.Request, resp *http.Response) error {
	_ = resp.Body.Close()
	return errRefused
}
