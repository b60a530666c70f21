// Package testauthz runs a real OAuth 2.1 authorization server and real MCP
// servers inside tests, so that mcpauth's discovery, registration, PKCE,
// refresh, revocation and step-up code is exercised against the protocol as
// real servers speak it rather than against call-recording mocks.
//
// The authorization server is built on github.com/ory/fosite (authorization
// code with PKCE S256, refresh tokens with rotation and reuse detection,
// RFC 7009 revocation, RFC 7662 introspection) with fosite's in-memory
// storage, plus the pieces fosite lacks, written here: RFC 8414 / OpenID
// discovery documents at the well-known locations, RFC 7591 dynamic client
// registration, RFC 9207 iss on the authorization response, and rejecting
// RFC 8707 resource indicators on demand.
//
// The MCP servers use the official go-sdk (mcp and auth packages): Streamable
// HTTP transport, bearer-token checks against the authorization server, and
// RFC 9728 protected-resource metadata.
//
// Both servers listen on 127.0.0.1 through httptest, record every request
// they receive for assertions, and offer fault injection (delays, error
// statuses, dead refresh tokens).
package testauthz
