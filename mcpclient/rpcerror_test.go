package mcpclient

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// TestRPCErrorOf: a JSON-RPC error the server answered (here the go-sdk
// server's answer to an unknown tool) is reported with its code and a
// sanitised message; transport failures are not JSON-RPC errors.
func TestRPCErrorOf(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, streamableSSE)
	c := newTestClient(t, Options{})
	_, err := c.CallTool(t.Context(), "k", Target{URL: ts.URL}, goodCreds(), "no-such-tool", nil)
	code, msg, ok := RPCErrorOf(err)
	if !ok || code != -32602 || !strings.Contains(msg, "no-such-tool") {
		t.Fatalf("RPCErrorOf(%v) = %d, %q, %v", err, code, msg, ok)
	}
	if _, _, ok := RPCErrorOf(fmt.Errorf("mcpclient: x: %w", ErrUnreachable)); ok {
		t.Fatal("a transport failure was reported as a JSON-RPC error")
	}
	long := &rpcError{op: "tools/call", err: &jsonrpc.Error{Code: -32603,
		Message: "boom\r\nInjected: 1 see https://internal.example/secret/path?token=x " + strings.Repeat("é", 200)}}
	code, msg, ok = RPCErrorOf(fmt.Errorf("wrapped: %w", long))
	if !ok || code != -32603 || strings.ContainsAny(msg, "\r\n") || strings.Contains(msg, "secret/path") ||
		len(msg) > maxRPCMessage+len("…") || !strings.HasSuffix(msg, "…") {
		t.Fatalf("sanitised message %q", msg)
	}
	if !errors.Is(long, long.err) {
		t.Fatal("unwrap")
	}
}
