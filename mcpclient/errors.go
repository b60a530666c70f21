package mcpclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpauth/mcpauth/oauthclient"
)

var (
	// ErrResultTooLarge is returned when one response from the server (a
	// JSON body, or one server-sent event) is longer than
	// Target.MaxResultBytes, or than the cap of the underlying HTTP client.
	// The session that received it is discarded.
	ErrResultTooLarge = errors.New("mcpclient: result too large")

	// ErrUnreachable is returned when no usable answer came back from the
	// server: the connection failed or was refused by the egress guard
	// (errors.As still finds the *egress.BlockedError; the call then sends
	// no further request, so the guard refuses it once), the server answered
	// 5xx, 408 or 429, or the connection closed in the middle of a call.
	ErrUnreachable = errors.New("mcpclient: server unreachable")

	// ErrTooManyTools is returned by ListTools when the server's list is
	// longer than MaxTools tools or MaxToolPages pages, or its cursors loop.
	ErrTooManyTools = errors.New("mcpclient: tool list too long")

	// ErrInvalidTarget is returned, before anything is sent, for a Target
	// or Credentials that cannot be used: a URL that is not absolute http or
	// https or carries userinfo, negative limits, or a header whose name or
	// value is not valid in HTTP.
	ErrInvalidTarget = errors.New("mcpclient: invalid target")

	// ErrClosed is returned by every method called after Close.
	ErrClosed = errors.New("mcpclient: client closed")
)

// errSSEIdle is the cancellation cause used when an SSE stream stayed silent
// for longer than Target.SSEReadTimeout.
var errSSEIdle = errors.New("mcpclient: SSE stream idle")

// AuthError reports that the MCP server refused the credentials with HTTP
// 401 or 403. The service reacts to it: refresh or re-authorize on 401,
// step-up authorization on 403 insufficient_scope. Its message never
// contains the challenge, which is upstream text.
type AuthError struct {
	// Status is 401 or 403.
	Status int
	// Challenge is the raw WWW-Authenticate value (several header lines are
	// joined with ", "), for the caller to parse (resource_metadata and so
	// on). It is empty when the server sent none, or when the header was
	// longer than the parser accepts.
	Challenge string
	// InsufficientScope is true when the Bearer challenge carries
	// error="insufficient_scope" (RFC 6750 section 3.1).
	InsufficientScope bool
	// Scopes is the scope parameter of the Bearer challenge split on
	// spaces (invalid and duplicate tokens dropped); for an
	// insufficient_scope challenge these are the scopes the request needs.
	Scopes []string
	// Bearer is true when the refusal carries a Bearer challenge: the
	// server asks for (another) OAuth token. A 401 without one refused
	// something else, such as a custom header.
	Bearer bool
}

// Error describes the refusal without any upstream text.
func (e *AuthError) Error() string {
	switch {
	case e.InsufficientScope:
		return fmt.Sprintf("mcpclient: server answered %d: insufficient scope", e.Status)
	case e.Status == http.StatusForbidden:
		return "mcpclient: server answered 403: forbidden"
	default:
		return fmt.Sprintf("mcpclient: server answered %d: authorization required", e.Status)
	}
}

// Limits on the WWW-Authenticate input that is kept and parsed. The SDK's
// parser is quadratic in the number of commas; real challenges are a few
// hundred bytes.
const (
	maxChallengeBytes   = 4 << 10
	maxChallengeHeaders = 8
)

// newAuthError builds an AuthError from a 401/403 status and the
// WWW-Authenticate header values of that response.
func newAuthError(status int, challenges []string) *AuthError {
	e := &AuthError{Status: status}
	if len(challenges) == 0 || len(challenges) > maxChallengeHeaders {
		return e
	}
	raw := strings.Join(challenges, ", ")
	if len(raw) > maxChallengeBytes {
		return e
	}
	e.Challenge = raw
	// The same parser the OAuth client uses for 401 challenges.
	ch, err := oauthclient.ParseChallenge(challenges)
	if err != nil {
		return e
	}
	e.Bearer = true
	e.InsufficientScope = ch.Error == "insufficient_scope"
	e.Scopes = ch.Scope
	return e
}

// StatusError reports that the server answered with an HTTP error status
// that is neither an authorization refusal (AuthError) nor temporary
// (ErrUnreachable: 5xx, 408, 429): a 404 or 410 for a URL that names no MCP
// endpoint, a 400 for a request it will never accept. Retrying unchanged
// does not help. Its message names the operation and the status only, never
// a URL path or upstream text.
type StatusError struct {
	// Op names the call, for example "tools/call".
	Op string
	// Status is the HTTP status of the last answer.
	Status int
	err    error // the SDK's report, for errors.Is and errors.As
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("mcpclient: %s: server answered %d", e.Op, e.Status)
}

func (e *StatusError) Unwrap() error { return e.err }

// rpcError is a JSON-RPC error answered by the server. Its message names the
// code only: the server's message is upstream text, reachable through
// errors.As with a *jsonrpc.Error.
type rpcError struct {
	op  string
	err *jsonrpc.Error
}

func (e *rpcError) Error() string {
	return fmt.Sprintf("mcpclient: %s: server returned JSON-RPC error %d", e.op, e.err.Code)
}

func (e *rpcError) Unwrap() error { return e.err }

// redactedError carries a message with every URL cut down to scheme and
// host, and the original error for errors.Is and errors.As.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// urlPattern matches an http(s) URL inside an error message, with optional
// userinfo, so that only its scheme and host are kept. http.Client errors
// quote the whole request URL (path and query may carry secrets) and the SDK
// folds them into its own messages with %v, so a structural redaction such
// as egress.Redact cannot reach them.
var urlPattern = regexp.MustCompile(`(?i)\b(https?)://(?:[^/\s"'?#@]*@)?([^/\s"'?#@]+)[^\s"']*`)

func redactURLs(s string) string { return urlPattern.ReplaceAllString(s, "$1://$2") }

// redact wraps err so that its message names no URL path, query or
// userinfo; prefix goes in front.
func redact(prefix string, err error) error {
	return &redactedError{msg: prefix + redactURLs(err.Error()), err: err}
}

// sentinelError carries a redacted message, a sentinel and the cause: both
// errors.Is(err, sentinel) and errors.As on the cause work.
type sentinelError struct {
	msg      string
	sentinel error
	cause    error
}

func (e *sentinelError) Error() string { return e.msg }
func (e *sentinelError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.sentinel}
	}
	return []error{e.sentinel, e.cause}
}

// classify turns the error of one call into the package's typed errors. The
// order matters: a body cut at the cap or a 401/403 explain whatever
// generic failure the SDK reported after them, and the caller's own
// cancellation wins over the timeouts this package adds.
func classify(op string, err error, cs *callState, ss *sessionState, t Target) error {
	if errors.Is(err, ErrTooManyTools) {
		return err // made by this package, already in final form
	}
	if cs.tooLarge.Load() || (ss != nil && ss.tooLarge.Load()) {
		return tooLarge(op)
	}
	if ae := cs.authError(); ae != nil {
		return ae
	}
	if ss != nil {
		if ae := ss.authError(); ae != nil {
			return ae
		}
	}
	if perr := cs.parent.Err(); perr != nil {
		return fmt.Errorf("mcpclient: %s: %w", op, perr)
	}
	if status, _ := cs.response(); ss != nil && status == 0 && cs.requests.Load() > 0 {
		// Another call's 401 failed the session under this one, whose
		// request went out after the token was rejected: report the 401,
		// so the caller refreshes and retries on a fresh session instead
		// of seeing UNAVAILABLE. (A request sent before may have run: that
		// stays UNAVAILABLE, the caller decides whether to repeat it.)
		if ae := ss.rejectedBefore(cs.sentAt.Load()); ae != nil {
			return ae
		}
	}
	if cause := context.Cause(cs.causeCtx); cause != nil {
		if errors.Is(cause, errSSEIdle) {
			return &sentinelError{
				msg:      fmt.Sprintf("mcpclient: %s: no data on the SSE stream for %s", op, t.SSEReadTimeout),
				sentinel: context.DeadlineExceeded, cause: errSSEIdle,
			}
		}
		if errors.Is(cause, ErrResultTooLarge) {
			return tooLarge(op)
		}
	}
	if errors.Is(cs.ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("mcpclient: %s: no answer within %s: %w", op, t.Timeout.Round(time.Millisecond), context.DeadlineExceeded)
	}
	status, netErr := cs.response()
	if ss != nil && status == 0 && netErr == nil {
		status, netErr = ss.response()
	}
	switch {
	case netErr != nil:
		return &sentinelError{
			msg:      "mcpclient: " + op + ": " + redactURLs(netErr.Error()),
			sentinel: ErrUnreachable, cause: netErr,
		}
	case status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout:
		return &sentinelError{
			msg:      fmt.Sprintf("mcpclient: %s: server answered %d", op, status),
			sentinel: ErrUnreachable, cause: err,
		}
	}
	if werr := serverRPCError(err); werr != nil {
		return &rpcError{op: op, err: werr}
	}
	switch {
	case status >= 400:
		return &StatusError{Op: op, Status: status, err: err}
	case errors.Is(err, mcp.ErrConnectionClosed), errors.Is(err, mcp.ErrSessionMissing):
		return &sentinelError{
			msg:      "mcpclient: " + op + ": " + redactURLs(err.Error()),
			sentinel: ErrUnreachable, cause: err,
		}
	}
	return redact("mcpclient: "+op+": ", err)
}

// serverRPCError returns the first JSON-RPC error in err's tree that the
// server sent, skipping the SDK's own jsonrpc2.ErrRejected (also a
// *jsonrpc.Error, code -32005), which marks transport-level failures.
func serverRPCError(err error) *jsonrpc.Error {
	switch x := err.(type) {
	case nil:
		return nil
	case *jsonrpc.Error:
		if x.Code == codeRejected && x.Message == "rejected by transport" {
			return nil
		}
		return x
	case interface{ Unwrap() error }:
		return serverRPCError(x.Unwrap())
	case interface{ Unwrap() []error }:
		for _, e := range x.Unwrap() {
			if w := serverRPCError(e); w != nil {
				return w
			}
		}
	}
	return nil
}

// codeRejected is the code of the SDK's jsonrpc2.ErrRejected.
const codeRejected = -32005

func tooLarge(op string) error {
	return &sentinelError{msg: "mcpclient: " + op + ": result too large", sentinel: ErrResultTooLarge}
}

// keepSession reports whether a session may stay pooled after a call failed
// with err (as returned by classify): only a JSON-RPC error answered by the
// server, or a call abandoned by its context, leave the session known good.
func keepSession(err error) bool {
	var re *rpcError
	if errors.As(err, &re) || errors.Is(err, ErrTooManyTools) {
		return true
	}
	// A silent SSE stream may be a dead connection: do not hand it out again.
	if errors.Is(err, ErrResultTooLarge) || errors.Is(err, ErrUnreachable) || errors.Is(err, errSSEIdle) {
		return false
	}
	var ae *AuthError
	if errors.As(err, &ae) {
		return false
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// maxRPCMessage bounds the server's JSON-RPC error message RPCErrorOf
// returns.
const maxRPCMessage = 200

// RPCErrorOf reports whether err is a JSON-RPC error the MCP server
// answered (not a transport failure), with its code and its message
// sanitised for showing to a caller: control characters removed, URLs cut
// to scheme and host, at most 200 bytes (cut at a character boundary).
func RPCErrorOf(err error) (code int64, message string, ok bool) {
	var re *rpcError
	if !errors.As(err, &re) {
		return 0, "", false
	}
	msg := strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return -1
		}
		return r
	}, redactURLs(re.err.Message))
	if len(msg) > maxRPCMessage {
		n := maxRPCMessage
		for n > 0 && !utf8.RuneStart(msg[n]) {
			n--
		}
		msg = msg[:n] + "…"
	}
	return re.err.Code, msg, true
}
