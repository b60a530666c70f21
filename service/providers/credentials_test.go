package providers

import (
	"context"
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/service/vault"
)

// TestCredentialCombinationsRefused: combinations that make no sense are
// INVALID_ARGUMENT naming the field, and nothing is stored.
func TestCredentialCombinationsRefused(t *testing.T) {
	t.Parallel()
	key := &ClientKeyInput{Generate: true}
	for _, tc := range []struct {
		name  string
		edit  func(*Fields)
		field string
	}{
		{"key and secret", func(f *Fields) {
			f.OAuthClient = OAuthClient{ClientID: "c", ClientSecret: "s", Key: key}
		}, "provider.oauth_client.private_key_jwt"},
		{"key without client", func(f *Fields) { f.OAuthClient = OAuthClient{Key: key} }, "provider.oauth_client.client_id"},
		{"client credentials without client", func(f *Fields) {
			f.CredentialKind, f.OAuthClient = domain.KindClientCredentials, OAuthClient{}
		}, "provider.oauth_client.client_id"},
		{"client credentials without secret or key", func(f *Fields) {
			f.CredentialKind, f.OAuthClient = domain.KindClientCredentials, OAuthClient{ClientID: "c"}
		}, "provider.oauth_client"},
		{"static with a client", func(f *Fields) {
			f.CredentialKind, f.StaticAuthorization, f.OAuthClient = domain.KindStaticAuthorization, "Bearer k", OAuthClient{ClientID: "c"}
		}, "provider.oauth_client"},
		{"static value without the kind", func(f *Fields) { f.StaticAuthorization = "Bearer k" }, "provider.static_authorization"},
		{"static kind without a value", func(f *Fields) { f.CredentialKind = domain.KindStaticAuthorization }, "provider.static_authorization"},
		{"static value with CR LF", func(f *Fields) {
			f.CredentialKind, f.StaticAuthorization = domain.KindStaticAuthorization, "Bearer k\r\nX-Evil: 1"
		}, "provider.static_authorization"},
		{"jwt bearer disabled", func(f *Fields) {
			f.CredentialKind, f.AssertionFile = domain.KindJWTBearer, "/var/run/secrets/tokens/t"
		}, "provider.workload_identity.assertion_file"},
		{"unknown kind", func(f *Fields) { f.CredentialKind = "password" }, "provider.credential_kind"},
		{"bad key", func(f *Fields) {
			f.OAuthClient = OAuthClient{ClientID: "c", Key: &ClientKeyInput{PEM: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}}
		}, "provider.oauth_client.private_key_jwt.private_key_pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			f := linear()
			tc.edit(&f)
			_, err := e.svc.Create(context.Background(), CreateInput{Tenant: "acme", ID: "p", Fields: f})
			wantErr(t, err, apperr.KindInvalidArgument, tc.field)
			if _, err := e.store.GetProvider(context.Background(), "acme", "p"); apperr.KindOf(err) != apperr.KindNotFound {
				t.Fatalf("a refused create stored the provider: %v", err)
			}
		})
	}
}

// TestCredentialKindChangeResets: a new kind drops (and revokes) the
// tokens obtained before, audited with CREDENTIAL_KIND_CHANGED; a new
// server URL without the static Authorization value again is refused (the
// key was meant for the old host and is never carried over).
func TestCredentialKindChangeResets(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	f := linear()
	f.OAuthClient = OAuthClient{ClientID: "svc", ClientSecret: "sec"}
	f.CredentialKind = domain.KindClientCredentials
	e.create(t, "acme", "p", f)
	e.authorize(t, "acme", "p")
	// New secret for a kind without a person: the old token goes.
	_, err := e.svc.Update(ctx, UpdateInput{Tenant: "acme", ID: "p", Fields: Fields{OAuthClient: OAuthClient{ClientSecret: "sec2"}},
		Paths: []string{PathOAuthClientSecret}})
	if err != nil {
		t.Fatal(err)
	}
	if grant, _, _ := e.held("acme", "p"); grant {
		t.Fatal("the token obtained with the old secret survived")
	}
	resets := e.eventsOf(domain.EventCredentialsReset)
	if len(resets) != 1 || resets[0].Reason != domain.ReasonCredentialKindChanged {
		t.Fatalf("credentials.reset events = %+v", resets)
	}
	// To a static key: the client must go in the same update.
	_, err = e.svc.Update(ctx, UpdateInput{Tenant: "acme", ID: "p",
		Fields: Fields{CredentialKind: domain.KindStaticAuthorization, StaticAuthorization: "Bearer sk-1"},
		Paths:  []string{PathCredentialKind, PathStaticAuthorization, PathOAuthClient}})
	if err != nil {
		t.Fatal(err)
	}
	row := e.row(t, "acme", "p")
	if strings.Contains(string(row.CredentialSecrets), "sk-1") || strings.Contains(row.CredentialConfig, "sk-1") {
		t.Fatal("the static value is stored in clear")
	}
	d, err := vault.OpenProvider(e.keys, row)
	if err != nil || d.StaticAuthorization.Reveal() != "Bearer sk-1" {
		t.Fatalf("stored static value does not open: %v", err)
	}
	_, err = e.svc.Update(ctx, UpdateInput{Tenant: "acme", ID: "p", Fields: Fields{ServerURL: "https://other.example/mcp"},
		Paths: []string{PathServerURL}})
	wantErr(t, err, apperr.KindInvalidArgument, "provider.static_authorization")
}
