package server

import (
	"context"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/validate"
)

// AuditUseCases lists audit events. *audit.Log implements it.
type AuditUseCases interface {
	List(ctx context.Context, tenant string, f audit.Filter, afterUID string, limit int) ([]audit.Entry, error)
}

var _ AuditUseCases = (*audit.Log)(nil)

// EventWatcher streams a tenant's events. *audit.Feed implements it.
type EventWatcher interface {
	Watch(ctx context.Context, tenant, afterUID string, send func(audit.Entry) error) error
}

var _ EventWatcher = (*audit.Feed)(nil)

// auditAPI implements mcpauth.v1.AuditService.
type auditAPI struct {
	mcpauthv1.UnimplementedAuditServiceServer
	uc    AuditUseCases
	watch EventWatcher
}

// NewAuditAPI returns the gRPC audit service.
func NewAuditAPI(uc AuditUseCases, watch EventWatcher) mcpauthv1.AuditServiceServer {
	return &auditAPI{uc: uc, watch: watch}
}

// WatchEvents streams the tenant's events from after resume_after.
func (a *auditAPI) WatchEvents(req *mcpauthv1.WatchEventsRequest, stream mcpauthv1.AuditService_WatchEventsServer) error {
	tenant, err := resname.ParseTenant("parent", req.GetParent())
	if err != nil {
		return err
	}
	after := ""
	if r := req.GetResumeAfter(); r != "" {
		t, uid, err := resname.ParseAuditEvent("resume_after", r)
		if err != nil {
			return err
		}
		if t != tenant {
			return apperr.Invalid("resume_after", "names an event of another tenant than parent")
		}
		after = uid
	}
	return a.watch.Watch(stream.Context(), tenant, after, func(e audit.Entry) error {
		return stream.Send(&mcpauthv1.WatchEventsResponse{AuditEvent: auditEventProto(tenant, e)})
	})
}

// auditEventProto is the API form of a stored event.
func auditEventProto(tenant string, e audit.Entry) *mcpauthv1.AuditEvent {
	ev := &mcpauthv1.AuditEvent{
		Name:       resname.AuditEventName(tenant, e.UID),
		EventType:  string(e.Type),
		Type:       eventTypes[e.Type],
		Actor:      e.Actor,
		Outcome:    outcomes[e.Outcome],
		Reason:     e.Reason,
		RequestId:  e.RequestID,
		CreateTime: timestamppb.New(e.Time),
		Details:    e.Details,
		User:       e.User,
	}
	if e.Provider != "" {
		ev.Provider = resname.ProviderName(tenant, e.Provider)
	}
	return ev
}

// eventTypes maps the domain's audit event types to the API's enum; the
// enum value names are the types upper-cased with dots as underscores.
var eventTypes = func() map[domain.EventType]mcpauthv1.AuditEventType {
	m := make(map[domain.EventType]mcpauthv1.AuditEventType, len(domain.EventTypes))
	for _, t := range domain.EventTypes {
		name := "AUDIT_EVENT_TYPE_" + strings.ToUpper(strings.ReplaceAll(string(t), ".", "_"))
		m[t] = mcpauthv1.AuditEventType(mcpauthv1.AuditEventType_value[name])
	}
	return m
}()

// eventTypeNames is eventTypes reversed, for the enum filter.
var eventTypeNames = func() map[mcpauthv1.AuditEventType]domain.EventType {
	m := make(map[mcpauthv1.AuditEventType]domain.EventType, len(eventTypes))
	for t, e := range eventTypes {
		m[e] = t
	}
	return m
}()

// outcomes maps the domain's audit outcomes to the API's.
var outcomes = map[domain.Outcome]mcpauthv1.AuditOutcome{
	domain.OutcomeSuccess: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_SUCCESS,
	domain.OutcomeFailure: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_FAILURE,
	domain.OutcomeDenied:  mcpauthv1.AuditOutcome_AUDIT_OUTCOME_DENIED,
}

// ListAuditEvents pages through a tenant's audit log, newest first. The page
// token is bound to the parent and the filters it was issued for, and holds
// the public id of the previous page's last event; events are named by that
// id too. Neither shows the row number, a sequence across all tenants.
func (a *auditAPI) ListAuditEvents(ctx context.Context, req *mcpauthv1.ListAuditEventsRequest) (*mcpauthv1.ListAuditEventsResponse, error) {
	tenant, err := resname.ParseTenant("parent", req.GetParent())
	if err != nil {
		return nil, err
	}
	size, err := validate.PageSize("page_size", req.GetPageSize())
	if err != nil {
		return nil, err
	}
	typ := domain.EventType(req.GetEventType())
	if et := req.GetType(); et != mcpauthv1.AuditEventType_AUDIT_EVENT_TYPE_UNSPECIFIED {
		named, known := eventTypeNames[et]
		switch {
		case !known:
			return nil, apperr.Invalid("type", "is not a known audit event type")
		case typ != "" && typ != named:
			return nil, apperr.Invalid("type", "names another event type than event_type")
		}
		typ = named
	}
	bound := req.GetParent() + "|" + req.GetProvider() + "|" + string(typ)
	if u := req.GetUser(); u != "" {
		if err := validate.UserID("user", u); err != nil {
			return nil, err
		}
		// Length-prefixed: a user id may hold "|".
		bound += "|u" + strconv.Itoa(len(u)) + ":" + u
	}
	tok, err := resname.DecodePageToken("page_token", bound, req.GetPageToken())
	if err != nil {
		return nil, err
	}
	f := audit.Filter{Type: typ, User: req.GetUser()}
	if req.GetProvider() != "" {
		t, p, err := resname.ParseProvider("provider", req.GetProvider())
		if err != nil {
			return nil, err
		}
		if t != tenant {
			return &mcpauthv1.ListAuditEventsResponse{}, nil
		}
		f.Provider = p
	}
	entries, err := a.uc.List(ctx, tenant, f, tok.After, size+1)
	if err != nil {
		return nil, err
	}
	resp := &mcpauthv1.ListAuditEventsResponse{}
	if len(entries) > size {
		entries = entries[:size]
		resp.NextPageToken = resname.EncodePageToken(resname.PageToken{Parent: bound, After: entries[size-1].UID})
	}
	for _, e := range entries {
		resp.AuditEvents = append(resp.AuditEvents, auditEventProto(tenant, e))
	}
	return resp, nil
}
