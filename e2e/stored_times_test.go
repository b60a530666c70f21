package e2e

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// TestWritesAnswerWhatIsStored: on PostgreSQL, which keeps microseconds,
// the answers of CreateWebhookEndpoint, UpdateWebhookEndpoint,
// CreateProvider and UpdateProvider equal what a Get right after returns,
// times included. The webhook answers used to carry the nanoseconds of the
// clock that stamped the row (...37.542487904Z, stored as ...37.542487Z).
func TestWritesAnswerWhatIsStored(t *testing.T) {
	t.Parallel()
	hookURL := acceptingReceiver(t)
	s := Start(t, Options{Postgres: true, Env: map[string]string{"MCPAUTH_EGRESS_ALLOW": "127.0.0.1"}})
	ctx := Ctx(t, s.AdminKey)
	same := func(what string, answer, stored proto.Message) {
		t.Helper()
		if !proto.Equal(answer, stored) {
			t.Errorf("%s answered\n%v\nGet returns\n%v", what, answer, stored)
		}
	}

	created, err := s.Webhooks().CreateWebhookEndpoint(ctx, &mcpauthv1.CreateWebhookEndpointRequest{Parent: "tenants/acme",
		WebhookEndpointId: "hook", WebhookEndpoint: &mcpauthv1.WebhookEndpoint{Url: hookURL + "/a"}})
	if err != nil {
		t.Fatal(err)
	}
	getHook := func() *mcpauthv1.WebhookEndpoint {
		got, err := s.Webhooks().GetWebhookEndpoint(ctx, &mcpauthv1.GetWebhookEndpointRequest{Name: created.GetWebhookEndpoint().GetName()})
		if err != nil {
			t.Fatal(err)
		}
		return got.GetWebhookEndpoint()
	}
	same("CreateWebhookEndpoint", created.GetWebhookEndpoint(), getHook())
	updated, err := s.Webhooks().UpdateWebhookEndpoint(ctx, &mcpauthv1.UpdateWebhookEndpointRequest{
		WebhookEndpoint: &mcpauthv1.WebhookEndpoint{Name: created.GetWebhookEndpoint().GetName(), Url: hookURL + "/b"},
		UpdateMask:      &fieldmaskpb.FieldMask{Paths: []string{"url"}}})
	if err != nil {
		t.Fatal(err)
	}
	same("UpdateWebhookEndpoint", updated.GetWebhookEndpoint(), getHook())

	p := provCreate(t, s, s.AdminKey, "acme", "p1", provNewProvider("1"))
	same("CreateProvider", p, provGet(t, s, s.AdminKey, p.GetName()))
	up, err := s.Providers().UpdateProvider(ctx, &mcpauthv1.UpdateProviderRequest{
		Provider:   &mcpauthv1.Provider{Name: p.GetName(), DisplayName: "renamed"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}})
	if err != nil {
		t.Fatal(err)
	}
	same("UpdateProvider", up.GetProvider(), provGet(t, s, s.AdminKey, p.GetName()))
}
