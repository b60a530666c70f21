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
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if _, err := Load(context.Background(), nil, envconfig.MapLookuper(env)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
