package mcpclient

import (
	"net/http"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// BenchmarkCallToolEcho measures one tools/call of "echo" against a local
// go-sdk streamable HTTP server, directly through the SDK (one session, a
// plain http.Client) and brokered through a pooled Client (egress guard,
// credential injection, response caps), sequentially and in parallel.
// Compare the sub-benchmarks' ns/op for the broker's overhead.
func BenchmarkCallToolEcho(b *testing.B) {
	ts := newTestServer(b, streamableJSON)
	args := map[string]any{"text": "hello"}

	b.Run("direct", func(b *testing.B) {
		cl := mcp.NewClient(&mcp.Implementation{Name: "bench", Version: "1"}, nil)
		sess, err := cl.Connect(b.Context(), &mcp.StreamableClientTransport{
			Endpoint: ts.URL, HTTPClient: &http.Client{Transport: headerOnly{goodCreds()}}, DisableStandaloneSSE: true,
		}, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer sess.Close()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := sess.CallTool(b.Context(), &mcp.CallToolParams{Name: "echo", Arguments: args}); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("pooled", func(b *testing.B) {
		c := newTestClient(b, Options{})
		tg := Target{URL: ts.URL}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.CallTool(b.Context(), "tenant/provider", tg, goodCreds(), "echo", args); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("pooled-parallel", func(b *testing.B) {
		c := newTestClient(b, Options{})
		tg := Target{URL: ts.URL}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.CallTool(b.Context(), "tenant/provider", tg, goodCreds(), "echo", args); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// headerOnly adds the credentials but none of the broker's response
// handling, for the direct baseline (the test server requires them).
type headerOnly struct{ cr Credentials }

func (h headerOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	for k, v := range h.cr.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Authorization", "Bearer "+h.cr.AccessToken.Reveal())
	return http.DefaultTransport.RoundTrip(req)
}
