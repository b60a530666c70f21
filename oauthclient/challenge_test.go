package oauthclient

import (
	"context"
	"errors"
	"testing"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/secret"
)

func TestCoversResource(t *testing.T) {
	t.Parallel()
	const mcp = "https://mcp.example.com/v1/mcp"
	tests := []struct {
		resource string
		want     bool
	}{
		{mcp, true},
		{"HTTPS://MCP.example.com:443/v1/mcp", true},
		// RFC 9728 section 3.3: a root document names the origin.
		{"https://mcp.example.com", true},
		{"https://mcp.example.com/", true},
		// A less specific URI on the same origin (RFC 8707 section 2).
		{"https://mcp.example.com/v1", true},
		{"https://mcp.example.com/v1/", true},
		// Not a whole-segment prefix, another path, a query.
		{"https://mcp.example.com/v", false},
		{"https://mcp.example.com/v2", false},
		{"https://mcp.example.com/v1/mcp/more", false},
		{"https://mcp.example.com/?tenant=a", false},
		// Another origin: scheme, host or port.
		{"http://mcp.example.com", false},
		{"https://other.example.com", false},
		{"https://mcp.example.com:8443", false},
		{"https://mcp.example.com.evil.example", false},
		{"not a url", false},
		{"", false},
	}
	for _, tc := range tests {
		if got := CoversResource(tc.resource, mcp); got != tc.want {
			t.Errorf("CoversResource(%q) = %v, want %v", tc.resource, got, tc.want)
		}
	}
}

func TestRegistrationAuthMethod(t *testing.T) {
	t.Parallel()
	tests := []struct {
		advertised []string
		want       string
		err        bool
	}{
		{nil, AuthClientSecretBasic, false},
		{[]string{"client_secret_post", "none"}, AuthClientSecretPost, false},
		{[]string{"none"}, AuthNone, false},
		{[]string{"client_secret_basic"}, AuthClientSecretBasic, false},
		{[]string{"private_key_jwt"}, "", true},
		{[]string{"tls_client_auth", "private_key_jwt"}, "", true},
	}
	for _, tc := range tests {
		got, err := RegistrationAuthMethod(tc.advertised)
		if got != tc.want || (err != nil) != tc.err || (tc.err && !errors.Is(err, ErrNoUsableAuthMethod)) {
			t.Errorf("RegistrationAuthMethod(%v) = %q, %v", tc.advertised, got, err)
		}
	}
}

func TestChooseAuthMethodFromAdvertised(t *testing.T) {
	t.Parallel()
	withSecret := &Registration{Method: domain.RegPreRegistered, ClientID: "c", ClientSecret: secret.New("s")}
	public := &Registration{Method: domain.RegPreRegistered, ClientID: "c"}
	cimd := &Registration{Method: domain.RegCIMD, ClientID: "https://client.example/meta.json"}
	tests := []struct {
		name       string
		reg        *Registration
		advertised []string
		want       string
		err        bool
	}{
		{"secret, nothing advertised", withSecret, nil, AuthClientSecretBasic, false},
		{"secret, post only", withSecret, []string{"client_secret_post"}, AuthClientSecretPost, false},
		{"secret, private_key_jwt only", withSecret, []string{"private_key_jwt"}, "", true},
		{"public, nothing advertised", public, nil, AuthNone, false},
		{"public, none listed", public, []string{"client_secret_basic", "none"}, AuthNone, false},
		{"public, basic only", public, []string{"client_secret_basic"}, "", true},
		{"public, private_key_jwt only", public, []string{"private_key_jwt"}, "", true},
		{"cimd, none listed", cimd, []string{"none"}, AuthNone, false},
		{"cimd, secret methods only", cimd, []string{"client_secret_basic"}, "", true},
		{"recorded method wins", &Registration{Method: domain.RegDynamic, ClientID: "c", ClientSecret: secret.New("s"),
			AuthMethod: AuthClientSecretPost}, []string{"client_secret_basic"}, AuthClientSecretPost, false},
	}
	for _, tc := range tests {
		got, err := ChooseAuthMethod(tc.reg, tc.advertised)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("%s: ChooseAuthMethod = %q, %v; want %q (error %v)", tc.name, got, err, tc.want, tc.err)
		}
	}
}

// TestForgetDropsCachedDiscovery: after Forget the next discovery reads
// the servers again instead of serving cached documents.
func TestForgetDropsCachedDiscovery(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t).modern()
	c := newTestClient(t)
	ctx := context.Background()
	if _, err := c.Discover(ctx, ts.resource(), ts.resource(), nil, nil); err != nil {
		t.Fatal(err)
	}
	first := ts.totalHits()
	if _, err := c.Discover(ctx, ts.resource(), ts.resource(), nil, nil); err != nil {
		t.Fatal(err)
	}
	if n := ts.totalHits(); n != first {
		t.Fatalf("cached discovery made %d requests", n-first)
	}
	c.Forget(ts.resource())
	if _, err := c.Discover(ctx, ts.resource(), ts.resource(), nil, nil); err != nil {
		t.Fatal(err)
	}
	if n := ts.totalHits(); n != 2*first {
		t.Fatalf("discovery after Forget made %d requests, want %d", n-first, first)
	}
}
