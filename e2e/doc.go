// Package e2e holds end-to-end tests: the real mcpauth service (app.New)
// on real sockets, called with real gRPC and HTTP clients, backed by the
// real PostgreSQL and Redis of the machine (or SQLite and the in-process
// store), against real authorization and MCP servers.
package e2e
