package validate

import (
	"net/textproto"
	"slices"
	"strconv"

	"github.com/mcpauth/mcpauth/apperr"
)

// deniedHeaders are headers a provider may not set on requests to its MCP
// server: the transport owns Host, framing and hop-by-hop headers, proxy
// credentials must never be forwarded, and the MCP client owns the session
// and protocol-version headers.
var deniedHeaders = map[string]bool{
	"Host":                 true,
	"Content-Length":       true,
	"Transfer-Encoding":    true,
	"Connection":           true,
	"Keep-Alive":           true,
	"Proxy-Connection":     true,
	"Upgrade":              true,
	"Te":                   true,
	"Trailer":              true,
	"Expect":               true,
	"Proxy-Authorization":  true,
	"Proxy-Authenticate":   true,
	"Mcp-Session-Id":       true,
	"Mcp-Protocol-Version": true,
}

// Headers checks the custom headers a provider sends to its MCP server and
// returns them keyed by canonical name (textproto.CanonicalMIMEHeaderKey).
// At most 32 headers; names are RFC 7230 tokens of 1 to 128 characters, not
// Authorization (see HeadersAllowingAuthorization), Host, Content-Length,
// Expect, a hop-by-hop or proxy header, or an MCP protocol header; two names
// equal after canonicalisation are an error; values are at most 8 KiB with
// no control characters other than horizontal tab (so no CR, LF or NUL).
// The field path of a bad header is field["Name"]; the value is never
// quoted in the error.
func Headers(field string, h map[string]string) (map[string]string, error) {
	return headers(field, h, false)
}

// HeadersAllowingAuthorization is Headers for callers that deliberately
// accept an Authorization header (a static API key for an MCP server that
// does not use OAuth).
func HeadersAllowingAuthorization(field string, h map[string]string) (map[string]string, error) {
	return headers(field, h, true)
}

func headers(field string, h map[string]string, allowAuthorization bool) (map[string]string, error) {
	if len(h) > MaxHeaders {
		return nil, apperr.Invalid(field, "must have at most %d headers", MaxHeaders)
	}
	names := make([]string, 0, len(h))
	for name := range h {
		names = append(names, name)
	}
	slices.Sort(names) // report the same header first on every call
	out := make(map[string]string, len(h))
	for _, name := range names {
		f := headerField(field, name)
		switch {
		case name == "":
			return nil, apperr.Invalid(f, "name must not be empty")
		case len(name) > MaxHeaderNameLen:
			return nil, apperr.Invalid(f, "name must be at most %d characters", MaxHeaderNameLen)
		case !isToken(name):
			return nil, apperr.Invalid(f, "name must be an HTTP token (letters, digits and !#$%%&'*+-.^_`|~)")
		}
		canon := textproto.CanonicalMIMEHeaderKey(name)
		if deniedHeaders[canon] || (canon == "Authorization" && !allowAuthorization) {
			return nil, apperr.Invalid(f, "header is not allowed")
		}
		v := h[name]
		if len(v) > MaxHeaderValueBytes {
			return nil, apperr.Invalid(f, "value must be at most %d bytes", MaxHeaderValueBytes)
		}
		for i := 0; i < len(v); i++ {
			if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
				return nil, apperr.Invalid(f, "value must not contain CR, LF, NUL or other control characters")
			}
		}
		if _, dup := out[canon]; dup {
			return nil, apperr.Invalid(f, "name duplicates another header name")
		}
		out[canon] = v
	}
	return out, nil
}

// headerField returns field["name"], the name shortened to the length limit
// so that an oversized name does not flood the error.
func headerField(field, name string) string {
	if len(name) > MaxHeaderNameLen {
		name = name[:MaxHeaderNameLen]
	}
	return field + "[" + strconv.Quote(name) + "]"
}

// isToken reports an RFC 7230 token.
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isAlnum(c) {
			continue
		}
		switch c {
		case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
			continue
		}
		return false
	}
	return s != ""
}
