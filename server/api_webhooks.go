package server

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/webhooks"
	"github.com/mcpauth/mcpauth/validate"
)

// WebhookUseCases manages webhook endpoints. *webhooks.Service implements it.
type WebhookUseCases interface {
	Create(ctx context.Context, tenant, id, rawURL string, types []string) (*webhooks.Endpoint, secret.Secret, error)
	Get(ctx context.Context, tenant, id string) (*webhooks.Endpoint, error)
	List(ctx context.Context, tenant, afterID string, limit int) ([]*webhooks.Endpoint, error)
	Update(ctx context.Context, tenant, id string, p webhooks.Patch) (*webhooks.Endpoint, error)
	Delete(ctx context.Context, tenant, id string) error
	RotateSecret(ctx context.Context, tenant, id string) (secret.Secret, error)
	ListDeliveries(ctx context.Context, tenant, endpointID string, state int, afterUID string, limit int) ([]webhooks.Delivery, error)
	Redeliver(ctx context.Context, tenant, endpointID, eventUID string) error
}

var _ WebhookUseCases = (*webhooks.Service)(nil)

// webhookAPI implements mcpauth.v1.WebhookService.
type webhookAPI struct {
	mcpauthv1.UnimplementedWebhookServiceServer
	uc WebhookUseCases
}

// NewWebhookAPI returns the gRPC webhook service.
func NewWebhookAPI(uc WebhookUseCases) mcpauthv1.WebhookServiceServer { return &webhookAPI{uc: uc} }

func endpointProto(e *webhooks.Endpoint) *mcpauthv1.WebhookEndpoint {
	return &mcpauthv1.WebhookEndpoint{Name: resname.WebhookEndpointName(e.Tenant, e.ID), Url: e.URL, EventTypes: e.EventTypes,
		Disabled: e.Disabled, CreateTime: timestamppb.New(e.CreateTime), UpdateTime: timestamppb.New(e.UpdateTime),
		PendingDeliveries: e.Pending, DeliveredDeliveries: e.Delivered, DeadDeliveries: e.Dead}
}

func (a *webhookAPI) CreateWebhookEndpoint(ctx context.Context, req *mcpauthv1.CreateWebhookEndpointRequest) (*mcpauthv1.CreateWebhookEndpointResponse, error) {
	tenant, err := resname.ParseTenant("parent", req.GetParent())
	if err != nil {
		return nil, err
	}
	if req.GetWebhookEndpoint() == nil {
		return nil, apperr.Invalid("webhook_endpoint", "is required")
	}
	e, sec, err := a.uc.Create(ctx, tenant, req.GetWebhookEndpointId(), req.GetWebhookEndpoint().GetUrl(), req.GetWebhookEndpoint().GetEventTypes())
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.CreateWebhookEndpointResponse{WebhookEndpoint: endpointProto(e), SigningSecret: sec.Reveal()}, nil
}

func (a *webhookAPI) GetWebhookEndpoint(ctx context.Context, req *mcpauthv1.GetWebhookEndpointRequest) (*mcpauthv1.GetWebhookEndpointResponse, error) {
	tenant, id, err := resname.ParseWebhookEndpoint("name", req.GetName())
	if err != nil {
		return nil, err
	}
	e, err := a.uc.Get(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.GetWebhookEndpointResponse{WebhookEndpoint: endpointProto(e)}, nil
}

func (a *webhookAPI) ListWebhookEndpoints(ctx context.Context, req *mcpauthv1.ListWebhookEndpointsRequest) (*mcpauthv1.ListWebhookEndpointsResponse, error) {
	tenant, err := resname.ParseTenant("parent", req.GetParent())
	if err != nil {
		return nil, err
	}
	size, err := validate.PageSize("page_size", req.GetPageSize())
	if err != nil {
		return nil, err
	}
	tok, err := resname.DecodePageToken("page_token", req.GetParent(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	list, err := a.uc.List(ctx, tenant, tok.After, size+1)
	if err != nil {
		return nil, err
	}
	resp := &mcpauthv1.ListWebhookEndpointsResponse{}
	if len(list) > size {
		list = list[:size]
		resp.NextPageToken = resname.EncodePageToken(resname.PageToken{Parent: req.GetParent(), After: list[size-1].ID})
	}
	for _, e := range list {
		resp.WebhookEndpoints = append(resp.WebhookEndpoints, endpointProto(e))
	}
	return resp, nil
}

func (a *webhookAPI) UpdateWebhookEndpoint(ctx context.Context, req *mcpauthv1.UpdateWebhookEndpointRequest) (*mcpauthv1.UpdateWebhookEndpointResponse, error) {
	in := req.GetWebhookEndpoint()
	tenant, id, err := resname.ParseWebhookEndpoint("webhook_endpoint.name", in.GetName())
	if err != nil {
		return nil, err
	}
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		return nil, apperr.Invalid("update_mask", "must name at least one field")
	}
	var p webhooks.Patch
	for _, path := range paths {
		switch path {
		case "url":
			u := in.GetUrl()
			p.URL = &u
		case "event_types":
			t := in.GetEventTypes()
			p.EventTypes = &t
		case "disabled":
			d := in.GetDisabled()
			p.Disabled = &d
		default:
			return nil, apperr.Invalid("update_mask", "names %q, which is not one of url, event_types, disabled", path)
		}
	}
	e, err := a.uc.Update(ctx, tenant, id, p)
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.UpdateWebhookEndpointResponse{WebhookEndpoint: endpointProto(e)}, nil
}

func (a *webhookAPI) DeleteWebhookEndpoint(ctx context.Context, req *mcpauthv1.DeleteWebhookEndpointRequest) (*mcpauthv1.DeleteWebhookEndpointResponse, error) {
	tenant, id, err := resname.ParseWebhookEndpoint("name", req.GetName())
	if err != nil {
		return nil, err
	}
	if err := a.uc.Delete(ctx, tenant, id); err != nil {
		return nil, err
	}
	return &mcpauthv1.DeleteWebhookEndpointResponse{}, nil
}

func (a *webhookAPI) RotateWebhookEndpointSecret(ctx context.Context, req *mcpauthv1.RotateWebhookEndpointSecretRequest) (*mcpauthv1.RotateWebhookEndpointSecretResponse, error) {
	tenant, id, err := resname.ParseWebhookEndpoint("name", req.GetName())
	if err != nil {
		return nil, err
	}
	sec, err := a.uc.RotateSecret(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.RotateWebhookEndpointSecretResponse{SigningSecret: sec.Reveal()}, nil
}

// deliveryStates maps the API's delivery states to the repository's.
var deliveryStates = map[mcpauthv1.WebhookDeliveryState]int{
	mcpauthv1.WebhookDeliveryState_WEBHOOK_DELIVERY_STATE_UNSPECIFIED: -1,
	mcpauthv1.WebhookDeliveryState_WEBHOOK_DELIVERY_STATE_PENDING:     repository.DeliveryPending,
	mcpauthv1.WebhookDeliveryState_WEBHOOK_DELIVERY_STATE_DELIVERED:   repository.DeliveryDelivered,
	mcpauthv1.WebhookDeliveryState_WEBHOOK_DELIVERY_STATE_DEAD:        repository.DeliveryDead,
}

func (a *webhookAPI) ListWebhookDeliveries(ctx context.Context, req *mcpauthv1.ListWebhookDeliveriesRequest) (*mcpauthv1.ListWebhookDeliveriesResponse, error) {
	tenant, id, err := resname.ParseWebhookEndpoint("parent", req.GetParent())
	if err != nil {
		return nil, err
	}
	state, ok := deliveryStates[req.GetState()]
	if !ok {
		return nil, apperr.Invalid("state", "is not a known delivery state")
	}
	size, err := validate.PageSize("page_size", req.GetPageSize())
	if err != nil {
		return nil, err
	}
	bound := req.GetParent() + "|" + req.GetState().String()
	tok, err := resname.DecodePageToken("page_token", bound, req.GetPageToken())
	if err != nil {
		return nil, err
	}
	list, err := a.uc.ListDeliveries(ctx, tenant, id, state, tok.After, size+1)
	if err != nil {
		return nil, err
	}
	resp := &mcpauthv1.ListWebhookDeliveriesResponse{}
	if len(list) > size {
		list = list[:size]
		resp.NextPageToken = resname.EncodePageToken(resname.PageToken{Parent: bound, After: list[size-1].EventUID})
	}
	for _, d := range list {
		w := &mcpauthv1.WebhookDelivery{AuditEvent: resname.AuditEventName(tenant, d.EventUID), EventType: d.EventType,
			Attempts: int32(d.Attempts), LastStatus: int32(d.LastStatus), LastError: d.LastError,
			CreateTime: timestamppb.New(d.CreateTime), UpdateTime: timestamppb.New(d.UpdateTime)}
		for api, st := range deliveryStates {
			if st == d.State && api != mcpauthv1.WebhookDeliveryState_WEBHOOK_DELIVERY_STATE_UNSPECIFIED {
				w.State = api
			}
		}
		if d.State == repository.DeliveryPending {
			w.NextAttemptTime = timestamppb.New(d.NextAttemptAt)
		}
		if d.Provider != "" {
			w.Provider = resname.ProviderName(tenant, d.Provider)
		}
		resp.WebhookDeliveries = append(resp.WebhookDeliveries, w)
	}
	return resp, nil
}

func (a *webhookAPI) RedeliverWebhookEvent(ctx context.Context, req *mcpauthv1.RedeliverWebhookEventRequest) (*mcpauthv1.RedeliverWebhookEventResponse, error) {
	tenant, id, err := resname.ParseWebhookEndpoint("name", req.GetName())
	if err != nil {
		return nil, err
	}
	t, uid, err := resname.ParseAuditEvent("audit_event", req.GetAuditEvent())
	if err != nil {
		return nil, err
	}
	if t != tenant {
		return nil, apperr.Invalid("audit_event", "names an event of another tenant than name")
	}
	if err := a.uc.Redeliver(ctx, tenant, id, uid); err != nil {
		return nil, err
	}
	return &mcpauthv1.RedeliverWebhookEventResponse{}, nil
}
