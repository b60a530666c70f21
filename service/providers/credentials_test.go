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

// enterprise is a valid enterprise-managed provider's credential settings.
func enterprise(f *Fields) {
	f.CredentialKind = domain.KindEnterpriseManaged
	f.OAuthClient = OAuthClient{ClientID: "at-as", ClientSecret: "as-secret"}
	f.EnterpriseIdP = &EnterpriseIdPInput{Issuer: "https://idp.example", ClientID: "mcpauth", ClientSecret: "idp-secret"}
}

// TestEnterpriseIdPRefused: an enterprise-managed provider needs its
// identity provider (issuer or token endpoint, client id and secret) and a
// client at the authorization server; the identity provider belongs to no
// other kind. Each refusal names the field and stores nothing.
func TestEnterpriseIdPRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		edit  func(*Fields)
		field string
	}{
		{"no issuer or token endpoint", func(f *Fields) { f.EnterpriseIdP.Issuer = "" }, "provider.enterprise_identity_provider.issuer"},
		{"issuer with a query", func(f *Fields) { f.EnterpriseIdP.Issuer = "https://idp.example/?t=1" }, "provider.enterprise_identity_provider.issuer"},
		{"issuer not a URL", func(f *Fields) { f.EnterpriseIdP.Issuer = "ftp://idp.example" }, "provider.enterprise_identity_provider.issuer"},
		{"bad token endpoint", func(f *Fields) { f.EnterpriseIdP.TokenEndpoint = "https://user:pw@idp.example/token" }, "provider.enterprise_identity_provider.token_endpoint"},
		{"no client id", func(f *Fields) { f.EnterpriseIdP.ClientID = "" }, "provider.enterprise_identity_provider.client_id"},
		{"client id with a space", func(f *Fields) { f.EnterpriseIdP.ClientID = "a b" }, "provider.enterprise_identity_provider.client_id"},
		{"no client secret", func(f *Fields) { f.EnterpriseIdP.ClientSecret = "" }, "provider.enterprise_identity_provider.client_secret"},
		{"secret with CR LF", func(f *Fields) { f.EnterpriseIdP.ClientSecret = "a\r\nb" }, "provider.enterprise_identity_provider.client_secret"},
		{"no identity provider", func(f *Fields) { f.EnterpriseIdP = nil }, "provider.enterprise_identity_provider.issuer"},
		{"no client at the authorization server", func(f *Fields) { f.OAuthClient = OAuthClient{} }, "provider.oauth_client.client_id"},
		{"client without secret or key", func(f *Fields) { f.OAuthClient.ClientSecret = "" }, "provider.oauth_client"},
		{"identity provider with another kind", func(f *Fields) { f.CredentialKind = domain.KindClientCredentials }, "provider.enterprise_identity_provider"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			f := linear()
			enterprise(&f)
			tc.edit(&f)
			_, err := e.svc.Create(context.Background(), CreateInput{Tenant: "acme", ID: "p", Fields: f})
			wantErr(t, err, apperr.KindInvalidArgument, tc.field)
			if _, err := e.store.GetProvider(context.Background(), "acme", "p"); apperr.KindOf(err) != apperr.KindNotFound {
				t.Fatalf("a refused create stored the provider: %v", err)
			}
		})
	}
}

// TestEnterpriseIdPStored: the identity provider's secret is sealed (not
// in clear in the row), shown only as set, kept by an update that names
// the identity provider without a secret for the same client id, dropped
// when the client id changes without a new secret (refused then), and a
// change of it resets the tokens.
func TestEnterpriseIdPStored(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	f := linear()
	enterprise(&f)
	v := e.create(t, "acme", "p", f)
	if v.EnterpriseIdP == nil || v.EnterpriseIdP.Issuer != "https://idp.example" || !v.EnterpriseIdP.SecretSet || v.CredentialKind != domain.KindEnterpriseManaged {
		t.Fatalf("view %+v", v.EnterpriseIdP)
	}
	row := e.row(t, "acme", "p")
	if strings.Contains(string(row.CredentialSecrets), "idp-secret") || strings.Contains(row.CredentialConfig, "idp-secret") {
		t.Fatal("the identity provider's secret is stored in clear")
	}
	d, err := vault.OpenProvider(e.keys, row)
	if err != nil || d.IdPClientSecret.Reveal() != "idp-secret" || d.CredConfig.IdP.ClientID != "mcpauth" {
		t.Fatalf("stored identity provider does not open: %v", err)
	}
	// Same client, no secret: the secret stays.
	v, err = e.svc.Update(ctx, UpdateInput{Tenant: "acme", ID: "p", Paths: []string{PathEnterpriseIdP},
		Fields: Fields{EnterpriseIdP: &EnterpriseIdPInput{Issuer: "https://idp2.example", ClientID: "mcpauth"}}})
	if err != nil || !v.EnterpriseIdP.SecretSet || v.EnterpriseIdP.Issuer != "https://idp2.example" {
		t.Fatalf("update keeping the secret: %+v, %v", v, err)
	}
	// Another client without a secret: the old secret is not carried over.
	_, err = e.svc.Update(ctx, UpdateInput{Tenant: "acme", ID: "p", Paths: []string{PathEnterpriseIdP},
		Fields: Fields{EnterpriseIdP: &EnterpriseIdPInput{Issuer: "https://idp2.example", ClientID: "other"}}})
	wantErr(t, err, apperr.KindInvalidArgument, "provider.enterprise_identity_provider.client_secret")
	// A new secret alone resets the tokens obtained with the old one.
	e.authorize(t, "acme", "p")
	if _, err := e.svc.Update(ctx, UpdateInput{Tenant: "acme", ID: "p", Paths: []string{PathEnterpriseIdPSecret},
		Fields: Fields{EnterpriseIdP: &EnterpriseIdPInput{ClientSecret: "idp-secret-2"}}}); err != nil {
		t.Fatal(err)
	}
	if grant, _, _ := e.held("acme", "p"); grant {
		t.Fatal("the tokens obtained with the old identity provider secret survived")
	}
}
