package webhooks

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/egress"
	"github.com/mcpauth/mcpauth/metrics"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/audit"
	"github.com/mcpauth/mcpauth/validate"
)

// DispatchConfig tunes delivery.
type DispatchConfig struct {
	// Poll is how often the feed and the due deliveries are checked when
	// nothing wakes the dispatcher (default 250 ms).
	Poll time.Duration
	// BackoffBase is the first retry delay (default 1 s); each retry
	// doubles it, up to BackoffMax (default 10 min); each delay is drawn
	// between half and all of that (jitter).
	BackoffBase, BackoffMax time.Duration
	// MaxAttempts after which a delivery is dead (default 30, about four
	// hours at the default backoff).
	MaxAttempts int
	// Lease keeps other replicas off a delivery being attempted (default
	// 30 s; longer than the sender's timeout).
	Lease time.Duration
	// Workers bounds the attempts in flight of one batch (default 32);
	// a batch's slow sends keep theirs after its straggler wait, so at
	// most Workers more per Straggle of the sender's timeout are in flight.
	Workers int
	// FanOutLease keeps other replicas off the feed while one fans out
	// (default 5 s), renewed every third of it while sending: after a
	// crash, another replica (or the restarted one) takes over within it.
	FanOutLease time.Duration
	// MirrorToLog writes every event to the log as it is fanned out (at
	// least once), for a log pipeline.
	MirrorToLog bool
	// Straggle is how long a fan-out batch waits for its slowest sends
	// (default 1 s); those still under way then finish on their own,
	// recorded as pending deliveries leased to this process (see fanOut).
	Straggle time.Duration
	// Metrics, when set, records each attempt (outcome, class of the
	// answer, duration) and each delivery's lag from its event.
	Metrics *metrics.Metrics
}

// Dispatcher fans the event feed out to endpoints and delivers.
type Dispatcher struct {
	store  Store
	cipher Cipher
	send   Sender
	log    *slog.Logger
	now    Clock
	wake   *audit.Wakeup
	cfg    DispatchConfig
	owner  string
	// routed wakes the claims when a recorded fan-out left deliveries
	// pending.
	routed chan struct{}
	// inflight is the fan-out batch whose record is under way (owned by
	// the fan-out loop).
	inflight *recording
	// stragglers counts the records under way with their straggling
	// attempts, which Run waits for before it returns.
	stragglers sync.WaitGroup
}

// recording is a fan-out batch being recorded while the next one is sent.
type recording struct {
	batch *repository.FanOutBatch
	// pending are the groups the batch left a pending delivery in: the
	// next batch holds their deliveries back, whether or not the record
	// has committed yet.
	pending map[repository.DeliveryGroup]bool
	done    chan error
}

// NewDispatcher returns a dispatcher; Run starts it.
func NewDispatcher(store Store, cipher Cipher, send Sender, log *slog.Logger, now Clock, wake *audit.Wakeup, cfg DispatchConfig) (*Dispatcher, error) {
	if store == nil || cipher == nil || send == nil || log == nil {
		return nil, errors.New("webhooks: store, cipher, sender and log are required")
	}
	if now == nil {
		now = time.Now
	}
	if wake == nil {
		wake = audit.NewWakeup()
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 250 * time.Millisecond
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = time.Second
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 10 * time.Minute
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 30
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 30 * time.Second
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 32
	}
	if cfg.FanOutLease <= 0 {
		cfg.FanOutLease = 5 * time.Second
	}
	if cfg.Straggle <= 0 {
		cfg.Straggle = time.Second
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return &Dispatcher{store: store, cipher: cipher, send: send, log: log, now: now, wake: wake, cfg: cfg,
		owner: hex.EncodeToString(b), routed: make(chan struct{}, 1)}, nil
}

// fanOutBatch bounds the events routed in one transaction; claimBatch the
// deliveries claimed at once.
const (
	fanOutBatch = 500
	claimBatch  = 1000
)

// Run fans out and delivers until ctx ends: two loops, one that routes
// new events and sends at once the deliveries free to go (the common
// case), one that claims and sends the rest (retries, and the deliveries
// queued behind a group's pending ones), woken when the first recorded
// some.
func (d *Dispatcher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.loop(ctx, d.wake, nil, func() bool { return d.fanOut(ctx) == fanOutBatch })
		d.settle()
	}()
	// New events do not wake the claims: they are the fan-out's.
	d.loop(ctx, nil, d.routed, func() bool { return d.deliverDue(ctx) > 0 })
	wg.Wait()
	d.stragglers.Wait()
	// Another replica takes the feed over at once, not when the lease ends.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := d.store.ReleaseFanOut(rctx, d.owner); err != nil {
		d.log.Warn("releasing the webhook fan-out lease failed; it expires", "err", err.Error())
	}
}

// loop runs step until ctx ends; while step reports more work it runs again
// at once, otherwise it waits for a wake-up (when wake is not nil), extra,
// or the poll interval.
func (d *Dispatcher) loop(ctx context.Context, wake *audit.Wakeup, extra <-chan struct{}, step func() bool) {
	t := time.NewTicker(d.cfg.Poll)
	defer t.Stop()
	recheck := audit.NewRecheck(d.cfg.Poll)
	for {
		var woken <-chan struct{}
		if wake != nil {
			woken = wake.C()
		}
		last := time.Now()
		busy := step()
		if ctx.Err() != nil {
			return
		}
		if busy {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-woken:
			recheck.Woken()
		case <-recheck.C():
		case <-extra:
		case <-t.C:
		}
		if wake != nil && !audit.Spaced(ctx, last, audit.MinReadGap) {
			return
		}
	}
}

// Step routes new events and attempts the deliveries due now; it reports
// whether there may be more to do at once.
func (d *Dispatcher) Step(ctx context.Context) bool {
	n := d.fanOut(ctx)
	d.settle()
	return d.deliverDue(ctx) > 0 || n == fanOutBatch
}

// fanOut routes the next events, sends at once the deliveries free to go
// (those of groups with nothing pending, to enabled endpoints) and then
// records every delivery of the batch in its outcome's state, with the
// cursor past the batch, in one transaction: the common case (an endpoint
// that answers) costs one row insert per delivery and no update. A crash
// between a send and its record makes the next fan-out send it again (at
// least once; webhook-id lets receivers drop the repeat).
//
// The record runs while the next batch is read and sent (its groups left
// pending are held back in memory meanwhile); a batch is recorded only
// after the one before it, and when a record fails the batches after it
// are dropped unrecorded, to be sent again. It returns how many events it
// passed (routed, or of tenants without endpoints).
func (d *Dispatcher) fanOut(ctx context.Context) int {
	prev := d.inflight
	var after *repository.FanOutBatch
	if prev != nil {
		after = prev.batch
	}
	now := d.now().UTC()
	b, err := d.store.LeaseFanOut(ctx, d.owner, now, d.cfg.FanOutLease, repository.FanOutRead{Limit: fanOutBatch, AllEvents: d.cfg.MirrorToLog}, after)
	if err != nil || b == nil {
		d.settle()
		if err != nil && ctx.Err() == nil {
			d.log.Warn("webhook fan-out failed; retrying", "err", err.Error())
		}
		return 0
	}
	var ds []repository.WebhookDelivery
	for i := range b.Events {
		ds = append(ds, d.route(&b.Events[i], b.Endpoints[b.Events[i].TenantID])...)
	}
	held, err := d.store.HeldGroups(ctx, ds)
	if err != nil {
		d.settle()
		if ctx.Err() == nil {
			d.log.Warn("webhook fan-out failed; retrying", "err", err.Error())
		}
		return 0
	}
	if prev != nil {
		for g := range prev.pending {
			held[g] = true
		}
	}
	endpoints := map[endpointKey]*repository.WebhookEndpoint{}
	for _, eps := range b.Endpoints {
		for i := range eps {
			endpoints[endpointKey{eps[i].TenantID, eps[i].ID}] = &eps[i]
		}
	}
	// Deliveries to a disabled endpoint, or behind a pending one of their
	// group, are not tried now: they are stored pending, for claims.
	skip := make([]bool, len(ds))
	for i := range ds {
		ep := endpoints[endpointKey{ds[i].TenantID, ds[i].EndpointID}]
		skip[i] = ep == nil || ep.Disabled || held[repository.GroupOf(&ds[i])]
	}
	// The lease is renewed while sending; new attempts start only while
	// it was renewed less than half of it ago.
	hold := d.holdFanOut(ctx, now)
	// A slow endpoint does not hold the batch back past Straggle: its
	// delivery is then recorded pending and leased to this process (no
	// claim takes it, its group's later deliveries queue behind it) while
	// its attempt ends, and the others' outcomes are recorded at once, so
	// that a crash meanwhile repeats only the straggler, and the next
	// batch (other tenants' events) goes out without waiting.
	untouched := slices.Clone(ds)
	cut := time.NewTimer(d.cfg.Straggle)
	res := d.attemptAll(ctx, ds, endpoints, skip, hold.ok, cut.C)
	cut.Stop()
	hold.stop()
	if ctx.Err() != nil {
		d.settle()
		return 0 // shutting down: the next fan-out makes these attempts again
	}
	recs := make([]repository.WebhookDelivery, len(ds))
	token := ""
	if len(res.stragglers) > 0 {
		token = d.owner + "/" + randomToken()
	}
	rec := &recording{batch: b, pending: map[repository.DeliveryGroup]bool{}, done: make(chan error, 1)}
	queued := false
	for i := range ds {
		dl := &recs[i]
		switch res.result[i] {
		case straggling:
			*dl = untouched[i]
			dl.LeaseOwner = token // and its end, when the record starts
		case delivered:
			*dl = ds[i]
			dl.State, dl.Attempts, dl.LastError = repository.DeliveryDelivered, 1, ""
		default:
			*dl = ds[i]
		}
		if dl.State == repository.DeliveryPending {
			queued = true
			if dl.ProviderID != "" {
				rec.pending[repository.GroupOf(dl)] = true
			}
		}
		dl.UpdatedAt = d.now().UTC()
	}
	if prev != nil {
		d.inflight = nil
		if err := <-prev.done; err != nil {
			// b is dropped: the next fan-out sends it again, once b's own
			// attempts have ended (this process never sends a delivery
			// twice at once, nor a group's later event before its earlier
			// one; the fan-out's lease is no longer renewed meanwhile, so a
			// wait longer than it lets another replica take the feed over
			// and send the batch again: at least once).
			for range res.late {
			}
			return 0
		}
	}
	d.inflight = rec
	d.stragglers.Add(1)
	go func() {
		defer d.stragglers.Done()
		// A straggler's lease runs from its record, so that its attempt
		// (within the sender's timeout) and its finish end inside it.
		until := d.now().UTC().Add(d.cfg.Lease)
		for _, i := range res.stragglers {
			recs[i].LeaseUntil = &until
		}
		err := d.record(b, recs)
		if err != nil {
			// The batch goes out again from the cursor: not before its
			// attempts under way have ended.
			for range res.late {
			}
			rec.done <- err
			return
		}
		if queued {
			d.wakeClaims()
		}
		rec.done <- nil
		d.finishStragglers(ds, recs, res.late)
	}()
	return b.Scanned
}

// finishStragglers records the outcome of each straggling delivery of a
// recorded batch as its attempt ends (ds holds the deliveries as their
// attempts left them, recs as the batch recorded them: pending, leased,
// with their row ids) and wakes the claims, which may now send the next
// deliveries of its group. An attempt cut short by shutdown releases its
// lease untried (it is made again, as attempt's other callers do); a
// straggler whose lease was taken over meanwhile is left to its new holder.
func (d *Dispatcher) finishStragglers(ds, recs []repository.WebhookDelivery, late <-chan lateAttempt) {
	for la := range late {
		row := recs[la.i]
		if row.ID == 0 {
			continue // not recorded as this batch's (its endpoint is gone, or the row was there)
		}
		dl := ds[la.i]
		dl.ID, dl.LeaseOwner = row.ID, row.LeaseOwner
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var err error
		held := true
		switch {
		case la.canceled:
			err = d.store.ReleaseDeliveries(ctx, []repository.WebhookDelivery{dl})
		case la.ok:
			err = d.store.FinishDelivered(ctx, []repository.WebhookDelivery{dl})
		default:
			held, err = d.store.FinishAttempt(ctx, &dl)
		}
		cancel()
		attrs := []any{"tenant", dl.TenantID, "endpoint", dl.EndpointID, "event_id", dl.EventUID}
		switch {
		case err != nil:
			d.log.Warn("recording a webhook attempt failed; it will be made again when its lease ends", append(attrs, "err", err.Error())...)
		case !held:
			d.log.Info("a webhook attempt ended after its lease; the lease's new holder makes it", attrs...)
		}
		d.wakeClaims()
	}
}

// wakeClaims wakes the claim loop (deliveries pending and free to go).
func (d *Dispatcher) wakeClaims() {
	select {
	case d.routed <- struct{}{}:
	default:
	}
}

// record stores a fan-out batch's outcome, trying again after a failure:
// failing for good means sending the batch again.
func (d *Dispatcher) record(b *repository.FanOutBatch, ds []repository.WebhookDelivery) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	for try := 0; ; try++ {
		err = d.store.RecordFanOut(ctx, b, ds, d.now().UTC(), d.cfg.FanOutLease)
		if err == nil || errors.Is(err, repository.ErrFanOutLeaseLost) || try == 2 || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond << try)
	}
	if err != nil {
		d.log.Warn("recording a webhook fan-out failed; its deliveries will be made again", "err", err.Error())
	}
	return err
}

// fanOutHold renews the fan-out lease while a batch is sent.
type fanOutHold struct {
	// until is when attempts stop starting (Unix nanoseconds): half a
	// lease after the last renewal.
	until  atomic.Int64
	cancel context.CancelFunc
	done   chan struct{}
}

// holdFanOut starts renewing the fan-out lease (taken at now) every third
// of it until stop.
func (d *Dispatcher) holdFanOut(ctx context.Context, now time.Time) *fanOutHold {
	h := &fanOutHold{done: make(chan struct{})}
	h.until.Store(now.Add(d.cfg.FanOutLease / 2).UnixNano())
	hctx, cancel := context.WithCancel(ctx)
	h.cancel = cancel
	go func() {
		defer close(h.done)
		t := time.NewTicker(d.cfg.FanOutLease / 3)
		defer t.Stop()
		for {
			select {
			case <-hctx.Done():
				return
			case <-t.C:
			}
			at := d.now().UTC()
			ok, err := d.store.RenewFanOut(hctx, d.owner, at.Add(d.cfg.FanOutLease))
			if err != nil || !ok {
				if !ok && err == nil {
					h.until.Store(0) // taken over: stop at once
				}
				continue
			}
			h.until.Store(at.Add(d.cfg.FanOutLease / 2).UnixNano())
		}
	}()
	return h
}

// ok reports whether an attempt may start now.
func (h *fanOutHold) ok(now time.Time) bool { return now.UnixNano() < h.until.Load() }

func (h *fanOutHold) stop() {
	h.cancel()
	<-h.done
}

// settle waits for the record under way, if any.
func (d *Dispatcher) settle() {
	if d.inflight != nil {
		<-d.inflight.done
		d.inflight = nil
	}
}

func (d *Dispatcher) deliverDue(ctx context.Context) int {
	claimed, err := d.store.ClaimDeliveries(ctx, d.owner, d.now().UTC(), d.cfg.Lease, claimBatch)
	if err != nil && ctx.Err() == nil {
		d.log.Warn("claiming webhook deliveries failed; retrying", "err", err.Error())
	}
	if len(claimed) == 0 {
		return 0
	}
	return d.deliverClaimed(ctx, claimed)
}

// route creates an event's deliveries: one per endpoint of its tenant that
// existed when the event happened and whose filter takes its type.
func (d *Dispatcher) route(ev *repository.AuditEvent, endpoints []repository.WebhookEndpoint) []repository.WebhookDelivery {
	if d.cfg.MirrorToLog {
		d.log.Info("audit event", "tenant", ev.TenantID, "event_id", ev.UID, "event_type", ev.EventType, "actor", ev.Actor,
			"provider", ev.ProviderID, "outcome", outcomeName(domain.Outcome(ev.Outcome)), "reason", ev.Reason,
			"request_id", ev.RequestID, "time", ev.CreatedAt)
	}
	var out []repository.WebhookDelivery
	var body string
	for _, ep := range endpoints {
		if ev.CreatedAt.Before(ep.CreatedAt) {
			continue
		}
		if ep.EventTypes != "" && !slices.Contains(strings.Split(ep.EventTypes, ","), ev.EventType) {
			continue
		}
		if body == "" {
			body = Payload(ev)
		}
		now := d.now().UTC()
		out = append(out, repository.WebhookDelivery{TenantID: ev.TenantID, EndpointID: ep.ID, EventUID: ev.UID,
			EventType: ev.EventType, ProviderID: ev.ProviderID, EventTxID: ev.TxID, EventID: ev.ID, Payload: body,
			State: repository.DeliveryPending, NextAttemptAt: now, CreatedAt: now, UpdatedAt: now})
	}
	return out
}

func outcomeName(o domain.Outcome) string {
	switch o {
	case domain.OutcomeSuccess:
		return "SUCCESS"
	case domain.OutcomeFailure:
		return "FAILURE"
	case domain.OutcomeDenied:
		return "DENIED"
	}
	return "UNSPECIFIED"
}

// payload is the message body: the Standard Webhooks envelope (type,
// timestamp, data) around the event as ListAuditEvents shows it.
type payload struct {
	Type      string    `json:"type"`
	Timestamp time.Time `json:"timestamp"`
	Data      eventData `json:"data"`
}

type eventData struct {
	Name      string            `json:"name"`
	EventType string            `json:"event_type"`
	Actor     string            `json:"actor,omitempty"`
	Provider  string            `json:"provider,omitempty"`
	User      string            `json:"user,omitempty"`
	Outcome   string            `json:"outcome"`
	Reason    string            `json:"reason,omitempty"`
	RequestID string            `json:"request_id,omitempty"`
	Details   map[string]string `json:"details,omitempty"`
}

// Payload is the JSON body delivered for ev.
func Payload(ev *repository.AuditEvent) string {
	p := payload{Type: ev.EventType, Timestamp: ev.CreatedAt.UTC(), Data: eventData{
		Name: resname.AuditEventName(ev.TenantID, ev.UID), EventType: ev.EventType, Actor: ev.Actor, User: ev.UserID,
		Outcome: outcomeName(domain.Outcome(ev.Outcome)), Reason: ev.Reason, RequestID: ev.RequestID}}
	if ev.ProviderID != "" {
		p.Data.Provider = resname.ProviderName(ev.TenantID, ev.ProviderID)
	}
	if ev.Details != "" && ev.Details != "{}" {
		_ = json.Unmarshal([]byte(ev.Details), &p.Data.Details)
	}
	b, _ := json.Marshal(p)
	return string(b)
}

// endpointKey names an endpoint.
type endpointKey struct{ tenant, id string }

// Outcomes of attemptAll.
const (
	untried = iota
	delivered
	failed
	// straggling: still being sent when attemptAll returned at its cut;
	// the outcome comes later, on attempts.late.
	straggling
)

// States of one delivery while attemptAll runs (besides the outcomes).
const (
	sending = iota + 100 // an attempt is under way
	cutOff               // never to start: attemptAll returned at its cut
)

// attempts is what attemptAll returns.
type attempts struct {
	// result is each delivery's outcome: untried, delivered, failed or
	// straggling.
	result []int
	// late carries the outcome of each straggling delivery when its
	// attempt ends (the delivery itself, as attempt left it, may be read
	// once its outcome arrived), and is closed when every attempt has.
	late <-chan lateAttempt
	// stragglers are the straggling deliveries' indices.
	stragglers []int
}

// lateAttempt is the outcome of a straggling delivery: delivered or not.
type lateAttempt struct {
	i  int
	ok bool
	// canceled: the attempt was cut short by shutdown (not an answer).
	canceled bool
}

// attemptAll attempts the deliveries ds not skipped, up to Workers groups
// at once; the deliveries of one group (endpoint and provider) go one after
// the other in the order given, and a failure stops its group (the rest
// stay untried, to follow the failed one after its retry), as does a
// skipped delivery. No attempt starts unless mayStart says so. Each endpoint's secrets
// are opened once. It returns each delivery's outcome; a failed one has
// its next attempt (or the dead state) set.
//
// When cut fires before every group is done (a slow endpoint), it returns
// at once: no attempt starts any more, those under way are straggling and
// end in the background, reporting on late. Until a delivery's outcome is
// known (here or on late) its entry of ds belongs to its attempt.
func (d *Dispatcher) attemptAll(ctx context.Context, ds []repository.WebhookDelivery, endpoints map[endpointKey]*repository.WebhookEndpoint,
	skip []bool, mayStart func(time.Time) bool, cut <-chan time.Time) attempts {
	var order []string
	groups := map[string][]int{}
	for i, dl := range ds {
		k := dl.TenantID + "/" + dl.EndpointID + "/" + dl.ProviderID
		if dl.ProviderID == "" {
			k += "#" + dl.EventUID // events about no provider are not ordered
		}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], i)
	}
	secs := map[endpointKey][]secret.Secret{}
	for k, ep := range endpoints {
		if ep != nil {
			secs[k] = d.secrets(ep)
		}
	}
	// state[i] goes untried -> sending -> delivered or failed, by its
	// group's goroutine; the cut moves untried to cutOff and sending to
	// straggling, so each compare-and-swap decides who owns the outcome.
	state := make([]atomic.Int32, len(ds))
	late := make(chan lateAttempt, len(ds))
	// The batch's own workers: its stragglers keep theirs after the cut,
	// and the next batch starts with all of its own, so a slow endpoint
	// (one tenant's) never holds back the next batch's sends (everyone
	// else's).
	sem := make(chan struct{}, d.cfg.Workers)
	stopped := make(chan struct{}) // closed at the cut: launch no more groups
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, k := range order {
			idx := groups[k]
			select {
			case sem <- struct{}{}:
			case <-stopped:
				return
			}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				for _, i := range idx {
					if skip != nil && skip[i] || ctx.Err() != nil || !mayStart(d.now()) {
						return
					}
					if !state[i].CompareAndSwap(untried, sending) {
						return
					}
					dl := &ds[i]
					key := endpointKey{dl.TenantID, dl.EndpointID}
					ok := d.attempt(ctx, dl, endpoints[key], secs[key])
					out := int32(failed)
					if ok {
						out = delivered
					}
					if !state[i].CompareAndSwap(sending, out) {
						late <- lateAttempt{i: i, ok: ok, canceled: !ok && ctx.Err() != nil} // cut meanwhile: straggling
					}
					if !ok {
						return
					}
				}
			}()
		}
	}()
	all := make(chan struct{})
	go func() {
		wg.Wait()
		close(late)
		close(all)
	}()
	res := attempts{result: make([]int, len(ds)), late: late}
	select {
	case <-all:
	case <-cut:
		close(stopped)
		for i := range state {
			if !state[i].CompareAndSwap(untried, cutOff) && state[i].CompareAndSwap(sending, straggling) {
				res.stragglers = append(res.stragglers, i)
			}
		}
	}
	for i := range state {
		switch v := int(state[i].Load()); v {
		case delivered, failed, straggling:
			res.result[i] = v
		default:
			res.result[i] = untried
		}
	}
	return res
}

// deliverClaimed attempts the claimed deliveries (see attemptAll) and
// records the outcomes: the delivered ones in one statement, the failed
// ones one by one with their next attempt, the untried ones released. It
// returns how many it attempted.
func (d *Dispatcher) deliverClaimed(ctx context.Context, claimed []repository.WebhookDelivery) int {
	endpoints := map[endpointKey]*repository.WebhookEndpoint{}
	for _, dl := range claimed {
		k := endpointKey{dl.TenantID, dl.EndpointID}
		if _, ok := endpoints[k]; !ok {
			ep, err := d.store.GetWebhookEndpoint(ctx, dl.TenantID, dl.EndpointID)
			if err != nil {
				ep = nil
			}
			endpoints[k] = ep
		}
	}
	// New attempts start only in the first half of the lease, so that the
	// last one ends (within the sender's timeout) while it is still held.
	until := d.now().Add(d.cfg.Lease / 2)
	result := d.attemptAll(ctx, claimed, endpoints, nil, until.After, nil).result
	if ctx.Err() != nil {
		return 0 // shutting down: the leases expire and the attempts are made again
	}
	attempted := 0
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	var done, release []repository.WebhookDelivery
	for i := range claimed {
		switch result[i] {
		case delivered:
			attempted++
			done = append(done, claimed[i])
		case untried:
			release = append(release, claimed[i])
		case failed:
			attempted++
			if _, err := d.store.FinishAttempt(fctx, &claimed[i]); err != nil {
				d.log.Warn("recording a webhook attempt failed; it will be made again", "err", err.Error())
			}
		}
	}
	if len(done) > 0 {
		if err := d.store.FinishDelivered(fctx, done); err != nil {
			d.log.Warn("recording webhook deliveries failed; they will be made again", "err", err.Error())
		}
	}
	if len(release) > 0 {
		if err := d.store.ReleaseDeliveries(fctx, release); err != nil {
			d.log.Warn("releasing webhook deliveries failed; their leases expire", "err", err.Error())
		}
	}
	return attempted
}

// attempt sends one delivery signed with secs and reports whether it was
// delivered; a failure sets the delivery's next attempt, or makes it dead.
// A failed attempt is logged at WARN (at ERROR when the delivery is dead);
// a delivered one is not logged (one line per message would drown the log).
func (d *Dispatcher) attempt(ctx context.Context, dl *repository.WebhookDelivery, ep *repository.WebhookEndpoint, secs []secret.Secret) bool {
	var status int
	var err error
	if ep == nil {
		err = errors.New("endpoint unavailable")
	} else if secs == nil {
		err = errNoSecret
	} else {
		start := time.Now()
		status, err = d.send.Send(ctx, ep.URL, dl.EventUID, d.now(), []byte(dl.Payload), secs)
		if m := d.cfg.Metrics; m != nil {
			m.WebhookAttemptDuration.Observe(time.Since(start).Seconds())
		}
	}
	dl.LastStatus = status
	class := attemptClass(status, err)
	if err == nil {
		if m := d.cfg.Metrics; m != nil {
			m.WebhookAttempts.WithLabelValues(attemptDelivered, class).Inc()
			m.WebhookDeliveryLag.Observe(d.now().Sub(eventTime(dl)).Seconds())
		}
		return true
	}
	dl.Attempts++
	dl.LastError = err.Error()
	outcome := attemptFailed
	if dl.Attempts >= d.cfg.MaxAttempts {
		dl.State = repository.DeliveryDead
		outcome = attemptDead
	} else {
		dl.NextAttemptAt = d.now().UTC().Add(d.backoff(dl.Attempts))
	}
	if ctx.Err() != nil {
		return false // shutting down: not recorded, the attempt is made again
	}
	if m := d.cfg.Metrics; m != nil {
		m.WebhookAttempts.WithLabelValues(outcome, class).Inc()
	}
	attrs := []any{"tenant", dl.TenantID, "endpoint", dl.EndpointID, "url", maskedURL(ep), "provider", dl.ProviderID,
		"event_id", dl.EventUID, "event_type", dl.EventType, "attempt", dl.Attempts, "status", status, "class", class,
		"err", dl.LastError}
	if outcome == attemptDead {
		d.log.Error("webhook delivery dead: its last attempt failed; RedeliverWebhookEvent sends it again", attrs...)
	} else {
		d.log.Warn("webhook delivery attempt failed; retrying", append(attrs, "next_attempt", dl.NextAttemptAt)...)
	}
	return false
}

// Outcomes of an attempt (the outcome label of mcpauth_webhook_attempts_total).
const (
	attemptDelivered = "delivered"
	attemptFailed    = "failed"
	attemptDead      = "dead"
)

// attemptClass is the class label of an attempt: the class of the
// receiver's HTTP status ("2xx" to "5xx"), "blocked" when the egress policy
// refused the connection, "error" when there was no answer.
func attemptClass(status int, err error) string {
	if status >= 100 && status <= 599 {
		return strconv.Itoa(status/100) + "xx"
	}
	var blocked *egress.BlockedError
	if errors.As(err, &blocked) {
		return "blocked"
	}
	return "error"
}

// maskedURL is the form of ep's URL a log may show: scheme and host, with
// anything else (userinfo, path, query) masked.
func maskedURL(ep *repository.WebhookEndpoint) string {
	if ep == nil {
		return ""
	}
	u, err := url.Parse(ep.URL)
	if err != nil {
		return validate.MaskURL(nil)
	}
	return validate.MaskURL(u)
}

// eventTime is when dl's event happened: its payload's timestamp, or the
// delivery's creation (at the event's fan-out) when that cannot be read.
func eventTime(dl *repository.WebhookDelivery) time.Time {
	var p struct {
		Timestamp time.Time `json:"timestamp"`
	}
	if json.Unmarshal([]byte(dl.Payload), &p) == nil && !p.Timestamp.IsZero() {
		return p.Timestamp
	}
	return dl.CreatedAt
}

func (d *Dispatcher) secrets(ep *repository.WebhookEndpoint) []secret.Secret {
	s, err := secrets(d.cipher, ep, d.now())
	if err != nil {
		return nil
	}
	return s
}

// backoff is the delay before attempt n+1: exponential from BackoffBase,
// capped at BackoffMax, with "equal jitter" (a uniform draw between half
// and all of it, so deliveries failing together do not retry in step).
func (d *Dispatcher) backoff(n int) time.Duration {
	exp := float64(d.cfg.BackoffBase) * math.Pow(2, float64(n-1))
	if exp > float64(d.cfg.BackoffMax) {
		exp = float64(d.cfg.BackoffMax)
	}
	return time.Duration(exp/2 + mrand.Float64()*exp/2)
}

// randomToken returns 8 random hex digits, telling one lease of this
// process from its others.
func randomToken() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
