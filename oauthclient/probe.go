package oauthclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/oauthex"
)

// Limits on WWW-Authenticate input. The SDK parser is quadratic in the
// number of commas, and real challenges are a few hundred bytes.
const (
	maxChallengeHeaderBytes = 4 << 10
	maxChallengeHeaders     = 8
)

// ProbeResult is what an unauthenticated request to an MCP server revealed.
type ProbeResult struct {
	// NotRequired is true when the server answered 2xx without credentials.
	NotRequired bool
	// ResourceMetadataURL is the Bearer challenge's resource_metadata, when
	// present and a valid http(s) URL.
	ResourceMetadataURL string
	// Scopes is the Bearer challenge's scope, split on spaces.
	Scopes []string
	// Error is the Bearer challenge's error code (sanitised), if any.
	Error string
	// Status is the HTTP status of the answer.
	Status int
}

// Challenge is the content of a Bearer challenge (RFC 6750 section 3,
// RFC 9728 section 5.1) that the client acts on. error_description is
// deliberately not kept: it is upstream text that must never be reflected.
type Challenge struct {
	// Error is the error code, for example "insufficient_scope" (sanitised).
	Error string
	// Scope is the scope parameter, split on spaces, invalid tokens dropped.
	Scope []string
	// ResourceMetadata is the resource_metadata parameter, unvalidated.
	ResourceMetadata string
}

// ParseChallenge finds the first Bearer challenge in the given
// WWW-Authenticate header values, else the first DPoP challenge. It returns ErrNoBearerChallenge when
// there is none, and an error for malformed or oversized headers. It is
// used on the probe's 401 and on a 403 insufficient_scope (step-up).
func ParseChallenge(headers []string) (Challenge, error) {
	if len(headers) > maxChallengeHeaders {
		return Challenge{}, errors.New("too many WWW-Authenticate headers")
	}
	for _, h := range headers {
		if len(h) > maxChallengeHeaderBytes {
			return Challenge{}, errors.New("WWW-Authenticate header too long")
		}
	}
	// oauthex.ParseWWWAuthenticate does the RFC 9110 tokenising. Its error
	// text quotes the header, which is upstream data, so it is replaced.
	chs, err := oauthex.ParseWWWAuthenticate(headers)
	if err != nil {
		return Challenge{}, errors.New("malformed WWW-Authenticate header")
	}
	// A Bearer challenge wins; a DPoP one (RFC 9449 section 7.1) carries
	// the same parameters for a server that takes only DPoP-bound tokens.
	for _, scheme := range []string{"bearer", "dpop"} {
		for _, ch := range chs {
			if ch.Scheme != scheme {
				continue
			}
			return Challenge{
				Error:            sanitizeCode(ch.Params["error"]),
				Scope:            splitScope(ch.Params["scope"]),
				ResourceMetadata: ch.Params["resource_metadata"],
			}, nil
		}
	}
	return Challenge{}, ErrNoBearerChallenge
}

// splitScope splits a space-delimited scope string, dropping tokens that are
// not RFC 6749 scope-tokens and duplicates.
func splitScope(s string) []string {
	var out []string
	for _, f := range strings.Fields(s) {
		if validScopeToken(f) && !contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// validScopeToken reports whether s matches RFC 6749's
// scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
func validScopeToken(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b < 0x21 || b > 0x7e || b == '"' || b == '\\' {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// OpProbe is the Op of errors from Probe: a *StatusError with it is the MCP
// endpoint's own answer.
const OpProbe = "probe"

// Probe sends an unauthenticated MCP "initialize" request to serverURL
// (POST, JSON-RPC, with the provider's custom headers) and reports whether
// authorization is required. A 401 or 403 is parsed for its Bearer
// challenge; a 2xx means the server needs no OAuth; any other status is a
// *StatusError and a network failure a *TemporaryError. The custom header
// values may be secrets: they are sent, never recorded.
func (c *Client) Probe(ctx context.Context, serverURL string, headers map[string]string, tr *Trace) (*ProbeResult, error) {
	const op = OpProbe
	if err := checkEndpoint("server url", serverURL); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	body, err := json.Marshal(map[string]any{
		"jsonrpc": "2.0",
		"id":      1,
		"method":  "initialize",
		"params": map[string]any{
			"protocolVersion": ProtocolVersion,
			"capabilities":    map[string]any{},
			"clientInfo":      map[string]string{"name": c.clientName, "version": c.clientVer},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, serverURL, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%s: cannot build request", op)
	}
	setCustomHeaders(req, headers)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("MCP-Protocol-Version", ProtocolVersion)

	res, err := c.http.Do(req)
	if err != nil {
		tr.add(Step{Action: ActionProbe, URL: serverURL, Detail: "request failed"})
		return nil, netError(op, err)
	}
	step := Step{Action: ActionProbe, URL: serverURL, HTTPStatus: res.StatusCode, ContentType: res.Header.Get("Content-Type")}
	pr := &ProbeResult{Status: res.StatusCode}
	switch {
	case res.StatusCode >= 200 && res.StatusCode < 300:
		// The body may be an open event stream: close, do not drain.
		_ = res.Body.Close()
		c.endSession(ctx, serverURL, headers, res.Header.Get("Mcp-Session-Id"))
		pr.NotRequired = true
		step.OK, step.Detail = true, "no authorization required"
		tr.add(step)
		return pr, nil
	case res.StatusCode == http.StatusUnauthorized || res.StatusCode == http.StatusForbidden:
		drain(res.Body)
	default:
		drain(res.Body)
		step.Detail = "unexpected status"
		if res.StatusCode >= 300 && res.StatusCode < 400 {
			step.Detail = "redirect not followed; check the server url"
		}
		tr.add(step)
		return nil, &StatusError{Op: op, Status: res.StatusCode}
	}

	ch, err := ParseChallenge(res.Header.Values("WWW-Authenticate"))
	switch {
	case errors.Is(err, ErrNoBearerChallenge):
		// Discovery falls back to the well-known locations.
		step.OK, step.Detail = true, "authorization required; no bearer challenge"
	case err != nil:
		step.OK, step.Detail = true, "authorization required; "+err.Error()
	default:
		pr.Scopes, pr.Error = ch.Scope, ch.Error
		step.OK, step.Detail = true, "authorization required; bearer challenge"
		if ch.ResourceMetadata != "" {
			if cerr := checkEndpoint("resource_metadata", ch.ResourceMetadata); cerr != nil {
				step.Detail += "; ignored " + cerr.Error()
			} else {
				pr.ResourceMetadataURL = ch.ResourceMetadata
				step.Detail += " with resource_metadata"
			}
		}
	}
	tr.add(step)
	return pr, nil
}

// setCustomHeaders copies the provider's headers onto req. Validation of
// names and values happens where the provider is configured.
func setCustomHeaders(req *http.Request, headers map[string]string) {
	for k, v := range headers {
		req.Header.Set(k, v)
	}
}

// endSession deletes the session a successful probe may have opened, so an
// open-access server does not keep an orphan session. Best effort.
func (c *Client) endSession(ctx context.Context, serverURL string, headers map[string]string, id string) {
	if id == "" || len(id) > 1024 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, serverURL, nil)
	if err != nil {
		return
	}
	setCustomHeaders(req, headers)
	req.Header.Set("Mcp-Session-Id", id)
	req.Header.Set("MCP-Protocol-Version", ProtocolVersion)
	res, err := c.http.Do(req)
	if err != nil {
		return
	}
	drain(res.Body)
}
