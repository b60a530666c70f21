package server

import (
	"net/http/httptest"
	"net/netip"
	"testing"
)

func TestClientKey(t *testing.T) {
	t.Parallel()
	proxy := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	tests := []struct {
		name, remote, xff string
		trusted           []netip.Prefix
		want              string
	}{
		{"direct v4", "203.0.113.7:5555", "", nil, "203.0.113.7"},
		{"xff ignored without trusted proxy", "203.0.113.7:5555", "198.51.100.1", nil, "203.0.113.7"},
		{"xff from trusted proxy", "10.1.2.3:5555", "198.51.100.1", proxy, "198.51.100.1"},
		{"spoofed leftmost hop ignored", "10.1.2.3:5555", "1.2.3.4, 198.51.100.1", proxy, "198.51.100.1"},
		{"trusted hops skipped", "10.1.2.3:5555", "198.51.100.1, 10.9.9.9", proxy, "198.51.100.1"},
		{"garbage xff keeps proxy", "10.1.2.3:5555", "not-an-ip", proxy, "10.1.2.3"},
		{"ipv6 grouped by /64", "[2001:db8:1:2:aaaa::1]:5555", "", nil, "2001:db8:1:2::/64"},
		{"ipv6 neighbour same key", "[2001:db8:1:2:bbbb::9]:5555", "", nil, "2001:db8:1:2::/64"},
		{"mapped v4", "[::ffff:203.0.113.7]:5555", "", nil, "203.0.113.7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest("GET", "/v1/oauth/callback", nil)
			r.RemoteAddr = tt.remote
			if tt.xff != "" {
				r.Header.Set("X-Forwarded-For", tt.xff)
			}
			if got := clientKey(r, tt.trusted); got != tt.want {
				t.Fatalf("clientKey = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestLimiterNeverLocksOutNewcomers(t *testing.T) {
	t.Parallel()
	l := newIPLimiter(60)
	for i := range maxBuckets + 10 {
		l.allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String())
	}
	if !l.allow("203.0.113.99") {
		t.Fatal("a new client was refused because the table was full")
	}
	if len(l.buckets) > maxBuckets {
		t.Fatalf("table grew to %d", len(l.buckets))
	}
	// The per-client limit still holds: a burst beyond it is refused.
	refused := false
	for range 100 {
		if !l.allow("198.51.100.5") {
			refused = true
			break
		}
	}
	if !refused {
		t.Fatal("100 requests in a burst were all allowed at 60/min")
	}
}
