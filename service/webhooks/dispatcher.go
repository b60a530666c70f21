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
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/secret"
	"github.com/mcpauth/mcpauth/service/audit"
)

// DispatchConfig tunes delivery.
type DispatchConfig struct {
	// Poll is how often the feed and the due deliveries are checked when
	// nothing wakes the dispatcher (default 250 ms).
	Poll time.Duration
	// BackoffBase is the first retry delay (default 1 s); each retry
	// doubles it, with full jitter, up to BackoffMax (default 10 min).
	BackoffBase, BackoffMax time.Duration
	// MaxAttempts after which a delivery is dead (default 30, about four
	// hours at the default backoff).
	MaxAttempts int
	// Lease keeps other replicas off a delivery being attempted (default
	// 30 s; longer than the sender's timeout).
	Lease time.Duration
	// Workers deliver in parallel (default 32).
	Workers int
	// MirrorToLog writes every event to the log as it is fanned out (at
	// least once), for a log pipeline.
	MirrorToLog bool
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
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return &Dispatcher{store: store, cipher: cipher, send: send, log: log, now: now, wake: wake, cfg: cfg,
		owner: hex.EncodeToString(b)}, nil
}

// fanOutBatch bounds the events routed in one transaction; claimBatch the
// deliveries claimed at once.
const (
	fanOutBatch = 500
	claimBatch  = 1000
)

// Run fans out and delivers until ctx ends: two loops, one that routes
// new events and sends at once the deliveries it was handed leased (the
// common case), one that claims and sends the rest (retries, and the
// deliveries queued behind a group's pending ones), woken when the first
// routed some.
func (d *Dispatcher) Run(ctx context.Context) {
	routed := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.loop(ctx, d.wake, nil, func() bool {
			n, queued := d.fanOut(ctx)
			if queued {
				select {
				case routed <- struct{}{}:
				default:
				}
			}
			return n == fanOutBatch
		})
	}()
	// New events do not wake the claims: they are the fan-out's.
	d.loop(ctx, nil, routed, func() bool { return d.deliverDue(ctx) > 0 })
	wg.Wait()
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
	}
}

// Step routes new events and attempts the deliveries due now; it reports
// whether there may be more to do at once.
func (d *Dispatcher) Step(ctx context.Context) bool {
	n, _ := d.fanOut(ctx)
	return d.deliverDue(ctx) > 0 || n == fanOutBatch
}

// fanOut routes the next events and sends the deliveries it is handed
// leased; it returns how many events it routed and whether some
// deliveries were left for deliverDue.
func (d *Dispatcher) fanOut(ctx context.Context) (int, bool) {
	res, err := d.store.FanOutEvents(ctx, fanOutBatch, d.route,
		repository.FanOutLease{Owner: d.owner, Now: d.now().UTC(), For: d.cfg.Lease})
	if err != nil && ctx.Err() == nil {
		d.log.Warn("webhook fan-out failed; retrying", "err", err.Error())
	}
	if len(res.Leased) > 0 {
		d.deliverAll(ctx, res.Leased)
	}
	return res.Events, res.Queued > 0
}

func (d *Dispatcher) deliverDue(ctx context.Context) int {
	claimed, err := d.store.ClaimDeliveries(ctx, d.owner, d.now().UTC(), d.cfg.Lease, claimBatch)
	if err != nil && ctx.Err() == nil {
		d.log.Warn("claiming webhook deliveries failed; retrying", "err", err.Error())
	}
	if len(claimed) > 0 {
		d.deliverAll(ctx, claimed)
	}
	return len(claimed)
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
	Outcome   string            `json:"outcome"`
	Reason    string            `json:"reason,omitempty"`
	RequestID string            `json:"request_id,omitempty"`
	Details   map[string]string `json:"details,omitempty"`
}

// Payload is the JSON body delivered for ev.
func Payload(ev *repository.AuditEvent) string {
	p := payload{Type: ev.EventType, Timestamp: ev.CreatedAt.UTC(), Data: eventData{
		Name: resname.AuditEventName(ev.TenantID, ev.UID), EventType: ev.EventType, Actor: ev.Actor,
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

// deliverAll attempts the claimed deliveries, up to Workers groups at once;
// the deliveries of one group (endpoint and provider) go one after the
// other in feed order, and a failure stops its group (the rest are released
// untried, to follow the failed one after its retry). Then it records the
// outcomes: the delivered ones in one statement, the failed ones one by one
// with their next attempt.
func (d *Dispatcher) deliverAll(ctx context.Context, claimed []repository.WebhookDelivery) {
	type group struct{ idx []int }
	var order []string
	groups := map[string]*group{}
	for i, dl := range claimed {
		k := dl.TenantID + "/" + dl.EndpointID + "/" + dl.ProviderID
		if dl.ProviderID == "" {
			k += "#" + dl.EventUID // events about no provider are not ordered
		}
		g, ok := groups[k]
		if !ok {
			g = &group{}
			groups[k] = g
			order = append(order, k)
		}
		g.idx = append(g.idx, i)
	}
	endpoints := map[string]*repository.WebhookEndpoint{}
	for _, dl := range claimed {
		k := dl.TenantID + "/" + dl.EndpointID
		if _, ok := endpoints[k]; !ok {
			ep, err := d.store.GetWebhookEndpoint(ctx, dl.TenantID, dl.EndpointID)
			if err != nil {
				ep = nil
			}
			endpoints[k] = ep
		}
	}
	const (
		untried = iota
		delivered
		failed
	)
	result := make([]int, len(claimed))
	sem := make(chan struct{}, d.cfg.Workers)
	var wg sync.WaitGroup
	for _, k := range order {
		g := groups[k]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			for _, i := range g.idx {
				dl := &claimed[i]
				if !d.attempt(ctx, dl, endpoints[dl.TenantID+"/"+dl.EndpointID]) {
					result[i] = failed
					return
				}
				result[i] = delivered
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return // shutting down: the leases expire and the attempts are made again
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	var done, release []repository.WebhookDelivery
	for i := range claimed {
		switch result[i] {
		case delivered:
			done = append(done, claimed[i])
		case untried:
			release = append(release, claimed[i])
		case failed:
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
}

// attempt sends one delivery and reports whether it was delivered; a
// failure sets the delivery's next attempt, or makes it dead.
func (d *Dispatcher) attempt(ctx context.Context, dl *repository.WebhookDelivery, ep *repository.WebhookEndpoint) bool {
	var status int
	var err error
	if ep == nil {
		err = errors.New("endpoint unavailable")
	} else if secs := d.secrets(ep); secs == nil {
		err = errNoSecret
	} else {
		status, err = d.send.Send(ctx, ep.URL, dl.EventUID, d.now(), []byte(dl.Payload), secs)
	}
	dl.LastStatus = status
	if err == nil {
		return true
	}
	dl.Attempts++
	dl.LastError = err.Error()
	if dl.Attempts >= d.cfg.MaxAttempts {
		dl.State = repository.DeliveryDead
		d.log.Warn("webhook delivery dead", "tenant", dl.TenantID, "endpoint", dl.EndpointID, "event_id", dl.EventUID,
			"attempts", dl.Attempts)
	} else {
		dl.NextAttemptAt = d.now().UTC().Add(d.backoff(dl.Attempts))
	}
	return false
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
