package service

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/reqid"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/validate"
)

// Audit event types. They are part of the API: consoles filter on them.
const (
	EventProviderCreated     = "provider.created"
	EventProviderUpdated     = "provider.updated"
	EventProviderDeleted     = "provider.deleted"
	EventPermissionDenied    = "permission.denied"
	EventAuthStarted         = "oauth.authorization.started"
	EventCallbackSucceeded   = "oauth.callback.succeeded"
	EventCallbackFailed      = "oauth.callback.failed"
	EventTokenRefreshed      = "oauth.token.refreshed"
	EventTokenRefreshFailed  = "oauth.token.refresh_failed"
	EventTokenRead           = "oauth.token.read"
	EventAuthRevoked         = "oauth.authorization.revoked"
	EventRevocationFailed    = "oauth.revocation.failed"
	EventEgressBlocked       = "egress.blocked"
	EventCompatRelaxation    = "oauth.compatibility.used"
	EventClientRegistered    = "oauth.client.registered"
	EventToolCalled          = "mcp.tool.called"
	EventToolsRefreshed      = "mcp.tools.refreshed"
	EventCredentialsReset    = "provider.credentials.reset"
	EventReauthRequired      = "oauth.reauth_required"
	EventStepUpRequired      = "oauth.step_up_required"
	EventTokenPersistFailure = "oauth.token.persist_failed"
)

// Event is one audit record before it is stored. Details must never hold a
// secret; callers pass only ids, names, reasons and counts.
type Event struct {
	Tenant   string
	Type     string
	Provider string
	Outcome  mcpauthv1.AuditOutcome
	Reason   string
	Actor    string // defaults to the caller in ctx
	Details  map[string]string
}

// Auditor writes audit events with group commit: Record returns only once
// its event is stored, but events recorded concurrently share one INSERT
// (one transaction, one fsync), so a burst of token reads costs one write
// instead of one each. Nothing is buffered past the caller's return, so a
// crash loses no event a caller saw succeed. A failure to write is logged
// loudly but does not fail the audited operation, which has already
// happened.
type Auditor struct {
	store   AuditStore
	log     *slog.Logger
	now     Clock
	queue   chan pending
	once    sync.Once
	done    chan struct{}
	writers sync.WaitGroup
}

type pending struct {
	row  *repository.AuditEvent
	done chan struct{}
}

// maxAuditBatch bounds one group commit.
const maxAuditBatch = 256

// auditWriters is how many group commits may be in flight at once.
const auditWriters = 4

// NewAuditor returns an Auditor writing to store. Close stops its writer.
func NewAuditor(store AuditStore, log *slog.Logger, now Clock) *Auditor {
	if now == nil {
		now = time.Now
	}
	a := &Auditor{store: store, log: log, now: now, queue: make(chan pending, 4*maxAuditBatch), done: make(chan struct{})}
	// A few writers: while one batch commits, the next one forms and
	// commits in parallel, so a slow commit does not cap throughput.
	a.writers.Add(auditWriters)
	for range auditWriters {
		go a.writer()
	}
	go func() { a.writers.Wait(); close(a.done) }()
	return a
}

// writer stores whatever is queued, in batches: the first waiting event
// starts a batch, and every event queued meanwhile joins it.
func (a *Auditor) writer() {
	defer a.writers.Done()
	batch := make([]pending, 0, maxAuditBatch)
	for first := range a.queue {
		batch = append(batch[:0], first)
	fill:
		for len(batch) < maxAuditBatch {
			select {
			case p, ok := <-a.queue:
				if !ok {
					break fill
				}
				batch = append(batch, p)
			default:
				break fill
			}
		}
		rows := make([]*repository.AuditEvent, len(batch))
		for i, p := range batch {
			rows[i] = p.row
		}
		a.writeBatch(rows)
		for _, p := range batch {
			close(p.done)
		}
	}
}

// auditRetryFor bounds how long a batch is retried while the database is
// unavailable. The callers wait meanwhile: an operation whose audit event
// is not stored is not acknowledged as audited.
const auditRetryFor = 30 * time.Second

// writeBatch writes one batch, retrying with backoff while the database is
// unavailable (a restart or failover right after the audited operation
// committed must not lose its event). A batch refused for another reason
// is written event by event, so one bad event does not cost the others.
func (a *Auditor) writeBatch(rows []*repository.AuditEvent) {
	deadline := time.Now().Add(auditRetryFor)
	wait := 50 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := a.store.AppendAuditBatch(ctx, rows)
		cancel()
		switch {
		case err == nil:
			return
		case apperr.KindOf(err) == apperr.KindUnavailable && time.Now().Add(wait).Before(deadline):
			a.log.Warn("audit write waiting for the database", "events", len(rows), "err", err.Error())
			time.Sleep(wait)
			wait = min(2*wait, time.Second)
			continue
		}
		if len(rows) == 1 || apperr.KindOf(err) == apperr.KindUnavailable {
			for _, r := range rows {
				a.log.Error("AUDIT EVENT LOST", "event", r.EventType, "tenant", r.TenantID, "request_id", r.RequestID, "err", err.Error())
			}
			return
		}
		for _, r := range rows {
			a.writeBatch([]*repository.AuditEvent{r})
		}
		return
	}
}

// Close stores what is queued and stops the writer.
func (a *Auditor) Close() {
	a.once.Do(func() { close(a.queue) })
	<-a.done
}

// Record stores e, filling in the actor and request id from ctx, and
// returns once it is written (or the write failed and was logged).
func (a *Auditor) Record(ctx context.Context, e Event) {
	if a == nil {
		return
	}
	actor := e.Actor
	if actor == "" {
		actor = caller.ActorName(ctx)
	}
	details := "{}"
	if len(e.Details) > 0 {
		if b, err := json.Marshal(e.Details); err == nil {
			details = string(b)
		}
	}
	p := pending{done: make(chan struct{}), row: &repository.AuditEvent{
		TenantID:   e.Tenant,
		CreatedAt:  a.now().UTC(),
		EventType:  e.Type,
		Actor:      actor,
		ProviderID: e.Provider,
		Outcome:    int32(e.Outcome),
		Reason:     e.Reason,
		RequestID:  reqid.From(ctx),
		Details:    details,
	}}
	defer func() {
		if recover() != nil {
			// The writer is closed (shutdown): write this one directly.
			wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := a.store.AppendAudit(wctx, p.row); err != nil {
				a.log.ErrorContext(ctx, "audit write failed", "event", e.Type, "tenant", e.Tenant, "err", err.Error())
			}
		}
	}()
	a.queue <- p
	// The event must be stored even if the caller's context ends now.
	<-p.done
}

// RecordDenied records a refused call (server.DenialRecorder).
func (a *Auditor) RecordDenied(ctx context.Context, tenant, method, reason string) {
	a.Record(ctx, Event{Tenant: tenant, Type: EventPermissionDenied, Outcome: mcpauthv1.AuditOutcome_AUDIT_OUTCOME_DENIED,
		Reason: reason, Details: map[string]string{"method": method}})
}

// AuditService implements mcpauth.v1.AuditService.
type AuditService struct {
	mcpauthv1.UnimplementedAuditServiceServer
	store AuditStore
}

// NewAuditService returns the audit read API over store.
func NewAuditService(store AuditStore) *AuditService { return &AuditService{store: store} }

// ListAuditEvents pages through a tenant's audit log, newest first.
func (s *AuditService) ListAuditEvents(ctx context.Context, req *mcpauthv1.ListAuditEventsRequest) (*mcpauthv1.ListAuditEventsResponse, error) {
	tenant, err := resname.ParseTenant("parent", req.GetParent())
	if err != nil {
		return nil, err
	}
	size, err := validate.PageSize("page_size", req.GetPageSize())
	if err != nil {
		return nil, err
	}
	tok, err := resname.DecodePageToken("page_token", req.GetParent()+"|"+req.GetProvider()+"|"+req.GetEventType(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	var filter repository.AuditFilter
	if req.GetProvider() != "" {
		t, p, err := resname.ParseProvider("provider", req.GetProvider())
		if err != nil {
			return nil, err
		}
		if t != tenant {
			return &mcpauthv1.ListAuditEventsResponse{}, nil
		}
		filter.ProviderID = p
	}
	if et := req.GetEventType(); et != "" {
		if len(et) > 64 {
			return nil, invalid("event_type", "must be at most 64 characters")
		}
		filter.EventType = et
	}
	rows, err := s.store.ListAudit(ctx, tenant, filter, tok.AfterN, size+1)
	if err != nil {
		return nil, err
	}
	resp := &mcpauthv1.ListAuditEventsResponse{}
	if len(rows) > size {
		rows = rows[:size]
		resp.NextPageToken = resname.EncodePageToken(resname.PageToken{
			Parent: req.GetParent() + "|" + req.GetProvider() + "|" + req.GetEventType(), AfterN: rows[size-1].ID})
	}
	for _, r := range rows {
		ev := &mcpauthv1.AuditEvent{
			Name:       resname.AuditEventName(tenant, r.ID),
			EventType:  r.EventType,
			Actor:      r.Actor,
			Outcome:    mcpauthv1.AuditOutcome(r.Outcome),
			Reason:     r.Reason,
			RequestId:  r.RequestID,
			CreateTime: timestamppb.New(r.CreatedAt),
		}
		if r.ProviderID != "" {
			ev.Provider = resname.ProviderName(tenant, r.ProviderID)
		}
		if r.Details != "" && r.Details != "{}" {
			_ = json.Unmarshal([]byte(r.Details), &ev.Details)
		}
		resp.AuditEvents = append(resp.AuditEvents, ev)
	}
	return resp, nil
}
