package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/reqid"
	"github.com/mcpauth/mcpauth/retry"
	"github.com/mcpauth/mcpauth/service/servicetest"
)

var epoch = time.Date(2026, 5, 6, 7, 8, 9, 0, time.FixedZone("CEST", 2*3600))

// logBuffer collects log output; the writers log from their goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// hookedStore is the in-memory store with a hook run before every batch
// write: it can hold the write (so the queue fills meanwhile) or refuse it.
type hookedStore struct {
	*servicetest.Store
	before func(events []*repository.AuditEvent) error
}

func (h *hookedStore) AppendAuditBatch(ctx context.Context, events []*repository.AuditEvent) error {
	if err := h.before(events); err != nil {
		return err
	}
	return h.Store.AppendAuditBatch(ctx, events)
}

// newAuditor returns a real Auditor over st with a fixed clock, closed at
// the end of the test, and its log output.
func newAuditor(tb testing.TB, st Store) (*Auditor, *logBuffer) {
	tb.Helper()
	buf := &logBuffer{}
	a := NewAuditor(st, slog.New(slog.NewTextHandler(buf, nil)), servicetest.NewClock(epoch).Now)
	tb.Cleanup(a.Close)
	return a, buf
}

// waitFor polls cond, for states reached by other goroutines (a queue
// filling up); it never waits for time to pass.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestNewAuditorDefaultsClock(t *testing.T) {
	t.Parallel()
	st := servicetest.NewStore(nil)
	a := NewAuditor(st, slog.New(slog.DiscardHandler), nil)
	defer a.Close()
	before := time.Now()
	a.Record(context.Background(), Event{Tenant: "t1", Type: domain.EventProviderCreated})
	if got := st.Events()[0].CreatedAt; got.Before(before.Add(-time.Second)) || got.Location() != time.UTC {
		t.Errorf("CreatedAt = %v, want now in UTC", got)
	}
}

// TestRecord checks that Record returns once the event is stored, and what
// it fills in from the context.
func TestRecord(t *testing.T) {
	t.Parallel()
	alice := caller.NewIdentity("alice", []string{"t1"}, nil)
	tests := []struct {
		name string
		ctx  context.Context
		ev   Event
		want repository.AuditEvent
	}{
		{
			name: "actor and request id from the context",
			ctx:  reqid.With(caller.WithIdentity(context.Background(), alice), "req-1"),
			ev: Event{Tenant: "t1", Type: domain.EventProviderUpdated, Provider: "p1", Outcome: domain.OutcomeSuccess,
				Details: map[string]string{"fields": "display_name"}},
			want: repository.AuditEvent{TenantID: "t1", EventType: "provider.updated", Actor: "alice", ProviderID: "p1",
				Outcome: int32(domain.OutcomeSuccess), RequestID: "req-1", Details: `{"fields":"display_name"}`},
		},
		{
			name: "explicit actor wins",
			ctx:  caller.WithIdentity(context.Background(), alice),
			ev:   Event{Tenant: "t1", Type: domain.EventTokenRefreshed, Actor: "refresher", Outcome: domain.OutcomeFailure, Reason: "INVALID_GRANT"},
			want: repository.AuditEvent{TenantID: "t1", EventType: "oauth.token.refreshed", Actor: "refresher",
				Outcome: int32(domain.OutcomeFailure), Reason: "INVALID_GRANT", Details: "{}"},
		},
		{
			name: "no caller",
			ctx:  context.Background(),
			ev:   Event{Tenant: "t2", Type: domain.EventToolCalled, Details: map[string]string{}},
			want: repository.AuditEvent{TenantID: "t2", EventType: "mcp.tool.called", Actor: "anonymous", Details: "{}"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := servicetest.NewStore(nil)
			a, _ := newAuditor(t, st)
			a.Record(tt.ctx, tt.ev)
			// No wait: the event is stored when Record returns.
			events := st.Events()
			if len(events) != 1 {
				t.Fatalf("stored %d events, want 1", len(events))
			}
			want := tt.want
			want.ID, want.CreatedAt = 1, epoch.UTC()
			got := events[0]
			if len(got.UID) != 32 {
				t.Errorf("uid %q: want the idempotency key, 32 hex digits, set before the write", got.UID)
			}
			got.UID = ""
			if got != want {
				t.Errorf("stored %+v\nwant       %+v", got, want)
			}
		})
	}
}

func TestRecordDenied(t *testing.T) {
	t.Parallel()
	st := servicetest.NewStore(nil)
	a, _ := newAuditor(t, st)
	a.RecordDenied(reqid.With(context.Background(), "r9"), "t1", "/mcpauth.v1.Providers/DeleteProvider", "missing permission")
	want := repository.AuditEvent{ID: 1, TenantID: "t1", CreatedAt: epoch.UTC(), EventType: "permission.denied", Actor: "anonymous",
		Outcome: int32(domain.OutcomeDenied), Reason: "missing permission", RequestID: "r9",
		Details: `{"method":"/mcpauth.v1.Providers/DeleteProvider"}`}
	if got := withoutUIDs(st.Events()); len(got) != 1 || got[0] != want {
		t.Errorf("stored %+v, want %+v", got, want)
	}
}

func TestRecordOnNilAuditor(t *testing.T) {
	t.Parallel()
	var a *Auditor
	a.Record(context.Background(), Event{Tenant: "t1"})
	a.RecordDenied(context.Background(), "t1", "m", "r")
}

// gate holds every batch write until released, telling the test the size
// of each batch it holds.
type gate struct {
	entered chan int
	release chan struct{}
	sizes   []int // read by the test goroutine only
}

func newGate() *gate { return &gate{entered: make(chan int, 4096), release: make(chan struct{})} }

func (g *gate) hold(events []*repository.AuditEvent) error {
	g.entered <- len(events)
	<-g.release
	return nil
}

// collect moves the sizes reported so far into g.sizes and returns how
// many events the held batches carry.
func (g *gate) collect() (held int) {
	for {
		select {
		case n := <-g.entered:
			g.sizes = append(g.sizes, n)
		default:
			for _, n := range g.sizes {
				held += n
			}
			return held
		}
	}
}

// gatedAuditor returns an Auditor whose batch writes wait for g.release.
func gatedAuditor(t *testing.T) (*Auditor, *servicetest.Store, *gate, *logBuffer) {
	t.Helper()
	st, g := servicetest.NewStore(nil), newGate()
	a, logs := newAuditor(t, &hookedStore{Store: st, before: g.hold})
	return a, st, g, logs
}

// recordMany records n events of tenant concurrently and returns a wait
// for all of them.
func recordMany(a *Auditor, n int, tenant string) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			a.Record(context.Background(), Event{Tenant: tenant, Type: domain.EventTokenRead, Provider: fmt.Sprintf("p%d", i)})
		})
	}
	return &wg
}

// fillWhileHeld records n events while every writer is held in the gate,
// and returns once the events not held are all waiting in the queue.
func fillWhileHeld(t *testing.T, a *Auditor, g *gate, n int, tenant string) *sync.WaitGroup {
	t.Helper()
	wg := recordMany(a, n, tenant)
	waitFor(t, "every writer held and the rest queued", func() bool {
		held := g.collect()
		// Every writer is held, or the ones that are carry everything.
		q := a.queued()
		return (len(g.sizes) == writers || q == 0) && held+q == n
	})
	return wg
}

// TestGroupCommit checks that events recorded while the writers are busy
// share batches of at most maxBatch, and that Close stores what is queued.
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	const n = 600
	a, st, g, _ := gatedAuditor(t)
	wg := fillWhileHeld(t, a, g, n, "t1")

	closed := make(chan struct{})
	go func() { a.Close(); close(closed) }()
	waitFor(t, "Close to begin", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.closing
	})
	close(g.release)
	<-closed
	wg.Wait()

	if got := len(st.Events()); got != n {
		t.Fatalf("stored %d events, want %d", got, n)
	}
	g.collect()
	// Once released, each writer takes what is queued, up to maxBatch at
	// a time: at most one short batch per writer plus the full ones.
	if limit := 2*writers + n/maxBatch; len(g.sizes) > limit {
		t.Errorf("%d batch writes for %d events (sizes %v), want at most %d", len(g.sizes), n, g.sizes, limit)
	}
	for _, size := range g.sizes {
		if size > maxBatch {
			t.Errorf("a batch of %d events, want at most %d", size, maxBatch)
		}
	}
	if calls := st.Calls("AppendAuditBatch"); calls != len(g.sizes) {
		t.Errorf("AppendAuditBatch called %d times, gate saw %d", calls, len(g.sizes))
	}
}

// unavailableFirst refuses the first n batch writes as unavailable and
// counts every attempt.
func unavailableFirst(n int32, attempts *atomic.Int32) func([]*repository.AuditEvent) error {
	return func([]*repository.AuditEvent) error {
		if attempts.Add(1) <= n {
			return apperr.Unavailable(errors.New("connection refused"), "database unreachable")
		}
		return nil
	}
}

// TestRecordRetriesWhileUnavailable checks that a batch refused as
// unavailable is retried (after 50ms, then 100ms) until it is stored; the
// caller is released by the first failed attempt.
func TestRecordRetriesWhileUnavailable(t *testing.T) {
	t.Parallel()
	for _, failures := range []int32{1, 2} {
		t.Run(fmt.Sprintf("%d refusals", failures), func(t *testing.T) {
			t.Parallel()
			st := servicetest.NewStore(nil)
			var attempts atomic.Int32
			a, logs := newAuditor(t, &hookedStore{Store: st, before: unavailableFirst(failures, &attempts)})
			a.Record(context.Background(), Event{Tenant: "t1", Type: domain.EventTokenRead})
			waitFor(t, "the event to be stored", func() bool { return len(st.Events()) == 1 })
			a.Close()
			if got := attempts.Load(); got != failures+1 {
				t.Errorf("%d attempts, want %d", got, failures+1)
			}
			if got := strings.Count(logs.String(), "audit events held in memory until the database answers"); got != 1 {
				t.Errorf("logged %d holds, want 1:\n%s", got, logs)
			}
			if strings.Contains(logs.String(), "AUDIT EVENT LOST") {
				t.Errorf("an event was reported lost:\n%s", logs)
			}
		})
	}
}

// queued is how many events wait for a writer.
func (a *Auditor) queued() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.queue)
}

// outage is a store that refuses every write as unavailable until up is
// set, counting the attempts.
type outage struct {
	up       atomic.Bool
	attempts atomic.Int32
}

func (o *outage) before([]*repository.AuditEvent) error {
	o.attempts.Add(1)
	if o.up.Load() {
		return nil
	}
	return apperr.Unavailable(errors.New("connection refused"), "database unreachable")
}

// fastRetries makes the held events' retries quick (set before the first
// Record hands a writer anything).
func fastRetries(a *Auditor) {
	a.retry = retry.Policy{Base: time.Millisecond, Max: 5 * time.Millisecond}
}

// TestRecordHeldThroughLongOutage (issue 15, case 10): while the database
// refuses every write, Record does not hold its caller, the events are kept
// and retried for as long as it takes (no time window: hundreds of
// attempts here), and each is stored once when the database is back.
func TestRecordHeldThroughLongOutage(t *testing.T) {
	t.Parallel()
	st, o := servicetest.NewStore(nil), &outage{}
	a, logs := newAuditor(t, &hookedStore{Store: st, before: o.before})
	fastRetries(a)
	a.maxWait = time.Hour // only the failed attempt may release the caller
	a.Record(reqid.With(context.Background(), "req-7"), Event{Tenant: "t1", Type: domain.EventToolCalled})
	if got := len(st.Events()); got != 0 {
		t.Fatalf("stored %d events during the outage", got)
	}
	// Known failing: the next caller is not held even for one attempt.
	a.Record(context.Background(), Event{Tenant: "t1", Type: domain.EventPermissionDenied})
	waitFor(t, "many retries", func() bool { return o.attempts.Load() > 200 })
	o.up.Store(true)
	waitFor(t, "the held events to be stored", func() bool { return len(st.Events()) == 2 })
	if out := logs.String(); strings.Contains(out, "AUDIT EVENT LOST") || !strings.Contains(out, "held audit events stored") {
		t.Errorf("log:\n%s", out)
	}
	a.Close()
	if got := len(st.Events()); got != 2 {
		t.Errorf("stored %d events, want 2", got)
	}
}

// TestRecordDoesNotWaitForAHungWrite: a write that hangs (a black-holed
// database) holds the caller at most MaxWait; the event is stored when the
// write completes.
func TestRecordDoesNotWaitForAHungWrite(t *testing.T) {
	t.Parallel()
	st, release := servicetest.NewStore(nil), make(chan struct{})
	a, _ := newAuditor(t, &hookedStore{Store: st, before: func([]*repository.AuditEvent) error { <-release; return nil }})
	a.maxWait = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a.Record(ctx, Event{Tenant: "t1", Type: domain.EventToolCalled}) // returns although the write hangs
	close(release)
	waitFor(t, "the event to be stored", func() bool { return len(st.Events()) == 1 })
}

// TestRecordBufferFull: with the bound of held events reached, a further
// event is dropped, counted and logged; the held ones are stored later.
func TestRecordBufferFull(t *testing.T) {
	t.Parallel()
	st, o, m := servicetest.NewStore(nil), &outage{}, metrics.New()
	buf := &logBuffer{}
	a := NewAuditor(&hookedStore{Store: st, before: o.before}, slog.New(slog.NewTextHandler(buf, nil)), nil,
		WithMaxPending(2), WithMetrics(m))
	t.Cleanup(a.Close)
	fastRetries(a)
	for i := range 3 {
		a.Record(context.Background(), Event{Tenant: "t1", Type: domain.EventToolCalled, Provider: fmt.Sprint("p", i)})
	}
	if got := testutil.ToFloat64(m.AuditLost.WithLabelValues("buffer_full")); got != 1 {
		t.Errorf("lost{buffer_full} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.AuditPending); got != 2 {
		t.Errorf("pending = %v, want 2", got)
	}
	if out := buf.String(); strings.Count(out, "AUDIT EVENT LOST") != 1 || !strings.Contains(out, "reason=buffer_full") {
		t.Errorf("log:\n%s", out)
	}
	o.up.Store(true)
	waitFor(t, "the held events to be stored", func() bool { return len(st.Events()) == 2 })
	waitFor(t, "pending back to 0", func() bool { return testutil.ToFloat64(m.AuditPending) == 0 })
	for _, e := range st.Events() {
		if e.ProviderID == "p2" {
			t.Error("the dropped event was stored")
		}
	}
}

// TestShutdown: SIGTERM's drain keeps retrying held events until its
// deadline; stored if the database comes back in time, else each is
// logged and counted as lost.
func TestShutdown(t *testing.T) {
	t.Parallel()
	t.Run("database back in time", func(t *testing.T) {
		t.Parallel()
		st, o := servicetest.NewStore(nil), &outage{}
		a, logs := newAuditor(t, &hookedStore{Store: st, before: o.before})
		fastRetries(a)
		a.Record(context.Background(), Event{Tenant: "t1", Type: domain.EventToolCalled})
		a.Record(context.Background(), Event{Tenant: "t1", Type: domain.EventToolCalled})
		done := make(chan error, 1)
		go func() { done <- a.Shutdown(context.Background()) }()
		waitFor(t, "retries during the drain", func() bool { return o.attempts.Load() > 20 })
		o.up.Store(true)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got := len(st.Events()); got != 2 {
			t.Errorf("stored %d events, want 2", got)
		}
		if strings.Contains(logs.String(), "AUDIT EVENT LOST") {
			t.Errorf("log:\n%s", logs)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		t.Parallel()
		st, o, m := servicetest.NewStore(nil), &outage{}, metrics.New()
		buf := &logBuffer{}
		a := NewAuditor(&hookedStore{Store: st, before: o.before}, slog.New(slog.NewTextHandler(buf, nil)), nil, WithMetrics(m))
		fastRetries(a)
		a.Record(reqid.With(context.Background(), "req-7"), Event{Tenant: "t1", Type: domain.EventToolCalled})
		ctx, cancel := context.WithCancel(context.Background())
		waitFor(t, "retries", func() bool { return o.attempts.Load() > 5 })
		cancel()
		if err := a.Shutdown(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Shutdown = %v, want the context's error", err)
		}
		if got := testutil.ToFloat64(m.AuditLost.WithLabelValues("shutdown")); got != 1 {
			t.Errorf("lost{shutdown} = %v, want 1", got)
		}
		if out := buf.String(); strings.Count(out, "AUDIT EVENT LOST") != 1 || !strings.Contains(out, "request_id=req-7") {
			t.Errorf("log:\n%s", out)
		}
		// Afterwards events are written directly.
		o.up.Store(true)
		a.Record(context.Background(), Event{Tenant: "t1", Type: domain.EventToolCalled})
		if got := len(st.Events()); got != 1 {
			t.Errorf("stored %d events after the drain, want 1", got)
		}
	})
}

// TestBadEventDoesNotCostOthers checks that a batch refused for a reason
// other than unavailability is written event by event.
func TestBadEventDoesNotCostOthers(t *testing.T) {
	t.Parallel()
	t.Run("one batch", func(t *testing.T) {
		t.Parallel()
		st := servicetest.NewStore(nil)
		a, logs := newAuditor(t, st)
		rows := []*repository.AuditEvent{
			{TenantID: "t1", EventType: "a", Details: "{}"},
			{TenantID: "", EventType: "bad", Details: "{}"},
			{TenantID: "t1", EventType: "b", Details: "{}"},
		}
		a.writeBatch(rows, func() {})
		events := st.Events()
		if len(events) != 2 || events[0].EventType != "a" || events[1].EventType != "b" {
			t.Errorf("stored %+v, want events a and b", events)
		}
		// One refused batch, then one write per event: no retries.
		if got := st.Calls("AppendAuditBatch"); got != 4 {
			t.Errorf("AppendAuditBatch called %d times, want 4", got)
		}
		if got := strings.Count(logs.String(), "AUDIT EVENT LOST"); got != 1 {
			t.Errorf("logged %d lost events, want 1:\n%s", got, logs)
		}
	})
	t.Run("recorded concurrently", func(t *testing.T) {
		t.Parallel()
		const n = 40
		a, st, g, logs := gatedAuditor(t)
		good := fillWhileHeld(t, a, g, n, "t1")
		bad := recordMany(a, 1, "")
		waitFor(t, "the bad event to be held or queued", func() bool { return g.collect()+a.queued() == n+1 })
		close(g.release)
		good.Wait()
		bad.Wait()
		if got := len(st.Events()); got != n {
			t.Errorf("stored %d events, want the %d good ones", got, n)
		}
		if got := strings.Count(logs.String(), "AUDIT EVENT LOST"); got != 1 {
			t.Errorf("logged %d lost events, want 1:\n%s", got, logs)
		}
	})
}

func TestRecordAfterCloseWritesDirectly(t *testing.T) {
	t.Parallel()
	st := servicetest.NewStore(nil)
	a, logs := newAuditor(t, st)
	a.Close()
	a.Close() // twice is fine
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the write must not depend on the caller's context
	a.Record(ctx, Event{Tenant: "t1", Type: domain.EventProviderDeleted, Provider: "p1"})
	if events := st.Events(); len(events) != 1 || events[0].ProviderID != "p1" {
		t.Fatalf("stored %+v, want the event", events)
	}
	if a, b := st.Calls("AppendAudit"), st.Calls("AppendAuditBatch"); a != 1 || b != 0 {
		t.Errorf("AppendAudit %d, AppendAuditBatch %d calls; want 1 and 0", a, b)
	}

	a.Record(context.Background(), Event{Type: domain.EventProviderDeleted})
	if got := len(st.Events()); got != 1 {
		t.Errorf("stored %d events, want the event without tenant refused", got)
	}
	if !strings.Contains(logs.String(), "audit write failed") {
		t.Errorf("refused direct write not logged:\n%s", logs)
	}
}

// seedLog stores events of two tenants through the store and returns them
// newest first as the log lists them.
func seedLog(t *testing.T, st *servicetest.Store) {
	t.Helper()
	for _, e := range []repository.AuditEvent{
		{TenantID: "t1", EventType: "provider.created", ProviderID: "p1", Details: "{}"},
		{TenantID: "t1", EventType: "provider.created", ProviderID: "p2", Details: "{}"},
		{TenantID: "t2", EventType: "provider.created", ProviderID: "p1", Details: "{}"},
		{TenantID: "t1", EventType: "provider.updated", ProviderID: "p1", Details: `{"fields":"icon"}`},
		{TenantID: "t1", EventType: "provider.deleted", ProviderID: "p1", Actor: "bob", Outcome: 1, Reason: "R",
			RequestID: "q", CreatedAt: epoch, Details: `{"revoked_at_server":"true"}`},
	} {
		if err := st.AppendAudit(context.Background(), &e); err != nil {
			t.Fatal(err)
		}
	}
}

func uids(entries []Entry) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = e.UID
	}
	return out
}

func TestLogList(t *testing.T) {
	t.Parallel()
	st := servicetest.NewStore(nil)
	seedLog(t, st)
	l, err := NewLog(st)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tests := []struct {
		name   string
		tenant string
		filter Filter
		after  string
		limit  int
		want   []string
	}{
		{"all of a tenant, newest first", "t1", Filter{}, "", 10, []string{"e5", "e4", "e2", "e1"}},
		{"other tenant", "t2", Filter{}, "", 10, []string{"e3"}},
		{"by provider", "t1", Filter{Provider: "p1"}, "", 10, []string{"e5", "e4", "e1"}},
		{"by type", "t1", Filter{Type: domain.EventProviderCreated}, "", 10, []string{"e2", "e1"}},
		{"by provider and type", "t1", Filter{Provider: "p2", Type: domain.EventProviderCreated}, "", 10, []string{"e2"}},
		{"first page", "t1", Filter{}, "", 2, []string{"e5", "e4"}},
		{"next page", "t1", Filter{}, "e4", 2, []string{"e2", "e1"}},
		{"past the end", "t1", Filter{}, "e1", 2, []string{}},
		{"type of 64 characters", "t1", Filter{Type: domain.EventType(strings.Repeat("x", 64))}, "", 10, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := l.List(ctx, tt.tenant, tt.filter, tt.after, tt.limit)
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			if g := uids(got); fmt.Sprint(g) != fmt.Sprint(tt.want) {
				t.Errorf("uids = %v, want %v", g, tt.want)
			}
		})
	}

	t.Run("entry fields", func(t *testing.T) {
		t.Parallel()
		got, err := l.List(ctx, "t1", Filter{Provider: "p1"}, "", 2)
		if err != nil {
			t.Fatal(err)
		}
		want := Entry{UID: "e5", Time: epoch, Type: domain.EventProviderDeleted, Actor: "bob", Provider: "p1", Outcome: domain.OutcomeSuccess,
			Reason: "R", RequestID: "q", Details: map[string]string{"revoked_at_server": "true"}}
		if fmt.Sprint(got[0]) != fmt.Sprint(want) {
			t.Errorf("entry = %+v, want %+v", got[0], want)
		}
		if got[1].Details["fields"] != "icon" {
			t.Errorf("details = %v", got[1].Details)
		}
	})
}

func TestLogListErrors(t *testing.T) {
	t.Parallel()
	if _, err := NewLog(nil); err == nil {
		t.Error("NewLog(nil) succeeded")
	}
	st := servicetest.NewStore(nil)
	l, err := NewLog(st)
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.List(context.Background(), "t1", Filter{Type: domain.EventType(strings.Repeat("x", 65))}, "", 10)
	if e, ok := apperr.As(err); !ok || e.Kind != apperr.KindInvalidArgument || e.Field != "event_type" {
		t.Errorf("err = %v, want INVALID_ARGUMENT on event_type", err)
	}
	if got := st.Calls("ListAudit"); got != 0 {
		t.Errorf("ListAudit called %d times for a bad filter", got)
	}
	st.FailOn("ListAudit", servicetest.ErrInjected)
	if _, err := l.List(context.Background(), "t1", Filter{}, "", 10); !errors.Is(err, servicetest.ErrInjected) {
		t.Errorf("err = %v, want the store's", err)
	}
}

// withoutUIDs clears the events' random idempotency keys for comparison.
func withoutUIDs(events []repository.AuditEvent) []repository.AuditEvent {
	for i := range events {
		events[i].UID = ""
	}
	return events
}

// TestRecordRetriedAfterLostAckStoredOnce: the batch commits but the
// connection dies before the acknowledgement (io.ErrUnexpectedEOF from a
// dying PostgreSQL): the batch is retried with the same idempotency keys
// and each event is stored once, with no false "lost" alarm.
func TestRecordRetriedAfterLostAckStoredOnce(t *testing.T) {
	t.Parallel()
	st := servicetest.NewStore(nil)
	var calls atomic.Int32
	a, logs := newAuditor(t, &hookedStore{Store: st, before: func(events []*repository.AuditEvent) error {
		if calls.Add(1) == 1 {
			if err := st.AppendAuditBatch(context.Background(), events); err != nil {
				return err
			}
			return fmt.Errorf("commit: %w", io.ErrUnexpectedEOF)
		}
		return nil
	}})
	a.Record(context.Background(), Event{Tenant: "t1", Type: domain.EventPermissionDenied})
	a.Close() // stores what is held
	if got := len(st.Events()); got != 1 {
		t.Fatalf("stored %d events, want 1 (the retry must not double it)", got)
	}
	if calls.Load() != 2 {
		t.Errorf("%d attempts, want 2 (a lost acknowledgement is retried)", calls.Load())
	}
	if strings.Contains(logs.String(), "AUDIT EVENT LOST") {
		t.Errorf("a stored event was reported lost:\n%s", logs)
	}
}
