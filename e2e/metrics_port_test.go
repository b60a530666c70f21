package e2e

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestMetricsAdminPort: with MCPAUTH_METRICS_ADDR set, /metrics is served
// on that address only, not on the public HTTP port; without it, on the
// public port.
func TestMetricsAdminPort(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s := Start(t, Options{Env: map[string]string{"MCPAUTH_METRICS_ADDR": addr}})
	get := func(u string) (int, string) {
		t.Helper()
		var resp *http.Response
		var err error
		for range 50 { // the admin listener starts with Serve
			if resp, err = http.Get(u); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("http://" + addr + "/metrics"); code != 200 || !strings.Contains(body, "mcpauth_tokens_served_total") {
		t.Fatalf("admin port /metrics: %d", code)
	}
	if code, body := get(s.HTTPURL + "/metrics"); code == 200 && strings.Contains(body, "mcpauth_tokens_served_total") {
		t.Fatal("metrics are still served on the public port")
	}
	pub := Start(t, Options{})
	if code, body := get(pub.HTTPURL + "/metrics"); code != 200 || !strings.Contains(body, "mcpauth_tokens_served_total") {
		t.Fatalf("public /metrics without an admin port: %d", code)
	}
}
