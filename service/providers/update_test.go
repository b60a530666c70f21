package providers

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/service/servicetest"
	"github.com/mcpauth/mcpauth/service/vault"
	"github.com/mcpauth/mcpauth/validate"
)

// clientString shows a client view compactly; nil and empty scopes print
// alike.
func clientString(c *OAuthClientView) string {
	if c == nil {
		return "none"
	}
	return fmt.Sprintf("%s/%v/%v", c.ClientID, c.ClientSecretSet, c.Scopes)
}

func headerNames(v *View) []string {
	names := []string{}
	for _, h := range v.Headers {
		names = append(names, h.Name)
	}
	return names
}

// base is linear() with settings away from the defaults.
func base() Fields {
	f := linear()
	f.Timeout, f.SSEReadTimeout = dur(2*time.Minute), dur(10*time.Minute)
	f.Compat = domain.Compat{ResourceMode: domain.ResourceOmit}
	return f
}

func TestUpdateFields(t *testing.T) {
	t.Parallel()
	with := func(edit func(f *Fields)) Fields {
		f := Fields{}
		edit(&f)
		return f
	}
	tests := []struct {
		name   string
		fields Fields
		paths  []string
		check  func(t *testing.T, v *View, d *vault.Provider)
	}{
		{"display name, trimmed", with(func(f *Fields) { f.DisplayName = "  Linear 2 " }), []string{PathDisplayName},
			func(t *testing.T, v *View, _ *vault.Provider) { eq(t, "display name", v.DisplayName, "Linear 2") }},
		{"own display name in another case", with(func(f *Fields) { f.DisplayName = "LINEAR" }), []string{PathDisplayName},
			func(t *testing.T, v *View, _ *vault.Provider) { eq(t, "display name", v.DisplayName, "LINEAR") }},
		{"server identifier", with(func(f *Fields) { f.ServerIdentifier = "linear-2" }), []string{PathServerIdentifier},
			func(t *testing.T, v *View, _ *vault.Provider) {
				eq(t, "server identifier", v.ServerIdentifier, "linear-2")
			}},
		{"icon cleared", Fields{}, []string{PathIcon},
			func(t *testing.T, v *View, _ *vault.Provider) { eq(t, "icon", v.Icon, "") }},
		{"timeout", with(func(f *Fields) { f.Timeout = dur(90 * time.Second) }), []string{PathTimeout},
			func(t *testing.T, v *View, _ *vault.Provider) {
				eq(t, "timeouts", fmt.Sprint(v.Timeout, v.SSEReadTimeout), "1m30s 10m0s")
			}},
		{"timeout back to the default", Fields{}, []string{PathTimeout, PathSSEReadTimeout},
			func(t *testing.T, v *View, _ *vault.Provider) {
				eq(t, "timeouts", fmt.Sprint(v.Timeout, v.SSEReadTimeout), "30s 5m0s")
			}},
		{"sse read timeout", with(func(f *Fields) { f.SSEReadTimeout = dur(time.Hour) }), []string{PathSSEReadTimeout},
			func(t *testing.T, v *View, _ *vault.Provider) { eq(t, "sse read timeout", v.SSEReadTimeout, time.Hour) }},
		{"headers replaced", with(func(f *Fields) { f.Headers = map[string]string{"x-new": "v"} }), []string{PathHeaders},
			func(t *testing.T, v *View, d *vault.Provider) {
				eq(t, "headers", fmt.Sprint(headerNames(v), d.Headers), "[X-New] map[X-New:v]")
			}},
		{"headers cleared", Fields{}, []string{PathHeaders},
			func(t *testing.T, v *View, d *vault.Provider) {
				eq(t, "headers", fmt.Sprint(headerNames(v), d.Headers, d.Row.Headers == nil), "[] map[] true")
			}},
		{"client replaced", with(func(f *Fields) { f.OAuthClient = OAuthClient{ClientID: "c2", Scopes: []string{"a"}} }), []string{PathOAuthClient},
			func(t *testing.T, v *View, d *vault.Provider) {
				eq(t, "client", clientString(v.OAuthClient), "c2/false/[a]")
				eq(t, "stored secret", d.Row.ClientSecret == nil, true)
			}},
		{"client cleared", Fields{}, []string{PathOAuthClient},
			func(t *testing.T, v *View, _ *vault.Provider) { eq(t, "client", clientString(v.OAuthClient), "none") }},
		{"same client id keeps the secret", with(func(f *Fields) { f.OAuthClient.ClientID = "client-1" }), []string{PathOAuthClientID},
			func(t *testing.T, v *View, d *vault.Provider) {
				eq(t, "client", clientString(v.OAuthClient)+" "+d.ClientSecret.Reveal(), "client-1/true/[read] client-secret")
			}},
		{"client secret", with(func(f *Fields) { f.OAuthClient.ClientSecret = "new-secret" }), []string{PathOAuthClientSecret},
			func(t *testing.T, v *View, d *vault.Provider) {
				eq(t, "client", clientString(v.OAuthClient)+" "+d.ClientSecret.Reveal(), "client-1/true/[read] new-secret")
			}},
		{"client secret cleared", Fields{}, []string{PathOAuthClientSecret},
			func(t *testing.T, v *View, _ *vault.Provider) {
				eq(t, "client", clientString(v.OAuthClient), "client-1/false/[read]")
			}},
		{"client scopes", with(func(f *Fields) { f.OAuthClient.Scopes = []string{"x", "y"} }), []string{PathOAuthClientScopes},
			func(t *testing.T, v *View, _ *vault.Provider) {
				eq(t, "client", clientString(v.OAuthClient), "client-1/true/[x y]")
			}},
		{"compatibility", with(func(f *Fields) {
			f.Compat = domain.Compat{ResourceMode: domain.ResourceOverride, ResourceOverride: "https://api.example.com"}
		}), []string{PathCompatibility},
			func(t *testing.T, v *View, d *vault.Provider) {
				eq(t, "resource", d.ResourceParam(), "https://api.example.com")
			}},
		{"same server url spelled differently", with(func(f *Fields) { f.ServerURL = "HTTPS://MCP.LINEAR.APP:443/mcp/?key=url-secret" }),
			[]string{PathServerURL},
			func(t *testing.T, v *View, d *vault.Provider) {
				eq(t, "url", v.MaskedServerURL+" "+d.URL.String(), "https://mcp.linear.app/****** https://MCP.LINEAR.APP:443/mcp/?key=url-secret")
				eq(t, "headers and client", fmt.Sprint(headerNames(v))+" "+clientString(v.OAuthClient), "[X-Api-Key X-Empty] client-1/true/[read]")
			}},
		{"fields outside the mask are ignored", with(func(f *Fields) { f.Icon = "x" }), []string{PathIcon},
			func(t *testing.T, v *View, _ *vault.Provider) {
				eq(t, "name and icon", v.DisplayName+" "+v.Icon, "Linear x")
			}},
		{"several paths", with(func(f *Fields) { f.DisplayName, f.Icon = "L", "i" }), []string{PathDisplayName, PathIcon},
			func(t *testing.T, v *View, _ *vault.Provider) {
				eq(t, "name and icon", v.DisplayName+" "+v.Icon, "L i")
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.create(t, "t1", "linear", base())
			e.authorize(t, "t1", "linear")
			ctx := context.Background()

			v, err := e.svc.Update(ctx, UpdateInput{Tenant: "t1", ID: "linear", Etag: `"v1"`, Fields: tt.fields, Paths: tt.paths})
			if err != nil {
				t.Fatalf("Update: %v", err)
			}
			if got, err := e.svc.Get(ctx, "t1", "linear"); err != nil || !reflect.DeepEqual(got, v) {
				t.Errorf("Get = %+v, %v\nwant the view Update returned %+v", got, err, v)
			}
			d, err := vault.OpenProvider(e.keys, e.row(t, "t1", "linear"))
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, v, d)
			if v.Etag != `"v2"` || v.Status != domain.StatusAuthorized {
				t.Errorf("etag %s, status %v; want \"v2\" and the grant kept", v.Etag, v.Status)
			}
			if g, r, tl := e.held("t1", "linear"); !g || !r || !tl || len(e.revoker.revocations()) != 0 {
				t.Errorf("grant %v, registration %v, tools %v, revocations %v: want all kept", g, r, tl, e.revoker.revocations())
			}
			if n, m := e.store.Calls("UpdateProvider"), e.store.Calls("UpdateProviderResettingCredentials"); n != 1 || m != 0 {
				t.Errorf("UpdateProvider %d, UpdateProviderResettingCredentials %d calls; want 1 and 0", n, m)
			}
			updated := e.eventsOf(domain.EventProviderUpdated)
			wantDetails := fmt.Sprintf(`{"fields":%q}`, strings.Join(tt.paths, ","))
			if len(updated) != 1 || updated[0].Details != wantDetails || len(e.eventsOf(domain.EventCredentialsReset)) != 0 {
				t.Errorf("audit = %+v, want one update with %s", e.store.Events(), wantDetails)
			}
		})
	}
}

func eq[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

// TestUpdateURLChange checks that a new server URL drops what belonged to
// the old server (grant, registrations, tools, and headers and client
// unless the request sets them), revoking the grant there first.
func TestUpdateURLChange(t *testing.T) {
	t.Parallel()
	const newURL = "https://other.example.com/mcp"
	tests := []struct {
		name        string
		fields      Fields
		paths       []string
		noRevoker   bool
		confirm     bool
		wantHeaders string
		wantClient  string
		wantSecret  string
		// wantDropped is the "dropped" detail of both audit events.
		wantDropped string
	}{
		{name: "url only", paths: []string{PathServerURL}, confirm: true,
			wantHeaders: "[]", wantClient: "/false/[read]", wantDropped: "headers,oauth_client.client_id,oauth_client.client_secret"},
		{name: "with headers and client",
			fields: Fields{Headers: map[string]string{"X-New": "v"}, OAuthClient: OAuthClient{ClientID: "new-client", ClientSecret: "new-secret"}},
			paths:  []string{PathServerURL, PathHeaders, PathOAuthClient}, confirm: true,
			wantHeaders: "[X-New]", wantClient: "new-client/true/[]", wantSecret: "new-secret"},
		{name: "with client id", fields: Fields{OAuthClient: OAuthClient{ClientID: "new-client"}},
			paths: []string{PathServerURL, PathOAuthClientID}, confirm: true,
			wantHeaders: "[]", wantClient: "new-client/false/[read]", wantDropped: "headers,oauth_client.client_secret"},
		{name: "with the same client id", fields: Fields{OAuthClient: OAuthClient{ClientID: "client-1"}},
			paths: []string{PathServerURL, PathOAuthClientID}, confirm: true,
			wantHeaders: "[]", wantClient: "client-1/true/[read]", wantSecret: "client-secret", wantDropped: "headers"},
		{name: "with client secret", fields: Fields{OAuthClient: OAuthClient{ClientSecret: "new-secret"}},
			paths: []string{PathServerURL, PathOAuthClientSecret}, confirm: true,
			wantHeaders: "[]", wantClient: "client-1/true/[read]", wantSecret: "new-secret", wantDropped: "headers"},
		{name: "with headers", fields: Fields{Headers: map[string]string{"X-New": "v"}},
			paths: []string{PathServerURL, PathHeaders}, confirm: true,
			wantHeaders: "[X-New]", wantClient: "/false/[read]", wantDropped: "oauth_client.client_id,oauth_client.client_secret"},
		{name: "server did not confirm the revocation", paths: []string{PathServerURL},
			wantHeaders: "[]", wantClient: "/false/[read]", wantDropped: "headers,oauth_client.client_id,oauth_client.client_secret"},
		{name: "no revoker", paths: []string{PathServerURL}, noRevoker: true,
			wantHeaders: "[]", wantClient: "/false/[read]", wantDropped: "headers,oauth_client.client_id,oauth_client.client_secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, dropIf(tt.noRevoker, noRevoker))
			e.revoker.confirm = tt.confirm
			e.create(t, "t1", "linear", linear())
			e.authorize(t, "t1", "linear")
			ctx := context.Background()
			if v, _ := e.svc.Get(ctx, "t1", "linear"); v.Status != domain.StatusAuthorized {
				t.Fatalf("status before the update = %v", v.Status)
			}

			f := tt.fields
			f.ServerURL = newURL
			v, err := e.svc.Update(ctx, UpdateInput{Tenant: "t1", ID: "linear", Fields: f, Paths: tt.paths})
			if err != nil {
				t.Fatalf("Update: %v", err)
			}
			if got, _ := e.svc.Get(ctx, "t1", "linear"); !reflect.DeepEqual(got, v) {
				t.Errorf("Get = %+v\nwant the view Update returned %+v", got, v)
			}
			eq(t, "status", v.Status, domain.StatusUnauthorized)
			eq(t, "etag", v.Etag, `"v2"`)
			eq(t, "headers", fmt.Sprint(headerNames(v)), tt.wantHeaders)
			eq(t, "client", clientString(v.OAuthClient), tt.wantClient)
			row := e.row(t, "t1", "linear")
			d, err := vault.OpenProvider(e.keys, row)
			if err != nil {
				t.Fatal(err)
			}
			eq(t, "stored url", d.URL.String(), newURL)
			eq(t, "stored client secret", d.ClientSecret.Reveal(), tt.wantSecret)
			if tt.wantHeaders == "[]" && row.Headers != nil {
				t.Errorf("headers column still holds %x", row.Headers)
			}
			if g, r, tl := e.held("t1", "linear"); g || r || tl {
				t.Errorf("grant %v, registration %v, tools %v kept for the old server", g, r, tl)
			}
			if n := e.store.Calls("UpdateProviderResettingCredentials"); n != 1 || e.store.Calls("UpdateProvider") != 0 {
				t.Errorf("UpdateProviderResettingCredentials called %d times", n)
			}
			if want := []revocation{{"t1", "linear", true}}; !tt.noRevoker && !reflect.DeepEqual(e.revoker.revocations(), want) {
				t.Errorf("revocations = %+v, want %+v (while the grant was held)", e.revoker.revocations(), want)
			}
			reset, updated := e.eventsOf(domain.EventCredentialsReset), e.eventsOf(domain.EventProviderUpdated)
			dropped := droppedDetail(tt.wantDropped)
			// The reset commits with the update, before the old server is
			// asked to revoke: its answer is not part of the event.
			wantReset := "{" + strings.TrimSuffix(dropped, ",") + "}"
			wantUpdated := fmt.Sprintf(`{%s"fields":%q}`, dropped, strings.Join(tt.paths, ","))
			if len(reset) != 1 || reset[0].Reason != domain.ReasonServerURLChanged || reset[0].Details != wantReset ||
				len(updated) != 1 || updated[0].Details != wantUpdated {
				t.Errorf("audit = %+v, want an update with %s and a reset with %s", e.store.Events(), wantUpdated, wantReset)
			}
		})
	}
}

// droppedDetail is the "dropped" entry of an audit event's JSON details
// (which lead with it, in key order), or "" when nothing was dropped.
func droppedDetail(paths string) string {
	if paths == "" {
		return ""
	}
	return fmt.Sprintf(`"dropped":%q,`, paths)
}

// TestUpdateClientIDDropsSecret checks that a new client id is never paired
// with the previous client's secret: the stored secret is dropped (and the
// drop audited) unless the same request sets a secret.
func TestUpdateClientIDDropsSecret(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		client      OAuthClient
		paths       []string
		wantClient  string
		wantSecret  string
		wantDropped string
	}{
		{name: "new id alone", client: OAuthClient{ClientID: "client-2"}, paths: []string{PathOAuthClientID},
			wantClient: "client-2/false/[read]", wantDropped: "oauth_client.client_secret"},
		{name: "new id alone, a secret in the request but not in the mask",
			client: OAuthClient{ClientID: "client-2", ClientSecret: "ignored"}, paths: []string{PathOAuthClientID},
			wantClient: "client-2/false/[read]", wantDropped: "oauth_client.client_secret"},
		{name: "new id and its secret", client: OAuthClient{ClientID: "client-2", ClientSecret: "secret-2"},
			paths: []string{PathOAuthClientID, PathOAuthClientSecret}, wantClient: "client-2/true/[read]", wantSecret: "secret-2"},
		{name: "new id and an explicitly empty secret", client: OAuthClient{ClientID: "client-2"},
			paths: []string{PathOAuthClientID, PathOAuthClientSecret}, wantClient: "client-2/false/[read]"},
		{name: "whole client", client: OAuthClient{ClientID: "client-2", ClientSecret: "secret-2", Scopes: []string{"w"}},
			paths: []string{PathOAuthClient}, wantClient: "client-2/true/[w]", wantSecret: "secret-2"},
		{name: "same id", client: OAuthClient{ClientID: "client-1"}, paths: []string{PathOAuthClientID},
			wantClient: "client-1/true/[read]", wantSecret: "client-secret"},
		{name: "id and secret cleared together", paths: []string{PathOAuthClientID, PathOAuthClientSecret},
			wantClient: "/false/[read]"},
		{name: "scopes only", client: OAuthClient{Scopes: []string{"x"}}, paths: []string{PathOAuthClientScopes},
			wantClient: "client-1/true/[x]", wantSecret: "client-secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.create(t, "t1", "linear", linear())
			v, err := e.svc.Update(context.Background(), UpdateInput{Tenant: "t1", ID: "linear", Fields: Fields{OAuthClient: tt.client}, Paths: tt.paths})
			if err != nil {
				t.Fatalf("Update: %v", err)
			}
			eq(t, "client", clientString(v.OAuthClient), tt.wantClient)
			d, err := vault.OpenProvider(e.keys, e.row(t, "t1", "linear"))
			if err != nil {
				t.Fatal(err)
			}
			eq(t, "stored secret", d.ClientSecret.Reveal(), tt.wantSecret)
			eq(t, "headers kept", fmt.Sprint(headerNames(v)), "[X-Api-Key X-Empty]")
			want := fmt.Sprintf(`{%s"fields":%q}`, droppedDetail(tt.wantDropped), strings.Join(tt.paths, ","))
			if ev := e.eventsOf(domain.EventProviderUpdated); len(ev) != 1 || ev[0].Details != want {
				t.Errorf("provider.updated events %+v, want details %s", ev, want)
			}
			if n := len(e.eventsOf(domain.EventCredentialsReset)); n != 0 {
				t.Errorf("%d credentials.reset events for a client change", n)
			}
		})
	}
}

// updatePath is the update path that validates field f.
func updatePath(field string) string {
	p := strings.TrimPrefix(field, "provider.")
	if i := strings.IndexAny(p, ".["); i >= 0 {
		p = p[:i]
	}
	return p
}

// TestUpdateInvalid checks that a bad update is refused on its exact field
// and changes nothing.
func TestUpdateInvalid(t *testing.T) {
	t.Parallel()
	type tcase struct {
		name   string
		create Fields
		mutate func(f *Fields)
		paths  []string
		field  string
	}
	cases := []tcase{
		{name: "no paths", field: "update_mask"},
		{name: "unknown path", paths: []string{"tenant"}, field: "update_mask"},
		{name: "unknown sub-path", paths: []string{PathDisplayName, "oauth_client.bogus"}, field: "update_mask"},
		{name: "secret for a provider without client id", create: named("linear"),
			mutate: func(f *Fields) { f.OAuthClient = OAuthClient{ClientSecret: "s"} },
			paths:  []string{PathOAuthClientSecret}, field: "provider.oauth_client.client_id"},
		{name: "client id removed while a secret is stored", mutate: func(f *Fields) { f.OAuthClient.ClientID = "" },
			paths: []string{PathOAuthClientID}, field: "provider.oauth_client.client_id"},
		{name: "new url and new secret without client id", create: named("linear"),
			mutate: func(f *Fields) {
				f.ServerURL, f.OAuthClient = "https://new.example.com", OAuthClient{ClientSecret: "s"}
			},
			paths: []string{PathServerURL, PathOAuthClientSecret}, field: "provider.oauth_client.client_id"},
	}
	for _, c := range invalidCases {
		cases = append(cases, tcase{name: c.name, mutate: c.mutate, paths: []string{updatePath(c.field)}, field: c.field})
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			create := tt.create
			if create.DisplayName == "" {
				create = linear()
			}
			e.create(t, "t1", "linear", create)
			e.authorize(t, "t1", "linear")
			before := e.row(t, "t1", "linear")
			f := linear()
			if tt.mutate != nil {
				tt.mutate(&f)
			}
			_, err := e.svc.Update(context.Background(), UpdateInput{Tenant: "t1", ID: "linear", Fields: f, Paths: tt.paths})
			wantErr(t, err, apperr.KindInvalidArgument, tt.field)
			assertUnchanged(t, e, before)
		})
	}
}

// assertUnchanged checks that a refused update wrote, revoked and audited
// nothing.
func assertUnchanged(t *testing.T, e *env, before any) {
	t.Helper()
	if after := e.row(t, "t1", "linear"); !reflect.DeepEqual(after, before) {
		t.Errorf("stored row changed:\n%+v\nwant %+v", after, before)
	}
	if n := e.store.Calls("UpdateProviderResettingCredentials"); n != 0 || len(e.revoker.revocations()) != 0 {
		t.Errorf("%d resets and revocations %v for a refused update", n, e.revoker.revocations())
	}
	if g, _, _ := e.held("t1", "linear"); !g || len(e.eventsOf(domain.EventProviderUpdated)) != 0 {
		t.Errorf("grant held %v, audit %+v after a refused update", g, e.store.Events())
	}
}

// TestUpdateRefused covers the refusals after validation: etag, concurrent
// writers, uniqueness, a missing provider and store failures.
func TestUpdateRefused(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		etag    string
		fields  Fields
		paths   []string
		failOn  string
		failErr error
		kind    apperr.Kind
		field   string
	}{
		{name: "stale etag", etag: `"v7"`, fields: named("x"), paths: []string{PathDisplayName}, kind: apperr.KindAborted},
		{name: "changed concurrently", fields: named("x"), paths: []string{PathDisplayName}, failOn: "UpdateProvider",
			failErr: apperr.Aborted("provider was changed concurrently; re-read and retry"), kind: apperr.KindAborted},
		{name: "display name of another provider", fields: named("other"), paths: []string{PathDisplayName},
			kind: apperr.KindAlreadyExists, field: "provider.display_name"},
		{name: "server identifier of another provider", fields: named("other"), paths: []string{PathServerIdentifier},
			kind: apperr.KindAlreadyExists, field: "provider.server_identifier"},
		{name: "display name of another provider in another case", fields: named("OTHER"), paths: []string{PathDisplayName},
			kind: apperr.KindAlreadyExists, field: "provider.display_name"},
		{name: "server identifier of another provider in another case", fields: named("Other"), paths: []string{PathServerIdentifier},
			kind: apperr.KindAlreadyExists, field: "provider.server_identifier"},
		{name: "server url of another provider", fields: Fields{ServerURL: "HTTPS://other.example.com/mcp/"}, paths: []string{PathServerURL},
			kind: apperr.KindAlreadyExists, field: "provider.server_url"},
		{name: "url lookup fails", fields: named("x"), paths: []string{PathServerURL}, failOn: "FindProviderByURLHash",
			failErr: apperr.Unavailable(servicetest.ErrInjected, "database unreachable"), kind: apperr.KindUnavailable},
		{name: "read fails", fields: named("x"), paths: []string{PathIcon}, failOn: "GetProvider",
			failErr: apperr.Unavailable(servicetest.ErrInjected, "database unreachable"), kind: apperr.KindUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.create(t, "t1", "linear", linear())
			e.create(t, "t1", "other", named("other"))
			e.authorize(t, "t1", "linear")
			before := e.row(t, "t1", "linear")
			if tt.failOn != "" {
				e.store.FailOn(tt.failOn, tt.failErr)
			}
			_, err := e.svc.Update(context.Background(), UpdateInput{Tenant: "t1", ID: "linear", Etag: tt.etag, Fields: tt.fields, Paths: tt.paths})
			wantErr(t, err, tt.kind, tt.field)
			e.store.FailOn(tt.failOn, nil)
			assertUnchanged(t, e, before)
		})
	}
	t.Run("not found", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		_, err := e.svc.Update(context.Background(), UpdateInput{Tenant: "t1", ID: "nope", Fields: named("x"), Paths: []string{PathIcon}})
		wantErr(t, err, apperr.KindNotFound, "")
	})
}

// TestUpdateReencryptsUnderNewPrimary checks that an update under a new
// primary key re-seals the fields it does not replace, so the whole row is
// under the key its key_id names and opens without the old key.
func TestUpdateReencryptsUnderNewPrimary(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		fields      Fields
		paths       []string
		wantHeaders string
		wantSecret  string
	}{
		{"display name", named("L"), []string{PathDisplayName}, "map[X-Api-Key:hdr-secret X-Empty:]", "client-secret"},
		{"headers", Fields{Headers: map[string]string{"X-New": "v"}}, []string{PathHeaders}, "map[X-New:v]", "client-secret"},
		{"client secret", Fields{OAuthClient: OAuthClient{ClientSecret: "s2"}}, []string{PathOAuthClientSecret},
			"map[X-Api-Key:hdr-secret X-Empty:]", "s2"},
		{"client", Fields{OAuthClient: OAuthClient{ClientID: "c", ClientSecret: "s3"}}, []string{PathOAuthClient},
			"map[X-Api-Key:hdr-secret X-Empty:]", "s3"},
		{"same server url", Fields{ServerURL: linear().ServerURL}, []string{PathServerURL},
			"map[X-Api-Key:hdr-secret X-Empty:]", "client-secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			spec1, spec2 := genSpec(t, 1), genSpec(t, 2)
			if _, err := e.with(t, parseKeys(t, spec1)).Create(context.Background(), CreateInput{Tenant: "t1", ID: "linear", Fields: linear()}); err != nil {
				t.Fatal(err)
			}
			rotated := parseKeys(t, spec2, spec1)
			if _, err := e.with(t, rotated).Update(context.Background(), UpdateInput{Tenant: "t1", ID: "linear", Fields: tt.fields, Paths: tt.paths}); err != nil {
				t.Fatalf("Update: %v", err)
			}
			row := e.row(t, "t1", "linear")
			if keys := ciphertextKeys(t, row); row.KeyID != 2 || !reflect.DeepEqual(keys, []uint32{2, 2, 2}) {
				t.Errorf("key_id %d, ciphertexts under keys %v; want all under 2", row.KeyID, keys)
			}
			d, err := vault.OpenProvider(parseKeys(t, spec2), row) // key 1 retired
			if err != nil {
				t.Fatalf("the row does not open without key 1: %v", err)
			}
			eq(t, "headers", fmt.Sprint(d.Headers), tt.wantHeaders)
			eq(t, "client secret", d.ClientSecret.Reveal(), tt.wantSecret)
			eq(t, "url hash", row.URLHash, rotated.Fingerprint("t1", vault.PurposeURL, []byte(validate.NormalizeURL(d.URL))))
		})
	}
}

func TestUpdateStoreFailure(t *testing.T) {
	t.Parallel()
	for method, path := range map[string]string{"UpdateProvider": PathIcon, "UpdateProviderResettingCredentials": PathServerURL} {
		t.Run(method, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.create(t, "t1", "linear", linear())
			e.store.FailOn(method, servicetest.ErrInjected)
			_, err := e.svc.Update(context.Background(), UpdateInput{Tenant: "t1", ID: "linear", Fields: named("x"), Paths: []string{path}})
			if !errors.Is(err, servicetest.ErrInjected) {
				t.Errorf("Update = %v, want the store's error", err)
			}
			if n := len(e.eventsOf(domain.EventProviderUpdated)); n != 0 {
				t.Errorf("%d updates audited after a failed write", n)
			}
		})
	}
}

// TestUpdateRefusedAfterRevoking: an update that changes the server URL
// and is then refused by the store (here a display name taken by another
// provider; equally a concurrent write bumping the version) must leave the
// provider as it was, its grant included.
func TestUpdateRefusedAfterRevoking(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.create(t, "t1", "linear", linear())
	e.create(t, "t1", "other", named("other"))
	e.authorize(t, "t1", "linear")
	before := e.row(t, "t1", "linear")
	f := named("other")
	f.ServerURL = "https://new.example.com/mcp"
	_, err := e.svc.Update(context.Background(), UpdateInput{Tenant: "t1", ID: "linear", Fields: f, Paths: []string{PathServerURL, PathDisplayName}})
	wantErr(t, err, apperr.KindAlreadyExists, "provider.display_name")
	// The store refused the reset itself: nothing was written or revoked.
	if after := e.row(t, "t1", "linear"); !reflect.DeepEqual(after, before) {
		t.Errorf("stored row changed:\n%+v\nwant %+v", after, before)
	}
	if r := e.revoker.revocations(); len(r) != 0 {
		t.Fatalf("a refused update revoked the grant: %+v", r)
	}
	if g, _, _ := e.held("t1", "linear"); !g || len(e.eventsOf(domain.EventProviderUpdated)) != 0 {
		t.Errorf("grant held %v, audit %+v after a refused update", g, e.store.Events())
	}
}

// TestExtraParamErrorIsStable: the same bad profile must be refused on the
// same field every time, as validate.Headers does for headers.
func TestExtraParamErrorIsStable(t *testing.T) {
	t.Parallel()
	c := domain.Compat{ExtraParams: map[string]string{}}
	for i := range maxExtraParams {
		c.ExtraParams[fmt.Sprintf("bad name %d", i)] = "v"
	}
	_, first := validateCompat(c)
	for range 20 {
		if _, err := validateCompat(c); err.Error() != first.Error() {
			t.Fatalf("the same profile is refused as %q, then as %q", first, err)
		}
	}
}
