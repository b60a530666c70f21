// Package audit is the audit use case: it writes security events with group
// commit (Auditor) and lists a tenant's events (Log). Events never hold a
// secret; callers pass only ids, names, reason codes and counts.
package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/metrics"
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
	// User is the end user whose connection (per-user grant) the event
	// concerns; empty for tenant-wide grants and provider events.
	User    string
	Outcome domain.Outcome
	Reason  string
	// Actor defaults to the caller in the context.
	Actor   string
	Details map[string]string
}

// Recorder records audit events. *Auditor implements it; the other use
// cases depend on this interface.
type Recorder interface {
	Record(ctx context.Context, e Event)
	// RecordAsync records an event that changed nothing durable without
	// waiting for it to be stored (see Auditor).
	RecordAsync(ctx context.Context, e Event)
}

var _ Recorder = (*Auditor)(nil)

// Auditor writes audit events with group commit: events recorded
// concurrently share one INSERT (one transaction, one fsync), so a burst of
// events costs one write instead of one each.
//
// # Guarantee
//
//   - Written exactly once: every event carries its idempotency key (uid and
//     time) from the moment it is recorded; a batch retried after its
//     commit's acknowledgement was lost (io.ErrUnexpectedEOF from a dying
//     PostgreSQL, a reset) is skipped by the database, not doubled.
//   - No time window: while the database is unreachable, events are held in
//     memory and retried (backoff up to 5 s) until they are stored, however
//     long the outage, as long as the process lives. Memory is bounded by
//     MaxPending events (default 50,000; a typical event holds about 420
//     bytes, so about 20 MB): an event recorded while that many wait is
//     dropped, counted in mcpauth_audit_events_lost_total{reason=
//     "buffer_full"} and logged as "AUDIT EVENT LOST".
//   - Callers are not held by an outage: Record waits for its event's first
//     write attempt, at most MaxWait (default 2 s) and never past the
//     caller's context; while a write is known to be failing it does not
//     wait at all. Normally, then, an operation answers after its event is
//     stored; during an outage it answers at once and the event follows.
//   - SIGTERM: Shutdown keeps writing until its context ends (the drain
//     grace); what is still unstored then is logged as lost, one line each.
//     kill -9 (or OOM, power loss) loses the events not yet stored: normally
//     those of the last group commit in flight (milliseconds); during a
//     database outage, every event recorded since it began.
//   - RecordAsync is for events that record a request which changed nothing
//     durable (an authorization started: its flow lives in the state store
//     and its callback is audited, naming who started it). It does not wait:
//     a batch holding only such events waits up to Linger (default 5 ms) for
//     company before it commits, so a burst shares one statement. A Record
//     arriving meanwhile ends the wait. Besides the above, kill -9 loses
//     such events answered within the last Linger plus one commit.
//
// Changes to providers and grants do not come here: their events commit in
// the transaction of the change (repository write methods take them).
type Auditor struct {
	store      Store
	log        *slog.Logger
	now        Clock
	retry      retry.Policy
	maxPending int
	maxWait    time.Duration
	linger     time.Duration
	metrics    *metrics.Metrics

	mu      sync.Mutex
	ready   *sync.Cond // signalled when queue grows or stopping is set
	queue   []*pending // recorded, not yet taken by a writer
	waiting int        // queued events whose Record waits for them
	hurry   int        // running Flush calls: nothing lingers
	held    int        // events queued or in a writer's hands
	drained *sync.Cond // signalled when held shrinks
	closing bool       // Shutdown began: writers exit once the queue is empty
	closed  bool       // the writers are gone: Record writes directly

	failing atomic.Bool // the last write attempt failed as unavailable
	stop    context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	writers sync.WaitGroup
}

type pending struct {
	row *repository.AuditEvent
	// tried is closed after the first attempt to write the event; nil for
	// RecordAsync's, which nobody waits for.
	tried chan struct{}
}

// attempted tells p's Record, if it waits, that its event was tried.
func (p *pending) attempted() {
	if p.tried != nil {
		close(p.tried)
	}
}

// maxBatch bounds one group commit.
const maxBatch = 256

// writers is how many group commits may be in flight at once. One: while
// it commits, the next batch fills, and RecordAsync's linger fills batches
// anyway; more writers made smaller batches (more statements for the same
// events). Side by side under StartAuthorization load, with the Redis put
// pipeline at one in flight too: server CPU 51 -> 46 us/call, ratio to
// Health/Check 0.28 -> 0.30 (medians of 4 rounds).
const writers = 1

// lingerBatch is the size at which a batch of RecordAsync events stops
// waiting for company.
const lingerBatch = maxBatch / 2

// Defaults of the Auditor's options.
const (
	DefaultMaxPending = 50_000
	DefaultMaxWait    = 2 * time.Second
	DefaultLinger     = 5 * time.Millisecond
	// closeGrace bounds Close's flush (Shutdown takes the caller's bound).
	closeGrace = 15 * time.Second
)

// Option tunes an Auditor.
type Option func(*Auditor)

// WithMaxPending bounds the events held in memory (queued or being
// written); n <= 0 selects DefaultMaxPending.
func WithMaxPending(n int) Option {
	return func(a *Auditor) {
		if n > 0 {
			a.maxPending = n
		}
	}
}

// WithMaxWait bounds how long Record waits for its event's first write
// attempt; d <= 0 selects DefaultMaxWait.
func WithMaxWait(d time.Duration) Option {
	return func(a *Auditor) {
		if d > 0 {
			a.maxWait = d
		}
	}
}

// WithLinger bounds how long a batch holding only RecordAsync events waits
// for more before it commits; d < 0 commits at once, 0 selects
// DefaultLinger.
func WithLinger(d time.Duration) Option {
	return func(a *Auditor) {
		switch {
		case d < 0:
			a.linger = 0
		case d > 0:
			a.linger = d
		}
	}
}

// WithMetrics exports the held events and the lost ones.
func WithMetrics(m *metrics.Metrics) Option { return func(a *Auditor) { a.metrics = m } }

// NewAuditor returns an Auditor writing to store. Shutdown (or Close) stores
// what is held and stops its writers.
func NewAuditor(store Store, log *slog.Logger, now Clock, opts ...Option) *Auditor {
	if now == nil {
		now = time.Now
	}
	a := &Auditor{store: store, log: log, now: now, done: make(chan struct{}),
		maxPending: DefaultMaxPending, maxWait: DefaultMaxWait, linger: DefaultLinger,
		retry: retry.Policy{Base: 50 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.2}}
	for _, o := range opts {
		o(a)
	}
	a.ready, a.drained = sync.NewCond(&a.mu), sync.NewCond(&a.mu)
	a.stop, a.cancel = context.WithCancel(context.Background())
	// A few writers: while one batch commits, the next one forms and
	// commits in parallel, so a slow commit does not cap throughput.
	a.writers.Add(writers)
	for range writers {
		go a.writer()
	}
	go func() { a.writers.Wait(); close(a.done) }()
	return a
}

// next takes up to maxBatch queued events, waiting for the first; false
// once Shutdown began and nothing is queued. A batch nobody waits for
// (RecordAsync events only) first lingers for company (see Auditor).
func (a *Auditor) next() ([]*pending, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for {
		for len(a.queue) == 0 && !a.closing {
			a.ready.Wait()
		}
		if len(a.queue) == 0 {
			return nil, false
		}
		if a.lingers() {
			a.lingerLocked()
			if len(a.queue) == 0 {
				continue // another writer took them
			}
		}
		n := min(len(a.queue), maxBatch)
		batch := a.queue[:n:n]
		a.queue = a.queue[n:]
		for _, p := range batch {
			if p.tried != nil {
				a.waiting--
			}
		}
		return batch, true
	}
}

// lingers reports whether the queued events may wait for company: nobody
// waits for them, Shutdown has not begun and the batch is not full yet;
// a.mu is held.
func (a *Auditor) lingers() bool {
	return a.linger > 0 && a.waiting == 0 && a.hurry == 0 && !a.closing && len(a.queue) < lingerBatch
}

// lingerLocked waits, a.mu held, until the queued events may not linger
// any more or Linger passed.
func (a *Auditor) lingerLocked() {
	over := false
	t := time.AfterFunc(a.linger, func() {
		a.mu.Lock()
		over = true
		a.ready.Broadcast()
		a.mu.Unlock()
	})
	for !over && a.lingers() {
		a.ready.Wait()
	}
	t.Stop()
}

// Flush ends any linger and returns once no event is held (every event
// recorded before it is stored, or reported lost; under a steady stream of
// new events that may not happen) or ctx ended, returning ctx's error then.
// Readers that must see RecordAsync events at once call it first.
func (a *Auditor) Flush(ctx context.Context) error {
	a.mu.Lock()
	a.hurry++
	a.ready.Broadcast()
	stop := context.AfterFunc(ctx, func() {
		a.mu.Lock()
		a.drained.Broadcast()
		a.mu.Unlock()
	})
	for a.held > 0 && ctx.Err() == nil {
		a.drained.Wait()
	}
	a.hurry--
	a.mu.Unlock()
	stop()
	return ctx.Err()
}

// finish releases n events from the held count.
func (a *Auditor) finish(n int) {
	a.mu.Lock()
	a.held -= n
	a.setPending()
	a.drained.Broadcast()
	a.mu.Unlock()
}

// setPending exports the held count; a.mu is held.
func (a *Auditor) setPending() {
	if a.metrics != nil {
		a.metrics.AuditPending.Set(float64(a.held))
	}
}

// writer stores whatever is queued, in batches: the first waiting event
// starts a batch, and every event queued meanwhile joins it.
func (a *Auditor) writer() {
	defer a.writers.Done()
	for {
		batch, ok := a.next()
		if !ok {
			return
		}
		rows := make([]*repository.AuditEvent, len(batch))
		for i, p := range batch {
			rows[i] = p.row
		}
		a.writeBatch(rows, sync.OnceFunc(func() {
			for _, p := range batch {
				p.attempted()
			}
		}))
		a.finish(len(batch))
	}
}

// writeBatch writes one batch, retrying with backoff while the database is
// unavailable, without a time limit (a restart or failover right after the
// audited operation must not lose its event). tried is called after the
// first attempt. A batch refused for another reason is written event by
// event, so one bad event does not cost the others.
func (a *Auditor) writeBatch(rows []*repository.AuditEvent, tried func()) {
	defer tried()
	p := a.retry
	p.OnRetry = func(attempt int, err error, wait time.Duration) {
		if attempt == 1 {
			a.failing.Store(true)
			tried()
			a.log.Warn("audit events held in memory until the database answers", "events", len(rows), "err", err.Error())
		}
	}
	waited := false
	err := retry.Do(a.stop, p, func(ctx context.Context, attempt int) error {
		waited = attempt > 1
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		err := a.store.AppendAuditBatch(wctx, rows)
		switch {
		case err == nil:
			a.failing.Store(false)
			return nil
		case retryable(err):
			return err
		}
		return retry.Permanent(err)
	})
	switch {
	case err == nil:
		if waited {
			a.log.Info("held audit events stored", "events", len(rows))
		}
	case a.stop.Err() != nil:
		a.lost(rows, "shutdown", err)
	case len(rows) == 1 || retryable(err):
		a.lost(rows, "refused", err)
	default:
		for _, r := range rows {
			a.writeBatch([]*repository.AuditEvent{r}, func() {})
		}
	}
}

// lost reports events that will never be stored, one log line each.
func (a *Auditor) lost(rows []*repository.AuditEvent, reason string, err error) {
	for _, r := range rows {
		a.log.Error("AUDIT EVENT LOST", "reason", reason, "event", r.EventType, "tenant", r.TenantID, "request_id", r.RequestID,
			"uid", r.UID, "err", errText(err))
	}
	if a.metrics != nil {
		a.metrics.AuditLost.WithLabelValues(reason).Add(float64(len(rows)))
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// retryable reports whether a failed batch may have failed for the
// connection's sake (repository.IsRetryable, surfaced by the repository as
// UNAVAILABLE): the database unreachable, or the connection lost
// mid-statement. Retrying is safe even when the first attempt committed:
// every event carries its idempotency key, and the repository skips events
// already stored.
func retryable(err error) bool {
	return apperr.KindOf(err) == apperr.KindUnavailable || apperr.KindOf(err) == apperr.KindDeadlineExceeded ||
		repository.IsRetryable(err)
}

// Shutdown stores what is held, retrying until ctx ends, and stops the
// writers; events still unstored then are logged as lost. Events recorded
// afterwards are written one by one. It returns ctx's error if it gave up.
func (a *Auditor) Shutdown(ctx context.Context) error {
	a.mu.Lock()
	a.closing = true
	a.ready.Broadcast()
	a.mu.Unlock()
	stopped := context.AfterFunc(ctx, func() {
		a.cancel() // writers give up their retries and report what they lose
		a.mu.Lock()
		a.drained.Broadcast()
		a.mu.Unlock()
	})
	defer stopped()
	a.mu.Lock()
	for a.held > 0 && ctx.Err() == nil {
		a.drained.Wait()
	}
	a.mu.Unlock()
	a.cancel()
	<-a.done
	// The writers are gone. What is still queued was recorded after they
	// left, or they were stopped before taking it.
	a.mu.Lock()
	a.closed = true
	rest := a.queue
	a.queue, a.waiting = nil, 0
	a.held -= len(rest)
	a.setPending()
	a.drained.Broadcast() // a Flush waiting for them: Shutdown writes them now
	a.mu.Unlock()
	if len(rest) == 0 {
		return ctx.Err()
	}
	rows := make([]*repository.AuditEvent, len(rest))
	for i, p := range rest {
		rows[i] = p.row
		p.attempted()
	}
	err := ctx.Err()
	if err == nil {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = a.store.AppendAuditBatch(wctx, rows)
		cancel()
	}
	if err != nil {
		a.lost(rows, "shutdown", err)
	}
	return ctx.Err()
}

// Close is Shutdown with a 15 s bound.
func (a *Auditor) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), closeGrace)
	defer cancel()
	_ = a.Shutdown(ctx)
}

// Record queues e, filling in the actor and request id from ctx, and
// returns once it is written, its first write attempt failed, MaxWait
// passed or ctx ended, whichever comes first (at once while the database
// is failing). The event is stored even if Record returned first.
func (a *Auditor) Record(ctx context.Context, e Event) {
	p := a.enqueue(ctx, e, true)
	if p == nil || a.failing.Load() {
		return
	}
	t := time.NewTimer(a.maxWait)
	defer t.Stop()
	select {
	case <-p.tried:
	case <-t.C:
	case <-ctx.Done():
	}
}

// RecordAsync queues e like Record and returns at once. It is for events
// that record a request which changed nothing durable; see Auditor for what
// it gives up.
func (a *Auditor) RecordAsync(ctx context.Context, e Event) {
	a.enqueue(ctx, e, false)
}

// enqueue queues e for the writers and returns its pending entry, or nil
// when it was written directly (after Shutdown) or dropped (buffer full).
// A waited-for entry carries a tried channel and ends any linger.
func (a *Auditor) enqueue(ctx context.Context, e Event, wait bool) *pending {
	if a == nil {
		return nil
	}
	p := &pending{row: a.row(ctx, e)}
	if wait {
		p.tried = make(chan struct{})
	}
	a.mu.Lock()
	switch {
	case a.closed:
		a.mu.Unlock()
		// Shut down: write this one directly.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := a.store.AppendAudit(wctx, p.row); err != nil {
			a.log.ErrorContext(ctx, "audit write failed", "event", string(e.Type), "tenant", e.Tenant, "err", err.Error())
		}
		return nil
	case a.held >= a.maxPending:
		a.mu.Unlock()
		a.lost([]*repository.AuditEvent{p.row}, "buffer_full", fmt.Errorf("%d audit events already held in memory", a.maxPending))
		return nil
	}
	a.queue = append(a.queue, p)
	a.held++
	if wait {
		a.waiting++
		a.ready.Broadcast() // a lingering writer commits now
	} else {
		a.ready.Signal()
	}
	a.setPending()
	a.mu.Unlock()
	return p
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
			UserID:     e.User,
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

// RecordUserDenied records a call refused because the caller may act only
// for the users its callers-file entry names and the call named another.
func (a *Auditor) RecordUserDenied(ctx context.Context, tenant, provider, method, user string) {
	a.Record(ctx, Event{Tenant: tenant, Provider: provider, User: user, Type: domain.EventPermissionDenied, Outcome: domain.OutcomeDenied,
		Reason: domain.ReasonUserNotAllowed, Details: map[string]string{"method": method, "user": user}})
}

// Entry is one stored audit event.
type Entry struct {
	// UID is the event's public id: its time in milliseconds, then 80
	// random bits, unique within the tenant. (The
	// database's sequence is not exposed; it spans all tenants.)
	UID      string
	Time     time.Time
	Type     domain.EventType
	Actor    string
	Provider string
	// User is the end user the event concerns, if any.
	User      string
	Outcome   domain.Outcome
	Reason    string
	RequestID string
	Details   map[string]string
}

// Filter narrows a listing; empty fields match everything.
type Filter struct {
	Provider string
	Type     domain.EventType
	// User keeps only events about this end user's connections.
	User string
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
	rows, err := l.store.ListAudit(ctx, tenant, repository.AuditFilter{ProviderID: f.Provider, EventType: string(f.Type), UserID: f.User}, afterUID, limit)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, len(rows))
	for i := range rows {
		out[i] = entryOf(&rows[i])
	}
	return out, nil
}
