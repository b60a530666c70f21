package config

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/sethvargo/go-envconfig"
)

func TestDefaults(t *testing.T) {
	t.Parallel()
	c, err := Load(context.Background(), nil, envconfig.MapLookuper(map[string]string{}))
	if err != nil {
		t.Fatal(err)
	}
	if c.GRPCAddr != ":9090" || c.HTTPAddr != ":8080" || c.DataDir != "./data" || c.DatabaseDSN() != "data/mcpauth.db" {
		t.Fatalf("defaults: %+v", c)
	}
	if c.PublicURL != "http://localhost:8080" || c.PublicHTTPS() || c.TLS() {
		t.Fatalf("derived values: %s %v %v", c.PublicURL, c.PublicHTTPS(), c.TLS())
	}
}

func TestFlagsOverrideEnvironment(t *testing.T) {
	t.Parallel()
	c, err := Load(context.Background(), []string{"-grpc-addr", "127.0.0.1:1", "-public-url", "https://auth.example/"},
		envconfig.MapLookuper(map[string]string{"MCPAUTH_GRPC_ADDR": ":7", "MCPAUTH_PUBLIC_URL": "http://x"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.GRPCAddr != "127.0.0.1:1" || c.PublicURL != "https://auth.example" || !c.PublicHTTPS() {
		t.Fatalf("%+v", c)
	}
}

func TestSecretsAreNotPrinted(t *testing.T) {
	t.Parallel()
	c, err := Load(context.Background(), nil, envconfig.MapLookuper(map[string]string{
		"MCPAUTH_DATABASE_URL": "postgres://u:pg-pass-123@db/x", "MCPAUTH_MASTER_KEYS": "1:master-key-material"}))
	if err != nil {
		t.Fatal(err)
	}
	out := fmt.Sprintf("%v %+v %#v", c, c, *c)
	for _, s := range []string{"pg-pass-123", "master-key-material"} {
		if strings.Contains(out, s) {
			t.Errorf("config printing leaks %q", s)
		}
	}
	if c.DatabaseDSN() != "postgres://u:pg-pass-123@db/x" {
		t.Fatal("DatabaseDSN lost the value")
	}
}

func TestInvalid(t *testing.T) {
	t.Parallel()
	for name, env := range map[string]map[string]string{
		"public url without scheme": {"MCPAUTH_PUBLIC_URL": "localhost:8080"},
		"public url with query":     {"MCPAUTH_PUBLIC_URL": "https://a.example/?x=1"},
		"cimd not https":            {"MCPAUTH_CLIENT_METADATA_URL": "http://a.example/meta.json"},
		"tls half":                  {"MCPAUTH_TLS_CERT_FILE": "c.pem"},
		"log level":                 {"MCPAUTH_LOG_LEVEL": "loud"},
		"flow ttl":                  {"MCPAUTH_FLOW_TTL": "30m"},
		"cache ttl":                 {"MCPAUTH_TOKEN_CACHE_TTL": "1h"},
		"origin with path":          {"MCPAUTH_RETURN_ORIGINS": "https://console.example/app"},
		"bad duration":              {"MCPAUTH_FLOW_TTL": "soon"},
		"no retention interval":     {"MCPAUTH_AUDIT_RETENTION_INTERVAL": "0s"},
		"negative retention":        {"MCPAUTH_AUDIT_RETENTION_INTERVAL": "-1m"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if _, err := Load(context.Background(), nil, envconfig.MapLookuper(env)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// TestPublicURLFollowsHTTPAddr: without MCPAUTH_PUBLIC_URL the authorize and
// callback URLs are on the port the gateway listens on.
func TestPublicURLFollowsHTTPAddr(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{env: map[string]string{"MCPAUTH_HTTP_ADDR": ":9999"}, want: "http://localhost:9999"},
		{env: map[string]string{"MCPAUTH_HTTP_ADDR": "0.0.0.0:9999"}, want: "http://localhost:9999"},
		{env: map[string]string{"MCPAUTH_HTTP_ADDR": "[::]:9999"}, want: "http://localhost:9999"},
		{env: map[string]string{"MCPAUTH_HTTP_ADDR": "127.0.0.1:7000"}, want: "http://127.0.0.1:7000"},
		{env: map[string]string{}, args: []string{"-http-addr", ":8181"}, want: "http://localhost:8181"},
		{env: map[string]string{"MCPAUTH_HTTP_ADDR": ":9443", "MCPAUTH_TLS_CERT_FILE": "c", "MCPAUTH_TLS_KEY_FILE": "k"},
			want: "https://localhost:9443"},
		{env: map[string]string{"MCPAUTH_HTTP_ADDR": ":9999", "MCPAUTH_PUBLIC_URL": "https://auth.example"}, want: "https://auth.example"},
	} {
		c, err := Load(context.Background(), tt.args, envconfig.MapLookuper(tt.env))
		if err != nil {
			t.Fatalf("%v %v: %v", tt.env, tt.args, err)
		}
		if c.PublicURL != tt.want {
			t.Errorf("%v %v: public URL %q, want %q", tt.env, tt.args, c.PublicURL, tt.want)
		}
	}
}

func TestClientCertConfig(t *testing.T) {
	t.Parallel()
	for env, want := range map[string]string{
		"MCPAUTH_TLS_CLIENT_CA_FILE=ca.pem":   "MCPAUTH_TLS_CLIENT_CA_FILE needs MCPAUTH_TLS_CERT_FILE",
		"MCPAUTH_TLS_CLIENT_AUTH=sometimes":   `MCPAUTH_TLS_CLIENT_AUTH "sometimes" must be optional or require`,
		"MCPAUTH_CALLERS_RELOAD_INTERVAL=-1s": "MCPAUTH_CALLERS_RELOAD_INTERVAL must not be negative",
	} {
		k, v, _ := strings.Cut(env, "=")
		_, err := Load(context.Background(), nil, envconfig.MapLookuper(map[string]string{k: v}))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", env, err, want)
		}
	}
}

// TestPublicDocumentRate: the public documents' per-IP limit defaults to a
// generous 600 a minute, is read from its variable, and must be at least 1.
func TestPublicDocumentRate(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		env  string
		want int
		ok   bool
	}{
		{"", 600, true},
		{"1", 1, true},
		{"5000", 5000, true},
		{"0", 0, false},
		{"-3", 0, false},
		{"many", 0, false},
	} {
		t.Run(tt.env, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{}
			if tt.env != "" {
				env["MCPAUTH_PUBLIC_DOCUMENT_RATE_PER_MINUTE"] = tt.env
			}
			c, err := Load(context.Background(), nil, envconfig.MapLookuper(env))
			if !tt.ok {
				if err == nil {
					t.Fatalf("accepted %q", tt.env)
				}
				return
			}
			if err != nil || c.PublicDocumentRatePerMinute != tt.want {
				t.Fatalf("Load: %v, rate %d, want %d", err, c.PublicDocumentRatePerMinute, tt.want)
			}
		})
	}
}
