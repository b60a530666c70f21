package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/repository"
)

// TestProviderCRUD walks through the README: create, get, list, update and
// delete one provider, checking the masked view at every step.
func TestProviderCRUD(t *testing.T) {
	t.Parallel()
	provEachBackend(t, func(t *testing.T, b provBackend) {
		s := provStart(t, b, Options{})
		key := s.AdminKey
		pc := s.Providers()

		created := provCreate(t, s, key, "acme", "notion", &mcpauthv1.Provider{
			DisplayName:      "Notion",
			ServerIdentifier: "notion-mcp",
			ServerUrl:        "https://mcp.notion.example/v1/mcp?workspace=secret-ws",
			Headers:          map[string]string{"x-api-key": "sk-demo-123"},
			Timeout:          provDur(30 * time.Second),
			OauthClient:      &mcpauthv1.OAuthClient{ClientId: "notion-client", ClientSecret: "notion-secret", Scopes: []string{"read", "write"}},
		})
		want := &mcpauthv1.Provider{
			Name:                "tenants/acme/providers/notion",
			DisplayName:         "Notion",
			ServerIdentifier:    "notion-mcp",
			MaskedServerUrl:     "https://mcp.notion.example/******",
			Timeout:             provDur(30 * time.Second),
			SseReadTimeout:      provDur(5 * time.Minute),
			OauthClient:         &mcpauthv1.OAuthClient{ClientId: "notion-client", ClientSecretSet: true, Scopes: []string{"read", "write"}},
			AuthorizationStatus: mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED,
			Etag:                `"v1"`,
		}
		if len(created.GetHeaderInfo()) != 1 {
			t.Fatalf("header_info = %v, want one header", created.GetHeaderInfo())
		}
		hi := created.GetHeaderInfo()[0]
		if hi.GetName() != "X-Api-Key" || !hi.GetValueSet() || len(hi.GetFingerprint()) != 8 {
			t.Fatalf("header_info = %v, want X-Api-Key set with an 8-digit fingerprint", hi)
		}
		if created.GetCreateTime() == nil || created.GetUpdateTime() == nil {
			t.Fatal("create_time/update_time missing")
		}
		if d := time.Since(created.GetCreateTime().AsTime()); d < -time.Minute || d > time.Minute {
			t.Fatalf("create_time %v is not now", created.GetCreateTime().AsTime())
		}
		if got := provWithout(created, "header_info", "create_time", "update_time"); !proto.Equal(want, got) {
			t.Fatalf("created view = %v, want %v", got, want)
		}

		got := provGet(t, s, key, "tenants/acme/providers/notion")
		if !proto.Equal(got, created) {
			t.Fatalf("GetProvider = %v, want the created view %v", got, created)
		}
		pages := provListAll(t, s, key, "acme", 0)
		if len(pages) != 1 || len(pages[0]) != 1 || !proto.Equal(pages[0][0], created) {
			t.Fatalf("ListProviders = %v, want exactly the created provider", pages)
		}

		// A provider without an id gets a random one.
		anon := provCreate(t, s, key, "acme", "", provNewProvider("anon"))
		id := strings.TrimPrefix(anon.GetName(), "tenants/acme/providers/")
		if len(id) != 20 || id[0] != 'p' {
			t.Fatalf("generated name %q, want tenants/acme/providers/p + 19 characters", anon.GetName())
		}

		upd, err := pc.UpdateProvider(Ctx(t, key), &mcpauthv1.UpdateProviderRequest{
			Provider:   &mcpauthv1.Provider{Name: "tenants/acme/providers/notion", DisplayName: "Notion (prod)"},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}},
		})
		if err != nil {
			t.Fatalf("UpdateProvider: %v", err)
		}
		want2 := proto.Clone(created).(*mcpauthv1.Provider)
		want2.DisplayName, want2.Etag = "Notion (prod)", `"v2"`
		if got := provWithout(upd.GetProvider(), "update_time"); !proto.Equal(provWithout(want2, "update_time"), got) {
			t.Fatalf("updated view = %v, want %v", got, want2)
		}
		if got := provGet(t, s, key, "tenants/acme/providers/notion"); !proto.Equal(got, upd.GetProvider()) {
			t.Fatalf("GetProvider after update = %v, want %v", got, upd.GetProvider())
		}

		// Delete drops what the provider owns.
		bg := context.Background()
		putTools(t, s.Store(), &repository.ToolList{TenantID: "acme", ProviderID: "notion", Tools: "[]"})
		del, err := pc.DeleteProvider(Ctx(t, key), &mcpauthv1.DeleteProviderRequest{Name: "tenants/acme/providers/notion"})
		if err != nil {
			t.Fatalf("DeleteProvider: %v", err)
		}
		if del.GetRevokedAtServer() {
			t.Error("revoked_at_server = true for a provider that holds no tokens")
		}
		if _, err := s.Store().GetTools(bg, domain.TenantGrant("acme", "notion")); apperr.KindOf(err) != apperr.KindNotFound {
			t.Fatalf("tool list after delete: %v, want not found", err)
		}
		_, err = pc.GetProvider(Ctx(t, key), &mcpauthv1.GetProviderRequest{Name: "tenants/acme/providers/notion"})
		provStatus(t, err, codes.NotFound)
		_, err = pc.DeleteProvider(Ctx(t, key), &mcpauthv1.DeleteProviderRequest{Name: "tenants/acme/providers/notion"})
		provStatus(t, err, codes.NotFound)
		_, err = pc.UpdateProvider(Ctx(t, key), &mcpauthv1.UpdateProviderRequest{
			Provider:   &mcpauthv1.Provider{Name: "tenants/acme/providers/notion", DisplayName: "x"},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}},
		})
		provStatus(t, err, codes.NotFound)
		pages = provListAll(t, s, key, "acme", 0)
		if len(pages) != 1 || len(pages[0]) != 1 || pages[0][0].GetName() != anon.GetName() {
			t.Fatalf("ListProviders after delete = %v, want only %s", pages, anon.GetName())
		}

		events := provAuditEvents(t, s, key, "acme")
		var notion []string
		for i := len(events) - 1; i >= 0; i-- {
			e := events[i]
			if e.GetProvider() != "tenants/acme/providers/notion" {
				continue
			}
			notion = append(notion, e.GetEventType())
			if e.GetActor() != "admin" {
				t.Errorf("event %s actor = %q, want admin", e.GetEventType(), e.GetActor())
			}
			if e.GetOutcome() != mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS || e.GetRequestId() == "" {
				t.Errorf("event %v: want a successful outcome and a request id", e)
			}
		}
		if want := []string{"provider.created", "provider.updated", "provider.deleted"}; !slices.Equal(notion, want) {
			t.Fatalf("audit events of the provider = %q, want %q", notion, want)
		}
	})
}

// TestProviderListPagination pages through 120 providers and checks page
// sizes, order, completeness and that page tokens are bound to their parent.
func TestProviderListPagination(t *testing.T) {
	t.Parallel()
	provEachBackend(t, func(t *testing.T, b provBackend) {
		s := provStart(t, b, Options{})
		key := s.AdminKey
		var want []string
		for i := range 120 {
			id := fmt.Sprintf("prov-%03d", i)
			provCreate(t, s, key, "acme", id, provNewProvider(id))
			want = append(want, "tenants/acme/providers/"+id)
		}
		for i := range 3 {
			provCreate(t, s, key, "other", fmt.Sprintf("o-%d", i), provNewProvider(fmt.Sprint("o", i)))
		}

		tests := []struct {
			pageSize int32
			sizes    []int
		}{
			{50, []int{50, 50, 20}},
			{0, []int{50, 50, 20}},
			{7, nil},
			{120, []int{120}},
			{500, []int{120}},
			{119, []int{119, 1}},
		}
		for _, tt := range tests {
			t.Run(fmt.Sprint("size", tt.pageSize), func(t *testing.T) {
				pages := provListAll(t, s, key, "acme", tt.pageSize)
				var sizes []int
				var names []string
				for _, p := range pages {
					sizes = append(sizes, len(p))
					for _, v := range p {
						names = append(names, v.GetName())
					}
				}
				if tt.sizes != nil && !slices.Equal(sizes, tt.sizes) {
					t.Errorf("page sizes = %v, want %v", sizes, tt.sizes)
				}
				if !slices.Equal(names, want) {
					t.Errorf("listed %d names (%v...), want the 120 created in id order without duplicates or gaps", len(names), names[:min(3, len(names))])
				}
			})
		}

		// A token issued for another tenant's list is refused, even to a
		// caller that may read both tenants.
		other, err := s.Providers().ListProviders(Ctx(t, key), &mcpauthv1.ListProvidersRequest{Parent: "tenants/other", PageSize: 1})
		if err != nil {
			t.Fatal(err)
		}
		if other.GetNextPageToken() == "" || len(other.GetProviders()) != 1 {
			t.Fatalf("other tenant's first page = %v, want one provider and a token", other)
		}
		for _, p := range other.GetProviders() {
			if !strings.HasPrefix(p.GetName(), "tenants/other/") {
				t.Fatalf("tenant other listed %s", p.GetName())
			}
		}
		_, err = s.Providers().ListProviders(Ctx(t, key), &mcpauthv1.ListProvidersRequest{
			Parent: "tenants/acme", PageSize: 1, PageToken: other.GetNextPageToken()})
		provWantField(t, err, codes.InvalidArgument, "page_token")
	})
}

// TestProviderUpdateMask checks that only the fields named in update_mask
// change: secrets not named keep their stored value (proved by decrypting
// the row) and are never echoed back.
func TestProviderUpdateMask(t *testing.T) {
	t.Parallel()
	provEachBackend(t, func(t *testing.T, b provBackend) {
		s := provStart(t, b, Options{})
		key := s.AdminKey
		tests := []struct {
			name  string
			paths []string
			in    *mcpauthv1.Provider
			// check compares the view and the stored row before and after.
			check func(t *testing.T, before, after *mcpauthv1.Provider, row *repository.Provider)
		}{
			{
				name:  "display name only, other fields in the request ignored",
				paths: []string{"display_name"},
				in: &mcpauthv1.Provider{DisplayName: "Renamed", ServerIdentifier: "ignored-id", ServerUrl: "https://ignored.example.com/",
					Headers: map[string]string{"X-Other": "ignored"}, Timeout: provDur(2 * time.Second),
					OauthClient: &mcpauthv1.OAuthClient{ClientId: "ignored", ClientSecret: "ignored"}},
				check: func(t *testing.T, before, after *mcpauthv1.Provider, row *repository.Provider) {
					want := proto.Clone(before).(*mcpauthv1.Provider)
					want.DisplayName = "Renamed"
					provSameExceptVersion(t, want, after)
				},
			},
			{
				name:  "headers replaced",
				paths: []string{"headers"},
				in:    &mcpauthv1.Provider{Headers: map[string]string{"X-New": "new-value"}},
				check: func(t *testing.T, before, after *mcpauthv1.Provider, row *repository.Provider) {
					if got := provHeaderNames(after); !slices.Equal(got, []string{"X-New"}) {
						t.Fatalf("header names = %q, want [X-New]", got)
					}
					if got := provOpen(t, s, row, provFieldHeaders, row.Headers); got != `{"X-New":"new-value"}` {
						t.Fatalf("stored headers = %s", got)
					}
					want := proto.Clone(before).(*mcpauthv1.Provider)
					want.HeaderInfo = after.GetHeaderInfo()
					provSameExceptVersion(t, want, after)
				},
			},
			{
				name:  "headers cleared",
				paths: []string{"headers"},
				in:    &mcpauthv1.Provider{},
				check: func(t *testing.T, before, after *mcpauthv1.Provider, row *repository.Provider) {
					if len(after.GetHeaderInfo()) != 0 || row.Headers != nil {
						t.Fatalf("headers not cleared: view %v, row %x", after.GetHeaderInfo(), row.Headers)
					}
				},
			},
			{
				// The stored secret belongs to the previous client: a new
				// id is never paired with it.
				name:  "client id only drops the previous client's secret",
				paths: []string{"oauth_client.client_id"},
				in:    &mcpauthv1.Provider{OauthClient: &mcpauthv1.OAuthClient{ClientId: "client-2", ClientSecret: "ignored", Scopes: []string{"ignored"}}},
				check: func(t *testing.T, before, after *mcpauthv1.Provider, row *repository.Provider) {
					want := proto.Clone(before).(*mcpauthv1.Provider)
					want.OauthClient.ClientId, want.OauthClient.ClientSecretSet = "client-2", false
					provSameExceptVersion(t, want, after)
					if row.ClientSecret != nil {
						t.Fatalf("client_secret column still holds %x", row.ClientSecret)
					}
				},
			},
			{
				name:  "client id with its secret",
				paths: []string{"oauth_client.client_id", "oauth_client.client_secret"},
				in:    &mcpauthv1.Provider{OauthClient: &mcpauthv1.OAuthClient{ClientId: "client-3", ClientSecret: "client-secret-3"}},
				check: func(t *testing.T, before, after *mcpauthv1.Provider, row *repository.Provider) {
					if c := after.GetOauthClient(); c.GetClientId() != "client-3" || !c.GetClientSecretSet() {
						t.Fatalf("oauth_client = %v", c)
					}
					if got := provOpen(t, s, row, provFieldClientSecret, row.ClientSecret); got != "client-secret-3" {
						t.Fatalf("stored client secret = %q, want client-secret-3", got)
					}
				},
			},
			{
				name:  "client secret only keeps the id",
				paths: []string{"oauth_client.client_secret"},
				in:    &mcpauthv1.Provider{OauthClient: &mcpauthv1.OAuthClient{ClientSecret: "client-secret-2"}},
				check: func(t *testing.T, before, after *mcpauthv1.Provider, row *repository.Provider) {
					provSameExceptVersion(t, before, after)
					if got := provOpen(t, s, row, provFieldClientSecret, row.ClientSecret); got != "client-secret-2" {
						t.Fatalf("stored client secret = %q, want client-secret-2", got)
					}
				},
			},
			{
				name:  "whole oauth client",
				paths: []string{"oauth_client"},
				in:    &mcpauthv1.Provider{OauthClient: &mcpauthv1.OAuthClient{ClientId: "client-3", Scopes: []string{"a"}}},
				check: func(t *testing.T, before, after *mcpauthv1.Provider, row *repository.Provider) {
					want := &mcpauthv1.OAuthClient{ClientId: "client-3", Scopes: []string{"a"}}
					if !proto.Equal(after.GetOauthClient(), want) || row.ClientSecret != nil {
						t.Fatalf("oauth_client = %v (stored secret %x), want %v and no secret", after.GetOauthClient(), row.ClientSecret, want)
					}
				},
			},
			{
				name:  "timeouts",
				paths: []string{"timeout", "sse_read_timeout"},
				in:    &mcpauthv1.Provider{Timeout: provDur(10 * time.Minute), SseReadTimeout: provDur(time.Hour), DisplayName: "ignored"},
				check: func(t *testing.T, before, after *mcpauthv1.Provider, row *repository.Provider) {
					want := proto.Clone(before).(*mcpauthv1.Provider)
					want.Timeout, want.SseReadTimeout = provDur(10*time.Minute), provDur(time.Hour)
					provSameExceptVersion(t, want, after)
				},
			},
			{
				name:  "timeout unset means the default",
				paths: []string{"timeout"},
				in:    &mcpauthv1.Provider{},
				check: func(t *testing.T, before, after *mcpauthv1.Provider, row *repository.Provider) {
					if after.GetTimeout().AsDuration() != 30*time.Second {
						t.Fatalf("timeout = %v, want the 30s default", after.GetTimeout().AsDuration())
					}
				},
			},
			{
				name:  "identifier and icon",
				paths: []string{"server_identifier", "icon"},
				in:    &mcpauthv1.Provider{ServerIdentifier: "new-sid", Icon: "🚀"},
				check: func(t *testing.T, before, after *mcpauthv1.Provider, row *repository.Provider) {
					want := proto.Clone(before).(*mcpauthv1.Provider)
					want.ServerIdentifier, want.Icon = "new-sid", "🚀"
					provSameExceptVersion(t, want, after)
				},
			},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				id := fmt.Sprintf("mask-%d", i)
				name := "tenants/acme/providers/" + id
				before := provCreate(t, s, key, "acme", id, &mcpauthv1.Provider{
					DisplayName: "Mask " + id, ServerIdentifier: id,
					ServerUrl:   "https://" + id + ".example.com/mcp?k=url-secret",
					Headers:     map[string]string{"X-Api-Key": "header-secret-1"},
					OauthClient: &mcpauthv1.OAuthClient{ClientId: "client-1", ClientSecret: "client-secret-1", Scopes: []string{"s1"}},
				})
				in := proto.Clone(tt.in).(*mcpauthv1.Provider)
				in.Name, in.Etag = name, before.GetEtag()
				resp, err := s.Providers().UpdateProvider(Ctx(t, key), &mcpauthv1.UpdateProviderRequest{
					Provider: in, UpdateMask: &fieldmaskpb.FieldMask{Paths: tt.paths}})
				if err != nil {
					t.Fatalf("UpdateProvider: %v", err)
				}
				after := resp.GetProvider()
				if after.GetEtag() == before.GetEtag() {
					t.Fatalf("etag did not change: %s", after.GetEtag())
				}
				if got := provGet(t, s, key, name); !proto.Equal(got, after) {
					t.Fatalf("GetProvider = %v, want the update response %v", got, after)
				}
				js := provJSON(t, after)
				for _, secret := range []string{"url-secret", "header-secret", "client-secret", "new-value"} {
					if strings.Contains(js, secret) {
						t.Fatalf("update response echoes %q: %s", secret, js)
					}
				}
				row := provRow(t, s, "acme", id)
				// Fields outside the mask keep their stored values.
				if !slices.Contains(tt.paths, "headers") {
					if got := provOpen(t, s, row, provFieldHeaders, row.Headers); got != `{"X-Api-Key":"header-secret-1"}` {
						t.Fatalf("stored headers changed to %s", got)
					}
				}
				if got := provOpen(t, s, row, provFieldServerURL, row.ServerURL); got != "https://"+id+".example.com/mcp?k=url-secret" {
					t.Fatalf("stored URL changed to %s", got)
				}
				tt.check(t, before, after, row)
			})
		}
	})
}

// provSameExceptVersion compares two views ignoring what every update
// changes (etag and update time).
func provSameExceptVersion(tb testing.TB, want, got *mcpauthv1.Provider) {
	tb.Helper()
	w, g := provWithout(want, "etag", "update_time"), provWithout(got, "etag", "update_time")
	if !proto.Equal(w, g) {
		tb.Fatalf("view = %v, want %v", g, w)
	}
}

// TestProviderEtag checks optimistic locking on update and delete.
func TestProviderEtag(t *testing.T) {
	t.Parallel()
	provEachBackend(t, func(t *testing.T, b provBackend) {
		s := provStart(t, b, Options{})
		key := s.AdminKey
		pc := s.Providers()
		v1 := provCreate(t, s, key, "acme", "etag", provNewProvider("etag"))
		upd := func(etag, display string) error {
			_, err := pc.UpdateProvider(Ctx(t, key), &mcpauthv1.UpdateProviderRequest{
				Provider:   &mcpauthv1.Provider{Name: v1.GetName(), DisplayName: display, Etag: etag},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}})
			return err
		}
		if err := upd(v1.GetEtag(), "First"); err != nil {
			t.Fatalf("update with the current etag: %v", err)
		}
		v2 := provGet(t, s, key, v1.GetName())
		st := provStatus(t, upd(v1.GetEtag(), "Stale"), codes.Aborted)
		if provErrorReason(st) != "ABORTED" {
			t.Errorf("reason = %q, want ABORTED", provErrorReason(st))
		}
		provStatus(t, upd(`"v999"`, "Made up"), codes.Aborted)
		if got := provGet(t, s, key, v1.GetName()); !proto.Equal(got, v2) {
			t.Fatalf("a refused update changed the provider: %v, want %v", got, v2)
		}
		// No etag: last writer wins.
		if err := upd("", "Second"); err != nil {
			t.Fatalf("update without etag: %v", err)
		}
		_, err := pc.DeleteProvider(Ctx(t, key), &mcpauthv1.DeleteProviderRequest{Name: v1.GetName(), Etag: v2.GetEtag()})
		provStatus(t, err, codes.Aborted)
		v3 := provGet(t, s, key, v1.GetName())
		if v3.GetDisplayName() != "Second" {
			t.Fatalf("display name = %q, want Second", v3.GetDisplayName())
		}
		if _, err := pc.DeleteProvider(Ctx(t, key), &mcpauthv1.DeleteProviderRequest{Name: v1.GetName(), Etag: v3.GetEtag()}); err != nil {
			t.Fatalf("delete with the current etag: %v", err)
		}
		_, err = pc.GetProvider(Ctx(t, key), &mcpauthv1.GetProviderRequest{Name: v1.GetName()})
		provStatus(t, err, codes.NotFound)
	})
}

// TestProviderURLChange checks that a new server URL drops everything tied
// to the old server (headers, client, tokens, tool list, status) unless the
// same request re-specifies it, and that a URL equal after normalisation is
// not a change.
func TestProviderURLChange(t *testing.T) {
	t.Parallel()
	provEachBackend(t, func(t *testing.T, b provBackend) {
		s := provStart(t, b, Options{})
		key := s.AdminKey
		ctx := context.Background()
		st := s.Store()

		tests := []struct {
			name        string
			newURL      string
			paths       []string
			in          *mcpauthv1.Provider
			wantReset   bool
			wantHeaders []string
			wantClient  *mcpauthv1.OAuthClient
			// wantDropped is the reset event's "dropped" detail.
			wantDropped string
		}{
			{
				name: "new url only", newURL: "https://other-%d.example.com/mcp", paths: []string{"server_url"},
				wantReset: true, wantClient: &mcpauthv1.OAuthClient{Scopes: []string{"s1"}},
				wantDropped: "headers,oauth_client.client_id,oauth_client.client_secret",
			},
			{
				name: "new url with headers and client", newURL: "https://other-%d.example.com/mcp",
				paths: []string{"server_url", "headers", "oauth_client"},
				in: &mcpauthv1.Provider{Headers: map[string]string{"X-New": "v"},
					OauthClient: &mcpauthv1.OAuthClient{ClientId: "new-client", ClientSecret: "new-secret"}},
				wantReset: true, wantHeaders: []string{"X-New"},
				wantClient: &mcpauthv1.OAuthClient{ClientId: "new-client", ClientSecretSet: true},
			},
			{
				name: "new url with client id only", newURL: "https://other-%d.example.com/mcp",
				paths:     []string{"server_url", "oauth_client.client_id"},
				in:        &mcpauthv1.Provider{OauthClient: &mcpauthv1.OAuthClient{ClientId: "new-client"}},
				wantReset: true, wantClient: &mcpauthv1.OAuthClient{ClientId: "new-client", Scopes: []string{"s1"}},
				wantDropped: "headers,oauth_client.client_secret",
			},
			{
				name: "same url after normalisation", newURL: "HTTPS://URL-%d.Example.com:443/mcp/", paths: []string{"server_url"},
				wantReset: false, wantHeaders: []string{"X-Api-Key"},
				wantClient: &mcpauthv1.OAuthClient{ClientId: "client-1", ClientSecretSet: true, Scopes: []string{"s1"}},
			},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				id := fmt.Sprintf("url-%d", i)
				name := "tenants/acme/providers/" + id
				provCreate(t, s, key, "acme", id, &mcpauthv1.Provider{
					DisplayName: id, ServerIdentifier: id, ServerUrl: fmt.Sprintf("https://url-%d.example.com/mcp", i),
					Headers:     map[string]string{"X-Api-Key": "k"},
					OauthClient: &mcpauthv1.OAuthClient{ClientId: "client-1", ClientSecret: "secret-1", Scopes: []string{"s1"}},
				})
				// Pretend the provider was authorized and its tools fetched.
				tokens, err := s.App.Keys().Seal(provScope("acme", id, provFieldTokens), []byte(`{"a":"old-access"}`))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := st.PutCredential(ctx, &repository.Credential{TenantID: "acme", ProviderID: id, Tokens: tokens,
					KeyID: s.App.Keys().PrimaryID(), Scopes: "[]", Status: domain.StatusAuthorized}, 0); err != nil {
					t.Fatalf("PutCredential: %v", err)
				}
				putTools(t, st, &repository.ToolList{TenantID: "acme", ProviderID: id, Tools: "[]"})
				if err := st.PutClientRegistration(ctx, &repository.ClientRegistration{TenantID: "acme", ProviderID: id,
					Issuer: "https://as.example", Method: domain.RegDynamic, ClientID: "dcr-client",
					KeyID: s.App.Keys().PrimaryID()}); err != nil {
					t.Fatalf("PutClientRegistration: %v", err)
				}
				before := provGet(t, s, key, name)
				if before.GetAuthorizationStatus() != mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED {
					t.Fatalf("status = %v before the update", before.GetAuthorizationStatus())
				}

				in := &mcpauthv1.Provider{}
				if tt.in != nil {
					in = proto.Clone(tt.in).(*mcpauthv1.Provider)
				}
				in.Name = name
				newURL := fmt.Sprintf(tt.newURL, i)
				in.ServerUrl = newURL
				resp, err := s.Providers().UpdateProvider(Ctx(t, key), &mcpauthv1.UpdateProviderRequest{
					Provider: in, UpdateMask: &fieldmaskpb.FieldMask{Paths: tt.paths}})
				if err != nil {
					t.Fatalf("UpdateProvider: %v", err)
				}
				got := provGet(t, s, key, name)
				if !proto.Equal(got, resp.GetProvider()) {
					t.Fatalf("GetProvider = %v, want the update response %v", got, resp.GetProvider())
				}
				if names := provHeaderNames(got); !slices.Equal(names, tt.wantHeaders) {
					t.Errorf("header names = %q, want %q", names, tt.wantHeaders)
				}
				if !proto.Equal(got.GetOauthClient(), tt.wantClient) {
					t.Errorf("oauth_client = %v, want %v", got.GetOauthClient(), tt.wantClient)
				}
				row := provRow(t, s, "acme", id)
				_, credErr := st.GetCredential(ctx, domain.TenantGrant("acme", id))
				_, toolErr := st.GetTools(ctx, domain.TenantGrant("acme", id))
				_, regErr := st.GetClientRegistration(ctx, "acme", id, "https://as.example")
				wantStatus := mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_AUTHORIZED
				if tt.wantReset {
					wantStatus = mcpauthv1.AuthorizationStatus_AUTHORIZATION_STATUS_UNAUTHORIZED
					if apperr.KindOf(credErr) != apperr.KindNotFound || apperr.KindOf(toolErr) != apperr.KindNotFound ||
						apperr.KindOf(regErr) != apperr.KindNotFound {
						t.Errorf("after a URL change: credential lookup %v, tool lookup %v, registration lookup %v; want all gone", credErr, toolErr, regErr)
					}
					if len(tt.wantHeaders) == 0 && row.Headers != nil {
						t.Errorf("headers column still holds %x", row.Headers)
					}
					if !tt.wantClient.GetClientSecretSet() && row.ClientSecret != nil {
						t.Errorf("client_secret column still holds %x", row.ClientSecret)
					}
					if got := provOpen(t, s, row, provFieldServerURL, row.ServerURL); got != newURL {
						t.Errorf("stored URL = %q, want %q", got, newURL)
					}
				} else if credErr != nil || toolErr != nil || regErr != nil {
					t.Errorf("an unchanged URL dropped the credential (%v), tools (%v) or registration (%v)", credErr, toolErr, regErr)
				}
				if got.GetAuthorizationStatus() != wantStatus {
					t.Errorf("status = %v, want %v", got.GetAuthorizationStatus(), wantStatus)
				}
				var reset bool
				for _, e := range provAuditEvents(t, s, key, "acme") {
					if e.GetProvider() == name && e.GetEventType() == "provider.credentials.reset" {
						reset = true
						if e.GetReason() != "SERVER_URL_CHANGED" || e.GetDetails()["dropped"] != tt.wantDropped {
							t.Errorf("reset event reason %q, dropped %q; want SERVER_URL_CHANGED, %q", e.GetReason(), e.GetDetails()["dropped"], tt.wantDropped)
						}
					}
				}
				if reset != tt.wantReset {
					t.Errorf("provider.credentials.reset audited = %v, want %v", reset, tt.wantReset)
				}
			})
		}
	})
}

// putTools stores t with PutTools at its provider's current version, as a
// refresh fetched under the current row would.
func putTools(tb testing.TB, st *repository.Store, t *repository.ToolList) {
	tb.Helper()
	ctx := context.Background()
	p, err := st.GetProvider(ctx, t.TenantID, t.ProviderID)
	if err != nil {
		tb.Fatalf("GetProvider: %v", err)
	}
	if stored, err := st.PutTools(ctx, t, p.Version); err != nil || !stored {
		tb.Fatalf("PutTools = %v, %v", stored, err)
	}
}
