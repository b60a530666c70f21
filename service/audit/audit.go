// Package audit is the audit use case: it writes security events with group
// commit (Auditor) and lists a tenant's events (Log). Events never hold a
// secret; callers pass only ids, names, reason codes and counts.
package audit

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/reqid"
	"github.com/mcpauth/mcpauth/retry"
)

// Store appends and lists audit events. *repository.Store implements it.
type Store interface {
	AppendAudit(ctx context.Context, e *repository.AuditEvent) error
	AppendAuditBatch(ctx context.Context, events []*repository.AuditEvent) error
	ListAudit(ctx context.Context, tenant string, f repository.AuditFilter, afterUID string, limit int) ([]repository.AuditEvent, error)
}

var _ Store = (*repository.Store)(nil)

// Clock tells the time; tests pass a fixed one.
type Clock func() time.Time

// Event is one audit record before it is stored.
type Event struct {
	Tenant   string
	Type     domain.EventType
	Provider string
	Outcome  domain.Outcome
	Reason   string
	// Actor defaults to the caller in the context.
	Actor   string
	Details map[string]string
}

// Recorder records audit events. *Auditor implements it; the other use
// cases depend on this interface.
type Recorder interface {
	Record(ctx context.Context, e Event)
}

var _ Recorder = (*Auditor)(nil)

// Auditor writes audit events with group commit: Record returns only once
// its event is stored, but events recorded concurrently share one INSERT
// (one transaction, one fsync), so a burst of token reads costs one write
// instead of one each. Nothing is buffered past the caller's return, so a
// crash loses no event a caller saw succeed. A failure to write is logged
// loudly but does not fail the audited operation, which has already
// happened.
type Auditor struct {
	store   Store
	log     *slog.Logger
	now     Clock
	retry   retry.Policy
	queue   chan pending
	mu      sync.RWMutex // held for reading while sending on queue; Close takes it to close queue
	closed  bool
	done    chan struct{}
	writers sync.WaitGroup
}

type pending struct {
	row  *repository.AuditEvent
	done chan struct{}
}

// maxBatch bounds one group commit.
const maxBatch = 256

// writers is how many group commits may be in flight at once.
const writers = 4

// retryFor bounds how long a batch is retried while the database is
// unavailable. The callers wait meanwhile: an operation whose audit event is
// not stored is not acknowledged as audited.
const retryFor = 30 * time.Second

// NewAuditor returns an Auditor writing to store. Close stops its writers.
func NewAuditor(store Store, log *slog.Logger, now Clock) *Auditor {
	if now == nil {
		now = time.Now
	}
	a := &Auditor{store: store, log: log, now: now, queue: make(chan pending, 4*maxBatch), done: make(chan struct{}),
		retry: retry.Policy{Base: 50 * time.Millisecond, Max: time.Second, Budget: retryFor}}
	// A few writers: while one batch commits, the next one forms and
	// commits in parallel, so a slow commit does not cap throughput.
	a.writers.Add(writers)
	for range writers {
		go a.writer()
	}
	go func() { a.writers.Wait(); close(a.done) }()
	return a
}

// writer stores whatever is queued, in batches: the first waiting event
// starts a batch, and every event queued meanwhile joins it.
func (a *Auditor) writer() {
	defer a.writers.Done()
	batch := make([]pending, 0, maxBatch)
	for first := range a.queue {
		batch = append(batch[:0], first)
	fill:
		for len(batch) < maxBatch {
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

// writeBatch writes one batch, retrying with backoff while the database is
// unavailable (a restart or failover right after the audited operation
// committed must not lose its event). A batch refused for another reason is
// written event by event, so one bad event does not cost the others.
func (a *Auditor) writeBatch(rows []*repository.AuditEvent) {
	p := a.retry
	p.OnRetry = func(_ int, err error, _ time.Duration) {
		a.log.Warn("audit write waiting for the database", "events", len(rows), "err", err.Error())
	}
	err := retry.Do(context.Background(), p, func(ctx context.Context, _ int) error {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		err := a.store.AppendAuditBatch(wctx, rows)
		if retryable(err) {
			return err
		}
		return retry.Permanent(err)
	})
	if err == nil {
		return
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
}

// retryable reports whether a failed batch may have failed for the
// connection's sake: the database unreachable, or the connection lost
// mid-statement (io.ErrUnexpectedEOF from a dying server, which the
// repository does not yet classify as unavailable; the issue-15 classifier
// replaces this check once merged). Retrying is safe even when the first
// attempt committed: every event carries its idempotency key, and the
// repository skips events already stored.
func retryable(err error) bool {
	return apperr.KindOf(err) == apperr.KindUnavailable || errors.Is(err, io.ErrUnexpectedEOF) ||
		apperr.KindOf(err) == apperr.KindDeadlineExceeded
}

// Close stores what is queued and stops the writers. Events recorded after
// Close are written one by one.
func (a *Auditor) Close() {
	a.mu.Lock()
	if !a.closed {
		a.closed = true
		close(a.queue)
	}
	a.mu.Unlock()
	<-a.done
}

// Record stores e, filling in the actor and request id from ctx, and
// returns once it is written (or the write failed and was logged).
func (a *Auditor) Record(ctx context.Context, e Event) {
	if a == nil {
		return
	}
	p := pending{done: make(chan struct{}), row: a.row(ctx, e)}
	a.mu.RLock()
	if a.closed {
		a.mu.RUnlock()
		// Shutting down: write this one directly.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := a.store.AppendAudit(wctx, p.row); err != nil {
			a.log.ErrorContext(ctx, "audit write failed", "event", string(e.Type), "tenant", e.Tenant, "err", err.Error())
		}
		return
	}
	a.queue <- p
	a.mu.RUnlock()
	// The event must be stored even if the caller's context ends now.
	<-p.done
}

func (a *Auditor) row(ctx context.Context, e Event) *repository.AuditEvent {
	return Rows(ctx, a.now(), e)[0]
}

// Rows turns events into rows to be stored in the same transaction as the
// change they describe (the repository's write methods take them), filling
// in the actor and request id from ctx. Each row gets its idempotency key
// (uid and time) now, so a retried write stores it once.
func Rows(ctx context.Context, now time.Time, events ...Event) []*repository.AuditEvent {
	out := make([]*repository.AuditEvent, len(events))
	for i, e := range events {
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
		out[i] = &repository.AuditEvent{
			TenantID:   e.Tenant,
			EventType:  string(e.Type),
			Actor:      actor,
			ProviderID: e.Provider,
			Outcome:    int32(e.Outcome),
			Reason:     e.Reason,
			RequestID:  reqid.From(ctx),
			Details:    details,
		}
		repository.PrepareEvents(now, out[i])
	}
	return out
}

// RecordDenied records a refused call (the transport's denial recorder).
func (a *Auditor) RecordDenied(ctx context.Context, tenant, method, reason string) {
	a.Record(ctx, Event{Tenant: tenant, Type: domain.EventPermissionDenied, Outcome: domain.OutcomeDenied,
		Reason: reason, Details: map[string]string{"method": method}})
}

// Entry is one stored audit event.
type Entry struct {
	// UID is the event's public id: random, unique within the tenant. (The
	// database's sequence is not exposed; it spans all tenants.)
	UID       string
	Time      time.Time
	Type      domain.EventType
	Actor     string
	Provider  string
	Outcome   domain.Outcome
	Reason    string
	RequestID string
	Details   map[string]string
}

// Filter narrows a listing; empty fields match everything.
type Filter struct {
	Provider string
	Type     domain.EventType
}

// Log lists a tenant's audit events.
type Log struct {
	store Store
}

// NewLog returns the audit read use case over store.
func NewLog(store Store) (*Log, error) {
	if store == nil {
		return nil, errors.New("audit log: store is required")
	}
	return &Log{store: store}, nil
}

// maxTypeLen bounds an event type filter.
const maxTypeLen = 64

// List returns up to limit of the tenant's events older than the one with
// UID afterUID ("": the newest), newest first.
func (l *Log) List(ctx context.Context, tenant string, f Filter, afterUID string, limit int) ([]Entry, error) {
	if len(f.Type) > maxTypeLen {
		return nil, apperr.Invalid("event_type", "must be at most %d characters", maxTypeLen)
	}
	rows, err := l.store.ListAudit(ctx, tenant, repository.AuditFilter{ProviderID: f.Provider, EventType: string(f.Type)}, afterUID, limit)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, len(rows))
	for i := range rows {
		out[i] = entryOf(&rows[i])
	}
	return out, nil
}
